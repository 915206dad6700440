"""Request bodies checked field by field (errors name the field and index) and response bodies built."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from bort_infer.serve.errors import ApiError
from bort_infer.serve.schemas import (
    Inputs,
    ModelLimits,
    embeddings_body,
    finish_vectors,
    parse_embed,
    parse_embeddings,
    parse_predict,
    parse_rerank,
    rerank_body,
)

MODEL = ModelLimits(name="m", hidden_size=8, max_length=6, vocab_size=100)


def _error(parse, body, max_inputs=4) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse(body, max_inputs=max_inputs, model=MODEL)
    return err.value


class TestEmbeddingsRequest:
    @pytest.mark.parametrize("value, inputs", [
        ("one", Inputs(texts=["one"])), (["a", ""], Inputs(texts=["a", ""])),
        ([0, 5, 2], Inputs(token_ids=[[0, 5, 2]])), ([[0, 2], [0, 7, 2]], Inputs(token_ids=[[0, 2], [0, 7, 2]])),
    ])
    def test_input_forms(self, value, inputs):
        req = parse_embeddings({"input": value, "model": "m"}, max_inputs=4, model=MODEL)
        assert req.inputs == inputs and req.encoding_format == "float" and req.dimensions is None
        assert req.truncate is False

    @pytest.mark.parametrize("body, status, param", [
        ({"input": ["a", 3]}, 422, "input[1]"), ({"input": ["a", None]}, 422, "input[1]"),
        ({"input": []}, 422, "input"), ({"input": ["a"] * 5}, 422, "input"), ({}, 422, "input"),
        ({"input": {"a": 1}}, 422, "input"), ({"input": [[0, 2], "a"]}, 422, "input[1]"),
        ({"input": [[0, 2], [0, 1.5]]}, 422, "input[1][1]"), ({"input": [[0, 2], [0, True]]}, 422, "input[1][1]"),
        ({"input": [0, 100]}, 422, "input[1]"), ({"input": [[0] * 7]}, 422, "input[0]"),
        ({"input": [[]]}, 422, "input[0]"),
        ({"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
        ({"input": "a", "dimensions": 9}, 422, "dimensions"), ({"input": "a", "dimensions": "4"}, 422, "dimensions"),
        ({"input": "a", "truncate": 1}, 422, "truncate"), ({"input": "a", "model": "other"}, 404, "model"),
        ("just a string", 422, "body"),
    ])
    def test_bad_bodies_name_the_field(self, body, status, param):
        err = _error(parse_embeddings, body)
        assert (err.status, err.param) == (status, param)
        assert param.split("[")[0] in err.message or param == "body"

    def test_too_many_inputs_names_the_limit(self):
        assert "at most 4" in _error(parse_embeddings, {"input": ["a"] * 5}).message


class TestEmbedRequest:
    def test_defaults_are_teis(self):
        req = parse_embed({"inputs": "x"}, max_inputs=4, model=MODEL)
        assert req.inputs == Inputs(texts=["x"]) and req.normalize is True and req.truncate is False

    @pytest.mark.parametrize("body, param", [
        ({"inputs": [0, 5]}, "inputs[0]"), ({"inputs": "x", "truncation_direction": "Left"}, "truncation_direction"),
        ({"inputs": "x", "prompt_name": "query"}, "prompt_name"), ({"inputs": "x", "normalize": 0}, "normalize"),
    ])
    def test_bad_bodies_name_the_field(self, body, param):
        assert _error(parse_embed, body).param == param


def test_finish_vectors_cuts_and_renormalizes():
    v = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(finish_vectors(v, normalize=False, dimensions=2), [[0.6, 0.8], [1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(finish_vectors(v, normalize=False), v)
    np.testing.assert_allclose(np.linalg.norm(finish_vectors(v, normalize=True), axis=1), 1.0, atol=1e-6)
    assert finish_vectors(np.zeros((1, 3), np.float32), normalize=True).tolist() == [[0.0, 0.0, 0.0]]


def test_embeddings_body_in_both_formats():
    v = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float32)
    body = embeddings_body(v, encoding_format="base64", model="m", prompt_tokens=7)
    raw = base64.b64decode(body["data"][1]["embedding"])
    assert raw == np.array([0.25, 8.0], dtype="<f4").tobytes()
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and body["model"] == "m"
    floats = embeddings_body(v, encoding_format="float", model="m", prompt_tokens=7)
    assert [d["index"] for d in floats["data"]] == [0, 1] and floats["data"][0]["embedding"].tolist() == [1.5, -2.0]


CLASSIFIER = ModelLimits(name="c", hidden_size=8, max_length=6, vocab_size=100, task="sequence-classification",
                         labels=("a", "b"))
CROSS_ENCODER = ModelLimits(name="x", hidden_size=8, max_length=6, vocab_size=100, task="sequence-classification",
                            labels=("LABEL_0",), pairs=True)


class TestPredictRequest:
    @pytest.mark.parametrize("value, inputs, single", [
        ("t", ["t"], True), (["t"], ["t"], True), (["p", "h"], [("p", "h")], True),
        ([["t"], ["p", "h"]], ["t", ("p", "h")], False), ([["t"]], ["t"], False),
    ])
    def test_teis_input_forms(self, value, inputs, single):
        req = parse_predict({"inputs": value}, max_inputs=4, model=CLASSIFIER)
        assert (req.inputs, req.single, req.raw_scores, req.truncate) == (inputs, single, False, False)

    def test_an_embedding_model_is_424_naming_its_task(self):
        with pytest.raises(ApiError) as err:
            parse_predict({"inputs": "t"}, max_inputs=4, model=MODEL)
        assert err.value.status == 424 and "has task 'embedding'" in err.value.message
        assert err.value.tei_body()["error_type"] == "backend"


class TestRerankRequest:
    def test_fields_and_defaults(self):
        req = parse_rerank({"query": "q", "texts": ["a", "b"], "return_text": True}, max_inputs=4,
                           model=CROSS_ENCODER)
        assert (req.query, req.texts, req.return_text, req.raw_scores, req.truncate) == ("q", ["a", "b"], True,
                                                                                         False, False)

    def test_a_model_of_several_labels_is_424(self):
        with pytest.raises(ApiError) as err:
            parse_rerank({"query": "q", "texts": ["a"]}, max_inputs=4, model=CLASSIFIER)
        assert err.value.status == 424 and "2 labels" in err.value.message

    def test_rerank_body_names_the_document_text(self):
        assert rerank_body([{"index": 1, "score": 0.5, "document": "d"}, {"index": 0, "score": 0.1}]) == [
            {"index": 1, "score": 0.5, "text": "d"}, {"index": 0, "score": 0.1}]
