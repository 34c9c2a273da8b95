"""The benchmark runner and report: fake modules with known numbers, then the real suite's ``--smoke`` run.

The fake modules (put into ``sys.modules``, with ``benchmarks.run.MODULES`` monkeypatched) pin the runner's
error handling and the report's ratio arithmetic before, and independently of, the real bench modules. The
end-to-end test runs ``python -m benchmarks.run --smoke`` on whichever real modules exist, then
``python -m benchmarks.report --allow-cpu``, in subprocesses as CI would. Nothing here judges speed.
"""

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from benchmarks import report, run

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(group, impl, median, **extra):
    return {
        "group": group,
        "impl": impl,
        "median_ms": median,
        "p20_ms": median * 0.9,
        "p80_ms": median * 1.1,
        **extra,
    }


FAKE_ROWS = [
    _row("g1 fwd", "bellm", 2.0, tflops=100.0, peak_mem_mb=12.5),
    _row("g1 fwd", "sdpa-flash", 4.0, tflops=50.0),
    _row("g1 fwd", "flex", 3.0, tflops=66.7, note="compiled"),
    {"group": "g1 fwd", "impl": "flash-attn", "skipped": "flash_attn is not importable"},
    _row("g2 pool", "bellm", 6.0, gbps=10.0),
    _row("g2 pool", "index_add", 3.0, gbps=20.0),
    _row("g3 alone", "bellm", 1.0),
]


def _fake_module(name, collect):
    module = types.ModuleType(name)
    module.collect = collect
    return module


