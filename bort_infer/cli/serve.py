"""`bort-infer serve MODEL`: the arguments, turned into bort_infer.serve.ServeOptions (which checks them)."""
from __future__ import annotations

import argparse

from ..batching import DEFAULT_PACKED_TOKEN_BUDGET
from .encode import _positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..serve.options import (
        API_KEY_ENV,
        DEFAULT_DRAIN_SECONDS,
        DEFAULT_HOST,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_INPUT_TEXTS,
        DEFAULT_MAX_QUEUE,
        DEFAULT_PORT,
    )

    p.add_argument("model", help="exported bort-infer model directory")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port")
    p.add_argument("--threads", type=_positive_int, default=None, help="onnxruntime threads (default: one per core)")
    p.add_argument("--max-batch-tokens", type=_positive_int, default=DEFAULT_PACKED_TOKEN_BUDGET,
                   help=f"real tokens per model call, filled from concurrent requests (default "
                        f"{DEFAULT_PACKED_TOKEN_BUDGET})")
    p.add_argument("--max-queue", type=_positive_int, default=DEFAULT_MAX_QUEUE,
                   help=f"texts accepted and not yet answered; past it requests get 429 with Retry-After "
                        f"(default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--max-input-texts", type=_positive_int, default=DEFAULT_MAX_INPUT_TEXTS,
                   help=f"texts per request (default {DEFAULT_MAX_INPUT_TEXTS})")
    p.add_argument("--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"request body size; past it 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
                        f"${API_KEY_ENV} if set, which keeps the key out of the process list)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: MODEL's directory name)")
    p.add_argument("--drain-seconds", type=float, default=DEFAULT_DRAIN_SECONDS,
                   help=f"on SIGTERM, how long to wait for requests in flight (default {DEFAULT_DRAIN_SECONDS:g})")


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import ServeOptions, serve
    except ImportError as exc:
        raise ImportError(f"{exc}; the server needs its extra: pip install 'bort-infer[serve]'") from None
    options = ServeOptions(model=args.model, host=args.host, port=args.port, threads=args.threads,
                           max_batch_tokens=args.max_batch_tokens, max_queue=args.max_queue,
                           max_input_texts=args.max_input_texts, max_body_bytes=args.max_body_bytes,
                           api_key=args.api_key or ServeOptions.api_key_from_env(), model_name=args.model_name,
                           drain_seconds=args.drain_seconds)
    return serve(options)
