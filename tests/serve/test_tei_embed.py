"""TEI's POST /embed, GET /health and GET /metrics through httpx against a real server."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from ..conftest import VARIED_TEXTS
from .conftest import cosines

TEXTS = [t for t in VARIED_TEXTS if len(t) < 1000]


def test_embed_normalizes_by_default_like_tei(server, session):
    url, _ = server
    got = np.array(httpx.post(f"{url}/embed", json={"inputs": TEXTS}).json(), dtype=np.float32)
    np.testing.assert_allclose(got, session.encode(TEXTS, normalize=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_embed_without_normalize_gives_the_raw_vectors(server, session):
    url, _ = server
    got = np.array(httpx.post(f"{url}/embed", json={"inputs": "one text", "normalize": False}).json())
    assert got.shape == (1, session.hidden_size)
    np.testing.assert_allclose(got[0], session.encode("one text", normalize=False), atol=1e-5, rtol=1e-4)


def test_a_text_past_the_limit_is_422_naming_its_index_unless_truncate(server, session):
    url, _ = server
    texts = ["fine", "ok", "word " * 2000]
    r = httpx.post(f"{url}/embed", json={"inputs": texts})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "inputs[2]" and "inputs[2] is longer than" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/embed", json={"inputs": texts, "truncate": True})
    assert r.status_code == 200 and len(r.json()) == 3


@pytest.mark.parametrize("body, param", [
    ({"inputs": ["a", 1]}, "inputs[1]"), ({"inputs": ["a", ["b"]]}, "inputs[1]"), ({"inputs": 5}, "inputs"),
    ({"inputs": []}, "inputs"), ({}, "inputs"), ({"inputs": "a", "normalize": "yes"}, "normalize"),
    ([1, 2], "body"),
])
def test_a_bad_body_is_422_naming_the_field(server, body, param):
    url, _ = server
    r = httpx.post(f"{url}/embed", json=body)
    assert r.status_code == 422 and r.json()["error"]["param"] == param


def test_invalid_json_is_400_in_openais_error_shape(server):
    url, _ = server
    r = httpx.post(f"{url}/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_lone_surrogate_becomes_a_replacement_character(server, session):
    url, _ = server
    r = httpx.post(f"{url}/embed", content=b'{"inputs": ["a\\ud800b"], "normalize": false}')
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()[0], session.encode("a\ufffdb", normalize=False), atol=1e-5, rtol=1e-4)


def test_unknown_routes_and_methods_answer_in_openais_error_shape(server):
    url, _ = server
    assert httpx.get(f"{url}/nope").json()["error"]["code"] == "not_found"
    r = httpx.get(f"{url}/embed")
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]["message"]


def test_health(server):
    url, _ = server
    r = httpx.get(f"{url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_interleaved_async_clients_get_their_rows_in_order(server, session):
    url, _ = server
    rng = np.random.default_rng(3)
    jobs = [[TEXTS[i] for i in rng.permutation(len(TEXTS))[:rng.integers(1, 9)]] for _ in range(64)]
    want = dict(zip(TEXTS, session.encode(TEXTS, normalize=True)))

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            responses = await asyncio.gather(*(c.post("/embed", json={"inputs": j}) for j in jobs))
        return [r.json() for r in responses]
    for texts, rows in zip(jobs, asyncio.run(run())):
        assert cosines(np.array(rows), np.stack([want[t] for t in texts])).min() >= 0.99999


def test_metrics_count_requests_queue_and_batches(server):
    url, _ = server
    httpx.post(f"{url}/embed", json={"inputs": ["x", "y"]})
    httpx.post(f"{url}/embed", json={"inputs": [1]})
    text = httpx.get(f"{url}/metrics").text
    assert 'bort_serve_requests_total{route="/embed",status="200"}' in text
    assert 'bort_serve_requests_total{route="/embed",status="422"}' in text
    assert "bort_serve_queued_texts 0.0" in text
    for name in ("bort_serve_batch_tokens_bucket", "bort_serve_batch_texts_bucket", "bort_serve_batch_seconds_bucket",
                 'bort_serve_request_seconds_bucket{le="0.005",route="/embed"}'):
        assert name in text
