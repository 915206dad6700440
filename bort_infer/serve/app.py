"""The HTTP app: routes over one Session and one batching worker.

POST /v1/embeddings (OpenAI), POST /embed, /predict and /rerank (TEI), GET /v1/models, GET /info (TEI),
GET /health, GET /metrics (Prometheus). Texts to embed are tokenized on a small thread pool (never on the event
loop) and batched across requests by bort_infer.serve.batcher; a /predict or /rerank request runs whole
(Session.predict / Session.rerank) on the same worker, in queue order, under the same admission limit. A
client that disconnects while it waits has its texts dropped from the queue.
"""
from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..heads import InputTooLongError
from ..session import Session
from .batcher import Batcher, BatcherClosed, ModelFailed, QueueFull
from .errors import ApiError
from .limits import GuardMiddleware
from .metrics import RequestMetricsMiddleware, ServerMetrics
from .options import ServeOptions
from .schemas import (
    Inputs,
    ModelLimits,
    embeddings_body,
    finish_vectors,
    info_body,
    models_body,
    parse_embed,
    parse_embeddings,
    parse_predict,
    parse_rerank,
    rerank_body,
)

TOKENIZER_THREADS = 2  # a long request's tokenization does not hold up a short one's
CLIENT_CLOSED_REQUEST = 499  # recorded in the metrics when a client leaves before its answer (never sent)


class ClientGone(Exception):
    """The client disconnected while its request waited; its queued texts were dropped."""


def _json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


async def read_json(request: Request):
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:  # the standard parser also takes what orjson refuses: lone surrogate escapes (tokenized as U+FFFD)
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", param="body", code="invalid_json") from None


