"""DynamicBatcher on a fake model: batching under the token budget, request boundaries, overload, errors, drain."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from bellm.server.batcher import DynamicBatcher, NotAccepting, QueueFull

DIM = 4


class FakeModel:
    """``embed(texts)``: one row per text, a function of the text alone; records every batch."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        assert self.gate.wait(30)
        self.batches.append(list(texts))
        if self.fail_on in texts:
            raise RuntimeError(f"boom on {self.fail_on}")
        return np.stack([self.row(t) for t in texts])

    @staticmethod
    def row(text: str) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(text)) % 2**32)
        return rng.standard_normal(DIM).astype(np.float32)


def _run(coro):
    return asyncio.run(coro)


async def _with(batcher, body):
    await batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


def test_concurrent_requests_share_forwards_and_get_their_own_rows():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_tokens=100, max_queue_tokens=10_000, max_wait_s=0.05)
    requests = [[f"r{i}-s{j}" for j in range(1 + i % 3)] for i in range(12)]

    async def body():
        return await asyncio.gather(*(batcher.embed(texts, [5] * len(texts)) for texts in requests))

    results = _run(_with(batcher, body))
    for texts, got in zip(requests, results):
        np.testing.assert_array_equal(got, np.stack([FakeModel.row(t) for t in texts]))
    assert len(model.batches) < len(requests)  # requests were combined
    assert all(len(b) * 5 <= 100 for b in model.batches)  # under the token budget
    assert sorted(t for b in model.batches for t in b) == sorted(t for r in requests for t in r)


def test_large_request_spans_several_forwards_in_order():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_tokens=30, max_queue_tokens=10_000, max_wait_s=0)
    texts = [f"s{i}" for i in range(20)]
    got = _run(_with(batcher, lambda: batcher.embed(texts, [10] * 20)))
    np.testing.assert_array_equal(got, np.stack([FakeModel.row(t) for t in texts]))
    assert [len(b) for b in model.batches] == [3] * 6 + [2]


def test_an_input_over_the_budget_runs_alone():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_tokens=10, max_queue_tokens=10_000, max_wait_s=0)
    got = _run(_with(batcher, lambda: batcher.embed(["long", "a", "b"], [50, 5, 5])))
    assert got.shape == (3, DIM)
    assert model.batches == [["long"], ["a", "b"]]


def test_without_batching_each_forward_holds_one_request():
    model = FakeModel()
    batcher = DynamicBatcher(
        model, max_batch_tokens=1000, max_queue_tokens=10_000, max_wait_s=0.05, batching=False
    )
    requests = [[f"r{i}-a", f"r{i}-b"] for i in range(6)]

    async def body():
        return await asyncio.gather(*(batcher.embed(t, [3, 3]) for t in requests))

    _run(_with(batcher, body))
    assert sorted(model.batches) == sorted(requests)


def test_queue_full_is_raised_at_once_and_an_empty_queue_admits_anything():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_tokens=10, max_queue_tokens=20, max_wait_s=0)

    async def body():
        model.gate.clear()
        first = asyncio.ensure_future(batcher.embed(["a"], [10]))  # taken by the worker, held in the gate
        while not model.batches and batcher.queued_inputs:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.embed(["b", "c"], [10, 10]))  # queued: 20 tokens
        await asyncio.sleep(0.05)
        assert batcher.queued_tokens == 20
        with pytest.raises(QueueFull, match="over the queue limit of 20 tokens") as err:
            await batcher.embed(["d"], [1])
        assert err.value.retry_after >= 1
        model.gate.set()
        await asyncio.gather(first, second)
        assert batcher.queued_tokens == 0
        big = await batcher.embed(["e"] * 5, [100] * 5)  # over the limit, but the queue is empty
        assert big.shape == (5, DIM)

    _run(_with(batcher, body))


def test_a_failing_forward_fails_its_requests_and_the_worker_goes_on():
    model = FakeModel(fail_on="bad")
    batcher = DynamicBatcher(model, max_batch_tokens=100, max_queue_tokens=1000, max_wait_s=0.05)

    async def body():
        results = await asyncio.gather(
            batcher.embed(["ok1"], [1]), batcher.embed(["bad", "x"], [1, 1]), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)  # one forward: both failed, neither hangs
        return await batcher.embed(["later"], [1])

    np.testing.assert_array_equal(_run(_with(batcher, body)), FakeModel.row("later")[None])


def test_stop_finishes_queued_requests_then_refuses_new_ones():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch_tokens=2, max_queue_tokens=1000, max_wait_s=0)

    async def body():
        await batcher.start()
        model.gate.clear()
        pending = [asyncio.ensure_future(batcher.embed([f"s{i}", f"t{i}"], [1, 1])) for i in range(5)]
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(NotAccepting):
            await batcher.embed(["late"], [1])
        model.gate.set()
        await stopping
        return await asyncio.gather(*pending)

    assert [r.shape for r in _run(body())] == [(2, DIM)] * 5


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_tokens >= 1"):
        DynamicBatcher(FakeModel(), max_batch_tokens=0, max_queue_tokens=1)
