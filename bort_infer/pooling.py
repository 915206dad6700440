"""Pooling of token states into one vector per text (numpy, run-time)."""
from __future__ import annotations

import numpy as np

POOLINGS = ("cls", "mean")


def check_pooling(how, *, allow_none: bool = False) -> None:
    """``how`` must be one of POOLINGS (or None, the model's default, when ``allow_none``)."""
    if how is None and allow_none:
        return
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; choose one of {', '.join(POOLINGS)}"
                         + (" (or None)" if allow_none else ""))


def pool(hidden: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """[B, S, H] token states and a [B, S] 0/1 mask → [B, H] float32 vectors."""
    check_pooling(how)
    if how == "cls":
        return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    # sentence-transformers clamps the count at 1e-9: a fully padded row gives zeros, not NaN.
    return (summed / np.maximum(m.sum(axis=1), 1e-9)).astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
