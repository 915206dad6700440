"""Task heads at run time: what Session.predict, rerank and tag make of a head's logits (numpy only).

- predict: transformers' text-classification pipeline semantics. Scores are the logits through the model's
  activation (softmax for single-label classification, sigmoid for multi-label or a one-logit
  cross-encoder, none for regression), every input gets a list of {label, score} sorted by score, best
  first, holding the top_k best (top_k=None: every label, as the pipeline's ``top_k=None``). Unlike the
  pipeline's legacy default (a bare dict of the best label), the result is always a list.
- rerank: sentence-transformers' CrossEncoder.rank: (query, document) pairs scored by a one-logit model,
  sorted by score (ties keep the documents' order).
- tag: transformers' token-classification pipeline with aggregation_strategy="simple": each real token
  gets its best label (softmax score); consecutive tokens of one entity type merge unless the next one
  begins a new entity ("B-"); the merged entity's score is the mean of its tokens', its word the
  tokenizer's decoding of its tokens, start / end the character offsets in the input text; "O" is dropped.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .model_dir import EMBEDDING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, ModelMetadata

# The methods that serve each task, for the error that names the right one.
METHODS = {EMBEDDING: "encode()", SEQUENCE_CLASSIFICATION: "predict() (and rerank() for a one-score pair model)",
           TOKEN_CLASSIFICATION: "tag()"}
IGNORED_ENTITY = "O"


class TaskMismatchError(ValueError):
    """A Session method was called on a model exported for another task."""


class InputTooLongError(ValueError):
    """An input over the model's limit, with truncation refused (truncate=False); ``index``: its position."""

    def __init__(self, field: str, index: int, limit: int):
        super().__init__(f"{field}[{index}] is longer than this model's limit of {limit} tokens; shorten it or "
                         "allow truncation to keep its first tokens")
        self.field = field
        self.index = index
        self.limit = limit


def refuse_overlong(encodings: list, field: str, limit: int) -> None:
    """InputTooLongError for the first encoding the tokenizer had to cut (its ``overflowing`` is not empty)."""
    for i, e in enumerate(encodings):
        if e.overflowing:
            raise InputTooLongError(field, i, limit)


def check_task(meta: ModelMetadata, wanted: str, method: str) -> None:
    if meta.task != wanted:
        raise TaskMismatchError(f"{method} needs a model of task {wanted!r}; this model's task is {meta.task!r} "
                                f"(serve it with {METHODS[meta.task]})")


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """The model's activation over the last axis of float logits (float64, for stable sorting)."""
    x = np.asarray(logits, dtype=np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "none":
        return x
    raise ValueError(f"unknown activation {activation!r}")


def prediction_inputs(inputs: Any, pairs_required: bool) -> tuple[list[str | tuple[str, str]], bool]:
    """predict()'s inputs as a list of str or (str, str), and whether one input was given (not a list).

    A str or a tuple of two str is one input; any other iterable is a batch of them. A cross-encoder
    (pairs_required) takes pairs only."""
    single = isinstance(inputs, str) or _is_pair(inputs)
    if single:
        items = [inputs]
    elif inputs is None or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs must be a text, a (text, text) pair, or a list of them; got {type(inputs).__name__}")
    else:
        items = list(inputs)
    out: list[str | tuple[str, str]] = []
    for i, item in enumerate(items):
        where = "inputs" if single else f"inputs[{i}]"
        if isinstance(item, str):
            if pairs_required:
                raise TypeError(f"{where} is a single text; this model is a cross-encoder and scores (text, text) "
                                "pairs")
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            first, second = item
            for j, t in enumerate((first, second)):
                if not isinstance(t, str):
                    raise TypeError(f"{where}[{j}] is {type(t).__name__}, expected str")
            out.append((first, second))
        else:
            raise TypeError(f"{where} is {_describe(item)}, expected a str or a (str, str) pair")
    return out, single


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, str) for t in value)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def predictions(logits: np.ndarray, meta: ModelMetadata, top_k: int | None, return_logits: bool,
                raw_scores: bool = False) -> list:
    """Per input: its float32 logits (return_logits) or its labels' {label, score}, best first, top_k of them
    (raw_scores: the score is the logit, not through the model's activation)."""
    if return_logits:
        return [row.astype(np.float32) for row in logits]
    scores = activate(logits, "none" if raw_scores else meta.activation)
    k = len(meta.labels) if top_k is None else min(top_k, len(meta.labels))
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([{"label": meta.labels[j], "score": float(row[j])} for j in order])
    return out


