"""The u8 x s8 GEMM (csrc/gemm_int8*): weights packed once, every ISA path exactly equal to the integer product
(int32 lanes wrap like onnxruntime's MatMulInteger), on ordinary, edge and hostile shapes, for full-range weights and
for pair-safe ones (no two weights k = 2j, 2j + 1 of one sign past 128 together), which AVX2 runs on vpmaddubsw."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_kernels import FAST, C, use_isa

# The int8 path each kernel level runs, and the lowest level that selects it.
PATH_LEVELS = {"scalar": "scalar", "avx2": "avx2", "avx512_vnni": "avx512_vnni", "amx": "amx"}
PATHS = [pytest.param(level, marks=pytest.mark.skipif(level not in C.supported_isas(),
                                                       reason=f"CPU without {level}"), id=path)
         for path, level in PATH_LEVELS.items()]


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in int64, wrapped to int32 as 32-bit accumulators wrap."""
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


WEIGHTS = ["full", "pair-safe"]


def random_operands(rng, m: int, k: int, n: int, weights: str = "full"):
    """u8 rows and int8 weights: any int8 (full), or within +-64, whose pairs cannot pass 128 (pair-safe)."""
    low, high = (-128, 128) if weights == "full" else (-64, 65)
    return rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(low, high, (k, n), dtype=np.int8)


def expected_path(level: str, weights) -> str:
    path = next(p for p, lv in PATH_LEVELS.items() if lv == level)
    return "avx2_maddubs" if path == "avx2" and weights.saturation_free_pairs else path


def gemm_on(level: str, a: np.ndarray, weights) -> np.ndarray:
    with use_isa(level):
        assert C.int8_gemm_path(weights) == expected_path(level, weights)
        return C.gemm_u8s8(a, weights)


# ----------------------------------------------------------------------------------------------
# Packing

@pytest.mark.parametrize("k,n", [(1, 1), (3, 17), (64, 64), (65, 130), (130, 63), (0, 5), (7, 0), (0, 0)])
def test_packed_weights_read_back_and_sum_columns(k, n):
    b = np.random.default_rng(k * 100 + n).integers(-128, 128, (k, n), dtype=np.int8)
    w = C.PackedInt8Weights(b)
    assert (w.k, w.n) == (k, n)
    assert w.padded_k % 64 == 0 and k <= w.padded_k < k + 64
    np.testing.assert_array_equal(w.unpack(), b)
    np.testing.assert_array_equal(w.column_sums, b.astype(np.int64).sum(axis=0).astype(np.int32))


@pytest.mark.parametrize("pair,free", [
    ((127, 1), True), ((127, 2), False), ((64, 64), True), ((65, 64), False), ((-64, -64), True), ((-65, -64), False),
    ((-128, 0), True), ((-128, -1), False), ((127, -128), True), ((-128, 127), True)])
def test_saturation_free_pairs_is_the_int16_bound_of_255_times_a_pair(pair, free):
    # 255 x 128 = 32640 fits an int16, 255 x 129 = 32895 does not: a pair of one sign may sum to 128, never 129.
    b = np.zeros((6, 20), np.int8)
    b[2:4, 7] = pair  # k = 2, 3: one pair of column 7
    assert C.PackedInt8Weights(b).saturation_free_pairs is free
    b[2:4, 7] = 0
    b[1:3, 7] = pair  # k = 1, 2 are two pairs' halves, each beside a zero: always free
    assert C.PackedInt8Weights(b).saturation_free_pairs


def test_an_odd_k_pairs_its_last_weight_with_a_zero():
    b = np.zeros((5, 3), np.int8)
    b[3:5, 1] = -128  # k = 3 pairs with k = 2, k = 4 with the zero padding: neither pair passes -128
    assert C.PackedInt8Weights(b).saturation_free_pairs
    b[2, 1] = -1  # k = 2, 3: -129
    assert not C.PackedInt8Weights(b).saturation_free_pairs
    assert C.PackedInt8Weights(np.zeros((0, 4), np.int8)).saturation_free_pairs


def test_packed_weights_accept_only_int8_matrices():
    with pytest.raises(ValueError, match="int8"):
        C.PackedInt8Weights(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="rank 2"):
        C.PackedInt8Weights(np.zeros(4, np.int8))
    # A non-contiguous view is packed from its values.
    b = np.arange(64, dtype=np.int8).reshape(8, 8)[:, ::2]
    np.testing.assert_array_equal(C.PackedInt8Weights(b).unpack(), b)


# ----------------------------------------------------------------------------------------------
# Exactness on every path

