"""Kernel correctness: bort_infer._C (attention core, bias+GELU, skip+LayerNorm, packed attention) against
float64 numpy references, on the scalar path and on every vector path the CPU supports (AVX2, AVX-512).

Error measure: max|out - ref| / max(1, max|ref|) <= 1e-5 (absolute near zero, relative for large outputs).

Set BORT_INFER_C_DIR to a directory holding another build of _C and libbort_infer_ops.so (e.g. the sanitizer
build of `make asan`) to test that build instead of the in-place one.
"""
from __future__ import annotations

import glob
import importlib.util
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st


def _load_c():
    build_dir = os.environ.get("BORT_INFER_C_DIR")
    if not build_dir:
        from bort_infer import _C

        return _C
    paths = sorted(glob.glob(os.path.join(build_dir, "**", "_C*.so"), recursive=True))
    if not paths:
        raise RuntimeError(f"BORT_INFER_C_DIR={build_dir} holds no _C*.so")
    spec = importlib.util.spec_from_file_location("bort_infer._C", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C = _load_c()
# The onnxruntime custom-op library built with this _C (its kernels follow C.set_isa too).
OPS_LIBRARY = os.path.join(os.path.dirname(C.__file__), "libbort_infer_ops.so")
TOL = 1e-5
ISAS = ["scalar"] + (["avx2"] if C.cpu_has_avx2() else []) + (["avx512"] if C.cpu_has_avx512() else [])
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32_MIN = float(np.finfo(np.float32).min)


class use_isa:
    """Context manager forcing one kernel path, restoring automatic choice afterwards."""

    def __init__(self, isa: str):
        self.isa = isa

    def __enter__(self):
        C.set_isa(self.isa)
        assert C.active_isa() == self.isa

    def __exit__(self, *exc):
        C.set_isa("auto")


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    if out.size == 0:
        return 0.0
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / max(1.0, float(np.max(np.abs(ref)))))


# ----------------------------------------------------------------------------------------------
# float64 references (HF BertSelfAttention semantics)

def key_valid(mask, batch: int, seq: int) -> np.ndarray:
    if mask is None:
        return np.ones((batch, seq), bool)
    mask = np.asarray(mask)
    if mask.ndim == 1:
        return np.arange(seq)[None, :] < np.clip(mask.astype(np.int64), 0, seq)[:, None]
    return mask != 0


def ref_attention(qkv, bias, mask, num_heads, scale=None):
    x = qkv.astype(np.float64)
    if bias is not None:
        x = x + bias
    batch, seq, three_h = x.shape
    hidden = three_h // 3
    d = hidden // num_heads
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    def heads(t):
        return t.reshape(batch, seq, num_heads, d).transpose(0, 2, 1, 3)

    q, k, v = heads(x[..., :hidden]), heads(x[..., hidden:2 * hidden]), heads(x[..., 2 * hidden:])
    scores = q @ k.transpose(0, 1, 3, 2) * scale
    # HF: (1 - mask) * finfo.min is added; a row with no valid key becomes uniform.
    valid = key_valid(mask, batch, seq)
    scores = np.where(valid[:, None, None, :], scores, -np.inf)
    none_valid = ~valid.any(axis=1)
    scores[none_valid] = 0.0
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)


