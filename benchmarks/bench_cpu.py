"""CPU benchmark on the real SmolLM2-135M-Instruct (GGUF, dequantised to float32): bellm vs its peers.

    python -m benchmarks.bench_cpu [--rounds 2] [--groups stsb,long-2k,long-8k] [--threads 2]
                                   [--output benchmarks/results-cpu.json] [--model-dir DIR]
    python -m benchmarks.report --cpu benchmarks/results-cpu.json   # the CPU section of BENCHMARKS.md

Groups (the same loaded weights for every contender):

- ``stsb``: the first 768 STS-B test sentences (``--sentences`` for fewer) with BeLLM's prompt, last-token
  pooling. Contenders: bellm (``Encoder.encode``, packed batches), the unpatched model with sdpa on
  length-sorted padded batches of 64 (``hf-sdpa-sorted``), sentence-transformers ``encode`` (batch 64) around
  the same model;
- ``long-2k`` / ``long-8k``: one input of plain words (STS-B sentences joined) of 2,048 / 8,000 tokens, no
  prompt, last-token pooling. Contenders: bellm and the unpatched model with sdpa (``hf-sdpa``);
- ``stsb-budget``: the first 384 ``stsb`` sentences through bellm at token budgets of 1k, 2k, 4k and 8k
  tokens per packed batch (``bellm-1k`` ... ``bellm-8k``): how the CPU default of ``max_tokens_per_batch`` was
  chosen; run it at several ``--threads``;
- ``train-tiny`` / ``train-smollm2``: one training step (forward, AnglE loss, backward, AdamW) on 4 SNLI
  triplets under BeLLM's prompt, LoRA r 64 on every linear layer, the last layer bidirectional, on the
  random-weight tiny llama / the real SmolLM2 weights. Contenders: bellm on its CPU path (``bellm``), bellm with
  ``bellm_kernels`` running :mod:`bellm_kernels.reference` instead (``bellm-reference``: the path the CPU path
  replaced), and the unpatched model on a padded batch with a per-layer mask (``hf-sdpa-padded``). One
  process per round holds the model and the impls take turns step by step (:func:`measure_train`); the time
  is the median of 20 (tiny) / 3 (SmolLM2) steps after a warm-up step; "max abs diff vs HF" compares the
  losses on the untouched model.

bellm runs with its default ``from_layer`` (every layer causal on bellm's attention path: the same maths as
the peers, so the embeddings are compared: ``max_abs_diff_vs_hf``).

Each measurement is its own subprocess (model load, a short warm-up, then the timed workload once), so its
peak memory is its own: the peak resident set of the timed part (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` of the whole process, load included). Contenders alternate
in rounds (order reversed every other round), so load from other processes hits them alike; the row is the
median over rounds. Nothing asserts on speed.

An existing ``--output`` file keeps the groups this run does not measure (at the same ``--threads``); every row
records its run (date, commit, threads, load average at start and end of its group).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GROUPS = {
    "stsb": ("bellm", "hf-sdpa-sorted", "sentence-transformers"),
    "long-2k": ("bellm", "hf-sdpa"),
    "long-8k": ("bellm", "hf-sdpa"),
    "stsb-budget": ("bellm-1k", "bellm-2k", "bellm-4k", "bellm-8k"),
    "train-tiny": ("bellm", "bellm-reference", "hf-sdpa-padded"),
    "train-smollm2": ("bellm", "bellm-reference", "hf-sdpa-padded"),
}
TRAIN_TRIPLETS = 4  # SNLI triplets per training step (12 sequences)
TRAIN_STEPS = {"train-tiny": 20, "train-smollm2": 3}  # timed steps per measurement, after a warm-up step
LONG_TOKENS = {"long-2k": 2048, "long-8k": 8000}
STSB_SENTENCES = 768
BUDGET_SENTENCES = 384  # stsb-budget: ~6.7k tokens, 1 packed batch at 8k, 2 at 4k, 4 at 2k, 7 at 1k
BATCH = 64


# ------------------------------------------------------------------------------------------------------
# inputs


def _stsb_sentences() -> list[str]:
    from bellm.models import default_data_dir

    with gzip.open(default_data_dir() / "sts" / "stsb_test.tsv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


def _long_text(tok, tokens: int) -> str:
    """Plain words (STS-B sentences joined) cut to exactly ``tokens`` tokens under ``tok``."""
    text = " ".join(_stsb_sentences())
    while len(tok(text, add_special_tokens=False)["input_ids"]) < tokens:
        text = text + " " + text
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    cut = text[: enc["offset_mapping"][tokens - 1][1]]
    for _ in range(8):  # re-tokenizing the cut text can merge differently at the edge; trim until exact
        n = len(tok(cut, add_special_tokens=True)["input_ids"])
        if n <= tokens:
            break
        cut = cut[: len(cut) - 2]
    return cut


def _workload(group: str, tok, sentences: int | None = None) -> tuple[list[str], str]:
    """``(texts, prompt)`` of a group; the prompt has one ``{text}``; ``sentences`` overrides the number of
    STS-B sentences of ``stsb`` / ``stsb-budget``."""
    from bellm.encoder import BELLM_PROMPT

    if group == "stsb":
        return _stsb_sentences()[: sentences or STSB_SENTENCES], BELLM_PROMPT
    if group == "stsb-budget":
        return _stsb_sentences()[: sentences or BUDGET_SENTENCES], BELLM_PROMPT
    return [_long_text(tok, LONG_TOKENS[group])], "{text}"


# ------------------------------------------------------------------------------------------------------
# contenders (each returns a function texts -> (n, dim) float32 embeddings)


def _hf(model, tok, prompt: str, batch: int):
    """The unpatched model, sdpa, length-sorted padded batches, last real token."""
    import torch

    head, tail = prompt.split("{text}")

    def run(texts):
        prompted = [head + t + tail for t in texts]
        order = sorted(range(len(prompted)), key=lambda i: -len(prompted[i]))
        out = [None] * len(prompted)
        with torch.inference_mode():
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                enc = tok([prompted[j] for j in idx], padding=True, return_tensors="pt")
                hidden = model(**enc, use_cache=False).last_hidden_state
                mask = enc["attention_mask"].bool()
                last = torch.where(mask, torch.arange(mask.shape[1]), -1).amax(dim=1)
                for j, row in zip(idx, hidden[torch.arange(len(idx)), last]):
                    out[j] = row.float()
        return torch.stack(out)

    return run


def _sentence_transformers(model, prompt: str, model_dir: str):
    """sentence-transformers' Transformer + last-token Pooling around the same in-memory model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    # the saved model's folder; the loaded copy is replaced by `model`. Plain text only: for a model with a chat
    # template, sentence-transformers would otherwise wrap every input in it (a system prompt and role markers:
    # about four times the tokens, and other embeddings)
    text_only = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
    module = Transformer(model_dir, modality_config=text_only, module_output_name="token_embeddings")
    module.model = model
    st = SentenceTransformer(modules=[module, Pooling(model.config.hidden_size, pooling_mode="lasttoken")],
                             device="cpu")
    head, tail = prompt.split("{text}")
    return lambda texts: st.encode([head + t + tail for t in texts], batch_size=BATCH, convert_to_tensor=True)


