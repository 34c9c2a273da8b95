"""Training runs: identity checked on resume before the model loads, output paths compared by what they are,
--overwrite deletes only bellm's own outputs, checkpoints are complete encoders, a damaged latest checkpoint
falls back to the previous good one (CPU, tiny model, char tokenizer, a small generated triplet file).

Every test here fails on the previous main.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from _encode_helpers import char_tokenizer
from tiny_models import tiny_model

import bellm.trainer
from bellm.trainer import TrainConfig, train

K = 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_train")
    tiny_model("llama", num_layers=2).save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "triplets.tsv"
    rows = [f"a man plays {i}\ta person plays {i}\ta cat sleeps {i}" for i in range(32)]
    path.write_text("anchor\tpositive\tnegative\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        output_dir=str(out),
        model=str(model_dir),
        from_layer=K,
        batch_size=4,
        max_steps=4,
        lr=1e-3,
        warmup_steps=1,
        lora_r=4,
        lora_alpha=8,
        save_steps=1,
        save_total_limit=3,
        progress=False,
        seed=0,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def _adapter(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def _assert_same_adapter(a, b):
    a, b = _adapter(a), _adapter(b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_run(model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    train(_config(model_dir, data, out))
    return out


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the run was checked")

    monkeypatch.setattr(bellm.trainer, "build_model", refuse)


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


def test_data_edited_in_place_between_resumes_is_refused(full_run, model_dir, data, tmp_path, no_model_load):
    edited = tmp_path / "triplets.tsv"
    shutil.copy(data, edited)
    run = _copy(full_run, tmp_path / "run")
    record = json.loads((run / "run_config.json").read_text())
    record["data"] = str(edited)
    (run / "run_config.json").write_text(json.dumps(record))
    edited.write_text(edited.read_text().replace("cat sleeps 3", "dog sleeps 3"), encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"run_config\.json was written with another set-up \(data\.sha256: "
    ):
        train(_config(model_dir, edited, run, resume=True))


def test_moved_run_resumes_under_any_spelling_of_its_path(full_run, model_dir, data, tmp_path, monkeypatch):
    """The previous main compared output paths as raw strings: run/ vs run vs an absolute path was refused."""
    run = _copy(full_run, tmp_path / "moved")
    shutil.rmtree(run / "checkpoints" / "step-3")  # latest names step-3: the previous good one is used
    monkeypatch.chdir(tmp_path)
    result = train(_config(model_dir, data, "moved/", resume=True))
    assert result["step"] == 4
    _assert_same_adapter(run, full_run)


def test_overwrite_never_deletes_files_bellm_did_not_write(model_dir, data, tmp_path):
    theirs = tmp_path / "theirs"
    for name in ("README.md", "best/notes.txt", "checkpoints/mine.bin", "adapter_config.json"):
        (theirs / name).parent.mkdir(parents=True, exist_ok=True)
        (theirs / name).write_text("the user's")
    before = sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*"))
    with pytest.raises(FileExistsError, match="not created by bellm train.*nothing was deleted"):
        train(_config(model_dir, data, theirs, overwrite=True))
    assert sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*")) == before
    # nor resumed into (its final save would write README.md over the user's)
    with pytest.raises(FileExistsError, match="--resume: .* holds files but no run_config.json"):
        train(_config(model_dir, data, theirs, resume=True))
    assert sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*")) == before
    (theirs / "run_config.json").write_text("{not json")  # a damaged record is not bellm's either
    with pytest.raises(FileExistsError, match="not created by bellm train"):
        train(_config(model_dir, data, theirs, overwrite=True))
    assert (theirs / "README.md").read_text() == "the user's"


def test_overwrite_removes_exactly_what_the_record_lists(full_run, model_dir, data, tmp_path, caplog):
    run = _copy(full_run, tmp_path / "run")
    (run / "mine.txt").write_text("keep")
    with caplog.at_level(logging.WARNING, logger="bellm"):
        train(_config(model_dir, data, run, max_steps=1, overwrite=True))
    assert (run / "mine.txt").read_text() == "keep"
    assert "kept files bellm did not write" in caplog.text and "mine.txt" in caplog.text
    assert not (run / "checkpoints").exists()  # the old run's are gone; max_steps=1 writes none


def test_checkpoints_are_complete_encoders(full_run, model_dir):
    """On the previous main a checkpoint had no bellm_encoder.json: it loaded as the causal model at the
    model's full max_length."""
    from bellm.encoder import Encoder

    step = full_run / "checkpoints" / "step-2"
    assert json.loads((step / "bellm_encoder.json").read_text())["from_layer"] == K
    enc = Encoder.from_pretrained(model_dir, adapter=step, device="cpu")
    assert (enc.from_layer, enc.max_length, enc.pooling) == (K, 60, "last")


def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(
    full_run, model_dir, data, tmp_path, caplog
):
    run = _copy(full_run, tmp_path / "run")
    (run / "checkpoints" / "step-3" / "trainer_state.pt").write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="bellm"):
        result = train(_config(model_dir, data, run, resume=True))
    assert "step-3" in caplog.text and "resuming from the previous good one" in caplog.text
    assert "step-2" in caplog.text
    assert result["step"] == 4
    _assert_same_adapter(run, full_run)  # steps 3 and 4 redone: the same result


def test_no_usable_checkpoint_or_a_damaged_record_is_one_line(
    full_run, model_dir, data, tmp_path, no_model_load
):
    from bellm.run_record import CorruptRecordError

    run = _copy(full_run, tmp_path / "run")
    for step in (run / "checkpoints").glob("step-*"):
        (step / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(CorruptRecordError, match=r"no usable checkpoint in .*step-3 \(does not load") as err:
        train(_config(model_dir, data, run, resume=True))
    assert "\n" not in str(err.value)
    (run / "run_config.json").write_text('{"data": ')
    with pytest.raises(CorruptRecordError, match=r"run_config\.json: damaged run record"):
        train(_config(model_dir, data, run, resume=True))
    record = json.loads((full_run / "run_config.json").read_text())
    del record["identity"]  # written by an older bellm
    (run / "run_config.json").write_text(json.dumps(record))
    with pytest.raises(CorruptRecordError, match="records no data/model identity"):
        train(_config(model_dir, data, run, resume=True))


def test_unusable_output_paths_fail_before_the_model_loads(model_dir, data, tmp_path, no_model_load):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        train(_config(model_dir, data, tmp_path / "afile"))
    with pytest.raises(NotADirectoryError, match="is a file"):
        train(_config(model_dir, data, tmp_path / "afile" / "run"))


def test_eval_labels_rows_by_what_ran(full_run, model_dir):
    """On the previous main `bellm eval --adapter run/` encoded at the trained from_layer but labelled the row
    "causal" and wrote "from_layer": null (it read the command line, not the Encoder)."""
    import argparse

    from bellm.cli.eval import describe_encoder
    from bellm.encoder import Encoder

    for adapter in (full_run, full_run / "checkpoints" / "step-2"):
        enc = Encoder.from_pretrained(model_dir, adapter=adapter, device="cpu")
        args = argparse.Namespace(model=str(model_dir), adapter=str(adapter), from_layer=None)
        label, record = describe_encoder(enc, args)
        assert label == f"from_layer={K} + adapter"
        assert record["from_layer"] == K and record["num_layers"] == 2 and record["adapter"] == str(adapter)
    plain = Encoder.from_pretrained(model_dir, device="cpu")
    assert (
        describe_encoder(plain, argparse.Namespace(model=None, adapter=None, from_layer=None))[0] == "causal"
    )
