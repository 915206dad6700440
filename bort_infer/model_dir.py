"""The exported model directory: its metadata file, read and validated with run-time dependencies only.

A model directory holds ``model.onnx``, ``tokenizer.json`` and ``bort_infer.json`` (this module's schema).
Every problem with it is reported as a ModelDirectoryError naming the path and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pooling import POOLINGS

METADATA_FILE = "bort_infer.json"
FORMAT_NAME = "bort-infer-model"
FORMAT_VERSION = 1
# A model with a task head is written as version 2: a reader that predates heads must refuse it rather than
# serve its logits as embeddings. Embedding models stay version 1, which every reader understands.
HEAD_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, HEAD_FORMAT_VERSION)
PRECISIONS = ("fp32", "int8", "bf16")
# How an int8 graph on bort-infer's ops runs its linears (bort_infer.export.graph_rewrite emits either).
INT8_GEMMS = ("ours", "mlas")
# How an int8 export scales its linears' weights (bort_infer.export.quantize.quantize_columns says what each means);
# bort_infer.json's fidelity report records it as "int8_weights".
INT8_WEIGHTS = ("full", "pair-safe")
EMBEDDING = "embedding"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TOKEN_CLASSIFICATION = "token-classification"
TASKS = (EMBEDDING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
ACTIVATIONS = ("softmax", "sigmoid", "none")


class ModelDirectoryError(ValueError):
    """A model directory is missing, incomplete, corrupt or of an unsupported version."""


@dataclass(frozen=True)
class ModelMetadata:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    max_length: int
    pooling: str
    normalize: bool
    precision: str
    pad_token_id: int
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "last_hidden_state"
    custom_ops: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    # The same graph in onnxruntime's ORT format (export --ort-format), for mobile and minimal builds.
    ort_file: str | None = None
    # How an int8 graph on bort-infer's ops runs its linears: "ours" (LinearInt8) or "mlas" (MatMulInteger).
    int8_gemm: str | None = None

    # What the graph's output is: "embedding" (token states, pooled by the run time) or a task head's logits.
    task: str = EMBEDDING
    labels: tuple[str, ...] = ()  # id2label, in id order (heads only)
    problem_type: str | None = None  # sequence heads: how the labels relate (transformers' problem_type)
    activation: str | None = None  # heads: logits → scores
    pairs: bool = False  # a cross-encoder: every input is a (text, text) pair

    @property
    def is_head(self) -> bool:
        return self.task != EMBEDDING

    def to_json(self) -> dict[str, Any]:
        optional = {"ort_file": self.ort_file} if self.ort_file else {}
        head = {}
        if self.is_head:
            head = {"task": self.task, "labels": list(self.labels), "problem_type": self.problem_type,
                    "activation": self.activation, "pairs": self.pairs}
        return {
            "format": FORMAT_NAME,
            "format_version": HEAD_FORMAT_VERSION if self.is_head else FORMAT_VERSION,
            **head,
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "precision": self.precision,
            "pad_token_id": self.pad_token_id,
            "onnx_file": self.onnx_file,
            "tokenizer_file": self.tokenizer_file,
            **optional,
            "inputs": list(self.inputs),
            "output": self.output,
            "custom_ops": list(self.custom_ops),
            "versions": dict(self.versions),
            "source": dict(self.source),
            "fidelity": self.fidelity,
            **({"int8_gemm": self.int8_gemm} if self.int8_gemm else {}),
        }

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / METADATA_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


_REQUIRED_INT = ("hidden_size", "num_layers", "num_heads", "max_length", "pad_token_id")
_INT_LIMIT = 2**31 - 1  # far above any real model; keeps numpy and tokenizers from overflowing


def read_metadata(directory: str | Path) -> ModelMetadata:
    """Validate a model directory's layout and metadata; raise ModelDirectoryError naming the problem."""
    d = Path(directory)
    if not d.exists():
        raise ModelDirectoryError(f"model directory {d} does not exist")
    if not d.is_dir():
        raise ModelDirectoryError(f"model path {d} is not a directory")
    meta_path = d / METADATA_FILE
    if not meta_path.is_file():
        present = sorted(p.name for p in d.iterdir())
        hint = " (the directory is empty)" if not present else f" (found: {', '.join(present[:8])})"
        raise ModelDirectoryError(
            f"{d} is not a bort-infer model directory: {METADATA_FILE} is missing{hint}; "
            "create one with `bort-infer export SRC OUT`")
    try:
        raw = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirectoryError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise ModelDirectoryError(f"{meta_path} is not bort-infer metadata (expected \"format\": \"{FORMAT_NAME}\")")
    version = raw.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ModelDirectoryError(
            f"{meta_path} has format_version {version!r}; this bort-infer reads version {FORMAT_VERSION} "
            f"(embedding models) and {HEAD_FORMAT_VERSION} (task heads): re-export the model with this version of "
            "bort-infer")
    for key in _REQUIRED_INT:
        if type(raw.get(key)) is not int or not 0 <= raw[key] <= _INT_LIMIT:
            raise ModelDirectoryError(f"{meta_path}: field {key!r} must be an integer from 0 to {_INT_LIMIT}, "
                                      f"got {raw.get(key)!r}")
    if raw["hidden_size"] < 1 or raw["max_length"] < 2:
        raise ModelDirectoryError(f"{meta_path}: hidden_size must be >= 1 and max_length >= 2")
    if raw.get("pooling") not in POOLINGS:
        raise ModelDirectoryError(f"{meta_path}: pooling must be one of {POOLINGS}, got {raw.get('pooling')!r}")
    if raw.get("precision") not in PRECISIONS:
        raise ModelDirectoryError(f"{meta_path}: precision must be one of {PRECISIONS}, got {raw.get('precision')!r}")
    for key in ("onnx_file", "tokenizer_file", "output", "architecture"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ModelDirectoryError(f"{meta_path}: field {key!r} must be a non-empty string")
    if raw.get("ort_file") is not None and (not isinstance(raw["ort_file"], str) or not raw["ort_file"]):
        raise ModelDirectoryError(f"{meta_path}: field 'ort_file' must be a non-empty string when present")
    for key in ("onnx_file", "tokenizer_file") + (("ort_file",) if raw.get("ort_file") is not None else ()):
        target = d / raw[key]
        if Path(raw[key]).name != raw[key]:
            raise ModelDirectoryError(f"{meta_path}: {key} must be a file name inside the directory, got {raw[key]!r}")
        if not target.is_file():
            raise ModelDirectoryError(f"{d}: {raw[key]} is missing (named by {METADATA_FILE} as {key})")
        if target.stat().st_size == 0:
            raise ModelDirectoryError(f"{target} is empty")
    if not isinstance(raw.get("normalize", False), bool):
        raise ModelDirectoryError(f"{meta_path}: normalize must be true or false, got {raw['normalize']!r}")
    for key in ("versions", "source", "fidelity"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ModelDirectoryError(f"{meta_path}: {key} must be an object or null, got {raw[key]!r}")
    inputs = raw.get("inputs")
    if not isinstance(inputs, list):
        inputs = None
    padded = isinstance(inputs, list) and {"input_ids", "attention_mask"} <= set(inputs)
    packed = isinstance(inputs, list) and {"input_ids", "position_ids", "cu_seqlens", "query_rows"} <= set(inputs)
    if not all(isinstance(i, str) for i in inputs or [None]) or not (padded or packed):
        raise ModelDirectoryError(f"{meta_path}: inputs must list input_ids and attention_mask (padded graph) or "
                                  f"input_ids, position_ids, cu_seqlens and query_rows (packed graph), got {inputs!r}")
    custom_ops = raw.get("custom_ops", [])
    if not isinstance(custom_ops, list) or not all(isinstance(o, str) for o in custom_ops):
        raise ModelDirectoryError(f"{meta_path}: custom_ops must be a list of op names")
    int8_gemm = raw.get("int8_gemm")
    if int8_gemm not in (None, *INT8_GEMMS):
        raise ModelDirectoryError(f"{meta_path}: int8_gemm must be one of {INT8_GEMMS} or null, got {int8_gemm!r}")
    head = _read_head(raw, meta_path, version, packed)
    return ModelMetadata(
        architecture=raw["architecture"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_layers"],
        num_heads=raw["num_heads"],
        max_length=raw["max_length"],
        pooling=raw["pooling"],
        normalize=raw.get("normalize", False),
        precision=raw["precision"],
        pad_token_id=raw["pad_token_id"],
        onnx_file=raw["onnx_file"],
        tokenizer_file=raw["tokenizer_file"],
        inputs=tuple(inputs),
        output=raw["output"],
        custom_ops=tuple(custom_ops),
        versions=dict(raw.get("versions") or {}),
        source=dict(raw.get("source") or {}),
        fidelity=raw.get("fidelity"),
        ort_file=raw.get("ort_file"),
        int8_gemm=int8_gemm,
        **head,
    )


def file_digests(directory: str | Path, skip: Iterable[str | Path] = ()) -> dict[str, str]:
    """SHA-256 of every file under a model directory, keyed by relative POSIX path: what a model is, for
    telling whether it changed. Files are streamed (a large model.onnx is never read whole); ``skip``
    names files to leave out (an output written inside the directory)."""
    d = Path(directory)
    skipped = {os.path.realpath(p) for p in skip}
    digests = {}
    for path in sorted(d.rglob("*")):
        if not path.is_file() or os.path.realpath(path) in skipped:
            continue
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except OSError as exc:
            raise ModelDirectoryError(f"{path}: cannot read this model file: {exc.strerror or exc}") from None
        digests[path.relative_to(d).as_posix()] = h.hexdigest()
    return digests


def _read_head(raw: dict, meta_path: Path, version: int, packed: bool) -> dict[str, Any]:
    """The task fields (see ModelMetadata), checked together: a head needs labels, an activation that fits its
    problem type, and the packed graph its run time reads."""
    task = raw.get("task", EMBEDDING)
    if task not in TASKS:
        raise ModelDirectoryError(f"{meta_path}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == EMBEDDING:
        extra = [k for k in ("labels", "problem_type", "activation") if raw.get(k) is not None]
        if extra or raw.get("pairs"):
            raise ModelDirectoryError(f"{meta_path}: an embedding model has no {', '.join(extra) or 'pairs'} "
                                      "(those describe a task head; is the task missing?)")
        return {}
    if version != HEAD_FORMAT_VERSION:
        raise ModelDirectoryError(f"{meta_path}: a {task} model is format_version {HEAD_FORMAT_VERSION}, "
                                  f"got {version!r}")
    if not packed:
        raise ModelDirectoryError(f"{meta_path}: a {task} model runs on the packed graph (inputs input_ids, "
                                  "position_ids, cu_seqlens, query_rows)")
    labels = raw.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ModelDirectoryError(f"{meta_path}: labels must be a non-empty list of label names (id2label in id "
                                  f"order), got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ModelDirectoryError(f"{meta_path}: labels must be distinct, got {labels!r}")
    problem_type = raw.get("problem_type")
    if task == TOKEN_CLASSIFICATION and problem_type is None:
        problem_type = "single_label_classification"
    if problem_type not in PROBLEM_TYPES:
        raise ModelDirectoryError(f"{meta_path}: problem_type must be one of {', '.join(PROBLEM_TYPES)}, "
                                  f"got {problem_type!r}")
    if task == TOKEN_CLASSIFICATION and problem_type != "single_label_classification":
        raise ModelDirectoryError(f"{meta_path}: a token-classification model is single_label_classification, "
                                  f"got {problem_type!r}")
    activation = raw.get("activation")
    if activation not in ACTIVATIONS:
        raise ModelDirectoryError(f"{meta_path}: activation must be one of {', '.join(ACTIVATIONS)}, "
                                  f"got {activation!r}")
    if task == TOKEN_CLASSIFICATION and activation != "softmax":
        raise ModelDirectoryError(f"{meta_path}: a token-classification model's activation is softmax, "
                                  f"got {activation!r}")
    if activation == "softmax" and len(labels) < 2:
        raise ModelDirectoryError(f"{meta_path}: softmax over a single label is always 1; use sigmoid or none")
    pairs = raw.get("pairs", False)
    if not isinstance(pairs, bool) or (pairs and task != SEQUENCE_CLASSIFICATION):
        raise ModelDirectoryError(f"{meta_path}: pairs must be true or false, and true only for a "
                                  f"sequence-classification model (a cross-encoder), got {pairs!r}")
    if raw.get("output") != "logits":
        raise ModelDirectoryError(f"{meta_path}: a {task} model's output is 'logits', got {raw.get('output')!r}")
    return {"task": task, "labels": tuple(labels), "problem_type": problem_type, "activation": activation,
            "pairs": pairs}
