"""pytest-benchmark entry for the suite: ``pytest benchmarks/ --benchmark-only [--bench-smoke]``.

pyproject's ``testpaths = ["tests"]`` means the plain ``pytest`` never collects this folder: name it.
``--bench-smoke`` runs the modules' tiny CPU shapes (and, without CUDA, the Triton interpreter), as
``python -m benchmarks.run --smoke`` does; ``--bench-only attention,pool`` picks modules.
"""

import os

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("bellm benchmarks")
    group.addoption("--bench-smoke", action="store_true",
                    help="tiny shapes (CI smoke): checks the suite runs, says nothing about speed")
    group.addoption("--bench-only", default="", help="comma-separated benchmark modules (default: all)")


def pytest_configure(config):
    # The interpreter must be chosen before triton is first imported (the bench modules import it).
    if config.getoption("--bench-smoke"):
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def bench_smoke(request) -> bool:
    return request.config.getoption("--bench-smoke")


@pytest.fixture
def bench_only(request) -> set[str]:
    return {n.strip() for n in request.config.getoption("--bench-only").split(",") if n.strip()}