@pytest.fixture
def fake_suite(monkeypatch):
    """MODULES = fake_ok (known rows), fake_crash (raises), fake_bad (a zero time), fake_absent (no file)."""

    def crash(smoke=False):
        raise RuntimeError("boom in collect")

    def bad(smoke=False):
        return [_row("g9", "bellm", 1.0), _row("g9", "sdpa-math", 0.0)]

    def ok(smoke=False):
        return [dict(r) for r in FAKE_ROWS]

    fakes = {"fake_ok": ok, "fake_crash": crash, "fake_bad": bad}
    for name, collect in fakes.items():
        monkeypatch.setitem(sys.modules, run.module_path(name), _fake_module(run.module_path(name), collect))
    monkeypatch.setattr(run, "MODULES", ("fake_ok", "fake_crash", "fake_bad", "fake_absent"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # main(--smoke) only sets it when unset


def test_runner_records_crashes_and_continues(fake_suite, tmp_path):
    out = tmp_path / "results.json"
    assert run.main(["--smoke", "--output", str(out)]) == 1  # a crash fails a smoke run
    results = json.loads(out.read_text())
    assert results["smoke"] is True and results["schema"] == run.SCHEMA
    assert {m: s["status"] for m, s in results["modules"].items()} == {
        "fake_ok": "ok",
        "fake_crash": "crashed",
        "fake_bad": "crashed",
        "fake_absent": "absent",
    }
    ok_rows = [r for r in results["rows"] if r["module"] == "fake_ok"]
    assert [(r["group"], r["impl"]) for r in ok_rows] == [(r["group"], r["impl"]) for r in FAKE_ROWS]
    crash_rows = [r for r in results["rows"] if r["module"] == "fake_crash"]
    assert len(crash_rows) == 1 and "boom in collect" in crash_rows[0]["skipped"]
    bad_rows = [r for r in results["rows"] if r["module"] == "fake_bad"]
    assert "skipped" not in bad_rows[0] and "median_ms=0.0" in bad_rows[1]["skipped"]
    assert (bad_rows[1]["group"], bad_rows[1]["impl"]) == ("g9", "sdpa-math")
    assert len(results["errors"]) == 2 and "boom" in results["errors"][0]
    assert "torch" in results["environment"] and "date" in results["environment"]

    # Outside smoke mode a crash is recorded but the exit status stays 0; --only picks modules.
    assert run.main(["--output", str(out)]) == 0
    assert run.main(["--only", "fake_ok", "--output", str(out)]) == 0
    assert set(json.loads(out.read_text())["modules"]) == {"fake_ok"}
    assert run.main(["--only", "nope", "--output", str(out)]) == 2


def test_runner_rejects_malformed_rows():
    assert run.row_problem(_row("g", "bellm", 1.0)) is None
    assert run.row_problem({"group": "g", "impl": "x", "skipped": "no GPU"}) is None
    assert "skipped" in run.row_problem({"group": "g", "impl": "x", "skipped": ""})
    assert "median_ms" in run.row_problem({"group": "g", "impl": "x"})
    assert "median_ms" in run.row_problem(_row("g", "x", float("nan")))
    assert "impl" in run.row_problem({"group": "g", "median_ms": 1.0})
    assert run.jsonable({"a": float("inf"), "b": (1, 2.5)}) == {"a": None, "b": [1, 2.5]}


def test_cpu_quantiles_stay_within_the_measured_times():
    """Two very different times once gave a negative p20 (statistics.quantiles extrapolating)."""
    from benchmarks._timing import measure

    delays = iter([0.0, 0.0, 0.02] * 10)  # warm-up, then a fast and a slow call
    t = measure(lambda: time.sleep(next(delays)), device="cpu", warmup_ms=0, rep_ms=1, min_reps=2)
    assert 0 < t["p20_ms"] <= t["median_ms"] <= t["p80_ms"] < 1000
    assert run.row_problem({"group": "g", "impl": "x", **t}) is None


def test_summarize_stays_within_the_samples_and_is_the_only_quantile_code():
    """bench_train once kept its own copy of the quantile code, without the fix above (p20 = -430 ms in CI)."""
    from benchmarks._timing import summarize

    s = summarize([10.0, 1000.0])  # statistics.quantiles' default method gives p20 = -386 here
    assert 10.0 <= s["p20_ms"] <= s["median_ms"] <= s["p80_ms"] <= 1000.0
    assert summarize([5.0]) == {"median_ms": 5.0, "p20_ms": 5.0, "p80_ms": 5.0}
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    copies = [
        p.name
        for p in (ROOT / "benchmarks").glob("*.py")
        if p.name != "_timing.py" and "quantiles(" in p.read_text()
    ]
    assert copies == [], f"use benchmarks._timing.summarize, not statistics.quantiles, in {copies}"


def _results(rows, **env):
    environment = {
        "torch": "2.11.0",
        "triton": "3.6.0",
        "transformers": "5.17.0",
        "python": "3.11.9",
        "commit": "abc1234",
        "date": "2026-11-25T00:00:00+00:00",
        **env,
    }
    return {
        "schema": 1,
        "smoke": False,
        "environment": environment,
        "modules": {},
        "errors": [],
        "rows": [{"module": "fake_ok", **r} for r in rows],
    }


def test_ratio_to_best_peer_on_known_numbers():
    results = _results(FAKE_ROWS)
    by_group = {s["group"]: s for s in report.summary(results)}
    assert by_group["g1 fwd"]["peer"] == "flex"  # fastest non-bellm; the skipped flash-attn is no peer
    assert by_group["g1 fwd"]["ratio"] == pytest.approx(2.0 / 3.0)
    assert by_group["g1 fwd"]["speedup"] == pytest.approx(1.5)
    assert by_group["g2 pool"]["ratio"] == pytest.approx(2.0) and by_group["g2 pool"]["peer"] == "index_add"
    assert by_group["g3 alone"]["peer"] is None and by_group["g3 alone"]["ratio"] is None

    md = report.render_markdown(results)
    lines = md.splitlines()
    bellm_g1 = next(line for line in lines if line.startswith("| **bellm** | 2 |"))
    assert "**0.67** (1.50× faster)" in bellm_g1 and "100.0" in bellm_g1 and "1.8–2.2" in bellm_g1
    assert any(
        line.startswith("| flex | 3 |") and "| 1.00 (fastest peer) | 1.50× |" in line for line in lines
    )
    assert any(line.startswith("| sdpa-flash | 4 |") and "| 1.33 | 2.00× |" in line for line in lines)
    assert any(line.startswith("| index_add | 3 |") and "| 0.50× |" in line for line in lines)
    assert any("flash-attn | skipped" in line and "flash_attn is not importable" in line for line in lines)
    assert any("**2.00** (2.00× slower)" in line for line in lines)
    assert any(line.startswith("| fake_ok | g1 fwd | 2 | flex | 3 | 0.67 | **1.50×**") for line in lines)
    assert "no peer ran" in md
    assert "| TFLOP/s |" in md and "| GB/s |" in md and "| peak MiB |" in md


def _write(tmp_path, results, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return path


def test_report_refuses_cpu_and_smoke_results_without_allow_cpu(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    charts = tmp_path / "charts"
    cpu = _write(tmp_path, {**_results(FAKE_ROWS), "smoke": True})
    assert report.main([str(cpu), "--output", str(md), "--charts-dir", str(charts)]) == 2
    assert not md.exists() and not charts.exists()
    gpu_smoke = _write(tmp_path, {**_results(FAKE_ROWS, gpu="NVIDIA H100"), "smoke": True}, "gpu.json")
    assert report.main([str(gpu_smoke), "--output", str(md), "--charts-dir", str(charts)]) == 2
    assert not md.exists()

    assert report.main([str(cpu), "--output", str(md), "--charts-dir", str(charts), "--allow-cpu"]) == 0
    text = md.read_text()
    assert "CPU smoke run — not a GPU benchmark" in text.splitlines()[2]
    assert (charts / "fake_ok.png").read_bytes().startswith(PNG_MAGIC)


def test_report_on_gpu_results(tmp_path):
    results = _results(
        FAKE_ROWS, gpu="NVIDIA A100-SXM4-80GB", capability="8.0", driver="560.35.03", dirty=True
    )
    results["errors"] = ["fake_crash: collect() raised: RuntimeError('boom')"]
    md = tmp_path / "docs" / "BENCHMARKS.md"
    charts = tmp_path / "charts"
    source = _write(tmp_path, results)
    assert report.main([str(source), "--output", str(md), "--charts-dir", str(charts)]) == 0
    text = md.read_text()
    assert "smoke" not in text.lower()
    for fact in (
        "NVIDIA A100-SXM4-80GB (sm 8.0)",
        "560.35.03",
        "2.11.0 / 3.6.0 / 5.17.0",
        "abc1234 + uncommitted changes",
        "2026-11-25",
        "RuntimeError('boom')",
    ):
        assert fact in text
    link = next(line for line in text.splitlines() if line.startswith("![fake_ok"))
    target = link[link.index("(") + 1 : -1]
    assert target == "../charts/fake_ok.png" and (md.parent / target).read_bytes().startswith(PNG_MAGIC)


def test_report_reads_pytest_benchmark_json(tmp_path):
    env = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"}
    rows = [{"module": "fake_ok", **r} for r in FAKE_ROWS]
    info = {"module": "fake_ok", "smoke": False, "environment": env, "rows": rows}
    data = {"machine_info": {}, "benchmarks": [{"name": "test_module[fake_ok]", "extra_info": info}]}
    results = report.load_results(_write(tmp_path, data))
    assert report.is_gpu_benchmark(results) and len(results["rows"]) == len(FAKE_ROWS)
    with pytest.raises(ValueError, match="not a results file"):
        report.load_results(_write(tmp_path, {"hello": 1}))


def test_smoke_suite_end_to_end(tmp_path):
    """The CI path: the real modules' --smoke run, then the report, as subprocesses."""
    # let the runner choose the interpreter; drop pytest-xdist's worker variables, which would make the suite's
    # own pytest session switch pytest-benchmark off
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_XDIST")}
    results_path, md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--output", str(results_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("[benchmarks]"))
    assert proc.returncode == 0, log + "\n" + proc.stderr[-5000:]
    results = json.loads(results_path.read_text())
    assert results["smoke"] is True and not results["errors"]
    present = [m for m, s in results["modules"].items() if s["status"] != "absent"]
    assert all(results["modules"][m]["status"] == "ok" and results["modules"][m]["rows"] for m in present)
    assert all(run.row_problem(r) is None for r in results["rows"])
    assert {r["module"] for r in results["rows"]} == set(present)

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.report",
            str(results_path),
            "--allow-cpu",
            "--output",
            str(md),
            "--charts-dir",
            str(tmp_path / "charts"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = md.read_text()
    assert "not a GPU benchmark" in text or "not a benchmark" in text
    for row in results["rows"]:
        assert f"### {report._cell(row['group'])}" in text

    # The pytest-benchmark entry on the quickest real module; the report reads its JSON.
    if present:
        name = min(present, key=lambda m: results["modules"][m]["seconds"])
        pb_json = tmp_path / "pb.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "benchmarks/",
                "-q",
                "-p",
                "no:cacheprovider",
                "--benchmark-only",
                "--bench-smoke",
                "--bench-only",
                name,
                f"--benchmark-json={pb_json}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-5000:]
        pb_rows = report.load_results(pb_json)["rows"]
        assert len(pb_rows) == results["modules"][name]["rows"] and {r["module"] for r in pb_rows} == {name}


def test_report_cpu_section_from_bench_cpu_results(tmp_path):
    """--cpu alone writes a CPU-only BENCHMARKS.md: labelled CPU, bellm's speed-up and memory ratio per peer."""
    rows = [
        {"module": "cpu", "group": "long-2k", "impl": "bellm", "median_ms": 2000.0, "p20_ms": 2000.0,
         "p80_ms": 2000.0, "tokens_per_s": 1024.0, "peak_rss_mb": 1100.0, "max_abs_diff_vs_hf": 1e-5,
         "rounds": 1, "note": "1 text(s), 2048 tokens"},
        {"module": "cpu", "group": "long-2k", "impl": "hf-sdpa", "median_ms": 3000.0, "p20_ms": 3000.0,
         "p80_ms": 3000.0, "tokens_per_s": 682.7, "peak_rss_mb": 1000.0, "max_abs_diff_vs_hf": 0.0,
         "rounds": 1, "note": "1 text(s), 2048 tokens"},
    ]
    env = {"cpu": "x86_64", "cpu_count": 2, "threads": 2, "torch": "2.13", "transformers": "5.24",
           "date": "2026-01-01T00:00:00+00:00", "load_average_at_start": 1.0, "load_average_at_end": 2.0}
    source = tmp_path / "results-cpu.json"
    source.write_text(json.dumps({"environment": env, "kind": "cpu", "rows": rows}))
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--cpu", str(source), "--output", str(out)]) == 0
    text = out.read_text()
    assert "## CPU (not a GPU benchmark)" in text and "No GPU benchmark has been run yet" in text
    hf_line = next(line for line in text.splitlines() if line.startswith("| hf-sdpa |"))
    assert "**1.50×**" in hf_line and "| 1.10 |" in hf_line  # 3000 / 2000 faster; 1100 / 1000 memory
    with pytest.raises(SystemExit):  # neither a results file nor --cpu
        report.parse_args([])


def test_report_cpu_section_per_run_lines_and_fastest_row_reference(tmp_path):
    """Rows that record their run get a run line per group; a group without a plain bellm row (the token-budget
    sweep) is compared with its fastest row."""
    run_env = {"date": "2026-01-02T00:00:00+00:00", "commit": "abc1234", "threads": 1,
               "load_average_at_start": 3.0, "load_average_at_end": 4.0}
    rows = [
        {"module": "cpu", "group": "stsb-budget", "impl": f"bellm-{k}k", "median_ms": ms, "p20_ms": ms,
         "p80_ms": ms, "tokens_per_s": 1.0, "peak_rss_mb": rss, "rounds": 2, "threads": 1, "run": run_env}
        for k, ms, rss in ((1, 3000.0, 900.0), (4, 2000.0, 1000.0))
    ]
    env = {"cpu": "x86_64", "cpu_count": 2, "torch": "2.13", "transformers": "5.24"}
    source = tmp_path / "results-cpu.json"
    source.write_text(json.dumps({"environment": env, "kind": "cpu", "rows": rows}))
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--cpu", str(source), "--output", str(out)]) == 0
    text = out.read_text()
    assert "### stsb-budget, 1 torch thread" in text and "commit abc1234, load average (start, end) 3.0, 4.0" in text
    assert "bellm-4k speed-up over it" in text
    line_1k = next(line for line in text.splitlines() if line.startswith("| bellm-1k |"))
    assert "**1.50×**" in line_1k and "| 1.11 |" in line_1k  # 3000 / 2000; 1000 / 900


def test_report_serve_table(tmp_path):
    """--serve adds the serving table: the batched server's throughput over each arm's, and the forward cost."""
    rows = [
        {"clients": 32, "impl": "offline-encode", "sentences": 64, "rounds": 2, "sentences_per_s": 20.0},
        {"clients": 32, "impl": "bellm-serve", "sentences": 64, "rounds": 2, "sentences_per_s": 16.0,
         "p50_ms": 900.0, "p99_ms": 1500.0},
        {"clients": 32, "impl": "bellm-serve-unbatched", "sentences": 64, "rounds": 2, "sentences_per_s": 8.0,
         "p50_ms": 3000.0, "p99_ms": 4000.0},
    ]
    cost = {"ms_per_sentence_alone": 120.0, "ms_per_sentence_batched": 80.0, "batch": 32, "ceiling": 1.5}
    source = tmp_path / "results-serve.json"
    source.write_text(json.dumps({"kind": "serve", "environment": {"model": "m"}, "rows": rows,
                                  "forward_cost": cost}))
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--serve", str(source), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    offline = next(line for line in lines if line.startswith("| 32 | offline"))
    unbatched = next(line for line in lines if "--no-batching" in line)
    assert "**0.80×**" in offline and "**2.00×**" in unbatched and "| 1,500 |" not in offline
    assert any("(quotient 1.50×" in line and "the unbatched one: all the forward's own gain" in line
               for line in lines)  # 16 / 8 = 2.00 >= 1.50
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "cpu", "rows": []}))
    assert report.main(["--serve", str(bad), "--output", str(out)]) == 2


def test_bench_cpu_keeps_earlier_groups_with_their_run(tmp_path):
    """An earlier results file's rows come back with their run (from its environment) for the merge."""
    from benchmarks import bench_cpu

    env = {"date": "d", "commit": "c", "threads": 2, "load_average_at_start": 1.0, "load_average_at_end": 2.0}
    path = tmp_path / "results-cpu.json"
    path.write_text(json.dumps({"environment": env, "kind": "cpu",
                                "rows": [{"module": "cpu", "group": "long-2k", "impl": "bellm"}]}))
    (row,) = bench_cpu._earlier_rows(path)
    assert row["threads"] == 2 and row["run"]["commit"] == "c" and row["group"] == "long-2k"
    assert bench_cpu._earlier_rows(tmp_path / "absent.json") == []


def test_report_reads_several_cpu_files_each_with_its_run(tmp_path):
    """--cpu A B: the rows of both files, each group with the date and load of its own file's run."""
    paths = []
    for i, group in enumerate(("long-2k", "stsb")):
        env = {"date": f"2026-01-0{i + 1}", "commit": f"c{i}", "threads": 2, "load_average_at_start": float(i),
               "load_average_at_end": float(i)}
        rows = [{"module": "cpu", "group": group, "impl": impl, "median_ms": ms, "p20_ms": ms, "p80_ms": ms,
                 "tokens_per_s": 1.0, "peak_rss_mb": 1000.0} for impl, ms in (("bellm", 1000.0), ("hf-sdpa", 1500.0))]
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps({"environment": env, "kind": "cpu", "rows": rows}))
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--cpu", *map(str, paths), "--output", str(out)]) == 0
    text = out.read_text()
    assert "Run 2026-01-01, commit c0" in text and "Run 2026-01-02, commit c1" in text
    assert "### long-2k, 2 torch threads" in text and "### stsb, 2 torch threads" in text
