"""The STS loaders read every shipped file with the documented row counts, keep quotes, and fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from bellm.sts_data import TASKS, load_sts

ROWS = {
    ("STS12", "test"): 3108,
    ("STS13", "test"): 1500,
    ("STS14", "test"): 3750,
    ("STS15", "test"): 3000,
    ("STS16", "test"): 1186,
    ("STSBenchmark", "train"): 5749,
    ("STSBenchmark", "dev"): 1500,
    ("STSBenchmark", "test"): 1379,
    ("SICKRelatedness", "train"): 4500,
    ("SICKRelatedness", "dev"): 500,
    ("SICKRelatedness", "test"): 4927,
}


@pytest.fixture(scope="module")
def data_dir():
    from bellm.models import default_data_dir

    try:
        return default_data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"shared data not available: {err}")


@pytest.mark.parametrize("source", ["senteval", "raw"])
def test_row_counts_and_scores(data_dir, source):
    for (task, split), n in ROWS.items():
        pairs = load_sts(task, split, source=source, data_dir=data_dir)
        assert len(pairs) == len(pairs.sentences1) == len(pairs.sentences2) == len(pairs.subsets) == n, (
            task,
            split,
        )
        low = 1.0 if task == "SICKRelatedness" else 0.0
        assert pairs.scores.min() >= low and pairs.scores.max() <= 5.0
        assert all(pairs.sentences1) and all(pairs.sentences2)


def test_sources_agree_and_differ_only_in_text(data_dir):
    for task in TASKS:
        se = load_sts(task, data_dir=data_dir)
        raw = load_sts(task, source="raw", data_dir=data_dir)
        np.testing.assert_array_equal(se.scores, raw.scores)
    sts12 = load_sts("STS12", data_dir=data_dir)
    assert sts12.sentences1[0] == sts12.sentences1[0].lower()  # SentEval's text is lowercased
    assert load_sts("STS12", source="raw", data_dir=data_dir).sentences1[0][0].isupper()
    assert set(sts12.subsets) == {"MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"}


def test_quotes_are_kept_verbatim(data_dir):
    sts12 = load_sts("STS12", data_dir=data_dir)
    quoted = [s for s in sts12.sentences1 + sts12.sentences2 if '"' in s]
    assert len(quoted) > 100  # quoting ON would have merged rows and broken the counts checked above
    assert any(s.startswith('" it \'s a huge black eye , "') for s in quoted)
    assert all("\t" not in s and "\n" not in s for s in quoted)


def test_sample_is_seeded_subset(data_dir):
    dev = load_sts("STSBenchmark", "dev", data_dir=data_dir)
    a, b = dev.sample(50, seed=1), dev.sample(50, seed=1)
    assert len(a) == 50 and a.sentences1 == b.sentences1
    assert set(a.sentences1) <= set(dev.sentences1)
    assert dev.sample(None) is dev and dev.sample(10_000) is dev
    with pytest.raises(ValueError, match="positive"):
        dev.sample(0)
    idx = dev.sample_indices(50, seed=1)  # the pairs sample() keeps, as indices into the full set
    assert list(idx) == sorted(idx) and [dev.sentences1[i] for i in idx] == a.sentences1
    assert list(dev.sample_indices(None)) == list(range(len(dev)))


def test_bad_input(data_dir, tmp_path):
    with pytest.raises(ValueError, match="valid tasks: STS12, STS13"):
        load_sts("STS-B", data_dir=data_dir)
    with pytest.raises(ValueError, match="no split 'dev'.*valid: test"):
        load_sts("STS12", "dev", data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown source"):
        load_sts("STS12", source="moses", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sts("STS12", data_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"stsb_test\.tsv\.gz.*" + str(tmp_path)):
        load_sts("STSBenchmark", source="raw", data_dir=tmp_path)
    (tmp_path / "sts").mkdir()
    (tmp_path / "sts" / "senteval_sts.tsv.gz").write_bytes(__import__("gzip").compress(b"task\tsplit\n"))
    with pytest.raises(ValueError, match="no STS12 test rows"):
        load_sts("STS12", data_dir=tmp_path)
    assert load_sts("SICKRelatedness", "trial", data_dir=data_dir).split == "dev"  # SICK's name for dev
