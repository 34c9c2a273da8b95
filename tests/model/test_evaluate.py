"""STS evaluation: the Spearman-of-cosine metric (known answers, scipy, sentence-transformers), the protocol
on the shipped data with a deterministic fake encoder, undefined scores, bad input, and ``bellm eval`` on a
tiny model."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

from bellm.evaluate import evaluate_sts, format_markdown, spearman_cosine, to_jsonable
from bellm.sts_data import TASKS, load_sts


def _data_dir():
    from bellm.models import default_data_dir

    try:
        return default_data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"shared data not available: {err}")


class BagOfWords:
    """A deterministic fake encoder: sum of per-word random vectors (seeded by the word's crc32); counts
    calls."""

    dim = 32

    def __init__(self):
        self.calls = 0
        self.seen: list[str] = []

    def vector(self, sentence: str) -> np.ndarray:
        out = np.zeros(self.dim)
        for w in sentence.split():
            out += np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim)
        return out

    def encode(self, sentences, **kwargs):
        self.calls += 1
        self.seen.extend(sentences)
        return np.stack([self.vector(s) for s in sentences]).astype(np.float32)


def _angles(cosines):
    """Pairs of 2-D unit vectors whose cosine similarities are exactly ``cosines``."""
    c = np.asarray(cosines, dtype=np.float64)
    e1 = np.tile([1.0, 0.0], (len(c), 1))
    e2 = np.stack([c, np.sqrt(1 - c**2)], axis=1)
    return e1, e2


def test_spearman_known_answer():
    gold = [1, 2, 3, 4, 5]
    e1, e2 = _angles([0.1, 0.3, 0.2, 0.5, 0.4])  # ranks 1 3 2 5 4: sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    assert spearman_cosine(e1, e2, gold) == pytest.approx(80.0)
    e1, e2 = _angles([0.9, 0.7, 0.5, 0.3, 0.1])
    assert spearman_cosine(e1, e2, gold) == pytest.approx(-100.0)
    # Scale does not matter (cosine), monotone transforms of the gold do not either (ranks).
    assert spearman_cosine(3 * e1, 0.5 * e2, np.exp(gold)) == pytest.approx(-100.0)


def test_spearman_matches_scipy_and_handles_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    e1, e2 = rng.standard_normal((200, 16)), rng.standard_normal((200, 16))
    gold = rng.integers(0, 6, size=200).astype(float)  # many ties in the gold
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    assert spearman_cosine(e1, e2, gold) == pytest.approx(100 * spearmanr(cos, gold).statistic, abs=1e-9)


def test_undefined_scores():
    e = np.ones((5, 4))
    assert math.isnan(spearman_cosine(e, e, [1, 2, 3, 4, 5]))  # constant cosines
    assert math.isnan(spearman_cosine(np.eye(2), np.eye(2)[::-1], [1, 1]))  # constant gold
    assert math.isnan(spearman_cosine(e[:1], e[:1], [1]))  # one pair
    with pytest.raises(ValueError, match="gold"):
        spearman_cosine(e, e, [1, 2])


def test_protocol_on_real_data_matches_scipy_and_sentence_transformers():
    data_dir = _data_dir()
    enc = BagOfWords()
    results = evaluate_sts(enc, tasks=("STS13", "STSBenchmark"), data_dir=data_dir, show_progress_bar=False)
    assert set(results["scores"]) == {"STS13", "STSBenchmark"}
    assert results["pairs"] == {"STS13": 1500, "STSBenchmark": 1379}
    # Each unique sentence encoded exactly once, across tasks.
    assert len(enc.seen) == len(set(enc.seen)) == results["protocol"]["unique_sentences_encoded"]
    # Independent recomputation for STS-B test: whitespace-normalised sentences, cosine, scipy Spearman.
    from scipy.stats import spearmanr

    pairs = load_sts("STSBenchmark", "test", data_dir=data_dir)
    a = np.stack([enc.vector(" ".join(s.split())) for s in pairs.sentences1])
    b = np.stack([enc.vector(" ".join(s.split())) for s in pairs.sentences2])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    expected = 100 * spearmanr(cos, pairs.scores).statistic
    assert results["scores"]["STSBenchmark"] == pytest.approx(expected, abs=1e-4)
    assert 10 < expected < 90  # bag of words correlates with STS, but not perfectly: the test is not vacuous
    assert results["average"] == pytest.approx(np.mean(list(results["scores"].values())))

    st_eval = pytest.importorskip("sentence_transformers.sentence_transformer.evaluation")

    class CardData:
        def set_evaluation_metrics(self, *args, **kwargs):
            pass

    enc.model_card_data = CardData()
    evaluator = st_eval.EmbeddingSimilarityEvaluator(
        [" ".join(s.split()) for s in pairs.sentences1],
        [" ".join(s.split()) for s in pairs.sentences2],
        pairs.scores.tolist(),
        similarity_fn_names=["cosine"],
        write_csv=False,
    )
    metrics = evaluator(enc)
    assert 100 * metrics["spearman_cosine"] == pytest.approx(results["scores"]["STSBenchmark"], abs=1e-3)


def test_undefined_task_is_reported_not_crashed(tmp_path):
    data_dir = _data_dir()

    class Constant:
        def encode(self, sentences):
            return np.ones((len(sentences), 3))

    results = evaluate_sts(
        Constant(), tasks=["STS16"], data_dir=data_dir, show_progress_bar=False, max_pairs=50
    )
    assert math.isnan(results["scores"]["STS16"]) and math.isnan(results["average"])
    assert "undefined" in format_markdown(results)
    assert json.loads(json.dumps(to_jsonable(results)))["scores"]["STS16"] is None


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="valid tasks: STS12"):
        evaluate_sts(BagOfWords(), tasks=["STS17"])
    with pytest.raises(ValueError, match="no tasks"):
        evaluate_sts(BagOfWords(), tasks=[])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_sts(BagOfWords(), tasks=["STS12"], data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="senteval_sts.tsv.gz"):
        evaluate_sts(BagOfWords(), tasks=["STS12"], data_dir=tmp_path)

    class Wrong:
        def encode(self, sentences):
            return np.ones((len(sentences) + 1, 3))

    with pytest.raises(ValueError, match="expected"):
        evaluate_sts(Wrong(), tasks=["STS16"], data_dir=_data_dir(), show_progress_bar=False, max_pairs=5)


def test_cli_eval_on_a_tiny_saved_model(tmp_path, capsys):
    pytest.importorskip("bellm.encoder")
    import argparse

    from bellm.cli.eval import add_arguments, run
    from tests.model.test_turning_point import char_tokenizer
    from tests.tiny_models import tiny_model

    data_dir = _data_dir()
    model_dir = tmp_path / "tiny"
    tiny_model("llama", num_layers=2).save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "res" / "results.json"
    args = parser.parse_args(
        [
            "--model",
            str(model_dir),
            "--from-layer",
            "1",
            "--tasks",
            "STS12",
            "SICKRelatedness",
            "--max-pairs",
            "40",
            "--data-dir",
            str(data_dir),
            "--output",
            str(out),
        ]
    )
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "| from_layer=1 | " in printed and "SICK-R" in printed
    saved = json.loads(out.read_text())
    assert set(saved["scores"]) == {"STS12", "SICKRelatedness"} and saved["pairs"]["STS12"] == 40
    assert saved["model"]["from_layer"] == 1
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file
    from bellm.cli import main

    assert main(["eval", "--model", str(model_dir), "--tasks", "STS99"]) == 2  # bad arguments: one line, exit 2
    assert "valid tasks" in capsys.readouterr().err
    assert TASKS[0] == "STS12"
