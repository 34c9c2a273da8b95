"""``ServerConfig``: the limits and switches of one embeddings server, checked before any model work."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["ServerConfig", "DEFAULT_MAX_INPUTS", "DEFAULT_MAX_REQUEST_BYTES"]

DEFAULT_MAX_INPUTS = 2048
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
QUEUE_BATCHES = 16  # default queue limit, in batches


@dataclass
class ServerConfig:
    """Settings of :func:`bellm.server.build_app`.

    Args:
        model_name: the ``model`` the server reports in responses and ``/v1/models``.
        max_inputs: most items in one request's ``input`` list.
        max_request_bytes: largest request body; a larger one gets 413.
        max_batch_tokens: token budget of one packed forward (None: the encoder's, else 4096 on CPU / 16384 on
            CUDA).
        max_queue_tokens: queued tokens past which new requests get 429 (None: 16 batches' worth).
        max_wait_ms: how long the worker waits after the oldest queued input for more to fill a batch.
        batching: False runs one request per forward (a baseline, not for production).
        truncate: True cuts over-long inputs by the encoder's rule and reports how many (header
            ``x-bellm-truncated-inputs``); False refuses them with 400.
        normalize: L2-normalise embeddings (also after ``dimensions`` truncation).
        api_key: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <api_key>``.
    """

    model_name: str = "bellm"
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_batch_tokens: int | None = None
    max_queue_tokens: int | None = None
    max_wait_ms: float = 5.0
    batching: bool = True
    truncate: bool = True
    normalize: bool = True
    api_key: str | None = None

    def __post_init__(self):
        for name in ("max_inputs", "max_request_bytes", "max_batch_tokens", "max_queue_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; pass a non-empty key or none at all")

    def public_limits(self) -> dict:
        """The limits a client may see (``/info``): everything but the API key."""
        limits = asdict(self)
        limits.pop("api_key")
        limits.pop("model_name")
        limits["auth"] = self.api_key is not None
        return limits
