"""`bort-infer serve`: an HTTP embeddings server (OpenAI's /v1/embeddings and TEI's /embed) with dynamic
batching across requests, on Starlette and uvicorn (``pip install 'bort-infer[serve]'``). Run time only.

ServeOptions needs nothing beyond the core package (the CLI reads its defaults); create_app and serve
import the web stack when first used.
"""
from __future__ import annotations

from .options import ServeOptions

__all__ = ["ServeOptions", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
