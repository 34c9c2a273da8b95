"""Fault injection: ``bellm encode`` and ``bellm train`` killed with SIGKILL at random points, several times in a
row, then run to the end, give exactly the output of an uninterrupted run (CPU, tiny model, a few seconds a run).

The kill points are drawn from a seeded generator; a failure message names the seed and the delays.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _encode_helpers import char_tokenizer
from tiny_models import tiny_model

from bellm.corpus import load_embeddings

REPO = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent
KILLS = 3
SEED = 1717


def _env() -> dict:
    env = dict(
        os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{HELPERS}", OMP_NUM_THREADS="1", TRITON_INTERPRET="0"
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_fault")
    tiny_model("llama", num_layers=2).save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


def _bellm(*args) -> list[str]:
    return [sys.executable, "-m", "bellm", *map(str, args)]


def _kill_after(cmd, started, delay: float, timeout: float = 120) -> bool:
    """Start ``cmd``, wait until ``started()`` is true (the run is doing its work), sleep ``delay`` and
    SIGKILL it. Returns True when it was killed, False when it had already finished."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while proc.poll() is None and not started() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is not None:
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err[-2000:]
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _finish(cmd):
    result = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_encode_killed_repeatedly_equals_uninterrupted(model_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"sentence {i} {'z' * (i % 11)}\n" for i in range(600)), encoding="utf-8")
    out = tmp_path / "killed"
    args = ("encode", "--input", src, "--model", model_dir, "--device", "cpu", "--shard-size", 25)
    flags = ("--batch-size", 1, "--no-progress")  # one forward per row: a run lasts a few seconds
    rng = random.Random(SEED)
    delays = [round(rng.uniform(0.0, 1.5), 3) for _ in range(KILLS)]
    killed = [
        _kill_after(_bellm(*args, "--output", out, *flags), lambda: any(out.glob("shard-*")), d)
        for d in delays
    ]
    record = json.loads((out / "run.json").read_text())
    _finish(_bellm(*args, "--output", out, *flags))
    _finish(_bellm(*args, "--output", tmp_path / "reference", *flags))
    assert sum(killed) >= 2, f"seed {SEED}, delays {delays}: the runs ended before they could be killed"
    assert json.loads((out / "run.json").read_text()) == record
    assert not list(out.glob(".*.tmp"))
    np.testing.assert_array_equal(load_embeddings(out), load_embeddings(tmp_path / "reference"))


@pytest.mark.slow
def test_train_killed_repeatedly_equals_uninterrupted(model_dir, tmp_path):
    data = tmp_path / "triplets.tsv"
    rows = [f"a man plays {i}\ta person plays {i}\ta cat sleeps {i}" for i in range(64)]
    data.write_text("anchor\tpositive\tnegative\n" + "\n".join(rows) + "\n", encoding="utf-8")
    args = (
        "train", "--data", data, "--model", model_dir, "--from-layer", 1, "--device", "cpu", "--batch-size", 4,
        "--max-steps", 16, "--save-steps", 2, "--lr", 1e-3, "--warmup-steps", 1, "--lora-r", 4, "--lora-alpha", 8,
        "--seed", 0, "--no-progress",
    )  # fmt: skip
    out = tmp_path / "killed"
    rng = random.Random(SEED + 1)
    delays = [round(rng.uniform(0.0, 1.0), 3) for _ in range(KILLS)]
    log = out / "train_log.jsonl"
    killed = [_kill_after(_bellm(*args, "--output", out, "--resume"), log.exists, d) for d in delays]
    _finish(_bellm(*args, "--output", out, "--resume"))
    _finish(_bellm(*args, "--output", tmp_path / "reference"))
    assert sum(killed) >= 2, f"seed {SEED + 1}, delays {delays}: the runs ended before they could be killed"

    def losses(run):
        lines = (run / "train_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"loss"' in line]

    assert losses(out) == losses(tmp_path / "reference"), f"seed {SEED + 1}, delays {delays}"
    from safetensors.torch import load_file

    a, b = (load_file(str(run / "adapter_model.safetensors")) for run in (out, tmp_path / "reference"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"delays {delays}"
