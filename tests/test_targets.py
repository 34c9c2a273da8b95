"""benchmarks.targets on synthetic results: known numbers give known ratios; missing, skipped or partial
results give "not measured" rows with the reason, never an exception."""

import json

import pytest

from benchmarks import targets
from benchmarks.targets import TARGETS, Target, evaluate, markdown_lines


def _row(module, group, impl, median, **extra):
    return {"module": module, "group": group, "impl": impl, "median_ms": median, "p20_ms": median,
            "p80_ms": median, **extra}


def _skip(module, group, impl, reason):
    return {"module": module, "group": group, "impl": impl, "skipped": reason}


PACKED = "attn fwd packed 64k tok bidir H32/8 D128"
DENSE = "attn fwd dense B8 S2048 bidir H32/32 D128"
DENSE_BWD = "attn fwd+bwd dense B8 S2048 bidir H32/32 D128"
ENCODE = "synthetic 16-96 tok"
TRAIN = "train step llama2-7b bf16 16 triplets LoRA r64"

ROWS = [
    _row("attention", PACKED, "bellm", 1.0),
    _row("attention", PACKED, "varlen_attn", 1.5),
    _skip("attention", PACKED, "flash-attn", "flash-attn is not installed (optional peer)"),
    _skip("attention", PACKED, "sdpa-flash-padded", "the SDPA flash backend takes no attn_mask"),
    _row("attention", PACKED, "sdpa-cudnn-padded", 5.0),
    _row("attention", PACKED, "sdpa-efficient-padded", 2.5),  # the fastest padded peer: 2.5x, not met
    _row("attention", DENSE, "bellm", 2.0),
    _row("attention", DENSE, "sdpa-flash", 3.0),
    _row("attention", DENSE, "sdpa-cudnn", 1.6),
    _row("attention", "attn fwd dense B8 S2048 causal H32/32 D128", "bellm", 9.0),  # causal: no target row
    _row("attention", DENSE_BWD, "bellm", 4.0),
    _row("attention", DENSE_BWD, "flex", 5.0),
    _row("pool", "copy", "torch.copy_", 1.0, gbps=4000.0),
    _row("pool", "mean packed fwd", "bellm", 1.0, gbps=3600.0),
    _row("pool", "mean packed fwd", "index_add", 2.0, gbps=1800.0),
    _row("pool", "last packed fwd", "bellm", 0.01, gbps=50.0),  # last-token forward: no bandwidth target
    _row("pool", "mean packed fwd+bwd", "bellm", 1.0, gbps=3000.0),
    _row("encode", ENCODE, "hf-sdpa-padded", 300.0, roofline_frac=0.3),
    _row("encode", ENCODE, "hf-sdpa-sorted", 150.0, roofline_frac=0.6),
    _row("encode", ENCODE, "bellm", 100.0, roofline_frac=0.91),
    _row("train", TRAIN, "bellm", 100.0, peak_mem_mb=900.0),
    _row("train", TRAIN, "hf-sdpa-padded", 160.0, peak_mem_mb=1000.0),
]


def _results(rows, **extra):
    return {"schema": 1, "smoke": False, "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0"},
            "modules": {m: {"status": "ok"} for m in ("attention", "pool", "encode", "train")}, "errors": [],
            "rows": rows, **extra}


def _by_name(results):
    out = {}
    for r in evaluate(results):
        out.setdefault(r.target.name, []).append(r)
    return out


def test_known_numbers_give_known_ratios_and_verdicts():
    got = _by_name(_results(ROWS))
    (varlen,) = got["attn packed bidir fwd vs varlen_attn / FA2 varlen"]
    assert varlen.group == PACKED and varlen.measured == pytest.approx(1.5) and varlen.met
    assert varlen.detail == "vs varlen_attn"  # the skipped flash-attn is no peer
    (padded,) = got["attn packed bidir fwd vs best padded-mask SDPA"]
    assert padded.measured == pytest.approx(2.5) and padded.met is False and "sdpa-efficient-padded" in padded.detail
    (flash,) = got["attn dense bidir fwd vs SDPA flash"]
    assert flash.group == DENSE and flash.measured == pytest.approx(1.5) and flash.met
    (cudnn,) = got["attn dense bidir fwd vs SDPA cuDNN"]
    assert cudnn.measured == pytest.approx(0.8) and cudnn.met is False
    (flex,) = got["attn bidir fwd+bwd vs FlexAttention"]
    assert flex.measured == pytest.approx(1.25) and flex.met
    (pool_fwd,) = got["pool mean fwd, fraction of copy GB/s"]
    assert pool_fwd.group == "mean packed fwd" and pool_fwd.measured == pytest.approx(0.9) and pool_fwd.met
    (pool_bwd,) = got["pool fwd+bwd, fraction of copy GB/s"]
    assert pool_bwd.measured == pytest.approx(0.75) and pool_bwd.met is False
    (unsorted,) = got["encode 16-96 tok vs HF sdpa padded, unsorted"]
    assert unsorted.measured == pytest.approx(3.0) and unsorted.met
    (sorted_,) = got["encode 16-96 tok vs HF sdpa padded, length-sorted"]
    assert sorted_.measured == pytest.approx(1.5) and sorted_.met is False
    (roofline,) = got["encode 16-96 tok, fraction of GEMM roofline"]
    assert roofline.measured == pytest.approx(0.91) and roofline.met
    (train,) = got["train step tokens/s vs HF sdpa padded"]
    assert train.measured == pytest.approx(1.6) and train.met
    (memory,) = got["train step peak memory ÷ HF sdpa padded's"]
    assert memory.measured == pytest.approx(0.9) and memory.met  # lower is better


