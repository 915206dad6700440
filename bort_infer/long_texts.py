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


# Token classification (Session.tag / token_logits): a text over the limit runs as overlapping windows of text
# tokens, and every token takes its logits from the window where it has the most context on both sides, so
# each token gets exactly one prediction, computed as far from a window's cut as the windows allow.

def token_windows(count: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) spans of at most ``size`` text tokens covering 0..count, each sharing at least ``stride``
    tokens with the one before (the last one ends at ``count`` and is full-size when the text allows)."""
    if not 0 <= stride < size:
        raise ValueError(f"stride {stride} must be in [0, {size}) (the window of {size} text tokens must advance)")
    if count <= size:
        return [(0, count)]
    spans = []
    start = 0
    while start + size < count:
        spans.append((start, start + size))
        start += size - stride
    spans.append((count - size, count))
    return spans


def window_owners(count: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each of ``count`` text tokens, the index of the span that reads it with the most context: the
    largest distance to the nearer end of the span (ties: the earlier span)."""
    owner = np.full(count, -1, dtype=np.int64)
    best = np.full(count, -1, dtype=np.int64)
    for k, (start, stop) in enumerate(spans):
        t = np.arange(start, stop)
        margin = np.minimum(t - start, stop - 1 - t)
        better = margin > best[start:stop]
        owner[start:stop][better] = k
        best[start:stop][better] = margin[better]
    if (owner < 0).any():
        raise ValueError(f"the spans do not cover token {int(np.argmax(owner < 0))} of {count}")
    return owner
