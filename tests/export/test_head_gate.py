"""The int8 gate of a task head (bort_infer.export.head_gate): Spearman, entity F1, the per-task figure, and an
int8 export that is refused under its gate."""
from __future__ import annotations

import numpy as np
import pytest

from bort_infer.export.head_gate import HeadGate, entity_f1, make_head_gate, spearman


def test_spearman_matches_its_definition_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    a[:10] = 1.0  # ties
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_entity_f1_against_the_reference():
    e = [{"entity_group": "PER", "start": 0, "end": 5}, {"entity_group": "LOC", "start": 9, "end": 14}]
    assert entity_f1([e], [e]) == 1.0
    assert entity_f1([[]], [[]]) == 1.0
    assert entity_f1([e[:1]], [e]) == pytest.approx(2 / 3)
    shifted = [{"entity_group": "PER", "start": 0, "end": 4}]
    assert entity_f1([shifted], [e[:1]]) == 0.0


def test_gate_values_are_checked():
    assert make_head_gate(None, None) == HeadGate(0.995, 0.995)
    with pytest.raises(ValueError, match="--min-agreement must be in"):
        make_head_gate(1.5, None)


@pytest.mark.parametrize("name, metric", [("classifier", "label_agreement"), ("cross-encoder", "spearman"),
                                          ("tagger", "entity_f1_agreement")])
def test_int8_head_reports_its_task_figure(head_exports, name, metric):
    from bort_infer.model_dir import read_metadata

    meta = read_metadata(head_exports(name, quantize="int8", min_agreement=0.5, min_spearman=0.5))
    head = meta.fidelity["head"]
    assert meta.precision == "int8" and head["gate"]["metric"] == metric and head["gate"]["passed"]
    assert head["source"] == "built-in" and head["inputs"] >= 80
    assert 0.5 <= head[metric] <= 1.0
    assert meta.fidelity["gate"]["enforced"] is False  # the hidden-state cosine is reported, the task figure gates


def test_int8_head_under_its_gate_is_not_written(head_checkpoints, tmp_path, monkeypatch):
    from bort_infer.export import head_gate
    from bort_infer.export.export import export_model

    monkeypatch.setattr(head_gate, "spearman", lambda a, b: 0.99)  # int8 ranks its inputs a little differently
    with pytest.raises(ValueError, match=r"spearman 0.9900 on 3 held-out inputs \(user\), need >= 0.995; the "
                                         "model was not written"):
        export_model(str(head_checkpoints("regression")), tmp_path / "out", quantize="int8",
                     evaluation_inputs=["a dog runs", "the market fell", "two men are talking"])
    assert not (tmp_path / "out").exists()
