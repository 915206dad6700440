"""`bort-bench`: a smoke run on the tiny Bort-shaped and BERT-large-shaped configs (one shape), and its
argument checks."""
import json

import pytest

from bort_infer.cli.bench import main, parse_args


def test_quick_smoke_run_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BORT_INFER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    assert main(["--quick", "--models", "tiny-bort,tiny-bert-large", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Verdict:" in text and "tiny-bort/tiny-bert-large speed-up" in text
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 1
    backends = {r["backend"] for r in data["results"]}
    assert {"ort-fp32", "torch-fp32"} <= backends
    for r in data["results"]:
        assert r["batch"] == 1 and r["seq_len"] == 32 and r["repeats"] >= 3 and r["median_ms"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--backends", "tensorflow"], "unknown backends"),
    (["--seq", "x"], "comma-separated integers"),
    (["--batch", "0"], "batch >= 1"),
    (["--models", "bort-xl"], "unknown model"),
    (["--seq", "1024"], "exceeds bort's 512 positions"),
])
def test_bad_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