def ref_packed_attention(qkv, bias, cu, num_heads, scale=None):
    out = np.zeros((qkv.shape[0], qkv.shape[1] // 3))
    for s in range(len(cu) - 1):
        a, b = int(cu[s]), int(cu[s + 1])
        if b > a:
            out[a:b] = ref_attention(qkv[None, a:b], bias, None, num_heads, scale)[0]
    return out


def round_bf16(x) -> np.ndarray:
    """float32 → bf16 → float32: round to nearest even, fp32 subnormals to signed zero (csrc/gemm_bf16.h)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    bits[np.isnan(x)] = ((u[np.isnan(x)] >> 16) | 0x40).astype(np.uint32)
    subnormal = (u & 0x7F800000) == 0
    bits[subnormal] = ((u[subnormal] >> 16) & 0x8000).astype(np.uint32)
    return (bits << 16).view(np.float32)


def ref_attention_bf16(qkv, bias, mask, num_heads, scale=None):
    """AttentionPrecision::kBf16 (csrc/attention.h) on a padded batch: float64 products of the same bf16 operands,
    float64 softmax, probabilities rounded to bf16. Returns (reference, allowance). The kernels round fp32
    probabilities to bf16: exp(s - max) from fp32 scores (float32 sums of d products: relative error up to
    d 2^-24 sum|q k|, twice with the max) and an exp of a few ulps. Such a p lands on the other bf16 neighbour when it
    lies that close to a midpoint between two bf16 values; allowance bounds what those p (one bf16 spacing, 2^-7
    relative, each) may move each output by."""
    x, b32, hidden, d, s32, heads = _attention_operands(qkv, bias, num_heads, scale)
    q = x[..., :hidden] if bias is None else x[..., :hidden] + b32[:hidden]
    q = heads(round_bf16(q * s32))
    k = heads(round_bf16(x[..., hidden:2 * hidden]))
    scores = q @ k.transpose(0, 1, 3, 2)
    drift = 2 * d * 2.0**-24 * (np.abs(q) @ np.abs(k).transpose(0, 1, 3, 2)).max(-1, keepdims=True) + 2.0**-20
    return _softmax_pv_bf16(x, b32, mask, num_heads, scores, drift)


def _attention_operands(qkv, bias, num_heads, scale):
    x = np.asarray(qkv, np.float32)
    batch, seq, three_h = x.shape
    hidden = three_h // 3
    d = hidden // num_heads
    s32 = np.float32(1.0) / np.sqrt(np.float32(d)) if scale is None else np.float32(scale)
    b32 = np.zeros(three_h, np.float32) if bias is None else np.asarray(bias, np.float32)

    def heads(t):
        return t.astype(np.float64).reshape(batch, seq, num_heads, d).transpose(0, 2, 1, 3)

    return x, b32, hidden, d, s32, heads


def _softmax_pv_bf16(x, b32, mask, num_heads, scores, drift):
    """What kBf16 and kInt8 share from the scores [batch, heads, seq, seq] on (attention.h), with drift: how far the
    kernels' fp32 probabilities may be from float64's, relative (see ref_attention_bf16). (reference, allowance)."""
    batch, seq, three_h = x.shape
    hidden = three_h // 3
    d = hidden // num_heads
    v = x[..., 2 * hidden:].astype(np.float64).reshape(batch, seq, num_heads, d).transpose(0, 2, 1, 3)
    v = round_bf16(v.astype(np.float32)).astype(np.float64)
    valid = key_valid(mask, batch, seq)[:, None, None, :]
    scores = np.where(valid, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = np.where(valid, p, 0.0)
    p = np.nan_to_num(p)  # rows without a valid key: replaced below
    total = p.sum(-1, keepdims=True)
    total[total == 0] = 1.0
    p32 = p.astype(np.float32)
    ulps_to_midpoint = np.abs((p32.view(np.uint32) & 0xFFFF).astype(np.int64) - 0x8000)
    near_midpoint = ulps_to_midpoint * 2.0**-24 <= drift  # an fp32 ulp is at least 2^-24 of p
    out = (round_bf16(p32).astype(np.float64) @ v) / total
    allowance = (np.where(near_midpoint, p, 0.0) * 2.0**-7 / total) @ np.abs(v)
    out = out.transpose(0, 2, 1, 3).reshape(batch, seq, hidden) + b32[2 * hidden:]
    allowance = allowance.transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
    none_valid = ~key_valid(mask, batch, seq).any(axis=1)  # HF: uniform weights, the mean of V (fp32 V, with bias)
    out[none_valid] = (x[none_valid][..., 2 * hidden:].astype(np.float64) + b32[2 * hidden:]).mean(axis=1,
                                                                                                 keepdims=True)
    return out, allowance


def quantize_rows_s8(x32):
    """kInt8's quantization of each last-axis row (attention.h), in float32 as the kernels compute it:
    (integers as float64, scales as float64 of their float32 values)."""
    amax = np.abs(x32).max(-1, keepdims=True)
    tiny = ~(amax >= np.float32(1e-30))
    with np.errstate(divide="ignore"):
        inv = np.where(tiny, np.float32(0), np.float32(127) / amax).astype(np.float32)
    ints = np.clip(np.rint((x32 * inv).astype(np.float32)), -127, 127)
    scale = np.where(tiny, np.float32(0), amax / np.float32(127)).astype(np.float32)
    return ints.astype(np.float64), scale


def ref_attention_int8(qkv, bias, mask, num_heads, scale=None):
    """AttentionPrecision::kInt8 (csrc/attention.h) on a padded batch: the kernels' integers (each query row
    (q + bq) * scale and each key row, per head, quantized to s8 in float32) and score epilogue
    float32(sum q_int k_int) * float32(q_scale * k_scale), exactly; then kBf16's softmax and P V (float64 softmax,
    probabilities rounded to bf16), whose allowance here only covers exp (a few ulps) and the fp32 s - max (2^-24
    |s - max| relative). Returns (reference, allowance)."""
    x, b32, hidden, d, s32, heads = _attention_operands(qkv, bias, num_heads, scale)
    batch, seq, _ = x.shape
    q = (x[..., :hidden] if bias is None else x[..., :hidden] + b32[:hidden]) * s32

    def split(t):
        return t.reshape(batch, seq, num_heads, d).transpose(0, 2, 1, 3)

    q_int, q_scale = quantize_rows_s8(split(q.astype(np.float32)))
    k_int, k_scale = quantize_rows_s8(split(x[..., hidden:2 * hidden]))
    dots = (q_int @ k_int.transpose(0, 1, 3, 2)).astype(np.int64)  # exact: |sum| < 2^53
    scores = (dots.astype(np.float32) * (q_scale * k_scale.transpose(0, 1, 3, 2)).astype(np.float32)).astype(np.float64)
    valid = key_valid(mask, batch, seq)[:, None, None, :]
    row_max = np.where(valid, scores, -np.inf).max(-1, keepdims=True)
    drift = np.abs(scores - np.where(np.isfinite(row_max), row_max, 0.0)) * 2.0**-24 + 2.0**-20
    return _softmax_pv_bf16(x, b32, mask, num_heads, scores, drift)


_erf64 = np.vectorize(math.erf, otypes=[np.float64])


def ref_gelu(x, bias):
    t = x.astype(np.float64) + bias
    return 0.5 * t * (1.0 + _erf64(t / math.sqrt(2.0)))


def layernorm_rounding_allowance(t, gamma, eps, magnitude=None):
    """What float32 rounding before a LayerNorm may add to each output row, beyond TOL.

    A kernel forms the pre-normalisation row t (float64 here) in float32: each value carries up to a few ulps
    of its operands' magnitude (default |t|), and normalising divides that by the row's spread. Large only for
    rows whose values nearly coincide (e.g. values near 100 that differ by 1)."""
    magnitude = np.abs(t) if magnitude is None else magnitude
    spread = np.sqrt(t.var(-1, keepdims=True) + eps)
    return 4 * np.finfo(np.float32).eps * magnitude.max(-1, keepdims=True) / spread * np.abs(gamma).max()


def ref_skip_layernorm(x, skip, gamma, beta, bias, eps, skip_scale=None):
    t = x.astype(np.float64) + (skip if skip_scale is None else np.asarray(skip, np.float64) * skip_scale)
    if bias is not None:
        t = t + bias
    mean = t.mean(-1, keepdims=True)
    var = ((t - mean) ** 2).mean(-1, keepdims=True)
    y = (t - mean) / np.sqrt(var + eps) * gamma
    return y + beta if beta is not None else y


# ----------------------------------------------------------------------------------------------
# Attention

MASK_FORMS = ["none", "keymask_int64", "keymask_int32", "lengths_int32", "lengths_int64"]


def make_mask(rng, form: str, batch: int, seq: int):
    if form == "none":
        return None
    # Ragged lengths including fully padded sequences (0) and out-of-range lengths (clamped).
    lengths = rng.integers(-2, seq + 3, size=batch)
    lengths[0] = rng.choice([0, seq, max(1, seq // 2)])
    if form.startswith("lengths"):
        return lengths.astype(np.int32 if form.endswith("int32") else np.int64)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    if batch > 1:  # holes anywhere (not only right padding), and a row with no valid key
        mask[1] = rng.random(seq) < 0.6
        if batch > 2:
            mask[2] = 0
    return mask.astype(np.int32 if form.endswith("int32") else np.int64)


@st.composite
def attention_cases(draw):
    heads = draw(st.sampled_from([1, 8, 12, 16]))
    head_dim = draw(st.sampled_from([32, 64, 96, 128]))
    long = draw(st.booleans()) if heads * head_dim <= 1024 else False
    if long:  # 509-512 keys: keep the float64 reference and the scalar path fast
        seq = draw(st.integers(509, 512))
        batch = 1
        heads = draw(st.sampled_from([1, 8])) if head_dim <= 64 else 1
    else:
        seq = draw(st.integers(1, 130))
        batch = draw(st.integers(1, 4))
    return dict(batch=batch, seq=seq, heads=heads, head_dim=head_dim,
                mask_form=draw(st.sampled_from(MASK_FORMS)), with_bias=draw(st.booleans()),
                scale=draw(st.sampled_from([None, 0.05, 1.0])), seed=draw(st.integers(0, 2**31 - 1)))


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(case=attention_cases())
@example(case=dict(batch=1, seq=38, heads=12, head_dim=128, mask_form="keymask_int64", with_bias=True, scale=1.0,
                   seed=355))
def test_attention_matches_reference(isa, case):
    rng = np.random.default_rng(case["seed"])
    b, s, nh, d = case["batch"], case["seq"], case["heads"], case["head_dim"]
    hidden = nh * d
    qkv = rng.standard_normal((b, s, 3 * hidden)).astype(np.float32)
    bias = rng.standard_normal(3 * hidden).astype(np.float32) if case["with_bias"] else None
    mask = make_mask(rng, case["mask_form"], b, s)
    with use_isa(isa):
        out = C.attention(qkv, bias, mask, nh, case["scale"])
    assert out.shape == (b, s, hidden) and out.dtype == np.float32
    # fp32 scores round in proportion to their size, ~scale * sqrt(d) for these unit-variance rows: at scale 1.0 and
    # d = 128 the scalar path's honest fp32 error reached 1.45e-5 (seed 355) against the float64 reference.
    scale = case["scale"] if case["scale"] is not None else 1.0 / math.sqrt(d)
    assert rel_err(out, ref_attention(qkv, bias, mask, nh, case["scale"])) <= TOL * max(1.0, scale * math.sqrt(d) / 4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch,seq,heads,head_dim", [(2, 509, 8, 32), (1, 512, 8, 128), (4, 130, 16, 64),
                                                      (1, 7, 2, 24), (2, 17, 3, 40), (2, 33, 4, 16),
                                                      (1, 100, 2, 48), (3, 47, 2, 80), (1, 64, 1, 112)])
def test_attention_fixed_shapes(isa, batch, seq, heads, head_dim):
    # Includes head dims that are multiples of 8 but not 16 (AVX2 tail path; AVX-512 falls back to AVX2),
    # every AVX-512 head-dim remainder (0, 16 or 32 dims left after whole 48-dim blocks) and Bort's 8 x 128.
    rng = np.random.default_rng(seq)
    qkv = (rng.standard_normal((batch, seq, 3 * heads * head_dim)) * 2).astype(np.float32)
    bias = rng.standard_normal(3 * heads * head_dim).astype(np.float32)
    mask = make_mask(rng, "keymask_int64", batch, seq)
    with use_isa(isa):
        out = C.attention(qkv, bias, mask, heads)
    assert rel_err(out, ref_attention(qkv, bias, mask, heads)) <= TOL


@pytest.mark.skipif("avx512" not in ISAS, reason="CPU without AVX-512")
@pytest.mark.parametrize("head_dim,fallback", [(24, "avx2"), (40, "avx2"), (5, "scalar"), (12, "scalar")])
def test_attention_avx512_falls_back_for_head_dims_not_multiple_of_16(head_dim, fallback):
    rng = np.random.default_rng(head_dim)
    qkv = rng.standard_normal((2, 21, 3 * 3 * head_dim)).astype(np.float32)
    bias = rng.standard_normal(3 * 3 * head_dim).astype(np.float32)
    mask = make_mask(rng, "keymask_int64", 2, 21)
    with use_isa("avx512"):
        out = C.attention(qkv, bias, mask, 3)
    with use_isa(fallback):
        expected = C.attention(qkv, bias, mask, 3)
    np.testing.assert_array_equal(out, expected)


def test_attention_odd_head_dim_uses_scalar_fallback():
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((2, 9, 3 * 2 * 5)).astype(np.float32)
    out = C.attention(qkv, None, np.array([9, 4]), 2)
    assert rel_err(out, ref_attention(qkv, None, np.array([9, 4]), 2)) <= TOL


@pytest.mark.parametrize("isa", ISAS)
def test_attention_fully_padded_rows_are_mean_of_v(isa):
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((2, 11, 3 * 64)).astype(np.float32)
    bias = rng.standard_normal(3 * 64).astype(np.float32)
    with use_isa(isa):
        out = C.attention(qkv, bias, np.zeros((2, 11), np.int64), 2)
    v_mean = (qkv[..., 128:].astype(np.float64) + bias[128:]).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out, np.broadcast_to(v_mean, out.shape), atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_attention_large_scores_are_stable(isa):
    rng = np.random.default_rng(3)
    qkv = (rng.standard_normal((1, 40, 3 * 64)) * 30).astype(np.float32)
    mask = np.ones((1, 40), np.int64)
    with use_isa(isa):
        out = C.attention(qkv, None, mask, 1)
    assert np.isfinite(out).all()
    assert rel_err(out, ref_attention(qkv, None, mask, 1)) <= TOL


def test_attention_matches_hf_bert_self_attention():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertSelfAttention

    cfg = transformers.BertConfig(hidden_size=256, num_attention_heads=4, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = BertSelfAttention(cfg).eval()
    hidden = torch.randn(3, 19, 256)
    mask = torch.ones(3, 19, dtype=torch.int64)
    mask[1, 12:] = 0
    mask[2, :] = 0  # fully padded sequence
    ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        expected = layer(hidden, attention_mask=ext)[0].numpy()
        w = torch.cat([layer.query.weight, layer.key.weight, layer.value.weight])
        b = torch.cat([layer.query.bias, layer.key.bias, layer.value.bias])
        qkv = (hidden @ w.T).numpy()
    for isa in ISAS:
        with use_isa(isa):
            out = C.attention(qkv, b.numpy(), mask.numpy(), 4)
        assert rel_err(out, expected) <= 1e-5


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lengths=st.lists(st.integers(0, 70), min_size=1, max_size=5), heads=st.sampled_from([1, 8, 12]),
       head_dim=st.sampled_from([32, 64, 128]), with_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_packed_attention_matches_reference(isa, lengths, heads, head_dim, with_bias, seed):
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    hidden = heads * head_dim
    qkv = rng.standard_normal((int(cu[-1]), 3 * hidden)).astype(np.float32)
    bias = rng.standard_normal(3 * hidden).astype(np.float32) if with_bias else None
    with use_isa(isa):
        out = C.packed_attention(qkv, bias, cu, heads)
    assert out.shape == (cu[-1], hidden)
    assert rel_err(out, ref_packed_attention(qkv, bias, cu, heads)) <= TOL


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=5), heads=st.sampled_from([1, 4, 8]),
       head_dim=st.sampled_from([32, 64, 128]), separate_query=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_packed_attention_query_subset(isa, lengths, heads, head_dim, separate_query, seed):
    """Only some rows (any order, repeats allowed; e.g. each text's CLS row), from the fused QKV or from a
    separate query projection with K | V alone: each equals that row of the full result."""
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens, hidden = int(cu[-1]), heads * head_dim
    qkv = rng.standard_normal((tokens, 3 * hidden)).astype(np.float32)
    bias = rng.standard_normal(3 * hidden).astype(np.float32)
    rows = rng.integers(0, tokens, size=rng.integers(0, 2 * tokens + 1)) if tokens else np.zeros(0, np.int64)
    expected = ref_packed_attention(qkv, bias, cu, heads)[rows]
    with use_isa(isa):
        if separate_query:
            out = C.packed_attention(np.ascontiguousarray(qkv[:, hidden:]), bias, cu, heads, query_rows=rows,
                                     query=qkv[rows, :hidden])
        else:
            out = C.packed_attention(qkv, bias, cu, heads, query_rows=rows)
    assert out.shape == (len(rows), hidden)
    assert rel_err(out, expected) <= TOL


def test_packed_attention_cls_rows():
    rng = np.random.default_rng(8)
    cu = np.array([0, 7, 7, 30, 31])
    qkv = rng.standard_normal((31, 3 * 256)).astype(np.float32)
    full = C.packed_attention(qkv, None, cu, 2)
    cls = C.packed_attention(qkv, None, cu, 2, query_rows=cu[:-1][np.diff(cu) > 0])
    np.testing.assert_array_equal(cls, full[[0, 7, 30]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(query_rows=np.array([0, 3])), "not a token index"),
    (dict(query_rows=np.array([-1])), "not a token index"),
    (dict(query_rows=np.array([[0]])), "query_rows must have rank 1"),
    (dict(query=np.zeros((1, 32), np.float32)), "query needs query_rows"),
    (dict(query_rows=np.array([0]), query=np.zeros((2, 32), np.float32)), "one row per query_rows entry"),
    (dict(query_rows=np.array([0]), query=np.zeros((1, 16), np.float32)), "K \\| V"),
])
def test_packed_attention_rejects_bad_queries(kwargs, match):
    kv_only = "query" in kwargs and kwargs["query"].shape[1] == 32
    qkv = np.zeros((3, 64 if kv_only else 96), np.float32)
    with pytest.raises(ValueError, match=match):
        C.packed_attention(qkv, None, np.array([0, 3]), 1, **kwargs)


def test_packed_equals_padded_per_sequence():
    rng = np.random.default_rng(4)
    lengths = [5, 17, 1]
    cu = np.concatenate([[0], np.cumsum(lengths)])
    qkv = rng.standard_normal((cu[-1], 3 * 128)).astype(np.float32)
    bias = rng.standard_normal(3 * 128).astype(np.float32)
    packed = C.packed_attention(qkv, bias, cu, 4)
    for s, n in enumerate(lengths):
        padded = C.attention(qkv[None, cu[s]:cu[s + 1]], bias, np.ones((1, n), np.int64), 4)
        np.testing.assert_allclose(packed[cu[s]:cu[s + 1]], padded[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cu,match", [([1, 3], "cu_seqlens\\[0\\] must be 0"), ([0, 3, 2], "non-decreasing"),
                                      ([0, 2], "must equal the number of tokens"), ([], "at least one")])
def test_packed_attention_rejects_bad_offsets(cu, match):
    qkv = np.zeros((3, 3 * 32), np.float32)
    with pytest.raises(ValueError, match=match):
        C.packed_attention(qkv, None, np.array(cu, np.int64), 1)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_attention_threads_do_not_change_results(precision):
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((3, 77, 3 * 512)).astype(np.float32)
    mask = make_mask(rng, "keymask_int64", 3, 77)
    before = C.get_num_threads()
    try:
        C.set_num_threads(1)
        one = C.attention(qkv, None, mask, 8, precision=precision)
        C.set_num_threads(2)
        two = C.attention(qkv, None, mask, 8, precision=precision)
    finally:
        C.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_packed_attention_work_split_does_not_change_results(precision):
    """A path that takes several heads per task (AMX) groups the short texts' heads and splits the long text's
    queries, differently at 1, 2 and 3 threads: every split gives the values of each text computed alone."""
    rng = np.random.default_rng(11)
    lengths, heads, head_dim = [300, 5, 40, 1, 0, 77], 8, 128
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qkv = rng.standard_normal((int(cu[-1]), 3 * heads * head_dim)).astype(np.float32)
    bias = rng.standard_normal(3 * heads * head_dim).astype(np.float32)
    alone = np.concatenate([C.packed_attention(qkv[a:z], bias, np.array([0, z - a], np.int64), heads,
                                               precision=precision) for a, z in zip(cu[:-1], cu[1:])])
    before = C.get_num_threads()
    try:
        for threads in (1, 2, 3):
            C.set_num_threads(threads)
            np.testing.assert_array_equal(C.packed_attention(qkv, bias, cu, heads, precision=precision), alone)
    finally:
        C.set_num_threads(before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(qkv=np.zeros((2, 3, 96)), num_heads=0), "num_heads must be positive"),
    (dict(qkv=np.zeros((2, 3, 96)), num_heads=-1), "num_heads must be positive"),
    (dict(qkv=np.zeros((2, 3, 96)), num_heads=5), "not divisible by num_heads"),
    (dict(qkv=np.zeros((2, 3, 95)), num_heads=1), "multiple of 3"),
    (dict(qkv=np.zeros((6, 96)), num_heads=1), "rank 3"),
    (dict(qkv=np.zeros((2, 3, 96)), bias=np.zeros(95), num_heads=1), "bias must have shape \\[96\\]"),
    (dict(qkv=np.zeros((2, 3, 96)), mask=np.ones((2, 4), np.int64), num_heads=1), "mask must have shape"),
    (dict(qkv=np.zeros((2, 3, 96)), mask=np.ones(3, np.int64), num_heads=1), "one length per sequence"),
    (dict(qkv=np.zeros((2, 3, 96)), mask=np.ones((2, 3, 1), np.int64), num_heads=1), "rank 2"),
    (dict(qkv=np.zeros((2, 3, 96)), mask=np.ones((2, 3), np.float32), num_heads=1), "integer array"),
    (dict(qkv=np.zeros((2, 3, 96)), num_heads=1, scale=float("nan")), "scale must be finite"),
    (dict(qkv=np.array([["a"]]), num_heads=1), "numeric"),
])
def test_attention_validation(kwargs, match):
    args = dict(bias=None, mask=None, scale=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        C.attention(args["qkv"], args["bias"], args["mask"], args["num_heads"], args["scale"])


def test_attention_accepts_non_contiguous_and_float64():
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((2, 10, 3 * 64 * 2))[:, :, ::2]  # float64, strided
    mask = np.ones((2, 10), bool)
    out = C.attention(qkv, None, mask, 2)
    assert rel_err(out, ref_attention(qkv.astype(np.float32), None, mask, 2)) <= TOL


def test_attention_empty_batch():
    assert C.attention(np.zeros((0, 4, 96), np.float32), None, np.zeros((0, 4), np.int64), 2).shape == (0, 4, 32)


# ----------------------------------------------------------------------------------------------
# Attention with bf16 products (precision="bf16"): the AMX and AVX512-BF16 paths and the scalar reference compute
# it; the other vector paths compute fp32 instead.

BF16_ISAS = ["scalar"] + [isa for isa in ("avx512_bf16", "amx") if isa in C.supported_isas()]


def bf16_err_ok(out, ref, allowance) -> bool:
    return bool((np.abs(out.astype(np.float64) - ref) <= TOL * max(1.0, float(np.abs(ref).max(initial=0)))
                 + allowance).all())


@pytest.mark.parametrize("isa", BF16_ISAS)
@FAST
@given(case=attention_cases())
def test_bf16_attention_matches_its_reference(isa, case):
    rng = np.random.default_rng(case["seed"])
    b, s, nh, d = case["batch"], case["seq"], case["heads"], case["head_dim"]
    qkv = (rng.standard_normal((b, s, 3 * nh * d)) * 2).astype(np.float32)
    bias = rng.standard_normal(3 * nh * d).astype(np.float32) if case["with_bias"] else None
    mask = make_mask(rng, case["mask_form"], b, s)
    with use_isa(isa):
        out = C.attention(qkv, bias, mask, nh, case["scale"], precision="bf16")
    ref, allowance = ref_attention_bf16(qkv, bias, mask, nh, case["scale"])
    assert bf16_err_ok(out, ref, allowance)


@pytest.mark.parametrize("isa", BF16_ISAS)
@pytest.mark.parametrize("lengths,heads,head_dim", [([128] * 8, 16, 64), ([1, 0, 17, 33, 2], 12, 32),
                                                    ([64, 7], 2, 96), ([31], 1, 128)])
def test_bf16_packed_attention_matches_its_reference(isa, lengths, heads, head_dim):
    """Bort's b8 s128 (16 heads of 64), MiniLM's head size, odd key counts and every 48-dim PV remainder."""
    rng = np.random.default_rng(head_dim)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qkv = (rng.standard_normal((int(cu[-1]), 3 * heads * head_dim)) * 2).astype(np.float32)
    bias = rng.standard_normal(3 * heads * head_dim).astype(np.float32)
    rows = rng.integers(0, cu[-1], size=5)
    with use_isa(isa):
        out = C.packed_attention(qkv, bias, cu, heads, precision="bf16")
        subset = C.packed_attention(qkv, bias, cu, heads, query_rows=rows, precision="bf16")
    ref = np.zeros(out.shape)
    allowance = np.zeros(out.shape)
    for a, z in zip(cu[:-1], cu[1:]):
        if z > a:
            r, al = ref_attention_bf16(qkv[None, a:z], bias, None, heads)
            ref[a:z], allowance[a:z] = r[0], al[0]
    assert bf16_err_ok(out, ref, allowance)
    np.testing.assert_array_equal(subset, out[rows])


@pytest.mark.parametrize("isa", BF16_ISAS)
def test_bf16_attention_query_tiles_in_sequence_equal_each_tile_alone(isa):
    """A path that runs a task's query tiles as a pipeline (AMX: one tile's softmax between the next tile's
    Q·Kᵀ and an earlier tile's P·V products) gives every row what it gets as the only query of its task."""
    rng = np.random.default_rng(12)
    lengths, heads, head_dim = [77, 33], 8, 128
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qkv = (3 * rng.standard_normal((int(cu[-1]), 3 * heads * head_dim))).astype(np.float32)
    bias = rng.standard_normal(3 * heads * head_dim).astype(np.float32)
    with use_isa(isa):
        full = C.packed_attention(qkv, bias, cu, heads, precision="bf16")
        for row in range(int(cu[-1])):
            one = C.packed_attention(qkv, bias, cu, heads, precision="bf16", query_rows=np.array([row], np.int64))
            np.testing.assert_array_equal(one[0], full[row])


def test_bf16_attention_rounds_the_products():
    """bf16 differs from fp32 by about bf16's resolution, and its reference says by how much."""
    rng = np.random.default_rng(5)
    qkv = (rng.standard_normal((2, 40, 3 * 2 * 64)) * 2).astype(np.float32)
    with use_isa(BF16_ISAS[-1]):
        out = C.attention(qkv, None, None, 2, precision="bf16")
    exact = ref_attention(qkv, None, None, 2)
    assert 1e-4 < np.abs(out - exact).max() < 0.1
    ref, allowance = ref_attention_bf16(qkv, None, None, 2)
    assert bf16_err_ok(out, ref, allowance)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "scalar"])
