"""The batching worker: rows back to their requests in order whatever the interleaving, rounds that fill
the token budget first-come first-served, admission bounded by max_queue, cancellation, model failures."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bort_infer.serve.batcher import Batcher, BatcherClosed, ModelFailed, QueueFull
from bort_infer.serve.metrics import ServerMetrics

from .conftest import GatedSession


def _sequences(session, rng, n):
    words = ["a", "man", "rides", "horse", "the", "snow", "ünïcode", "😀", "two", "dogs"]
    return [e.ids for e in session.tokenize([" ".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(n)])]


@pytest.fixture
def make_batcher():
    made = []

    def make(session, **kw):
        kw.setdefault("max_batch_tokens", 256)
        kw.setdefault("max_queue", 10_000)
        b = Batcher(session, metrics=ServerMetrics(), **kw)
        b.start()
        made.append(b)
        return b
    yield make
    for b in made:
        b.close(10)


def test_rows_go_back_to_their_requests_in_order_whatever_the_interleaving(session, make_batcher):
    batcher = make_batcher(session, max_batch_tokens=97)  # odd budget: requests split across rounds
    rng = np.random.default_rng(11)
    requests = [_sequences(session, rng, int(rng.integers(1, 12))) for _ in range(40)]
    delays = rng.uniform(0, 0.01, size=len(requests))

    async def one(seqs, delay):
        await asyncio.sleep(delay)
        return await batcher.embed(seqs)

    async def run():
        return await asyncio.gather(*(one(s, d) for s, d in zip(requests, delays)))
    for seqs, got in zip(requests, asyncio.run(run())):
        np.testing.assert_allclose(got, session.embed_ids(seqs), atol=1e-5, rtol=1e-4)


def test_rounds_fill_the_token_budget_first_come_first_served(session, make_batcher):
    gated = GatedSession(session)
    batcher = make_batcher(gated, max_batch_tokens=40)
    first = [[0] + [5] * 8 + [2]] * 6   # 6 texts of 10 tokens: 4 fit a round
    second = [[0, 7, 2]] * 3            # 3 texts of 3 tokens

    async def run():
        a = asyncio.ensure_future(batcher.embed(first))
        await asyncio.sleep(0.05)  # the worker takes its first round from `first` alone
        b = asyncio.ensure_future(batcher.embed(second))
        await asyncio.sleep(0.05)
        gated.gate.set()
        return await a, await b
    got_first, got_second = asyncio.run(run())
    assert gated.calls == [[10] * 4, [10, 10, 3, 3, 3]]
    np.testing.assert_allclose(got_first, session.embed_ids(first), atol=1e-5)
    np.testing.assert_allclose(got_second, session.embed_ids(second), atol=1e-5)


def test_a_text_longer_than_the_budget_runs_alone(session, make_batcher):
    gated = GatedSession(session)
    gated.gate.set()
    batcher = make_batcher(gated, max_batch_tokens=8)
    seqs = [[0] + [9] * 20 + [2], [0, 4, 2]]
    got = asyncio.run(batcher.embed(seqs))
    assert gated.calls == [[22], [3]]
    np.testing.assert_allclose(got, session.embed_ids(seqs), atol=1e-5)


def test_admission_is_bounded_in_texts(session, make_batcher):
    batcher = make_batcher(session, max_queue=5)
    with batcher.admit(3):
        with pytest.raises(QueueFull) as full:
            with batcher.admit(3):
                pass
        assert full.value.retry_after >= 1 and "limit 5" in str(full.value)
        with batcher.admit(2):
            assert batcher.queued_texts == 5
    assert batcher.queued_texts == 0


def test_a_cancelled_request_leaves_the_queue(session, make_batcher):
    gated = GatedSession(session)
    batcher = make_batcher(gated)

    async def run():
        running = asyncio.ensure_future(batcher.embed([[0, 5, 2]]))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.embed([[0, 6, 6, 2], [0, 6, 2]]))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.sleep(0.01)
        gated.gate.set()
        return await running
    got = asyncio.run(run())
    assert gated.calls == [[3]] and got.shape == (1, session.hidden_size)


class _FailsOnce:
    def __init__(self, session):
        self._session, self.failed = session, False

    def __getattr__(self, name):
        return getattr(self._session, name)

    def embed_ids(self, sequences, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return self._session.embed_ids(sequences, **kwargs)


def test_a_model_failure_reaches_every_request_of_its_round_and_the_worker_goes_on(session, make_batcher):
    batcher = make_batcher(_FailsOnce(session))

    async def run():
        with pytest.raises(ModelFailed, match="boom"):
            await batcher.embed([[0, 5, 2]])
        return await batcher.embed([[0, 5, 2]])
    assert asyncio.run(run()).shape == (1, session.hidden_size)


def test_a_closed_batcher_refuses_work(session, make_batcher):
    batcher = make_batcher(session)
    batcher.close(10)
    assert not batcher.alive
    with pytest.raises(BatcherClosed):
        asyncio.run(batcher.embed([[0, 5, 2]]))


def test_a_call_runs_on_the_worker_alone_in_queue_order(session, make_batcher):
    import threading

    gated = GatedSession(session)
    batcher = make_batcher(gated)
    order = []

    def whole_request():
        order.append(("call", threading.current_thread().name, len(gated.calls)))
        return "done"

    def failing():
        raise ValueError("bad request")

    async def run():
        first = asyncio.ensure_future(batcher.embed([[0, 5, 2]]))
        await asyncio.sleep(0.05)
        called = asyncio.ensure_future(batcher.call(whole_request))
        last = asyncio.ensure_future(batcher.embed([[0, 6, 2]]))
        await asyncio.sleep(0.05)
        gated.gate.set()
        with pytest.raises(ValueError, match="bad request"):
            await batcher.call(failing)
        return await first, await called, await last
    _, result, _ = asyncio.run(run())
    assert result == "done"
    assert order == [("call", "bort-serve-batcher", 1)]  # after the first round, before the last
    assert gated.calls == [[3], [3]]


def test_no_sequences_no_work(session, make_batcher):
    assert asyncio.run(make_batcher(session).embed([])).shape == (0, session.hidden_size)
