"""Task heads at run time (bort_infer.heads, through Session.predict / rerank / tag / token_logits): result
shapes and order, top_k, activations, input validation, and a clear error for a model of another task."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from bort_infer import Session
from bort_infer.heads import InputTooLongError, TaskMismatchError, activate, entities, prediction_inputs
from bort_infer.model_dir import ModelMetadata

from .conftest import VARIED_TEXTS


def test_predict_gives_every_label_sorted_by_score_when_top_k_is_none(classifier):
    results = classifier.predict(["Hello world.", "Another text"])
    assert len(results) == 2
    for result in results:
        assert sorted(r["label"] for r in result) == ["negative", "neutral", "positive"]
        scores = [r["score"] for r in result]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-6  # softmax


def test_predict_top_k_keeps_the_best_and_a_single_input_gives_its_result_alone(classifier):
    full = classifier.predict("Hello world.")
    assert classifier.predict("Hello world.", top_k=1) == full[:1]
    assert classifier.predict("Hello world.", top_k=10) == full  # more than the labels: all of them


def test_predict_logits_are_what_the_scores_come_from(classifier):
    logits = classifier.predict(VARIED_TEXTS, return_logits=True)
    assert len(logits) == len(VARIED_TEXTS) and all(x.shape == (3,) and x.dtype == np.float32 for x in logits)
    best = classifier.predict(VARIED_TEXTS, top_k=1)
    labels = classifier.metadata.labels
    assert [b[0]["label"] for b in best] == [labels[int(np.argmax(x))] for x in logits]


def test_raw_scores_are_the_logits_sorted_and_labelled(classifier, cross_encoder):
    raw = classifier.predict("Hello world.", raw_scores=True)
    logits = classifier.predict("Hello world.", return_logits=True)
    assert {r["label"]: r["score"] for r in raw} == pytest.approx(
        dict(zip(classifier.metadata.labels, logits.tolist())))
    assert [r["score"] for r in raw] == sorted((r["score"] for r in raw), reverse=True)
    docs = ["a b", "c", "a"]
    ranked = cross_encoder.rerank("a", docs, raw_scores=True)
    pair_logits = [x[0] for x in cross_encoder.predict([("a", d) for d in docs], return_logits=True)]
    assert [r["score"] for r in ranked] == pytest.approx([pair_logits[r["index"]] for r in ranked])


def test_truncate_false_refuses_an_input_over_the_limit_naming_it(classifier, cross_encoder):
    long = "word " * 2000
    with pytest.raises(InputTooLongError, match=r"inputs\[1\] is longer than this model's limit of 512") as err:
        classifier.predict(["short", long], truncate=False)
    assert err.value.index == 1
    with pytest.raises(InputTooLongError, match=r"documents\[0\]"):
        cross_encoder.rerank("q", [long], truncate=False)
    assert len(classifier.predict(["short"], truncate=False)) == 1


def test_predict_rows_do_not_depend_on_batching(classifier):
    texts = VARIED_TEXTS * 3
    one = np.stack(classifier.predict(texts, return_logits=True, batch_size=1))
    many = np.stack(classifier.predict(texts, return_logits=True, batch_size=7, max_tokens=300))
    np.testing.assert_allclose(one, many, atol=1e-5)


@pytest.mark.parametrize("name, activation", [("multi-label", "sigmoid"), ("regression", "none")])
def test_predict_applies_the_models_activation(head_exports, name, activation):
    session = Session(head_exports(name), threads=1)
    assert session.metadata.activation == activation
    logits = session.predict(["Hello world."], return_logits=True)[0]
    result = session.predict("Hello world.")
    by_label = {r["label"]: r["score"] for r in result}
    expected = activate(logits, activation)
    for label, value in zip(session.metadata.labels, expected):
        assert by_label[label] == pytest.approx(value, abs=1e-6)


def test_predict_takes_text_pairs(head_exports):
    session = Session(head_exports("pair-classifier"), threads=1)
    assert "token_type_ids" in session.metadata.inputs and not session.metadata.pairs
    out = session.predict([("A man plays.", "Someone is playing."), "just one text", ["a", ""]])
    assert [len(r) for r in out] == [3, 3, 3]
    # the segment matters: swapping the texts changes the logits
    ab, ba = session.predict([("A man plays.", "Someone is playing."), ("Someone is playing.", "A man plays.")],
                             return_logits=True)
    assert not np.allclose(ab, ba)


def test_rerank_sorts_documents_by_score(cross_encoder):
    docs = ["We flew from Oslo to New York City.", "Alice met Bob in Paris last May.", "nothing at all", ""]
    ranked = cross_encoder.rerank("Alice met Bob in Paris last May.", docs, return_documents=True)
    assert sorted(r["index"] for r in ranked) == [0, 1, 2, 3]
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)  # sigmoid
    assert all(r["document"] == docs[r["index"]] for r in ranked)
    top = cross_encoder.rerank("Alice met Bob in Paris last May.", docs, top_k=2)
    assert top == [{k: r[k] for k in ("index", "score")} for r in ranked[:2]]
    pairs = [("Alice met Bob in Paris last May.", d) for d in docs]
    direct = cross_encoder.predict(pairs)
    assert [d[0]["score"] for d in direct] == pytest.approx([dict((r["index"], r["score"]) for r in ranked)[i]
                                                             for i in range(4)], abs=1e-6)


def test_rerank_of_no_documents_is_empty(cross_encoder):
    assert cross_encoder.rerank("query", []) == []


def test_a_cross_encoder_refuses_single_texts(cross_encoder):
    with pytest.raises(TypeError, match="cross-encoder"):
        cross_encoder.predict(["only one text"])


@pytest.mark.parametrize("bad, message", [
    (None, "inputs must be"), (3, "inputs must be"), ([("a", 1)], r"inputs\[0\]\[1\] is int"),
    ([("a", "b", "c")], "a tuple of 3 items"), ([5], r"inputs\[0\] is int"),
])
def test_predict_inputs_are_validated(classifier, bad, message):
    with pytest.raises(TypeError, match=message):
        classifier.predict(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "top_k"), ({"batch_size": 0}, "batch_size"), ({"return_logits": "yes"}, "return_logits"),
    ({"max_tokens": -1}, "max_tokens"),
])
def test_predict_options_are_validated(classifier, kwargs, message):
    with pytest.raises(ValueError, match=message):
        classifier.predict("text", **kwargs)


def test_each_method_names_the_models_task_when_it_does_not_fit(classifier, tagger, session):
    with pytest.raises(TaskMismatchError, match="predict\\(\\) needs a model of task 'sequence-classification'; "
                                                "this model's task is 'embedding' \\(serve it with encode\\(\\)"):
        session.predict("text")
    with pytest.raises(TaskMismatchError, match="task is 'sequence-classification'.*predict"):
        classifier.encode("text")
    with pytest.raises(TaskMismatchError, match="tag\\(\\) needs a model of task 'token-classification'"):
        classifier.tag("text")
    with pytest.raises(TaskMismatchError, match="rerank\\(\\) needs a model with one score"):
        classifier.rerank("q", ["d"])
    with pytest.raises(TaskMismatchError, match="task is 'token-classification'.*tag\\(\\)"):
        tagger.predict("text")
    with pytest.raises(TaskMismatchError, match="forward"):
        tagger.forward(np.ones((1, 3), np.int64), np.ones((1, 3), np.int64))


def test_tag_finds_capitalised_words_with_their_character_spans(tagger):
    text = "Alice met Bob in Paris last May."
    found = tagger.tag(text)
    assert found, "the fine-tuned tagger finds entities"
    for e in found:
        assert set(e) == {"entity_group", "score", "word", "start", "end"}
        assert e["entity_group"] == "CAP" and 0 < e["score"] <= 1
        assert text[e["start"]:e["end"]] == e["word"].strip()  # byte-level BPE decodes to the text itself
    assert tagger.tag([text, "", "no capitals"])[0] == found


def test_tag_gives_nothing_for_an_empty_text(tagger):
    assert tagger.tag("") == []


LONG_TAGGED = "Alice met Bob in Paris last May. " * 90  # ~800 tokens, past tiny-bort's 512


def test_tag_reads_a_text_past_the_limit_whole_with_offsets_into_it(tagger):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is truncated
        found = tagger.tag(LONG_TAGGED)
    whole = len(tagger._untruncated_tokenizer().encode(LONG_TAGGED).ids)
    assert whole > tagger.metadata.max_length
    for e in found:
        assert LONG_TAGGED[e["start"]:e["end"]] == e["word"].strip()
    truncated_at = tagger.tokenize([LONG_TAGGED])[0].offsets[-2][1]
    assert any(e["start"] > truncated_at for e in found), "entities past the old truncation point"
    assert any(e["start"] >= len(LONG_TAGGED) - 34 for e in found), "entities in the last sentence"
    assert tagger.tag([LONG_TAGGED, "Alice"])[0] == found


def test_token_logits_of_a_long_text_give_every_token_one_row_from_its_most_central_window(tagger):
    stride = 64
    logits = tagger.token_logits(LONG_TAGGED, stride=stride)
    whole = tagger._untruncated_tokenizer().encode(LONG_TAGGED)
    assert logits.shape == (len(whole.ids), 3) and np.isfinite(logits).all()
    # The first window is the text's first (max_length - 2) tokens: the prefix ending at its last token reads
    # exactly that window, and the tokens the first window owns (up to half the overlap before its cut) match.
    window = tagger.metadata.max_length - 2
    prefix = LONG_TAGGED[:whole.offsets[window][1]]
    assert tagger.tokenize([prefix])[0].ids == whole.ids[:window + 1] + [whole.ids[-1]]
    owned = window - stride // 2
    np.testing.assert_allclose(logits[:1 + owned], tagger.token_logits(prefix)[:1 + owned], atol=1e-5)
    assert not np.allclose(logits[window], tagger.token_logits(prefix)[window], atol=1e-5), \
        "a token by the first window's cut takes its row from the next window"
    with pytest.raises(ValueError, match="stride 600 must be smaller than the model's window of 510"):
        tagger.tag(LONG_TAGGED, stride=600)


def test_token_logits_cover_every_token(tagger):
    texts = ["Alice met Bob.", ""]
    logits = tagger.token_logits(texts)
    assert [x.shape for x in logits] == [(len(e.ids), 3) for e in tagger.tokenize(texts)]
    assert logits[1].shape == (2, 3)  # [CLS] [SEP]


def _meta(labels):
    return ModelMetadata(architecture="x", hidden_size=4, num_layers=1, num_heads=1, max_length=8, pooling="cls",
                         normalize=False, precision="fp32", pad_token_id=0, task="token-classification",
                         labels=tuple(labels), activation="softmax")


class _Encoding:
    def __init__(self, ids, offsets, special):
        self.ids, self.offsets, self.special_tokens_mask = ids, offsets, special


class _Decoder:
    unk_id = 99

    def token(self, token_id):
        return {1: "New", 2: "York", 3: "##er", 4: "is", 5: "big"}[token_id]

    def join(self, tokens):
        return " ".join(tokens).replace(" ##", "")


def test_entities_merge_as_transformers_simple_aggregation():
    text = "New Yorker is big ?"
    labels = ["O", "B-LOC", "I-LOC"]
    enc = _Encoding([0, 1, 2, 3, 4, 99, 5, 0], [(0, 0), (0, 3), (4, 8), (8, 10), (11, 13), (18, 19), (14, 17),
                                                (0, 0)], [1, 0, 0, 0, 0, 0, 0, 1])
    best = [0, 1, 2, 2, 0, 1, 1, 0]  # [CLS] B I I O B(unk) B [SEP]
    logits = np.full((8, 3), -5.0)
    logits[np.arange(8), best] = 5.0
    got = entities(text, enc, logits, labels, _Decoder())
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
        ("LOC", "New Yorker", 0, 10), ("LOC", "?", 18, 19), ("LOC", "big", 14, 17)]  # B starts a new entity
    assert got[0]["score"] == pytest.approx(float(activate(logits[1], "softmax")[1]))


def test_activation_values():
    x = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(activate(x, "softmax").sum(), 1.0)
    np.testing.assert_allclose(activate(np.array([0.0]), "sigmoid"), [0.5])
    np.testing.assert_allclose(activate(x, "none"), x)


def test_a_pair_is_one_input_and_a_list_is_a_batch():
    assert prediction_inputs(("a", "b"), False) == ([("a", "b")], True)
    assert prediction_inputs([("a", "b"), ["c", "d"], "e"], False) == ([("a", "b"), ("c", "d"), "e"], False)
    assert prediction_inputs("a", False) == (["a"], True)
    assert prediction_inputs(iter(["a", "b"]), False) == (["a", "b"], False)