def _contender(impl: str, model, tok, prompt: str, model_dir: str):
    if impl == "bellm" or impl.endswith("k"):  # bellm-4k: a token budget of 4 * 1024 per packed batch
        from bellm.encoder import Encoder

        budget = None if impl == "bellm" else int(impl.split("-")[1][:-1]) * 1024
        enc = Encoder(model, tok, prompt=prompt, pooling="last", max_length=8192, max_tokens_per_batch=budget)
        return lambda texts: enc.encode(texts, convert_to_tensor=True, show_progress_bar=False)
    if impl.startswith("hf-sdpa"):
        return _hf(model, tok, prompt, BATCH)
    return _sentence_transformers(model, prompt, model_dir)


# ------------------------------------------------------------------------------------------------------
# one measurement (child process)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_model(path: Path) -> None:
    """The real SmolLM2 base model as float32 safetensors + config + tokenizer in ``path`` (the GGUF is
    de-quantised once, into bellm's converted-GGUF cache; later calls read that)."""
    import torch

    from bellm.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(dtype=torch.float32, device="cpu")
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))


def measure_one(group: str, impl: str, threads: int, model_dir: str, sentences: int | None = None) -> dict:
    """Load the model, warm up on a short input, time the group's workload once; peak RSS of the timed part."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    if group.startswith("train-"):
        return measure_train(group, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                      local_files_only=True).eval()
    texts, prompt = _workload(group, tok, sentences)
    run = _contender(impl, model, tok, prompt, model_dir)
    run(texts[:BATCH] if len(texts) > 1 else [texts[0][:2000]])  # warm-up: thread pool, allocator
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    emb = run(texts)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_mb(reset)
    lengths = [len(x) for x in tok([prompt.replace("{text}", t) for t in texts])["input_ids"]]
    return {"seconds": seconds, "peak_rss_mb": peak, "peak_scope": "timed part" if reset else "process",
            "tokens": sum(lengths), "texts": len(texts), "embeddings": emb.float().tolist()}


# ------------------------------------------------------------------------------------------------------
# one training measurement (child process)


@contextlib.contextmanager
def _reference_kernels():
    """``bellm_kernels`` on CPU tensors runs :mod:`bellm_kernels.reference` (what the CPU path replaced)."""
    from bellm_kernels import cpu, reference

    saved = cpu.attention, cpu.pool

    def attention(q, k, v, *, causal, scale, cu_seqlens=None, attention_mask=None, eager_order=False):
        return reference.attention(q, k, v, causal=causal, scale=scale, cu_seqlens=cu_seqlens,
                                   attention_mask=attention_mask)

    cpu.attention, cpu.pool = attention, reference.pool
    try:
        yield
    finally:
        cpu.attention, cpu.pool = saved


def _train_model(group: str, model_dir: str):
    """``train-tiny``: bench_train's random-weight TINY llama with LoRA r64; ``train-smollm2``: the real
    SmolLM2 weights with the same LoRA (r 64, alpha 128, every linear layer, dropout 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from benchmarks._shapes import TINY
    from benchmarks.bench_train import _model

    if group == "train-tiny":
        return _model(TINY, "cpu", torch.float32, r=64)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                      local_files_only=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules=targets))


