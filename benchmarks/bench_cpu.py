"""CPU benchmark on the real SmolLM2-135M-Instruct (GGUF, dequantised to float32): bellm vs its peers.

    python -m benchmarks.bench_cpu [--rounds 2] [--groups stsb,long-2k,long-8k] [--threads 2]
                                   [--output benchmarks/results-cpu.json]
    python -m benchmarks.report --cpu benchmarks/results-cpu.json   # the CPU section of BENCHMARKS.md

Groups (the same loaded weights for every contender):

- ``stsb``: the first 768 STS-B test sentences with BeLLM's prompt, last-token pooling. Contenders: bellm
  (``Encoder.encode``, packed batches), the unpatched model with sdpa on length-sorted padded batches of 64
  (``hf-sdpa-sorted``), sentence-transformers ``encode`` (batch 64) around the same model;
- ``long-2k`` / ``long-8k``: one input of plain words (STS-B sentences joined) of 2,048 / 8,000 tokens, no
  prompt, last-token pooling. Contenders: bellm and the unpatched model with sdpa (``hf-sdpa``).

bellm runs with its default ``from_layer`` (every layer causal on bellm's attention path: the same maths as
the peers, so the embeddings are compared: ``max_abs_diff_vs_hf``).

Each measurement is its own subprocess (model load, a short warm-up, then the timed workload once), so its
peak memory is its own: the peak resident set of the timed part (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` of the whole process, load included). Contenders alternate
in rounds (order reversed every other round), so load from other processes hits them alike; the row is the
median over rounds. Nothing asserts on speed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GROUPS = {
    "stsb": ("bellm", "hf-sdpa-sorted", "sentence-transformers"),
    "long-2k": ("bellm", "hf-sdpa"),
    "long-8k": ("bellm", "hf-sdpa"),
}
LONG_TOKENS = {"long-2k": 2048, "long-8k": 8000}
STSB_SENTENCES = 768
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


def _workload(group: str, tok) -> tuple[list[str], str]:
    """``(texts, prompt)`` of a group; the prompt has one ``{text}``."""
    from bellm.encoder import BELLM_PROMPT

    if group == "stsb":
        return _stsb_sentences()[:STSB_SENTENCES], BELLM_PROMPT
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

    module = Transformer(model_dir)  # the saved model's folder; the loaded copy is replaced by `model`
    module.model = model
    st = SentenceTransformer(modules=[module, Pooling(model.config.hidden_size, pooling_mode="lasttoken")],
                             device="cpu")
    head, tail = prompt.split("{text}")
    return lambda texts: st.encode([head + t + tail for t in texts], batch_size=BATCH, convert_to_tensor=True)


def _contender(impl: str, model, tok, prompt: str, model_dir: str):
    if impl == "bellm":
        from bellm.encoder import Encoder

        enc = Encoder(model, tok, prompt=prompt, pooling="last", max_length=8192)
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
    """The real SmolLM2 (GGUF, de-quantised once: slow) as float32 safetensors + config + tokenizer in ``path``."""
    import torch
    from safetensors.torch import save_model as save_safetensors

    from bellm.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(dtype=torch.float32, device="cpu")
    model.config.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    save_safetensors(model, str(path / "model.safetensors"))


def measure_one(group: str, impl: str, threads: int, model_dir: str) -> dict:
    """Load the model, warm up on a short input, time the group's workload once; peak RSS of the timed part."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                      local_files_only=True).eval()
    texts, prompt = _workload(group, tok)
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
# the run (parent process)


def _child(group: str, impl: str, threads: int, model_dir: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_cpu", "--child", group, impl, "--threads", str(threads),
           "--model-dir", model_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"{group}/{impl} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().split("\n")[-1])


def collect(groups: list[str], rounds: int, threads: int, model_dir: str | None = None, log=print) -> list[dict]:
    """Rows ``{group, impl, median_ms, p20_ms, p80_ms, peak_rss_mb, tokens_per_s, max_abs_diff_vs_hf, ...}``.

    ``model_dir``: the model saved by :func:`save_model`, written there first when absent (default: a temporary
    folder)."""
    import tempfile

    if model_dir is not None:
        if not (Path(model_dir) / "model.safetensors").exists():
            Path(model_dir).mkdir(parents=True, exist_ok=True)
            save_model(Path(model_dir))
        return _collect(groups, rounds, threads, model_dir, log)
    with tempfile.TemporaryDirectory() as model_dir:
        save_model(Path(model_dir))
        return _collect(groups, rounds, threads, model_dir, log)


def _collect(groups, rounds, threads, model_dir, log) -> list[dict]:
    import torch

    from benchmarks._timing import summarize

    rows = []
    for group in groups:
        impls = GROUPS[group]
        samples: dict[str, list[dict]] = {impl: [] for impl in impls}
        failed: dict[str, str] = {}
        for r in range(rounds):
            for impl in impls if r % 2 == 0 else impls[::-1]:
                try:
                    result = _child(group, impl, threads, model_dir)
                except RuntimeError as err:  # a contender that cannot run becomes a skipped row
                    log(str(err))
                    failed[impl] = str(err)[-300:]
                    continue
                log(f"{group} round {r + 1}/{rounds} {impl}: {result['seconds']:.2f} s, "
                    f"peak {result['peak_rss_mb']:.0f} MB")
                samples[impl].append(result)
        peer = next(i for i in impls if i.startswith("hf-"))
        peer_emb = torch.tensor(samples[peer][0]["embeddings"]) if samples[peer] else None
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
                "note": f"{first['texts']} text(s), {first['tokens']} tokens; peak RSS of the {first['peak_scope']}",
            })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated, from: " + ", ".join(GROUPS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads per contender (default: %(default)s)")
    p.add_argument("--output", default="benchmarks/results-cpu.json")
    p.add_argument("--child", nargs=2, metavar=("GROUP", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help="keep the de-quantised model (safetensors) in this folder and reuse it "
                   "in later runs (default: a temporary folder, de-quantising the GGUF every run)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(*args.child, threads=args.threads, model_dir=args.model_dir)))
        return 0
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    from bellm._io import atomic_write_text
    from benchmarks._timing import environment

    env = {**environment(), "threads": args.threads, "cpu_count": os.cpu_count(),
           "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    rows = []
    for group in groups:  # the results file is rewritten after every group, so a long run can be cut short
        rows += collect([group], args.rounds, args.threads, args.model_dir, log=lambda s: print(s, flush=True))
        env["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        results = {"environment": env, "kind": "cpu", "rows": rows}
        atomic_write_text(Path(args.output), json.dumps(results, indent=1))
        print(f"wrote {args.output} ({group} done)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
