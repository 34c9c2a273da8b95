"""Prometheus metrics of one server (its own registry, so several apps in one process never clash).

- ``bellm_requests_total{endpoint, status}``: every response by route and HTTP status;
- ``bellm_queue_inputs`` / ``bellm_queue_tokens``: inputs and tokens waiting for the model (read live);
- ``bellm_requests_in_flight``: embedding requests accepted and not yet answered;
- ``bellm_batch_tokens`` / ``bellm_batch_sentences``: size of each packed forward;
- ``bellm_batch_seconds``: time of each forward; ``bellm_request_latency_seconds``: ``/v1/embeddings``
  end to end (queueing included);
- ``bellm_embedded_inputs_total`` / ``bellm_embedded_tokens_total``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_POW2 = tuple(float(2**i) for i in range(0, 17))  # 1 .. 65536
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The server's metrics (module docstring); :meth:`render` gives the text exposition format."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bellm_requests", "HTTP responses by route and status", ["endpoint", "status"], registry=r
        )
        self.queue_inputs = Gauge("bellm_queue_inputs", "inputs waiting for the model", registry=r)
        self.queue_tokens = Gauge("bellm_queue_tokens", "tokens waiting for the model", registry=r)
        self.in_flight = Gauge("bellm_requests_in_flight", "embedding requests not yet answered", registry=r)
        self.batch_tokens = Histogram(
            "bellm_batch_tokens", "tokens in one packed forward", buckets=_POW2, registry=r
        )
        self.batch_sentences = Histogram(
            "bellm_batch_sentences", "inputs in one packed forward", buckets=_POW2, registry=r
        )
        self.batch_seconds = Histogram(
            "bellm_batch_seconds", "seconds of one packed forward", buckets=_SECONDS, registry=r
        )
        self.latency = Histogram(
            "bellm_request_latency_seconds",
            "/v1/embeddings latency, queueing included",
            buckets=_SECONDS,
            registry=r,
        )
        self.inputs = Counter("bellm_embedded_inputs", "inputs embedded", registry=r)
        self.tokens = Counter("bellm_embedded_tokens", "tokens embedded (prompt included)", registry=r)

    def watch_queue(self, batcher) -> None:
        """Read the queue gauges from ``batcher`` at scrape time."""
        self.queue_inputs.set_function(lambda: batcher.queued_inputs)
        self.queue_tokens.set_function(lambda: batcher.queued_tokens)

    def observe_batch(self, stats) -> None:
        self.batch_tokens.observe(stats.tokens)
        self.batch_sentences.observe(stats.inputs)
        self.batch_seconds.observe(stats.seconds)
        self.inputs.inc(stats.inputs)
        self.tokens.inc(stats.tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