def measure_train(group: str, model_dir: str) -> dict:
    """``{impl: result}`` for every impl of a ``train-*`` group, in one process on one model: the impls take
    turns step by step (order reversed every other step), each with its own AdamW, so load from other
    processes hits them alike. A step is a packed (or padded) forward, AnglE loss, backward and AdamW step on
    ``TRAIN_TRIPLETS`` SNLI triplets under BeLLM's prompt, the last layer bidirectional; ``seconds`` is the
    median of ``TRAIN_STEPS[group]`` steps after one warm-up step per impl. ``embeddings`` holds each impl's
    loss on the untouched model (compared across impls); the peak RSS is the process's, shared by the impls."""
    import torch

    from bellm.losses import AnglELoss
    from bellm.surgery import patch, unpatch
    from bellm.trainer import batch_loss
    from benchmarks.bench_train import _padded_inputs, _padded_loss, _triplets

    model = _train_model(group, model_dir)
    config = model.get_base_model().config
    from_layer = config.num_hidden_layers - 1
    columns = _triplets(TRAIN_TRIPLETS, config.vocab_size)
    loss_fn = AnglELoss()
    input_ids, mask = _padded_inputs(columns, "cpu")
    impls = GROUPS[group]

    def loss_of(impl: str):
        patched = getattr(model.get_base_model().config, "bellm", None) is not None  # patch copies the config
        if impl == "hf-sdpa-padded":
            if patched:
                unpatch(model)
            return _padded_loss(model, loss_fn, columns, from_layer, input_ids, mask, torch.float32)
        if not patched:
            patch(model, from_layer=from_layer)
        with _reference_kernels() if impl == "bellm-reference" else contextlib.nullcontext():
            return batch_loss(model, loss_fn, columns, None, torch.device("cpu"))[0]

    model.train()
    first_loss = {}
    for impl in impls:
        with torch.no_grad():
            first_loss[impl] = float(loss_of(impl))
    optimizers = {impl: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
                  for impl in impls}

    def step(impl: str) -> float:
        t0 = time.perf_counter()
        with _reference_kernels() if impl == "bellm-reference" else contextlib.nullcontext():
            loss_of(impl).backward()
        optimizers[impl].step()
        optimizers[impl].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for impl in impls:
        step(impl)  # warm-up: thread pool, allocator, optimizer state
    reset = _reset_peak_rss()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for k in range(TRAIN_STEPS[group]):
        for impl in impls if k % 2 == 0 else impls[::-1]:
            times[impl].append(step(impl))
    peak = _peak_rss_mb(reset)
    tokens = sum(len(ids) for col in columns for ids in col)
    return {impl: {"seconds": statistics.median(times[impl]), "peak_rss_mb": peak,
                   "peak_scope": "timed part (all impls)" if reset else "process", "tokens": tokens,
                   "texts": 3 * TRAIN_TRIPLETS, "embeddings": [[first_loss[impl]]]} for impl in impls}


