"""``bellm`` errors: one line naming the value and the fix, exit 2 for usage errors and 1 for data errors, the
traceback only with ``--debug``, and bad arguments refused before torch is even imported (so before any model
load). Every test here fails on the previous main (tracebacks, exit codes, checks after the model load).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bellm.cli import main

REPO = Path(__file__).resolve().parents[1]


def _tiny_dir(tmp_path) -> Path:
    """A model folder with just a config (the checks read the layer count from it; nothing loads it)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    return d


def _run(args, tmp_path):
    """Run ``bellm args`` in a fresh interpreter; returns (exit code, stderr, whether torch was imported)."""
    code = (
        "import sys\nfrom bellm.cli import main\nrc = main(sys.argv[1:])\n"
        "print('TORCH', 'torch' in sys.modules)\nsys.exit(rc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    return result.returncode, result.stderr.strip(), "TORCH True" in result.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (
            ["encode", "--input", "in.txt", "--output", "out", "--from-layer", "9"],
            r"--from-layer 9 is out of range",
        ),
        (["encode", "--input", "in.txt", "--output", "afile"], r"--output 'afile' is a file"),
        (
            ["encode", "--input", "in.txt", "--output", "out", "--prompt", "no placeholder"],
            r"--prompt: prompt",
        ),
        (["encode", "--input", "in.txt", "--output", "out", "--max-length", "0"], r"--max-length must be"),
        (["encode", "--input", "missing.txt", "--output", "out"], r"--input 'missing.txt' does not exist"),
        (
            ["train", "--data", "in.txt", "--output", "out", "--from-layer", "-5"],
            r"--from-layer -5 is out of",
        ),
        (["train", "--data", "in.txt", "--output", "afile/run"], r"'afile' is a file"),
        (["eval", "--split", "validation", "--tasks", "STSBenchmark"], r"--split: STSBenchmark has no split"),
        (["eval", "--max-pairs", "0"], r"--max-pairs must be a whole number >= 1, got 0"),
        (["eval", "--output", "."], r"--output '\.' is a folder"),
        (["eval", "--from-layer", "7"], r"--from-layer 7 is out of range for this 4-layer model"),
        (["turning-point", "--from-layers", "2", "40"], r"--from-layer 40 is out of range"),
        (["turning-point", "--output", "afile"], r"--output 'afile' is a file"),
    ],
)
def test_bad_arguments_fail_in_one_line_with_exit_2_before_torch_is_imported(tmp_path, args, match):
    import re

    (tmp_path / "in.txt").write_text("a sentence\n")
    (tmp_path / "afile").write_text("x")
    model = _tiny_dir(tmp_path)
    rc, stderr, torch_loaded = _run([*args, "--model", model], tmp_path)
    assert rc == 2, stderr
    assert len(stderr.splitlines()) == 1 and re.search(match, stderr), stderr
    assert stderr.startswith(f"bellm {args[0]}: error: ") and "Traceback" not in stderr
    assert not torch_loaded, "the check ran after torch was imported (after a possible model load)"


def test_data_errors_exit_1_in_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    data = tmp_path / "triplets.tsv.gz"
    data.write_bytes(gzip.compress(b"anchor\tpositive\tnegative\n")[:-5])  # cut short
    args = [
        "train",
        "--data",
        str(data),
        "--output",
        str(tmp_path / "run"),
        "--model",
        str(_tiny_dir(tmp_path)),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bellm train: error: ") and "triplets.tsv.gz: damaged or truncated gzip file" in err
    assert len(err.splitlines()) == 1
    from bellm.train_data import DataError

    with pytest.raises(DataError):
        main([*args, "--debug"])
    assert not (tmp_path / "run").exists()


def test_corpus_data_error_names_the_line_and_exits_1(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n{"text": 3}\n')
    args = [
        "encode",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o"),
        "--model",
        str(_tiny_dir(tmp_path)),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "in.jsonl:2: field 'text' is int, not a string" in err and len(err.splitlines()) == 1


def test_exit_codes_by_kind():
    from bellm.cli import exit_code
    from bellm.errors import DataFileError, UsageError
    from bellm.run_record import CorruptRecordError, RunMismatchError

    assert [exit_code(e) for e in (UsageError("x"), RunMismatchError("x"), FileExistsError("x"))] == [2, 2, 2]
    assert [exit_code(e) for e in (DataFileError("x"), CorruptRecordError("x"), RuntimeError("x"))] == [
        1,
        1,
        1,
    ]
