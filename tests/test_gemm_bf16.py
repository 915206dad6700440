"""bf16 GEMM (csrc/gemm_bf16*): the fp32 → bf16 rounding, the packed weights, and every kernel path the CPU
runs (scalar, AVX2+FMA, AVX512-BF16; AMX-BF16 where present) against a numpy emulation of the specified
arithmetic: one fp32 accumulator per output, k in pairs, odd element first, each step rounded once.
The scalar, AVX2 and AVX512-BF16 paths must give exactly those bits; AMX accumulates in its own order and
must stay within the bound of reordering an fp32 sum."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_kernels import FAST, C


def _paths() -> dict[str, str]:
    """bf16 path → the lowest kernel level that selects it."""
    paths: dict[str, str] = {}
    try:
        for level in C.supported_isas():
            C.set_isa(level)
            paths.setdefault(C.bf16_path(), level)
    finally:
        C.set_isa("auto")
    return paths


PATHS = _paths()
EXACT_PATHS = [p for p in ("scalar", "avx2", "avx512_bf16") if p in PATHS]


class use_path:
    """Context manager running the bf16 GEMM on one path, restoring the automatic choice afterwards."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        C.set_isa(PATHS[self.path])
        assert C.bf16_path() == self.path

    def __exit__(self, *exc):
        C.set_isa("auto")


# ---------------------------------------------------------------------------------------------- references

