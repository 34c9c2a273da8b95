"""The offline compile gate: every shipped kernel configuration compiles for sm90 and sm80 without register spills.

Runs ``python -m bellm_kernels.compile_report --check`` over the matrix in ``GATE``: the attention kernels (forward,
backward preprocess, dK/dV, dQ), bf16 and fp16, every layout, causal and bidirectional, every candidate, at the head
dims in ``GATED_HEAD_DIMS`` (at or below 128 every candidate must be spill-free; above, each kernel needs one
spill-free candidate), and the pooling kernels (forward and backward in every pooling mode and layout, with and without
normalisation, and the L2-norm kernels), every candidate of which must be spill-free. Results are kept in
``compile_cache.json`` beside this file, keyed by a hash of the kernel source, its specialisation, the launch
options and the Triton version: only what changed is recompiled (regenerate with the command in KERNELS.md under
each Triton version CI installs, and commit the cache, or CI compiles the missing entries itself), and a few cached
entries are recompiled on every run to check the cache. CI runs it under each Triton version it installs. The report
runs in a subprocess: this test session imported the kernels for Triton's interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(__file__).with_name("compile_cache.json")
GATED_HEAD_DIMS = (64, 80, 96, 128, 256)
# the gated matrix: both architectures, every kernel (attention and pooling), bf16 and fp16 (the report's default),
# the head dims above for the attention kernels (the pooling kernels have no head_dim: all of them are gated)
GATE = ["--arch", "sm90", "--arch", "sm80", *(f"--head-dim={d}" for d in GATED_HEAD_DIMS)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _python(code: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def nvidia_tools():
    probe = _python("from bellm_kernels import _offline_compile as c; c.nvidia_tools()", timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"the Triton wheel cannot build cubins here: {probe.stderr.strip().splitlines()[-1]}")


def test_no_spills_no_compile_errors(nvidia_tools):
    cmd = [sys.executable, "-m", "bellm_kernels.compile_report", *GATE, "--check", "--cache", str(CACHE),
           "--verify", "2", "--jobs", str(min(4, os.cpu_count() or 1))]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert "no compile errors; no spills" in done.stdout
    assert "cache entry differed" not in done.stdout


def test_cache_key_follows_the_kernel_source(nvidia_tools):
    """Editing a helper a kernel calls changes the kernel's key, so the gate recompiles it; a key not in the cache
    is compiled, a cached one is not."""
    done = _python(
        """
        import importlib, triton
        from bellm_kernels import compile_report as report
        attn = importlib.import_module("bellm_kernels.attention")
        v = report.Variant("attn_fwd", 90, "bf16", 128, "causal", "packed",
                           "BLOCK_M=64 BLOCK_N=64 warps=4 stages=3")
        before = report._key(v)
        assert report._key(v) == before
        # the same helper with one more comment line: a different source, hence a different key
        import copy
        original = attn._load_tile
        edited = copy.copy(original)
        new_src = original.src.replace('    if ROW_MASK:', '    # edited\\n    if ROW_MASK:', 1)
        if hasattr(edited, '_unsafe_update_src'):  # Triton >= 3.9 guards .src
            edited._unsafe_update_src(new_src)
        else:
            edited.src = new_src
        assert edited.src != original.src
        attn._load_tile = edited
        try:
            after = report._key(v)
        finally:
            attn._load_tile = original
        assert after != before, 'editing a helper did not change the key'
        compiled = []
        report._compile = lambda variant: compiled.append(variant) or dict(
            registers=1, stack=0, shared=0, tensor_cores='-', sass=1, local_stores=0, local_loads=0, error='')
        import json, tempfile, os
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, 'cache.json')
            report.run([v], cache=cache, log=lambda m: None)
            assert len(compiled) == 1
            report.run([v], cache=cache, log=lambda m: None)
            assert len(compiled) == 1, 'a cached entry was recompiled'
            entries = json.load(open(cache))['entries']
            assert list(entries) == [before] and entries[before]['triton'] == triton.__version__
        print('ok')
        """,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
