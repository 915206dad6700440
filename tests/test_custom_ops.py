"""onnxruntime custom ops of bort_infer._C (domain ai.bort_infer): tiny one-node graphs against the numpy
references, thread-count independence, and hostile graphs that must fail with a clear error, never crash."""
from __future__ import annotations

import numpy as np
import pytest

from .test_kernels import (C, ISAS, TOL, make_mask, ref_attention, ref_dequantize_rows, ref_gelu,
                           ref_packed_attention, ref_quantize_rows, ref_skip_layernorm, rel_err, use_isa)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

DOMAIN = "ai.bort_infer"
ORT_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
              ort.capi.onnxruntime_pybind11_state.RuntimeException,
              ort.capi.onnxruntime_pybind11_state.InvalidGraph)
ELEM = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int32: TensorProto.INT32,
        np.int64: TensorProto.INT64, np.float16: TensorProto.FLOAT16, np.uint8: TensorProto.UINT8,
        np.int8: TensorProto.INT8}


def one_node_session(op, feeds: dict, attrs: dict | None = None, input_names=None, threads: int = 1,
                     output_types=(TensorProto.FLOAT,)):
    """Session of a graph holding one `op` node whose graph inputs are the (non-None) feeds.

    input_names: the node's input list (use "" for an absent optional input); defaults to feeds' keys.
    output_types: element type of each of the node's outputs.
    """
    names = list(feeds) if input_names is None else input_names
    graph_inputs = [helper.make_tensor_value_info(n, ELEM[feeds[n].dtype.type], [None] * feeds[n].ndim)
                    for n in names if n]
    outputs = ["out"] + [f"out{i}" for i in range(1, len(output_types))]
    node = helper.make_node(op, names, outputs, domain=DOMAIN, **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, t, None) for o, t in zip(outputs, output_types)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(C.__file__)
    so.intra_op_num_threads = threads
    so.log_severity_level = 4  # expected failures below would otherwise spam stderr
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


QUANTIZE_ROWS_OUTPUTS = (TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8)


def run(op, feeds, attrs=None, input_names=None, threads=1):
    output_types = QUANTIZE_ROWS_OUTPUTS if op == "QuantizeRows" else (TensorProto.FLOAT,)
    sess = one_node_session(op, feeds, attrs, input_names, threads, output_types)
    return sess.run(None, {k: v for k, v in feeds.items() if k})[0]


def attention_inputs(batch=2, seq=37, heads=8, head_dim=32, mask_form="keymask_int64", seed=0):
    rng = np.random.default_rng(seed)
    hidden = heads * head_dim
    qkv = rng.standard_normal((batch, seq, 3 * hidden)).astype(np.float32)
    bias = rng.standard_normal(3 * hidden).astype(np.float32)
    return qkv, bias, make_mask(rng, mask_form, batch, seq)


# ----------------------------------------------------------------------------------------------
# Results

