"""Kernel level selection (csrc/cpu_dispatch.*): feature queries, the ordered levels, set_isa and the
BORT_INFER_ISA override."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.test_kernels import C

LEVELS = ["scalar", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx"]
FEATURE_OF_LEVEL = {
    "scalar": lambda: True,
    "avx2": C.cpu_has_avx2,
    "avx512": C.cpu_has_avx512,
    "avx512_vnni": C.has_avx512_vnni,
    "avx512_bf16": C.has_avx512_bf16,
    "amx": lambda: C.has_amx_int8() and C.has_amx_bf16(),
}


def test_supported_levels_are_a_prefix_of_the_order_and_auto_picks_the_last():
    supported = C.supported_isas()
    assert supported == LEVELS[: len(supported)]
    assert C.best_isa() == supported[-1]
    C.set_isa("auto")
    assert C.active_isa() == C.best_isa()


def test_each_level_implies_the_features_below_it():
    # Levels are cumulative: a kernel at level L may call any helper of a lower level.
    flags = [FEATURE_OF_LEVEL[name]() for name in LEVELS]
    for lower, higher in zip(flags, flags[1:]):
        assert lower or not higher
    assert not C.has_amx_int8() or C.has_avx512_bf16()


def test_supported_levels_match_the_feature_queries():
    supported = C.supported_isas()
    for name in LEVELS:
        if FEATURE_OF_LEVEL[name]() and all(FEATURE_OF_LEVEL[n]() for n in LEVELS[: LEVELS.index(name)]):
            assert name in supported
        else:
            assert name not in supported


def test_set_isa_rejects_unknown_names_naming_the_accepted_ones():
    for name in ("avx1024", "AVX2", "sse", "amx_int8", ""):
        with pytest.raises(ValueError, match=r"unknown ISA.*scalar\|avx2\|avx512\|avx512_vnni\|avx512_bf16\|amx\|auto"):
            C.set_isa(name)
    C.set_isa("auto")
    assert C.active_isa() == C.best_isa()


@pytest.mark.parametrize("isa", LEVELS)
def test_set_isa_selects_supported_and_refuses_unsupported(isa):
    try:
        if isa in C.supported_isas():
            C.set_isa(isa)
            assert C.active_isa() == isa
        else:
            with pytest.raises(RuntimeError, match="lacks"):
                C.set_isa(isa)
    finally:
        C.set_isa("auto")


def _import_with_isa_env(value: str) -> subprocess.CompletedProcess:
    code = (f"import importlib.util as u; s = u.spec_from_file_location('bort_infer._C', {C.__file__!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.active_isa())")
    env = dict(os.environ, BORT_INFER_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("value", ["scalar", "auto", *LEVELS[1:]])
def test_isa_environment_variable_selects_a_supported_level(value):
    run = _import_with_isa_env(value)
    if value == "auto" or value in C.supported_isas():
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == (C.best_isa() if value == "auto" else value)
    else:
        assert run.returncode != 0
        assert "ImportError" in run.stderr and "lacks" in run.stderr


def test_unknown_isa_environment_value_fails_the_import_naming_the_accepted_ones():
    run = _import_with_isa_env("bogus")
    assert run.returncode != 0
    assert "ImportError" in run.stderr
    assert "BORT_INFER_ISA" in run.stderr and "'bogus'" in run.stderr
    assert "scalar|avx2|avx512|avx512_vnni|avx512_bf16|amx|auto" in run.stderr