# ------------------------------------------------------------------------------------------------------
# the run (parent process)


def _child(group: str, impl: str, threads: int, model_dir: str, sentences: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_cpu", "--child", group, impl, "--threads", str(threads),
           "--model-dir", model_dir] + ([] if sentences is None else ["--sentences", str(sentences)])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"{group}/{impl} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().split("\n")[-1])


def collect(groups: list[str], rounds: int, threads: int, model_dir: str | None = None, log=print,
            sentences: int | None = None) -> list[dict]:
    """Rows ``{group, impl, median_ms, p20_ms, p80_ms, peak_rss_mb, tokens_per_s, max_abs_diff_vs_hf, ...}``.

    ``model_dir``: the model saved by :func:`save_model`, written there first when absent (default: a temporary
    folder)."""
    import tempfile

    if model_dir is not None:
        if not (Path(model_dir) / "model.safetensors").exists():
            Path(model_dir).mkdir(parents=True, exist_ok=True)
            save_model(Path(model_dir))
        return _collect(groups, rounds, threads, model_dir, log, sentences)
    with tempfile.TemporaryDirectory() as model_dir:
        save_model(Path(model_dir))
        return _collect(groups, rounds, threads, model_dir, log, sentences)


def _collect(groups, rounds, threads, model_dir, log, sentences) -> list[dict]:
    import torch

    from benchmarks._timing import summarize

    rows = []
    for group in groups:
        impls = GROUPS[group]
        samples: dict[str, list[dict]] = {impl: [] for impl in impls}
        failed: dict[str, str] = {}
        for r in range(rounds):
            for impl in ("all",) if group in TRAIN_STEPS else impls if r % 2 == 0 else impls[::-1]:
                try:
                    result = _child(group, impl, threads, model_dir, sentences)
                except RuntimeError as err:  # a contender that cannot run becomes a skipped row
                    log(str(err))
                    failed.update({i: str(err)[-300:] for i in (impls if impl == "all" else [impl])})
                    continue
                for name, one in (result.items() if impl == "all" else [(impl, result)]):
                    log(f"{group} round {r + 1}/{rounds} {name}: {one['seconds']:.3g} s, "
                        f"peak {one['peak_rss_mb']:.0f} MB")
                    samples[name].append(one)
        peer = next((i for i in impls if i.startswith("hf-")), None)
        peer_emb = torch.tensor(samples[peer][0]["embeddings"]) if peer and samples[peer] else None
        for impl, results in samples.items():
            if not results:
                rows.append({"module": "cpu", "group": group, "impl": impl, "skipped": failed.get(impl, "no run")})
                continue
            first = results[0]
            timing = summarize([x["seconds"] * 1000 for x in results])
            rss = sorted(x["peak_rss_mb"] for x in results)
            emb = torch.tensor(first["embeddings"])
            rows.append({
                "module": "cpu", "group": group, "impl": impl, **timing,
                "tokens_per_s": first["tokens"] / (timing["median_ms"] / 1000),
                "peak_rss_mb": rss[len(rss) // 2],
                "max_abs_diff_vs_hf": None if peer_emb is None else float((emb - peer_emb).abs().max()),
                "rounds": len(results),
                "note": f"{first['texts']} text(s), {first['tokens']} tokens"
                        + (f"; one step, median of {TRAIN_STEPS[group]} per round, impls taking turns in one "
                           "process; diff: loss" if group in TRAIN_STEPS else "")
                        + f"; peak RSS of the {first['peak_scope']}",
            })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated, from: " + ", ".join(GROUPS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads per contender (default: %(default)s)")
    p.add_argument("--output", default="benchmarks/results-cpu.json")
    p.add_argument("--sentences", type=int, help=f"STS-B sentences of stsb / stsb-budget (default "
                   f"{STSB_SENTENCES} / {BUDGET_SENTENCES}; fewer for a shorter run on a busy machine)")
    p.add_argument("--child", nargs=2, metavar=("GROUP", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help="keep the de-quantised model (safetensors) in this folder and reuse it "
                   "in later runs (default: a temporary folder, de-quantising the GGUF every run)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(*args.child, threads=args.threads, model_dir=args.model_dir,
                                     sentences=args.sentences)))
        return 0
    if args.sentences is not None and args.sentences < 1:
        p.error(f"--sentences must be >= 1, got {args.sentences}")
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    from bellm._io import atomic_write_text
    from benchmarks._timing import environment

    env = {**environment(), "cpu_count": os.cpu_count()}
    output = Path(args.output)
    kept = _earlier_rows(output)
    rows: list[dict] = []
    for group in groups:  # the results file is rewritten after every group, so a long run can be cut short
        run = {"date": env["date"], "commit": env.get("commit"), "threads": args.threads,
               "load_average_at_start": _load_average()}
        new = collect([group], args.rounds, args.threads, args.model_dir, log=lambda s: print(s, flush=True),
                      sentences=args.sentences)
        run["load_average_at_end"] = _load_average()
        rows += [{**row, "threads": args.threads, "run": run} for row in new]
        done = {(r["group"], r["threads"]) for r in rows}
        results = {"environment": env, "kind": "cpu",
                   "rows": [r for r in kept if (r["group"], r["threads"]) not in done] + rows}
        atomic_write_text(output, json.dumps(results, indent=1))
        print(f"wrote {output} ({group} done)", flush=True)
    return 0


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _earlier_rows(path: Path) -> list[dict]:
    """The rows of an earlier results file at ``path`` (kept unless this run measures their group again at the
    same thread count), each with its run's date, commit, threads and load; none when there is no such file."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if earlier.get("kind") != "cpu":
        return []
    env = earlier.get("environment", {})
    run = {k: env.get(k) for k in ("date", "commit", "threads", "load_average_at_start", "load_average_at_end")}
    return [{"threads": run["threads"], "run": run, **row} for row in earlier.get("rows", [])]

if __name__ == "__main__":
    sys.exit(main())
