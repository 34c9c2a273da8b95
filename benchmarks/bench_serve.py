"""``bellm serve`` under concurrent load: sentences/s and p50/p99 latency for N clients (1, 8, 32) sending one
sentence per request, against (a) offline ``Encoder.encode`` of the same sentences and (b) the same server with
batching switched off (``--no-batching``: one request per forward). Nothing asserts on speed.

- Model: the real SmolLM2-135M-Instruct (GGUF, fp32 on CPU) with BeLLM's prompt, on STS-B test sentences;
  ``--tiny``: a random-weight 2-layer model with a word-level tokenizer on synthetic 8-24 word sentences
  (seconds; says nothing about the real model).
- The two servers are ``python -m bellm serve`` processes started side by side (each idle while the other is
  measured); the clients are threads in this process (one ``httpx.Client`` each, keep-alive), pulling sentences
  from a shared list until it is empty: ``--per-client`` sentences per client (at least 8 per level).
  Throughput is sentences / wall time from the first request to the last answer; latency is per request,
  queueing included. With few requests p99 is close to the maximum.
- Offline: one ``Encoder.encode`` call in this process on the same sentences, same token budget, normalised.
- Rounds: every round measures each client count's three arms, in reversed order every other round, so load
  from other processes hits them alike; sentences/s is the median over rounds, p50/p99 over every request.
- Forward cost: in this process, ms per sentence of a forward of one sentence against one forward of 32: what
  batching can gain at most on this machine (:func:`forward_cost`).
- Clients and servers share the machine's cores: on a small CPU box the client threads take CPU from the model.

``python -m benchmarks.bench_serve [--tiny] [--clients 1,8,32] [--per-client 2] [--rounds 2]
[--output benchmarks/results-serve.json]`` prints the environment, a markdown table, the two ratios at the
largest client count (batched / offline, batched / unbatched) and the forward cost; ``--output`` writes them as
JSON for ``python -m benchmarks.report --serve FILE`` (the serving table of BENCHMARKS.md's CPU section).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._timing import environment, markdown_table, summarize

REPO = Path(__file__).resolve().parents[1]
BUDGET = 4096  # tokens per packed forward, the same for the server and the offline encode (32 sentences fit)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model_dir(tmp: str) -> str:
    """A random-weight TINY-shaped llama and a word-level tokenizer, saved where ``--model`` can load them."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from benchmarks._shapes import TINY
    from benchmarks.bench_encode import _word_tokenizer

    vocab = 512
    config = LlamaConfig(
        **{**TINY, "vocab_size": vocab},
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(tmp)
    _word_tokenizer(vocab).save_pretrained(tmp)
    return tmp


def _sentences(n: int, tiny: bool) -> list[str]:
    rng = random.Random(0)
    if tiny:
        return [" ".join(f"w{rng.randrange(4, 512)}" for _ in range(rng.randint(8, 24))) for _ in range(n)]
    from bellm.sts_data import load_sts

    pairs = load_sts("STSBenchmark", "test", source="raw")
    pool = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    return rng.sample(pool, n)


@contextlib.contextmanager
def _server(model_args: list[str], *, batching: bool, log_path: Path):
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "bellm",
        "serve",
        *model_args,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-batch-tokens",
        str(BUDGET),
        "--max-queue-tokens",
        "10000000",
        "--log-level",
        "warning",
    ]
    if not batching:
        cmd.append("--no-batching")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bellm serve exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("bellm serve did not answer /health within 900 s")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _load(url: str, sentences: list[str], clients: int) -> dict:
    """``clients`` threads send one sentence per request until ``sentences`` are all embedded."""
    import httpx

    todo = list(reversed(sentences))
    lock = threading.Lock()
    latencies: list[float] = []
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            barrier.wait()
            while True:
                with lock:
                    if not todo:
                        return
                    text = todo.pop()
                t0 = time.perf_counter()
                response = http.post("/v1/embeddings", json={"input": text, "encoding_format": "base64"})
                elapsed = time.perf_counter() - t0
                response.raise_for_status()
                with lock:
                    latencies.append(elapsed * 1000)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - start
    return {"sentences_per_s": len(latencies) / wall, "latencies_ms": latencies}


def _offline_encoder(model_args: list[str]):
    from bellm.encoder import Encoder

    path = model_args[1] if model_args else None
    encoder = Encoder.from_pretrained(path, device="cpu")
    encoder.encode(["a warm-up sentence", "and another one"], normalize_embeddings=True)
    return encoder


def _offline(encoder, sentences: list[str]) -> dict:
    """One ``Encoder.encode`` call on ``sentences`` (the server's token budget), normalised."""
    t0 = time.perf_counter()
    encoder.encode(sentences, normalize_embeddings=True, max_tokens_per_batch=BUDGET)
    return {"sentences_per_s": len(sentences) / (time.perf_counter() - t0)}


