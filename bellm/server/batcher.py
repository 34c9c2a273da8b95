"""Dynamic token-budget batching: many small concurrent requests become one packed forward.

Requests are split into their inputs and queued first in, first out. One model worker (an asyncio task whose
forward runs in a single dedicated thread, so the event loop keeps serving ``/health`` and new requests) takes
as many queued inputs as fit ``max_batch_tokens`` -- waiting at most ``max_wait_s`` after the oldest input
arrived for more to come -- and makes one ``embed(texts)`` call. Each request gets its own rows back once all of
its inputs are done; a request larger than the budget spans several forwards. The embedding of an input does
not depend on what it was batched with (the packed encode path is batch-invariant), so batching is invisible
to clients.

With ``batching=False`` each forward holds the inputs of one request only (the baseline the benchmark compares
against). Overload: :meth:`DynamicBatcher.embed` raises :class:`QueueFull` at once when the queued tokens would
exceed ``max_queue_tokens`` (a request is always admitted into an empty queue, so one large request is never
refused forever).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DynamicBatcher", "QueueFull", "NotAccepting", "BatchStats"]


class QueueFull(Exception):
    """The queue holds too many tokens; retry after ``retry_after`` seconds."""

    def __init__(self, queued_tokens: int, request_tokens: int, limit: int, retry_after: int):
        super().__init__(
            f"the server is busy: {queued_tokens} tokens are queued and this request adds {request_tokens}, "
            f"over the queue limit of {limit} tokens; retry after {retry_after} s"
        )
        self.retry_after = retry_after


class NotAccepting(Exception):
    """The batcher is stopping (or was never started): no new requests."""


@dataclass
class BatchStats:
    """What one forward ran: inputs, tokens, seconds."""

    inputs: int
    tokens: int
    seconds: float


@dataclass
class _Job:
    """One request: its rows fill ``result`` (n, dim) as batches finish; ``future`` resolves with it."""

    future: asyncio.Future
    size: int
    remaining: int
    result: np.ndarray | None = None


@dataclass
class _Entry:
    job: _Job
    row: int
    text: str
    tokens: int
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Queue + single model worker (module docstring).

    ``embed(texts) -> (n, dim) float32 array`` is called from one worker thread only, never concurrently.
    ``on_batch(BatchStats)`` (optional) is called on the event loop after each forward.
    Use: ``await start()`` inside the running loop, ``await embed(texts, token_counts)`` per request,
    ``await stop()`` to finish what is queued and end the worker.
    """

    def __init__(
        self,
        embed: Callable[[list[str]], np.ndarray],
        *,
        max_batch_tokens: int,
        max_queue_tokens: int,
        max_wait_s: float = 0.005,
        batching: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        if max_batch_tokens < 1 or max_queue_tokens < 1 or max_wait_s < 0:
            raise ValueError(
                f"need max_batch_tokens >= 1, max_queue_tokens >= 1, max_wait_s >= 0; got {max_batch_tokens}, "
                f"{max_queue_tokens}, {max_wait_s}"
            )
        self._embed = embed
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_queue_tokens = int(max_queue_tokens)
        self.max_wait_s = float(max_wait_s)
        self.batching = bool(batching)
        self._on_batch = on_batch
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued_tokens = 0
        self._tokens_per_s = 0.0  # running estimate, for Retry-After
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopping = False

    # ------------------------------------------------------------------ state
    @property
    def queued_inputs(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bellm-model"
        )
        self._stopping = False
        self._worker = asyncio.create_task(self._run(), name="bellm-batcher")

    async def stop(self) -> None:
        """Finish every queued input, then end the worker and its thread."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests
    async def embed(self, texts: Sequence[str], token_counts: Sequence[int]) -> np.ndarray:
        """Queue one request's inputs; returns their ``(n, dim)`` rows in order.

        Raises :class:`QueueFull` at once when admitting them would exceed ``max_queue_tokens``, and
        :class:`NotAccepting` when the batcher is stopping or not started; an exception of ``embed`` is
        raised here for every request in that forward.
        """
        if not self.running or self._stopping:
            raise NotAccepting("the server is shutting down; no new requests are taken")
        if len(texts) != len(token_counts) or not texts:
            raise ValueError(f"need one token count per text and at least one text, got {len(texts)} texts")
        n_tokens = int(sum(token_counts))
        if self._queue and self._queued_tokens + n_tokens > self.max_queue_tokens:
            raise QueueFull(self._queued_tokens, n_tokens, self.max_queue_tokens, self.retry_after())
        job = _Job(future=asyncio.get_running_loop().create_future(), size=len(texts), remaining=len(texts))
        now = time.monotonic()
        for row, (text, n) in enumerate(zip(texts, token_counts)):
            self._queue.append(_Entry(job, row, text, int(n), now))
        self._queued_tokens += n_tokens
        self._wakeup.set()
        return await job.future

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1), from the measured token rate."""
        if self._tokens_per_s <= 0:
            return 1
        return max(1, math.ceil(self._queued_tokens / self._tokens_per_s))

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[_Entry]:
        """Pop the next batch: queued inputs in order up to the token budget (at least one); without batching,
        only inputs of the first request. Inputs of cancelled requests are dropped."""
        taken: list[_Entry] = []
        tokens = 0
        first_job = None
        while self._queue:
            entry = self._queue[0]
            if entry.job.future.done():  # cancelled or failed: nothing to compute
                self._queue.popleft()
                self._queued_tokens -= entry.tokens
                continue
            if taken and (tokens + entry.tokens > self.max_batch_tokens):
                break
            if not self.batching and first_job is not None and entry.job is not first_job:
                break
            first_job = first_job or entry.job
            self._queue.popleft()
            self._queued_tokens -= entry.tokens
            taken.append(entry)
            tokens += entry.tokens
        return taken

    async def _wait_for_more(self) -> None:
        """With batching on, wait until the budget is full or the oldest input has waited ``max_wait_s``."""
        loop_time = time.monotonic
        deadline = self._queue[0].arrived + self.max_wait_s
        while self._queued_tokens < self.max_batch_tokens and not self._stopping:
            delay = deadline - loop_time()
            if delay <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except asyncio.TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.batching and self.max_wait_s > 0:
                await self._wait_for_more()
            batch = self._take()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                emb = await loop.run_in_executor(self._executor, self._embed, [e.text for e in batch])
            except Exception as err:  # noqa: BLE001 - handed to each waiting request, the worker goes on
                for entry in batch:
                    if not entry.job.future.done():
                        entry.job.future.set_exception(err)
                continue
            seconds = time.perf_counter() - t0
            stats = BatchStats(len(batch), sum(e.tokens for e in batch), seconds)
            if seconds > 0:
                rate = stats.tokens / seconds
                self._tokens_per_s = (
                    rate if self._tokens_per_s == 0 else 0.8 * self._tokens_per_s + 0.2 * rate
                )
            self._deliver(batch, np.asarray(emb, dtype=np.float32))
            if self._on_batch is not None:
                self._on_batch(stats)

    @staticmethod
    def _deliver(batch: list[_Entry], emb: np.ndarray) -> None:
        for entry, row in zip(batch, emb):
            job = entry.job
            if job.future.done():
                continue
            if job.result is None:
                job.result = np.empty((job.size, row.shape[0]), dtype=np.float32)
            job.result[entry.row] = row
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.result)
