"""``bellm serve`` under concurrent load: sentences/s and p50/p99 latency for N clients (1, 8, 32) sending one
sentence per request, against (a) offline ``Encoder.encode`` of the same sentences and (b) the same server with
batching switched off (``--no-batching``: one request per forward). Nothing asserts on speed.

- Model: the real SmolLM2-135M-Instruct (GGUF, fp32 on CPU) with BeLLM's prompt, on STS-B test sentences;
  ``--tiny``: a random-weight 2-layer model with a word-level tokenizer on synthetic 8-24 word sentences
  (seconds; says nothing about the real model).
- Each server is ``python -m bellm serve`` in its own process, started for its arm and stopped after it; the
  clients are threads in this process (one ``httpx.Client`` each, keep-alive), pulling sentences from a shared
  list until it is empty: ``--per-client`` sentences per client (at least 8 per level). Throughput is
  sentences / wall time from the first request to the last answer; latency is per request, queueing
  included. With few requests p99 is close to the maximum.
- Offline: one ``Encoder.encode`` call on the sentences of the largest level, same token budget, normalised,
  best of ``--repeats``.
- Clients and server share the machine's cores: on a small CPU box the client threads take CPU from the model.

``python -m benchmarks.bench_serve [--tiny] [--clients 1,8,32] [--per-client 2]`` prints the environment, a
markdown table and the two ratios at the largest client count (batched / offline, batched / unbatched).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._timing import environment, markdown_table, summarize

REPO = Path(__file__).resolve().parents[1]
BUDGET = 4096  # tokens per packed forward, the CPU default; the same for the server and the offline encode


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
    return {
        "sentences_per_s": len(latencies) / wall,
        "p50_ms": summarize(latencies)["median_ms"],
        "p99_ms": float(np.percentile(latencies, 99)),  # linear between samples: never outside them
        "requests": len(latencies),
    }


def _offline(model_args: list[str], sentences: list[str], repeats: int) -> dict:
    from bellm.encoder import Encoder

    path = model_args[1] if model_args else None
    encoder = Encoder.from_pretrained(path, device="cpu")
    encoder.encode(sentences[:4], normalize_embeddings=True)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(sentences, normalize_embeddings=True, max_tokens_per_batch=BUDGET)
        best = min(best, time.perf_counter() - t0)
    return {"sentences_per_s": len(sentences) / best, "requests": 1}


def collect(
    *, tiny: bool = False, clients: tuple[int, ...] = (1, 8, 32), per_client: int = 2, repeats: int = 2
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        model_args = ["--model", _tiny_model_dir(tmp)] if tiny else []
        label = "tiny random 2-layer" if tiny else "SmolLM2-135M fp32"
        levels = {n: max(8, per_client * n) for n in clients}
        sentences = _sentences(max(levels.values()), tiny)
        rows = [
            {
                "group": f"{label}, {len(sentences)} sentences",
                "impl": "offline-encode",
                **_offline(model_args, sentences, repeats),
            }
        ]
        for batching, impl in ((True, "bellm-serve"), (False, "bellm-serve-unbatched")):
            with _server(model_args, batching=batching, log_path=Path(tmp) / f"{impl}.log") as url:
                _load(url, sentences[:4], 1)  # warm the connection path
                for n, count in levels.items():
                    rows.append(
                        {"group": f"{label}, {n} clients", "impl": impl, **_load(url, sentences[:count], n)}
                    )
    return rows


def ratios(rows: list[dict]) -> dict:
    """At the largest client count: batched server / offline, and batched / unbatched, in sentences/s."""
    offline = next(r for r in rows if r["impl"] == "offline-encode")["sentences_per_s"]
    top = max(int(r["group"].split(", ")[1].split()[0]) for r in rows if r["impl"] != "offline-encode")
    at = {r["impl"]: r["sentences_per_s"] for r in rows if r["group"].endswith(f", {top} clients")}
    return {
        "clients": top,
        "batched_vs_offline": at["bellm-serve"] / offline,
        "batched_vs_unbatched": at["bellm-serve"] / at["bellm-serve-unbatched"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="random-weight tiny model (seconds, not meaningful)"
    )
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated (default 1,8,32)")
    parser.add_argument(
        "--per-client", type=int, default=2, help="sentences per client per level (default 2)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="offline encode repeats, best taken (default 2)"
    )
    args = parser.parse_args()
    clients = tuple(int(c) for c in args.clients.split(","))
    if not clients or min(clients) < 1 or args.per_client < 1:
        parser.error(f"--clients {args.clients!r} and --per-client {args.per_client} must be positive")
    t0 = time.perf_counter()
    rows = collect(tiny=args.tiny, clients=clients, per_client=args.per_client, repeats=args.repeats)
    print(environment(), f"cpu cores: {os.cpu_count()}, torch threads: default", sep="\n")
    print(markdown_table(rows))
    r = ratios(rows)
    print(
        f"at {r['clients']} clients: batched server = {r['batched_vs_offline']:.2f}x offline encode, "
        f"{r['batched_vs_unbatched']:.2f}x the unbatched server"
    )
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
