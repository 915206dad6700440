"""The limits, each against a real server: body size (413), API key (401), queue bound (429 with
Retry-After), and a client that disconnects has its queued texts dropped."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from .conftest import GatedSession, running_server


def _wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class TestBodySize:
    def test_a_declared_body_over_the_limit_is_413(self, session):
        with running_server(session, max_body_bytes=1000) as (url, _):
            r = httpx.post(f"{url}/embed", json={"inputs": ["x" * 2000]})
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            assert httpx.post(f"{url}/embed", json={"inputs": ["x" * 500]}).status_code == 200

    def test_a_streamed_body_over_the_limit_is_413(self, session):
        def chunks():
            yield b'{"inputs": ["'
            for _ in range(5):
                yield b"x" * 400
            yield b'"]}'
        with running_server(session, max_body_bytes=1000) as (url, _):
            r = httpx.post(f"{url}/embed", content=chunks())
            assert r.status_code == 413


class TestApiKey:
    @pytest.fixture(scope="class")
    def url(self, session):
        with running_server(session, api_key="k3y-value") as (url, _):
            yield url

    @pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k3y-value"},
                                         {"Authorization": "Bearer k3y-valu"}, {"Authorization": "Bearer"}])
    def test_without_the_bearer_key_every_route_is_401(self, url, headers):
        for method, path in (("POST", "/embed"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
                             ("GET", "/metrics")):
            r = httpx.request(method, f"{url}{path}", json={"inputs": "x"}, headers=headers)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"

    def test_with_the_key_requests_pass_and_health_is_open(self, url):
        ok = {"Authorization": "Bearer k3y-value"}
        assert httpx.post(f"{url}/embed", json={"inputs": "x"}, headers=ok).status_code == 200
        assert httpx.get(f"{url}/metrics", headers={"authorization": "bearer k3y-value"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_full_queue_answers_429_with_retry_after_and_keeps_the_accepted(session):
    gated = GatedSession(session)
    with running_server(gated, max_queue=4, max_input_texts=4) as (url, _):
        results = {}

        def post(name, texts):
            results[name] = httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=30)
        first = threading.Thread(target=post, args=("first", ["a", "b", "c"]))
        first.start()
        assert gated.entered.wait(10)  # the first request is in the model; its 3 texts are held
        refused = httpx.post(f"{url}/embed", json={"inputs": ["d", "e"]})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        last = threading.Thread(target=post, args=("last", ["f"]))  # 3 + 1 fits
        last.start()
        _wait_for(lambda: httpx.get(f"{url}/health").json()["queued_texts"] == 4)
        assert httpx.post(f"{url}/embed", json={"inputs": ["g"]}).status_code == 429
        gated.gate.set()
        first.join(30)
        last.join(30)
        assert results["first"].status_code == 200 and len(results["first"].json()) == 3
        assert results["last"].status_code == 200 and len(results["last"].json()) == 1
        assert httpx.get(f"{url}/health").json()["queued_texts"] == 0


def test_a_client_that_disconnects_has_its_queued_texts_dropped(session):
    gated = GatedSession(session)
    with running_server(gated) as (url, _):
        blocker = threading.Thread(target=httpx.post, args=(f"{url}/embed",), kwargs={"json": {"inputs": ["held"]},
                                                                                       "timeout": 30})
        blocker.start()
        assert gated.entered.wait(10)
        host, port = url.removeprefix("http://").split(":")
        body = b'{"inputs": ["gone one", "gone two, a longer text"]}'
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        _wait_for(lambda: httpx.get(f"{url}/health").json()["queued_texts"] == 3)
        sock.close()
        _wait_for(lambda: httpx.get(f"{url}/health").json()["queued_texts"] == 1)
        gated.gate.set()
        blocker.join(30)
        assert gated.calls == [[len(session.tokenize(["held"])[0].ids)]]  # the dropped texts never ran
        metrics = httpx.get(f"{url}/metrics").text
        assert 'bort_serve_requests_total{route="/embed",status="499"} 1.0' in metrics
