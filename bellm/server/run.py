"""``serve(encoder, host=..., port=...)``: run the embeddings server under uvicorn until SIGINT / SIGTERM.

uvicorn's shutdown on SIGTERM is the graceful one: stop accepting connections, let the requests in flight
finish (no time limit), then run the app's lifespan end (the batcher drains and stops).
"""

from __future__ import annotations

import logging
import sys
import warnings

from bellm.server.config import ServerConfig

__all__ = ["serve", "configure_logging"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def configure_logging(level: str = "info") -> None:
    """Send the ``bellm.server`` log (start-up line, one line per request) to stderr with timestamps."""
    logger = logging.getLogger("bellm.server")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s bellm.server %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def serve(
    encoder,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``encoder`` (a loaded :class:`bellm.Encoder`) on ``host:port`` (127.0.0.1 by default) until
    stopped; blocks. ``config`` holds the limits (:class:`ServerConfig`)."""
    import uvicorn

    from bellm.server.app import build_app

    configure_logging(log_level)
    # The encoder warns about truncated inputs; the server reports them per request (log line and header).
    warnings.filterwarnings("ignore", message=r".* were truncated", category=UserWarning)
    app = build_app(encoder, config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=None,
    )
