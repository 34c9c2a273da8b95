"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Every refusal the server makes (bad input, missing key, full queue, unknown route) goes through
:class:`APIError`, so a client always gets a JSON body that names the offending value and the fix.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["APIError", "error_body", "error_response"]

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An HTTP error with OpenAI's error body.

    ``param`` names the request field at fault (``"input"``, ``"dimensions"``, ...) or is None; ``code`` is a
    short machine-readable reason (``"invalid_api_key"``, ``"queue_full"``, ...); ``headers`` are added to the
    response (``Retry-After`` for 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}``; ``type`` follows from the status."""
    kind = _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(err.status, err.message, err.param, err.code), status_code=err.status, headers=err.headers
    )