def forward_cost(encoder, sentences: list[str], batch: int) -> dict:
    """Milliseconds per sentence of a forward of 1 sentence (each of ``batch`` sentences alone) and of one
    forward of all ``batch`` together: their quotient bounds what any batching server can gain over one
    request per forward on this machine (without HTTP, queueing or client costs)."""
    chosen = sentences[:batch]
    singles = []
    for s in chosen:
        t0 = time.perf_counter()
        encoder.encode([s], normalize_embeddings=True)
        singles.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    encoder.encode(chosen, normalize_embeddings=True, max_tokens_per_batch=BUDGET)
    together = (time.perf_counter() - t0) * 1000 / len(chosen)
    single = summarize(singles)["median_ms"]
    return {"ms_per_sentence_alone": single, "ms_per_sentence_batched": together, "batch": len(chosen),
            "ceiling": single / together}


ARMS = ("offline-encode", "bellm-serve", "bellm-serve-unbatched")


def collect(
    *, tiny: bool = False, clients: tuple[int, ...] = (1, 8, 32), per_client: int = 2, rounds: int = 2
) -> dict:
    """``{"rows": [...], "forward_cost": {...}}``: one row per (client count, arm): sentences/s (median over
    rounds), p50/p99 latency (over every request of every round). Both servers run side by side (each idle
    while the other is measured); in every round each client count measures the three arms, in reversed order
    every other round, so load from other processes hits them alike. The offline arm encodes the same
    sentences as the clients send, in one call."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        model_args = ["--model", _tiny_model_dir(tmp)] if tiny else []
        levels = {n: max(8, per_client * n) for n in clients}
        sentences = _sentences(max(levels.values()), tiny)
        urls = {impl: stack.enter_context(_server(model_args, batching=impl == "bellm-serve",
                                                  log_path=Path(tmp) / f"{impl}.log"))
                for impl in ARMS[1:]}
        encoder = _offline_encoder(model_args)
        for url in urls.values():
            _load(url, sentences[:4], 1)  # warm the connection path and the model
        samples: dict[tuple[int, str], list[dict]] = {}
        for r in range(rounds):
            for n, count in levels.items():
                for impl in ARMS if r % 2 == 0 else ARMS[::-1]:
                    texts = sentences[:count]
                    result = _offline(encoder, texts) if impl == ARMS[0] else _load(urls[impl], texts, n)
                    samples.setdefault((n, impl), []).append(result)
        cost = forward_cost(encoder, sentences, max(clients))
    rows = []
    for (n, impl), results in samples.items():
        row = {"clients": n, "impl": impl, "sentences": levels[n], "rounds": len(results),
               "sentences_per_s": statistics.median(x["sentences_per_s"] for x in results)}
        latencies = [ms for x in results for ms in x.get("latencies_ms", [])]
        if latencies:
            row["p50_ms"] = statistics.median(latencies)
            row["p99_ms"] = float(np.percentile(latencies, 99))  # linear between samples: never outside them
        rows.append(row)
    rows.sort(key=lambda r: (r["clients"], ARMS.index(r["impl"])))
    return {"rows": rows, "forward_cost": cost}


def ratios(rows: list[dict]) -> dict:
    """At the largest client count: batched server / offline, and batched / unbatched, in sentences/s."""
    top = max(r["clients"] for r in rows)
    at = {r["impl"]: r["sentences_per_s"] for r in rows if r["clients"] == top}
    return {
        "clients": top,
        "batched_vs_offline": at["bellm-serve"] / at["offline-encode"],
        "batched_vs_unbatched": at["bellm-serve"] / at["bellm-serve-unbatched"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="random-weight tiny model (seconds, not meaningful)"
    )
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated (default 1,8,32)")
    parser.add_argument(
        "--per-client", type=int, default=2, help="sentences per client per level (default 2)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every arm (default 2)")
    parser.add_argument("--output", help="also write the results as JSON here, for `python -m benchmarks.report "
                        "--serve FILE` (e.g. benchmarks/results-serve.json)")
    args = parser.parse_args(argv)
    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        clients = ()
    if not clients or min(clients) < 1 or args.per_client < 1 or args.rounds < 1:
        parser.error(f"--clients {args.clients!r}, --per-client {args.per_client} and --rounds {args.rounds} "
                     "must be positive integers")
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = collect(tiny=args.tiny, clients=clients, per_client=args.per_client, rounds=args.rounds)
    import torch

    env = {**environment(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "model": "tiny random 2-layer" if args.tiny else "SmolLM2-135M-Instruct fp32 with BeLLM's prompt",
           "sentences": "synthetic 8-24 word sentences" if args.tiny else "STS-B test sentences", "tiny": args.tiny,
           "max_batch_tokens": BUDGET, "load_average_at_start": load_start,
           "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    results = {"kind": "serve", "environment": env, **results, "ratios": ratios(results["rows"])}
    print(env)
    print(markdown_table(results["rows"]))
    r, cost = results["ratios"], results["forward_cost"]
    print(
        f"at {r['clients']} clients: batched server = {r['batched_vs_offline']:.2f}x offline encode, "
        f"{r['batched_vs_unbatched']:.2f}x the unbatched server; one forward of {cost['batch']} sentences costs "
        f"{cost['ms_per_sentence_batched']:.1f} ms per sentence, of 1 sentence {cost['ms_per_sentence_alone']:.1f} "
        f"ms ({cost['ceiling']:.2f}x)"
    )
    if args.output:
        from bellm._io import atomic_write_text

        atomic_write_text(Path(args.output), json.dumps(results, indent=1))
        print(f"wrote {args.output}")
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
