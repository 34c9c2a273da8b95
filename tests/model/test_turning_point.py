"""The one-pass per-layer curve, the turning-point rule and the from_layer sweep, on tiny random models."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from bellm.turning_point import (
    TurningPoint,
    find_turning_point,
    layer_embeddings,
    pick_turning_point,
    sweep_from_layer,
)
from tests.tiny_models import tiny_model

WORDS = (
    "a man woman dog cat plays runs the guitar piano on in park street quickly slowly big small red".split()
)


def char_tokenizer():
    """One token per printable ASCII character (ids 4..98), BOS ``<s>`` (1) prepended, pad 0: fits
    vocab=128."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
    vocab.update({chr(c): len(vocab) + i for i, c in enumerate(range(32, 127))})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )


def sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 9))) for _ in range(n)]


def pairs(n=14, seed=0):
    s = sentences(2 * n, seed)
    gold = np.random.default_rng(seed + 1).uniform(0, 5, size=n)
    return s[:n], s[n:], gold


def truncated(model, num_layers, *, final_norm=True):
    """A copy of ``model`` keeping its first ``num_layers`` decoder layers (optionally without the final
    norm)."""
    m = copy.deepcopy(model)
    m.layers = torch.nn.ModuleList(list(m.layers)[:num_layers])
    m.config.num_hidden_layers = num_layers
    if not final_norm:
        m.norm = torch.nn.Identity()
    return m


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("layer_norm", ["final", "none"])
def test_one_pass_equals_separate_per_layer_runs(tok, pooling, layer_norm):
    model = tiny_model("llama", num_layers=3)
    sents = sentences(7, seed=3)  # different lengths: batches of 3 are padded
    emb = layer_embeddings(
        model,
        tok,
        sents,
        prompt="",
        pooling=pooling,
        layer_norm=layer_norm,
        batch_size=3,
        show_progress_bar=False,
    )
    assert emb.shape == (model.config.num_hidden_layers + 1, len(sents), model.config.hidden_size)
    for layer in range(model.config.num_hidden_layers + 1):
        m = truncated(model, layer, final_norm=layer_norm == "final")
        for j, s in enumerate(sents):
            ids = tok(s, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                h = m(input_ids=ids).last_hidden_state[0]  # alone, no padding; the truncated model's own norm
            expected = h[-1] if pooling == "last" else h.mean(0)
            torch.testing.assert_close(emb[layer, j], expected, rtol=1e-4, atol=1e-5)


def test_curve_scores_every_layer_and_constant_layer_is_undefined(tok, tmp_path):
    model = tiny_model("llama", num_layers=3)
    s1, s2, gold = pairs()
    # Default prompt (BeLLM's, last pooling): the last token is always the closing '"', so layer 0 is
    # constant.
    result = find_turning_point(model, tok, data=(s1, s2, gold), output_dir=tmp_path, show_progress_bar=False)
    assert len(result.scores) == model.config.num_hidden_layers + 1
    assert math.isnan(result.scores[0])
    assert all(math.isfinite(x) for x in result.scores[1:])
    assert result.turning_point is not None and result.turning_point >= 1
    assert "undefined" in result.format().splitlines()[1]
    text = (tmp_path / "turning_point.json").read_text()
    assert "NaN" not in text
    saved = json.loads(text)
    assert saved["scores"][0] is None and saved["turning_point"] == result.turning_point
    assert saved["layer_norm"] == "final" and "final norm" in saved["layer_norm_meaning"]
    assert (tmp_path / "turning_point.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Scores are the Spearman of the per-layer cosines: recompute the last layer independently.
    from scipy.stats import spearmanr

    emb = layer_embeddings(model, tok, s1 + s2, show_progress_bar=False)[-1].double()
    cos = torch.nn.functional.cosine_similarity(emb[: len(s1)], emb[len(s1) :]).numpy()
    assert result.scores[-1] == pytest.approx(100 * spearmanr(cos, gold).statistic, abs=1e-6)


def test_last_hidden_state_is_the_normed_last_layer(tok):
    """The treatment rests on transformers' hidden_states[-1] being after the final norm: check it still
    is."""
    model = tiny_model("llama", num_layers=2)
    ids = tok(["a man plays"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    emb = layer_embeddings(model, tok, ["a man plays"], prompt="", show_progress_bar=False)
    torch.testing.assert_close(emb[-1, 0], out.last_hidden_state[0, -1])


def test_pick_turning_point_rule():
    nan = float("nan")
    t, smoothed, drop = pick_turning_point([nan, 10, 30, 50, 45, 20])
    assert (t, drop) == (3, 30)
    assert math.isnan(smoothed[0])
    assert pick_turning_point([nan, 50, 20, 50, 10])[0] == 1  # ties: the earliest
    assert pick_turning_point([1, 2, 3])[0:3:2] == (2, 0.0)  # best at the end: no drop
    # A one-layer spike loses to a broad plateau once smoothed over 3 layers.
    spiky = [nan, 10, 60, 20, 40, 45, 42, 10]
    assert pick_turning_point(spiky)[0] == 2
    assert pick_turning_point(spiky, smooth=3)[0] == 5
    assert pick_turning_point([nan, nan])[0] is None
    with pytest.raises(ValueError, match="smooth"):
        pick_turning_point([1, 2], smooth=0)


def test_same_as_causal_flag():
    info = {"pooling": "last"}
    assert TurningPoint([0.0] * 5, [0.0] * 5, 3, 4, 0.0, 1, info).same_as_causal  # from_layer = L - 1
    assert not TurningPoint([0.0] * 5, [0.0] * 5, 2, 4, 0.0, 1, info).same_as_causal
    assert not TurningPoint([0.0] * 5, [0.0] * 5, 3, 4, 0.0, 1, {"pooling": "mean"}).same_as_causal


def test_bad_input(tok):
    model = tiny_model("llama", num_layers=2)
    with pytest.raises(ValueError, match="empty"):
        layer_embeddings(model, tok, [], show_progress_bar=False)
    with pytest.raises(ValueError, match="at least 2"):
        find_turning_point(model, tok, data=([], [], []), show_progress_bar=False)
    with pytest.raises(ValueError, match="placeholder"):
        layer_embeddings(model, tok, ["a b"], prompt="no placeholder", show_progress_bar=False)
    with pytest.raises(ValueError, match="layer_norm"):
        layer_embeddings(model, tok, ["a b"], layer_norm="first", show_progress_bar=False)

    class NoHidden(torch.nn.Module):  # a decoder-like module that ignores output_hidden_states
        def __init__(self):
            super().__init__()
            self.inner = tiny_model("llama", num_layers=2)
            self.norm = self.inner.norm

        def forward(self, **kw):
            kw.pop("output_hidden_states")
            return self.inner(**kw, output_hidden_states=False)

    with pytest.raises(TypeError, match="hidden_states"):
        layer_embeddings(NoHidden(), tok, ["a b", "c"], show_progress_bar=False)
    with pytest.raises(TypeError, match="final norm"):
        layer_embeddings(torch.nn.Linear(2, 2), tok, ["a b"], show_progress_bar=False)


def test_sweep_matches_curve_and_restores_model(tok):
    pytest.importorskip("bellm.encoder")
    from bellm.surgery import patch

    model = tiny_model("llama", num_layers=3)
    data = pairs(16, seed=5)
    # No prompt: under the BeLLM prompt a random tiny model's cosines rank alike for every k
    # (prompt-dominated).
    curve = find_turning_point(model, tok, data=data, prompt="", show_progress_bar=False)
    sweep = sweep_from_layer(
        model, tok, data=data, from_layers=[0, -1, 3], prompt="", show_progress_bar=False
    )
    assert sorted(sweep) == [0, 2, 3]
    assert sweep[3] == pytest.approx(curve.scores[3], abs=1e-4)  # k = L is causal: the curve's last point
    assert sweep[2] == pytest.approx(
        sweep[3], abs=1e-4
    )  # docs/bidirectional.md, section 1: from_layer = L-1 == causal
    assert abs(sweep[0] - sweep[3]) > 1e-3  # all-bidirectional really changes the embedding
    assert getattr(model.config, "bellm", None) is None  # unpatched afterwards
    # A patched model keeps its patch across the curve and the sweep, and the curve still describes the causal
    # model.
    patch(model, from_layer=1)
    again = find_turning_point(model, tok, data=data, prompt="", show_progress_bar=False)
    np.testing.assert_allclose(again.scores, curve.scores, atol=1e-6)
    sweep_from_layer(model, tok, data=data, from_layers=[3], show_progress_bar=False)
    assert model.config.bellm["from_layer"] == 1


def test_cli_turning_point_on_a_tiny_saved_model(tmp_path, capsys):
    pytest.importorskip("bellm.encoder")
    import argparse

    from bellm.cli.turning_point import add_arguments, run
    from bellm.models import default_data_dir

    try:
        data_dir = default_data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"shared data not available: {err}")
    model_dir = tmp_path / "tiny"
    tiny_model("llama", num_layers=3).save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "tp"
    args = parser.parse_args(
        [
            "--model",
            str(model_dir),
            "--output",
            str(out),
            "--max-pairs",
            "20",
            "--data-dir",
            str(data_dir),
            "--from-layers",
            "0",
            "3",
        ]
    )
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "turning point: layer" in printed and "suggested from_layer=" in printed
    saved = json.loads((out / "turning_point.json").read_text())
    assert len(saved["scores"]) == 4 and set(saved["sweep"]) == {"0", "3"}
    assert saved["data"] == {
        "task": "STSBenchmark",
        "split": "dev",
        "pairs": 20,
        "source": "senteval",
        "max_pairs": 20,
        "seed": 0,
    }
    assert saved["sweep"]["3"] == pytest.approx(saved["scores"][3], abs=1e-4)
    assert (out / "turning_point.png").is_file()
