"""`bort-infer predict MODEL INPUT OUT` (bort_infer.cli.predict): JSON Lines in input order for a classifier,
a cross-encoder (TEXT<tab>TEXT lines) and a tagger; errors name what is wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bort_infer import Session
from bort_infer.cli import main as cli

from ..conftest import write_lines


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predict_writes_one_result_per_line(head_exports, tmp_path, capsys):
    model = head_exports("classifier")
    texts = ["Hello world.", "", "Ünïcödé têxt"]
    out = tmp_path / "out.jsonl"
    assert cli.main(["predict", str(model), str(write_lines(tmp_path / "in.txt", texts)), str(out),
                     "--top-k", "2", "--batch-size", "2"]) == 0
    assert _lines(out) == Session(model).predict(texts, top_k=2)
    assert "wrote 3 sequence-classification results" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl.partial").exists()
    assert cli.main(["predict", str(model), str(tmp_path / "in.txt"), str(tmp_path / "logits.jsonl"),
                     "--logits"]) == 0
    np.testing.assert_allclose(_lines(tmp_path / "logits.jsonl"), Session(model).predict(texts, return_logits=True),
                               atol=1e-6)


def test_predict_reads_pairs_for_a_cross_encoder(head_exports, tmp_path):
    model = head_exports("cross-encoder")
    src = write_lines(tmp_path / "in.txt", ["a query\ta document", "same\tsame", "empty second\t"])
    assert cli.main(["predict", str(model), str(src), str(tmp_path / "out.jsonl")]) == 0
    expected = Session(model).predict([("a query", "a document"), ("same", "same"), ("empty second", "")])
    assert _lines(tmp_path / "out.jsonl") == expected
    write_lines(tmp_path / "bad.txt", ["no tab here"])
    assert cli.main(["predict", str(model), str(tmp_path / "bad.txt"), str(tmp_path / "o2.jsonl")]) == 2
    assert not (tmp_path / "o2.jsonl").exists() and not (tmp_path / "o2.jsonl.partial").exists()


def test_predict_tags_with_a_token_model(head_exports, tmp_path):
    model = head_exports("tagger")
    texts = ["Alice met Bob in Paris.", "no entities"]
    src = write_lines(tmp_path / "in.txt", texts)
    assert cli.main(["predict", str(model), str(src), str(tmp_path / "out.jsonl")]) == 0
    assert _lines(tmp_path / "out.jsonl") == Session(model).tag(texts)


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "2"], "apply to a sequence-classification model"),
])
def test_predict_refuses_options_of_another_task(head_exports, tmp_path, capsys, extra, message):
    src = write_lines(tmp_path / "in.txt", ["x"])
    assert cli.main(["predict", str(head_exports("tagger")), str(src), str(tmp_path / "o.jsonl"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_predict_on_an_embedding_model_points_to_encode(model, tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["x"])
    assert cli.main(["predict", str(model), str(src), str(tmp_path / "o.jsonl")]) == 2
    assert "is an embedding model (task 'embedding'): use `bort-infer encode`" in capsys.readouterr().err


def test_predict_will_not_replace_an_output_unasked(head_exports, tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["x"])
    (tmp_path / "o.jsonl").write_text("keep")
    assert cli.main(["predict", str(head_exports("classifier")), str(src), str(tmp_path / "o.jsonl")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (tmp_path / "o.jsonl").read_text() == "keep"
