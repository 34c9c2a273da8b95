"""``bellm.server``: an OpenAI-compatible embeddings server (``bellm serve``) with dynamic token-budget batching.

- :func:`build_app` (``app``): the FastAPI application for a loaded :class:`bellm.Encoder`;
- :class:`ServerConfig` (``config``): limits and switches;
- :class:`DynamicBatcher` (``batcher``): concurrent requests -> one packed forward;
- :func:`serve` (``run``): run it under uvicorn (``bellm serve`` is :mod:`bellm.cli.serve`).

Needs the ``serve`` extra (``pip install "bellm[serve]"``: fastapi, uvicorn, prometheus-client). Names are
imported lazily, so ``import bellm.server`` costs nothing until one is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_app": "bellm.server.app",
    "serve": "bellm.server.run",
    "ServerConfig": "bellm.server.config",
    "DynamicBatcher": "bellm.server.batcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bellm.server' has no attribute {name!r}")