@pytest.mark.parametrize("mask_form", ["keymask_int64", "keymask_int32", "lengths_int32", "lengths_int64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_attention(mask_form, threads):
    qkv, bias, mask = attention_inputs(batch=3, seq=45, heads=4, head_dim=64, mask_form=mask_form)
    out = run("FusedAttention", {"qkv": qkv, "bias": bias, "mask": mask}, {"num_heads": 4}, threads=threads)
    assert rel_err(out, ref_attention(qkv, bias, mask, 4)) <= TOL
    np.testing.assert_array_equal(out, C.attention(qkv, bias, mask, 4))


def test_fused_attention_without_bias_and_with_scale():
    qkv, _, mask = attention_inputs(seq=20, heads=2, head_dim=128)
    out = run("FusedAttention", {"qkv": qkv, "mask": mask}, {"num_heads": 2, "scale": 0.3},
              input_names=["qkv", "", "mask"])
    assert rel_err(out, ref_attention(qkv, None, mask, 2, 0.3)) <= TOL


def test_fused_attention_threads_agree_at_bort_shape():
    qkv, bias, mask = attention_inputs(batch=2, seq=128, heads=8, head_dim=128)
    feeds = {"qkv": qkv, "bias": bias, "mask": mask}
    one = run("FusedAttention", feeds, {"num_heads": 8}, threads=1)
    two = run("FusedAttention", feeds, {"num_heads": 8}, threads=2)
    np.testing.assert_array_equal(one, two)
    assert rel_err(one, ref_attention(qkv, bias, mask, 8)) <= TOL


@pytest.mark.parametrize("isa", ISAS)
def test_attention_ops_on_each_isa(isa):
    """The ops run whichever kernel path is active (the library is the module's own shared object)."""
    qkv, bias, mask = attention_inputs(batch=2, seq=70, heads=8, head_dim=128, seed=9)
    cu = np.array([0, 70, 101], np.int64)
    packed = np.ascontiguousarray(qkv.reshape(-1, qkv.shape[-1])[:101])
    with use_isa(isa):
        fused = run("FusedAttention", {"qkv": qkv, "bias": bias, "mask": mask}, {"num_heads": 8}, threads=2)
        out = run("PackedAttention", {"qkv": packed, "bias": bias, "cu_seqlens": cu}, {"num_heads": 8}, threads=2)
    assert rel_err(fused, ref_attention(qkv, bias, mask, 8)) <= TOL
    assert rel_err(out, ref_packed_attention(packed, bias, cu, 8)) <= TOL


@pytest.mark.parametrize("isa", ISAS)
def test_elementwise_ops_on_each_isa(isa):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((3, 21, 200)) * 3).astype(np.float32)
    skip = rng.standard_normal(x.shape).astype(np.float32)
    bias, gamma = rng.standard_normal(200).astype(np.float32), rng.standard_normal(200).astype(np.float32)
    with use_isa(isa):
        gelu = run("BiasGelu", {"x": x, "bias": bias}, threads=2)
        norm = run("SkipLayerNorm", {"x": x, "skip": skip, "gamma": gamma}, {"epsilon": 1e-5}, threads=2)
        q, s, z = one_node_session("QuantizeRows", {"x": x}, threads=2,
                                   output_types=QUANTIZE_ROWS_OUTPUTS).run(None, {"x": x})
    assert rel_err(gelu, ref_gelu(x, bias)) <= TOL
    assert rel_err(norm, ref_skip_layernorm(x, skip, gamma, None, None, 1e-5)) <= TOL
    for got, want in zip((q, s, z), ref_quantize_rows(x)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cu_dtype", [np.int32, np.int64])
def test_packed_attention(cu_dtype):
    rng = np.random.default_rng(1)
    cu = np.array([0, 5, 5, 40, 41], cu_dtype)
    qkv = rng.standard_normal((41, 3 * 256)).astype(np.float32)
    bias = rng.standard_normal(3 * 256).astype(np.float32)
    for threads in (1, 2):
        out = run("PackedAttention", {"qkv": qkv, "bias": bias, "cu_seqlens": cu}, {"num_heads": 4}, threads=threads)
        assert rel_err(out, ref_packed_attention(qkv, bias, cu, 4)) <= TOL


@pytest.mark.parametrize("separate_query", [False, True])
def test_packed_attention_query_rows(separate_query):
    rng = np.random.default_rng(5)
    cu = np.array([0, 9, 9, 50], np.int64)
    qkv = rng.standard_normal((50, 3 * 256)).astype(np.float32)
    bias = rng.standard_normal(3 * 256).astype(np.float32)
    rows = np.array([9, 0, 49, 0], np.int64)
    feeds = {"qkv": qkv, "bias": bias, "cu_seqlens": cu, "query_rows": rows}
    if separate_query:
        feeds["qkv"] = np.ascontiguousarray(qkv[:, 256:])
        feeds["query"] = qkv[rows, :256]
    for threads in (1, 2):
        out = run("PackedAttention", feeds, {"num_heads": 4}, threads=threads)
        assert rel_err(out, ref_packed_attention(qkv, bias, cu, 4)[rows]) <= TOL


@pytest.mark.parametrize("threads", [1, 2])
def test_bias_gelu(threads):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 50, 1024)) * 3).astype(np.float32)
    bias = rng.standard_normal(1024).astype(np.float32)
    out = run("BiasGelu", {"x": x, "bias": bias}, threads=threads)
    assert rel_err(out, ref_gelu(x, bias)) <= TOL
    np.testing.assert_array_equal(out, C.bias_gelu(x, bias))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("optional", [(), ("beta",), ("bias",), ("beta", "bias"), ("skip_scale",),
                                      ("beta", "bias", "skip_scale")])
def test_skip_layernorm(threads, optional):
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((4, 33, 1024)).astype(np.float32),
             "skip": rng.standard_normal((4, 33, 1024)).astype(np.float32),
             "gamma": rng.standard_normal(1024).astype(np.float32),
             "beta": rng.standard_normal(1024).astype(np.float32),
             "bias": rng.standard_normal(1024).astype(np.float32),
             "skip_scale": rng.uniform(0.1, 10, 1024).astype(np.float32)}
    names = ["x", "skip", "gamma"] + [n if n in optional else "" for n in ("beta", "bias", "skip_scale")]
    while names[-1] == "":
        names.pop()
    feeds = {k: v for k, v in feeds.items() if k in names}
    out = run("SkipLayerNorm", feeds, {"epsilon": 1e-5}, input_names=names, threads=threads)
    ref = ref_skip_layernorm(feeds["x"], feeds["skip"], feeds["gamma"], feeds.get("beta"), feeds.get("bias"), 1e-5,
                             feeds.get("skip_scale"))
    assert rel_err(out, ref) <= TOL