def test_bf16_attention_is_fp32_on_paths_without_bf16_instructions(isa):
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((2, 21, 3 * 2 * 64)).astype(np.float32)
    mask = make_mask(rng, "keymask_int64", 2, 21)
    with use_isa(isa):
        np.testing.assert_array_equal(C.attention(qkv, None, mask, 2, precision="bf16"),
                                      C.attention(qkv, None, mask, 2))


@pytest.mark.skipif("avx512_bf16" not in BF16_ISAS, reason="CPU without AVX512-BF16")
@pytest.mark.parametrize("head_dim", [16, 48, 80])
def test_bf16_attention_runs_fp32_avx512_for_head_dims_not_multiple_of_32(head_dim):
    rng = np.random.default_rng(head_dim)
    qkv = rng.standard_normal((2, 19, 3 * 3 * head_dim)).astype(np.float32)
    with use_isa("avx512_bf16"):
        out = C.attention(qkv, None, None, 3, precision="bf16")
    with use_isa("avx512"):
        np.testing.assert_array_equal(out, C.attention(qkv, None, None, 3))


def test_attention_rejects_unknown_precision():
    qkv = np.zeros((1, 2, 6), np.float32)
    with pytest.raises(ValueError, match="precision must be 'fp32', 'bf16' or 'int8', got 'fp16'"):
        C.attention(qkv, None, None, 1, precision="fp16")
    with pytest.raises(ValueError, match="precision must be 'fp32', 'bf16' or 'int8', got 'BF16'"):
        C.packed_attention(qkv[0], None, np.array([0, 2]), 1, precision="BF16")
    with pytest.raises(ValueError, match="precision must be 'fp32', 'bf16' or 'int8', got 'u8'"):
        C.attention(qkv, None, None, 1, precision="u8")


