"""The int8 gate of a task head: does the int8 model decide what the fp32 model decides, on held-out inputs?

What is compared depends on what the head is for:
- classification (single-label: the best label; multi-label: each label's yes / no, logit > 0): label
  agreement, the fraction of decisions int8 and fp32 share;
- one score per input (regression, a reranking cross-encoder): Spearman rank correlation of the scores;
- tagging: entity F1 agreement, int8's entities scored against fp32's as the reference (exact type and
  character span), and the token label agreement beside it.
The export fails when the figure is under the gate (defaults: agreement >= 99.5%, Spearman >= 0.995).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model_dir import TOKEN_CLASSIFICATION

DEFAULT_MIN_AGREEMENT = 0.995
DEFAULT_MIN_SPEARMAN = 0.995


@dataclass(frozen=True)
class HeadGate:
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_spearman: float = DEFAULT_MIN_SPEARMAN

    def __post_init__(self) -> None:
        for name in ("min_agreement", "min_spearman"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value!r}")


def make_head_gate(min_agreement: float | None, min_spearman: float | None) -> HeadGate:
    return HeadGate(DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
                    DEFAULT_MIN_SPEARMAN if min_spearman is None else min_spearman)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank)."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float(np.array_equal(a, b))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(values))
    counts = np.bincount(inverse, minlength=len(values))
    return (sums / counts)[inverse]


def entity_f1(got: list[list[dict]], ref: list[list[dict]]) -> float:
    """Micro F1 of `got`'s entities against `ref`'s (type, start, end) over all texts; 1.0 when both are empty."""
    tp = size_got = size_ref = 0
    for g, r in zip(got, ref):
        gs = {(e["entity_group"], e["start"], e["end"]) for e in g}
        rs = {(e["entity_group"], e["start"], e["end"]) for e in r}
        tp, size_got, size_ref = tp + len(gs & rs), size_got + len(gs), size_ref + len(rs)
    return 1.0 if size_got + size_ref == 0 else 2.0 * tp / (size_got + size_ref)


def head_fidelity(int8_session, fp32_session, inputs: list, gate: HeadGate, source: str) -> dict:
    """The head's int8-vs-fp32 figures on `inputs` (texts, or pairs for a pair model) and the gate's verdict;
    raises ValueError when under the gate."""
    meta = fp32_session.metadata
    report: dict = {"source": source, "inputs": len(inputs)}
    if meta.task == TOKEN_CLASSIFICATION:
        got, ref = int8_session.token_logits(inputs), fp32_session.token_logits(inputs)
        agree = np.concatenate([g.argmax(-1) == r.argmax(-1) for g, r in zip(got, ref)])
        report["token_label_agreement"] = float(agree.mean())
        report["entity_f1_agreement"] = entity_f1(int8_session.tag(inputs), fp32_session.tag(inputs))
        metric, value, threshold = "entity_f1_agreement", report["entity_f1_agreement"], gate.min_agreement
    else:
        got = np.stack(int8_session.predict(inputs, return_logits=True))
        ref = np.stack(fp32_session.predict(inputs, return_logits=True))
        if len(meta.labels) == 1:
            report["spearman"] = spearman(got[:, 0], ref[:, 0])
            metric, value, threshold = "spearman", report["spearman"], gate.min_spearman
        else:
            if meta.problem_type == "multi_label_classification":
                agree = (got > 0) == (ref > 0)
            else:
                agree = got.argmax(-1) == ref.argmax(-1)
            report["label_agreement"] = float(agree.mean())
            metric, value, threshold = "label_agreement", report["label_agreement"], gate.min_agreement
        report["max_abs_logit_diff"] = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0))
    report["gate"] = {"metric": metric, "min": threshold, "passed": value >= threshold}
    if value < threshold:
        raise ValueError(f"int8 {meta.task} head under the gate: {metric} {value:.4f} on {len(inputs)} held-out "
                         f"inputs ({source}), need >= {threshold}; the model was not written. Lower the gate "
                         "(--min-agreement / --min-spearman) to accept it, or export fp32")
    return report
