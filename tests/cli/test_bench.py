"""`bort-bench`: a smoke run on the tiny Bort-shaped and BERT-large-shaped configs (one shape), and its
argument checks."""
import json

import pytest

from bort_infer.cli.bench import main, parse_args


def test_quick_smoke_run_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BORT_INFER_CACHE", str(tmp_path / "cache"))
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["--quick", "--models", "tiny-bort,tiny-bert-large", "--threads", "1", "--json", str(out),
                 "--markdown", str(md)]) == 0
    text = capsys.readouterr().out
    assert "Verdict:" in text and "tiny-bort/tiny-bert-large speed-up" in text and "Fastest backend per cell" in text
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 1 and data["machine"]["cpu"] and "isa" in data["machine"]
    backends = {r["backend"] for r in data["results"]}
    assert {"ort-fp32", "torch-fp32", "bort-infer-int8", "bort-infer-bf16", "ort-int8"} <= backends
    for r in data["results"]:
        assert r["batch"] == 1 and r["seq_len"] == 32 and r["rounds"] >= 3 and r["median_ms"] > 0
        assert len(r["round_ms"]) == r["rounds"]
    for backend in backends:  # every reduced-precision backend measured is compared with fp32 on both models
        if backend in ("bort-infer-int8", "bort-infer-bf16", "ort-int8", "ctranslate2-int8", "openvino-int8",
                       "openvino"):
            for model in ("tiny-bort", "tiny-bert-large"):
                fid = data["fidelity"][backend][model]
                assert fid["texts"] > 40 and 0.9 < fid["cosine_min"] <= fid["cosine_mean"] <= 1.0 + 1e-9
    resources = data["run"]["resources"]  # every build and measuring group, with its own process's cost
    assert {u["what"] for u in resources["builds"]} >= {"build tiny-bort checkpoint",
                                                       "build tiny-bert-large plain-fp32"}
    assert len(resources["groups"]) == len(data["groups"])
    for u in resources["builds"] + resources["groups"]:
        assert u["wall_s"] > 0 and 0.05 < u["peak_rss_gib"] < 20
    if "openvino" in backends:
        assert data["precision"]["openvino"] in ("bf16", "f32", "f16")
    assert "bort-bench --quick" in md.read_text() and data["machine"]["cpu"] in md.read_text()


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
