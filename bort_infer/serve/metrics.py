"""Prometheus metrics of one server (its own registry, so that several apps in one process do not mix):
requests by route and status, request latency, texts queued, and what each model call held and took."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The counters and histograms /metrics exposes (names prefixed ``bort_serve_``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("bort_serve_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("bort_serve_request_seconds", "Time from request to response, by route",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queued_texts = Gauge("bort_serve_queued_texts",
                                  "Texts admitted and not yet answered (tokenizing, waiting or in the model)",
                                  registry=r)
        self.batch_tokens = Histogram("bort_serve_batch_tokens", "Real tokens per model call",
                                      buckets=_TOKEN_BUCKETS, registry=r)
        self.batch_texts = Histogram("bort_serve_batch_texts", "Texts per model call", buckets=_TEXT_BUCKETS,
                                     registry=r)
        self.batch_seconds = Histogram("bort_serve_batch_seconds", "Time of one model call",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.texts = Counter("bort_serve_texts", "Texts embedded or scored", registry=r)
        self.tokens = Counter("bort_serve_tokens", "Real tokens run through the model", registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)
        self.texts.inc(texts)
        self.tokens.inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts every HTTP answer by route and status and times it (a plain ASGI middleware, outermost, so
    that refusals by the gate and errors count too). Unknown paths share one label: the series stay few."""

    def __init__(self, app, *, metrics: ServerMetrics, routes: frozenset[str]):
        self.app = app
        self._metrics = metrics
        self._routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope["path"] if scope["path"] in self._routes else "other"
            self._metrics.observe_request(route, status, time.perf_counter() - began)
