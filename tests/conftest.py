"""Test-suite set-up.

On a machine without CUDA, kernel tests run the Triton kernels in Triton's interpreter. Triton decides that when a
kernel is decorated, so ``TRITON_INTERPRET=1`` is set only while ``bellm_kernels`` is first imported, then restored:
model tests and the subprocesses they start (CLI runs, torchrun, kill-and-resume) inherit no interpreter and use the
fast reference path. bellm dispatches at call time (``bellm_kernels/_checks.py``: a CPU tensor runs the Triton
kernel only when ``TRITON_INTERPRET=1``), so tests under ``tests/kernels/`` get the variable set for each test.

Under pytest-xdist every worker uses ``cpu_count // workers`` torch threads (and so do the processes it starts).
"""

import os

# Under pytest-xdist (the README's test command runs two workers), each worker gets its share of the cores, and so
# do the processes it starts (CLI runs, torchrun): two workers that each spread torch over every core slow each
# other down several-fold.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(_threads)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import bellm_kernels  # noqa: E402,F401  (decorates the Triton kernels in interpreter mode)

    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreter_for_kernel_tests_only(request, monkeypatch):
    in_kernel_tests = "tests/kernels" in str(request.node.path).replace(os.sep, "/")
    if in_kernel_tests and not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
