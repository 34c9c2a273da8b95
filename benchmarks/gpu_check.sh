#!/usr/bin/env bash
# The first-GPU-run check in one time-boxed call, from the repository root of a bare CUDA machine:
# install bellm over the machine's own torch / Triton / transformers, print the versions and the GPU, run the
# GPU tests, run every benchmark module in its own process under its own time limit, merge the results, write
# BENCHMARKS.md and its charts, and print the performance-target table (measured / target / met) last.
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine; files under $OUT
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh      # the same steps on CPU with --smoke shapes
#   bash benchmarks/gpu_check.sh --dry-run                # the same
#
# Environment (all optional):
#   OUT                         output folder (default: a new temporary folder, printed)
#   GPU_CHECK_BUDGET_S          wall-time budget of the whole script in seconds (default 470)
#   GPU_CHECK_STEPS             comma-separated subset of: tests,attention-bidir,pool,encode,train,
#                               attention-causal (default: all; setup and report always run)
#   GPU_CHECK_COMMIT            git commit to record when the machine has no .git (the device copy has none)
#   GPU_CHECK_ENCODE_SENTENCES  sentences of the encode benchmark (default 1024; the module's own default: 2048)
#
# What comes back (at most 6 files, none in sub-folders): gpu_check.log (everything printed), results.json
# (merged rows), BENCHMARKS.md, targets.txt, bench-report.tar.gz (BENCHMARKS.md, benchmarks/charts/*.png and
# benchmarks/results.json, laid out to unpack at the repository root), logs.tar.gz (one log per step).
# Nothing in the working tree is written. Exit status 0 when every step ran and the GPU tests passed, else 1.

set -uo pipefail

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
BUDGET=${GPU_CHECK_BUDGET_S:-470}
STEPS=${GPU_CHECK_STEPS:-tests,attention-bidir,pool,encode,train,attention-causal}
ENCODE_SENTENCES=${GPU_CHECK_ENCODE_SENTENCES:-1024}
START=$(date +%s)
REPORT_RESERVE=30  # seconds always kept for merge, report, targets and packing

cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$(mktemp -d /tmp/gpu-check-out.XXXXXX)}
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
mkdir -p "$OUT" "$WORK/report/benchmarks"
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python

log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
SUMMARY=()  # "step | status | seconds | limit"
FAILED=0

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

# the timed steps in order, and the seconds each is guaranteed: a step may use its cap, less the floors of the
# wanted steps after it and the report's reserve, never past the budget
ORDER=(tests attention-bidir pool encode train attention-causal)
declare -A FLOOR=([tests]=40 [attention-bidir]=60 [pool]=20 [encode]=40 [train]=30 [attention-causal]=0)
step_limit() {  # name cap
  local after=0 seen=0 s
  for s in "${ORDER[@]}"; do
    (( seen )) && wanted "$s" && after=$(( after + FLOOR[$s] ))
    [[ "$s" == "$1" ]] && seen=1
  done
  local left=$(( START + BUDGET - $(date +%s) - after - REPORT_RESERVE ))
  (( left < $2 )) && echo "$left" || echo "$2"
}

# run one command under a limit, its output in the main log and in $WORK/<name>.log; sets RC
run_limited() {  # name limit command...
  local name=$1 limit=$2
  shift 2
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log" >>"$LOG"
  RC=${PIPESTATUS[0]}
}

# ---------------------------------------------------------------------------------------------------------
# 1. set-up: install offline over the machine's packages, versions, GPU
log "set-up (dry run: $DRY_RUN, budget ${BUDGET}s, steps: $STEPS, output: $OUT)"
t0=$(date +%s)
if [[ "$DRY_RUN" != 1 ]]; then
  if compgen -G ".whl/*.whl" >/dev/null; then  # wheels brought along for packages the machine lacks
    timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl \
      >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/gpu-check-site"
  fi
  if timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
    log "bellm installed (editable, no dependencies)"
  else
    log "pip install -e . failed (see above): bellm is imported from PYTHONPATH=$PWD instead"
  fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "peft", "sentence_transformers", "pytest", "xdist", "gguf"):
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as e:  # report, never stop here
        print(f"{name} not importable: {type(e).__name__}: {e}")
