"""What a reduced-precision backend gives up: its output on the fidelity texts against fp32's.

The texts are the held-out half of the built-in text set (the evaluation texts the int8 export's gate is
measured on; the calibration half is what int8 exports, ours and NNCF's, calibrate on). The reference is
the plain fp32 export run by onnxruntime, which the exporter checks against PyTorch on every token
(cosine >= 0.9999, |diff| <= 1e-3). Each text's vector is the mean of its token states; the figures are
the cosine of each text's vector with the reference's (min and mean over the texts) and the smallest
cosine of any single token's state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCH = 16
MAX_TOKENS = 128


def texts() -> list[str]:
    """The fidelity texts: the built-in set's evaluation half (never used for calibration)."""
    from ..export.quantize import builtin_texts

    return builtin_texts()[1]


@dataclass
class Batches:
    """The fidelity texts tokenized, sorted by length and right-padded in batches of BATCH: what every
    backend runs (the same token ids for all)."""

    ids: list[np.ndarray]
    masks: list[np.ndarray]

    @classmethod
    def tokenize(cls, tokenizer_file: str | Path, text_list: list[str], pad_id: int) -> Batches:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_TOKENS)
        rows = sorted((e.ids for e in tokenizer.encode_batch(text_list)), key=len)
        ids, masks = [], []
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            width = max(len(r) for r in chunk)
            batch = np.full((len(chunk), width), pad_id, dtype=np.int64)
            mask = np.zeros_like(batch)
            for i, r in enumerate(chunk):
                batch[i, :len(r)], mask[i, :len(r)] = r, 1
            ids.append(batch)
            masks.append(mask)
        return cls(ids, masks)

    def save(self, path: Path, states: list[np.ndarray]) -> None:
        """The batches and, per batch, the reference's token states."""
        arrays = {}
        for k, (i, m, s) in enumerate(zip(self.ids, self.masks, states)):
            arrays.update({f"ids{k}": i, f"mask{k}": m, f"states{k}": s.astype(np.float32)})
        np.savez(path, **arrays)

    @staticmethod
    def load(path: Path) -> tuple[Batches, list[np.ndarray]]:
        with np.load(path) as data:
            n = sum(1 for k in data.files if k.startswith("ids"))
            return (Batches([data[f"ids{k}"] for k in range(n)], [data[f"mask{k}"] for k in range(n)]),
                    [data[f"states{k}"] for k in range(n)])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def _mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (states.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)


def compare(states_of, batches: Batches, reference: list[np.ndarray]) -> dict:
    """Run `states_of(ids, mask) -> [B, S, hidden]` on every batch and compare with `reference`."""
    text_cos, token_cos = [], []
    for ids, mask, ref in zip(batches.ids, batches.masks, reference):
        got = np.asarray(states_of(ids, mask), dtype=np.float32)
        if got.shape != ref.shape:
            raise ValueError(f"output shape {got.shape} differs from the reference's {ref.shape}")
        text_cos.append(_cosines(_mean_pool(got, mask), _mean_pool(ref, mask)))
        valid = mask.astype(bool)
        token_cos.append(_cosines(got[valid], ref[valid]))
    text_cos, token_cos = np.concatenate(text_cos), np.concatenate(token_cos)
    return {"texts": int(text_cos.size), "cosine_min": float(text_cos.min()), "cosine_mean": float(text_cos.mean()),
            "token_cosine_min": float(token_cos.min())}
