"""bort-bench's report: the FLOP model behind its FLOP ratios."""
import pytest

from bort_infer.bench.report import gop_per_sequence


def test_flop_model_matches_the_published_figures():
    assert gop_per_sequence("bort", 128) == pytest.approx(6.17, abs=0.01)
    assert gop_per_sequence("bert-large", 128) == pytest.approx(78.9, abs=0.1)
    assert gop_per_sequence("bert-large", 128) / gop_per_sequence("bort", 128) == pytest.approx(12.8, abs=0.05)