async def _disconnected(receive) -> None:
    """Returns once the client has gone (the body has been read, so the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work):
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        watcher.cancel()
    if task.cancelled():
        raise ClientGone()
    return task.result()


class _Service:
    """The routes' shared state and the embedding path common to /v1/embeddings and /embed."""

    def __init__(self, session: Session, options: ServeOptions):
        self.session = session
        self.options = options
        self.metrics = ServerMetrics()
        self.batcher = Batcher(session, max_batch_tokens=options.max_batch_tokens, max_queue=options.max_queue,
                               metrics=self.metrics)
        self.created = time.time()
        self.tokenizer_pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="bort-serve-tokenize")
        meta = session.metadata
        self.model = ModelLimits(name=options.served_model_name, hidden_size=meta.hidden_size,
                                 max_length=meta.max_length, vocab_size=session.vocab_size, task=meta.task,
                                 labels=tuple(meta.labels), pairs=meta.pairs)

    async def vectors(self, request: Request, inputs: Inputs, *, truncate: bool, field: str) -> tuple[np.ndarray, int]:
        """Raw pooled vectors of the inputs (rows in order) and their real token count."""
        with self.batcher.admit(len(inputs)):  # QueueFull: 429 (see _queue_full)
            if inputs.texts is not None:
                encodings = await asyncio.get_running_loop().run_in_executor(
                    self.tokenizer_pool, self.session.tokenize, inputs.texts)
                if not truncate:
                    self._refuse_overlong(encodings, field)
                sequences = [e.ids for e in encodings]
            else:
                sequences = inputs.token_ids
            vectors = await unless_disconnected(request, self.batcher.embed(sequences))
            return vectors, sum(map(len, sequences))

    def _refuse_overlong(self, encodings: list, field: str) -> None:
        limit = self.model.max_length
        for i, e in enumerate(encodings):
            if e.overflowing:
                raise ApiError(422, f"{field}[{i}] is longer than this model's limit of {limit} tokens; shorten it "
                               "or send \"truncate\": true to keep its first tokens", param=f"{field}[{i}]",
                               code="context_length_exceeded")

    async def openai_embeddings(self, request: Request) -> Response:
        req = parse_embeddings(await read_json(request), max_inputs=self.options.max_input_texts, model=self.model)
        raw, tokens = await self.vectors(request, req.inputs, truncate=req.truncate, field="input")
        vectors = finish_vectors(raw, normalize=self.session.metadata.normalize, dimensions=req.dimensions)
        return _json_response(embeddings_body(vectors, encoding_format=req.encoding_format, model=self.model.name,
                                              prompt_tokens=tokens))

    async def tei_embed(self, request: Request) -> Response:
        req = parse_embed(await read_json(request), max_inputs=self.options.max_input_texts, model=self.model)
        raw, _ = await self.vectors(request, req.inputs, truncate=req.truncate, field="inputs")
        return _json_response(finish_vectors(raw, normalize=req.normalize))

    async def run_whole(self, request: Request, count: int, fn, field: str, single: bool = False):
        """fn() (a Session call over a whole request's ``count`` inputs) on the batching worker, admitted like
        ``count`` texts; an input over the limit with truncation refused is 422 naming it."""
        with self.batcher.admit(count):  # QueueFull: 429 (see _queue_full)
            try:
                return await unless_disconnected(request, self.batcher.call(fn))
            except InputTooLongError as exc:
                where = field if single else f"{field}[{exc.index}]"
                raise ApiError(422, f"{where} is longer than this model's limit of {exc.limit} tokens; shorten it "
                               "or send \"truncate\": true to keep its first tokens", param=where,
                               code="context_length_exceeded") from None

    async def tei_predict(self, request: Request) -> Response:
        req = parse_predict(await read_json(request), max_inputs=self.options.max_input_texts, model=self.model)
        budget = self.options.max_batch_tokens

        def predict():
            return self.session.predict(req.inputs, batch_size=len(req.inputs), max_tokens=budget,
                                        raw_scores=req.raw_scores, truncate=req.truncate)
        results = await self.run_whole(request, len(req.inputs), predict, "inputs", req.single)
        return _json_response(results[0] if req.single else results)

    async def tei_rerank(self, request: Request) -> Response:
        req = parse_rerank(await read_json(request), max_inputs=self.options.max_input_texts, model=self.model)
        budget = self.options.max_batch_tokens

        def rerank():
            return self.session.rerank(req.query, req.texts, batch_size=len(req.texts), max_tokens=budget,
                                       return_documents=req.return_text, raw_scores=req.raw_scores,
                                       truncate=req.truncate)
        return _json_response(rerank_body(await self.run_whole(request, len(req.texts), rerank, "texts")))

    async def info(self, request: Request) -> Response:
        return _json_response(info_body(self.model, max_input_texts=self.options.max_input_texts,
                                        max_batch_tokens=self.options.max_batch_tokens, version=__version__))

    async def models(self, request: Request) -> Response:
        return _json_response(models_body(self.model.name, self.created))

    async def health(self, request: Request) -> Response:
        if not self.batcher.alive:
            return _json_response({"status": "unavailable"}, 503)
        return _json_response({"status": "ok", "model": self.model.name, "queued_texts": self.batcher.queued_texts})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response(request.url.path)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code="not_found"
                    if exc.status_code == 404 else None, headers=dict(exc.headers or {})).response(request.url.path)


async def _queue_full(request: Request, exc: QueueFull) -> Response:
    return ApiError(429, str(exc), code="queue_full",
                    headers={"Retry-After": str(exc.retry_after)}).response(request.url.path)


async def _shutting_down(request: Request, exc: BatcherClosed) -> Response:
    return ApiError(503, str(exc), code="shutting_down").response(request.url.path)


async def _model_failed(request: Request, exc: ModelFailed) -> Response:
    return ApiError(500, str(exc), code="model_error").response(request.url.path)


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error").response(request.url.path)


def create_app(session: Session, options: ServeOptions) -> Starlette:
    """The ASGI app serving ``session``; its lifespan starts and stops the batching worker."""
    service = _Service(session, options)

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        try:
            yield
        finally:
            service.batcher.close()
            service.tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    routes = [
        Route("/v1/embeddings", service.openai_embeddings, methods=["POST"]),
        Route("/embed", service.tei_embed, methods=["POST"]),
        Route("/predict", service.tei_predict, methods=["POST"]),
        Route("/rerank", service.tei_rerank, methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/info", service.info, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, HTTPException: _http_error, QueueFull: _queue_full, BatcherClosed: _shutting_down,
        ModelFailed: _model_failed, ClientGone: _client_gone, Exception: _internal_error})
    app.add_middleware(GuardMiddleware, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics,
                       routes=frozenset(r.path for r in routes))
    app.state.service = service
    return app
