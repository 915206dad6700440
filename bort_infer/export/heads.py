"""Task heads at export: which head a checkpoint has, its weights, and the head appended to the packed graph.

- sequence-classification: BertForSequenceClassification (single- / multi-label, regression) and
  sentence-transformers CrossEncoder directories (a BertForSequenceClassification whose inputs are text
  pairs; the activation from its sentence-transformers config). The head reads each input's first (CLS)
  row: BERT's pooler (dense + tanh) then the classifier. The packed graph's last layer already computes
  only the rows asked for, so with query_rows = each text's first token it runs one row per input.
- token-classification: BertForTokenClassification; the classifier reads every row (query_rows = all).
Both heads stay fp32 (a few thousand weights): int8 covers the encoder. A sequence model whose config has
more than one token type (BERT's segment A / B) gets a token_type_ids input, so pairs carry their segments.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model_dir import EMBEDDING, SEQUENCE_CLASSIFICATION, TASKS, TOKEN_CLASSIFICATION
from .graph_rewrite import OUTPUT

LOGITS = "logits"
TOKEN_TYPE_INPUT = "token_type_ids"
# transformers' head classes for BERT-architecture checkpoints, by config "architectures".
ARCHITECTURE_TASKS = {"BertForSequenceClassification": SEQUENCE_CLASSIFICATION,
                      "BertForTokenClassification": TOKEN_CLASSIFICATION}
# sentence-transformers CrossEncoder activation_fn paths → our activation names.
CROSS_ENCODER_ACTIVATIONS = {"torch.nn.modules.activation.Sigmoid": "sigmoid",
                             "torch.nn.modules.linear.Identity": "none",
                             "torch.nn.modules.activation.Softmax": "softmax"}


@dataclass(frozen=True)
class TaskSpec:
    """What bort_infer.json records about a head (see bort_infer.model_dir)."""

    task: str
    labels: tuple[str, ...] = ()
    problem_type: str | None = None
    activation: str | None = None
    pairs: bool = False

    @property
    def is_head(self) -> bool:
        return self.task != EMBEDDING


def detect_task(directory: Path, config: dict, override: str | None = None) -> TaskSpec:
    """The checkpoint's task from its config's architectures (or `override`), with labels, problem type,
    activation and whether it is a cross-encoder."""
    if override is not None and override not in TASKS:
        raise ValueError(f"unknown task {override!r}; choose one of {', '.join(TASKS)}")
    architecture = (config.get("architectures") or ["BertModel"])[0]
    task = override or ARCHITECTURE_TASKS.get(architecture, EMBEDDING)
    if task == EMBEDDING:
        return TaskSpec(EMBEDDING)
    labels = _labels(directory, config)
    if task == TOKEN_CLASSIFICATION:
        if len(labels) < 2:
            raise ValueError(f"{directory}: a token-classification head needs at least two labels, the config "
                             f"has {len(labels)}")
        return TaskSpec(task, labels, "single_label_classification", "softmax")
    cross_encoder = _cross_encoder_activation(directory, config, len(labels))
    if cross_encoder is not None:
        problem_type = "regression" if len(labels) == 1 else "single_label_classification"
        return TaskSpec(task, labels, problem_type, cross_encoder, pairs=True)
    problem_type = config.get("problem_type") or ("regression" if len(labels) == 1 else "single_label_classification")
    if problem_type == "regression":
        activation = "none"  # the value is the prediction (transformers' pipeline would squash a 1-label one)
    elif problem_type == "multi_label_classification":
        activation = "sigmoid"
    elif problem_type == "single_label_classification":
        activation = "softmax" if len(labels) > 1 else "sigmoid"
    else:
        raise ValueError(f"{directory / 'config.json'}: unknown problem_type {problem_type!r}")
    return TaskSpec(task, labels, problem_type, activation)


def _labels(directory: Path, config: dict) -> tuple[str, ...]:
    id2label = config.get("id2label")
    if id2label is None:
        count = int(config.get("num_labels", 2))
        return tuple(f"LABEL_{i}" for i in range(count))
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, ValueError):
        raise ValueError(f"{directory / 'config.json'}: id2label must map label ids to names") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"{directory / 'config.json'}: id2label ids must be 0..n-1, got {sorted(by_id)}")
    labels = tuple(by_id[i] for i in range(len(by_id)))
    if len(set(labels)) != len(labels):
        raise ValueError(f"{directory / 'config.json'}: id2label names must be distinct, got {labels}")
    return labels


def _cross_encoder_activation(directory: Path, config: dict, num_labels: int) -> str | None:
    """The activation of a sentence-transformers CrossEncoder directory (v5: config_sentence_transformers.json;
    v4: config.json's "sentence_transformers"; older: sbert_ce_default_activation_function), else None."""
    path = None
    st_file = directory / "config_sentence_transformers.json"
    st = json.loads(st_file.read_text()) if st_file.is_file() else {}
    if st.get("model_type") == "CrossEncoder":
        path = st.get("activation_fn", "default")
    elif isinstance(config.get("sentence_transformers"), dict):
        path = config["sentence_transformers"].get("activation_fn", "default")
    elif config.get("sbert_ce_default_activation_function"):
        path = config["sbert_ce_default_activation_function"]
    if path is None:
        return None
    if path == "default":  # sentence-transformers' own default
        return "sigmoid" if num_labels == 1 else "none"
    if path not in CROSS_ENCODER_ACTIVATIONS:
        raise ValueError(f"{directory}: CrossEncoder activation {path!r} is not supported "
                         f"({', '.join(CROSS_ENCODER_ACTIVATIONS)})")
    return CROSS_ENCODER_ACTIVATIONS[path]


# ---------------------------------------------------------------------------------------------- weights

@dataclass
class HeadWeights:
    """A head's weights as numpy, in PyTorch's [out, in] layout."""

    task: str
    classifier: np.ndarray
    classifier_bias: np.ndarray
    pooler: np.ndarray | None = None  # sequence heads: BERT's pooler dense layer (then tanh)
    pooler_bias: np.ndarray | None = None
    token_types: np.ndarray | None = None  # [types, hidden] when the model reads segment ids


def load_head_model(directory: Path, task: str):
    """The checkpoint as transformers' BERT head class of `task`, eval mode, float32, eager attention."""
    from transformers import BertForSequenceClassification, BertForTokenClassification
    from transformers.utils import logging as hf_logging

    cls = BertForSequenceClassification if task == SEQUENCE_CLASSIFICATION else BertForTokenClassification
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = cls.from_pretrained(directory, attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float().eval()


def head_weights(model, task: str) -> HeadWeights:
    def arr(t) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    types = None
    if task == SEQUENCE_CLASSIFICATION and model.config.type_vocab_size > 1:  # only a sequence head reads pairs
        types = arr(model.bert.embeddings.token_type_embeddings.weight)
    weights = HeadWeights(task, arr(model.classifier.weight), arr(model.classifier.bias), token_types=types)
    if task == SEQUENCE_CLASSIFICATION:
        weights.pooler, weights.pooler_bias = arr(model.bert.pooler.dense.weight), arr(model.bert.pooler.dense.bias)
    return weights


# ---------------------------------------------------------------------------------------------- graph

def attach_head(model, head: HeadWeights):
    """The packed encoder graph `model` (output last_hidden_state [queries, hidden]) with `head` appended:
    output logits [queries, labels]; plus a token_type_ids input when the model has segment embeddings.
    Modifies and returns `model`."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if [i.name for i in graph.input][:4] != ["input_ids", "position_ids", "cu_seqlens", "query_rows"]:
        raise ValueError("a task head is attached to the packed graph form only")

    def const(name: str, array: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    if head.token_types is not None:
        # Token type 0's row is already inside the position table (graph_rewrite.recognize); a token of type t
        # adds the difference to it, on the word embedding, before the embeddings' LayerNorm.
        ln = next(n for n in graph.node if n.name == "embeddings/ln")
        delta = const("embeddings.token_type_delta", head.token_types - head.token_types[0])
        gather = helper.make_node("Gather", [delta, TOKEN_TYPE_INPUT], ["embeddings/token_type"],
                                  name="embeddings/token_type")
        summed = helper.make_node("Add", [ln.input[0], "embeddings/token_type"], ["embeddings/word_and_type"],
                                  name="embeddings/word_and_type")
        ln.input[0] = "embeddings/word_and_type"
        at = list(graph.node).index(ln)
        graph.node.insert(at, summed)
        graph.node.insert(at, gather)
        graph.input.append(helper.make_tensor_value_info(TOKEN_TYPE_INPUT, TensorProto.INT64, ["tokens"]))

    x = OUTPUT
    if head.pooler is not None:
        x = _gemm(graph, const, x, head.pooler, head.pooler_bias, "head/pooler")
        graph.node.append(helper.make_node("Tanh", [x], ["head/pooler/tanh"], name="head/pooler/tanh"))
        x = "head/pooler/tanh"
    _gemm(graph, const, x, head.classifier, head.classifier_bias, "head/classifier", output=LOGITS)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["queries", len(head.classifier)]))
    return model


def _gemm(graph, const, x: str, weight: np.ndarray, bias: np.ndarray, name: str, output: str | None = None) -> str:
    from onnx import helper

    out = output or name
    graph.node.append(helper.make_node("Gemm", [x, const(f"{name}.weight", weight), const(f"{name}.bias", bias)],
                                       [out], name=name, transB=1))
    return out


# ---------------------------------------------------------------------------------------------- parity

PARITY_PAIRS = [("A man is playing a guitar.", "A man plays the guitar."), ("a", ""), ("", ""),
                ("Who wrote it?", "The novel was written in 1851 by Herman Melville. " * 40)]


def parity_inputs(texts: list[str], spec: TaskSpec) -> list:
    """What the export checks a head on: the texts, and for a sequence head pairs too (a cross-encoder: pairs
    only), among them empty second texts and one past the length limit."""
    if spec.task != SEQUENCE_CLASSIFICATION:
        return list(texts)
    pairs = PARITY_PAIRS + [(texts[i], texts[-1 - i]) for i in range(len(texts))]
    return pairs if spec.pairs else list(texts) + pairs


def torch_logits(model, tokenizer, inputs: list) -> list[np.ndarray]:
    """PyTorch's logits of each input: [labels] for a sequence head, [tokens, labels] for a token head, with the
    run time's own tokenization (tokenizers, truncation to the model's limit)."""
    import torch

    encodings = tokenizer.encode_batch(inputs)
    seq = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), seq), dtype=np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)], mask[row, :len(e.ids)], types[row, :len(e.ids)] = e.ids, 1, e.type_ids
    with torch.inference_mode():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       token_type_ids=torch.from_numpy(types)).logits.numpy()
    if logits.ndim == 2:
        return list(logits)
    return [logits[row, :len(e.ids)] for row, e in enumerate(encodings)]


def session_logits(session, inputs: list) -> list[np.ndarray]:
    """The run time's logits of each input (as torch_logits gives them)."""
    if session.metadata.task == SEQUENCE_CLASSIFICATION:
        return list(session.predict(inputs, return_logits=True))
    return session.token_logits(inputs)


def max_abs_diff(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(initial=0.0))
               for a, b in zip(got, ref))
