"""onnxruntime custom ops of libbort_infer_ops.so (domain ai.bort_infer): tiny one-node graphs against the numpy
references, thread-count independence, and hostile graphs that must fail with a clear error, never crash."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .test_kernels import (
    BF16_ISAS,
    ISAS,
    OPS_LIBRARY,
    TOL,
    C,
    assert_close_to_reference,
    dequantize_inputs,
    make_mask,
    ref_attention,
    ref_dequantize_epilogue,
    ref_dequantize_rows,
    ref_gelu,
    ref_packed_attention,
    ref_quantize_rows,
    ref_skip_layernorm,
    rel_err,
    use_isa,
)

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
                     output_types=(TensorProto.FLOAT,), output_names=None):
    """Session of a graph holding one `op` node whose graph inputs are the (non-None) feeds.

    input_names: the node's input list (use "" for an absent optional input); defaults to feeds' keys.
    output_types: element type of each of the node's outputs.
    output_names: the node's output list (use "" for an absent optional output); defaults to out, out1, ...
    """
    names = list(feeds) if input_names is None else input_names
    graph_inputs = [helper.make_tensor_value_info(n, ELEM[feeds[n].dtype.type], [None] * feeds[n].ndim)
                    for n in names if n]
    outputs = ["out"] + [f"out{i}" for i in range(1, len(output_types))] if output_names is None else output_names
    node = helper.make_node(op, names, outputs, domain=DOMAIN, **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, t, None) for o, t in zip(outputs, output_types) if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
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


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("isa", BF16_ISAS)
def test_attention_ops_with_reduced_precision_equal_the_kernel(isa, precision):
    """precision="bf16" / "int8" reaches the kernel (csrc/attention.h): both ops give C's results at that precision,
    on 1 or 2 threads."""
    qkv, bias, mask = attention_inputs(batch=2, seq=70, heads=4, head_dim=64, seed=11)
    cu = np.array([0, 70, 101], np.int64)
    packed = np.ascontiguousarray(qkv.reshape(-1, qkv.shape[-1])[:101])
    attrs = {"num_heads": 4, "precision": precision}
    with use_isa(isa):
        for threads in (1, 2):
            fused = run("FusedAttention", {"qkv": qkv, "bias": bias, "mask": mask}, attrs, threads=threads)
            out = run("PackedAttention", {"qkv": packed, "bias": bias, "cu_seqlens": cu}, attrs, threads=threads)
            np.testing.assert_array_equal(fused, C.attention(qkv, bias, mask, 4, precision=precision))
            np.testing.assert_array_equal(out, C.packed_attention(packed, bias, cu, 4, precision=precision))
    assert not np.array_equal(out, C.packed_attention(packed, bias, cu, 4))
    other = "int8" if precision == "bf16" else "bf16"
    assert not np.array_equal(out, C.packed_attention(packed, bias, cu, 4, precision=other))


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


def embed_feeds(rng, tokens=300, vocab=1000, positions=512, h=1024, ids_dtype=np.int64):
    return {"input_ids": rng.integers(0, vocab, tokens).astype(ids_dtype),
            "position_ids": (np.arange(tokens) % positions).astype(ids_dtype),
            "word": rng.integers(-128, 128, (vocab, h), dtype=np.int8),
            "word_scale": rng.uniform(1e-3, 0.05, vocab).astype(np.float32),
            "position": rng.integers(-128, 128, (positions, h), dtype=np.int8),
            "position_scale": rng.uniform(1e-3, 0.05, positions).astype(np.float32),
            "gamma": rng.standard_normal(h).astype(np.float32), "beta": rng.standard_normal(h).astype(np.float32)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("ids_dtype", [np.int64, np.int32])
def test_embed_layernorm_int8_equals_the_graph_it_replaces(threads, ids_dtype):
    # Gather, Cast and Mul per table, then SkipLayerNorm: the exporter's unfused embeddings, bit for bit.
    f = embed_feeds(np.random.default_rng(5), ids_dtype=ids_dtype)
    out = run("EmbedLayerNormInt8", f, {"epsilon": 1e-5}, threads=threads)
    ids, pos = f["input_ids"], f["position_ids"]
    words = f["word"][ids].astype(np.float32) * f["word_scale"][ids][:, None]
    positions = f["position"][pos].astype(np.float32) * f["position_scale"][pos][:, None]
    want = run("SkipLayerNorm", {"x": words, "skip": positions, "gamma": f["gamma"], "beta": f["beta"]},
               {"epsilon": 1e-5}, threads=threads)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("threads", [1, 2])
def test_embed_layernorm_bf16_equals_the_graph_it_replaces(threads):
    # Gather and Cast per bf16 table, then SkipLayerNorm: the exporter's unfused embeddings, bit for bit. The tables
    # are BFLOAT16 initializers (numpy has no bfloat16).
    rng = np.random.default_rng(7)
    f = embed_feeds(rng)
    word, position = (C.float_to_bf16(rng.standard_normal((n, 1024)).astype(np.float32)) for n in (1000, 512))
    tables = [helper.make_tensor(name, TensorProto.BFLOAT16, bits.shape, bits.tobytes(), raw=True)
              for name, bits in (("word", word), ("position", position))]
    inputs = {k: f[k] for k in ("input_ids", "position_ids", "gamma", "beta")}
    node = helper.make_node("EmbedLayerNormBf16", ["input_ids", "position_ids", "word", "position", "gamma", "beta"],
                            ["out"], domain=DOMAIN, epsilon=1e-5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, ELEM[v.dtype.type], [None] * v.ndim)
                                            for k, v in inputs.items()],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], tables)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
    so.intra_op_num_threads = threads
    out = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    widen = lambda bits: (bits.astype(np.uint32) << 16).view(np.float32)  # noqa: E731  (Cast: exact)
    want = run("SkipLayerNorm", {"x": widen(word)[f["input_ids"]], "skip": widen(position)[f["position_ids"]],
                                 "gamma": f["gamma"], "beta": f["beta"]}, {"epsilon": 1e-5}, threads=threads)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(out, C.embed_layernorm_bf16(f["input_ids"], f["position_ids"], word, position,
                                                              f["gamma"], f["beta"], 1e-5))


def int8_linear_session(weight_int8, weight_scale, bias, activation, threads):
    """QuantizeRows → onnxruntime MatMulInteger → DequantizeRows: the int8 linear the exporter emits."""
    colsum = weight_int8.astype(np.int32).sum(axis=0).astype(np.int32)
    inits = [onnx.numpy_helper.from_array(weight_int8, "w"), onnx.numpy_helper.from_array(weight_scale, "ws"),
             onnx.numpy_helper.from_array(colsum, "colsum"), onnx.numpy_helper.from_array(bias, "bias")]
    nodes = [helper.make_node("QuantizeRows", ["x"], ["xq", "xs", "xz"], domain=DOMAIN),
             helper.make_node("MatMulInteger", ["xq", "w"], ["acc"]),
             helper.make_node("DequantizeRows", ["acc", "xs", "xz", "ws", "colsum", "bias"], ["y"], domain=DOMAIN,
                              activation=activation)]
    graph = helper.make_graph(nodes, "int8_linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# onnxruntime's MLAS adds u8 x s8 pairs into a saturating int16 (vpmaddubsw) on x86 CPUs without AVX-512 VNNI or
# AMX: exact there only on weights whose pairs cannot pass it (the export's pair-safe scaling).
MLAS_SATURATES = C.int8_gemm_path() == "avx2"


@pytest.mark.parametrize("weights", [
    "pair-safe",
    pytest.param("full", marks=pytest.mark.skipif(MLAS_SATURATES, reason="MLAS's int16 pair sums saturate here"))])
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_linear_chain(activation, threads, weights):
    from bort_infer.export.quantize import quantize_columns

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((77, 384)) * 3 + 0.5).astype(np.float32)
    x[5] *= 40  # an outlier row must not cost the other rows their resolution
    quantized = quantize_columns(rng.standard_normal((384, 200)).astype(np.float32), weights)
    wq, ws = quantized.weight, quantized.scale
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


# DequantizeRows with its epilogues: skip + LayerNorm, requantized outputs, y optional

DEQUANTIZE_INPUTS = ["acc", "row_scale", "row_zero_point", "weight_scale", "weight_colsum", "bias", "skip", "gamma",
                     "beta", "skip_scale"]
DEQUANTIZE_OUTPUT_TYPES = (TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8)
# Which outputs the node names: y only, y and the requantized three, the requantized three only.
DEQUANTIZE_OUTPUTS = {"y": ["y"], "y+quantized": ["y", "q", "scale", "zero_point"],
                      "quantized": ["", "q", "scale", "zero_point"]}


def dequantize_session(feeds: dict, attrs=None, outputs=("y",), threads=1):
    """One DequantizeRows node: the present feeds at their input positions ("" for the absent ones)."""
    names = [n if n in feeds else "" for n in DEQUANTIZE_INPUTS]
    while names[-1] == "":
        names.pop()
    return one_node_session("DequantizeRows", feeds, attrs, names, threads, DEQUANTIZE_OUTPUT_TYPES, list(outputs))


def dequantize_feeds(rng, lead, n, with_bias, epilogue):
    acc, row_scale, row_zp, weight_scale, colsum, bias = dequantize_inputs(rng, lead, n, with_bias)
    feeds = {"acc": acc, "row_scale": row_scale, "row_zero_point": row_zp, "weight_scale": weight_scale,
             "weight_colsum": colsum}
    if bias is not None:
        feeds["bias"] = bias
    if epilogue.startswith("layernorm"):
        feeds["skip"] = (rng.standard_normal((*lead, n)) * 10).astype(np.float32)
        feeds["gamma"] = rng.standard_normal(n).astype(np.float32)
        if "beta" in epilogue:
            feeds["beta"] = rng.standard_normal(n).astype(np.float32)
        if "skip_scale" in epilogue:
            feeds["skip_scale"] = rng.uniform(0.05, 20, n).astype(np.float32)
    return feeds


EPILOGUES = ["none", "gelu", "layernorm", "layernorm+beta", "layernorm+skip_scale", "layernorm+beta+skip_scale"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("outputs", list(DEQUANTIZE_OUTPUTS))
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_dequantize_rows_op_combinations(with_bias, epilogue, outputs, threads):
    rng = np.random.default_rng(20)
    feeds = dequantize_feeds(rng, (3, 11), 200, with_bias, epilogue)
    attrs = {"activation": "gelu"} if epilogue == "gelu" else {}
    if epilogue.startswith("layernorm"):
        attrs["epsilon"] = 1e-5
    got = dequantize_session(feeds, attrs, DEQUANTIZE_OUTPUTS[outputs], threads).run(None, feeds)
    requantize = outputs != "y"
    want = C.dequantize_rows(**feeds, activation=attrs.get("activation", "none"), epsilon=attrs.get("epsilon", 1e-12),
                             requantize=requantize, output_float=outputs != "quantized")
    want = list(want) if requantize else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):  # rows are independent, so the op equals the direct call bit for bit
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    if outputs != "quantized":
        ref, allowance = ref_dequantize_epilogue(**feeds, activation=attrs.get("activation", "none"),
                                                 epsilon=attrs.get("epsilon", 1e-12))
        assert_close_to_reference(got[0], ref, allowance)
    if outputs == "y+quantized":
        for g, w in zip(got[1:], ref_quantize_rows(got[0])):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("isa", ISAS)
def test_dequantize_rows_op_on_each_isa(isa):
    rng = np.random.default_rng(21)
    feeds = dequantize_feeds(rng, (2, 33), 1024, True, "layernorm+beta+skip_scale")
    with use_isa(isa):
        y, q, s, z = dequantize_session(feeds, {"epsilon": 1e-5}, DEQUANTIZE_OUTPUTS["y+quantized"],
                                        threads=2).run(None, feeds)
        expected = C.dequantize_rows(**feeds, epsilon=1e-5, requantize=True)
    for got, want in zip((y, q, s, z), expected):
        np.testing.assert_array_equal(got, want)
    for got, want in zip((q, s, z), ref_quantize_rows(y)):
        np.testing.assert_array_equal(got, want)
    ref, allowance = ref_dequantize_epilogue(**feeds, epsilon=1e-5)
    assert_close_to_reference(y, ref, allowance)


def quantize_weight(rng, k, n):
    """Symmetric per-column int8 weights and their scales, as the exporter makes them (pair-safe: the MLAS chains
    these tests compare with are then exact on AVX2-only CPUs too)."""
    from bort_infer.export.quantize import quantize_columns

    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    q = quantize_columns(w, "pair-safe")
    return q.weight, q.scale


def int8_layer_session(p, threads):
    """The int8 layer the fused epilogues serve, one op per stage:
    QuantizeRows(x) → MatMulInteger → DequantizeRows(+x, LayerNorm, requantize) = h (float and u8)
    → MatMulInteger → DequantizeRows(gelu, requantize, no float output) = g (u8 only)
    → MatMulInteger → DequantizeRows(+h, LayerNorm, requantize) = out (float and u8, the next layer's input)."""
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in p.items()]
    int8_gemm = [["xq", "w_attn", "acc_attn"], ["hq", "w_in", "acc_in"], ["gq", "w_out", "acc_out"]]
    nodes = [helper.make_node("QuantizeRows", ["x"], ["xq", "xs", "xz"], domain=DOMAIN)]
    nodes += [helper.make_node("MatMulInteger", [a, w], [o]) for a, w, o in int8_gemm]
    nodes += [
        helper.make_node("DequantizeRows", ["acc_attn", "xs", "xz", "ws_attn", "cs_attn", "b_attn", "x", "gamma1",
                                            "beta1", "skip_scale1"], ["h", "hq", "hs", "hz"], domain=DOMAIN,
                         epsilon=1e-5),
        helper.make_node("DequantizeRows", ["acc_in", "hs", "hz", "ws_in", "cs_in", "b_in"], ["", "gq", "gs", "gz"],
                         domain=DOMAIN, activation="gelu"),
        helper.make_node("DequantizeRows", ["acc_out", "gs", "gz", "ws_out", "cs_out", "b_out", "h", "gamma2",
                                            "beta2"], ["out", "oq", "os", "oz"], domain=DOMAIN, epsilon=1e-5),
    ]
    types = {"h": TensorProto.FLOAT, "hq": TensorProto.UINT8, "hs": TensorProto.FLOAT, "hz": TensorProto.UINT8,
             "gq": TensorProto.UINT8, "gs": TensorProto.FLOAT, "gz": TensorProto.UINT8, "out": TensorProto.FLOAT,
             "oq": TensorProto.UINT8, "os": TensorProto.FLOAT, "oz": TensorProto.UINT8}
    graph = helper.make_graph(nodes, "int8_layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info(k, t, None) for k, t in types.items()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]), list(types)


def int64_gemm(q, wq):
    return q.astype(np.int64) @ wq.astype(np.int64)


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_layer_chain_with_fused_epilogues(threads):
    rng = np.random.default_rng(22)
    hidden, ffn, rows = 200, 136, 37  # neither a multiple of 16: vector tails in every stage
    x = (rng.standard_normal((rows, hidden)) + 0.3).astype(np.float32)
    x[5] *= 40  # an outlier row must not cost the other rows their resolution
    p = {}
    for name, (k, n) in {"attn": (hidden, hidden), "in": (hidden, ffn), "out": (ffn, hidden)}.items():
        p[f"w_{name}"], p[f"ws_{name}"] = quantize_weight(rng, k, n)
        p[f"cs_{name}"] = p[f"w_{name}"].astype(np.int32).sum(axis=0).astype(np.int32)
        p[f"b_{name}"] = (rng.standard_normal(n) * 0.1).astype(np.float32)
    for i in (1, 2):
        p[f"gamma{i}"] = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
        p[f"beta{i}"] = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    p["skip_scale1"] = rng.uniform(0.5, 2, hidden).astype(np.float32)
    sess, names = int8_layer_session(p, threads)
    got = dict(zip(names, sess.run(None, {"x": x})))

    def dequantize(stage, acc, s, z, **epilogue):
        return ref_dequantize_epilogue(acc, s, z, p[f"ws_{stage}"], p[f"cs_{stage}"].astype(np.int64),
                                       p[f"b_{stage}"], **epilogue)

    # Stage by stage, each from the previous stage's actual (exactly known) quantized output.
    xq, xs, xz = ref_quantize_rows(x)
    h_ref, allowance = dequantize("attn", int64_gemm(xq, p["w_attn"]), xs, xz, skip=x, gamma=p["gamma1"],
                                  beta=p["beta1"], skip_scale=p["skip_scale1"], epsilon=1e-5)
    assert_close_to_reference(got["h"], h_ref, allowance)
    for key, want in zip(("hq", "hs", "hz"), ref_quantize_rows(got["h"])):
        np.testing.assert_array_equal(got[key], want)
    g_ref, _ = dequantize("in", int64_gemm(got["hq"], p["w_in"]), got["hs"], got["hz"], activation="gelu")
    # g has no float output: its quantization must represent the float64 GELU to half a step.
    gs, gz = got["gs"].astype(np.float64)[:, None], got["gz"].astype(np.float64)[:, None]
    assert np.all(np.abs(gs * (got["gq"] - gz) - g_ref) <= 0.5001 * gs + TOL * np.abs(g_ref).max())
    np.testing.assert_allclose(got["gs"], ref_quantize_rows(g_ref.astype(np.float32))[1], rtol=1e-5)
    out_ref, allowance = dequantize("out", int64_gemm(got["gq"], p["w_out"]), got["gs"], got["gz"], skip=got["h"],
                                    gamma=p["gamma2"], beta=p["beta2"], epsilon=1e-5)
    assert_close_to_reference(got["out"], out_ref, allowance)
    for key, want in zip(("oq", "os", "oz"), ref_quantize_rows(got["out"])):
        np.testing.assert_array_equal(got[key], want)

    # And the whole layer close to its float64 original (int8 rounding of three GEMM inputs, nothing more).
    def layernorm(t, gamma, beta):
        return (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-5) * gamma + beta

    def weight(stage):
        return p[f"w_{stage}"] * p[f"ws_{stage}"].astype(np.float64)

    x64 = x.astype(np.float64)
    h = layernorm(x64 @ weight("attn") + p["b_attn"] + x64 * p["skip_scale1"], p["gamma1"], p["beta1"])
    g = ref_gelu(h @ weight("in"), p["b_in"])
    out = layernorm(g @ weight("out") + p["b_out"] + h, p["gamma2"], p["beta2"])
    assert np.abs(got["out"] - out).max() <= 0.02 * np.abs(out).max()


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


# An empty query_rows (e.g. one extra Slice before the node) once made the kernel treat its null data pointer as
# "every token" and write through a zero-row output: each case runs in its own process so a crash fails the test.
ROOT = Path(__file__).resolve().parents[1]
EMPTY_QUERY_ROWS_CASES = {
    "rows_only": "{'qkv': qkv, 'bias': bias, 'cu_seqlens': cu, 'query_rows': np.zeros(0, np.int64)}",
    "rows_int32": "{'qkv': qkv, 'bias': bias, 'cu_seqlens': cu.astype(np.int32), 'query_rows': np.zeros(0, np.int32)}",
    "separate_query": "{'qkv': qkv[:, 64:], 'bias': bias, 'cu_seqlens': cu, 'query_rows': np.zeros(0, np.int64), "
                      "'query': np.zeros((0, 64), np.float32)}",
    "no_tokens": "{'qkv': qkv[:0], 'bias': bias, 'cu_seqlens': np.zeros(1, np.int64), "
                 "'query_rows': np.zeros(0, np.int64)}",
    "no_tokens_all_rows": "{'qkv': qkv[:0], 'bias': bias, 'cu_seqlens': np.zeros(1, np.int64)}",
}


def run_in_subprocess(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode >= 0, f"the process died of signal {-proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("case", list(EMPTY_QUERY_ROWS_CASES))
def test_packed_attention_with_empty_query_rows_gives_zero_rows(case):
    code = (
        "import numpy as np\n"
        "from tests.test_custom_ops import run\n"
        "rng = np.random.default_rng(0)\n"
        "qkv = rng.standard_normal((7, 192)).astype(np.float32)\n"
        "bias = rng.standard_normal(192).astype(np.float32)\n"
        "cu = np.array([0, 3, 7], np.int64)\n"
        f"out = run('PackedAttention', {EMPTY_QUERY_ROWS_CASES[case]}, {{'num_heads': 2}}, threads=2)\n"
        "print(out.dtype, out.shape)\n"
    )
    proc = run_in_subprocess(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["float32", "(0,", "64)"]


def slice_query_rows_to_nothing(model_dir: Path, out_dir: Path) -> Path:
    """A copy of a packed model directory whose graph feeds every consumer of query_rows through Slice(0:0)."""
    import shutil

    shutil.copytree(model_dir, out_dir)
    model = onnx.load(str(out_dir / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["query_rows_sliced" if name == "query_rows" else name for name in node.input]
    for name in ("starts", "ends", "axes"):
        graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.int64), f"query_rows_slice_{name}"))
    graph.node.insert(0, helper.make_node("Slice", ["query_rows", "query_rows_slice_starts", "query_rows_slice_ends",
                                                    "query_rows_slice_axes"], ["query_rows_sliced"]))
    onnx.save(model, str(out_dir / "model.onnx"))
    return out_dir


def test_session_on_a_model_that_slices_query_rows_empty_does_not_crash(model, tmp_path):
    sliced = slice_query_rows_to_nothing(model, tmp_path / "sliced")
    code = (
        "import sys\n"
        "from bort_infer import Session\n"
        f"session = Session({str(sliced)!r}, threads=2)\n"
        "try:\n"
        "    vectors = session.encode(['hello world', 'a second text'], pooling='cls')\n"
        "except Exception as exc:\n"
        "    print('error', type(exc).__name__, exc)\n"
        "else:\n"
        "    print('rows', vectors.shape[0])\n"
    )
    proc = run_in_subprocess(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # No crash, and never a silently dropped row: either an error or one vector per text.
    assert proc.stdout.startswith("error") or proc.stdout.split() == ["rows", "2"], proc.stdout


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


@pytest.mark.parametrize("change,match", [
    ({"input_ids": np.array([0, 1000, 2], np.int64)}, r"input_ids\[1\] = 1000 is not a row of the 1000-row table"),
    ({"input_ids": np.array([0, -5, 2], np.int64)}, r"input_ids\[1\] = -5 is not a row"),
    ({"position_ids": np.array([0, 1, 512], np.int64)}, r"position_ids\[2\] = 512 is not a row of the 512-row"),
    ({"position_ids": np.array([0, 1], np.int64)}, "position_ids must have the shape of input_ids"),
    ({"word_scale": np.ones(999, np.float32)}, r"word_scale must have shape \[1000\]"),
    ({"position": np.zeros((512, 1023), np.int8)}, r"position must have shape \[P, 1024\]"),
    ({"gamma": np.ones(1023, np.float32)}, r"gamma must have shape \[1024\]"),
])
def test_embed_layernorm_int8_rejects(change, match):
    f = embed_feeds(np.random.default_rng(6), tokens=3)
    f["position_ids"] = np.array([0, 1, 2], np.int64)
    f.update(change)
    expect_failure(match, "EmbedLayerNormInt8", f)


def test_errors_leave_the_library_usable():
    expect_failure("num_heads", "FusedAttention", {"qkv": Q, "bias": B, "mask": M}, {"num_heads": 0})
    x = np.ones((2, 8), np.float32)
    assert np.isfinite(run("BiasGelu", {"x": x, "bias": np.zeros(8, np.float32)})).all()


def test_missing_required_input_is_rejected_at_load():
    with pytest.raises(ORT_ERRORS):
        run("SkipLayerNorm", {"x": X, "skip": X})


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


DQ_NORM = {"skip": np.zeros((2, 4), np.float32), "gamma": np.ones(4, np.float32)}


@pytest.mark.parametrize("change,attrs,match", [
    ({"gamma": np.ones(4, np.float32)}, {}, "gamma belongs to the skip \\+ LayerNorm epilogue and needs skip"),
    ({"beta": np.ones(4, np.float32)}, {}, "beta belongs to the skip \\+ LayerNorm epilogue and needs skip"),
    ({"skip_scale": np.ones(4, np.float32)}, {}, "skip_scale belongs to the skip \\+ LayerNorm epilogue"),
    ({"gamma": np.ones(4, np.float32), "beta": np.ones(4, np.float32)}, {}, "gamma belongs to the skip"),
    ({"skip": np.zeros((2, 4), np.float32)}, {}, "skip needs gamma"),
    (DQ_NORM, {"activation": "gelu"}, "'gelu' cannot be combined with skip"),
    ({**DQ_NORM, "skip": np.zeros((2, 5), np.float32)}, {}, "skip must have the shape of acc \\[2, 4\\]"),
    ({**DQ_NORM, "skip": np.zeros((1, 2, 4), np.float32)}, {}, "skip must have the shape of acc"),
    ({**DQ_NORM, "skip": np.zeros(8, np.float32)}, {}, "skip must have the shape of acc"),
    ({**DQ_NORM, "gamma": np.ones(3, np.float32)}, {}, "gamma must have shape \\[4\\]"),
    ({**DQ_NORM, "beta": np.ones((4, 1), np.float32)}, {}, "beta must have shape \\[4\\]"),
    ({**DQ_NORM, "skip_scale": np.ones(5, np.float32)}, {}, "skip_scale must have shape \\[4\\]"),
    (DQ_NORM, {"epsilon": -1.0}, "'epsilon' must be finite and >= 0"),
    (DQ_NORM, {"epsilon": float("inf")}, "'epsilon' must be finite"),
    ({**DQ_NORM, "skip": np.zeros((2, 4), np.float64)}, {}, "skip"),
    ({**DQ_NORM, "gamma": np.ones(4, np.float16)}, {}, "gamma"),
    ({**DQ_NORM, "beta": np.ones(4, np.int32)}, {}, "beta"),
    ({**DQ_NORM, "skip_scale": np.ones(4, np.float64)}, {}, "skip_scale"),
    ({"acc": np.zeros((2, 4), np.int64)}, {}, "acc"),
    ({"row_zero_point": np.zeros(2, np.int8)}, {}, "row_zero_point"),
])
@pytest.mark.parametrize("outputs", list(DEQUANTIZE_OUTPUTS))
def test_dequantize_rows_epilogue_rejects(change, attrs, match, outputs):
    with pytest.raises(ORT_ERRORS, match=match):
        dequantize_session({**DQ, **change}, attrs, DEQUANTIZE_OUTPUTS[outputs]).run(None, {**DQ, **change})


@pytest.mark.parametrize("outputs,match", [
    (["y", "q"], "must be requested together"),
    (["y", "q", "scale"], "must be requested together"),
    (["y", "", "scale", "zero_point"], "must be requested together"),
    (["", "q", "scale", ""], "must be requested together"),
    (["", "", "", "zero_point"], "must be requested together"),
    (["", "", "", ""], "no output is requested"),
    ([""], "no output is requested"),
    ([], "no output is requested"),
])
def test_dequantize_rows_rejects_output_combinations(outputs, match):
    with pytest.raises(ORT_ERRORS, match=match):
        dequantize_session(DQ, {}, outputs).run(None, DQ)


def test_dequantize_rows_rejects_too_many_outputs():
    with pytest.raises(ORT_ERRORS):
        dequantize_session(DQ, {}, ["y", "q", "scale", "zero_point", "extra"]).run(None, DQ)


def test_quantize_rows_rejects_scalar_and_wrong_dtype():
    expect_failure("rank >= 1", "QuantizeRows", {"x": np.array(1.0, np.float32)})
    with pytest.raises(ORT_ERRORS):
        run("QuantizeRows", {"x": np.zeros((2, 3), np.float64)})


def test_bias_gelu_rejects_scalar_input():
    expect_failure("rank >= 1", "BiasGelu", {"x": np.array(1.0, np.float32), "bias": np.zeros(1, np.float32)})


PACKED = {"qkv": np.zeros((3, 96), np.float32), "bias": B, "cu_seqlens": np.array([0, 3], np.int64)}
SKIP_LN = {"x": X, "skip": X, "gamma": np.ones(8, np.float32)}
# (op, feeds, the other attributes it needs, attribute under test, its type as the message names it)
TYPED_ATTRIBUTES = [
    ("FusedAttention", {"qkv": Q, "bias": B, "mask": M}, {}, "num_heads", "an int"),
    ("FusedAttention", {"qkv": Q, "bias": B, "mask": M}, {"num_heads": 2}, "scale", "a float"),
    ("PackedAttention", PACKED, {}, "num_heads", "an int"),
    ("PackedAttention", PACKED, {"num_heads": 2}, "scale", "a float"),
    ("FusedAttention", {"qkv": Q, "bias": B, "mask": M}, {"num_heads": 2}, "precision", "a string"),
    ("PackedAttention", PACKED, {"num_heads": 2}, "precision", "a string"),
    ("SkipLayerNorm", SKIP_LN, {}, "epsilon", "a float"),
    ("DequantizeRows", DQ, {}, "epsilon", "a float"),
    ("DequantizeRows", DQ, {}, "activation", "a string"),
]
WRONG_VALUES = {"int": 2, "float": 2.0, "string": "2", "ints": [2, 2], "floats": [2.0],
                "tensor": np.array([2], np.int64), "another type": ["2", "2"]}


@pytest.mark.parametrize("op,feeds,attrs,name,wanted", TYPED_ATTRIBUTES,
                         ids=[f"{t[0]}.{t[3]}" for t in TYPED_ATTRIBUTES])
@pytest.mark.parametrize("given", list(WRONG_VALUES))
def test_attribute_of_the_wrong_type_is_an_error_naming_op_and_attribute(op, feeds, attrs, name, wanted, given):
    if wanted.split()[-1] == given:
        pytest.skip("the right type")
    value = WRONG_VALUES[given]
    if isinstance(value, np.ndarray):
        value = onnx.numpy_helper.from_array(value)
    match = f"{op}: attribute '{name}' must be {wanted}, got {given}"
    with pytest.raises(ORT_ERRORS, match=match):
        if op == "DequantizeRows":
            dequantize_session(feeds, {**attrs, name: value}).run(None, feeds)
        else:
            run(op, feeds, {**attrs, name: value})


def test_num_heads_is_required():
    expect_failure("FusedAttention: integer attribute 'num_heads' is required", "FusedAttention",
                   {"qkv": Q, "bias": B, "mask": M}, {})
    expect_failure("PackedAttention: integer attribute 'num_heads' is required", "PackedAttention", PACKED, {})


@pytest.mark.parametrize("op,feeds", [("FusedAttention", {"qkv": Q, "bias": B, "mask": M}),
                                      ("PackedAttention", PACKED)])
@pytest.mark.parametrize("value", ["fp16", "BF16", ""])
def test_attention_ops_reject_an_unknown_precision(op, feeds, value):
    expect_failure(f"{op}: attribute 'precision': attention precision must be 'fp32', 'bf16' or 'int8', got '{value}'",
                   op, feeds,
                   {"num_heads": 2, "precision": value})


def session_with_empty_inputs(op, input_names, shapes: dict, feeds: dict, attrs: dict,
                              output_types=(TensorProto.FLOAT,), types: dict | None = None):
    """Session of one `op` node (inputs `input_names`, absent ones left out) whose inputs named in `shapes` are
    empty tensors (float, or as `types` says) made in the graph by ConstantOfShape (they may claim dimensions numpy
    cannot represent), the others graph inputs fed from `feeds`."""
    inits = [onnx.numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape") for name, shape in shapes.items()]
    nodes = [helper.make_node("ConstantOfShape", [f"{name}_shape"], [name],
                              value=helper.make_tensor("v", (types or {}).get(name, TensorProto.FLOAT), [1], [0]))
             for name in shapes]
    names = [name if name in shapes or name in feeds else "" for name in input_names]
    outputs = [f"out{i}" for i in range(len(output_types))]
    nodes.append(helper.make_node(op, names, outputs, domain=DOMAIN, **attrs))
    graph_inputs = [helper.make_tensor_value_info(n, ELEM[a.dtype.type], [None] * a.ndim) for n, a in feeds.items()]
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info(o, t, None) for o, t in zip(outputs, output_types)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


PACKED_INPUTS = ("qkv", "bias", "cu_seqlens", "query_rows", "query")


@pytest.mark.parametrize("hidden", [2**62, 2**63 // 3 + 1])
def test_packed_attention_rejects_an_empty_query_too_wide_to_size(hidden):
    # 2 * hidden or 3 * hidden would overflow int64 (undefined behaviour) before any shape comparison.
    feeds = {"cu_seqlens": np.zeros(1, np.int64), "query_rows": np.zeros(0, np.int64)}
    sess = session_with_empty_inputs("PackedAttention", PACKED_INPUTS, {"qkv": [0, 2], "query": [0, hidden]}, feeds,
                                     {"num_heads": 1})
    with pytest.raises(ORT_ERRORS, match=r"PackedAttention: query's width \(hidden\) must be positive and at most"):
        sess.run(None, feeds)


def test_packed_attention_checks_query_rows_before_allocating_the_output():
    # No token, one query row of a huge width: the row is refused before [1, 2^40] floats are asked for.
    feeds = {"cu_seqlens": np.zeros(1, np.int64), "query_rows": np.zeros(1, np.int64)}
    sess = session_with_empty_inputs("PackedAttention", PACKED_INPUTS, {"qkv": [0, 3 * 2**40]}, feeds,
                                     {"num_heads": 1})
    with pytest.raises(ORT_ERRORS, match=r"PackedAttention: query_rows\[0\] = 0 is not a token index in \[0, 0\)"):
        sess.run(None, feeds)


# ----------------------------------------------------------------------------------------------
# LinearInt8: the three-op int8 linear (QuantizeRows → onnxruntime's MatMulInteger → DequantizeRows) in one op

LINEAR_OUTPUTS = {"y": TensorProto.FLOAT, "y_quantized": TensorProto.UINT8, "y_scale": TensorProto.FLOAT,
                  "y_zero_point": TensorProto.UINT8}
LINEAR_EPILOGUES = {
    "bias": ({}, ["bias"], ["y"]),
    "bias+gelu, requantized only": ({"activation": "gelu"}, ["bias"], ["", "y_quantized", "y_scale", "y_zero_point"]),
    "skip+layernorm, requantized too": ({"epsilon": 1e-5}, ["bias", "skip", "gamma", "beta", "skip_scale"],
                                        ["y", "y_quantized", "y_scale", "y_zero_point"]),
}


def linear_params(rng, k, n):
    w, scale = quantize_weight(rng, k, n)
    return {"weight": w, "weight_scale": scale, "bias": (rng.standard_normal(n) * 0.1).astype(np.float32),
            "gamma": rng.uniform(0.5, 1.5, n).astype(np.float32),
            "beta": (rng.standard_normal(n) * 0.1).astype(np.float32),
            "skip_scale": rng.uniform(0.5, 2, n).astype(np.float32)}


def linear_forms_session(form, p, epilogue, threads=1, quantized_input=False, weight_as_input=False):
    """One int8 linear as LinearInt8 ("ours") or as QuantizeRows → MatMulInteger → DequantizeRows ("mlas"),
    the parameters as initializers (the weight a graph input with weight_as_input), x (or its quantized rows) and
    skip graph inputs."""
    attrs, extras, outputs = LINEAR_EPILOGUES[epilogue]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in p.items() if not (weight_as_input and k == "weight")]
    x_inputs = ["xq", "xs", "xz"] if quantized_input else ["x"]
    graph_inputs = [helper.make_tensor_value_info(n, t, None) for n, t in
                    ([("xq", TensorProto.UINT8), ("xs", TensorProto.FLOAT), ("xz", TensorProto.UINT8)]
                     if quantized_input else [("x", TensorProto.FLOAT)])]
    if "skip" in extras:
        graph_inputs.append(helper.make_tensor_value_info("skip", TensorProto.FLOAT, None))
    if weight_as_input:
        graph_inputs.append(helper.make_tensor_value_info("weight", TensorProto.INT8, None))
    if form == "ours":
        xs = ["", *x_inputs] if quantized_input else x_inputs + ["", "", ""]
        nodes = [helper.make_node("LinearInt8", [*xs, "weight", "weight_scale", *extras], outputs, domain=DOMAIN,
                                  **attrs)]
    else:
        inits.append(onnx.numpy_helper.from_array(p["weight"].astype(np.int32).sum(axis=0).astype(np.int32),
                                                  "colsum"))
        nodes = [] if quantized_input else [helper.make_node("QuantizeRows", ["x"], ["xq", "xs", "xz"],
                                                             domain=DOMAIN)]
        nodes += [helper.make_node("MatMulInteger", ["xq", "weight"], ["acc"]),
                  helper.make_node("DequantizeRows", ["acc", "xs", "xz", "weight_scale", "colsum", *extras], outputs,
                                   domain=DOMAIN, **attrs)]
    graph = helper.make_graph(nodes, form, graph_inputs,
                              [helper.make_tensor_value_info(o, LINEAR_OUTPUTS[o], None) for o in outputs if o], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
    so.intra_op_num_threads = threads
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def same_bits(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))


@pytest.mark.parametrize("epilogue", list(LINEAR_EPILOGUES))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 200), (37, 200), (3, 70, 200)])
def test_linear_int8_equals_the_mlas_chain_bit_for_bit(epilogue, threads, shape):
    # MatMulInteger (MLAS) is exact integer arithmetic, and so is our GEMM: the whole layer gives the same bits.
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    p = linear_params(rng, 200, 136)
    feeds = {"x": (rng.standard_normal(shape) + 0.3).astype(np.float32)}
    if "skip" in LINEAR_EPILOGUES[epilogue][1]:
        feeds["skip"] = rng.standard_normal((*shape[:-1], 136)).astype(np.float32)
    ours = linear_forms_session("ours", p, epilogue, threads).run(None, feeds)
    same_bits(ours, linear_forms_session("mlas", p, epilogue, threads).run(None, feeds))


@pytest.mark.parametrize("isa", C.supported_isas())
def test_linear_int8_equals_the_mlas_chain_on_each_isa(isa):
    rng = np.random.default_rng(5)
    p = linear_params(rng, 96, 80)
    feeds = {"x": rng.standard_normal((30, 96)).astype(np.float32), "skip": rng.standard_normal((30, 80)).astype(
        np.float32)}
    with use_isa(isa):
        ours = linear_forms_session("ours", p, "skip+layernorm, requantized too").run(None, feeds)
        mlas = linear_forms_session("mlas", p, "skip+layernorm, requantized too").run(None, feeds)
    same_bits(ours, mlas)


@pytest.mark.parametrize("weight_as_input", [False, True])
def test_linear_int8_takes_quantized_rows_and_a_weight_that_is_not_constant(weight_as_input):
    rng = np.random.default_rng(6)
    p = linear_params(rng, 64, 48)
    xq, xs, xz = C.quantize_rows(rng.standard_normal((9, 64)).astype(np.float32))
    feeds = {"xq": xq, "xs": xs, "xz": xz}
    if weight_as_input:
        feeds["weight"] = p["weight"]
    ours = linear_forms_session("ours", p, "bias", quantized_input=True, weight_as_input=weight_as_input)
    mlas = linear_forms_session("mlas", p, "bias", quantized_input=True)
    same_bits(ours.run(None, feeds), mlas.run(None, {k: v for k, v in feeds.items() if k != "weight"}))


def linear_int8_session(inputs: dict, initializers: dict, attrs=None, outputs=("y",)):
    """A LinearInt8 node: `inputs` are graph inputs and `initializers` constants, by the op's input names."""
    order = ["x", "x_quantized", "x_scale", "x_zero_point", "weight", "weight_scale", "bias", "skip", "gamma",
             "beta", "skip_scale"]
    given = {**inputs, **initializers}
    names = [n if n in given else "" for n in order]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node("LinearInt8", names, list(outputs), domain=DOMAIN, **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, ELEM[v.dtype.type], [None] * v.ndim) for n, v in inputs.items()],
        [helper.make_tensor_value_info(o, LINEAR_OUTPUTS[o], None) for o in outputs if o],
        [onnx.numpy_helper.from_array(v, n) for n, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(OPS_LIBRARY)
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


W8 = np.ones((16, 8), np.int8)
WS = np.ones(8, np.float32)
X16 = np.ones((2, 16), np.float32)


@pytest.mark.parametrize("inputs,initializers,attrs,outputs,match", [
    ({"x": X16}, {"weight": np.ones((16, 8, 1), np.int8), "weight_scale": WS}, {}, ("y",),
     r"LinearInt8: weight must have shape \[K, N\] \(rank 2\), got \[16, 8, 1\]"),
    ({"x": X16}, {"weight": np.ones((16, 8), np.float32), "weight_scale": WS}, {}, ("y",),
     r"tensor\(float\)' of input parameter \(weight\) of operator \(LinearInt8\)"),  # onnxruntime's schema check
    ({"x": np.ones((2, 15), np.float32)}, {"weight": W8, "weight_scale": WS}, {}, ("y",),
     "LinearInt8: weight has 16 rows but the input rows have 15 values"),
    ({"x": X16, "x_quantized": np.ones((2, 16), np.uint8)}, {"weight": W8, "weight_scale": WS}, {}, ("y",),
     "LinearInt8: give exactly one input form"),
    ({"x_quantized": np.ones((2, 16), np.uint8)}, {"weight": W8, "weight_scale": WS}, {}, ("y",),
     "LinearInt8: x_quantized needs x_scale and x_zero_point"),
    ({"x": X16}, {"weight": W8, "weight_scale": np.ones(9, np.float32)}, {}, ("y",),
     r"LinearInt8: weight_scale must have shape \[8\]"),
    ({"x": X16, "skip": np.ones((2, 9), np.float32)}, {"weight": W8, "weight_scale": WS, "gamma": WS}, {}, ("y",),
     "LinearInt8: skip must have the shape of the output"),
    ({"x": X16}, {"weight": W8, "weight_scale": WS}, {"activation": "relu"}, ("y",),
     "LinearInt8: attribute 'activation' must be 'none' or 'gelu'"),
    ({"x": X16}, {"weight": W8, "weight_scale": WS}, {}, ("y", "y_quantized"),
     "LinearInt8: the requantized outputs"),
    ({"x": X16, "weight": W8}, {"weight_scale": WS}, {}, ("y",), None),  # a non-constant weight is fine
    ({"x": np.ones((2, 16), np.float32), "weight": np.ones((3, 8), np.int8)}, {"weight_scale": WS}, {}, ("y",),
     "LinearInt8: weight has 3 rows but the input rows have 16 values"),
])
def test_linear_int8_rejects_bad_graphs_naming_the_problem(inputs, initializers, attrs, outputs, match):
    if match is None:
        y = linear_int8_session(inputs, initializers, attrs, outputs).run(None, inputs)[0]
        assert y.shape == (2, 8)
        return
    with pytest.raises(ORT_ERRORS, match=match):
        linear_int8_session(inputs, initializers, attrs, outputs).run(None, inputs)


def test_an_output_too_large_to_allocate_is_an_error_naming_the_op_and_output():
    # An empty x claiming 2^61 rows asks for 2^61 row scales (8 EiB): refused before onnxruntime allocates (an
    # allocation AddressSanitizer aborts on instead of failing).
    sess = session_with_empty_inputs("QuantizeRows", ["x"], {"x": [2**61, 0]}, {}, {}, QUANTIZE_ROWS_OUTPUTS)
    with pytest.raises(ORT_ERRORS, match=r"QuantizeRows: output 'scale' of shape \[2305843009213693952\] would take "
                                         r"more than 1099511627776 bytes"):
        sess.run(None, {})


LINEAR_WEIGHTS = {"LinearBf16": (["x", "weight"], TensorProto.BFLOAT16, {}),
                  "LinearInt8": (["x", "x_quantized", "x_scale", "x_zero_point", "weight", "weight_scale"],
                                 TensorProto.INT8, {"weight_scale": [0]})}


@pytest.mark.parametrize("op", LINEAR_WEIGHTS)
def test_a_linear_op_rejects_an_empty_weight_claiming_2_to_the_48_or_more(op):
    # Packing rounds K and N up: an empty weight claiming 2^63 - 1 columns would overflow int64 (undefined behaviour).
    # The weight is constant-folded into an initializer, so the error comes when the session creates the kernel.
    names, weight_type, others = LINEAR_WEIGHTS[op]
    with pytest.raises(ORT_ERRORS, match=op + r": weight dimensions K and N must be in \[0, 2\^48\)"):
        session_with_empty_inputs(op, names, {"x": [0, 0], "weight": [0, 2**63 - 1], **others}, {}, {},
                                  types={"weight": weight_type}).run(None, {})


@pytest.mark.parametrize("op,shapes,error", [
    ("LinearBf16", {"x": [0, 2**47], "weight": [2**47, 0]}, None),
    ("LinearBf16", {"x": [0, 0], "weight": [0, 2**47]}, None),
    ("LinearInt8", {"x": [0, 2**47], "weight": [2**47, 0], "weight_scale": [0]}, None),
    ("LinearInt8", {"x": [0, 2**56], "weight": [2**56, 0], "weight_scale": [1]}, r"LinearInt8: weight dimensions"),
    # The column scales cannot claim 2^47 columns (a 1-D tensor is not empty): refused when the op runs.
    ("LinearInt8", {"x": [0, 0], "weight": [0, 2**47], "weight_scale": [0]}, r"LinearInt8: weight_scale must have"),
])
def test_a_linear_op_packs_an_empty_weight_claiming_huge_dimensions_at_once_or_refuses_it(op, shapes, error):
    # LinearInt8 summed the columns of an empty [2^56, 0] weight row by row: a hang found by the fuzzer under
    # make asan. An empty weight is packed after it is checked against the other inputs, and packing walks nothing.
    names, weight_type, _ = LINEAR_WEIGHTS[op]
    if error is not None:
        with pytest.raises(ORT_ERRORS, match=error):
            session_with_empty_inputs(op, names, shapes, {}, {}, types={"weight": weight_type}).run(None, {})
        return
    y = session_with_empty_inputs(op, names, shapes, {}, {}, types={"weight": weight_type}).run(None, {})[0]
    assert y.shape == (0, shapes["weight"][1])
