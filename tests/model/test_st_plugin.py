"""bellm.to_sentence_transformer: a SentenceTransformer whose encode equals Encoder.encode (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _encode_helpers import SENTENCES, char_tokenizer
from tiny_models import tiny_model

pytest.importorskip("sentence_transformers")

from bellm.encoder import Encoder  # noqa: E402
from bellm.st_plugin import to_sentence_transformer  # noqa: E402

ATOL = 2e-5


@pytest.fixture(scope="module")
def encoder():
    return Encoder(tiny_model("llama"), char_tokenizer(), from_layer=1)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_st_encode_equals_encoder(encoder, batch_size):
    st = to_sentence_transformer(encoder)
    want = encoder.encode(SENTENCES)
    got = st.encode(SENTENCES, batch_size=batch_size)
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL)
    np.testing.assert_allclose(st.encode(SENTENCES[0]), want[0], atol=ATOL)
    t = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), encoder.encode(SENTENCES, normalize_embeddings=True), atol=ATOL)


def test_st_prompt_is_a_prefix_inside_the_template(encoder):
    st = to_sentence_transformer(encoder)
    got = st.encode(SENTENCES[:3], prompt="query: ")
    np.testing.assert_allclose(got, encoder.encode(["query: " + s for s in SENTENCES[:3]]), atol=ATOL)


def test_st_save_and_reload(tmp_path, encoder):
    st = to_sentence_transformer(encoder)
    st.save(str(tmp_path / "st"))
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert modules[0]["type"] == "bellm.st_plugin.BellmEncoderModule"
    again = to_sentence_transformer(tmp_path / "st", device="cpu")
    assert again[0].encoder.config_dict() == encoder.config_dict()
    np.testing.assert_allclose(again.encode(SENTENCES), encoder.encode(SENTENCES), atol=ATOL)
    # plain sentence-transformers loading works too, with its trust_remote_code gate for non-ST classes
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(
        str(tmp_path / "st"), trust_remote_code=True, device="cpu", local_files_only=True
    )
    np.testing.assert_allclose(plain.encode(SENTENCES), encoder.encode(SENTENCES), atol=ATOL)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        to_sentence_transformer(tmp_path / "missing")
