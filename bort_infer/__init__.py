"""bort-infer: fast, trustworthy CPU inference for Bort and BERT-family encoders on onnxruntime.

Run-time surface only: importing this package never imports torch, transformers or optimum.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .model_dir import ModelDirectoryError  # noqa: E402
from .session import Session  # noqa: E402


def custom_op_library() -> str:
    """Path of the shared object to pass to ``onnxruntime.SessionOptions.register_custom_ops_library``."""
    from . import _C

    return _C.__file__


__all__ = ["Session", "ModelDirectoryError", "custom_op_library", "__version__"]
