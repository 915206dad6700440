"""Task heads at export (bort_infer.export.heads): the head is detected from the checkpoint, appended to the
packed graph, and the exported model's logits equal transformers' (max |diff| <= 1e-4 in fp32) on varied
inputs, pairs with an empty second text and inputs past the length limit among them; predict / rerank / tag
give what transformers' pipelines and sentence-transformers' CrossEncoder give."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from bort_infer import Session
from bort_infer.export.export import export_model
from bort_infer.export.heads import detect_task

from ..conftest import VARIED_TEXTS

PARITY_ATOL = 1e-4
# Pairs for the pair models: empty second (and first) texts, one past the limit, unicode.
PAIRS = [(a, b) for a, b in zip(VARIED_TEXTS, reversed(VARIED_TEXTS))] + [
    ("A man is playing a guitar.", ""), ("", "Nothing before me."), ("", ""),
    ("Who wrote Moby-Dick?", "Herman Melville wrote it in 1851. " * 120), ("word " * 700, "short"),
]


def _transformers_logits(checkpoint, inputs, task):
    """transformers end to end: its own tokenizer (truncation to the model's limit), one input at a time. A pair
    goes in as a batch of one, as sentence-transformers' CrossEncoder sends it: a single-call tokenizer(text, "")
    drops an empty second text (no second [SEP]); a batch keeps the pair, as tokenizers and bort-infer do."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, BertForTokenClassification

    tok = AutoTokenizer.from_pretrained(checkpoint)
    cls = BertForSequenceClassification if task == "sequence-classification" else BertForTokenClassification
    model = cls.from_pretrained(checkpoint, attn_implementation="eager").eval()
    out = []
    with torch.inference_mode():
        for x in inputs:
            enc = tok(*([t] for t in (x if isinstance(x, tuple) else (x,))), truncation=True, return_tensors="pt")
            logits = model(**enc).logits[0].numpy()
            out.append(logits)
    return out


def _session_logits(session, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of the long inputs is the point
        if session.metadata.task == "sequence-classification":
            return session.predict(inputs, return_logits=True, batch_size=8)
        return session.token_logits(inputs, batch_size=8)


@pytest.mark.parametrize("name, inputs", [
    ("classifier", VARIED_TEXTS), ("multi-label", VARIED_TEXTS), ("regression", VARIED_TEXTS),
    ("classifier", PAIRS), ("pair-classifier", VARIED_TEXTS + PAIRS), ("cross-encoder", PAIRS),
    ("tokens", VARIED_TEXTS), ("tagger", VARIED_TEXTS),
])
def test_fp32_logits_equal_transformers(head_checkpoints, head_exports, name, inputs):
    assert len(inputs) >= 20
    session = Session(head_exports(name), threads=1)
    got = _session_logits(session, inputs)
    ref = _transformers_logits(head_checkpoints(name), inputs, session.metadata.task)
    if session.metadata.task == "token-classification":
        # A text past the model's limit is read whole, as overlapping windows (test_session's tag tests); the
        # transformers reference truncates it, so only texts within the limit are compared row for row.
        longer = [i for i, (g, r) in enumerate(zip(got, ref)) if g.shape != r.shape]
        assert all(got[i].shape[0] > ref[i].shape[0] == session.metadata.max_length for i in longer)
        got, ref = [g for i, g in enumerate(got) if i not in longer], [r for i, r in enumerate(ref) if i not in longer]
        assert len(got) >= 20
    assert [g.shape for g in got] == [r.shape for r in ref]
    worst = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    assert worst <= PARITY_ATOL
    recorded = json.loads((head_exports(name) / "bort_infer.json").read_text())["source"]["parity_vs_pytorch"]
    assert recorded["max_abs_logit_diff"] <= PARITY_ATOL


@pytest.mark.parametrize("name", ["classifier", "multi-label", "pair-classifier"])
def test_predict_equals_the_text_classification_pipeline_with_top_k_none(head_checkpoints, head_exports, name):
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(head_checkpoints(name)), top_k=None, device="cpu")
    session = Session(head_exports(name), threads=1)
    texts = [t for t in VARIED_TEXTS if len(t) < 1000]
    for got, ref in zip(session.predict(texts), pipe(texts)):
        assert [g["label"] for g in got] == [r["label"] for r in ref]
        np.testing.assert_allclose([g["score"] for g in got], [r["score"] for r in ref], atol=1e-5)


def test_cross_encoder_scores_and_ranking_equal_sentence_transformers(head_checkpoints, head_exports):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(head_checkpoints("cross-encoder")), device="cpu")
    session = Session(head_exports("cross-encoder"), threads=1)
    assert session.metadata.pairs and session.metadata.activation == "sigmoid"
    ours = [r[0]["score"] for r in _predict_quietly(session, PAIRS)]
    np.testing.assert_allclose(ours, ce.predict(PAIRS), atol=1e-5)
    query, docs = "Alice met Bob in Paris last May.", [t for t in VARIED_TEXTS if t] + ["Alice met Bob in Paris."]
    ranked = session.rerank(query, docs, top_k=5)
    reference = ce.rank(query, docs, top_k=5)
    assert [r["index"] for r in ranked] == [r["corpus_id"] for r in reference]
    np.testing.assert_allclose([r["score"] for r in ranked], [r["score"] for r in reference], atol=1e-5)


