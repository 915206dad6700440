"""What each ai.bort_infer op accepts and computes, restated independently of csrc/shape_checks.* for the fuzzer.

contract(op, inputs, attrs, outputs) raises Invalid (naming why) when the op must refuse the graph, and otherwise
returns an Expected per node output: its shape and dtype, and its values where a reference applies (not for hostile
float values or absurd attributes, whose float32 arithmetic may legitimately differ from float64's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..test_kernels import (
    C,
    layernorm_rounding_allowance,
    ref_attention,
    ref_attention_bf16,
    ref_attention_int8,
    ref_dequantize_epilogue,
    ref_gelu,
    ref_quantize_rows,
    ref_skip_layernorm,
)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
INT32, INT64, UINT8, INT8 = np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint8), np.dtype(np.int8)


@dataclass
class Expected:
    shape: tuple
    dtype: np.dtype
    values: np.ndarray | None = None  # None: shape and dtype only
    how: str = "close"  # "close" (float64 reference, tolerance + allowance), "exact", "requantized" (of values)
    allowance: object = 0.0


class Invalid(Exception):
    """The graph breaks the op's contract: the op must answer with an error naming it."""


class TooLarge(Exception):
    """A valid graph whose outputs cannot be allocated: an error naming the op, or a result, are both acceptable."""


MAX_OUTPUT_BYTES = 1 << 22  # larger outputs: no float64 reference (it would take seconds)


def allocatable(*shapes):
    total = sum(4 * math.prod(shape) for shape in shapes)
    if total > MAX_OUTPUT_BYTES:
        raise TooLarge(f"the outputs would take {total} bytes")


def single_output(outputs):
    expect(len(outputs) == 1 and outputs[0], "the op has exactly one output")


def expect(condition, reason: str):
    if not condition:
        raise Invalid(reason)


# ----------------------------------------------------------------------------------------------
# Attributes: a Python int is an INT attribute, a float a FLOAT, a str a STRING, lists and {"tensor": ...} others.

MISSING = object()


def attribute(attrs: dict, name: str, kind: type, default=MISSING):
    value = attrs.get(name, MISSING)
    if value is MISSING:
        expect(default is not MISSING, f"attribute {name} is required")
        return default
    expect(type(value) is kind, f"attribute {name} must be {kind.__name__}, got {value!r}")
    return np.float32(value) if kind is float else value  # ONNX stores FLOAT attributes as float32


def num_heads(attrs) -> int:
    heads = attribute(attrs, "num_heads", int)
    expect(heads > 0, "num_heads must be positive")
    return heads


def scale(attrs):
    s = attribute(attrs, "scale", float, None)
    expect(s is None or np.isfinite(s), "scale must be finite")
    return s


def attention_precision(attrs) -> str:
    precision = attribute(attrs, "precision", str, "fp32")
    expect(precision in ("fp32", "bf16", "int8"), "precision must be 'fp32', 'bf16' or 'int8'")
    return precision


