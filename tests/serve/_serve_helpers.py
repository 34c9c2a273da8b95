"""Shared by the server tests: tiny encoders, an in-process server on a random free port, a subprocess
server, and a gate that holds the model worker inside a forward."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from _encode_helpers import char_tokenizer
from tiny_models import tiny_model

from bellm.encoder import Encoder

REPO = Path(__file__).resolve().parents[2]
SENTENCES = [
    "A man is playing a flute.",
    "A man plays the flute.",
    "The stock market crashed today.",
    "Two dogs run through a field of tall grass.",
    "x",
    "A woman is slicing an onion on a wooden board in the kitchen.",
    "Rain.",
    "Children are laughing and playing football in the park after school.",
]

_MODEL = None


def tiny_encoder(**kw) -> Encoder:
    """A patched tiny llama (layers >= 1 bidirectional, random weights) with BeLLM's prompt; fresh copy."""
    global _MODEL
    if _MODEL is None:
        _MODEL = tiny_model("llama", attn_implementation="sdpa", seed=7)
    kw.setdefault("from_layer", 1)
    return Encoder(copy.deepcopy(_MODEL), char_tokenizer(), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessServer:
    """uvicorn serving ``app`` in a thread on a socket bound to 127.0.0.1:0; ``url`` is its base."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread ended during start-up"
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not stop within 60 s"

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            self.stop()
        self.sock.close()


class GatedEncoder:
    """Wraps an Encoder; while ``gate`` is clear, ``encode`` waits inside the call (a long forward)."""

    def __init__(self, encoder: Encoder):
        self._encoder = encoder
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self._encoder.encode(*args, **kwargs)


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TRITON_INTERPRET="0")


@contextlib.contextmanager
def serve_subprocess(*args: str, port: int, log_path: Path, env: dict | None = None, startup_s: float = 240):
    """``python -m bellm serve ARGS --port PORT`` (extra ``env``) with its output in ``log_path``; yields the
    Popen once ``/health`` answers 200; kills it (if still running) at the end."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bellm", "serve", *args, "--port", str(port)],
            cwd=REPO,
            env={**subprocess_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert proc.poll() is None, (
                f"bellm serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"no /health within {startup_s} s:\n{log_path.read_text()[-3000:]}"
            )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
