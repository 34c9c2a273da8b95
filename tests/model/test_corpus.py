"""bellm.encode_corpus / `bellm encode`: formats, bad input, kill -9 + resume, ranks (CPU)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _encode_helpers import SENTENCES, FakeEncoder, char_tokenizer
from tiny_models import tiny_model

from bellm.corpus import encode_corpus, load_embeddings, read_rows

REPO = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent


def _txt(path: Path, n: int) -> Path:
    path.write_text("".join(f"sentence number {i} {'x' * (i % 7)}\n" for i in range(n)), encoding="utf-8")
    return path


def _env(**extra) -> dict:
    env = dict(
        os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{HELPERS}", OMP_NUM_THREADS="1", TRITON_INTERPRET="0"
    )
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model("llama", attn_implementation="sdpa").save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


# ---------------------------------------------------------------------------------------------- reading
def test_read_rows_formats(tmp_path):
    (tmp_path / "a.txt").write_text('one\n\nthree "q"\tx\n', encoding="utf-8")
    assert list(read_rows(tmp_path / "a.txt")) == ["one", "", 'three "q"\tx']
    (tmp_path / "b.jsonl").write_text(
        '{"text": "a", "id": 1}\n\n{"body": "b", "text": "c"}\n', encoding="utf-8"
    )
    assert list(read_rows(tmp_path / "b.jsonl")) == ["a", "c"]
    with gzip.open(tmp_path / "c.tsv.gz", "wt", encoding="utf-8") as f:
        f.write('id\tsentence\n1\tA "quoted" one\n2\tNA\n')
    assert list(read_rows(tmp_path / "c.tsv.gz", "sentence")) == ['A "quoted" one', "NA"]


@pytest.mark.parametrize(
    "name,content,field,match",
    [
        (
            "bad.jsonl",
            '{"text": "a"}\n{"txt": "b"}\n',
            "text",
            r"bad.jsonl:2: no 'text' field \(found: txt\)",
        ),
        ("bad2.jsonl", '{"text": "a"}\nnot json\n', "text", "bad2.jsonl:2: not valid JSON"),
        ("bad3.jsonl", '{"text": 5}\n', "text", "field 'text' is int"),
        (
            "bad.tsv",
            "id\tsentence\n1\ta\n",
            "text",
            r"no column 'text' in the header \(columns: id, sentence\)",
        ),
        ("bad.csv", "a,b\n", "text", "unsupported file type '.csv'"),
    ],
)
def test_bad_input_leaves_no_output(tmp_path, name, content, field, match):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        encode_corpus(tmp_path / name, tmp_path / "out", FakeEncoder(), text_field=field)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encode_corpus(tmp_path / "missing.txt", tmp_path / "out", FakeEncoder())
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_shards_index_and_resume_skips_done(tmp_path, fmt):
    src = _txt(tmp_path / "in.txt", 23)
    enc = FakeEncoder()
    index = encode_corpus(src, tmp_path / "out", enc, shard_size=5, format=fmt, show_progress_bar=False)
    assert (
        index["complete"]
        and index["num_shards"] == 5
        and [s["rows"] for s in index["shards"]] == [5] * 4 + [3]
    )
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == index
    emb = load_embeddings(tmp_path / "out")
    want = FakeEncoder().encode_with_stats(list(read_rows(src)))[0].numpy()
    np.testing.assert_array_equal(emb, want)
    assert enc.encoded == 23
    again = FakeEncoder()
    encode_corpus(src, tmp_path / "out", again, shard_size=5, format=fmt, show_progress_bar=False)
    assert again.encoded == 0  # everything was done
    (tmp_path / "out" / f"shard-00002.{fmt}").unlink()
    encode_corpus(src, tmp_path / "out", again, shard_size=5, format=fmt, show_progress_bar=False)
    assert again.encoded == 5
    np.testing.assert_array_equal(load_embeddings(tmp_path / "out"), want)
    with pytest.raises(ValueError, match="shard_size: 5 there, 4 now"):
        encode_corpus(src, tmp_path / "out", FakeEncoder(), shard_size=4, format=fmt)


def test_ranks_without_rendezvous_union_equals_single(tmp_path):
    src = _txt(tmp_path / "in.txt", 17)
    encode_corpus(src, tmp_path / "one", FakeEncoder(), shard_size=3, show_progress_bar=False)
    first = encode_corpus(
        src, tmp_path / "two", FakeEncoder(), shard_size=3, rank=1, world_size=2, show_progress_bar=False
    )
    assert not first["complete"] and first["missing_shards"] == [0, 2, 4]
    with pytest.raises(ValueError, match="unfinished"):
        load_embeddings(tmp_path / "two")
    last = encode_corpus(
        src, tmp_path / "two", FakeEncoder(), shard_size=3, rank=0, world_size=2, show_progress_bar=False
    )
    assert last["complete"]
    one, two = sorted((tmp_path / "one").glob("shard-*")), sorted((tmp_path / "two").glob("shard-*"))
    assert [p.name for p in one] == [p.name for p in two]
    from safetensors import safe_open

    for a, b in zip(one, two):  # same tensors and metadata (the byte order of safetensors' metadata may vary)
        with safe_open(str(a), "np") as fa, safe_open(str(b), "np") as fb:
            assert fa.metadata() == fb.metadata()
            np.testing.assert_array_equal(fa.get_tensor("embeddings"), fb.get_tensor("embeddings"))
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        encode_corpus(src, tmp_path / "x", FakeEncoder(), rank=2, world_size=2)


def test_kill_9_then_resume_gives_exactly_the_uninterrupted_rows(tmp_path):
    src = _txt(tmp_path / "in.txt", 40)
    script = textwrap.dedent(f"""
        from _encode_helpers import FakeEncoder
        from bellm.corpus import encode_corpus
        encode_corpus({str(src)!r}, {str(tmp_path / "out")!r}, FakeEncoder(sleep=0.4), shard_size=4,
                      show_progress_bar=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(), cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((tmp_path / "out").glob("shard-*.safetensors"))) < 2:
        time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.2)  # most likely inside the next shard's encode or write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "out").glob("shard-*.safetensors"))
    assert 2 <= len(done) < 10, done
    resumed = FakeEncoder()
    index = encode_corpus(src, tmp_path / "out", resumed, shard_size=4, show_progress_bar=False)
    assert index["complete"] and resumed.encoded == 40 - 4 * len(done)  # nothing re-encoded, nothing lost
    assert not list((tmp_path / "out").glob(".*.tmp"))
    encode_corpus(src, tmp_path / "ref", FakeEncoder(), shard_size=4, show_progress_bar=False)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "out"), load_embeddings(tmp_path / "ref"))


