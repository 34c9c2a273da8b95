"""Isolation: Encoders sharing one model, models sharing one config object, and bellm.patched_setting (CPU).

Every reference is an Encoder (or model) built on its own deep copy, so nothing is shared with the object under
test.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from _encode_helpers import SENTENCES, char_tokenizer
from tiny_models import tiny_model

import bellm
import bellm.surgery
from bellm.encoder import Encoder


def patched_setting(model):
    return bellm.surgery.patched_setting(model)


ATOL = 2e-5


@pytest.fixture(scope="module")
def base():
    return tiny_model("llama", num_layers=3, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def want(base, tok):
    """Each setting's embeddings from an Encoder that owns its model."""
    return {
        k: Encoder(copy.deepcopy(base), tok, from_layer=k, pooling="mean").encode(SENTENCES)
        for k in (0, 2, 3)
    }


@pytest.mark.parametrize("first", ["a", "b"])
def test_two_encoders_on_one_model_each_keep_their_setting(base, tok, want, first):
    """On the previous main the second Encoder re-patched the shared model and the first then encoded with the
    second's from_layer while its repr still showed its own."""
    model = copy.deepcopy(base)
    a = Encoder(model, tok, from_layer=0, pooling="mean")
    b = Encoder(model, tok, from_layer=2, pooling="mean")
    order = [a, b, a, b] if first == "a" else [b, a, b, a]
    for enc in order:
        np.testing.assert_allclose(enc.encode(SENTENCES), want[enc.from_layer], atol=ATOL)
    assert "from_layer=0/3" in repr(a) and "from_layer=2/3" in repr(b)
    bellm.patch(model, from_layer=3)  # changed directly behind both Encoders' backs
    np.testing.assert_allclose(a.encode(SENTENCES), want[0], atol=ATOL)
    bellm.unpatch(model)  # even unpatched: the Encoder re-applies its own setting
    np.testing.assert_allclose(b.encode(SENTENCES), want[2], atol=ATOL)


def test_encoder_save_writes_its_own_setting(base, tok, tmp_path):
    model = copy.deepcopy(base)
    a = Encoder(model, tok, from_layer=0, pooling="mean")
    Encoder(model, tok, from_layer=2, pooling="mean")  # the model now runs from_layer=2
    a.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["bellm"]["from_layer"] == 0
    again = Encoder.from_pretrained(tmp_path / "a", device="cpu")
    assert again.from_layer == 0 and again.model.config.bellm["from_layer"] == 0


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("patched_first", ["one", "two"])
def test_models_sharing_one_config_are_patched_independently(patched_first):
    """On the previous main patching one model set config.bellm and the "bellm" attention implementation on the
    config object, which the other model shares (transformers dispatches on ``config._attn_implementation``)."""
    import transformers

    one = tiny_model("llama", num_layers=3, attn_implementation="sdpa")
    two = transformers.LlamaModel(one.config).eval()  # built on the very same config object
    two.load_state_dict(one.state_dict())
    assert two.config is one.config
    ids = torch.randint(4, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    causal = _hidden(one, ids)
    first, second = (one, two) if patched_first == "one" else (two, one)
    bellm.patch(first, from_layer=0)
    assert second.config._attn_implementation == "sdpa" and not hasattr(second.config, "bellm")
    assert all(m.config is second.config for m in second.modules() if hasattr(m, "config"))
    assert all(m.config is first.config for m in first.modules() if hasattr(m, "config"))
    torch.testing.assert_close(_hidden(second, ids), causal)
    assert not torch.allclose(_hidden(first, ids), causal, atol=1e-3)  # really bidirectional
    bellm.patch(second, from_layer=2)
    assert first.config.bellm["from_layer"] == 0 and second.config.bellm["from_layer"] == 2
    bellm.unpatch(first)
    assert second.config._attn_implementation == "bellm" and patched_setting(second)["from_layer"] == 2


def test_patched_setting_reads_the_layers_not_the_config(base):
    model = copy.deepcopy(base)
    assert patched_setting(model) is None
    bellm.patch(model, from_layer=1, billm_compat=True)
    assert patched_setting(model) == {"from_layer": 1, "billm_compat": True}
    model.layers[2].self_attn.is_causal = True  # no longer one from_layer setting
    assert patched_setting(model) is None
    bellm.patch(model, from_layer=-1)
    assert patched_setting(model) == {"from_layer": 2, "billm_compat": False}
    model.set_attn_implementation("sdpa")  # switched away behind bellm's back
    assert patched_setting(model) is None


def test_numpy_integer_from_layer(base, tok):
    """np.int64 (e.g. from np.argmax over a curve) was refused as "not an int" on the previous main."""
    model = bellm.patch(copy.deepcopy(base), from_layer=np.int64(-2))
    assert model.config.bellm == {"from_layer": 1, "billm_compat": False}
    assert type(model.config.bellm["from_layer"]) is int
    enc = Encoder(copy.deepcopy(base), tok, from_layer=np.int64(1))
    assert enc.from_layer == 1 and type(enc.from_layer) is int
    with pytest.raises(TypeError, match="from_layer must be an int"):
        bellm.patch(copy.deepcopy(base), from_layer=np.float64(1.0))
