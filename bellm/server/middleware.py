"""``RequestMiddleware``: what every request goes through, as plain ASGI (no extra task per request).

In order: a request id (``x-request-id`` response header, ``request.state.request_id``); the API key check
(every path but ``/health``; constant-time comparison; 401 in OpenAI's shape); the app; any exception that
escaped the app becomes a logged 500 in OpenAI's shape (never a dropped connection); then the
``bellm_requests_total`` counter and one log line: id, method, path, status, inputs, tokens, truncated, ms
(the embeddings handler fills inputs/tokens/truncated into ``request.state``).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from bellm.server.errors import error_body

__all__ = ["RequestMiddleware", "ROUTES"]

logger = logging.getLogger("bellm.server")

ROUTES = ("/v1/embeddings", "/v1/models", "/health", "/info", "/metrics")
_QUIET = ("/health", "/metrics")  # polled often: logged at DEBUG
_OPEN = ("/health",)  # answered without the API key (load balancers, orchestrators)


def _authorized(headers: Headers, key: bytes) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return hmac.compare_digest(token.strip().encode() if scheme.lower() == "bearer" else b"", key)


class RequestMiddleware:
    """ASGI middleware (module docstring). ``api_key``: None for no check; ``metrics``: a ``Metrics``."""

    def __init__(self, app, *, api_key: str | None, metrics):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, inputs=0, tokens=0, truncated=0)
        path = scope["path"]
        status = 500
        started = False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if self.key is not None and path not in _OPEN and not _authorized(Headers(scope=scope), self.key):
                message = "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
                body = error_body(401, message, code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            if started:
                raise
            body = error_body(500, "internal error; the server log has the traceback")
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            self.metrics.requests.labels(path if path in ROUTES else "other", str(status)).inc()
            logger.log(
                logging.DEBUG if path in _QUIET else logging.INFO,
                "request id=%s %s %s status=%d inputs=%d tokens=%d truncated=%d ms=%.1f",
                request_id,
                scope["method"],
                path,
                status,
                state["inputs"],
                state["tokens"],
                state["truncated"],
                (time.perf_counter() - start) * 1000,
            )
