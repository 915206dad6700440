"""TEI's POST /predict and /rerank (and GET /info) through httpx against real servers of exported task heads:
scores equal Session.predict / Session.rerank, ordering and index mapping, limits, and TEI's error shape
(424 naming the model's task when the served model cannot do the route)."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from bort_infer import Session

from ..conftest import VARIED_TEXTS
from .conftest import GatedSession, running_server

TEXTS = [t for t in VARIED_TEXTS if len(t) < 300][:16]
LONG = "word " * 2000


@pytest.fixture(scope="module")
def classifier_url(classifier):
    with running_server(classifier, max_input_texts=16) as (url, _):
        yield url


@pytest.fixture(scope="module")
def cross_encoder_url(cross_encoder):
    with running_server(cross_encoder, max_input_texts=16) as (url, _):
        yield url


def _tei_error(r: httpx.Response, status: int, error_type: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error_type"] == error_type
    return body


class TestPredict:
    def test_a_single_text_gets_every_label_sorted_as_session_predict_gives_them(self, classifier_url, classifier):
        got = httpx.post(f"{classifier_url}/predict", json={"inputs": "Hello world."}).json()
        want = classifier.predict("Hello world.")
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert set(got[0]) == {"score", "label"} and len(got) == len(classifier.metadata.labels)
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], rtol=1e-6)
        assert [p["score"] for p in got] == sorted((p["score"] for p in got), reverse=True)
        assert abs(sum(p["score"] for p in got) - 1) < 1e-6  # softmax

    def test_a_batch_gets_one_list_per_input_in_order(self, classifier_url, classifier):
        got = httpx.post(f"{classifier_url}/predict", json={"inputs": [[t] for t in TEXTS]}).json()
        want = classifier.predict(TEXTS)
        assert len(got) == len(TEXTS)
        for g, w in zip(got, want):
            assert [p["label"] for p in g] == [p["label"] for p in w]
            np.testing.assert_allclose([p["score"] for p in g], [p["score"] for p in w], rtol=1e-5, atol=1e-7)

    def test_raw_scores_are_the_logits(self, classifier_url, classifier):
        got = httpx.post(f"{classifier_url}/predict", json={"inputs": "Hello world.", "raw_scores": True}).json()
        logits = classifier.predict("Hello world.", return_logits=True)
        labels = classifier.metadata.labels
        assert {p["label"]: p["score"] for p in got} == pytest.approx(
            {labels[i]: float(x) for i, x in enumerate(logits)}, rel=1e-5)
        assert [p["score"] for p in got] == sorted((p["score"] for p in got), reverse=True)

    def test_a_cross_encoder_scores_a_pair_and_a_batch_of_pairs(self, cross_encoder_url, cross_encoder):
        pair = ["How do I bake bread?", "Mix flour, water and yeast, then bake."]
        one = httpx.post(f"{cross_encoder_url}/predict", json={"inputs": pair}).json()
        assert one == [{"score": pytest.approx(cross_encoder.predict(tuple(pair))[0]["score"], rel=1e-5),
                        "label": "LABEL_0"}]
        batch = httpx.post(f"{cross_encoder_url}/predict", json={"inputs": [pair, pair[::-1]]}).json()
        want = cross_encoder.predict([tuple(pair), tuple(pair[::-1])])
        assert [b[0]["score"] for b in batch] == pytest.approx([w[0]["score"] for w in want], rel=1e-5)

    def test_a_text_past_the_limit_is_422_naming_its_index_unless_truncate(self, classifier_url, classifier):
        body = _tei_error(httpx.post(f"{classifier_url}/predict", json={"inputs": [["fine"], [LONG]]}), 422,
                          "tokenizer")
        assert body["param"] == "inputs[1]" and "inputs[1] is longer than" in body["error"]
        r = httpx.post(f"{classifier_url}/predict", json={"inputs": [["fine"], [LONG]], "truncate": True})
        assert r.status_code == 200 and len(r.json()) == 2
        body = _tei_error(httpx.post(f"{classifier_url}/predict", json={"inputs": LONG}), 422, "tokenizer")
        assert body["param"] == "inputs"

    @pytest.mark.parametrize("body, param", [
        ({"inputs": []}, "inputs"), ({"inputs": [["a"]] * 17}, "inputs"), ({"inputs": ["a", "b", "c"]}, "inputs"),
        ({"inputs": [["a"], "b"]}, "inputs[1]"), ({"inputs": [["a"], ["b", 2]]}, "inputs[1][1]"),
        ({"inputs": [["a"], []]}, "inputs[1]"), ({"inputs": 3}, "inputs"), ({}, "inputs"),
        ({"inputs": "a", "raw_scores": "yes"}, "raw_scores"), ({"inputs": "a", "truncate": 1}, "truncate"),
        ({"inputs": "a", "truncation_direction": "left"}, "truncation_direction"), ([1], "body"),
    ])
    def test_a_bad_body_is_422_in_teis_error_shape_naming_the_field(self, classifier_url, body, param):
        assert _tei_error(httpx.post(f"{classifier_url}/predict", json=body), 422, "validation")["param"] == param

    def test_a_cross_encoder_refuses_a_single_text(self, cross_encoder_url):
        body = _tei_error(httpx.post(f"{cross_encoder_url}/predict", json={"inputs": [["a", "b"], ["c"]]}), 422,
                          "validation")
        assert body["param"] == "inputs[1]" and "cross-encoder" in body["error"]


class TestRerank:
    DOCS = ["Mix flour, water and yeast, then bake.", "The stock market fell today.", "How do I bake bread?", ""]

    def test_scores_and_order_equal_session_rerank_and_index_maps_to_the_texts(self, cross_encoder_url,
                                                                                cross_encoder):
        query = "How do I bake bread?"
        got = httpx.post(f"{cross_encoder_url}/rerank",
                         json={"query": query, "texts": self.DOCS, "return_text": True}).json()
        want = cross_encoder.rerank(query, self.DOCS)
        assert [g["index"] for g in got] == [w["index"] for w in want]
        assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], rel=1e-5)
        assert [g["score"] for g in got] == sorted((g["score"] for g in got), reverse=True)
        assert all(g["text"] == self.DOCS[g["index"]] for g in got)

    def test_text_is_left_out_unless_asked_and_raw_scores_are_logits(self, cross_encoder_url, cross_encoder):
        query = "How do I bake bread?"
        got = httpx.post(f"{cross_encoder_url}/rerank",
                         json={"query": query, "texts": self.DOCS, "raw_scores": True}).json()
        assert all(set(g) == {"index", "score"} for g in got)
        logits = np.stack(cross_encoder.predict([(query, d) for d in self.DOCS], return_logits=True))[:, 0]
        assert [g["score"] for g in got] == pytest.approx([float(logits[g["index"]]) for g in got], rel=1e-5)

    def test_a_text_past_the_limit_is_422_naming_its_index_unless_truncate(self, cross_encoder_url):
        body = _tei_error(httpx.post(f"{cross_encoder_url}/rerank", json={"query": "q", "texts": ["a", LONG]}),
                          422, "tokenizer")
        assert body["param"] == "texts[1]"
        r = httpx.post(f"{cross_encoder_url}/rerank", json={"query": "q", "texts": ["a", LONG], "truncate": True})
        assert r.status_code == 200 and sorted(g["index"] for g in r.json()) == [0, 1]

    @pytest.mark.parametrize("body, param", [
        ({"query": "q", "texts": []}, "texts"), ({"query": "q", "texts": ["d"] * 17}, "texts"),
        ({"query": "q", "texts": ["d", 1]}, "texts[1]"), ({"query": "q", "texts": "d"}, "texts"),
        ({"query": 1, "texts": ["d"]}, "query"), ({"texts": ["d"]}, "query"), ({"query": "q"}, "texts"),
        ({"query": "q", "texts": ["d"], "return_text": "no"}, "return_text"),
    ])
    def test_a_bad_body_is_422_in_teis_error_shape_naming_the_field(self, cross_encoder_url, body, param):
        assert _tei_error(httpx.post(f"{cross_encoder_url}/rerank", json=body), 422, "validation")["param"] == param


class TestTaskMismatch:
    def test_an_embedding_model_answers_predict_and_rerank_with_424_naming_its_task(self, server):
        url, _ = server
        body = _tei_error(httpx.post(f"{url}/predict", json={"inputs": "a"}), 424, "backend")
        assert "needs a sequence-classification model" in body["error"]
        assert "the served model 'tiny-bort' has task 'embedding'" in body["error"]
        body = _tei_error(httpx.post(f"{url}/rerank", json={"query": "q", "texts": ["d"]}), 424, "backend")
        assert "embedding" in body["error"] and body["code"] == "unsupported_task"

    def test_a_classifier_answers_rerank_and_embed_with_424(self, classifier_url):
        body = _tei_error(httpx.post(f"{classifier_url}/rerank", json={"query": "q", "texts": ["d"]}), 424,
                          "backend")
        assert "3 labels" in body["error"] and "/predict" in body["error"]
        r = httpx.post(f"{classifier_url}/embed", json={"inputs": "a"})
        assert r.status_code == 424 and "sequence-classification" in r.json()["error"]["message"]
        r = httpx.post(f"{classifier_url}/v1/embeddings", json={"input": "a"})
        assert r.status_code == 424 and r.json()["error"]["code"] == "unsupported_task"

    def test_a_tagger_answers_predict_with_424_naming_token_classification(self, head_exports):
        with running_server(Session(head_exports("tagger"), threads=1)) as (url, _):
            body = _tei_error(httpx.post(f"{url}/predict", json={"inputs": "a"}), 424, "backend")
            assert "token-classification" in body["error"]


class TestInfo:
    def test_info_names_the_task_and_the_routes_it_serves(self, classifier_url, cross_encoder_url, server):
        info = httpx.get(f"{classifier_url}/info").json()
        assert info["task"] == "sequence-classification" and info["routes"] == ["/predict"]
        assert info["model_type"]["classifier"]["id2label"] == {"0": "negative", "1": "positive", "2": "neutral"}
        assert info["max_client_batch_size"] == 16
        info = httpx.get(f"{cross_encoder_url}/info").json()
        assert "reranker" in info["model_type"] and info["routes"] == ["/predict", "/rerank"]
        info = httpx.get(f"{server[0]}/info").json()
        assert info["model_type"] == {"embedding": {}} and info["routes"] == ["/v1/embeddings", "/embed"]


class TestSharedLimits:
    def test_predict_is_refused_with_429_in_teis_shape_when_the_queue_is_full(self, classifier):
        gated = GatedSession(classifier)
        calls = []
        real_predict = classifier.predict

        def predict(*args, **kwargs):
            gated.entered.set()
            gated.gate.wait(30)
            calls.append(len(args[0]))
            return real_predict(*args, **kwargs)
        gated.predict = predict
        with running_server(gated, max_queue=4, max_input_texts=4) as (url, _):
            async def scenario():
                async with httpx.AsyncClient() as client:
                    first = asyncio.ensure_future(client.post(f"{url}/predict", json={"inputs": [["a"], ["b"], ["c"]]}))
                    await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 10)
                    refused = await client.post(f"{url}/predict", json={"inputs": [["d"], ["e"]]})
                    gated.gate.set()
                    return await first, refused
            first, refused = asyncio.run(scenario())
        assert first.status_code == 200 and len(first.json()) == 3 and calls == [3]
        body = _tei_error(refused, 429, "overloaded")
        assert refused.headers["Retry-After"].isdigit() and body["code"] == "queue_full"

    def test_predict_and_rerank_are_counted_in_the_metrics(self, cross_encoder_url):
        httpx.post(f"{cross_encoder_url}/rerank", json={"query": "q", "texts": ["d"]})
        text = httpx.get(f"{cross_encoder_url}/metrics").text
        assert 'bort_serve_requests_total{route="/rerank",status="200"}' in text
