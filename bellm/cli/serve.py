"""``bellm serve``: an OpenAI-compatible ``/v1/embeddings`` server for one model (:mod:`bellm.server`).

Everything heavy (torch, transformers, fastapi, uvicorn) is imported inside :func:`run`. Settings are checked
before the model loads: a bad value fails in a second with one line naming it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from bellm.cli._help import MODEL_HELP, add_encoder_arguments
from bellm.server.config import DEFAULT_MAX_INPUTS, DEFAULT_MAX_REQUEST_BYTES, ServerConfig
from bellm.server.run import DEFAULT_HOST, DEFAULT_PORT

API_KEY_ENV = "BELLM_API_KEY"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``bellm serve``."""
    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help=MODEL_HELP)
    source.add_argument("--gguf", default=None, help="a .gguf model file")
    add_encoder_arguments(model)
    model.add_argument("--max-length", type=int, default=None, help="tokens per input, prompt included")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    model.add_argument(
        "--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    model.add_argument(
        "--served-model-name",
        default=None,
        help="the model name in responses and /v1/models (default: the model file or directory name)",
    )

    net = parser.add_argument_group("server")
    net.add_argument(
        "--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST}: this machine only)"
    )
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    net.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (default: ${API_KEY_ENV})",
    )
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    limits = parser.add_argument_group("limits and batching")
    limits.add_argument("--max-inputs", type=int, default=DEFAULT_MAX_INPUTS, help="items per request")
    limits.add_argument(
        "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, help="body size (413 above)"
    )
    limits.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="tokens per packed forward (default 4096 CPU, 16384 CUDA)",
    )
    limits.add_argument(
        "--max-queue-tokens",
        type=int,
        default=None,
        help="queued tokens past which requests get 429 (default 16 batches)",
    )
    limits.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="wait for more inputs to fill a batch (ms)"
    )
    limits.add_argument(
        "--no-batching", action="store_true", help="one request per forward (a baseline only)"
    )
    limits.add_argument(
        "--no-truncate",
        action="store_true",
        help="refuse inputs over max-length with 400 instead of truncating",
    )
    limits.add_argument(
        "--no-normalize", action="store_true", help="return raw, not L2-normalised, embeddings"
    )


def _model_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return args.served_model_name
    if args.gguf:
        return Path(args.gguf).stem
    if args.model:
        path = Path(args.model)
        return path.stem if path.suffix == ".gguf" else path.resolve().name
    return DEFAULT_MODEL_NAME


def _missing_extra() -> list[str]:
    return [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]


def run(args: argparse.Namespace) -> int:
    """Check the settings, load the model, serve until SIGINT / SIGTERM; 2 with one error line on bad input."""
    missing = _missing_extra()
    if missing:
        print(
            f"bellm serve: error: {', '.join(missing)} not installed; install the extra: pip install 'bellm[serve]'",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.port <= 65535:
        print(f"bellm serve: error: --port {args.port} is not a port; use 0..65535", file=sys.stderr)
        return 2
    try:
        config = ServerConfig(
            model_name=_model_name(args),
            max_inputs=args.max_inputs,
            max_request_bytes=args.max_request_bytes,
            max_batch_tokens=args.max_batch_tokens,
            max_queue_tokens=args.max_queue_tokens,
            max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            truncate=not args.no_truncate,
            normalize=not args.no_normalize,
            api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None,
        )
    except ValueError as err:
        print(f"bellm serve: error: {err}", file=sys.stderr)
        return 2
    from bellm.encoder import Encoder
    from bellm.server.run import serve

    print(f"bellm serve: loading {config.model_name} ...", file=sys.stderr, flush=True)
    try:
        encoder = Encoder.from_pretrained(
            args.gguf or args.model,
            adapter=args.adapter,
            from_layer=args.from_layer,
            pooling=args.pooling,
            prompt=args.prompt,
            max_length=args.max_length,
            dtype=args.dtype,
            device=args.device,
        )
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"bellm serve: error: {err}", file=sys.stderr)
        return 2
    serve(encoder, host=args.host, port=args.port, config=config, log_level=args.log_level)
    return 0
