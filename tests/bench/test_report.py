"""bort-bench's report: the FLOP model, per-round ratios, fidelity beside speed, the fastest backend named."""
import pytest

from bort_infer.bench.report import gop_per_sequence, report, speed_ratios, summary_table
from bort_infer.bench.runner import Cell


def test_flop_model_matches_the_published_figures():
    assert gop_per_sequence("bort", 128) == pytest.approx(6.17, abs=0.01)
    assert gop_per_sequence("bert-large", 128) == pytest.approx(78.9, abs=0.1)
    assert gop_per_sequence("bert-large", 128) / gop_per_sequence("bort", 128) == pytest.approx(12.8, abs=0.05)


def _cell(model, backend, ms, rounds=None):
    rounds = rounds or [ms, ms, ms]
    return Cell(model, backend, 1, 128, times_ms=list(rounds), round_ms=list(rounds), warmup_ms=ms)


CELLS = [_cell("bort", "bort-infer-int8", 6.0, [5.0, 6.0, 8.0]), _cell("bert-large", "bort-infer-int8", 60.0,
                                                                       [50.0, 60.0, 64.0]),
         _cell("bort", "openvino-int8", 5.0), _cell("bert-large", "openvino-int8", 45.0),
         _cell("bort", "ort-fp32", 20.0), _cell("bert-large", "ort-fp32", 260.0)]
PRECISION = {"bort-infer-int8": "int8", "openvino-int8": "int8 (rest bf16)", "ort-fp32": "fp32"}
FIDELITY = {"bort-infer-int8": {"bort": {"cosine_mean": 0.99993, "cosine_min": 0.99991, "token_cosine_min": 0.999},
                                "bert-large": {"cosine_mean": 0.9994, "cosine_min": 0.9992, "token_cosine_min": 0.99}},
            "openvino-int8": {"bort": {"cosine_mean": 0.998, "cosine_min": 0.99, "token_cosine_min": 0.98},
                              "bert-large": {"error": "ValueError: shape"}}}


def test_ratios_are_given_of_the_medians_and_round_by_round():
    (r,) = [x for x in speed_ratios(CELLS, "bert-large") if x["backend"] == "bort-infer-int8"]
    assert r["ratio"] == pytest.approx(10.0)
    assert (r["round_ratio_min"], r["round_ratio_median"], r["round_ratio_max"]) == pytest.approx((8.0, 10.0, 10.0))
    assert r["flop_ratio"] == pytest.approx(12.8, abs=0.05)


def test_each_reduced_precision_row_prints_its_fidelity_beside_its_speed():
    text = report(CELLS, {}, "bert-large", precision=PRECISION, fidelity=FIDELITY)
    rows = {tuple(line.split()[:2]): line for line in text.splitlines() if line.startswith(("bort ", "bert-large "))}
    assert rows[("bort", "bort-infer-int8")].rstrip().endswith("6.00      1.50   3  0.99993/0.99991")
    openvino = rows[("bort", "openvino-int8")]
    assert "int8 (rest bf16)" in openvino and "0.99800/0.99000" in openvino
    assert rows[("bert-large", "openvino-int8")].rstrip().endswith("error")
    assert rows[("bort", "ort-fp32")].rstrip().endswith("—")


def test_the_fastest_backend_of_each_cell_is_named_even_when_it_is_a_peer():
    text = report(CELLS, {}, "bert-large", precision=PRECISION, fidelity=FIDELITY)
    assert "bort           b1   s128  openvino-int8 (5.00 ms; next bort-infer-int8 6.00 ms)" in text
    assert "bort           vs openvino-int8      b1   s128  bort-infer-int8  0.83x" in text


def test_backends_measured_in_different_groups_are_marked():
    text = report(CELLS, {}, "bert-large", groups=[["bort-infer-int8", "openvino-int8"], ["ort-fp32"]])
    assert "group 2: ort-fp32" in text
    assert "bort           vs ort-fp32           b1   s128  bort-infer-int8  3.33x*" in text
    assert "bort           vs openvino-int8      b1   s128  bort-infer-int8  0.83x " in text


def test_summary_table_restates_precision_fidelity_speed_and_the_smallest_ratio():
    table = summary_table(CELLS, "bert-large", PRECISION, FIDELITY, shapes=((1, 128),))
    lines = table.splitlines()
    assert lines[0] == ("| backend | precision | fidelity bort | fidelity bert-large | bort b1 s128 | "
                        "bert-large b1 s128 | min bert-large/model |")
    assert "| ort-fp32 | fp32 | — | — | 20.0 | 260.0 | 13.0x (b1 s128) |" in lines
    assert "| **bort-infer-int8** | int8 | 0.99993/0.99991 | 0.99940/0.99920 | 6.0 | 60.0 | 10.0x (b1 s128) |" in lines
