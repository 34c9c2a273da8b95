"""One pytest-benchmark case per benchmark module: ``pytest benchmarks/ --benchmark-only``.

Each case runs the module's ``collect(smoke)`` once under ``benchmark.pedantic`` and attaches its rows (the
real measurements: medians and quantiles of synchronised, warmed-up timings of every implementation) plus
``environment()`` to ``benchmark.extra_info``. pytest-benchmark's own figure for a case is the wall time of
the whole module run, a sanity number, not a benchmark. ``--benchmark-json=FILE`` keeps the rows, and
``python -m benchmarks.report FILE`` reads that file as it reads ``benchmarks.run`` output.
"""

import os

import pytest
import torch

from benchmarks import run


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@pytest.mark.parametrize("name", run.MODULES)
def test_module(name, benchmark, bench_smoke, bench_only, monkeypatch):
    if bench_only and name not in bench_only:
        pytest.skip(f"not in --bench-only {','.join(sorted(bench_only))}")
    if bench_smoke and os.environ.get("TRITON_INTERPRET") == "1":
        # as benchmarks.run does: interpreter for the kernel modules, reference path for whole models
        monkeypatch.setenv("TRITON_INTERPRET", "1" if name in run.KERNEL_MODULES else "0")
    module = run.load_module(name)
    if module is None:
        pytest.skip(f"benchmarks/bench_{name}.py does not exist yet")
    rows = []

    def collect_synchronised():
        _synchronize()
        rows[:] = module.collect(smoke=bench_smoke)
        _synchronize()

    benchmark.pedantic(collect_synchronised, rounds=1, iterations=1, warmup_rounds=0)
    problems = [p for p in map(run.row_problem, rows) if p is not None]
    assert not problems, f"bench_{name}.collect() broke the row convention: {problems}"
    assert rows, f"bench_{name}.collect() returned no rows"
    benchmark.extra_info.update(
        module=name, smoke=bench_smoke, environment=run.suite_environment(),
        rows=[{"module": name, **run.jsonable(row)} for row in rows],
    )
