"""Embeddings from int8 or bf16 tables (csrc/embed_layernorm.*): the rows widened to exactly the floats of the
unfused graph (Gather, Cast, Mul for int8; Gather, Cast for bf16), then skip_layernorm's arithmetic, on every ISA
path; indices outside a table are errors naming the op and the input, never reads past it."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_kernels import FAST, ISAS, C, use_isa


def random_tables(rng, vocab: int, positions: int, h: int):
    word = rng.integers(-128, 128, (vocab, h), dtype=np.int8)
    position = rng.integers(-128, 128, (positions, h), dtype=np.int8)
    word_scale = rng.uniform(1e-4, 0.05, vocab).astype(np.float32)
    position_scale = rng.uniform(1e-4, 0.05, positions).astype(np.float32)
    return word, word_scale, position, position_scale


def random_bf16_tables(rng, vocab: int, positions: int, h: int):
    """bf16 bit patterns (uint16) of normal values, zeros, subnormals and signs: widening must keep every one."""
    word = C.float_to_bf16(rng.standard_normal((vocab, h)).astype(np.float32))
    position = C.float_to_bf16(rng.standard_normal((positions, h)).astype(np.float32))
    special = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F], np.uint16)  # +-0, subnormals, +-max
    word.flat[: min(word.size, special.size)] = special[: word.size]
    return word, position


def bf16_floats(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def unfused(ids, pos, word, word_scale, position, position_scale, gamma, beta, eps):
    """The graph the op replaces: each table's rows as float32 products, then SkipLayerNorm (same ISA)."""
    words = word[ids].astype(np.float32) * word_scale[ids][:, None]
    positions = position[pos].astype(np.float32) * position_scale[pos][:, None]
    return C.skip_layernorm(words, positions, gamma, beta, None, eps)


def embedding_op(kind: str, rng, vocab: int, positions: int, h: int):
    """(fused, unfused) for random int8 or bf16 tables: each (ids, pos, gamma, beta, eps) -> float32 [T, h]; unfused
    is the graph the op replaces (each table's rows widened, then SkipLayerNorm on the same ISA)."""
    if kind == "int8":
        word, word_scale, position, position_scale = random_tables(rng, vocab, positions, h)
        return (lambda i, p, g, b, e: C.embed_layernorm_int8(i, p, word, word_scale, position, position_scale, g, b, e),
                lambda i, p, g, b, e: unfused(i, p, word, word_scale, position, position_scale, g, b, e))
    word, position = random_bf16_tables(rng, vocab, positions, h)
    return (lambda i, p, g, b, e: C.embed_layernorm_bf16(i, p, word, position, g, b, e),
            lambda i, p, g, b, e: C.skip_layernorm(bf16_floats(word)[i], bf16_floats(position)[p], g, b, None, e))


@pytest.mark.parametrize("kind", ["int8", "bf16"])
@pytest.mark.parametrize("isa", ISAS)
@given(tokens=st.integers(0, 40), h=st.integers(1, 70), vocab=st.integers(1, 50), seed=st.integers(0, 2**31),
       with_beta=st.booleans())
@FAST
def test_embed_layernorm_equals_the_unfused_graph_bit_for_bit(kind, isa, tokens, h, vocab, seed, with_beta):
    rng = np.random.default_rng(seed)
    fused, reference = embedding_op(kind, rng, vocab, 33, h)
    ids = rng.integers(0, vocab, tokens)
    pos = rng.integers(0, 33, tokens)
    gamma = rng.standard_normal(h).astype(np.float32)
    beta = rng.standard_normal(h).astype(np.float32) if with_beta else None
    with use_isa(isa):
        got, want = fused(ids, pos, gamma, beta, 1e-5), reference(ids, pos, gamma, beta, 1e-5)
    assert got.shape == (tokens, h)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_embed_layernorm_at_bort_width_on_many_threads(kind):
    # Bort's width and a batch's worth of tokens: the rows split over threads, each row computed once, in place.
    rng = np.random.default_rng(3)
    fused, reference = embedding_op(kind, rng, 1000, 512, 1024)
    ids, pos = rng.integers(0, 1000, 700), np.tile(np.arange(350), 2)
    gamma, beta = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    old = C.get_num_threads()
    C.set_num_threads(3)
    try:
        got = fused(ids, pos, gamma, beta, 1e-5)
    finally:
        C.set_num_threads(old)
    np.testing.assert_array_equal(got.view(np.uint32), reference(ids, pos, gamma, beta, 1e-5).view(np.uint32))


