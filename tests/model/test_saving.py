"""Saving: whole-folder saves (no half-written folders), the GGUF model, and a saved patched model loaded with
plain ``AutoModel`` (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _encode_helpers import SENTENCES, char_tokenizer
from tiny_models import tiny_model

import bellm
from bellm.encoder import Encoder

ATOL = 2e-5


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture
def encoder(tok):
    return Encoder(tiny_model("llama", num_layers=3, attn_implementation="sdpa"), tok, from_layer=1)


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_encoder_save_is_whole_or_nothing(encoder, tmp_path, monkeypatch):
    """On the previous main a failing save left a half-written folder (model files, no tokenizer)."""
    target = tmp_path / "enc"
    want = encoder.encode(SENTENCES)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(encoder.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        encoder.save_pretrained(target)
    assert _siblings(target) == []  # neither the folder nor a temporary one is left
    monkeypatch.undo()

    encoder.save_pretrained(target)
    assert {"config.json", "model.safetensors", "tokenizer.json", "bellm_encoder.json"} <= {
        p.name for p in target.iterdir()
    }
    assert _siblings(target) == ["enc"]
    np.testing.assert_allclose(
        Encoder.from_pretrained(target, device="cpu").encode(SENTENCES), want, atol=ATOL
    )


def test_encoder_save_refuses_a_folder_with_other_files(encoder, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty; save into a new folder"):
        encoder.save_pretrained(target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        encoder.save_pretrained(tmp_path / "file")
    (target / "notes.txt").unlink()
    encoder.save_pretrained(target)  # an empty folder is fine
    assert (target / "bellm_encoder.json").is_file()


def test_sentence_transformer_save_is_whole_or_nothing(encoder, tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    from bellm.st_plugin import to_sentence_transformer

    st = to_sentence_transformer(encoder)
    target = tmp_path / "st"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(encoder.model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        st.save(str(target))
    assert _siblings(target) == []  # sentence-transformers' own files were written into the temporary folder
    monkeypatch.undo()
    st.save(str(target))
    assert (
        json.loads((target / "modules.json").read_text())[0]["type"] == "bellm.st_plugin.BellmEncoderModule"
    )
    again = to_sentence_transformer(target)
    np.testing.assert_allclose(again.encode(SENTENCES), encoder.encode(SENTENCES), atol=ATOL)


def test_saved_patched_model_cannot_run_as_a_causal_model(tmp_path):
    """On the previous main plain AutoModel.from_pretrained of a saved patched model ran it silently causal."""
    import transformers
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    model = bellm.patch(tiny_model("llama", num_layers=3), from_layer=0)
    ids = torch.randint(4, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_implementation"] == "bellm"

    # without bellm imported (its attention not registered) transformers refuses to build it
    saved = (
        AttentionInterface._global_mapping.pop("bellm"),
        AttentionMaskInterface._global_mapping.pop("bellm"),
    )
    try:
        with pytest.raises(ValueError, match='attn_implementation="bellm"'):
            transformers.AutoModel.from_pretrained(tmp_path)
    finally:
        AttentionInterface.register("bellm", saved[0])
        AttentionMaskInterface.register("bellm", saved[1])

    # with bellm imported it loads, but refuses to run until bellm.load re-applies the setting
    plain = transformers.AutoModel.from_pretrained(tmp_path).eval()
    with pytest.raises(ValueError, match=r"not patched by bellm.*bellm\.load\(path\)"):
        plain(input_ids=ids)
    loaded = bellm.load(plain)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, want)
    bellm.unpatch(loaded)  # back to transformers' default implementation, causal
    assert loaded.config._attn_implementation in ("sdpa", "eager") and "attn_implementation" not in (
        loaded.config.to_diff_dict()
    )


def test_load_and_tokenizer_leave_the_process_environment_alone(tmp_path, monkeypatch, tok):
    """The previous main set HF_HUB_OFFLINE=1 in the caller's environment as a side effect of loading."""
    import os

    from bellm.models import load_model_and_tokenizer

    tiny_model("llama", num_layers=2).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = dict(os.environ)
    load_model_and_tokenizer(tmp_path, device="cpu")
    assert dict(os.environ) == before


# ---------------------------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def real_encoder():
    from bellm.models import default_model

    try:
        default_model(download=False)
    except FileNotFoundError:
        pytest.skip("the SmolLM2 GGUF is not available")
    return Encoder.from_pretrained(None, device="cpu", from_layer=20)


@pytest.mark.slow
def test_real_gguf_model_saves_and_loads_back_identically(real_encoder, tmp_path):
    """On the previous main every save of the GGUF-loaded model raised "quantized with gguf and is not
    serializable" after writing part of the folder."""
    s = ["A man is playing a flute.", "A man plays the flute.", "The stock market crashed today."]
    want = real_encoder.encode(s)
    real_encoder.save_pretrained(tmp_path / "enc")
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert "quantization_config" not in config and config["bellm"]["from_layer"] == 20
    again = Encoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert again.config_dict() == real_encoder.config_dict()
    np.testing.assert_array_equal(again.encode(s), want)  # float32 weights: bitwise the same
    real_encoder.model.save_pretrained(tmp_path / "model")  # the patched model alone
    assert (tmp_path / "model" / "model.safetensors").is_file()
    pytest.importorskip("sentence_transformers")
    from bellm.st_plugin import to_sentence_transformer

    to_sentence_transformer(real_encoder).save(str(tmp_path / "st"))
    np.testing.assert_array_equal(to_sentence_transformer(tmp_path / "st").encode(s), want)


def test_damaged_adapter_or_encoder_config_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    """On the previous main a truncated adapter file surfaced as a raw safetensors error after the model load,
    and a damaged bellm_encoder.json as a bare JSONDecodeError."""
    import bellm.models
    from bellm.errors import DataFileError

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the adapter was checked")

    monkeypatch.setattr(bellm.models, "load_model_and_tokenizer", refuse)
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    save_file({"w": torch.randn(64, 64)}, str(adapter / "adapter_model.safetensors"))
    data = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"adapter_model\.safetensors: damaged adapter weights") as err:
        Encoder.from_pretrained(tmp_path, adapter=adapter)
    assert "\n" not in str(err.value)
    (adapter / "adapter_model.safetensors").write_bytes(data)
    (adapter / "adapter_config.json").write_text("{")
    with pytest.raises(DataFileError, match=r"adapter_config\.json: not a readable adapter config"):
        Encoder.from_pretrained(tmp_path, adapter=adapter)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "bellm_encoder.json").write_text('{"from_layer": ')
    with pytest.raises(
        DataFileError, match=r"bellm_encoder\.json: damaged encoder settings file.*pass from_layer"
    ):
        Encoder.from_pretrained(tmp_path, adapter=adapter)