# ----------------------------------------------------------------------------------------------
# Attention with int8 Q K^T (precision="int8"): the AVX512-BF16 level's vpdpbusd path and the scalar reference
# compute it (the same integers and score epilogue, kBf16's softmax and P V); the other vector paths compute fp32.

INT8_ISAS = BF16_ISAS


@pytest.mark.parametrize("isa", INT8_ISAS)
@FAST
@given(case=attention_cases())
def test_int8_attention_matches_its_reference(isa, case):
    rng = np.random.default_rng(case["seed"])
    b, s, nh, d = case["batch"], case["seq"], case["heads"], case["head_dim"]
    qkv = (rng.standard_normal((b, s, 3 * nh * d)) * 2).astype(np.float32)
    bias = rng.standard_normal(3 * nh * d).astype(np.float32) if case["with_bias"] else None
    mask = make_mask(rng, case["mask_form"], b, s)
    with use_isa(isa):
        out = C.attention(qkv, bias, mask, nh, case["scale"], precision="int8")
    ref, allowance = ref_attention_int8(qkv, bias, mask, nh, case["scale"])
    assert bf16_err_ok(out, ref, allowance)


@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize("lengths,heads,head_dim", [([128] * 8, 8, 128), ([1, 0, 17, 33, 2], 12, 32),
                                                    ([64, 7], 2, 96), ([31, 16, 15], 1, 192), ([513], 2, 64)])
