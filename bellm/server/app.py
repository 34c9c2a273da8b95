"""``build_app(encoder, config)``: the FastAPI application of ``bellm serve``.

Endpoints (OpenAI's shapes where OpenAI has one):

- ``POST /v1/embeddings``: validate (:mod:`bellm.server.schemas`), tokenize once to count tokens and apply
  the length rule, queue the inputs on the :class:`~bellm.server.batcher.DynamicBatcher`, answer with the rows.
- ``GET /v1/models``, ``GET /health`` (200 once the model is loaded and warmed up, 503 before and while
  stopping), ``GET /info`` (model, settings, limits, versions), ``GET /metrics`` (Prometheus text).

Every refusal is an OpenAI-shaped JSON error (:mod:`bellm.server.errors`); an unexpected exception becomes a
logged 500 with the same shape, never a dropped connection. With ``config.api_key`` every endpoint but
``/health`` needs ``Authorization: Bearer <key>`` (constant-time comparison). One log line per request
(``bellm.server`` logger): id, method, path, status, inputs, tokens, truncated, ms.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from bellm.server.batcher import DynamicBatcher, NotAccepting, QueueFull
from bellm.server.config import QUEUE_BATCHES, ServerConfig
from bellm.server.errors import APIError, error_body, error_response
from bellm.server.metrics import CONTENT_TYPE_LATEST, Metrics
from bellm.server.middleware import ROUTES, RequestMiddleware
from bellm.server.schemas import embeddings_response, parse_embeddings_request, shape_embeddings

__all__ = ["build_app", "resolve_config"]

logger = logging.getLogger("bellm.server")

TRUNCATED_HEADER = "x-bellm-truncated-inputs"
INLINE_TOKENIZE_CHARS = 2048  # requests up to this many characters are tokenized on the event loop


def resolve_config(encoder, config: ServerConfig | None) -> ServerConfig:
    """A copy of ``config`` with the batch and queue token budgets filled in for this encoder."""
    from dataclasses import replace

    from bellm.encoder import default_max_tokens_per_batch

    config = config or ServerConfig()
    batch = (
        config.max_batch_tokens
        or encoder.max_tokens_per_batch
        or default_max_tokens_per_batch(encoder.device)
    )
    return replace(
        config, max_batch_tokens=batch, max_queue_tokens=config.max_queue_tokens or QUEUE_BATCHES * batch
    )


def _count_tokens(encoder, texts: list[str], truncate: bool) -> tuple[list[int], int]:
    """Tokens per input as the model will run them (prompt included, after truncation) and how many were
    truncated; APIError 400 naming the first over-long input when ``truncate`` is False."""
    try:
        ids, _, num_truncated = encoder.tokenize(texts)
    except ValueError as err:  # the prompt alone is over max_length: a server setting, named as such
        raise APIError(400, f"cannot embed with this server's settings: {err}", param="input") from err
    counts = [len(t) for t in ids]
    if num_truncated and not truncate:
        head, tail = encoder.prompt.split("{text}")
        for i, n in enumerate(counts):
            if n < encoder.max_length:
                continue
            full = len(encoder.tokenizer(head + texts[i] + tail, add_special_tokens=True)["input_ids"])
            if full > encoder.max_length:
                raise APIError(
                    400,
                    f"'input[{i}]' is {full} tokens with the prompt, over max_length={encoder.max_length}; "
                    "shorten it (this server refuses over-long inputs instead of truncating them)",
                    param="input",
                    code="input_too_long",
                )
    return counts, num_truncated


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_large = APIError(
        413,
        f"the request body is over this server's limit of {limit} bytes; split the request",
        code="request_too_large",
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _decode_json(body: bytes):
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err}); send a JSON object") from err


def _info(encoder, config: ServerConfig) -> dict:
    import fastapi
    import torch
    import transformers
    import uvicorn

    import bellm

    param = next(iter(encoder.model.parameters()), None)
    return {
        "model": config.model_name,
        "dim": encoder.dim,
        "from_layer": encoder.from_layer,
        "num_layers": encoder.num_layers,
        "pooling": encoder.pooling,
        "prompt": encoder.prompt,
        "max_length": encoder.max_length,
        "over_long_inputs": "truncate (end of the text dropped)" if config.truncate else "refuse (400)",
        "normalize": config.normalize,
        "device": str(encoder.device),
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
        "limits": config.public_limits(),
        "versions": {
            "bellm": bellm.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "python": platform.python_version(),
        },
    }


def build_app(encoder, config: ServerConfig | None = None) -> FastAPI:
    """The server for ``encoder`` (a :class:`bellm.Encoder`, already loaded); see the module docstring.

    The model is warmed up and the batcher started in the app's lifespan, so ``/health`` answers 200 only
    when the first request will not pay for start-up. Stopping (SIGTERM under uvicorn) finishes the requests
    in flight before the worker ends. ``app.state`` holds ``batcher``, ``metrics``, ``config`` and ``ready``.
    """
    config = resolve_config(encoder, config)
    metrics = Metrics()

    def embed(texts: list[str]):
        return encoder.encode(
            texts,
            normalize_embeddings=config.normalize,
            max_tokens_per_batch=config.max_batch_tokens,
            show_progress_bar=False,
        )

    batcher = DynamicBatcher(
        embed,
        max_batch_tokens=config.max_batch_tokens,
        max_queue_tokens=config.max_queue_tokens,
        max_wait_s=config.max_wait_ms / 1000,
        batching=config.batching,
        on_batch=metrics.observe_batch,
    )
    metrics.watch_queue(batcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(embed, ["warm-up"])
        await batcher.start()
        app.state.ready = True
        logger.info(_ready_line(encoder, config))
        yield
        app.state.ready = False
        await batcher.stop()
        logger.info("stopped: every accepted request was answered")

    app = FastAPI(title="bellm embeddings", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ready = False
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.config = config

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {err.detail}; the endpoints are {', '.join(ROUTES)}"
        return JSONResponse(error_body(err.status_code, message), status_code=err.status_code)

    app.add_middleware(RequestMiddleware, api_key=config.api_key, metrics=metrics)
    _add_embeddings_route(app, encoder, config, batcher, metrics)
    _add_info_routes(app, encoder, config, metrics)
    return app


def _ready_line(encoder, config: ServerConfig) -> str:
    return (
        f"ready: model={config.model_name} dim={encoder.dim} from_layer={encoder.from_layer}/{encoder.num_layers} "
        f"pooling={encoder.pooling} max_length={encoder.max_length} max_batch_tokens={config.max_batch_tokens} "
        f"batching={'on' if config.batching else 'off'} max_wait_ms={config.max_wait_ms:g} "
        f"max_queue_tokens={config.max_queue_tokens} device={encoder.device} "
        f"auth={'on' if config.api_key else 'off'}"
    )


def _add_embeddings_route(app: FastAPI, encoder, config: ServerConfig, batcher, metrics) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        start = time.perf_counter()
        body = _decode_json(await _read_body(request, config.max_request_bytes))
        req = parse_embeddings_request(body, max_inputs=config.max_inputs, dim=encoder.dim)
        if sum(map(len, req.inputs)) <= INLINE_TOKENIZE_CHARS:  # a thread hop costs more than this
            counts, truncated = _count_tokens(encoder, req.inputs, config.truncate)
        else:
            counts, truncated = await run_in_threadpool(_count_tokens, encoder, req.inputs, config.truncate)
        request.state.inputs, request.state.tokens = len(counts), sum(counts)
        request.state.truncated = truncated
        metrics.in_flight.inc()
        try:
            emb = await batcher.embed(req.inputs, counts)
        except QueueFull as err:
            raise APIError(
                429, str(err), code="queue_full", headers={"Retry-After": str(err.retry_after)}
            ) from err
        except NotAccepting as err:
            raise APIError(503, str(err), code="shutting_down") from err
        finally:
            metrics.in_flight.dec()
        emb = shape_embeddings(emb, req.dimensions, config.normalize)
        payload = embeddings_response(
            emb, encoding_format=req.encoding_format, model=config.model_name, tokens=sum(counts)
        )
        metrics.latency.observe(time.perf_counter() - start)
        headers = {TRUNCATED_HEADER: str(truncated)} if truncated else None
        return JSONResponse(payload, headers=headers)


def _add_info_routes(app: FastAPI, encoder, config: ServerConfig, metrics) -> None:
    created = int(time.time())

    @app.get("/v1/models")
    async def models():
        card = {"id": config.model_name, "object": "model", "created": created, "owned_by": "bellm"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        if not app.state.ready:
            return JSONResponse({"status": "starting or stopping"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return _info(encoder, config)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