@pytest.mark.parametrize("isa", ISAS)
def test_dequantized_rows_are_the_float_products(isa):
    # Every int8 value (and a ragged tail past the vector width) against scales from tiny to huge: one rounded
    # product each, as Cast then Mul.
    q = np.tile(np.arange(-128, 128, dtype=np.int8), 3)[:-5]
    for scale in (1e-30, 3.3e-3, 1.0, 7.25e20, -2.5):
        with use_isa(isa):
            got = C.dequantize_int8_row(q, scale)
        np.testing.assert_array_equal(got.view(np.uint32), (q.astype(np.float32) * np.float32(scale)).view(np.uint32))


@pytest.mark.parametrize("name,index,value,match", [
    ("ids", 2, 10, r"input_ids\[2\] = 10 is not a row of the 10-row table"),
    ("ids", 0, -1, r"input_ids\[0\] = -1 is not a row"),
    ("pos", 1, 4, r"position_ids\[1\] = 4 is not a row of the 4-row table"),
    ("ids", 3, 2**62, r"input_ids\[3\] = 4611686018427387904 is not a row"),
])
def test_an_index_outside_its_table_is_an_error(name, index, value, match):
    rng = np.random.default_rng(0)
    word, word_scale, position, position_scale = random_tables(rng, 10, 4, 8)
    ids, pos = np.zeros(5, np.int64), np.zeros(5, np.int64)
    (ids if name == "ids" else pos)[index] = value
    with pytest.raises(ValueError, match="EmbedLayerNormInt8: " + match):
        C.embed_layernorm_int8(ids, pos, word, word_scale, position, position_scale, np.ones(8, np.float32))
    word, position = random_bf16_tables(rng, 10, 4, 8)
    with pytest.raises(ValueError, match="EmbedLayerNormBf16: " + match):
        C.embed_layernorm_bf16(ids, pos, word, position, np.ones(8, np.float32))


@pytest.mark.parametrize("change,match", [
    (dict(position_ids=np.zeros(4, np.int64)), r"position_ids must have the shape of input_ids \[5\]"),
    (dict(input_ids=np.zeros((1, 5), np.int64), position_ids=np.zeros((1, 5), np.int64)), "input_ids must have rank 1"),
    (dict(word=np.zeros(80, np.int8)), "word must have rank 2"),
    (dict(position=np.zeros((4, 9), np.int8)), r"position must have shape \[P, 8\]"),
    (dict(word_scale=np.ones(9, np.float32)), r"word_scale must have shape \[10\]"),
    (dict(position_scale=np.ones((4, 1), np.float32)), r"position_scale must have shape \[4\]"),
    (dict(gamma=np.ones(7, np.float32)), r"gamma must have shape \[8\]"),
    (dict(beta=np.ones(9, np.float32)), r"beta must have shape \[8\]"),
    (dict(epsilon=float("nan")), "epsilon must be finite"),
    (dict(word=np.zeros((10, 8), np.uint8)), "word must be a int8 array"),
])
def test_embed_layernorm_int8_validation(change, match):
    rng = np.random.default_rng(0)
    word, word_scale, position, position_scale = random_tables(rng, 10, 4, 8)
    args = dict(input_ids=np.zeros(5, np.int64), position_ids=np.zeros(5, np.int64), word=word,
                word_scale=word_scale, position=position, position_scale=position_scale,
                gamma=np.ones(8, np.float32), beta=None, epsilon=1e-5)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        C.embed_layernorm_int8(**args)


@pytest.mark.parametrize("change,match", [
    (dict(position_ids=np.zeros(4, np.int64)), r"EmbedLayerNormBf16: position_ids must have the shape of input_ids"),
    (dict(word=np.zeros(80, np.uint16)), "EmbedLayerNormBf16: word must have rank 2"),
    (dict(position=np.zeros((4, 9), np.uint16)), r"position must have shape \[P, 8\]"),
    (dict(gamma=np.ones(7, np.float32)), r"gamma must have shape \[8\]"),
    (dict(beta=np.ones(9, np.float32)), r"beta must have shape \[8\]"),
    (dict(epsilon=-1.0), "epsilon must be finite and >= 0"),
    (dict(word=np.zeros((10, 8), np.float32)), r"word must be a uint16 \(bf16 bits\) array"),
])
def test_embed_layernorm_bf16_validation(change, match):
    word, position = random_bf16_tables(np.random.default_rng(0), 10, 4, 8)
    args = dict(input_ids=np.zeros(5, np.int64), position_ids=np.zeros(5, np.int64), word=word, position=position,
                gamma=np.ones(8, np.float32), beta=None, epsilon=1e-5)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        C.embed_layernorm_bf16(**args)