def test_int8_packed_attention_matches_its_reference(isa, lengths, heads, head_dim):
    """Bort's b8 s128 (8 heads of 128), MiniLM's head size, key counts off the 16-key blocks, head sizes off the
    64-dim transposes, a sequence past 512."""
    rng = np.random.default_rng(head_dim)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qkv = (rng.standard_normal((int(cu[-1]), 3 * heads * head_dim)) * 2).astype(np.float32)
    bias = rng.standard_normal(3 * heads * head_dim).astype(np.float32)
    rows = rng.integers(0, cu[-1], size=5)
    with use_isa(isa):
        out = C.packed_attention(qkv, bias, cu, heads, precision="int8")
        subset = C.packed_attention(qkv, bias, cu, heads, query_rows=rows, precision="int8")
    ref = np.zeros(out.shape)
    allowance = np.zeros(out.shape)
    for a, z in zip(cu[:-1], cu[1:]):
        if z > a:
            r, al = ref_attention_int8(qkv[None, a:z], bias, None, heads)
            ref[a:z], allowance[a:z] = r[0], al[0]
    assert bf16_err_ok(out, ref, allowance)
    np.testing.assert_array_equal(subset, out[rows])


@pytest.mark.parametrize("isa", INT8_ISAS)
def test_int8_attention_quantizes_each_row_on_its_own(isa):
    """A query or key row of zeros (or under 1e-30) quantizes to zeros; a row's scale does not depend on another's:
    one key 1000x larger than the others leaves the other keys' scores as the reference's."""
    rng = np.random.default_rng(8)
    qkv = rng.standard_normal((1, 24, 3 * 2 * 64)).astype(np.float32)
    qkv[0, 3, :128] = 0.0  # query row 3, both heads
    qkv[0, 5, 128:256] = 1e-31  # key row 5
    qkv[0, 9, 128:256] *= 1000.0  # key row 9
    with use_isa(isa):
        out = C.attention(qkv, None, None, 2, precision="int8")
    ref, allowance = ref_attention_int8(qkv, None, None, 2)
    assert bf16_err_ok(out, ref, allowance)
    v = round_bf16(qkv[0, :, 256:]).astype(np.float64)  # a zero query: equal scores, the bf16 mean of V
    np.testing.assert_allclose(out[0, 3], v.mean(0), atol=1e-2)


def test_int8_attention_rounds_the_query_key_products():
    """int8 Q K^T differs from bf16 by about int8's resolution, and its reference says by how much."""
    rng = np.random.default_rng(5)
    qkv = (rng.standard_normal((2, 40, 3 * 2 * 64)) * 2).astype(np.float32)
    with use_isa(INT8_ISAS[-1]):
        out = C.attention(qkv, None, None, 2, precision="int8")
        bf16 = C.attention(qkv, None, None, 2, precision="bf16")
    assert 1e-3 < np.abs(out - bf16).max() < 0.5
    ref, allowance = ref_attention_int8(qkv, None, None, 2)
    assert bf16_err_ok(out, ref, allowance)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "scalar"] + (["avx512_vnni"] if "avx512_vnni" in
                                                                       C.supported_isas() else []))
def test_int8_attention_is_fp32_on_paths_without_its_instructions(isa):
    """vpdpbusd alone (AVX512-VNNI without BF16) does not take P V: those levels run the fp32 paths."""
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((2, 21, 3 * 2 * 64)).astype(np.float32)
    mask = make_mask(rng, "keymask_int64", 2, 21)
    with use_isa(isa):
        np.testing.assert_array_equal(C.attention(qkv, None, mask, 2, precision="int8"),
                                      C.attention(qkv, None, mask, 2))