# ---------------------------------------------------------------------------------------------- real model
def test_torchrun_two_processes_equal_one(tmp_path, tiny_dir):
    """`torchrun --nproc-per-node 2 -m bellm encode` (gloo, CPU) writes exactly the single-process rows."""
    from bellm.encoder import Encoder

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": s, "i": i}) + "\n" for i, s in enumerate(SENTENCES * 2)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "bellm",
        "encode",
        "--model",
        str(tiny_dir),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "dist"),
        "--shard-size",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--pooling",
        "mean",
    ]
    result = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((tmp_path / "dist" / "index.json").read_text())
    assert index["complete"] and index["rows"] == 20 and index["num_shards"] == 7
    enc = Encoder.from_pretrained(tiny_dir, pooling="mean", device="cpu")
    encode_corpus(src, tmp_path / "single", enc, shard_size=3, show_progress_bar=False)
    single = load_embeddings(tmp_path / "single")
    np.testing.assert_allclose(load_embeddings(tmp_path / "dist"), single, atol=1e-5)
    np.testing.assert_allclose(single, enc.encode(SENTENCES * 2), atol=1e-5)


def test_cli_errors(tmp_path, tiny_dir):
    from bellm.cli import main

    src = _txt(tmp_path / "in.txt", 3)
    assert (
        main(
            [
                "encode",
                "--model",
                str(tmp_path / "nope"),
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "encode",
                "--model",
                str(tiny_dir),
                "--input",
                str(tmp_path / "none.txt"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "o").exists()
    assert (
        main(
            [
                "encode",
                "--model",
                str(tiny_dir),
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o"),
                "--format",
                "npy",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert load_embeddings(tmp_path / "o").shape == (3, 64)
