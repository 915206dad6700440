"""Request bodies read and checked (OpenAI's /v1/embeddings, TEI's /embed), and response bodies built.

Every check failure is an ApiError whose message names the field and, for a list, the index
(``input[3]``); the routes (bort_infer.serve.app) do the work in between.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ApiError

ENCODING_FORMATS = ("float", "base64")


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
    body = _object(body)
    if "inputs" not in body:
        raise _invalid("inputs is required", "inputs", "missing_field")
    direction = body.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise _invalid(f"truncation_direction {direction!r} is not supported; texts are cut on the right",
                       "truncation_direction")
    if body.get("prompt_name") is not None:
        raise _invalid("prompt_name is not supported by this server", "prompt_name")
    return EmbedRequest(inputs=Inputs(texts=_texts(body["inputs"], "inputs", max_inputs)),
                        normalize=_bool(body, "normalize", True), truncate=_bool(body, "truncate", False))


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