@pytest.mark.skipif("avx512_bf16" not in INT8_ISAS, reason="CPU without AVX512-BF16")
@pytest.mark.parametrize("head_dim", [16, 48, 80])
def test_int8_attention_runs_fp32_avx512_for_head_dims_not_multiple_of_32(head_dim):
    rng = np.random.default_rng(head_dim)
    qkv = rng.standard_normal((2, 19, 3 * 3 * head_dim)).astype(np.float32)
    with use_isa("avx512_bf16"):
        out = C.attention(qkv, None, None, 3, precision="int8")
    with use_isa("avx512"):
        np.testing.assert_array_equal(out, C.attention(qkv, None, None, 3))


# ----------------------------------------------------------------------------------------------
# erf / BiasGelu

@pytest.mark.parametrize("isa", ISAS)
def test_erf_accuracy(isa):
    x = np.concatenate([np.linspace(-10, 10, 200_001), np.geomspace(1e-30, 10, 20_001)]).astype(np.float32)
    x = np.concatenate([x, -x, [0.0]]).astype(np.float32)
    with use_isa(isa):
        y = C.erf(x)
    ref = _erf64(x.astype(np.float64))
    rel = np.abs(y - ref) / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    assert rel.max() <= 1e-6, float(x[np.argmax(rel)])


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), n=st.integers(1, 1100),
       scale=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**31 - 1))
def test_bias_gelu_matches_reference(isa, lead, n, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, n)) * scale).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    with use_isa(isa):
        out = C.bias_gelu(x, bias)
    assert out.shape == x.shape
    assert rel_err(out, ref_gelu(x, bias)) <= TOL


@pytest.mark.parametrize("isa", ISAS)
def test_bias_gelu_extremes(isa):
    x = np.array([[-1e30, -100, -10, -5, -1e-20, 0, 1e-20, 5, 10, 100, 1e30]], np.float32)
    with use_isa(isa):
        out = C.bias_gelu(x, np.zeros(x.shape[1], np.float32))
    np.testing.assert_allclose(out, ref_gelu(x, 0.0), rtol=1e-6, atol=1e-7)


def test_bias_gelu_validation():
    with pytest.raises(ValueError, match="bias must have shape \\[8\\]"):
        C.bias_gelu(np.zeros((2, 8), np.float32), np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="rank >= 1"):
        C.bias_gelu(np.float32(1.0), np.zeros(1, np.float32))


# ----------------------------------------------------------------------------------------------
# SkipLayerNorm

@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lead=st.lists(st.integers(1, 6), min_size=0, max_size=2),
       h=st.one_of(st.integers(1, 300), st.sampled_from([384, 768, 1023, 1024])),
       with_beta=st.booleans(), with_bias=st.booleans(), with_skip_scale=st.booleans(),
       eps=st.sampled_from([1e-12, 1e-5]), offset=st.sampled_from([0.0, 100.0]), seed=st.integers(0, 2**31 - 1))
def test_skip_layernorm_matches_reference(isa, lead, h, with_beta, with_bias, with_skip_scale, eps, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, h)) + offset).astype(np.float32)
    skip = rng.standard_normal((*lead, h)).astype(np.float32)
    gamma = rng.standard_normal(h).astype(np.float32)
    beta = rng.standard_normal(h).astype(np.float32) if with_beta else None
    bias = rng.standard_normal(h).astype(np.float32) if with_bias else None
    skip_scale = rng.uniform(0.05, 20, h).astype(np.float32) if with_skip_scale else None
    with use_isa(isa):
        out = C.skip_layernorm(x, skip, gamma, beta, bias, eps, skip_scale)
    assert out.shape == x.shape
    ref = ref_skip_layernorm(x, skip, gamma, beta, bias, eps, skip_scale)
    # The kernel sums x + skip (+ bias) in float32 before normalising: each row is held to 1e-5 plus that
    # inherent rounding.
    t = x.astype(np.float64) + (skip if skip_scale is None else skip * skip_scale.astype(np.float64))
    if bias is not None:
        t = t + bias
    inherent = layernorm_rounding_allowance(t, gamma, eps)
    assert np.all(np.abs(out - ref) <= TOL * np.maximum(1.0, np.abs(ref).max()) + inherent)


def test_skip_layernorm_default_epsilon_and_constant_rows():
    x = np.full((2, 16), 3.0, np.float32)
    out = C.skip_layernorm(x, np.zeros_like(x), np.ones(16, np.float32))
    np.testing.assert_array_equal(out, np.zeros_like(x))


@pytest.mark.parametrize("kwargs,match", [
    (dict(skip=np.zeros((2, 7))), "skip must have the shape of x"),
    (dict(gamma=np.zeros(7)), "gamma must have shape \\[8\\]"),
    (dict(beta=np.zeros((1, 8))), "beta must have shape \\[8\\]"),
    (dict(bias=np.zeros(9)), "bias must have shape \\[8\\]"),
    (dict(skip_scale=np.zeros(4)), "skip_scale must have shape \\[8\\]"),
    (dict(epsilon=-1.0), "epsilon must be finite"),
])
def test_skip_layernorm_validation(kwargs, match):
    args = dict(x=np.zeros((2, 8)), skip=np.zeros((2, 8)), gamma=np.ones(8), beta=None, bias=None, epsilon=1e-5,
                skip_scale=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        C.skip_layernorm(**args)


# ----------------------------------------------------------------------------------------------
# QuantizeRows / DequantizeRows (the two sides of an int8 GEMM with per-row activation scales)

def ref_quantize_rows(x):
    """The kernel's float32 arithmetic, step by step: bit-exact expectations."""
    x = np.asarray(x, np.float32)
    flat = x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lo = np.fmin(np.nanmin(np.where(np.isnan(flat), 0, flat), axis=1, initial=0), np.float32(0))
        hi = np.fmax(np.nanmax(np.where(np.isnan(flat), 0, flat), axis=1, initial=0), np.float32(0))
        scale = ((hi - lo) / np.float32(255)).astype(np.float32)
        scale = np.where((scale > 0) & np.isfinite(scale), scale, np.float32(1)).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale), 0, 255).astype(np.float32)
        inv = (np.float32(1) / scale).astype(np.float32)
        q = np.rint(flat * inv[:, None]) + zp[:, None]
        q = np.where(np.isnan(q), 0, np.clip(q, 0, 255))
    lead = x.shape[:-1]
    return q.astype(np.uint8).reshape(x.shape), scale.reshape(lead), zp.astype(np.uint8).reshape(lead)


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), k=st.integers(0, 1100),
       scale=st.sampled_from([1e-3, 1.0, 50.0]), shift=st.sampled_from([0.0, 3.0, -3.0]),
       seed=st.integers(0, 2**31 - 1))
def test_quantize_rows_matches_reference_bit_for_bit(isa, lead, k, scale, shift, seed):
    rng = np.random.default_rng(seed)
    x = ((rng.standard_normal((*lead, k)) + shift) * scale).astype(np.float32)
    with use_isa(isa):
        q, s, z = C.quantize_rows(x)
    rq, rs, rz = ref_quantize_rows(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(z, rz)
    # Round trip: every value within half a step (plus float rounding) of the input; 0 stays exact.
    back = s[..., None].astype(np.float64) * (q.astype(np.float64) - z[..., None])
    assert np.all(np.abs(back - x) <= s[..., None] * 0.5001 + 1e-30)


@pytest.mark.parametrize("isa", ISAS)
def test_quantize_rows_edge_rows(isa):
    x = np.array([[0.0] * 40,                      # all zero: scale 1, exact zeros
                  [5.0] * 40,                      # all positive: zero point 0
                  [-2.0] * 40,                     # all negative: zero point 255
                  [np.nan, 1.0, -1.0] + [0.5] * 37,  # NaN: defined (clamped) value, others unaffected
                  [np.inf, 1.0] + [0.0] * 38],
                 np.float32)
    with use_isa(isa):
        q, s, z = C.quantize_rows(x)
    rq, rs, rz = ref_quantize_rows(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(z, rz)
    assert (q[0] == 0).all() and s[0] == 1 and z[0] == 0
    assert z[1] == 0 and q[1].max() == 255 and z[2] == 255 and q[2].max() == 0


def ref_dequantize_rows(acc, row_scale, row_zero_point, weight_scale, weight_colsum, bias, activation):
    y = (row_scale.astype(np.float64)[..., None] * weight_scale *
         (acc.astype(np.float64) - row_zero_point.astype(np.float64)[..., None] * weight_colsum))
    if bias is not None:
        y = y + bias
    return ref_gelu(y, 0.0) if activation == "gelu" else y


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), n=st.integers(1, 1100),
       with_bias=st.booleans(), activation=st.sampled_from(["none", "gelu"]), seed=st.integers(0, 2**31 - 1))