def check_rerank(meta: ModelMetadata) -> None:
    check_task(meta, SEQUENCE_CLASSIFICATION, "rerank()")
    if len(meta.labels) != 1:
        raise TaskMismatchError(f"rerank() needs a model with one score per (query, document) pair (a "
                                f"cross-encoder); this model has {len(meta.labels)} labels "
                                f"({', '.join(meta.labels[:5])}): use predict() on the pairs")


def rerank_documents(documents: Any) -> list[str]:
    if isinstance(documents, str) or documents is None or not isinstance(documents, Iterable):
        raise TypeError(f"documents must be a list of str, got {type(documents).__name__}")
    docs = list(documents)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"documents[{i}] is {type(d).__name__}, expected str")
    return docs


def ranking(logits: np.ndarray, meta: ModelMetadata, documents: Sequence[str], top_k: int | None,
            return_documents: bool, raw_scores: bool = False) -> list[dict]:
    """[{index, score[, document]}] sorted by score, best first (ties: document order), top_k of them
    (raw_scores: the score is the logit, not through the model's activation)."""
    scores = activate(logits[:, 0], "none" if raw_scores else meta.activation)
    order = np.argsort(-scores, kind="stable")[:top_k]
    out = []
    for i in order:
        hit = {"index": int(i), "score": float(scores[i])}
        if return_documents:
            hit["document"] = documents[i]
        out.append(hit)
    return out


class EntityDecoder:
    """What tag() needs from the tokenizer: token strings, the unknown token's id and the decoder that
    joins tokens into a word (transformers' convert_tokens_to_string for a fast tokenizer)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        unk = getattr(tokenizer.model, "unk_token", None)
        self.unk_id = tokenizer.token_to_id(unk) if unk else None
        self._decoder = tokenizer.decoder

    def token(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(token_id)

    def join(self, tokens: list[str]) -> str:
        return self._decoder.decode(tokens) if self._decoder is not None else " ".join(tokens)


def entities(text: str, encoding, logits: np.ndarray, labels: Sequence[str], decoder: EntityDecoder) -> list[dict]:
    """One text's entities from its encoding and its tokens' logits [tokens, labels] (see the module docstring)."""
    scores = activate(logits, "softmax")
    best = scores.argmax(axis=-1)
    tokens = []
    for idx, (token_id, special) in enumerate(zip(encoding.ids, encoding.special_tokens_mask)):
        if special:
            continue
        start, end = encoding.offsets[idx]
        word = text[start:end] if token_id == decoder.unk_id else decoder.token(token_id)
        tokens.append({"entity": labels[best[idx]], "score": float(scores[idx, best[idx]]), "word": word,
                       "start": start, "end": end})
    groups, current = [], []
    for token in tokens:
        if current:
            bi, tag = _bi_tag(token["entity"])
            if tag != _bi_tag(current[-1]["entity"])[1] or bi == "B":
                groups.append(_group(current, decoder))
                current = []
        current.append(token)
    if current:
        groups.append(_group(current, decoder))
    return [g for g in groups if g["entity_group"] != IGNORED_ENTITY]


def _bi_tag(label: str) -> tuple[str, str]:
    """("B" or "I", entity type) of an IOB label; a label without the prefix continues (as transformers reads it)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group(tokens: list[dict], decoder: EntityDecoder) -> dict:
    return {"entity_group": tokens[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean([t["score"] for t in tokens])),
            "word": decoder.join([t["word"] for t in tokens]),
            "start": tokens[0]["start"], "end": tokens[-1]["end"]}
