"""plan_batches: the one rule that cuts texts into model calls (Session.encode and the server's worker)."""
from __future__ import annotations

import numpy as np
import pytest

from bort_infer.batching import DEFAULT_PACKED_TOKEN_BUDGET, plan_batches


def _plan(lengths, **kw):
    return [list(map(int, idx)) for idx in plan_batches(np.array(lengths), **kw)]


def test_every_index_appears_exactly_once_longest_first():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = _plan(lengths, batch_size=32, max_tokens=1000, packed=True)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(500))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_a_packed_call_stays_under_its_token_budget_and_row_count():
    lengths = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    batches = _plan(lengths, batch_size=3, max_tokens=200, packed=True)
    assert batches == [[0, 1], [2, 3], [4, 5, 6], [7, 8, 9]]


def test_a_packed_call_defaults_to_the_shared_token_budget():
    batches = _plan([DEFAULT_PACKED_TOKEN_BUDGET // 4] * 9, batch_size=100, max_tokens=None, packed=True)
    assert [len(b) for b in batches] == [4, 4, 1]


def test_a_text_longer_than_the_budget_gets_a_call_of_its_own():
    assert _plan([500, 10, 10], batch_size=8, max_tokens=100, packed=True) == [[0], [1, 2]]
    assert _plan([500, 10], batch_size=8, max_tokens=100, packed=False) == [[0], [1]]


def test_a_padded_call_bounds_rows_times_its_longest_text():
    assert _plan([50, 40, 30, 20], batch_size=8, max_tokens=100, packed=False) == [[0, 1], [2, 3]]
    assert _plan([50, 40, 30, 20], batch_size=3, max_tokens=None, packed=False) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("packed", [True, False])
def test_no_texts_no_calls(packed):
    assert _plan([], batch_size=8, max_tokens=None, packed=packed) == []