def test_dequantize_rows_matches_reference(isa, lead, n, with_bias, activation, seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-2**24, 2**24, size=(*lead, n)).astype(np.int32)
    row_scale = rng.uniform(1e-4, 1e-2, size=lead).astype(np.float32)
    row_zp = rng.integers(0, 256, size=lead).astype(np.uint8)
    weight_scale = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
    colsum = rng.integers(-20_000, 20_000, n).astype(np.int32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    with use_isa(isa):
        out = C.dequantize_rows(acc, row_scale, row_zp, weight_scale, colsum, bias, activation)
    assert out.shape == acc.shape and out.dtype == np.float32
    assert rel_err(out, ref_dequantize_rows(acc, row_scale, row_zp, weight_scale, colsum, bias, activation)) <= TOL


@pytest.mark.parametrize("isa", ISAS)
def test_dequantize_rows_wraps_instead_of_overflowing(isa):
    # Hostile accumulators: the integer term wraps (defined behaviour under UBSan), never traps.
    acc = np.array([[2**31 - 1, -2**31, 0]], np.int32)
    with use_isa(isa):
        out = C.dequantize_rows(acc, np.ones(1, np.float32), np.array([255], np.uint8), np.ones(3, np.float32),
                                np.array([2**31 - 1, 2**31 - 1, -2**31], np.int32))
    assert out.shape == (1, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(acc=np.zeros((2, 4), np.int64)), "acc must be a int32 array"),
    (dict(row_scale=np.ones(3, np.float32)), "row_scale must have acc's leading shape \\[2\\]"),
    (dict(row_zero_point=np.zeros(2, np.int32)), "row_zero_point must be a uint8 array"),
    (dict(row_zero_point=np.zeros((2, 1), np.uint8)), "row_zero_point must have acc's leading shape"),
    (dict(weight_scale=np.ones(5, np.float32)), "weight_scale must have shape \\[4\\]"),
    (dict(weight_colsum=np.zeros(4, np.float32)), "weight_colsum must be a int32 array"),
    (dict(weight_colsum=np.zeros(3, np.int32)), "weight_colsum must have shape \\[4\\]"),
    (dict(bias=np.zeros(3, np.float32)), "bias must have shape \\[4\\]"),
    (dict(activation="relu"), "activation must be 'none' or 'gelu'"),
    (dict(acc=np.zeros((), np.int32)), "rank >= 1"),
])
def test_dequantize_rows_validation(kwargs, match):
    args = dict(acc=np.zeros((2, 4), np.int32), row_scale=np.ones(2, np.float32), row_zero_point=np.zeros(2, np.uint8),
                weight_scale=np.ones(4, np.float32), weight_colsum=np.zeros(4, np.int32), bias=None, activation="none")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        C.dequantize_rows(**args)


# DequantizeRows epilogues: skip + LayerNorm, and the requantized outputs (QuantizeRows of y, fused)

def dequantize_inputs(rng, lead, n, with_bias=True, bias_offset=0.0):
    """Accumulators and quantization parameters of an int8 GEMM, as the kernels see them."""
    acc = rng.integers(-2**24, 2**24, size=(*lead, n)).astype(np.int32)
    row_scale = rng.uniform(1e-4, 1e-2, size=lead).astype(np.float32)
    row_zp = rng.integers(0, 256, size=lead).astype(np.uint8)
    weight_scale = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
    colsum = rng.integers(-20_000, 20_000, n).astype(np.int32)
    bias = (rng.standard_normal(n) + bias_offset).astype(np.float32) if with_bias else None
    return acc, row_scale, row_zp, weight_scale, colsum, bias


def ref_dequantize_epilogue(acc, row_scale, row_zero_point, weight_scale, weight_colsum, bias=None,
                            activation="none", skip=None, gamma=None, beta=None, skip_scale=None, epsilon=1e-12):
    """float64 y of DequantizeRows with its epilogue, and the per-row LayerNorm allowance (0 without skip)."""
    v = ref_dequantize_rows(acc, row_scale, row_zero_point, weight_scale, weight_colsum, bias, activation)
    if skip is None:
        return v, 0.0
    scaled_skip = np.asarray(skip, np.float64) * (1.0 if skip_scale is None else skip_scale.astype(np.float64))
    # The kernel rounds each product and the bias before the skip is added: those are the operands.
    unbiased = v if bias is None else v - bias
    magnitude = np.abs(unbiased) + (0.0 if bias is None else np.abs(bias)) + np.abs(scaled_skip)
    allowance = layernorm_rounding_allowance(v + scaled_skip, gamma, epsilon, magnitude)
    return ref_skip_layernorm(v, skip, gamma, beta, None, epsilon, skip_scale), allowance


def assert_close_to_reference(y, ref, allowance):
    assert np.all(np.abs(y - ref) <= TOL * max(1.0, float(np.abs(ref).max(initial=0))) + allowance)


def assert_requantized_is_quantize_rows_of(quantized, y):
    """The fused requantized outputs equal QuantizeRows run on y, bit for bit (same ISA)."""
    for got, want in zip(quantized, C.quantize_rows(y)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
       n=st.one_of(st.integers(1, 300), st.sampled_from([768, 1023, 1024, 1100])), with_bias=st.booleans(),
       epilogue=st.sampled_from(["none", "gelu", "layernorm"]), with_beta=st.booleans(),
       with_skip_scale=st.booleans(), eps=st.sampled_from([1e-12, 1e-5]), bias_offset=st.sampled_from([0.0, 100.0]),
       requantize=st.booleans(), output_float=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_dequantize_rows_epilogues_match_reference(isa, lead, n, with_bias, epilogue, with_beta, with_skip_scale, eps,
                                                    bias_offset, requantize, output_float, seed):
    rng = np.random.default_rng(seed)
    acc, row_scale, row_zp, weight_scale, colsum, bias = dequantize_inputs(rng, lead, n, with_bias, bias_offset)
    norm = {}
    if epilogue == "layernorm":
        norm = dict(skip=(rng.standard_normal((*lead, n)) * 10).astype(np.float32),
                    gamma=rng.standard_normal(n).astype(np.float32),
                    beta=rng.standard_normal(n).astype(np.float32) if with_beta else None,
                    skip_scale=rng.uniform(0.05, 20, n).astype(np.float32) if with_skip_scale else None)
    activation = "gelu" if epilogue == "gelu" else "none"
    args = (acc, row_scale, row_zp, weight_scale, colsum, bias, activation)
    with use_isa(isa):
        full = C.dequantize_rows(*args, **norm, epsilon=eps, requantize=requantize)
        y, quantized = (full[0], full[1:]) if requantize else (full, None)
        if requantize:
            assert_requantized_is_quantize_rows_of(quantized, y)
            if not output_float:  # from the per-thread scratch row instead of y: the same bits
                for got, want in zip(C.dequantize_rows(*args, **norm, epsilon=eps, requantize=True,
                                                       output_float=False), quantized):
                    np.testing.assert_array_equal(got, want)
    assert y.shape == acc.shape and y.dtype == np.float32
    ref, allowance = ref_dequantize_epilogue(*args, **norm, epsilon=eps)
    assert_close_to_reference(y, ref, allowance)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows,n,epilogue", [(33, 1024, "layernorm"), (33, 768, "gelu"), (130, 1024, "layernorm"),
                                             (7, 24, "layernorm"), (7, 8, "gelu"), (1, 1, "layernorm")])