EDGE_SHAPES = [(m, k, n) for m in (0, 1, 2, 5, 6, 7, 17, 33) for k in (1, 3, 4, 64, 65, 131)
               for n in (1, 15, 16, 17, 64, 65, 130)]


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("level", PATHS)
def test_gemm_is_exact_on_edge_shapes(level, weights):
    rng = np.random.default_rng(1)
    for m, k, n in EDGE_SHAPES:
        a, b = random_operands(rng, m, k, n, weights)
        np.testing.assert_array_equal(gemm_on(level, a, C.PackedInt8Weights(b)), exact(a, b), err_msg=f"{m}x{k}x{n}")


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("level", PATHS)
@given(m=st.integers(0, 80), k=st.integers(0, 300), n=st.integers(0, 200), seed=st.integers(0, 2**31))
@FAST
def test_gemm_is_exact_on_random_shapes(level, weights, m, k, n, seed):
    a, b = random_operands(np.random.default_rng(seed), m, k, n, weights)
    np.testing.assert_array_equal(gemm_on(level, a, C.PackedInt8Weights(b)), exact(a, b))


@pytest.mark.parametrize("level", PATHS)
def test_gemm_extreme_values_do_not_saturate(level):
    # 255 x -128 in every product: an int16 pair sum (vpmaddubsw) would saturate here; int32 lanes must not.
    a = np.full((9, 256), 255, np.uint8)
    b = np.full((256, 48), -128, np.int8)
    b[:, 1::2] = 127
    np.testing.assert_array_equal(gemm_on(level, a, C.PackedInt8Weights(b)), exact(a, b))


@pytest.mark.parametrize("level", PATHS)
@pytest.mark.parametrize("n", [48, 130])
def test_gemm_is_exact_on_pair_safe_weights_at_their_bound(level, n):
    # Every pair of one sign sums to +-128 and every activation is 255 (or 0): the largest int16 pair sums
    # vpmaddubsw can meet on pair-safe weights, 32640 and -32640. 9 rows are blocks of 6, 2 and 1 on AVX2, where a
    # single row meets a whole panel (n = 130: two, then a narrow one) in one kernel.
    b = np.empty((256, n), np.int8)
    b[0::2], b[1::2] = 100, 28
    b[:, 1::3] = np.where(np.arange(256)[:, None] % 2 == 0, -128, 0)
    b[:, 2::3] = np.where(np.arange(256)[:, None] % 2 == 0, -64, -64)
    w = C.PackedInt8Weights(b)
    assert w.saturation_free_pairs
    a = np.full((9, 256), 255, np.uint8)
    a[1, ::3] = 0
    np.testing.assert_array_equal(gemm_on(level, a, w), exact(a, b))


@pytest.mark.parametrize("level", PATHS)
def test_gemm_wraps_like_int32_accumulators(level):
    # K large enough that 255 * -128 * K leaves the int32 range: the result wraps as MatMulInteger's does.
    k = 70_000
    a = np.full((2, k), 255, np.uint8)
    b = np.full((k, 16), -128, np.int8)
    expected = exact(a, b)
    assert (255 * -128 * k) != int(expected[0, 0])  # it did wrap
    np.testing.assert_array_equal(gemm_on(level, a, C.PackedInt8Weights(b)), expected)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("level", PATHS)
def test_gemm_is_exact_when_the_weights_outgrow_a_cache_chunk(level, weights):
    # AMX walks B in chunks of ~1 MB (4 panels at K = 4096): 10 panels (the last narrow) make chunks of 4, 4 and
    # 2, each met by two full row blocks and a partial one.
    a, b = random_operands(np.random.default_rng(7), 70, 4096, 9 * 64 + 17, weights)
    np.testing.assert_array_equal(gemm_on(level, a, C.PackedInt8Weights(b)), exact(a, b))


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("level", PATHS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("m", [1, 8, 47, 48, 130, 300])
def test_gemm_task_splits_agree(level, threads, m, weights):
    # Few rows split the column panels across tasks, many rows split the rows: both give the same numbers.
    a, b = random_operands(np.random.default_rng(m), m, 96, 400, weights)
    w = C.PackedInt8Weights(b)
    old = C.get_num_threads()
    C.set_num_threads(threads)
    try:
        np.testing.assert_array_equal(gemm_on(level, a, w), exact(a, b))
    finally:
        C.set_num_threads(old)


def test_gemm_paths_follow_the_kernel_level_and_the_weights():
    expected = {"scalar": "scalar", "avx2": "avx2", "avx512": "avx2", "avx512_vnni": "avx512_vnni",
                "avx512_bf16": "avx512_vnni", "amx": "amx"}
    full = C.PackedInt8Weights(np.full((4, 4), 127, np.int8))
    pair_safe = C.PackedInt8Weights(np.full((4, 4), 64, np.int8))
    for level in C.supported_isas():
        with use_isa(level):
            assert C.int8_gemm_path() == C.int8_gemm_path(full) == expected[level]
            assert C.int8_gemm_path(pair_safe) == ("avx2_maddubs" if expected[level] == "avx2" else expected[level])


def test_gemm_rejects_bad_operands():
    w = C.PackedInt8Weights(np.zeros((8, 4), np.int8))
    with pytest.raises(ValueError, match=r"a must have shape \[M, 8\]"):
        C.gemm_u8s8(np.zeros((2, 7), np.uint8), w)
    with pytest.raises(ValueError, match="uint8"):
        C.gemm_u8s8(np.zeros((2, 8), np.int8), w)