def test_skip_layernorm_default_epsilon():
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    feeds = {"x": x, "skip": np.zeros_like(x), "gamma": np.ones(64, np.float32)}
    out = run("SkipLayerNorm", feeds)
    assert rel_err(out, ref_skip_layernorm(x, 0, 1, None, None, 1e-12)) <= TOL


def int8_linear_session(weight_int8, weight_scale, bias, activation, threads):
    """QuantizeRows → onnxruntime MatMulInteger → DequantizeRows: the int8 linear the exporter emits."""
    colsum = weight_int8.astype(np.int32).sum(axis=0).astype(np.int32)
    inits = [onnx.numpy_helper.from_array(weight_int8, "w"), onnx.numpy_helper.from_array(weight_scale, "ws"),
             onnx.numpy_helper.from_array(colsum, "colsum"), onnx.numpy_helper.from_array(bias, "bias")]
    nodes = [helper.make_node("QuantizeRows", ["x"], ["xq", "xs", "xz"], domain=DOMAIN),
             helper.make_node("MatMulInteger", ["xq", "w"], ["acc"]),
             helper.make_node("DequantizeRows", ["acc", "xs", "xz", "ws", "colsum", "bias"], ["y"], domain=DOMAIN,
                              activation=activation)]
    graph = helper.make_graph(nodes, "int8_linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(C.__file__)
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_linear_chain(activation, threads):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((77, 384)) * 3 + 0.5).astype(np.float32)
    x[5] *= 40  # an outlier row must not cost the other rows their resolution
    w = rng.standard_normal((384, 200)).astype(np.float32)
    ws = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    wq = np.clip(np.rint(w / ws), -127, 127).astype(np.int8)
    bias = rng.standard_normal(200).astype(np.float32)
    out = int8_linear_session(wq, ws, bias, activation, threads).run(None, {"x": x})[0]
    # Exactly the math of the two kernels around an exact integer GEMM...
    q, s, z = ref_quantize_rows(x)
    acc = q.astype(np.int64) @ wq.astype(np.int64)
    colsum = wq.astype(np.int64).sum(axis=0)
    assert rel_err(out, ref_dequantize_rows(acc, s, z, ws, colsum, bias, activation)) <= TOL
    # ...and close to the float product: each row's error is bounded by its own step, outlier or not.
    exact = x.astype(np.float64) @ (wq * ws.astype(np.float64)) + bias
    if activation == "gelu":
        exact = ref_gelu(exact, 0.0)
    bound = (s[:, None] * 0.5 * np.abs(wq * ws.astype(np.float64)).sum(axis=0)) * 1.01 + 1e-4
    assert (np.abs(out - exact) <= bound).all()