def test_dequantize_rows_epilogue_at_bort_shapes(isa, rows, n, epilogue):
    """Bort's attention-output / FFN-output LayerNorm (1024) and FFN-input GELU (768), plus short rows that are
    all tail (fewer than one vector)."""
    rng = np.random.default_rng(rows * n)
    acc, row_scale, row_zp, weight_scale, colsum, bias = dequantize_inputs(rng, (rows,), n)
    norm = {}
    if epilogue == "layernorm":
        norm = dict(skip=rng.standard_normal((rows, n)).astype(np.float32),
                    gamma=rng.standard_normal(n).astype(np.float32), beta=rng.standard_normal(n).astype(np.float32),
                    skip_scale=rng.uniform(0.05, 20, n).astype(np.float32))
    activation = "gelu" if epilogue == "gelu" else "none"
    args = (acc, row_scale, row_zp, weight_scale, colsum, bias, activation)
    with use_isa(isa):
        y, *quantized = C.dequantize_rows(*args, **norm, epsilon=1e-5, requantize=True)
        assert_requantized_is_quantize_rows_of(quantized, y)
        unfused = C.dequantize_rows(*args)
        if norm:
            unfused = C.skip_layernorm(unfused, norm["skip"], norm["gamma"], norm["beta"], None, 1e-5,
                                       norm["skip_scale"])
    ref, allowance = ref_dequantize_epilogue(*args, **norm, epsilon=1e-5)
    assert_close_to_reference(y, ref, allowance)
    # The chain it replaces gives the same values up to the order of float32 additions.
    assert_close_to_reference(unfused, ref, allowance)


def test_dequantize_rows_epilogue_threads_do_not_change_results():
    rng = np.random.default_rng(11)
    acc, row_scale, row_zp, weight_scale, colsum, bias = dequantize_inputs(rng, (4, 50), 1024)
    kwargs = dict(skip=rng.standard_normal((4, 50, 1024)).astype(np.float32),
                  gamma=rng.standard_normal(1024).astype(np.float32), requantize=True)
    before = C.get_num_threads()
    try:
        C.set_num_threads(1)
        one = C.dequantize_rows(acc, row_scale, row_zp, weight_scale, colsum, bias, **kwargs)
        C.set_num_threads(2)
        two = C.dequantize_rows(acc, row_scale, row_zp, weight_scale, colsum, bias, **kwargs)
        scratch = C.dequantize_rows(acc, row_scale, row_zp, weight_scale, colsum, bias, **kwargs, output_float=False)
    finally:
        C.set_num_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one[1:], scratch):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("isa", ISAS)
def test_dequantize_rows_epilogue_non_finite_rows_stay_defined(isa):
    # An inf or NaN in the residual makes that row's LayerNorm NaN; its requantization is still QuantizeRows'
    # defined (clamped) value, and the other rows are untouched.
    rng = np.random.default_rng(12)
    acc, row_scale, row_zp, weight_scale, colsum, bias = dequantize_inputs(rng, (4,), 40)
    skip = rng.standard_normal((4, 40)).astype(np.float32)
    skip[1, 3], skip[2, 0] = np.inf, np.nan
    gamma = np.ones(40, np.float32)
    with use_isa(isa):
        y, *quantized = C.dequantize_rows(acc, row_scale, row_zp, weight_scale, colsum, bias, skip=skip, gamma=gamma,
                                          requantize=True)
        assert_requantized_is_quantize_rows_of(quantized, y)
    assert np.isnan(y[1:3]).all() and np.isfinite(y[[0, 3]]).all()


@pytest.mark.parametrize("shape", [(3, 0), (0, 8), (2, 0, 5)])
def test_dequantize_rows_epilogue_empty(shape):
    acc = np.zeros(shape, np.int32)
    lead, n = shape[:-1], shape[-1]
    y, q, s, z = C.dequantize_rows(acc, np.ones(lead, np.float32), np.zeros(lead, np.uint8), np.ones(n, np.float32),
                                   np.zeros(n, np.int32), skip=np.zeros(shape, np.float32),
                                   gamma=np.ones(n, np.float32), requantize=True)
    assert y.shape == q.shape == shape and s.shape == z.shape == lead
    assert_requantized_is_quantize_rows_of((q, s, z), y)


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=np.ones(4, np.float32)), "gamma belongs to the skip \\+ LayerNorm epilogue and needs skip"),
    (dict(beta=np.ones(4, np.float32)), "beta belongs to the skip \\+ LayerNorm epilogue and needs skip"),
    (dict(skip_scale=np.ones(4, np.float32)), "skip_scale belongs to the skip \\+ LayerNorm epilogue"),
    (dict(skip=np.zeros((2, 4), np.float32)), "skip needs gamma"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones(4, np.float32), activation="gelu"),
     "'gelu' cannot be combined with skip"),
    (dict(skip=np.zeros((2, 3), np.float32), gamma=np.ones(4, np.float32)),
     "skip must have the shape of acc \\[2, 4\\]"),
    (dict(skip=np.zeros((1, 2, 4), np.float32), gamma=np.ones(4, np.float32)), "skip must have the shape of acc"),
    (dict(skip=np.zeros(8, np.float32), gamma=np.ones(4, np.float32)), "skip must have the shape of acc"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones(5, np.float32)), "gamma must have shape \\[4\\]"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones((1, 4), np.float32)), "gamma must have shape \\[4\\]"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones(4, np.float32), beta=np.ones(3, np.float32)),
     "beta must have shape \\[4\\]"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones(4, np.float32), skip_scale=np.ones(2, np.float32)),
     "skip_scale must have shape \\[4\\]"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones(4, np.float32), epsilon=-1.0), "epsilon must be finite"),
    (dict(skip=np.zeros((2, 4), np.float32), gamma=np.ones(4, np.float32), epsilon=float("nan")),
     "epsilon must be finite"),
    (dict(skip=np.array([["a"] * 4] * 2), gamma=np.ones(4, np.float32)), "skip must be a real numeric array"),
    (dict(output_float=False), "no output is requested"),
])
def test_dequantize_rows_epilogue_validation(kwargs, match):
    args = dict(acc=np.zeros((2, 4), np.int32), row_scale=np.ones(2, np.float32), row_zero_point=np.zeros(2, np.uint8),
                weight_scale=np.ones(4, np.float32), weight_colsum=np.zeros(4, np.int32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        C.dequantize_rows(**args)


def test_dequantize_rows_return_forms():
    args = (np.zeros((2, 4), np.int32), np.ones(2, np.float32), np.zeros(2, np.uint8), np.ones(4, np.float32),
            np.zeros(4, np.int32))
    assert isinstance(C.dequantize_rows(*args), np.ndarray)
    assert [a.dtype for a in C.dequantize_rows(*args, requantize=True)] == [np.float32, np.uint8, np.float32, np.uint8]
    assert [a.dtype for a in C.dequantize_rows(*args, requantize=True, output_float=False)] == \
        [np.uint8, np.float32, np.uint8]
