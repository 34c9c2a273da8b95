"""Run identity of corpus encodes: recorded, compared before the model loads, shards without a record never
trusted, paths compared by content; damaged inputs and records give one-line errors (CPU, tiny model).

Every test here fails on the previous main: it resumed mixed set-ups, trusted orphan shards, or crashed with a
traceback.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
from _encode_helpers import FakeEncoder, char_tokenizer
from tiny_models import tiny_model

import bellm.encoder
from bellm.corpus import encode_corpus, load_embeddings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model("llama", num_layers=2, attn_implementation="sdpa").save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


def _txt(path, n=9):
    path.write_text("".join(f"row {i} {'y' * (i % 5)}\n" for i in range(n)), encoding="utf-8")
    return path


def _encode(src, out, model, **kw):
    kw.setdefault("device", "cpu")
    return encode_corpus(src, out, model=str(model), shard_size=4, show_progress_bar=False, **kw)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model would be loaded (the checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the run record was checked")

    monkeypatch.setattr(bellm.encoder.Encoder, "from_pretrained", refuse)


@pytest.fixture
def finished(tmp_path, tiny_dir):
    src = _txt(tmp_path / "in.txt")
    _encode(src, tmp_path / "out", tiny_dir)
    return src, tmp_path / "out"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"dtype": "bf16"}, "dtype: 'torch.float32' there, 'torch.bfloat16' now"),
        ({"from_layer": 1}, "encoder.from_layer: None there, 1 now"),
        ({"prompt": "Q: {text}"}, "encoder.prompt"),
        ({"max_length": 40}, "encoder.max_length: None there, 40 now"),
        ({"normalize_embeddings": True}, "normalize_embeddings: False there, True now"),
    ],
)
def test_resume_with_another_setup_is_refused_before_the_model_loads(
    finished, tiny_dir, no_model_load, change, field
):
    src, out = finished
    with pytest.raises(ValueError, match=r"run\.json was written with another set-up \(" + _re(field)):
        _encode(src, out, tiny_dir, **change)


def _re(text):
    import re

    return re.escape(text)


def test_another_adapter_or_changed_model_files_are_refused(finished, tiny_dir, tmp_path, no_model_load):
    src, out = finished
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\(adapter: None there, \{'path'"):
        _encode(src, out, tiny_dir, adapter=adapter)
    changed = tmp_path / "model-copy"
    shutil.copytree(tiny_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"\(model\.files\.config\.json: '[0-9a-f]{64}' there"):
        _encode(src, out, changed)


def test_input_edited_in_place_is_refused(finished, tiny_dir, no_model_load):
    src, out = finished
    src.write_text(src.read_text().replace("row 3", "row three"))
    with pytest.raises(ValueError, match=r"\(input\.(size|sha256): "):
        _encode(src, out, tiny_dir)


def test_moved_input_model_and_output_resume(finished, tiny_dir, tmp_path):
    """Identity is by content: the same files at other paths, or the output folder spelled another way, resume."""
    src, out = finished
    want = load_embeddings(out)
    moved_src = tmp_path / "elsewhere" / "same.txt"
    moved_src.parent.mkdir()
    shutil.copy(src, moved_src)
    moved_model = tmp_path / "model-moved"
    shutil.copytree(tiny_dir, moved_model)
    moved_out = tmp_path / "moved-out"
    shutil.copytree(out, moved_out)
    (moved_out / "shard-00001.safetensors").unlink()  # one shard left to do
    index = _encode(moved_src, str(moved_out) + "/", moved_model)
    assert index["complete"]
    np.testing.assert_array_equal(load_embeddings(moved_out), want)


def test_shards_without_a_record_are_never_trusted(finished, tiny_dir, no_model_load):
    src, out = finished
    (out / "run.json").unlink()  # what the previous main's error message suggested
    with pytest.raises(ValueError, match=r"holds shard files \(shard-00000\.safetensors.*but no run\.json"):
        _encode(src, out, tiny_dir)


def test_damaged_record_is_one_line(finished, tiny_dir, no_model_load):
    src, out = finished
    (out / "run.json").write_text('{"setup": {"input": ')  # torn
    with pytest.raises(ValueError, match=r"run\.json: damaged run record, not valid JSON \(line 1") as err:
        _encode(src, out, tiny_dir)
    assert "\n" not in str(err.value)
    (out / "run.json").write_text(json.dumps({"rows": 9, "format": "safetensors"}))  # an older bellm's record
    with pytest.raises(ValueError, match="records no set-up"):
        _encode(src, out, tiny_dir)
    with pytest.raises(ValueError, match="damaged run record|records no set-up"):
        (out / "run.json").write_text("[1, 2]")
        load_embeddings(out)


def test_unusable_output_paths_fail_before_the_model_loads(tmp_path, tiny_dir, no_model_load):
    src = _txt(tmp_path / "in.txt")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _encode(src, tmp_path / "afile", tiny_dir)
    with pytest.raises(ValueError, match="is a file, so the folder cannot be created"):
        _encode(src, tmp_path / "afile" / "sub", tiny_dir)


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
    reason="root may write anywhere",
)
def test_read_only_output_folder_fails_before_the_model_loads(tmp_path, tiny_dir, no_model_load):
    src = _txt(tmp_path / "in.txt")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(ValueError, match="not writable"):
        _encode(src, ro / "out", tiny_dir)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.txt.gz", b"not gzip at all\n", r"bad\.txt\.gz: damaged or truncated gzip file"),
        (
            "cut.jsonl.gz",
            gzip.compress(b'{"text": "a"}\n' * 200, mtime=0)[:-30],
            r"cut\.jsonl\.gz: damaged or truncated",
        ),
        ("latin.txt", b"fine\nalso fine\ncaf\xe9\n", r"latin\.txt:3: not valid UTF-8"),
        ("latin.tsv.gz", gzip.compress(b"text\nok\ncaf\xe9\n", mtime=0), r"latin\.tsv\.gz:3: not valid UTF-8"),
    ],
)
def test_damaged_inputs_are_one_line_errors_naming_file_and_line(tmp_path, name, content, match):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        encode_corpus(src, tmp_path / "out", FakeEncoder(), show_progress_bar=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("t.tsv.gz", b"anchor\tpositive\tnegative\n", r"t\.tsv\.gz: damaged or truncated gzip file"),
        (
            "t.jsonl",
            b'{"anchor": "a", "positive": "b", "negative": "c\xff"}\n',
            r"t\.jsonl:1: not valid UTF-8",
        ),
    ],
)
def test_damaged_training_data_is_one_line(tmp_path, name, content, match):
    from bellm.train_data import DataError, read_train_data

    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_train_data(src)


def test_encoder_object_runs_are_identified_by_their_weights(tmp_path, tiny_dir):
    """A run given an Encoder object records the sha256 of its weights: another model is refused."""
    from bellm.encoder import Encoder

    src = _txt(tmp_path / "in.txt")
    a = Encoder.from_pretrained(tiny_dir, device="cpu")
    encode_corpus(src, tmp_path / "out", a, shard_size=4, show_progress_bar=False)
    b = Encoder(tiny_model("llama", num_layers=2, seed=1), char_tokenizer())
    with pytest.raises(ValueError, match=r"\(model\.weights_sha256: "):
        encode_corpus(src, tmp_path / "out", b, shard_size=4, show_progress_bar=False)
    encode_corpus(src, tmp_path / "out", a, shard_size=4, show_progress_bar=False)  # the same one resumes