def test_every_target_has_a_row_and_the_table_renders():
    results = _results(ROWS)
    names = {r.target.name for r in evaluate(results)}
    assert names == {t.name for t in TARGETS}
    lines = markdown_lines(results)
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| target")]
    assert len(table) == len(evaluate(results))
    assert any("| 1.50× | ≥ 1.20× | yes | vs varlen_attn |" in line for line in table)
    assert any("| 0.75 | ≥ 0.85 | **no** |" in line for line in table)
    assert any("| 0.90× | ≤ 1.00× | yes |" in line for line in table)
    assert not any("Not a GPU benchmark" in line for line in lines)


def test_missing_and_skipped_rows_are_not_measured_with_the_reason():
    rows = [r for r in ROWS if r["module"] != "train" and not (r["group"] == PACKED and r["impl"] == "varlen_attn")]
    rows.append(_skip("encode", ENCODE, "bellm", "RuntimeError: CUDA out of memory"))
    rows = [r for r in rows if not (r["group"] == ENCODE and r["impl"] == "bellm" and "median_ms" in r)]
    rows.append(_row("pool", "mean padded fwd", "bellm", 1.0))  # no gbps
    results = _results(rows)
    results["modules"]["train"] = {"status": "crashed", "error": "timed out after 60 s"}
    got = _by_name(results)
    (varlen,) = got["attn packed bidir fwd vs varlen_attn / FA2 varlen"]
    assert varlen.measured is None and varlen.met is None
    assert "flash-attn skipped: flash-attn is not installed" in varlen.detail
    (unsorted,) = got["encode 16-96 tok vs HF sdpa padded, unsorted"]
    assert unsorted.measured is None and "bellm skipped: RuntimeError: CUDA out of memory" in unsorted.detail
    for name in ("train step tokens/s vs HF sdpa padded", "train step peak memory ÷ HF sdpa padded's"):
        (row,) = got[name]
        assert row.measured is None and row.group is None
        assert "module 'train' crashed: timed out after 60 s" in row.detail
    padded = next(r for r in got["pool mean fwd, fraction of copy GB/s"] if r.group == "mean padded fwd")
    assert padded.measured is None and "gbps missing" in padded.detail
    assert any("not measured" in line for line in markdown_lines(results))


@pytest.mark.parametrize("results", [{}, {"rows": None}, {"rows": [None, 3, {"impl": "bellm"}]},
                                     {"rows": [], "modules": None, "environment": None}])
def test_empty_or_malformed_results_never_raise(results):
    rows = evaluate(results)
    assert len(rows) == len(TARGETS) and all(r.measured is None for r in rows)
    assert all("not in this results file" in r.detail for r in rows)
    assert any("Not a GPU benchmark" in line for line in markdown_lines(results))


def test_a_missing_reference_group_and_an_unknown_kind_are_reasons():
    no_copy = _results([r for r in ROWS if r["group"] != "copy"])
    (pool_fwd,) = _by_name(no_copy)["pool mean fwd, fraction of copy GB/s"]
    assert pool_fwd.measured is None and "no row for torch.copy_ (group 'copy')" in pool_fwd.detail
    odd = Target("odd", "encode", ENCODE, "median", 1.0, peers=("hf-sdpa-padded",))
    (row,) = evaluate(_results(ROWS), (odd,))
    assert row.measured is None and "unknown target kind" in row.detail


def test_smoke_results_are_labelled_and_the_cli_prints_the_table(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(ROWS, smoke=True)))
    assert targets.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "Not a GPU benchmark" in out and "attn dense bidir fwd vs SDPA flash" in out
    assert targets.main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "list.json").write_text("[]")
    assert targets.main([str(tmp_path / "list.json")]) == 2
