"""bort-bench smoke run: the tiny Bort-shaped and BERT-large-shaped configs, one shape."""
import json
import os
import signal

import pytest

from bort_infer.bench.cli import build_artifacts, gop_per_sequence, main, parse_args


def test_flop_model_matches_the_published_figures():
    assert gop_per_sequence("bort", 128) == pytest.approx(6.17, abs=0.01)
    assert gop_per_sequence("bert-large", 128) == pytest.approx(78.9, abs=0.1)
    assert gop_per_sequence("bert-large", 128) / gop_per_sequence("bort", 128) == pytest.approx(12.8, abs=0.05)


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


def _build_dies_on_the_large_model(model, backend, conn):
    """Stands in for a build the out-of-memory killer ends (runs in bort-bench's build child)."""
    if model == "bert-large":
        os.kill(os.getpid(), signal.SIGKILL)
    conn.send(None if backend == "ort-fp32" else f"{backend} is not installed")


def test_a_build_process_that_dies_skips_its_backend_with_why():
    pairs = [("bort", "ort-fp32"), ("bort", "openvino-fp32"), ("bert-large", "ort-fp32"),
             ("bert-large", "openvino-fp32")]
    skipped = build_artifacts(pairs, build_one=_build_dies_on_the_large_model)
    assert skipped == {
        "openvino-fp32": "openvino-fp32 is not installed",
        "ort-fp32": "its build for bert-large failed: the build process was killed by SIGKILL; most likely the "
                    "kernel's out-of-memory killer"}