import torch, bellm
print("bellm from", bellm.__file__)
print("torch.version.cuda", torch.version.cuda, "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1 | tee -a "$LOG"
else
  log "nvidia-smi not found"
fi
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [[ "$DRY_RUN" != 1 && "$HAS_CUDA" != 1 ]]; then
  log "no CUDA device: this script needs a GPU (GPU_CHECK_DRY_RUN=1 runs its steps on CPU)"
  exit 2
fi
SMOKE=()
[[ "$DRY_RUN" == 1 ]] && SMOKE=(--smoke)
SUMMARY+=("set-up | done | $(( $(date +%s) - t0 )) | -")

# ---------------------------------------------------------------------------------------------------------
# 2. GPU tests (kernels, and any gpu-marked model test); parallel workers when pytest-xdist is there
if wanted tests; then
  limit=$(step_limit tests 110)
  (( limit < 15 )) && limit=15  # the tests come first: the budget can only be short when it is set very low
  # -v: one line per finished test in the log, so a run stopped at its limit still shows what passed
  PYTEST=("$PY" -m pytest -v -m gpu -p no:cacheprovider tests/kernels tests/model)
  "$PY" -c "import xdist" 2>/dev/null && [[ "$DRY_RUN" != 1 ]] && PYTEST+=(-n 8)
  "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 100)
  log "GPU tests (limit ${limit}s): ${PYTEST[*]}"
  t0=$(date +%s)
  run_limited tests "$limit" "${PYTEST[@]}"
  if [[ $RC == 0 ]]; then
    status=passed
  elif [[ $RC == 124 || $RC == 137 ]]; then
    status="TIMED OUT after ${limit}s"
  else
    status="FAILED (pytest rc $RC)"
  fi
  [[ $RC != 0 ]] && FAILED=1
  { grep -E '^(FAILED|ERROR) ' "$WORK/tests.log" || grep -E ' (FAILED|ERROR) ' "$WORK/tests.log"
    tail -n 1 "$WORK/tests.log"; } | sed 's/^/    /'  # in the log already
  SUMMARY+=("tests | $status | $(( $(date +%s) - t0 )) | $limit")
fi

# ---------------------------------------------------------------------------------------------------------
# 3. benchmarks: one process per part, each under its own limit; a part that writes no file becomes a
#    "not measured" row of the merged results
PARTS=()
MISSING=()
bench_part() {  # name module cap [VAR=value ...]
  local name=$1 module=$2 cap=$3
  shift 3
  wanted "$name" || return 0
  local limit
  limit=$(step_limit "$name" "$cap")
  if (( limit < 15 )); then
    log "$name: not run, the budget is spent"
    MISSING+=(--missing "$module=$name: not run, the ${BUDGET}s budget was spent")
    SUMMARY+=("$name | not run (budget) | 0 | -")
    FAILED=1
    return 0
  fi
  log "benchmark $name (limit ${limit}s)"
  local t0
  t0=$(date +%s)
  run_limited "$name" "$limit" env "$@" "$PY" -m benchmarks.run "${SMOKE[@]}" --only "$module" \
    --output "$WORK/$name.json"
  local secs=$(( $(date +%s) - t0 )) status
  if [[ -s "$WORK/$name.json" ]]; then
    PARTS+=("$WORK/$name.json")
    status=$([[ $RC == 0 ]] && echo ok || echo "ok, rc $RC (module errors recorded)")
  else
    local why="exited with status $RC"
    [[ $RC == 124 || $RC == 137 ]] && why="timed out after ${limit}s"
    MISSING+=(--missing "$module=$name: $why (gpu_check time limit; log: logs.tar.gz $name.log)")
    status="NO RESULTS: $why"
    FAILED=1
  fi
  grep -E '^\[benchmarks\]' "$WORK/$name.log" | sed 's/^/    /'  # in the log already
  SUMMARY+=("$name | $status | $secs | $limit")
}
# name               module    cap  settings (the floors are in FLOOR above)
bench_part attention-bidir  attention 150 BELLM_BENCH_ATTENTION_MASKS=bidir
bench_part pool             pool       45
bench_part encode           encode    100 BELLM_BENCH_ENCODE_SENTENCES="$ENCODE_SENTENCES"
bench_part train            train      90
bench_part attention-causal attention 150 BELLM_BENCH_ATTENTION_MASKS=causal

# ---------------------------------------------------------------------------------------------------------
# 4. merge, report, targets, pack
log "merge, report, targets"
t0=$(date +%s)
COMMIT=${GPU_CHECK_COMMIT:-}
[[ -z "$COMMIT" ]] && COMMIT=$(git rev-parse --short HEAD 2>/dev/null || true)
MERGE=("$PY" -m benchmarks.merge --output "$OUT/results.json" "${PARTS[@]}" "${MISSING[@]}")
[[ -n "$COMMIT" ]] && MERGE+=(--commit "$COMMIT")
"${MERGE[@]}" 2>&1 | tee -a "$LOG"
cp "$OUT/results.json" "$WORK/report/benchmarks/results.json" 2>/dev/null
REPORT=("$PY" -m benchmarks.report "$WORK/report/benchmarks/results.json" --output "$WORK/report/BENCHMARKS.md"
        --charts-dir "$WORK/report/benchmarks/charts")
# keep BENCHMARKS.md's CPU section: every committed bench_cpu results file, and the serving table
# (in the order of the regenerate command in benchmarks/README.md, which is the order of the section's groups)
CPU_RESULTS=()
for f in benchmarks/results-cpu{,-stsb,-budget,-train,-train-smollm2}.json; do [[ -f "$f" ]] && CPU_RESULTS+=("$f"); done
(( ${#CPU_RESULTS[@]} )) && REPORT+=(--cpu "${CPU_RESULTS[@]}")
[[ -f benchmarks/results-serve.json ]] && REPORT+=(--serve benchmarks/results-serve.json)
[[ "$DRY_RUN" == 1 ]] && REPORT+=(--allow-cpu)
if timeout 60 "${REPORT[@]}" 2>&1 | tee -a "$LOG"; then
  cp "$WORK/report/BENCHMARKS.md" "$OUT/BENCHMARKS.md"
  tar -czf "$OUT/bench-report.tar.gz" -C "$WORK/report" BENCHMARKS.md benchmarks
else
  log "the report failed (see above)"
  FAILED=1
fi
"$PY" -m benchmarks.targets "$OUT/results.json" >"$OUT/targets.txt" 2>>"$LOG"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" $(cd "$WORK" && ls ./*.log 2>/dev/null | sed 's|^\./||')
SUMMARY+=("report | done | $(( $(date +%s) - t0 )) | -")

{
  echo
  echo "## Steps ($(( $(date +%s) - START ))s of the ${BUDGET}s budget)"
  echo
  echo "| step | status | seconds | limit |"
  echo "|---|---|---|---|"
  printf '| %s |\n' "${SUMMARY[@]}"
  echo
  echo "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
  echo
  cat "$OUT/targets.txt"
} | tee -a "$LOG"
rm -rf "$WORK"
exit "$FAILED"
