"""bort-infer: fast, trustworthy CPU inference for Bort and BERT-family encoders on onnxruntime.

Run-time surface only: importing this package never imports torch, transformers or optimum.
"""
from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path  # noqa: E402

from .heads import TaskMismatchError  # noqa: E402
from .model_dir import ModelDirectoryError  # noqa: E402
from .session import Session  # noqa: E402

OPS_LIBRARY = "libbort_infer_ops.so"


def custom_op_library() -> str:
    """Path of libbort_infer_ops.so, the onnxruntime custom-op library (domain ai.bort_infer) to pass to
    ``onnxruntime.SessionOptions.register_custom_ops_library``, or to any onnxruntime's
    ``RegisterCustomOpsLibrary`` from C, C++, C#, Java or Rust: it needs no Python."""
    path = Path(__file__).with_name(OPS_LIBRARY)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the kernels are not built "
                                "(in a checkout: python setup.py build_ext --inplace)")
    return str(path)


def include_dir() -> str:
    """Directory holding bort_infer_ops.h, the C header of the custom-op library."""
    return str(Path(__file__).with_name("include"))


__all__ = ["Session", "ModelDirectoryError", "TaskMismatchError", "custom_op_library", "include_dir", "__version__"]
