"""Dynamic batching: token id sequences from concurrent requests are merged into model calls under the
token budget, run on ONE worker thread with one Session, and the rows go back to their requests in order.

A round takes texts first-come first-served (a large request may be split across rounds, so that it
cannot hold smaller ones back for long) until the next text would pass the budget; Session.embed_ids then
cuts the round into calls with the shared rule (bort_infer.batching.plan_batches). Admission is counted
in texts, from the moment a request is accepted until it is answered: past ``max_queue`` a request is
refused (QueueFull, with a Retry-After estimate), so memory stays bounded whatever the load.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import ServerMetrics

_RATE_SMOOTHING = 0.2  # weight of the newest round in the texts-per-second estimate behind Retry-After
MAX_RETRY_AFTER = 60


class QueueFull(Exception):
    """The server holds ``max_queue`` texts already; ``retry_after``: seconds until it likely has room."""

    def __init__(self, queued: int, limit: int, retry_after: int):
        super().__init__(f"the server is at capacity ({queued} texts queued, limit {limit}); retry after "
                         f"{retry_after} s")
        self.retry_after = retry_after


class BatcherClosed(RuntimeError):
    """The worker has stopped (the server is shutting down)."""


class ModelFailed(RuntimeError):
    """The model raised on a round; every request with texts in it gets this error."""


@dataclass(eq=False)
class _Job:
    """One request's sequences and where its rows go; touched by the worker only under the batcher's lock
    except ``out``/``filled``, which only the worker writes."""

    sequences: list
    lengths: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    out: np.ndarray | None = None
    filled: int = 0
    dropped: bool = False  # cancelled by its request or failed: skip what is left of it
    call: Callable[[], Any] | None = None  # a whole-request call (predict, rerank) run alone, in queue order


class Batcher:
    def __init__(self, session, *, max_batch_tokens: int, max_queue: int, metrics: ServerMetrics | None = None):
        self._session = session
        self._budget = max_batch_tokens
        self._max_queue = max_queue
        self._metrics = metrics
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._head = 0  # the next text of self._jobs[0]
        self._admitted = 0
        self._closing = False
        self._texts_per_second: float | None = None
        self._thread: threading.Thread | None = None

    @property
    def queued_texts(self) -> int:
        return self._admitted

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="bort-serve-batcher", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker after the rounds already queued (the server drains requests before this)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @contextmanager
    def admit(self, texts: int) -> Iterator[None]:
        """Hold room for ``texts`` until the block ends (answered, failed or cancelled); QueueFull when the
        server already holds max_queue texts."""
        with self._cond:
            if self._admitted + texts > self._max_queue:
                raise QueueFull(self._admitted, self._max_queue, self._retry_after())
            self._admitted += texts
        self._gauge()
        try:
            yield
        finally:
            with self._cond:
                self._admitted -= texts
            self._gauge()

    async def embed(self, sequences: list) -> np.ndarray:
        """Pooled, not normalized, vectors of token id sequences (as Session.tokenize gives them), in order.
        Cancelling the awaiting task drops the texts of this request that have not run yet."""
        if not sequences:
            return np.empty((0, self._session.metadata.hidden_size), dtype=np.float32)
        loop = asyncio.get_running_loop()
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        return await self._submit(_Job(sequences, lengths, loop.create_future(), loop))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """fn() on the worker thread, alone and in queue order with the embedding rounds: for a request that
        the Session runs whole (predict, rerank). Cancelling before it starts drops it."""
        loop = asyncio.get_running_loop()
        return await self._submit(_Job([], np.zeros(0, np.int64), loop.create_future(), loop, call=fn))

    async def _submit(self, job: _Job):
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            self._jobs.append(job)
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(job)
            raise

    def _drop(self, job: _Job) -> None:
        with self._cond:
            job.dropped = True
            if self._jobs and self._jobs[0] is job:
                self._jobs.popleft()
                self._head = 0
            else:
                try:
                    self._jobs.remove(job)
                except ValueError:
                    pass  # already taken whole by the worker

    def _retry_after(self) -> int:
        rate = self._texts_per_second
        if not rate:
            return 1
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self._admitted / rate)))

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queued_texts.set(self._admitted)

    def _take_round(self) -> tuple[list[tuple[_Job, int, int]], int]:
        """(job, start, stop) pieces first-come first-served up to the token budget (at least one text);
        called under the lock."""
        pieces: list[tuple[_Job, int, int]] = []
        tokens = 0
        while self._jobs:
            job, start = self._jobs[0], self._head
            if job.call is not None:
                if not pieces:
                    self._jobs.popleft()
                    pieces.append((job, 0, 0))
                break
            cumulative = np.cumsum(job.lengths[start:])
            take = int(np.searchsorted(cumulative, self._budget - tokens, "right"))
            if take == 0:
                if pieces:
                    break
                take = 1  # a text longer than the whole budget runs alone
            pieces.append((job, start, start + take))
            tokens += int(cumulative[take - 1])
            if start + take == len(job.lengths):
                self._jobs.popleft()
                self._head = 0
            else:
                self._head = start + take
                break
        return pieces, tokens

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                pieces, tokens = self._take_round()
            if pieces[0][0].call is not None:
                self._run_call(pieces[0][0])
                continue
            sequences = [s for job, start, stop in pieces for s in job.sequences[start:stop]]
            began = time.perf_counter()
            try:
                vectors = self._session.embed_ids(sequences, batch_size=len(sequences), max_tokens=self._budget)
            except Exception as exc:  # the model failed: those requests get the error, the server goes on
                failure = ModelFailed(f"the model failed on a batch of {len(sequences)} texts: {exc}")
                for job in {id(p[0]): p[0] for p in pieces}.values():
                    self._drop(job)
                    _deliver(job, exc=failure)
                continue
            seconds = time.perf_counter() - began
            self._observe(len(sequences), tokens, seconds)
            offset = 0
            for job, start, stop in pieces:
                rows = vectors[offset:offset + stop - start]
                offset += stop - start
                if job.dropped:
                    continue
                if start == 0 and stop == len(job.sequences):
                    _deliver(job, result=rows)
                    continue
                if job.out is None:
                    job.out = np.empty((len(job.sequences), vectors.shape[1]), dtype=np.float32)
                job.out[start:stop] = rows
                job.filled += stop - start
                if job.filled == len(job.sequences):
                    _deliver(job, result=job.out)

    def _run_call(self, job: _Job) -> None:
        began = time.perf_counter()
        try:
            result = job.call()
        except Exception as exc:  # the request gets the error, the server goes on
            _deliver(job, exc=exc)
            return
        if self._metrics is not None:
            self._metrics.batch_seconds.observe(time.perf_counter() - began)
        _deliver(job, result=result)

    def _observe(self, texts: int, tokens: int, seconds: float) -> None:
        rate = texts / max(seconds, 1e-6)
        previous = self._texts_per_second
        self._texts_per_second = rate if previous is None else previous + _RATE_SMOOTHING * (rate - previous)
        if self._metrics is not None:
            self._metrics.observe_batch(texts, tokens, seconds)


def _deliver(job: _Job, *, result: np.ndarray | None = None, exc: BaseException | None = None) -> None:
    """Hand a result or an error to the request's event loop (the worker never touches the future itself)."""
    def settle() -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the loop has closed: nobody is waiting any more
