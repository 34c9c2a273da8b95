"""The project speaks for itself: no text in the packages (bellm, bellm_kernels), their help, README, RESULTS.md,
KERNELS.md, BENCHMARKS.md, the benchmark and experiment code that writes them, the docs or the tests refers to a
document that is not part of the repository.

Two checks: phrases that only make sense with notes outside the project (``findings #1``, a notes folder, an
absolute path of one machine, ...), and every ``*.md`` file named or linked must exist in the repository.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

OUTSIDE = re.compile(
    r"\bfindings\b|shared/notes|docs: architecture|peers\.md|architecture\.md|perf-anchors|/work/|/home/|"
    r"\bissue[ -]?#?\d+|main job",
    re.IGNORECASE,
)
MARKDOWN_FILE = re.compile(r"(?<![\w/.$-])((?:\.\./|[\w-]+/)*[\w.-]+\.md)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _texts() -> list[tuple[str, Path, str]]:
    """``(label, folder the text lives in, text)`` for every file and help text checked."""
    files = [
        *sorted((REPO / "bellm").rglob("*.py")),
        *sorted((REPO / "bellm_kernels").rglob("*.py")),
        *sorted((REPO / "benchmarks").rglob("*.py")),
        *sorted((REPO / "benchmarks").rglob("*.md")),
        *sorted((REPO / "experiments").rglob("*.py")),
        *sorted((REPO / "experiments").rglob("*.md")),
        *sorted((REPO / "docs").rglob("*.md")),
        REPO / "README.md",
        REPO / "RESULTS.md",
        *[p for p in (REPO / "KERNELS.md", REPO / "BENCHMARKS.md") if p.exists()],
        *sorted((REPO / "tests").rglob("*.py")),
    ]
    this = Path(__file__).resolve()
    ignored = _git_ignored(files)
    files = [p for p in files if p != this and p not in ignored]
    out = [(str(p.relative_to(REPO)), p.parent, p.read_text(encoding="utf-8")) for p in files]
    out += [(f"bellm {name} --help", REPO, text) for name, text in _help_texts().items()]
    return out


def _git_ignored(files: list[Path]) -> set[Path]:
    """The files git ignores (what a run writes into the working tree, e.g. a trained adapter's generated
    README); empty without git or outside a git checkout."""
    import subprocess

    try:
        proc = subprocess.run(
            ["git", "check-ignore", "--stdin"],
            input="\n".join(str(p.relative_to(REPO)) for p in files),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if proc.returncode not in (0, 1):  # 1: nothing ignored; 128: not a git checkout
        return set()
    return {REPO / line for line in proc.stdout.splitlines() if line}


def _help_texts() -> dict[str, str]:
    from bellm.cli import build_parser

    parser = build_parser()
    texts = {"": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts.update({name: sub.format_help() for name, sub in action.choices.items()})
    return texts


def _exists(name: str, folder: Path) -> bool:
    return (folder / name).exists() or (REPO / name).exists()


def _link_exists(target: str, folder: Path, label: str) -> bool:
    """A Markdown file's link resolves from that file's folder, as a reader's viewer resolves it; a link in
    code is text for a generated report, written relative to the repository root."""
    if label.endswith(".md"):
        return (folder / target).exists()
    return _exists(target, folder)


@pytest.mark.parametrize("label, folder, text", [pytest.param(*t, id=t[0]) for t in _texts()])
def test_refers_only_to_the_repository(label, folder, text):
    outside = sorted({m.group(0) for m in OUTSIDE.finditer(text)})
    assert not outside, f"{label} refers to something outside the repository: {outside}"
    if label.startswith("tests/"):
        return  # tests create files of their own (a report in a temporary folder, ...)
    missing = sorted(
        {name for name in MARKDOWN_FILE.findall(text) if not _exists(name, folder)}
        | {
            target
            for target in MARKDOWN_LINK.findall(text)
            if "://" not in target and "{" not in target and not _link_exists(target, folder, label)
        }
    )
    assert not missing, f"{label} names files that are not in the repository: {missing}"


def test_the_checks_can_fail():
    assert (
        OUTSIDE.search("see findings #1") and OUTSIDE.search("shared/notes/x") and OUTSIDE.search("/work/a")
    )
    assert MARKDOWN_FILE.findall("read docs/nowhere.md first") == ["docs/nowhere.md"]
    assert not _exists("docs/nowhere.md", REPO) and _exists("docs/bidirectional.md", REPO)
    # a Markdown link below the root must climb to it; the same name in code is repository-relative
    assert not _link_exists("docs/bidirectional.md", REPO / "experiments", "experiments/README.md")
    assert _link_exists("../docs/bidirectional.md", REPO / "experiments", "experiments/README.md")
    assert _link_exists("docs/bidirectional.md", REPO / "experiments", "experiments/report.py")
    assert MARKDOWN_LINK.findall("[a](../x/y.md#part) and [b](https://e.org/c.md)") == [
        "../x/y.md",
        "https://e.org/c.md",
    ]
