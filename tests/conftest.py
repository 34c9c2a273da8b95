"""Test-suite set-up.

On a machine without CUDA, kernel tests run the Triton kernels in Triton's interpreter: ``TRITON_INTERPRET=1`` must
be set before triton is first imported, so it is set here. Tests outside ``tests/kernels/`` exercise models and
want the fast reference path on CPU, so an autouse fixture turns the interpreter dispatch off for them (bellm reads
the variable at call time; see ``bellm_kernels/_checks.py``).
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reference_path_outside_kernel_tests(request, monkeypatch):
    if "tests/kernels" not in str(request.node.path).replace(os.sep, "/"):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
