"""Timing method: a warm-up call per cell, then interleaved rounds so that machine drift and background
load hit every (model, backend) pair alike; medians and spreads per cell, and per-round cross-model
ratios.

A round gives every (model, backend) pair a turn, in an order rotated by one each round (no pair always
runs first, or right after the same neighbour); the caller lists the two models of a backend next to each
other, so a backend's Bort and BERT-large turns are seconds apart and their ratio, taken round by round,
sees the same load. A turn: a short pause first, because an onnxruntime session's pool threads keep
spinning (~25 ms of a core, measured) after its call and would otherwise take a core from the next pair;
then, for calls under LEAD_IN_BELOW_S, one untimed call so that the timed ones see the backend's threads
awake, as in steady use; then up to TURN_S worth of timed calls (at least one).

Rounds are time-bounded: the warm-up times say how long a round takes, and a shape gets as many rounds as
fit its budget, between `min_rounds` and `repeats`. A cell's figures are the median of all its timed
calls, their inter-quartile range and minimum, and each round's median (for the per-round ratios)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Cell:
    model: str
    backend: str
    batch: int
    seq_len: int
    times_ms: list[float] = field(default_factory=list)
    round_ms: list[float] = field(default_factory=list)  # the median of each round's timed calls
    warmup_ms: float | None = None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def iqr_ms(self) -> float:
        q1, q3 = np.percentile(self.times_ms, [25, 75])
        return float(q3 - q1)

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    def to_json(self) -> dict:
        return {"model": self.model, "backend": self.backend, "batch": self.batch, "seq_len": self.seq_len,
                "median_ms": round(self.median_ms, 4), "iqr_ms": round(self.iqr_ms, 4), "min_ms": round(self.min_ms, 4),
                "repeats": len(self.times_ms), "rounds": len(self.round_ms),
                "round_ms": [round(t, 4) for t in self.round_ms],
                "warmup_ms": None if self.warmup_ms is None else round(self.warmup_ms, 4)}


def exact_length_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of exactly `seq` tokens per row (no padding), avoiding the low special-token ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, size=(batch, seq), dtype=np.int64)
    return ids, np.ones((batch, seq), dtype=np.int64)


SETTLE_S = 0.05
LEAD_IN_BELOW_S = 0.1
TURN_S = 0.1
MAX_CALLS_PER_TURN = 10


def rotated(keys: list, r: int) -> list:
    """Round r's order: the keys rotated left by r."""
    k = r % len(keys) if keys else 0
    return keys[k:] + keys[:k]


def plan_rounds(call_s: dict, repeats: int, min_rounds: int, budget_s: float | None) -> tuple[int, dict, dict]:
    """(rounds, timed calls per turn, lead-in per turn) for cells whose warm-up call took `call_s`."""
    timed_calls = {key: max(1, min(MAX_CALLS_PER_TURN, int(TURN_S / max(t, 1e-9)))) for key, t in call_s.items()}
    lead_in = {key: t < LEAD_IN_BELOW_S for key, t in call_s.items()}
    per_round = sum(SETTLE_S + (timed_calls[k] + lead_in[k]) * t for k, t in call_s.items())
    rounds = repeats
    if budget_s is not None and per_round > 0:
        rounds = max(min_rounds, min(repeats, int(budget_s / per_round)))
    return rounds, timed_calls, lead_in


def measure_interleaved(runs: dict[tuple[str, str], Callable[[], object]], batch: int, seq: int,
                        repeats: int, warmup: int = 1, budget_s: float | None = None,
                        min_rounds: int = 3) -> list[Cell]:
    """Time every run (keyed (model, backend)) in interleaved rounds (see the module docstring)."""
    keys = list(runs)
    cells = {key: Cell(key[0], key[1], batch, seq) for key in keys}
    call_s: dict[tuple[str, str], float] = {}
    for key in keys:
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            runs[key]()
            call_s[key] = time.perf_counter() - t0
        cells[key].warmup_ms = call_s[key] * 1e3
    rounds, timed_calls, lead_in = plan_rounds(call_s, repeats, min(min_rounds, repeats), budget_s)
    for r in range(rounds):
        for key in rotated(keys, r):
            fn = runs[key]
            time.sleep(SETTLE_S)
            if lead_in[key]:
                fn()
            turn = []
            for _ in range(timed_calls[key]):
                t0 = time.perf_counter()
                fn()
                turn.append((time.perf_counter() - t0) * 1e3)
            cells[key].times_ms += turn
            cells[key].round_ms.append(float(np.median(turn)))
    return [cells[key] for key in keys]
