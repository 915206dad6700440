"""Long texts as overlapping windows (encode(..., long_texts="chunk")), numpy only.

The tokenizer, truncating at the model's limit with a stride, already cuts a long text into windows: the
first max_length tokens, then `overflowing` encodings of the same size (each with its own special tokens)
sharing `stride` text tokens with the one before. Every window is encoded like any other text (in the same
packed batches), and a text's vector is the mean of its windows' vectors weighted by their token counts, so
every token counts about as much as in one long pass (tokens in an overlap count twice) and a 10k-token
document gets one vector that reads all of it.
"""
from __future__ import annotations

import numpy as np


def windows(encodings: list) -> tuple[list, np.ndarray]:
    """Every text's windows, flattened in order, and the index of the text each window belongs to."""
    flat, owners = [], []
    for i, e in enumerate(encodings):
        flat.append(e)
        owners.append(i)
        for w in e.overflowing:
            flat.append(w)
            owners.append(i)
    return flat, np.asarray(owners, dtype=np.int64)


def pool_windows(vectors: np.ndarray, windows_: list, owners: np.ndarray, count: int) -> np.ndarray:
    """[count, hidden]: each text's windows' vectors averaged, weighted by the windows' token counts. A text of
    one window keeps its vector bit for bit."""
    weights = np.fromiter((len(w.ids) for w in windows_), dtype=np.float64, count=len(windows_))
    first = np.searchsorted(owners, np.arange(count))
    out = vectors[first].astype(np.float32, copy=True)
    per_text = np.bincount(owners, minlength=count)
    for i in np.flatnonzero(per_text > 1):
        rows = slice(first[i], first[i] + per_text[i])
        w = weights[rows]
        out[i] = (vectors[rows].astype(np.float64) * w[:, None]).sum(axis=0) / w.sum()
    return out
