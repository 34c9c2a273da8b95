"""benchmarks.merge: the parts of a time-boxed run (one ``benchmarks.run`` process per module or half of one)
become one results file; a part that wrote nothing is a "not measured" row, an error and a module status."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import merge, report, targets

ROOT = Path(__file__).resolve().parents[1]


def _part(module, rows, status="ok", seconds=1.0, **env):
    return {"schema": 1, "smoke": False,
            "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0", "date": "2026-12-01T00:00:00+00:00", **env},
            "modules": {module: {"status": status, "seconds": seconds, "rows": len(rows),
                                 "triton_interpret": False}},
            "errors": [] if status == "ok" else [f"{module}: boom"],
            "rows": [{"module": module, "group": g, "impl": i, "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0}
                     for g, i in rows]}


def test_parts_merge_in_module_order_and_a_split_module_is_summed():
    causal = _part("attention", [("attn fwd dense causal", "bellm")], seconds=2.0)
    pool = _part("pool", [("copy", "torch.copy_")], status="crashed")
    bidir = _part("attention", [("attn fwd dense bidir", "bellm")], seconds=3.0)
    merged = merge.merge([causal, pool, bidir], commit="abc1234")
    assert [r["module"] for r in merged["rows"]] == ["attention", "attention", "pool"]
    assert [r["group"] for r in merged["rows"]][:2] == ["attn fwd dense causal", "attn fwd dense bidir"]
    assert list(merged["modules"]) == ["attention", "pool"]
    assert merged["modules"]["attention"] == {"status": "ok", "seconds": 5.0, "rows": 2, "triton_interpret": False}
    assert merged["modules"]["pool"]["status"] == "crashed" and merged["errors"] == ["pool: boom"]
    assert merged["environment"]["commit"] == "abc1234" and merged["smoke"] is False
    assert report.is_gpu_benchmark(merged)


def test_missing_parts_become_not_measured_rows_and_errors():
    bidir = _part("attention", [("attn fwd dense bidir", "bellm")], commit="f00d")
    merged = merge.merge([bidir], [("attention", "attention-causal: timed out after 90s"),
                                   ("train", "train: timed out after 70s")], commit="abc1234")
    assert merged["environment"]["commit"] == "f00d"  # a commit the run read itself wins
    assert merged["modules"]["attention"]["status"] == "partial"
    assert merged["modules"]["train"] == {"rows": 0, "status": "not run", "error": "train: timed out after 70s"}
    skipped = [r for r in merged["rows"] if "skipped" in r]
    assert [(r["module"], r["group"], r["impl"]) for r in skipped] == [
        ("attention", "attention: not measured", "(suite)"), ("train", "train: not measured", "(suite)")]
    assert len(merged["errors"]) == 2
    row = next(r for r in targets.evaluate(merged) if r.target.module == "train")
    assert row.measured is None and "module 'train' not run: train: timed out after 70s" in row.detail
    assert "No bellm row was timed" not in report.render_markdown(merged)


def test_no_parts_still_names_the_machine():
    merged = merge.merge([], [("pool", "pool: exited with status 1")], environment={"gpu": "NVIDIA H200"})
    assert merged["environment"] == {"gpu": "NVIDIA H200"} and len(merged["rows"]) == 1


def test_cli_writes_the_merged_file_and_refuses_bad_input(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_part("pool", [("copy", "torch.copy_")])))
    b.write_text(json.dumps(_part("encode", [("synthetic 16-96 tok", "bellm")])))
    out = tmp_path / "results.json"
    assert merge.main([str(b), str(a), "--output", str(out), "--missing", "train=train: timed out"]) == 0
    merged = json.loads(out.read_text())
    assert list(merged["modules"]) == ["pool", "encode", "train"]
    assert report.load_results(out)["rows"] == merged["rows"]
    (tmp_path / "bad.json").write_text("{}")
    assert merge.main([str(tmp_path / "bad.json"), "--output", str(out)]) == 2
    with pytest.raises(SystemExit):
        merge.main(["--output", str(out), "--missing", "no-reason"])
    assert "MODULE=REASON" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    """The script itself runs only on a GPU machine (or as a minutes-long CPU dry run, see benchmarks/README.md);
    here only its syntax is checked."""
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