X86_LEVELS = ["scalar", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx"]


def reduced_products(precision: str, head_dim: int) -> bool:
    """Whether precision="bf16" or "int8" runs as such here (csrc/attention.h): the first path the active level runs
    whose lanes divide the head size is AVX512-BF16 (32), AVX-512 (16), AVX2 (8) or NEON (4), else the scalar
    reference; the AVX512-BF16 path and the scalar reference compute bf16 (int8) products, the others fp32."""
    isa = C.active_isa()
    if precision == "fp32":
        return False
    if isa.startswith("neon"):
        return head_dim % 4 != 0
    level = X86_LEVELS.index(isa)
    if level >= X86_LEVELS.index("avx512_bf16") and head_dim % 32 == 0:
        return True
    fp32_vector = (level >= X86_LEVELS.index("avx512") and head_dim % 16 == 0) or (level >= 1 and head_dim % 8 == 0)
    return not fp32_vector


def epsilon(attrs):
    eps = attribute(attrs, "epsilon", float, np.float32(1e-12))
    expect(np.isfinite(eps) and eps >= 0, "epsilon must be finite and >= 0")
    return eps


# ----------------------------------------------------------------------------------------------
# Inputs

def dtype_is(inputs, name, *dtypes):
    a = inputs.get(name)
    if a is not None:
        expect(a.dtype in dtypes, f"{name} must be {' or '.join(map(str, dtypes))}, got {a.dtype}")


def required(inputs, *names):
    for name in names:
        expect(inputs.get(name) is not None, f"{name} is required")


def vector(inputs, name, n):
    a = inputs.get(name)
    expect(a is None or a.shape == (n,), f"{name} must have shape [{n}]")


def tame(*arrays) -> bool:
    """Values whose float32 arithmetic must agree with float64's (no inf, nan or overflow on the way)."""
    return all(a is None or a.size == 0 or (np.isfinite(a).all() and np.abs(a).max() <= 1e3) for a in arrays)


def heads_of(three_h: int, heads: int) -> int:
    expect(three_h > 0 and three_h % 3 == 0, "qkv's width must be a positive multiple of 3")
    expect((three_h // 3) % heads == 0, "hidden must be divisible by num_heads")
    return three_h // 3


def moderate_scale(s) -> bool:
    return s is None or abs(float(s)) <= 64.0


# ----------------------------------------------------------------------------------------------
# Ops

def fused_attention(inputs, attrs, outputs):
    heads, s, precision = num_heads(attrs), scale(attrs), attention_precision(attrs)
    single_output(outputs)
    required(inputs, "qkv")
    dtype_is(inputs, "qkv", F32), dtype_is(inputs, "bias", F32), dtype_is(inputs, "mask", INT32, INT64)
    qkv, bias, mask = inputs["qkv"], inputs.get("bias"), inputs.get("mask")
    expect(qkv.ndim == 3, "qkv must have rank 3")
    batch, seq, three_h = qkv.shape
    hidden = heads_of(three_h, heads)
    vector(inputs, "bias", three_h)
    if mask is not None:
        expect(mask.shape in ((batch, seq), (batch,)), "mask must be [batch, seq] or [batch]")
    shape = (batch, seq, hidden)
    allocatable(shape)
    if qkv.size == 0:
        return [Expected(shape, F32)]
    if not (tame(qkv, bias) and moderate_scale(s)):
        return [Expected(shape, F32)]
    if reduced_products(precision, hidden // heads):
        reference = ref_attention_int8 if precision == "int8" else ref_attention_bf16
        ref, allowance = reference(qkv, bias, mask, heads, s)
        return [Expected(shape, F32, ref, allowance=allowance)]
    return [Expected(shape, F32, ref_attention(qkv, bias, mask, heads, None if s is None else float(s)))]


def packed_attention_reference(kv, query, bias, cu, rows, heads, s):
    """float64 attention of each query (query[i] belongs to token rows[i]) over its own sequence's keys."""
    hidden = query.shape[1]
    d = hidden // heads
    s = 1.0 / math.sqrt(d) if s is None else float(s)
    b = np.zeros(3 * hidden) if bias is None else bias.astype(np.float64)
    k_all = kv[:, :hidden].astype(np.float64) + b[hidden:2 * hidden]
    v_all = kv[:, hidden:].astype(np.float64) + b[2 * hidden:]
    out = np.zeros((len(rows), hidden))
    for i, row in enumerate(rows):
        seq = np.searchsorted(cu, row, side="right") - 1
        k, v = k_all[cu[seq]:cu[seq + 1]], v_all[cu[seq]:cu[seq + 1]]
        q = query[i].astype(np.float64) + b[:hidden]
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            scores = k[:, sl] @ q[sl] * s
            p = np.exp(scores - scores.max())
            out[i, sl] = (p / p.sum()) @ v[:, sl]
    return out


def packed_attention(inputs, attrs, outputs):
    heads, s, precision = num_heads(attrs), scale(attrs), attention_precision(attrs)
    single_output(outputs)
    required(inputs, "qkv", "cu_seqlens")
    for name in ("qkv", "bias", "query"):
        dtype_is(inputs, name, F32)
    dtype_is(inputs, "cu_seqlens", INT32, INT64), dtype_is(inputs, "query_rows", INT32, INT64)
    qkv, bias, cu, rows, query = (inputs.get(n) for n in ("qkv", "bias", "cu_seqlens", "query_rows", "query"))
    if query is None:
        expect(qkv.ndim == 2, "qkv must have rank 2")
        hidden = heads_of(qkv.shape[1], heads)
    else:
        expect(rows is not None, "query needs query_rows")
        expect(query.ndim == 2, "query must have rank 2")
        hidden = query.shape[1]
        expect(qkv.ndim == 2 and qkv.shape[1] == 2 * hidden, "with a query, qkv holds K | V [tokens, 2 * hidden]")
        heads_of(3 * hidden, heads)
    tokens = qkv.shape[0]
    vector(inputs, "bias", 3 * hidden)
    expect(cu.ndim == 1 and len(cu) >= 1, "cu_seqlens must have shape [num_seqs + 1]")
    if rows is not None:
        expect(rows.ndim == 1, "query_rows must have rank 1")
        expect(query is None or query.shape[0] == len(rows), "query must have one row per query_rows entry")
    cu = cu.astype(np.int64)
    expect(cu[0] == 0, "cu_seqlens[0] must be 0")
    expect((np.diff(cu) >= 0).all(), "cu_seqlens must be non-decreasing")
    expect(cu[-1] == tokens, "cu_seqlens[-1] must equal the number of tokens")
    rows = np.arange(tokens) if rows is None else rows.astype(np.int64)
    expect(((rows >= 0) & (rows < tokens)).all(), "query_rows must be token indices")
    shape = (len(rows), hidden)
    allocatable(shape)
    if len(rows) == 0 or qkv.size == 0:
        return [Expected(shape, F32)]
    if not (tame(qkv, bias, query) and moderate_scale(s)):
        return [Expected(shape, F32)]
    if query is None:
        query, kv = qkv[rows, :hidden], qkv[:, hidden:]
    else:
        kv = qkv
    if reduced_products(precision, hidden // heads):
        return [Expected(shape, F32, *packed_attention_reference_reduced(kv, query, bias, cu, rows, heads, s,
                                                                          precision))]
    return [Expected(shape, F32, packed_attention_reference(kv, query, bias, cu, rows, heads, s))]


def packed_attention_reference_reduced(kv, query, bias, cu, rows, heads, s, precision):
    """ref_attention_bf16 (or ref_attention_int8) of each query over its own sequence's keys: (values, allowance)."""
    reference = ref_attention_int8 if precision == "int8" else ref_attention_bf16
    hidden = query.shape[1]
    out, allowance = np.zeros((len(rows), hidden)), np.zeros((len(rows), hidden))
    for i, row in enumerate(rows):
        seq = np.searchsorted(cu, row, side="right") - 1
        keys = kv[cu[seq]:cu[seq + 1]]
        qkv = np.concatenate([np.broadcast_to(query[i], (len(keys), hidden)), keys], axis=1)[None]
        ref, allow = reference(qkv, bias, None, heads, s)
        out[i], allowance[i] = ref[0, 0], allow[0, 0]
    return out, "close", allowance


def bias_gelu(inputs, attrs, outputs):
    single_output(outputs)
    required(inputs, "x", "bias")
    dtype_is(inputs, "x", F32), dtype_is(inputs, "bias", F32)
    x = inputs["x"]
    expect(x.ndim >= 1, "x must have rank >= 1")
    vector(inputs, "bias", x.shape[-1])
    if x.size == 0 or not tame(x, inputs["bias"]):
        return [Expected(x.shape, F32)]
    return [Expected(x.shape, F32, ref_gelu(x, inputs["bias"]))]


def skip_layernorm(inputs, attrs, outputs):
    eps = epsilon(attrs)
    single_output(outputs)
    required(inputs, "x", "skip", "gamma")
    names = ("x", "skip", "gamma", "beta", "bias", "skip_scale")
    for name in names:
        dtype_is(inputs, name, F32)
    x, skip, gamma, beta, bias, skip_scale = (inputs.get(n) for n in names)
    expect(x.ndim >= 1, "x must have rank >= 1")
    expect(skip.shape == x.shape, "skip must have the shape of x")
    for name in names[2:]:
        vector(inputs, name, x.shape[-1])
    if x.size == 0 or not tame(x, skip, gamma, beta, bias, skip_scale) or eps > 1e6:
        return [Expected(x.shape, F32)]
    t = x.astype(np.float64) + skip * (1.0 if skip_scale is None else skip_scale.astype(np.float64))
    t = t if bias is None else t + bias
    allowance = layernorm_rounding_allowance(t, gamma, float(eps)) if x.size else 0.0
    return [Expected(x.shape, F32, ref_skip_layernorm(x, skip, gamma, beta, bias, float(eps), skip_scale), "close",
                     allowance)]


def embed_layernorm(inputs, attrs, outputs, scaled: bool):
    """EmbedLayerNormInt8 (scaled: int8 tables with row scales) and EmbedLayerNormBf16 (bf16 tables)."""
    from .runner import BF16

    eps = epsilon(attrs)
    single_output(outputs)
    scales = ("word_scale", "position_scale") if scaled else ()
    required(inputs, "input_ids", "position_ids", "word", *scales[:1], "position", *scales[1:], "gamma")
    dtype_is(inputs, "input_ids", INT32, INT64), dtype_is(inputs, "position_ids", INT32, INT64)
    dtype_is(inputs, "word", INT8 if scaled else BF16), dtype_is(inputs, "position", INT8 if scaled else BF16)
    for name in (*scales, "gamma", "beta"):
        dtype_is(inputs, name, F32)
    ids, pos, word, position = (inputs[n] for n in ("input_ids", "position_ids", "word", "position"))
    expect(ids.ndim == 1, "input_ids must have rank 1")
    expect(pos.shape == ids.shape, "position_ids must have the shape of input_ids")
    expect(word.ndim == 2, "word must have rank 2")
    expect(position.ndim == 2 and position.shape[1] == word.shape[1], "position must have shape [P, W]")
    if scaled:
        vector(inputs, "word_scale", word.shape[0])
        vector(inputs, "position_scale", position.shape[0])
    vector(inputs, "gamma", word.shape[1]), vector(inputs, "beta", word.shape[1])
    ids, pos = ids.astype(np.int64), pos.astype(np.int64)
    expect(((ids >= 0) & (ids < word.shape[0])).all(), "input_ids must be rows of the word table")
    expect(((pos >= 0) & (pos < position.shape[0])).all(), "position_ids must be rows of the position table")
    shape = (len(ids), word.shape[1])
    allocatable(shape)
    if scaled:
        x = word[ids].astype(np.float32) * inputs["word_scale"][ids][:, None]
        skip = position[pos].astype(np.float32) * inputs["position_scale"][pos][:, None]
    else:  # Cast from bf16: the bits shifted into place
        x, skip = ((t.view(np.uint16)[rows].astype(np.uint32) << 16).view(np.float32)
                   for t, rows in ((word, ids), (position, pos)))
    gamma, beta = inputs["gamma"], inputs.get("beta")
    if x.size == 0 or not tame(x, skip, gamma, beta) or eps > 1e6:
        return [Expected(shape, F32)]
    allowance = layernorm_rounding_allowance(x.astype(np.float64) + skip, gamma, float(eps))
    return [Expected(shape, F32, ref_skip_layernorm(x, skip, gamma, beta, None, float(eps)), "close", allowance)]


def embed_layernorm_int8(inputs, attrs, outputs):
    return embed_layernorm(inputs, attrs, outputs, scaled=True)


def embed_layernorm_bf16(inputs, attrs, outputs):
    return embed_layernorm(inputs, attrs, outputs, scaled=False)


def quantize_rows(inputs, attrs, outputs):
    required(inputs, "x")
    dtype_is(inputs, "x", F32)
    expect(inputs["x"].ndim >= 1, "x must have rank >= 1")
    expect(len(outputs) == 3 and all(outputs), "QuantizeRows has three required outputs")
    allocatable(inputs["x"].shape, inputs["x"].shape[:-1], inputs["x"].shape[:-1])
    x = inputs["x"]
    if not isinstance(x, np.ndarray):  # an empty tensor numpy cannot hold: shapes only
        return [Expected(x.shape, UINT8), Expected(x.shape[:-1], F32), Expected(x.shape[:-1], UINT8)]
    q, row_scale, zero_point = ref_quantize_rows(x)  # bit-exact expectations
    return [Expected(q.shape, UINT8, q, "exact"), Expected(row_scale.shape, F32, row_scale, "exact"),
            Expected(zero_point.shape, UINT8, zero_point, "exact")]


DEQUANTIZE_INPUTS = ("acc", "row_scale", "row_zero_point", "weight_scale", "weight_colsum", "bias", "skip", "gamma",
                     "beta", "skip_scale")


def requested_outputs(outputs) -> list[bool]:
    """Which of y and the requantized y_quantized, y_scale, y_zero_point the node names (DequantizeRows' rules)."""
    want = [i < len(outputs) and bool(outputs[i]) for i in range(4)]
    expect(len(outputs) <= 4, "the op has four outputs")
    expect(want[1] == want[2] == want[3], "the requantized outputs come together")
    expect(want[0] or want[1], "no output is requested")
    return want


def epilogue_inputs(inputs, out_shape, activation):
    """The skip + LayerNorm epilogue inputs of DequantizeRows and LinearInt8, for an output of out_shape."""
    n = out_shape[-1]
    skip, gamma, beta, skip_scale = (inputs.get(name) for name in ("skip", "gamma", "beta", "skip_scale"))
    vector(inputs, "bias", n)
    if skip is None:
        expect(gamma is None and beta is None and skip_scale is None, "LayerNorm inputs need skip")
    else:
        expect(skip.shape == out_shape, "skip must have the output's shape")
        expect(gamma is not None, "skip needs gamma")
        expect(activation != "gelu", "gelu cannot be combined with skip")
    for name in ("gamma", "beta", "skip_scale"):
        vector(inputs, name, n)


def dequantized_outputs(want, acc, row_scale, row_zp, weight_scale, colsum, inputs, activation, eps):
    """Expected y and requantized outputs of DequantizeRows' arithmetic on exact integer accumulators."""
    bias, skip, gamma, beta, skip_scale = (inputs.get(n) for n in ("bias", "skip", "gamma", "beta", "skip_scale"))
    out_shape, lead = acc.shape, acc.shape[:-1]
    y = None
    allowance = 0.0
    moderate = isinstance(acc, np.ndarray) and np.abs(acc.astype(np.int64)).max(initial=0) < 2**24 and np.abs(
        colsum.astype(np.int64)).max(initial=0) < 2**16  # no int32 wrap-around in the kernel's arithmetic
    if math.prod(out_shape) and moderate and eps <= 1e6 and tame(row_scale, weight_scale, bias, skip, gamma, beta,
                                                                 skip_scale):
        y, allowance = ref_dequantize_epilogue(acc, row_scale, row_zp, weight_scale, colsum, bias, activation, skip,
                                               gamma, beta, skip_scale, float(eps))
    expected = [Expected(out_shape, F32, y, "close", allowance) if want[0] else None]
    if want[1]:
        expected += [Expected(out_shape, UINT8, y, "requantized", allowance), Expected(lead, F32),
                     Expected(lead, UINT8)]
    return expected


def linear_int8(inputs, attrs, outputs):
    activation = attribute(attrs, "activation", str, "none")
    expect(activation in ("none", "gelu"), "activation must be 'none' or 'gelu'")
    eps = epsilon(attrs)
    want = requested_outputs(outputs)
    required(inputs, "weight", "weight_scale")
    for name in ("x", "x_scale", "weight_scale", "bias", "skip", "gamma", "beta", "skip_scale"):
        dtype_is(inputs, name, F32)
    dtype_is(inputs, "x_quantized", UINT8), dtype_is(inputs, "x_zero_point", UINT8)
    dtype_is(inputs, "weight", np.dtype(np.int8))
    x, xq, x_scale, x_zp, weight = (inputs.get(n) for n in ("x", "x_quantized", "x_scale", "x_zero_point", "weight"))
    expect((x is None) != (xq is None), "exactly one of x and x_quantized")
    rows = x if x is not None else xq
    expect(rows.ndim >= 1, "the input rows must have rank >= 1")
    lead = rows.shape[:-1]
    if xq is not None:
        expect(x_scale is not None and x_zp is not None, "x_quantized needs x_scale and x_zero_point")
        expect(x_scale.shape == lead and x_zp.shape == lead, "x_scale and x_zero_point: the rows' leading shape")
    else:
        expect(x_scale is None and x_zp is None, "x_scale and x_zero_point belong to x_quantized")
    expect(weight.ndim == 2, "weight must be [K, N]")
    expect(max(weight.shape) < 2**48, "K and N must be below 2^48")
    expect(weight.shape[0] == rows.shape[-1], "weight must be [K, N] with K the rows' width")
    out_shape = (*lead, weight.shape[1])
    vector(inputs, "weight_scale", weight.shape[1])
    epilogue_inputs(inputs, out_shape, activation)
    allocatable(out_shape, lead)
    if not all(isinstance(a, np.ndarray) for a in (rows, weight)) or math.prod(out_shape) == 0 or (
            x is not None and not tame(x)):
        return dequantized_outputs(want, _Shaped(out_shape), None, None, None, None, inputs, activation, eps)
    q, row_scale, row_zp = ref_quantize_rows(x) if x is not None else (xq, x_scale, x_zp)
    k = weight.shape[0]
    acc = (q.reshape(math.prod(lead), k).astype(np.int64) @ weight.astype(np.int64)).reshape(out_shape)
    colsum = weight.astype(np.int64).sum(axis=0)
    return dequantized_outputs(want, acc, row_scale, row_zp, inputs["weight_scale"], colsum, inputs, activation, eps)


class _Shaped:
    """Stands in for accumulators whose values are not computed (shapes only)."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def dequantize_rows(inputs, attrs, outputs):
    activation = attribute(attrs, "activation", str, "none")
    expect(activation in ("none", "gelu"), "activation must be 'none' or 'gelu'")
    eps = epsilon(attrs)
    want = requested_outputs(outputs)
    required(inputs, *DEQUANTIZE_INPUTS[:5])
    dtype_is(inputs, "acc", INT32), dtype_is(inputs, "weight_colsum", INT32), dtype_is(inputs, "row_zero_point", UINT8)
    for name in ("row_scale", "weight_scale", "bias", "skip", "gamma", "beta", "skip_scale"):
        dtype_is(inputs, name, F32)
    acc, row_scale, row_zp, weight_scale, colsum, bias, skip, gamma, beta, skip_scale = (
        inputs.get(n) for n in DEQUANTIZE_INPUTS)
    expect(acc.ndim >= 1, "acc must have rank >= 1")
    n = acc.shape[-1]
    expect(row_scale.shape == acc.shape[:-1] and row_zp.shape == acc.shape[:-1], "row inputs: acc's leading shape")
    vector(inputs, "weight_scale", n), vector(inputs, "weight_colsum", n)
    epilogue_inputs(inputs, acc.shape, activation)
    allocatable(acc.shape, acc.shape[:-1])
    return dequantized_outputs(want, acc, row_scale, row_zp, weight_scale, colsum, inputs, activation, eps)


def linear_bf16(inputs, attrs, outputs):
    from ..test_gemm_bf16 import bf16_bits, bits_to_float, flush_subnormal_bits
    from .runner import BF16

    activation = attribute(attrs, "activation", str, "none")
    expect(activation in ("none", "gelu"), "activation must be 'none' or 'gelu'")
    single_output(outputs)
    required(inputs, "x", "weight")
    dtype_is(inputs, "x", F32), dtype_is(inputs, "weight", BF16), dtype_is(inputs, "bias", F32)
    x, weight, bias = inputs["x"], inputs["weight"], inputs.get("bias")
    expect(weight.ndim == 2, "weight must be [K, N]")
    expect(max(weight.shape) < 2**48, "K and N must be below 2^48")
    expect(x.ndim >= 1 and x.shape[-1] == weight.shape[0], "x must be [..., K]")
    vector(inputs, "bias", weight.shape[1])
    shape = (*x.shape[:-1], weight.shape[1])
    allocatable(shape)
    if math.prod(shape) == 0:
        return [Expected(shape, F32)]
    w = bits_to_float(flush_subnormal_bits(weight.view(np.uint16))).astype(np.float64)
    if not tame(x, bias, w):
        return [Expected(shape, F32)]
    xb = bits_to_float(bf16_bits(x)).astype(np.float64)
    y = xb @ w + (0.0 if bias is None else bias.astype(np.float64))
    return [Expected(shape, F32, ref_gelu(y, 0.0) if activation == "gelu" else y)]


CONTRACTS = {
    "FusedAttention": fused_attention,
    "PackedAttention": packed_attention,
    "BiasGelu": bias_gelu,
    "SkipLayerNorm": skip_layernorm,
    "EmbedLayerNormInt8": embed_layernorm_int8,
    "EmbedLayerNormBf16": embed_layernorm_bf16,
    "QuantizeRows": quantize_rows,
    "DequantizeRows": dequantize_rows,
    "LinearBf16": linear_bf16,
    "LinearInt8": linear_int8,
}


def contract(op: str, inputs: dict, attrs: dict, outputs: list[str]) -> list:
    return CONTRACTS[op](inputs, attrs, outputs)
