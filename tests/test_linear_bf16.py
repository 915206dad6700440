"""LinearBf16 (csrc/linear_bf16.*): act(x @ W + bias) with x rounded to bf16, bf16 weights, fp32 accumulation
and the bias / exact GELU applied to the accumulators, on every bf16 path the CPU runs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_gemm_bf16 import EXACT_PATHS, PATHS, bf16_bits, random_case, ref_gemm, same_bits, use_path
from tests.test_kernels import C

GELU_TOL = 2e-6  # the vectorised erf (~1e-7) and std::erf against float64, relative to max(1, |y|)


def gelu64(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))


@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("m, k, n", [(0, 4, 4), (1, 9, 17), (6, 64, 64), (13, 100, 130), (31, 256, 96)])
def test_linear_bf16_bias_is_added_to_the_accumulator(path, m, k, n):
    rng = np.random.default_rng(m + k + n)
    x, w = random_case(rng, m, k, n)
    bias = rng.standard_normal(n).astype(np.float32)
    packed = C.PackedBf16Weights(w)
    with use_path(path):
        got = C.linear_bf16(x, packed, bias)
        plain = C.linear_bf16(x, packed)
    ref = ref_gemm(bf16_bits(x), bf16_bits(w))
    assert same_bits(plain, ref)
    assert same_bits(got, ref + bias)  # one float32 rounding, as in the epilogue


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("m, k, n", [(1, 1024, 768), (7, 33, 70), (40, 128, 200)])
def test_linear_bf16_gelu_epilogue(path, with_bias, m, k, n):
    rng = np.random.default_rng(m * k + n)
    x, w = random_case(rng, m, k, n)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    with use_path(path):
        got = C.linear_bf16(x, C.PackedBf16Weights(w), bias, "gelu")
    pre = ref_gemm(bf16_bits(x), bf16_bits(w)) + (bias if with_bias else np.float32(0))
    ref = gelu64(pre)
    tol = GELU_TOL if path != "amx" else 1e-4  # AMX's own summation order moves the pre-activation slightly
    assert np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref))) <= tol


def test_linear_bf16_keeps_leading_dimensions():
    rng = np.random.default_rng(7)
    x, w = random_case(rng, 24, 48, 32)
    bias = rng.standard_normal(32).astype(np.float32)
    packed = C.PackedBf16Weights(w)
    flat = C.linear_bf16(x, packed, bias, "gelu")
    assert same_bits(C.linear_bf16(x.reshape(2, 3, 4, 48), packed, bias, "gelu"), flat.reshape(2, 3, 4, 32))
    assert same_bits(C.linear_bf16(x.astype(np.float64), packed, bias.astype(np.float64), "gelu"), flat)


def test_linear_bf16_non_finite_values_propagate():
    w = np.ones((2, 16), np.float32)
    x = np.array([[np.inf, 1.0], [np.nan, 1.0], [1.0, 1.0]], np.float32)
    got = C.linear_bf16(x, C.PackedBf16Weights(w), np.zeros(16, np.float32))
    assert np.isposinf(got[0]).all() and np.isnan(got[1]).all() and (got[2] == 2.0).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((2, 5), np.float32)), r"LinearBf16: x's last dimension 5 does not match weight \[4, 3\]"),
    (dict(x=np.float32(0.0)), "rank >= 1"),
    (dict(bias=np.zeros(4, np.float32)), r"LinearBf16: bias must have shape \[3\]"),
    (dict(bias=np.zeros((1, 3), np.float32)), r"bias must have shape \[3\]"),
    (dict(activation="relu"), "activation must be 'none' or 'gelu'"),
])
def test_linear_bf16_validation(kwargs, match):
    args = dict(x=np.zeros((2, 4), np.float32), weights=C.PackedBf16Weights(np.zeros((4, 3), np.float32)),
                bias=None, activation="none")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        C.linear_bf16(**args)
