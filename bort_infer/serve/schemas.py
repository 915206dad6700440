"""Request bodies read and checked (OpenAI's /v1/embeddings, TEI's /embed, /predict and /rerank), and response
bodies built.

Every check failure is an ApiError whose message names the field and, for a list, the index
(``input[3]``); the routes (bort_infer.serve.app) do the work in between.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model_dir import EMBEDDING, SEQUENCE_CLASSIFICATION
from .errors import ApiError

ENCODING_FORMATS = ("float", "base64")
# The model task each route serves (a model of another task gets 424, as TEI answers a route its model lacks).
ROUTE_TASKS = {"/v1/embeddings": EMBEDDING, "/embed": EMBEDDING, "/predict": SEQUENCE_CLASSIFICATION,
               "/rerank": SEQUENCE_CLASSIFICATION}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages a client can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(422, message, param=param, code=code)


@dataclass(frozen=True)
class Inputs:
    """What to embed: texts, or token id sequences (each one text's whole model input), never both."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids)


@dataclass(frozen=True)
class ModelLimits:
    """What the served model accepts: used to check token ids and dimensions before any work."""

    name: str
    hidden_size: int
    max_length: int
    vocab_size: int
    task: str = EMBEDDING
    labels: tuple[str, ...] = ()
    pairs: bool = False  # a cross-encoder: scores (text, text) pairs only


@dataclass(frozen=True)
class EmbeddingsRequest:
    """OpenAI's POST /v1/embeddings body. ``truncate`` is an extension (default false: a text past the
    model's limit is an error naming it, as OpenAI's API does)."""

    inputs: Inputs
    encoding_format: str = "float"
    dimensions: int | None = None
    truncate: bool = False


@dataclass(frozen=True)
class EmbedRequest:
    """TEI's POST /embed body: inputs, normalize (default true), truncate (default false)."""

    inputs: Inputs
    normalize: bool = True
    truncate: bool = False


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise _invalid(f"the request body must be a JSON object, got {json_type(body)}", "body", "invalid_type")
    return body


def _bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false, got {json_type(value)}", key, "invalid_type")
    return value


def _check_count(n: int, field: str, max_inputs: int) -> None:
    if n == 0:
        raise _invalid(f"{field} must not be empty", field)
    if n > max_inputs:
        raise _invalid(f"{field} has {n} items; this server takes at most {max_inputs} per request (see "
                       "--max-input-texts)", field, "too_many_inputs")


def _texts(value: Any, field: str, max_inputs: int) -> list[str]:
    """A string or an array of strings; anything else names the offending index."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _invalid(f"{field} must be a string or an array of strings, got {json_type(value)}", field,
                       "invalid_type")
    _check_count(len(value), field, max_inputs)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _invalid(f"{field}[{i}] must be a string, got {json_type(item)}", f"{field}[{i}]", "invalid_type")
    return value


def _token_ids(value: list, field: str, model: ModelLimits) -> list[list[int]]:
    """An array of token ids, or an array of such arrays: each 1..max_length ids in [0, vocab_size)."""
    sequences = [value] if _is_int(value[0]) else value
    single = sequences is not value
    for i, ids in enumerate(sequences):
        where = field if single else f"{field}[{i}]"
        if not isinstance(ids, list):
            raise _invalid(f"{where} must be an array of token ids, got {json_type(ids)} (do not mix strings, "
                           "token ids and arrays of token ids)", where, "invalid_type")
        if not ids:
            raise _invalid(f"{where} holds no token ids", where)
        if len(ids) > model.max_length:
            raise _invalid(f"{where} has {len(ids)} token ids; this model takes at most {model.max_length} "
                           "(token ids are never truncated)", where, "context_length_exceeded")
        for j, t in enumerate(ids):
            if not _is_int(t) or not 0 <= t < model.vocab_size:
                shown = t if _is_int(t) else json_type(t)
                raise _invalid(f"{where}[{j}] = {shown} is not a token id of this model (integers in "
                               f"[0, {model.vocab_size}))", f"{where}[{j}]", "invalid_token_id")
    return sequences


def _inputs(value: Any, field: str, max_inputs: int, model: ModelLimits) -> Inputs:
    if isinstance(value, list) and value and (_is_int(value[0]) or isinstance(value[0], list)):
        sequences = _token_ids(value, field, model)
        _check_count(len(sequences), field, max_inputs)
        return Inputs(token_ids=sequences)
    return Inputs(texts=_texts(value, field, max_inputs))


def parse_embeddings(body: Any, *, max_inputs: int, model: ModelLimits) -> EmbeddingsRequest:
    """OpenAI's embeddings request: input (string, array of strings, array of token ids, or array of such
    arrays), model (must name the served model when given), encoding_format, dimensions, truncate."""
    require_task("/v1/embeddings", model)
    body = _object(body)
    if "input" not in body:
        raise _invalid("input is required", "input", "missing_field")
    name = body.get("model")
    if name is not None and name != model.name:
        raise ApiError(404, f"the model {name!r} is not served here; this server serves {model.name!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")
    fmt = body.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODING_FORMATS:
        raise _invalid(f"encoding_format must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or not 1 <= dims <= model.hidden_size):
        raise _invalid(f"dimensions must be an integer from 1 to {model.hidden_size} (this model's size), "
                       f"got {dims!r}", "dimensions")
    return EmbeddingsRequest(inputs=_inputs(body["input"], "input", max_inputs, model), encoding_format=fmt,
                             dimensions=dims, truncate=_bool(body, "truncate", False))


def parse_embed(body: Any, *, max_inputs: int, model: ModelLimits) -> EmbedRequest:
    """TEI's embed request: inputs (a string or an array of strings), normalize, truncate;
    truncation_direction may only be "right" (the model keeps a text's beginning)."""
    require_task("/embed", model)
    body = _object(body)
    if "inputs" not in body:
        raise _invalid("inputs is required", "inputs", "missing_field")
    truncate = _truncation(body)
    if body.get("prompt_name") is not None:
        raise _invalid("prompt_name is not supported by this server", "prompt_name")
    return EmbedRequest(inputs=Inputs(texts=_texts(body["inputs"], "inputs", max_inputs)),
                        normalize=_bool(body, "normalize", True), truncate=truncate)


@dataclass(frozen=True)
class PredictRequest:
    """TEI's POST /predict body. inputs: each a text or a (text, text) pair; single: one input was sent (not a
    batch), so the answer is one list of predictions."""

    inputs: list[str | tuple[str, str]]
    single: bool
    raw_scores: bool = False
    truncate: bool = False


@dataclass(frozen=True)
class RerankRequest:
    """TEI's POST /rerank body."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False


def require_task(route: str, model: ModelLimits) -> None:
    """424 naming the served model's task when it cannot serve ``route`` (TEI answers so: a failed dependency,
    the model, not the request)."""
    wanted = ROUTE_TASKS[route]
    if model.task != wanted:
        what = {EMBEDDING: "an embedding model", SEQUENCE_CLASSIFICATION: "a sequence-classification model (a "
                "classifier or cross-encoder)"}[wanted]
        raise ApiError(424, f"POST {route} needs {what}; the served model {model.name!r} has task {model.task!r}",
                       param="model", code="unsupported_task")
    if route == "/rerank" and len(model.labels) != 1:
        raise ApiError(424, f"POST /rerank needs a model with one score per (query, text) pair (a cross-encoder); "
                       f"the served model {model.name!r} is a classifier with {len(model.labels)} labels: use "
                       "POST /predict", param="model", code="unsupported_task")


def _truncation(body: dict) -> bool:
    direction = body.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise _invalid(f"truncation_direction {direction!r} is not supported; texts are cut on the right",
                       "truncation_direction")
    return _bool(body, "truncate", False)


_PREDICT_SHAPES = "a string, a pair [string, string], or a batch [[string], [string, string], ...]"


def _sequence(value: Any, where: str, pairs: bool) -> str | tuple[str, str]:
    """One predict input: an array of one string (a text) or two (a pair)."""
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        got = f"an array of {len(value)} items" if isinstance(value, list) else json_type(value)
        raise _invalid(f"{where} must be [string] or [string, string], got {got} (inputs is {_PREDICT_SHAPES})",
                       where, "invalid_type")
    for j, t in enumerate(value):
        if not isinstance(t, str):
            raise _invalid(f"{where}[{j}] must be a string, got {json_type(t)}", f"{where}[{j}]", "invalid_type")
    if len(value) == 1:
        if pairs:
            raise _invalid(f"{where} is a single text; the served model is a cross-encoder and scores [text, "
                           "text] pairs", where, "invalid_type")
        return value[0]
    return value[0], value[1]


def parse_predict(body: Any, *, max_inputs: int, model: ModelLimits) -> PredictRequest:
    """TEI's predict request: inputs (a string, a pair [string, string], or a batch of [string] and
    [string, string]), raw_scores, truncate; truncation_direction may only be "right"."""
    require_task("/predict", model)
    body = _object(body)
    if "inputs" not in body:
        raise _invalid("inputs is required", "inputs", "missing_field")
    value = body["inputs"]
    if isinstance(value, str):
        inputs, single = [_sequence([value], "inputs", model.pairs)], True
    elif isinstance(value, list) and value and not isinstance(value[0], list):
        if len(value) > 2:  # TEI reads an array of strings as one text or one pair, never a batch of texts
            raise _invalid(f"inputs is an array of {len(value)} strings; send {_PREDICT_SHAPES} (a batch of texts "
                           "is [[\"a\"], [\"b\"]])", "inputs", "invalid_type")
        inputs, single = [_sequence(value, "inputs", model.pairs)], True
    elif isinstance(value, list):
        _check_count(len(value), "inputs", max_inputs)
        inputs, single = [_sequence(v, f"inputs[{i}]", model.pairs) for i, v in enumerate(value)], False
    else:
        raise _invalid(f"inputs must be {_PREDICT_SHAPES}; got {json_type(value)}", "inputs", "invalid_type")
    return PredictRequest(inputs=inputs, single=single, raw_scores=_bool(body, "raw_scores", False),
                          truncate=_truncation(body))


def parse_rerank(body: Any, *, max_inputs: int, model: ModelLimits) -> RerankRequest:
    """TEI's rerank request: query (a string), texts (a non-empty array of strings), raw_scores, return_text,
    truncate; truncation_direction may only be "right"."""
    require_task("/rerank", model)
    body = _object(body)
    for key in ("query", "texts"):
        if key not in body:
            raise _invalid(f"{key} is required", key, "missing_field")
    query = body["query"]
    if not isinstance(query, str):
        raise _invalid(f"query must be a string, got {json_type(query)}", "query", "invalid_type")
    texts = body["texts"]
    if not isinstance(texts, list):
        raise _invalid(f"texts must be an array of strings, got {json_type(texts)}", "texts", "invalid_type")
    return RerankRequest(query=query, texts=_texts(texts, "texts", max_inputs),
                         raw_scores=_bool(body, "raw_scores", False), return_text=_bool(body, "return_text", False),
                         truncate=_truncation(body))


def rerank_body(ranking: list[dict]) -> list[dict]:
    """Session.rerank's hits in TEI's shape: {index, score[, text]} (TEI names the document ``text``)."""
    out = []
    for hit in ranking:
        rank = {"index": hit["index"], "score": hit["score"]}
        if "document" in hit:
            rank["text"] = hit["document"]
        out.append(rank)
    return out


def info_body(model: ModelLimits, *, max_input_texts: int, max_batch_tokens: int, version: str) -> dict:
    """TEI's GET /info: the model's id, its type (TEI's model_type: embedding, classifier or reranker, with
    id2label) and this server's limits; ``task`` is bort-infer's name for the model's task."""
    id2label = {str(i): label for i, label in enumerate(model.labels)}
    if model.task == EMBEDDING:
        model_type: dict = {"embedding": {}}
    else:
        kind = ("reranker" if len(model.labels) == 1 else "classifier") if model.task == SEQUENCE_CLASSIFICATION \
            else "token_classifier"
        model_type = {kind: {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}}
    routes = [r for r, task in ROUTE_TASKS.items() if task == model.task
              and (r != "/rerank" or len(model.labels) == 1)]
    return {"model_id": model.name, "model_type": model_type, "task": model.task, "routes": routes,
            "max_input_length": model.max_length, "max_client_batch_size": max_input_texts,
            "max_batch_tokens": max_batch_tokens, "version": version}


def finish_vectors(vectors: np.ndarray, *, normalize: bool, dimensions: int | None = None) -> np.ndarray:
    """Cut to the first ``dimensions`` (Matryoshka style) and L2-normalize when asked or when cut."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
        normalize = True
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embeddings_body(vectors: np.ndarray, *, encoding_format: str, model: str, prompt_tokens: int) -> dict:
    """OpenAI's embeddings response; base64 is the little-endian float32 bytes of each vector."""
    if encoding_format == "base64":
        le = vectors.astype("<f4", copy=False)
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
    else:
        rows = list(vectors)  # numpy rows: serialized by orjson without a Python float per value
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
            "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def models_body(name: str, created: float | None = None) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": int(created or time.time()),
                                        "owned_by": "bort-infer"}]}
