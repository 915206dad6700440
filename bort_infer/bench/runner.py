"""Timing method: warm-up, then interleaved repeats (A B C A B C …) so machine drift hits every
(model, backend) pair alike; median and inter-quartile range per cell."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Cell:
    model: str
    backend: str
    batch: int
    seq_len: int
    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def iqr_ms(self) -> float:
        q1, q3 = np.percentile(self.times_ms, [25, 75])
        return float(q3 - q1)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("times_ms")
        d.update(median_ms=round(self.median_ms, 4), iqr_ms=round(self.iqr_ms, 4), repeats=len(self.times_ms))
        return d


def exact_length_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of exactly `seq` tokens per row (no padding), avoiding the low special-token ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, size=(batch, seq), dtype=np.int64)
    return ids, np.ones((batch, seq), dtype=np.int64)


def measure_interleaved(runs: dict[tuple[str, str], Callable[[], object]], batch: int, seq: int,
                        repeats: int, warmup: int = 2, budget_s: float | None = None) -> list[Cell]:
    """Time every run `repeats` times in rotation. With `budget_s`, repeats shrink (to no fewer than 3)
    so the rotation fits the budget, estimated from the warm-up."""
    cells = {key: Cell(key[0], key[1], batch, seq) for key in runs}
    per_round = 0.0
    for fn in runs.values():
        for i in range(warmup):
            t0 = time.perf_counter()
            fn()
            if i == warmup - 1:
                per_round += time.perf_counter() - t0
    if budget_s is not None and per_round > 0:
        repeats = max(3, min(repeats, int(budget_s / per_round)))
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            cells[key].times_ms.append((time.perf_counter() - t0) * 1e3)
    return list(cells.values())
