"""POST /v1/embeddings and GET /v1/models through the official `openai` client against a real server:
vectors equal Session.encode, base64 and dimensions decode as OpenAI's do, usage counts real tokens, and
errors reach the client as its own exception types."""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ..conftest import VARIED_TEXTS
from .conftest import MODEL_NAME, cosines, running_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def _matrix(response) -> np.ndarray:
    """The vectors of a response; the client returns base64 strings as they came when base64 was asked for."""
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str)
                     else d.embedding for d in response.data], dtype=np.float32)


TEXTS = [t for t in VARIED_TEXTS if len(t) < 1000]  # within the model's limit (no truncate flag needed)


def test_the_client_default_base64_gives_what_session_encode_gives(client, session):
    got = _matrix(client.embeddings.create(model=MODEL_NAME, input=TEXTS))
    want = session.encode(TEXTS)
    assert got.shape == want.shape
    assert cosines(got, want).min() >= 0.99999
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_float_encoding_gives_the_same_vectors(client, session):
    got = _matrix(client.embeddings.create(model=MODEL_NAME, input=TEXTS[:6], encoding_format="float"))
    np.testing.assert_allclose(got, session.encode(TEXTS[:6]), atol=1e-5, rtol=1e-4)


def test_base64_is_little_endian_float32_like_openais(server, session):
    import httpx

    url, _ = server
    body = httpx.post(f"{url}/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, session.encode("hello"), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_dimensions_truncates_and_renormalizes(client, session, fmt):
    got = _matrix(client.embeddings.create(model=MODEL_NAME, input=["a cat", "a dog sat"], dimensions=16,
                                           encoding_format=fmt))
    full = session.encode(["a cat", "a dog sat"])[:, :16]
    want = full / np.linalg.norm(full, axis=1, keepdims=True)
    assert got.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_usage_counts_the_real_tokens(client, session):
    texts = ["hello world", "a much longer sentence about a man riding a horse"]
    response = client.embeddings.create(model=MODEL_NAME, input=texts)
    tokens = sum(len(e.ids) for e in session.tokenize(texts))
    assert response.usage.prompt_tokens == tokens == response.usage.total_tokens
    assert response.model == MODEL_NAME


def test_token_ids_as_input_equal_their_text(client, session):
    texts = ["hello world", "two dogs play in the snow"]
    ids = [e.ids for e in session.tokenize(texts)]
    many = _matrix(client.embeddings.create(model=MODEL_NAME, input=ids))
    one = _matrix(client.embeddings.create(model=MODEL_NAME, input=ids[1]))
    want = session.encode(texts)
    np.testing.assert_allclose(many, want, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(one[0], want[1], atol=1e-5, rtol=1e-4)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_concurrent_clients_each_get_their_own_rows(server, session):
    url, _ = server
    rng = np.random.default_rng(7)
    jobs = [[TEXTS[i] for i in rng.integers(0, len(TEXTS), size=rng.integers(1, 9))] for _ in range(48)]
    want = {t: v for t, v in zip(TEXTS, session.encode(TEXTS))}

    def call(texts):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        return texts, _matrix(c.embeddings.create(model=MODEL_NAME, input=texts))
    with ThreadPoolExecutor(16) as pool:
        for texts, got in pool.map(call, jobs):
            assert cosines(got, np.stack([want[t] for t in texts])).min() >= 0.99999


class TestErrors:
    def test_a_non_string_item_is_422_naming_its_index(self, client):
        with pytest.raises(openai.UnprocessableEntityError) as err:
            client.embeddings.create(model=MODEL_NAME, input=["ok", "fine", None])
        assert err.value.body["param"] == "input[2]" and "input[2] must be a string" in err.value.body["message"]

    def test_another_model_name_is_404(self, client):
        with pytest.raises(openai.NotFoundError, match="text-embedding-3-small"):
            client.embeddings.create(model="text-embedding-3-small", input="x")

    def test_a_text_past_the_limit_is_422_unless_truncate(self, client, session):
        texts = ["short", "word " * 2000]
        with pytest.raises(openai.UnprocessableEntityError) as err:
            client.embeddings.create(model=MODEL_NAME, input=texts)
        assert err.value.body["param"] == "input[1]" and err.value.body["code"] == "context_length_exceeded"
        got = _matrix(client.embeddings.create(model=MODEL_NAME, input=texts, extra_body={"truncate": True}))
        with pytest.warns(UserWarning, match="truncated"):
            want = session.encode(texts)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)

    @pytest.mark.parametrize("ids, param", [([[0, 5], [0, 10**7]], "input[1][1]"), ([[0, 5], []], "input[1]"),
                                            ([0, -3], "input[1]")])
    def test_bad_token_ids_are_422_naming_where(self, client, ids, param):
        with pytest.raises(openai.UnprocessableEntityError) as err:
            client.embeddings.create(model=MODEL_NAME, input=ids)
        assert err.value.body["param"] == param

    @pytest.mark.parametrize("dims", [0, 10**6])
    def test_dimensions_out_of_range_is_422(self, client, dims):
        with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
            client.embeddings.create(model=MODEL_NAME, input="x", dimensions=dims)

    def test_too_many_inputs_is_422(self, session):
        with running_server(session, max_input_texts=3) as (url, _):
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.UnprocessableEntityError, match="at most 3"):
                c.embeddings.create(model=MODEL_NAME, input=["a", "b", "c", "d"])

    def test_an_api_key_is_checked(self, session):
        with running_server(session, api_key="s3cret") as (url, _):
            wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                wrong.embeddings.create(model=MODEL_NAME, input="x")
            right = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
            assert len(right.embeddings.create(model=MODEL_NAME, input="x").data) == 1
