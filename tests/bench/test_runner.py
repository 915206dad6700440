"""bort-bench's timing method: warm-up, interleaved rounds in rotated order, time-bounded round counts."""
from bort_infer.bench import runner
from bort_infer.bench.runner import (
    MAX_CALLS_PER_TURN,
    Cell,
    exact_length_inputs,
    measure_interleaved,
    plan_rounds,
    rotated,
)


def test_each_round_rotates_the_order_by_one():
    keys = ["a", "b", "c"]
    assert [rotated(keys, r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert rotated([], 3) == []


def test_rounds_fit_the_budget_between_the_minimum_and_the_maximum():
    fast = {("bort", "x"): 0.001}
    rounds, calls, lead_in = plan_rounds(fast, repeats=15, min_rounds=3, budget_s=1000)
    assert rounds == 15 and calls[("bort", "x")] == MAX_CALLS_PER_TURN and lead_in[("bort", "x")]
    slow = {("bert-large", "x"): 8.0, ("bort", "x"): 0.7}
    assert plan_rounds(slow, repeats=15, min_rounds=3, budget_s=45)[0] == 5  # 45 s / 8.8 s per round
    rounds, calls, lead_in = plan_rounds(slow, repeats=15, min_rounds=3, budget_s=20)
    assert rounds == 3 and calls == {("bert-large", "x"): 1, ("bort", "x"): 1}
    assert lead_in == {("bert-large", "x"): False, ("bort", "x"): False}
    assert plan_rounds(slow, repeats=15, min_rounds=2, budget_s=10)[0] == 2
    assert plan_rounds(slow, repeats=15, min_rounds=2, budget_s=None)[0] == 15


def test_every_pair_gets_a_warm_up_then_a_turn_per_round_in_rotated_order(monkeypatch):
    monkeypatch.setattr(runner, "SETTLE_S", 0.0)
    calls = []
    runs = {key: (lambda key=key: calls.append(key)) for key in [("bort", "a"), ("bert-large", "a"), ("bort", "b")]}
    cells = measure_interleaved(runs, 1, 8, repeats=3, warmup=1, budget_s=None)
    keys = list(runs)
    warm, timed = calls[:3], calls[3:]
    assert warm == keys
    firsts = [timed[i] for i in range(0, len(timed)) if i == 0 or timed[i] != timed[i - 1]]
    assert firsts == rotated(keys, 0) + rotated(keys, 1) + rotated(keys, 2)
    for cell in cells:
        assert len(cell.round_ms) == 3 and cell.warmup_ms is not None
        assert len(cell.times_ms) == 3 * MAX_CALLS_PER_TURN
        assert (cell.model, cell.backend) in runs


def test_cell_statistics_and_json():
    cell = Cell("bort", "x", 1, 32, times_ms=[4.0, 1.0, 3.0, 2.0], round_ms=[2.5, 2.5], warmup_ms=9.0)
    assert cell.median_ms == 2.5 and cell.min_ms == 1.0 and cell.iqr_ms == 1.5
    j = cell.to_json()
    assert j["repeats"] == 4 and j["rounds"] == 2 and j["warmup_ms"] == 9.0 and "times_ms" not in j


def test_inputs_have_exactly_the_asked_length_and_no_special_ids():
    ids, mask = exact_length_inputs(2, 7, vocab_size=50)
    assert ids.shape == mask.shape == (2, 7) and mask.all() and ids.min() >= 5 and ids.max() < 50