def bf16_bits(x) -> np.ndarray:
    """Round to nearest even; NaN → quiet NaN with sign and top payload; fp32 subnormals → signed zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    out = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    subnormal = (u & 0x7F800000) == 0
    out[subnormal] = ((u[subnormal] >> 16) & 0x8000).astype(np.uint16)
    return out


def bits_to_float(bits) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def flush_subnormal_bits(bits: np.ndarray) -> np.ndarray:
    bits = np.array(bits, dtype=np.uint16)
    sub = (bits & 0x7F80) == 0
    bits[sub] &= 0x8000
    return bits


def ref_gemm(a_bits: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    """The specified arithmetic in numpy float32: a bf16 product is exact in float32, so each `acc + a * b`
    rounds once, as the FMA / vdpbf16ps step does."""
    a, w = bits_to_float(a_bits), bits_to_float(w_bits)
    m, k = a.shape
    n = w.shape[1]
    if k % 2:
        a = np.concatenate([a, np.zeros((m, 1), np.float32)], axis=1)
        w = np.concatenate([w, np.zeros((1, n), np.float32)], axis=0)
    acc = np.zeros((m, n), np.float32)
    for p in range(a.shape[1] // 2):
        acc = acc + np.outer(a[:, 2 * p + 1], w[2 * p + 1])
        acc = acc + np.outer(a[:, 2 * p], w[2 * p])
    return acc


def reorder_bound(a_bits: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    """|difference| allowed between two summation orders of the same fp32 dot products: 2 K u sum |a b|."""
    a, w = bits_to_float(a_bits).astype(np.float64), bits_to_float(w_bits).astype(np.float64)
    return 2 * max(a.shape[1], 1) * 2.0**-24 * (np.abs(a) @ np.abs(w))


def random_case(rng, m: int, k: int, n: int, scale: float = 1.0):
    a = (rng.standard_normal((m, k)) * scale).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    return a, w


def same_bits(got: np.ndarray, ref: np.ndarray) -> bool:
    return got.shape == ref.shape and np.array_equal(got.view(np.uint32), ref.view(np.uint32))


# ---------------------------------------------------------------------------------------------- rounding

SPECIAL_FLOATS = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 1.17549435e-38,
                           3.4028235e38, -3.4028235e38, 1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-20, 65504.0],
                          dtype=np.float32)


@pytest.mark.parametrize("path", list(PATHS))
def test_float_to_bf16_rounds_to_nearest_even_on_every_path(path):
    rng = np.random.default_rng(1)
    random_bits = rng.integers(0, 2**32, size=4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # Ties (low 16 bits exactly 0x8000) in both parities, and payload-carrying NaNs.
    ties = (rng.integers(0, 2**16, size=64, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    nans = (np.uint32(0x7F800001) + rng.integers(0, 2**22, size=16, dtype=np.uint32)).view(np.float32)
    for x in (SPECIAL_FLOATS, random_bits, ties, nans, np.zeros(0, np.float32)):
        with use_path(path):
            got = C.float_to_bf16(x)
        assert got.dtype == np.uint16 and got.shape == x.shape
        assert np.array_equal(got, bf16_bits(x))


def test_float_to_bf16_examples():
    got = C.float_to_bf16(np.array([1.0, 1.00390625, 1.01171875, 1e-40, -1e-40, np.inf], np.float32))
    # 1 + 2^-8 is a tie and rounds to even (1.0); 1 + 3 * 2^-8 is a tie and rounds up to 1 + 2^-6.
    assert got.tolist() == [0x3F80, 0x3F80, 0x3F82, 0x0000, 0x8000, 0x7F80]
    assert np.isnan(bits_to_float(C.float_to_bf16(np.array([np.nan], np.float32))))[0]
    assert C.float_to_bf16(np.ones((2, 3), np.float64)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------- packing

@pytest.mark.parametrize("k, n", [(0, 0), (0, 5), (5, 0), (1, 1), (7, 33), (64, 64), (65, 130), (1024, 768)])
def test_packed_weights_round_trip(k, n):
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed = C.PackedBf16Weights(w)
    assert (packed.k, packed.n) == (k, n)
    assert np.array_equal(packed.unpack(), bf16_bits(w))
    # From bf16 bits: the same values, subnormal bf16 stored as signed zero (as the bf16 instructions read them).
    bits = rng.integers(0, 2**16, size=(k, n), dtype=np.uint32).astype(np.uint16)
    assert np.array_equal(C.PackedBf16Weights(bits).unpack(), flush_subnormal_bits(bits))
    # Pair rows padded to 16 (32 k), columns to 16.
    assert packed.nbytes >= 2 * (-(-k // 32) * 32) * (-(-n // 16) * 16)


@pytest.mark.parametrize("weight, match", [
    (np.zeros(4, np.float32), r"\[K, N\]"),
    (np.zeros((2, 3, 4), np.float32), r"\[K, N\]"),
    (np.array([["a"]]), "real numeric"),
])
def test_packed_weights_reject_bad_input(weight, match):
    with pytest.raises(ValueError, match=match):
        C.PackedBf16Weights(weight)


# ---------------------------------------------------------------------------------------------- GEMM

SHAPES = [(0, 8, 16), (1, 1, 1), (1, 7, 33), (2, 2, 15), (3, 17, 70), (5, 31, 16), (6, 64, 64), (7, 33, 65),
          (13, 64, 130), (17, 1, 200), (1, 1024, 1024), (8, 768, 1024), (37, 300, 257), (50, 16, 5)]


@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_gemm_bf16_equals_the_specified_arithmetic_bit_for_bit(path, m, k, n):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a, w = random_case(rng, m, k, n)
    ref = ref_gemm(bf16_bits(a), bf16_bits(w))
    packed = C.PackedBf16Weights(w)
    with use_path(path):
        got = C.gemm_bf16(a, packed)
    assert same_bits(got, ref)


@pytest.mark.skipif("amx" not in PATHS, reason="CPU (or OS) without AMX-BF16")
@pytest.mark.parametrize("m, k, n", SHAPES + [(16, 32, 16), (32, 64, 32), (33, 1024, 96), (100, 768, 1024)])
def test_gemm_bf16_amx_within_the_reordering_bound(m, k, n):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a, w = random_case(rng, m, k, n)
    a_bits, w_bits = bf16_bits(a), bf16_bits(w)
    with use_path("amx"):
        got = C.gemm_bf16(a, C.PackedBf16Weights(w))
    ref = ref_gemm(a_bits, w_bits).astype(np.float64)
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= reorder_bound(a_bits, w_bits))


@pytest.mark.parametrize("path", EXACT_PATHS)
@given(m=st.integers(0, 20), k=st.integers(0, 80), n=st.integers(1, 150), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
@FAST
def test_gemm_bf16_random_shapes(path, m, k, n, seed, scale):
    a, w = random_case(np.random.default_rng(seed), m, k, n, scale)
    with use_path(path):
        got = C.gemm_bf16(a, C.PackedBf16Weights(w))
    assert same_bits(got, ref_gemm(bf16_bits(a), bf16_bits(w)))


def test_empty_weights_claiming_huge_dimensions_pack_at_once():
    for shape in [(2**40, 0), (0, 2**40)]:
        packed = C.PackedBf16Weights(np.zeros(shape, np.float32))
        assert (packed.k, packed.n) == shape and packed.unpack().shape == shape


def test_gemm_bf16_with_k_zero_is_zero():
    got = C.gemm_bf16(np.zeros((3, 0), np.float32), C.PackedBf16Weights(np.zeros((0, 20), np.float32)))
    assert got.shape == (3, 20) and not got.any()


@pytest.mark.parametrize("path", list(PATHS))
def test_gemm_bf16_bf16_rows_equal_float_rows(path):
    rng = np.random.default_rng(3)
    a, w = random_case(rng, 9, 45, 70)
    packed = C.PackedBf16Weights(w)
    with use_path(path):
        assert same_bits(C.gemm_bf16(bf16_bits(a), packed), C.gemm_bf16(a, packed))


def test_gemm_bf16_keeps_leading_dimensions_and_accepts_float64():
    rng = np.random.default_rng(4)
    a, w = random_case(rng, 12, 40, 24)
    packed = C.PackedBf16Weights(w)
    flat = C.gemm_bf16(a, packed)
    assert same_bits(C.gemm_bf16(a.reshape(3, 4, 40), packed), flat.reshape(3, 4, 24))
    assert same_bits(C.gemm_bf16(a.astype(np.float64), packed), flat)
    assert same_bits(C.gemm_bf16(np.asfortranarray(a), packed), flat)


def test_gemm_bf16_threads_do_not_change_results():
    rng = np.random.default_rng(5)
    a, w = random_case(rng, 150, 256, 520)
    packed = C.PackedBf16Weights(w)
    before = C.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 8):
            C.set_num_threads(threads)
            results.append(C.gemm_bf16(a, packed))
    finally:
        C.set_num_threads(before)
    assert all(same_bits(r, results[0]) for r in results)


def test_gemm_bf16_subnormal_inputs_read_as_zero():
    # fp32 subnormals round to signed zero; a subnormal bf16 row value is read as zero, as the bf16
    # instructions read it, so every path agrees.
    w = np.ones((4, 16), np.float32)
    packed = C.PackedBf16Weights(w)
    a = np.array([[1e-40, 2.0, -1e-40, 3.0]], np.float32)
    a_bits = np.array([[0x0001, 0x4000, 0x8001, 0x4040]], np.uint16)
    for path in PATHS:
        with use_path(path):
            assert np.array_equal(C.gemm_bf16(a, packed), np.full((1, 16), 5.0, np.float32))
            assert np.array_equal(C.gemm_bf16(a_bits, packed), np.full((1, 16), 5.0, np.float32))


@pytest.mark.parametrize("a, match", [
    (np.zeros((2, 5), np.float32), r"gemm_bf16: a must have shape \[\.\.\., 4\]"),
    (np.zeros(3, np.float32), r"\[\.\.\., 4\]"),
    (np.float32(1.0), r"\[\.\.\., 4\]"),
    (np.array([["a", "b", "c", "d"]]), "float32 rows or uint16"),
])
def test_gemm_bf16_validation(a, match):
    with pytest.raises(ValueError, match=match):
        C.gemm_bf16(a, C.PackedBf16Weights(np.zeros((4, 3), np.float32)))
