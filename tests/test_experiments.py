"""The ``experiments`` package without a model: the script entry point and the RESULTS.md writer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_script_runs_from_anywhere_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = ROOT / "experiments" / "reproduce.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--smoke" in proc.stdout and "Reproduce BeLLM's claims" in proc.stdout


FIXTURE = ROOT / "tests" / "data" / "reproduce_run"
EXPECTED = ROOT / "tests" / "data" / "reproduce_results"
# stage files removed from the fixture for each case: a full run, a partial one, one before the turning point
CASES = {
    "full": [],
    "partial": ["eval-bellm-k28-seed43", "untrained-bellm-k28", "plan"],
    "early": ["turning_point"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_md_is_the_same_as_before_the_split(case, tmp_path, monkeypatch):
    """The RESULTS.md writer on a fixed run directory (a smoke run's stages, completed with synthetic scores;
    paths relative to ``run/``) gives byte for byte what the single-file script wrote before the package split
    (``tests/data/reproduce_results``); versions and the bootstrap are fixed, the latter needs the caches."""
    from experiments import report
    from experiments.settings import Settings
    from experiments.stages import Run

    shutil.copytree(FIXTURE, tmp_path / "run")
    for name in CASES[case]:
        (tmp_path / "run" / "stages" / f"{name}.json").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "_versions", lambda: {"python": "3.x", "torch": "x"})
    boot = {
        "n_boot": 1000,
        "lo": -0.21,
        "hi": 0.43,
        "share_le_0": 0.25,
        "seeds": [42, 43],
        "pairs_per_task": 4,
    }
    monkeypatch.setattr(report, "pair_bootstrap", lambda run, d, seeds, **kw: dict(boot))
    settings = Settings(**json.loads((tmp_path / "run" / "settings.json").read_text()))
    path = report.write_report(Run(Path("run"), settings, progress=False), tmp_path / "RESULTS.md")
    assert path.read_text(encoding="utf-8") == (EXPECTED / f"RESULTS.{case}.md").read_text(encoding="utf-8")
    if case != "early":
        assert (tmp_path / "results_assets" / "turning_point.png").is_file()
