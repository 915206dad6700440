"""bort_infer.model_dir: the task fields of bort_infer.json (task, labels, problem_type, activation, pairs)
are checked in one place, each problem named; an embedding model's metadata stays version 1."""
from __future__ import annotations

import json
import shutil

import pytest

from bort_infer.model_dir import ModelDirectoryError, read_metadata


def _copy_with(src, dst, **changes):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bort_infer.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (dst / "bort_infer.json").write_text(json.dumps(meta))
    return dst


def test_a_head_model_records_its_task(head_exports):
    raw = json.loads((head_exports("classifier") / "bort_infer.json").read_text())
    assert raw["format_version"] == 2 and raw["output"] == "logits"
    assert (raw["task"], raw["labels"], raw["problem_type"], raw["activation"], raw["pairs"]) == (
        "sequence-classification", ["negative", "positive", "neutral"], "single_label_classification", "softmax",
        False)
    meta = read_metadata(head_exports("classifier"))
    assert meta.is_head and meta.labels == ("negative", "positive", "neutral")


def test_an_embedding_model_has_no_task_fields_and_stays_version_1(exports):
    raw = json.loads((exports("tiny-bort") / "bort_infer.json").read_text())
    assert raw["format_version"] == 1 and "task" not in raw
    meta = read_metadata(exports("tiny-bort"))
    assert meta.task == "embedding" and not meta.is_head


@pytest.mark.parametrize("changes, message", [
    ({"task": "summarization"}, "task must be one of embedding, sequence-classification, token-classification"),
    ({"labels": []}, "labels must be a non-empty list"),
    ({"labels": ["a", "a", "b"]}, "labels must be distinct"),
    ({"labels": "negative"}, "labels must be a non-empty list"),
    ({"problem_type": "ranking"}, "problem_type must be one of"),
    ({"activation": "relu"}, "activation must be one of softmax, sigmoid, none"),
    ({"labels": ["only"], "activation": "softmax"}, "softmax over a single label"),
    ({"pairs": "yes"}, "pairs must be true or false"),
    ({"output": "last_hidden_state"}, "output is 'logits'"),
    ({"format_version": 1}, "is format_version 2"),
])
def test_bad_task_fields_are_named(head_exports, tmp_path, changes, message):
    d = _copy_with(head_exports("classifier"), tmp_path / "m", **changes)
    with pytest.raises(ModelDirectoryError, match=message):
        read_metadata(d)


def test_a_token_model_must_be_softmax_over_its_labels(head_exports, tmp_path):
    d = _copy_with(head_exports("tokens"), tmp_path / "m", activation="sigmoid")
    with pytest.raises(ModelDirectoryError, match="token-classification model's activation is softmax"):
        read_metadata(d)
    d = _copy_with(head_exports("tokens"), tmp_path / "p", pairs=True)
    with pytest.raises(ModelDirectoryError, match="true only for a sequence-classification model"):
        read_metadata(d)


def test_task_fields_on_an_embedding_model_are_refused(exports, tmp_path):
    d = _copy_with(exports("tiny-bort"), tmp_path / "m", labels=["a", "b"])
    with pytest.raises(ModelDirectoryError, match="an embedding model has no labels"):
        read_metadata(d)
