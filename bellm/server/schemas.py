"""The ``/v1/embeddings`` request and response, in OpenAI's shapes.

Request: ``{"input": str | [str, ...], "model": str, "encoding_format": "float" | "base64",
"dimensions": int, "user": str}``; only ``input`` is required, ``user`` and unknown fields are ignored.
Token-id arrays (OpenAI accepts them) are refused: this server embeds text with its own tokenizer and prompt.

Response: ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] | "<base64>"}],
"model": name, "usage": {"prompt_tokens": n, "total_tokens": n}}``. ``"base64"`` is the little-endian float32
bytes of the vector, as the official ``openai`` client (which asks for base64 by default) decodes it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from bellm.server.errors import APIError

__all__ = [
    "ENCODING_FORMATS",
    "EmbeddingsRequest",
    "parse_embeddings_request",
    "shape_embeddings",
    "embeddings_response",
]

ENCODING_FORMATS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated request: ``inputs`` non-empty strings; ``dimensions`` None or ``1..dim``."""

    inputs: list[str]
    model: str | None
    encoding_format: str
    dimensions: int | None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_inputs(raw, max_inputs: int) -> list[str]:
    if raw is None:
        raise APIError(400, "'input' is required: a string or a list of strings", param="input")
    if isinstance(raw, str):
        if not raw:
            raise APIError(400, "'input' is an empty string; send at least one character", param="input")
        return [raw]
    if not isinstance(raw, list):
        raise APIError(
            400,
            f"'input' must be a string or a list of strings, got {type(raw).__name__} {_short(raw)}",
            param="input",
        )
    if not raw:
        raise APIError(400, "'input' is an empty list; send at least one string", param="input")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw) or all(
        isinstance(x, list) for x in raw
    ):
        raise APIError(
            400,
            "'input' holds token ids; this server takes text only (it applies its own tokenizer and prompt): "
            "send strings",
            param="input",
            code="token_ids_not_supported",
        )
    if len(raw) > max_inputs:
        raise APIError(
            400,
            f"'input' has {len(raw)} items, more than this server's limit of {max_inputs}; split the request",
            param="input",
        )
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise APIError(
                400,
                f"'input[{i}]' is {type(item).__name__} {_short(item)}, not a string; every item must be "
                "a string",
                param="input",
            )
        if not item:
            raise APIError(
                400, f"'input[{i}]' is an empty string; send at least one character", param="input"
            )
    return list(raw)


def _check_dimensions(raw, dim: int) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise APIError(
            400, f"'dimensions' must be an integer in 1..{dim}, got {_short(raw)}", param="dimensions"
        )
    if not 1 <= raw <= dim:
        raise APIError(
            400, f"'dimensions' is {raw}; this model gives 1..{dim} dimensions", param="dimensions"
        )
    return raw


def parse_embeddings_request(body, *, max_inputs: int, dim: int) -> EmbeddingsRequest:
    """Validate a decoded JSON body; raises :class:`APIError` (400) naming the first bad field and value."""
    if not isinstance(body, dict):
        raise APIError(
            400, f"the request body must be a JSON object, got {type(body).__name__} {_short(body)}"
        )
    inputs = _check_inputs(body.get("input"), max_inputs)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"'model' must be a string, got {_short(model)}", param="model")
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise APIError(
            400,
            f"unknown 'encoding_format' {_short(encoding_format)}; use one of: {', '.join(ENCODING_FORMATS)}",
            param="encoding_format",
        )
    dimensions = _check_dimensions(body.get("dimensions"), dim)
    return EmbeddingsRequest(inputs, model, encoding_format, dimensions)


def shape_embeddings(emb: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation of ``(n, dim)`` rows to ``dimensions``, re-normalised when ``normalize``."""
    if dimensions is None or dimensions == emb.shape[1]:
        return emb
    emb = emb[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(emb, dtype=np.float32)


def embeddings_response(emb: np.ndarray, *, encoding_format: str, model: str, tokens: int) -> dict:
    """The OpenAI response body for ``(n, d)`` float32 rows in input order."""
    if encoding_format == "base64":
        little = emb.astype("<f4", copy=False)
        vectors = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        vectors = emb.tolist()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
