"""Timing method: warm-up, then interleaved rounds (A B C A B C …) so machine drift hits every (model,
backend) pair alike; median and inter-quartile range per cell.

Within a round each backend gets a turn: a short pause first, because an onnxruntime session's pool
threads keep spinning (~25 ms of a core, measured) after its call and would otherwise take a core from
the next backend; then, for calls under LEAD_IN_BELOW_S, one untimed call so that the timed ones see the
backend's threads awake, as in steady use; then up to TURN_S worth of timed calls (at least one)."""
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


SETTLE_S = 0.05
LEAD_IN_BELOW_S = 0.1
TURN_S = 0.1
MAX_CALLS_PER_TURN = 10


def measure_interleaved(runs: dict[tuple[str, str], Callable[[], object]], batch: int, seq: int,
                        repeats: int, warmup: int = 2, budget_s: float | None = None) -> list[Cell]:
    """Time every run in `repeats` interleaved rounds (see the module docstring). With `budget_s`, rounds
    shrink (to no fewer than 3) so that they fit the budget, estimated from the warm-up."""
    cells = {key: Cell(key[0], key[1], batch, seq) for key in runs}
    call_s: dict[tuple[str, str], float] = {}
    for key, fn in runs.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            call_s[key] = time.perf_counter() - t0
    timed_calls = {key: max(1, min(MAX_CALLS_PER_TURN, int(TURN_S / max(t, 1e-9)))) for key, t in call_s.items()}
    lead_in = {key: t < LEAD_IN_BELOW_S for key, t in call_s.items()}
    per_round = sum(SETTLE_S + (timed_calls[k] + lead_in[k]) * t for k, t in call_s.items())
    if budget_s is not None and per_round > 0:
        repeats = max(3, min(repeats, int(budget_s / per_round)))
    for _ in range(repeats):
        for key, fn in runs.items():
            time.sleep(SETTLE_S)
            if lead_in[key]:
                fn()
            for _ in range(timed_calls[key]):
                t0 = time.perf_counter()
                fn()
                cells[key].times_ms.append((time.perf_counter() - t0) * 1e3)
    return list(cells.values())