def _predict_quietly(session, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return session.predict(inputs)


@pytest.mark.parametrize("name", ["tagger", "tokens"])
def test_tag_equals_the_token_classification_pipeline_with_simple_aggregation(head_checkpoints, head_exports, name):
    from transformers import pipeline

    pipe = pipeline("token-classification", model=str(head_checkpoints(name)), aggregation_strategy="simple",
                    device="cpu")
    session = Session(head_exports(name), threads=1)
    texts = [t for t in VARIED_TEXTS if len(t) < 1000] + ["Alice met Bob in Paris last May.",
                                                          "We flew from Oslo to New York City."]
    for text, got, ref in zip(texts, session.tag(texts), pipe(texts)):
        assert [(g["entity_group"], g["word"], g["start"], g["end"]) for g in got] == [
            (r["entity_group"], r["word"], r["start"], r["end"]) for r in ref], text
        np.testing.assert_allclose([g["score"] for g in got], [float(r["score"]) for r in ref], atol=1e-5)


def test_the_graph_reads_the_cls_row_or_every_row(head_exports):
    import onnx

    sequence = onnx.load(str(head_exports("pair-classifier") / "model.onnx"))
    assert [o.name for o in sequence.graph.output] == ["logits"]
    assert [i.name for i in sequence.graph.input][-1] == "token_type_ids"
    assert [n.op_type for n in sequence.graph.node][-3:] == ["Gemm", "Tanh", "Gemm"]  # pooler, classifier
    tokens = onnx.load(str(head_exports("tokens") / "model.onnx"))
    assert [i.name for i in tokens.graph.input] == ["input_ids", "position_ids", "cu_seqlens", "query_rows"]
    assert [n.op_type for n in tokens.graph.node][-1] == "Gemm"


def _config_dir(tmp_path, config, st_config=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if st_config is not None:
        (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return tmp_path


SEQ = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}


@pytest.mark.parametrize("config, st_config, expected", [
    ({**SEQ, "id2label": {"0": "neg", "1": "pos"}}, None, ("single_label_classification", "softmax", False)),
    ({**SEQ, "id2label": {"0": "a", "1": "b"}, "problem_type": "multi_label_classification"}, None,
     ("multi_label_classification", "sigmoid", False)),
    ({**SEQ, "id2label": {"0": "LABEL_0"}}, None, ("regression", "none", False)),
    ({**SEQ, "id2label": {"0": "LABEL_0"}}, {"model_type": "CrossEncoder",
                                             "activation_fn": "torch.nn.modules.activation.Sigmoid"},
     ("regression", "sigmoid", True)),
    ({**SEQ, "id2label": {"0": "LABEL_0"}, "sentence_transformers": {
        "activation_fn": "torch.nn.modules.linear.Identity"}}, None, ("regression", "none", True)),
    ({**SEQ, "id2label": {"0": "LABEL_0"}, "sbert_ce_default_activation_function":
      "torch.nn.modules.activation.Sigmoid"}, None, ("regression", "sigmoid", True)),
    ({**SEQ, "id2label": {"0": "x", "1": "y", "2": "z"}}, {"model_type": "CrossEncoder"},
     ("single_label_classification", "none", True)),  # sentence-transformers' default for several labels
])
def test_the_task_comes_from_the_checkpoint_config(tmp_path, config, st_config, expected):
    spec = detect_task(_config_dir(tmp_path, config, st_config), config)
    assert spec.task == "sequence-classification"
    assert (spec.problem_type, spec.activation, spec.pairs) == expected


def test_a_token_head_and_an_override(tmp_path):
    config = {"architectures": ["BertForTokenClassification"], "model_type": "bert",
              "id2label": {"1": "B-X", "0": "O"}}
    spec = detect_task(_config_dir(tmp_path, config), config)
    assert (spec.task, spec.labels, spec.activation) == ("token-classification", ("O", "B-X"), "softmax")
    assert detect_task(tmp_path, config, "embedding").task == "embedding"
    assert detect_task(tmp_path, {"architectures": ["BertModel"]}).task == "embedding"


@pytest.mark.parametrize("config, st_config, message", [
    ({"architectures": ["BertForTokenClassification"], "id2label": {"0": "O"}}, None, "at least two labels"),
    ({**SEQ, "id2label": {"0": "a", "2": "b"}}, None, "ids must be 0..n-1"),
    ({**SEQ, "id2label": {"0": "a"}}, {"model_type": "CrossEncoder", "activation_fn": "my.Custom"},
     "activation 'my.Custom' is not supported"),
    ({**SEQ, "problem_type": "ranking", "id2label": {"0": "a", "1": "b"}}, None, "unknown problem_type"),
])
def test_a_head_that_cannot_be_served_is_named(tmp_path, config, st_config, message):
    with pytest.raises(ValueError, match=message):
        detect_task(_config_dir(tmp_path, config, st_config), config)
    with pytest.raises(ValueError, match="unknown task"):
        detect_task(tmp_path, config, "summarization")


def test_a_head_needs_the_packed_graph(head_checkpoints, tmp_path):
    for options in ({"form": "padded"}, {"custom_ops": False}):
        with pytest.raises(ValueError, match="packed graph"):
            export_model(str(head_checkpoints("classifier")), tmp_path / "out", **options)


def test_task_override_exports_the_encoder_of_a_head_checkpoint(head_checkpoints, tmp_path, exports):
    src = tmp_path / "src"
    shutil.copytree(head_checkpoints("classifier"), src)
    meta = export_model(str(src), tmp_path / "out", task="embedding")
    assert meta.task == "embedding" and meta.output == "last_hidden_state"
    # the classifier was made on tiny-bort's encoder weights: the same vectors
    np.testing.assert_allclose(Session(tmp_path / "out").encode(VARIED_TEXTS[:5]),
                               Session(exports("tiny-bort")).encode(VARIED_TEXTS[:5]), atol=1e-5)