def test_quantize_rows_op_matches_kernel():
    x = np.random.default_rng(8).standard_normal((3, 5, 70)).astype(np.float32)
    q, s, z = one_node_session("QuantizeRows", {"x": x}, output_types=QUANTIZE_ROWS_OUTPUTS).run(None, {"x": x})
    rq, rs, rz = ref_quantize_rows(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(z, rz)


# ----------------------------------------------------------------------------------------------
# Hostile graphs: each must raise an onnxruntime error naming the problem, and the process survives.

def expect_failure(match, op, feeds, attrs=None, input_names=None):
    with pytest.raises(ORT_ERRORS, match=match):
        run(op, feeds, attrs, input_names)


Q = np.zeros((2, 3, 96), np.float32)
B = np.zeros(96, np.float32)
M = np.ones((2, 3), np.int64)


@pytest.mark.parametrize("feeds,attrs,match", [
    ({"qkv": Q, "bias": B, "mask": M}, {"num_heads": 0}, "num_heads must be positive"),
    ({"qkv": Q, "bias": B, "mask": M}, {"num_heads": -4}, "num_heads must be positive"),
    ({"qkv": Q, "bias": B, "mask": M}, {}, "'num_heads' is required"),
    ({"qkv": Q, "bias": B, "mask": M}, {"num_heads": 5}, "not divisible by num_heads"),
    ({"qkv": Q, "bias": B, "mask": M}, {"num_heads": 1, "scale": float("inf")}, "'scale' must be finite"),
    ({"qkv": Q[0], "bias": B, "mask": M}, {"num_heads": 1}, "rank 3"),
    ({"qkv": Q[..., :95], "bias": B[:95], "mask": M}, {"num_heads": 1}, "multiple of 3"),
    ({"qkv": Q, "bias": B[:90], "mask": M}, {"num_heads": 1}, "bias must have shape \\[96\\]"),
    ({"qkv": Q, "bias": B.reshape(1, 96), "mask": M}, {"num_heads": 1}, "bias must have shape \\[96\\]"),
    ({"qkv": Q, "bias": B, "mask": M[:, :2]}, {"num_heads": 1}, "mask must have shape"),
    ({"qkv": Q, "bias": B, "mask": M[:1]}, {"num_heads": 1}, "mask must have shape"),
    ({"qkv": Q, "bias": B, "mask": np.ones(3, np.int64)}, {"num_heads": 1}, "one length per sequence"),
    ({"qkv": Q, "bias": B, "mask": M[..., None]}, {"num_heads": 1}, "rank 2"),
    ({"qkv": Q, "bias": B, "mask": M.astype(np.float32)}, {"num_heads": 1}, "must be int32 or int64, got float32"),
    ({"qkv": Q.astype(np.float64), "bias": B, "mask": M}, {"num_heads": 1}, "qkv"),
])
def test_fused_attention_rejects(feeds, attrs, match):
    expect_failure(match, "FusedAttention", feeds, attrs)


def test_fused_attention_hostile_mask_values_are_safe():
    qkv, bias, _ = attention_inputs(batch=3, seq=9, heads=2, head_dim=32)
    lengths = np.array([-(2**62), 2**62, 4], np.int64)  # clamped to [0, S], never used as raw indices
    out = run("FusedAttention", {"qkv": qkv, "bias": bias, "mask": lengths}, {"num_heads": 2})
    assert rel_err(out, ref_attention(qkv, bias, lengths, 2)) <= TOL
    odd = np.array([[5, -1, 0, 2**40, 0, 0, 0, 0, 7]] * 3, np.int64)  # nonzero = attend
    out = run("FusedAttention", {"qkv": qkv, "bias": bias, "mask": odd}, {"num_heads": 2})
    assert rel_err(out, ref_attention(qkv, bias, odd, 2)) <= TOL


@pytest.mark.parametrize("cu,match", [([0, 2, 1, 3], "non-decreasing"), ([1, 3], "must be 0"),
                                      ([0, 2**40], "number of tokens"), ([0, -5, 3], "non-decreasing")])
def test_packed_attention_rejects_bad_offsets(cu, match):
    feeds = {"qkv": np.zeros((3, 96), np.float32), "bias": B, "cu_seqlens": np.array(cu, np.int64)}
    expect_failure(match, "PackedAttention", feeds, {"num_heads": 2})


@pytest.mark.parametrize("rows,match", [([0, 3], "not a token index"), ([-5], "not a token index"),
                                        ([2**40], "not a token index")])
def test_packed_attention_rejects_bad_query_rows(rows, match):
    feeds = {"qkv": np.zeros((3, 96), np.float32), "bias": B, "cu_seqlens": np.array([0, 3], np.int64),
             "query_rows": np.array(rows, np.int64)}
    expect_failure(match, "PackedAttention", feeds, {"num_heads": 2})


def test_packed_attention_rejects_mismatched_query():
    feeds = {"qkv": np.zeros((3, 64), np.float32), "bias": B, "cu_seqlens": np.array([0, 3], np.int64),
             "query_rows": np.array([0, 1], np.int64), "query": np.zeros((3, 32), np.float32)}
    expect_failure("one row per query_rows entry", "PackedAttention", feeds, {"num_heads": 2})
    feeds["query"] = np.zeros((2, 48), np.float32)
    expect_failure("K \\| V", "PackedAttention", feeds, {"num_heads": 2})


def test_packed_attention_rejects_empty_offsets():
    feeds = {"qkv": np.zeros((3, 96), np.float32), "bias": B, "cu_seqlens": np.zeros(0, np.int64)}
    expect_failure("at least one element", "PackedAttention", feeds, {"num_heads": 2})


@pytest.mark.parametrize("feeds,match", [
    ({"x": np.zeros((2, 8), np.float32), "bias": np.zeros(7, np.float32)}, "bias must have shape \\[8\\]"),
    ({"x": np.zeros((2, 8), np.float32), "bias": np.zeros((1, 8), np.float32)}, "bias must have shape \\[8\\]"),
    ({"x": np.zeros((2, 8), np.float64), "bias": np.zeros(8, np.float32)}, "x"),
])
def test_bias_gelu_rejects(feeds, match):
    expect_failure(match, "BiasGelu", feeds)


X = np.zeros((2, 8), np.float32)


@pytest.mark.parametrize("feeds,attrs,match", [
    ({"x": X, "skip": X[:, :7], "gamma": np.ones(8, np.float32)}, {}, "skip must have the shape of x"),
    ({"x": X, "skip": X[:1], "gamma": np.ones(8, np.float32)}, {}, "skip must have the shape of x"),
    ({"x": X, "skip": X, "gamma": np.ones(9, np.float32)}, {}, "gamma must have shape \\[8\\]"),
    ({"x": X, "skip": X, "gamma": np.ones(8, np.float32), "beta": np.ones(3, np.float32)}, {}, "beta must have shape"),
    ({"x": X, "skip": X, "gamma": np.ones(8, np.float32), "beta": np.ones(8, np.float32),
      "bias": np.ones(2, np.float32)}, {}, "bias must have shape"),
    ({"x": X, "skip": X, "gamma": np.ones(8, np.float32), "beta": np.ones(8, np.float32),
      "bias": np.ones(8, np.float32), "skip_scale": np.ones(7, np.float32)}, {}, "skip_scale must have shape"),
    ({"x": X, "skip": X, "gamma": np.ones(8, np.float32)}, {"epsilon": -1.0}, "'epsilon' must be finite and >= 0"),
    ({"x": X, "skip": X, "gamma": np.ones(8, np.float32)}, {"epsilon": float("nan")}, "'epsilon' must be finite"),
])
def test_skip_layernorm_rejects(feeds, attrs, match):
    expect_failure(match, "SkipLayerNorm", feeds, attrs)


def test_errors_leave_the_library_usable():
    expect_failure("num_heads", "FusedAttention", {"qkv": Q, "bias": B, "mask": M}, {"num_heads": 0})
    x = np.ones((2, 8), np.float32)
    assert np.isfinite(run("BiasGelu", {"x": x, "bias": np.zeros(8, np.float32)})).all()


def test_missing_required_input_is_rejected_at_load():
    with pytest.raises(ORT_ERRORS):
        run("SkipLayerNorm", {"x": X, "skip": X})


def test_num_heads_of_wrong_attribute_type_is_rejected():
    expect_failure("'num_heads' is required", "FusedAttention", {"qkv": Q, "bias": B, "mask": M}, {"num_heads": 2.0})


def test_packed_attention_rejects_wrong_rank_and_dtype():
    cu = np.array([0, 3], np.int64)
    expect_failure("rank 2", "PackedAttention", {"qkv": Q, "bias": B, "cu_seqlens": cu}, {"num_heads": 1})
    expect_failure("cu_seqlens' must be int32 or int64",
                   "PackedAttention", {"qkv": Q[0], "bias": B, "cu_seqlens": cu.astype(np.float32)}, {"num_heads": 1})


ACC = np.zeros((2, 4), np.int32)
DQ = {"acc": ACC, "row_scale": np.ones(2, np.float32), "row_zero_point": np.zeros(2, np.uint8),
      "weight_scale": np.ones(4, np.float32), "weight_colsum": np.zeros(4, np.int32)}


@pytest.mark.parametrize("change,attrs,match", [
    ({"row_scale": np.ones(3, np.float32)}, {}, "row_scale must have acc's leading shape"),
    ({"row_zero_point": np.zeros((2, 2), np.uint8)}, {}, "row_zero_point must have acc's leading shape"),
    ({"weight_scale": np.ones(5, np.float32)}, {}, "weight_scale must have shape \\[4\\]"),
    ({"weight_colsum": np.zeros(2, np.int32)}, {}, "weight_colsum must have shape \\[4\\]"),
    ({"acc": np.zeros(4, np.int32), "row_scale": np.ones(1, np.float32)}, {}, "row_scale must have acc's leading"),
    ({}, {"activation": "tanh"}, "'activation' must be 'none' or 'gelu'"),
])
def test_dequantize_rows_rejects(change, attrs, match):
    expect_failure(match, "DequantizeRows", {**DQ, **change}, attrs)


def test_quantize_rows_rejects_scalar_and_wrong_dtype():
    expect_failure("rank >= 1", "QuantizeRows", {"x": np.array(1.0, np.float32)})
    with pytest.raises(ORT_ERRORS):
        run("QuantizeRows", {"x": np.zeros((2, 3), np.float64)})


def test_bias_gelu_rejects_scalar_input():
    expect_failure("rank >= 1", "BiasGelu", {"x": np.array(1.0, np.float32), "bias": np.zeros(1, np.float32)})
