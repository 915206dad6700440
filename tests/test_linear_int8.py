"""The fused int8 linear layer (csrc/linear_int8.*): bit for bit equal to quantize_rows -> exact integer GEMM
(what MatMulInteger computes) -> dequantize_rows, for every epilogue and input form, on every ISA path."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_gemm_int8 import PATHS, exact
from tests.test_kernels import FAST, C, use_isa


def same_bits(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same_bits(g, w)
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8) if got.dtype == np.float32 else got,
                                  want.view(np.uint8) if want.dtype == np.float32 else want)


class Layer:
    """A random int8 linear layer [K, N] with per-column scales, bias and LayerNorm parameters; its weights any int8
    in [-127, 127] (full) or within +-64 (pair-safe: AVX2 runs them on vpmaddubsw)."""

    def __init__(self, k: int, n: int, seed: int, weights: str = "full"):
        rng = np.random.default_rng(seed)
        bound = 127 if weights == "full" else 64
        self.weight = rng.integers(-bound, bound + 1, (k, n), dtype=np.int8)
        self.scale = (rng.random(n, dtype=np.float32) * 0.02 + 1e-3).astype(np.float32)
        self.bias = rng.standard_normal(n).astype(np.float32)
        self.gamma = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        self.beta = (0.1 * rng.standard_normal(n)).astype(np.float32)
        self.skip_scale = (0.5 + rng.random(n)).astype(np.float32)
        self.packed = C.PackedInt8Weights(self.weight)

    def chain(self, x=None, quantized=None, **kwargs):
        """quantize_rows -> exact GEMM -> dequantize_rows, the three-op form."""
        q, s, z = quantized if quantized is not None else C.quantize_rows(x)
        k, n = self.weight.shape
        acc = exact(q.reshape(int(np.prod(q.shape[:-1])), k), self.weight).reshape(*q.shape[:-1], n)
        return C.dequantize_rows(acc, s, z, self.scale, self.packed.column_sums, **kwargs)

    def fused(self, x=None, quantized=None, **kwargs):
        if quantized is not None:
            q, s, z = quantized
            return C.linear_int8(None, self.packed, self.scale, x_quantized=q, x_scale=s, x_zero_point=z, **kwargs)
        return C.linear_int8(x, self.packed, self.scale, **kwargs)


def activations(rng, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., :3] *= 20  # outlier channels, as real activations have
    return x


EPILOGUES = {
    "plain": lambda L, x: {},
    "bias": lambda L, x: {"bias": L.bias},
    "bias+gelu": lambda L, x: {"bias": L.bias, "activation": "gelu"},
    "gelu+requantize": lambda L, x: {"bias": L.bias, "activation": "gelu", "requantize": True},
    "gelu, requantized only": lambda L, x: {"bias": L.bias, "activation": "gelu", "requantize": True,
                                            "output_float": False},
    "skip+layernorm": lambda L, x: {"bias": L.bias, "skip": x, "gamma": L.gamma, "beta": L.beta, "epsilon": 1e-5},
    "skip+layernorm, skip_scale, requantize": lambda L, x: {
        "bias": L.bias, "skip": x, "gamma": L.gamma, "skip_scale": L.skip_scale, "requantize": True},
}


def skip_for(rng, kwargs, out_shape):
    if "skip" in kwargs:
        kwargs = dict(kwargs, skip=rng.standard_normal(out_shape).astype(np.float32))
    return kwargs


@pytest.mark.parametrize("weights", ["full", "pair-safe"])
@pytest.mark.parametrize("level", PATHS)
@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("rows,k,n", [(1, 64, 64), (7, 67, 33), (40, 130, 200), (200, 96, 80)])
def test_linear_equals_the_three_op_chain(level, epilogue, rows, k, n, weights):
    rng = np.random.default_rng(rows * k + n)
    layer = Layer(k, n, seed=rows, weights=weights)
    x = activations(rng, (rows, k))
    kwargs = skip_for(rng, EPILOGUES[epilogue](layer, x), (rows, n))
    with use_isa(level):
        same_bits(layer.fused(x, **kwargs), layer.chain(x, **kwargs))


@pytest.mark.parametrize("level", PATHS)
@pytest.mark.parametrize("epilogue", ["bias", "skip+layernorm, skip_scale, requantize"])
@pytest.mark.parametrize("k", [96, 128])  # 128: a multiple of 64, rows read in place (not copied) where the path can
def test_linear_takes_rows_already_quantized(level, epilogue, k):
    rng = np.random.default_rng(3)
    layer = Layer(k, 72, seed=3)
    x = activations(rng, (2, 9, k))
    kwargs = skip_for(rng, EPILOGUES[epilogue](layer, x), (2, 9, 72))
    with use_isa(level):
        quantized = C.quantize_rows(x)
        want = layer.chain(quantized=quantized, **kwargs)
        same_bits(layer.fused(quantized=quantized, **kwargs), want)
        same_bits(layer.fused(x, **kwargs), want)  # quantizing inside gives the same rows


@pytest.mark.parametrize("level", PATHS)
@given(rows=st.integers(0, 70), k=st.integers(0, 200), n=st.integers(1, 150), seed=st.integers(0, 2**31),
       epilogue=st.sampled_from(list(EPILOGUES)), weights=st.sampled_from(["full", "pair-safe"]))
@FAST
def test_linear_equals_the_chain_on_random_shapes(level, rows, k, n, seed, epilogue, weights):
    rng = np.random.default_rng(seed)
    layer = Layer(k, n, seed=seed, weights=weights)
    x = activations(rng, (rows, k))
    kwargs = skip_for(rng, EPILOGUES[epilogue](layer, x), (rows, n))
    with use_isa(level):
        same_bits(layer.fused(x, **kwargs), layer.chain(x, **kwargs))


@pytest.mark.parametrize("weights", ["full", "pair-safe"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 5, 60, 250, 1030])
@pytest.mark.parametrize("epilogue", ["bias+gelu", "gelu, requantized only", "skip+layernorm, skip_scale, requantize"])
def test_linear_task_splits_agree(threads, rows, epilogue, weights):
    # Few rows split column panels (then a row pass finishes them), many rows split rows in chunks (on AMX, rows
    # that a row stage finishes: 1030 rows make tasks of several 32-row-aligned chunks and a ragged last one).
    rng = np.random.default_rng(rows)
    layer = Layer(128, 320, seed=rows, weights=weights)
    x = activations(rng, (rows, 128))
    kwargs = skip_for(rng, EPILOGUES[epilogue](layer, x), (rows, 320))
    old = C.get_num_threads()
    C.set_num_threads(threads)
    try:
        same_bits(layer.fused(x, **kwargs), layer.chain(x, **kwargs))
        quantized = C.quantize_rows(x)  # K = 128, a multiple of 64: the kernels read these rows where they are
        same_bits(layer.fused(quantized=quantized, **kwargs), layer.chain(quantized=quantized, **kwargs))
    finally:
        C.set_num_threads(old)


@pytest.mark.parametrize("level", PATHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_streams_outputs_larger_than_the_caches_with_the_same_bits(level, threads):
    # Just past the size from which outputs without a row stage go out with non-temporal stores (where the path
    # has them), with a partial last row.
    rows = C.linear_int8_streamed_output_bytes() // (1024 * 4) + 76
    rng = np.random.default_rng(11)
    layer = Layer(64, 1024, seed=11)
    x = activations(rng, (rows, 64))
    old = C.get_num_threads()
    C.set_num_threads(threads)
    try:
        with use_isa(level):
            same_bits(layer.fused(x, bias=layer.bias), layer.chain(x, bias=layer.bias))
    finally:
        C.set_num_threads(old)


def test_linear_non_finite_inputs_stay_defined():
    layer = Layer(32, 16, seed=0)
    x = activations(np.random.default_rng(0), (4, 32))
    x[0, 0], x[1, 1], x[2, :] = np.nan, np.inf, -np.inf
    for level in C.supported_isas():
        with use_isa(level):
            same_bits(layer.fused(x, bias=layer.bias), layer.chain(x, bias=layer.bias))


def test_linear_empty_rows_and_inputs():
    layer = Layer(0, 8, seed=0)
    y, q, s, z = layer.fused(np.zeros((3, 0), np.float32), bias=layer.bias, requantize=True)
    np.testing.assert_array_equal(y, np.broadcast_to(layer.bias, (3, 8)))
    same_bits((y, q, s, z), layer.chain(np.zeros((3, 0), np.float32), bias=layer.bias, requantize=True))
    layer = Layer(16, 8, seed=0)
    assert layer.fused(np.zeros((0, 16), np.float32)).shape == (0, 8)
    assert layer.fused(np.zeros((2, 0, 16), np.float32)).shape == (2, 0, 8)


@pytest.mark.parametrize("kwargs,match", [
    ({"x": None}, "exactly one input form"),
    ({"x_quantized": np.zeros((2, 16), np.uint8)}, "exactly one input form"),
    ({"x": None, "x_quantized": np.zeros((2, 16), np.uint8)}, "needs x_scale and x_zero_point"),
    ({"x": None, "x_quantized": np.zeros((2, 16), np.uint8), "x_scale": np.ones(3, np.float32),
      "x_zero_point": np.zeros(2, np.uint8)}, r"x_scale must have x_quantized's leading shape \[2\]"),
    ({"x_scale": np.ones(2, np.float32)}, "x_scale and x_zero_point belong to x_quantized"),
    ({"x": np.zeros((2, 15), np.float32)}, "weight has 16 rows but the input rows have 15 values"),
    ({"x": np.zeros((), np.float32)}, "rank >= 1"),
    ({"weight_scale": np.ones(7, np.float32)}, r"weight_scale must have shape \[8\]"),
    ({"bias": np.ones(9, np.float32)}, r"bias must have shape \[8\]"),
    ({"skip": np.zeros((2, 8), np.float32)}, "skip needs gamma"),
    ({"skip": np.zeros((2, 9), np.float32), "gamma": np.ones(8, np.float32)}, "skip must have the shape of the output"),
    ({"gamma": np.ones(8, np.float32)}, "needs skip"),
    ({"skip": np.zeros((2, 8), np.float32), "gamma": np.ones(8, np.float32), "activation": "gelu"},
     "cannot be combined"),
    ({"activation": "relu"}, "activation must be"),
    ({"epsilon": float("nan"), "skip": np.zeros((2, 8), np.float32), "gamma": np.ones(8, np.float32)}, "epsilon"),
    ({"output_float": False}, "no output is requested"),
])
def test_linear_validation(kwargs, match):
    layer = Layer(16, 8, seed=0)
    args = {"x": np.zeros((2, 16), np.float32), "weights": layer.packed, "weight_scale": layer.scale, **kwargs}
    with pytest.raises(ValueError, match=match):
        C.linear_int8(**args)
