"""bellm.common: the names shared across bellm, each defined once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bellm.common import (
    BELLM_PROMPT,
    POOLING_MODES,
    check_pooling,
    format_score,
    normalize_whitespace,
    resolve_prompt,
)

REPO = Path(__file__).resolve().parents[1]


def test_resolve_prompt():
    assert resolve_prompt(None, "last") == BELLM_PROMPT
    assert resolve_prompt(None, "mean") == resolve_prompt(None, "first") == "{text}"
    assert resolve_prompt("", "last") == "{text}"
    assert resolve_prompt("query: {text}", "mean") == "query: {text}"
    with pytest.raises(ValueError, match="placeholder"):
        resolve_prompt("no placeholder", "last")
    with pytest.raises(ValueError, match="exactly once"):
        resolve_prompt("{text} and {text}", "last")
    with pytest.raises(TypeError, match="str template"):
        resolve_prompt(3, "last")


def test_check_pooling_and_the_kernels_modes():
    import bellm_kernels.reference

    for mode in POOLING_MODES:
        assert check_pooling(mode) == mode
    with pytest.raises(ValueError, match="unknown pooling 'max'.*pooling must be one of last, mean, first"):
        check_pooling("max")
    assert set(POOLING_MODES) == set(bellm_kernels.reference.POOL_MODES)


def test_format_score_and_whitespace():
    assert format_score(85.9612) == "85.96" and format_score(-0.004) == "-0.00"
    for undefined in (None, float("nan"), float("inf"), float("-inf")):
        assert format_score(undefined) == "undefined"
    assert normalize_whitespace("  a \t b\n c ") == "a b c"


def test_every_shared_name_is_defined_only_in_bellm_common():
    definition = re.compile(
        r"^\s*(BELLM_PROMPT|POOLING_MODES|ENCODER_CONFIG)\s*=|^\s*def (_?resolve_prompt|_fmt|_normalize_ws|"
        r"_normalize|_?check_pooling|format_score)\(|'The representative word for sentence \{text\} is:\"'",
        re.M,
    )
    sources = [*(REPO / "bellm").rglob("*.py"), *(REPO / "experiments").rglob("*.py")]
    found = [
        f"{p.relative_to(REPO)}: {m.group(0).strip()}"
        for p in sources
        if p.name != "common.py" or p.parent.name != "bellm"
        for m in definition.finditer(p.read_text(encoding="utf-8"))
    ]
    assert not found, "defined outside bellm/common.py: " + "; ".join(found)
