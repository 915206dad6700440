"""Fused kernels vs the onnxruntime com.microsoft contrib ops they replace, at Bort shapes.

Both sides are one-node onnxruntime graphs run with the same session options (intra_op_num_threads =
BORT_BENCH_THREADS, default 2), so the numbers include the same per-run overhead:
- FusedAttention (ai.bort_infer; qkv [B, S, 3H] + bias + int64 key mask) vs com.microsoft MultiHeadAttention
  fed separate q, k, v [B, S, H] + bias [3H] + int32 key_padding_mask: the pure attention core, no projections.
- BiasGelu (ai.bort_infer) vs com.microsoft BiasGelu, x [B, S, 768] (Bort's FFN width).
- SkipLayerNorm (ai.bort_infer) vs com.microsoft SkipLayerNormalization, [B, S, 1024] with beta and bias.
Bort: hidden 1024, 8 heads x 128. Targets (peer median / ours): >= 1.0x, SkipLayerNorm >= 3x.

The int8 GEMM epilogues (ai.bort_infer only; test_epilogue_fusion_speed), one graph per side:
- dequantize_layernorm_requantize, [B, S, 1024]: DequantizeRows with bias, skip + LayerNorm (gamma, beta) and
  requantized outputs (y, q, scale, zero point) vs the chain it replaces, DequantizeRows → SkipLayerNorm →
  QuantizeRows (three nodes, same outputs).
- dequantize_gelu_requantize, [B, S, 768]: DequantizeRows with bias, GELU and only the requantized outputs vs
  DequantizeRows(gelu) → QuantizeRows.
Both sides give the same bits; the ratio (unfused / fused) is what the saved nodes and memory passes are worth.
Each session has its own intra-op pool, whose workers keep spinning for some 30 ms after a run; timing
starts only once the other sessions' workers are idle, or they would take the second core from the
backend being timed (with 2 threads and 2 cores).
Run: pytest benchmarks/bench_kernels.py --benchmark-group-by=group (BORT_BENCH_THREADS=1 for one thread)
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from .conftest import register_target

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

HIDDEN, HEADS, FFN = 1024, 8, 768
SHAPES = [(1, 32), (1, 128), (1, 512), (8, 32), (8, 128), (8, 512)]
OURS, PEER = "bort-infer", "ort-contrib"
TARGETS = {"attention": 1.0, "bias_gelu": 1.0, "skip_layernorm": 3.0}
for kernel, target in TARGETS.items():
    for b, s in SHAPES:
        register_target(f"{kernel} b{b} s{s}", OURS, PEER, target)

POOL_SPIN_SECONDS = 0.1  # > how long an idle onnxruntime pool worker spins before it sleeps
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
        np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8}


def session(op: str, domain: str, feeds: dict, threads: int, **attrs):
    node = helper.make_node(op, list(feeds), ["out"], domain=domain, **attrs)
    return graph_session([node], domain, feeds, {"out": TensorProto.FLOAT}, threads)


def graph_session(nodes: list, domain: str, feeds: dict, outputs: dict, threads: int):
    """A session of `nodes` whose graph inputs are the feeds and graph outputs `outputs` (name → element type)."""
    inputs = [helper.make_tensor_value_info(n, ELEM[v.dtype], list(v.shape)) for n, v in feeds.items()]
    graph = helper.make_graph(nodes, nodes[0].op_type, inputs,
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if domain == "ai.bort_infer":
        from bort_infer import custom_op_library

        so.register_custom_ops_library(custom_op_library())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def attention_sessions(b: int, s: int, threads: int):
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((b, s, 3 * HIDDEN)).astype(np.float32)
    bias = (rng.standard_normal(3 * HIDDEN) * 0.1).astype(np.float32)
    mask = np.ones((b, s), np.int64)
    ours = (session("FusedAttention", "ai.bort_infer", {"qkv": qkv, "bias": bias, "mask": mask}, threads,
                    num_heads=HEADS), {"qkv": qkv, "bias": bias, "mask": mask})
    q, k, v = (np.ascontiguousarray(qkv[..., i * HIDDEN:(i + 1) * HIDDEN]) for i in range(3))
    peer_feeds = {"query": q, "key": k, "value": v, "bias": bias, "key_padding_mask": mask.astype(np.int32)}
    peer = (session("MultiHeadAttention", "com.microsoft", peer_feeds, threads, num_heads=HEADS), peer_feeds)
    return ours, peer


def bias_gelu_sessions(b: int, s: int, threads: int):
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((b, s, FFN)).astype(np.float32),
             "bias": rng.standard_normal(FFN).astype(np.float32)}
    return (session("BiasGelu", "ai.bort_infer", feeds, threads), feeds), \
           (session("BiasGelu", "com.microsoft", feeds, threads), feeds)


def skip_layernorm_sessions(b: int, s: int, threads: int):
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((b, s, HIDDEN)).astype(np.float32),
             "skip": rng.standard_normal((b, s, HIDDEN)).astype(np.float32),
             "gamma": rng.standard_normal(HIDDEN).astype(np.float32),
             "beta": rng.standard_normal(HIDDEN).astype(np.float32),
             "bias": rng.standard_normal(HIDDEN).astype(np.float32)}
    return (session("SkipLayerNorm", "ai.bort_infer", feeds, threads, epsilon=1e-5), feeds), \
           (session("SkipLayerNormalization", "com.microsoft", feeds, threads, epsilon=1e-5), feeds)


MAKERS = {"attention": attention_sessions, "bias_gelu": bias_gelu_sessions, "skip_layernorm": skip_layernorm_sessions}
_cache: dict = {}


@pytest.mark.parametrize("backend", [OURS, PEER])
@pytest.mark.parametrize("b,s", SHAPES, ids=[f"b{b}s{s}" for b, s in SHAPES])
@pytest.mark.parametrize("kernel", list(MAKERS))
def test_kernel_speed(benchmark, threads, kernel, b, s, backend):
    key = (kernel, b, s, threads)
    if key not in _cache:
        _cache[key] = MAKERS[kernel](b, s, threads)
    ours, peer = _cache[key]
    sess, feeds = ours if backend == OURS else peer
    if backend == OURS:  # same numbers as the peer (to float tolerance), or the timing would be meaningless
        expected = peer[0].run(None, peer[1])[0]
        got = sess.run(None, feeds)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    benchmark.group = f"{kernel} b{b} s{s}"
    benchmark.extra_info["backend"] = backend
    time.sleep(POOL_SPIN_SECONDS)
    benchmark.pedantic(sess.run, args=(None, feeds), rounds=60 if b * s <= 1024 else 20, iterations=1,
                       warmup_rounds=3)


# ----------------------------------------------------------------------------------------------
# DequantizeRows epilogues: fused one-node graph vs the unfused chain it replaces

FUSED, UNFUSED = "fused", "unfused"
EPILOGUE_WIDTH = {"dequantize_layernorm_requantize": HIDDEN, "dequantize_gelu_requantize": FFN}
for epilogue in EPILOGUE_WIDTH:
    for b, s in SHAPES:
        register_target(f"{epilogue} b{b} s{s}", FUSED, UNFUSED, 1.0)
DEQUANTIZE_INPUTS = ["acc", "row_scale", "row_zero_point", "weight_scale", "weight_colsum", "bias"]
REQUANTIZED = {"q": TensorProto.UINT8, "scale": TensorProto.FLOAT, "zero_point": TensorProto.UINT8}


def epilogue_sessions(epilogue: str, b: int, s: int, threads: int):
    n = EPILOGUE_WIDTH[epilogue]
    rng = np.random.default_rng(3)
    feeds = {"acc": rng.integers(-2**20, 2**20, (b, s, n)).astype(np.int32),
             "row_scale": rng.uniform(1e-4, 1e-2, (b, s)).astype(np.float32),
             "row_zero_point": rng.integers(0, 256, (b, s)).astype(np.uint8),
             "weight_scale": rng.uniform(1e-4, 1e-2, n).astype(np.float32),
             "weight_colsum": rng.integers(-20_000, 20_000, n).astype(np.int32),
             "bias": rng.standard_normal(n).astype(np.float32)}
    d = "ai.bort_infer"
    if epilogue == "dequantize_layernorm_requantize":
        feeds.update(skip=rng.standard_normal((b, s, n)).astype(np.float32),
                     gamma=rng.standard_normal(n).astype(np.float32), beta=rng.standard_normal(n).astype(np.float32))
        outputs = {"y": TensorProto.FLOAT, **REQUANTIZED}
        fused = [helper.make_node("DequantizeRows", DEQUANTIZE_INPUTS + ["skip", "gamma", "beta"], list(outputs),
                                  domain=d, epsilon=1e-5)]
        unfused = [helper.make_node("DequantizeRows", DEQUANTIZE_INPUTS, ["v"], domain=d),
                   helper.make_node("SkipLayerNorm", ["v", "skip", "gamma", "beta"], ["y"], domain=d, epsilon=1e-5),
                   helper.make_node("QuantizeRows", ["y"], list(REQUANTIZED), domain=d)]
    else:
        outputs = dict(REQUANTIZED)
        fused = [helper.make_node("DequantizeRows", DEQUANTIZE_INPUTS, [""] + list(outputs), domain=d,
                                  activation="gelu")]
        unfused = [helper.make_node("DequantizeRows", DEQUANTIZE_INPUTS, ["y"], domain=d, activation="gelu"),
                   helper.make_node("QuantizeRows", ["y"], list(REQUANTIZED), domain=d)]
    return {FUSED: graph_session(fused, d, feeds, outputs, threads),
            UNFUSED: graph_session(unfused, d, feeds, outputs, threads)}, feeds


@pytest.mark.parametrize("backend", [FUSED, UNFUSED])
@pytest.mark.parametrize("b,s", SHAPES, ids=[f"b{b}s{s}" for b, s in SHAPES])
@pytest.mark.parametrize("epilogue", list(EPILOGUE_WIDTH))
def test_epilogue_fusion_speed(benchmark, threads, epilogue, b, s, backend):
    key = (epilogue, b, s, threads)
    if key not in _cache:
        _cache[key] = epilogue_sessions(epilogue, b, s, threads)
    sessions, feeds = _cache[key]
    if backend == FUSED:  # the fused epilogue computes exactly what the chain does
        for got, want in zip(sessions[FUSED].run(None, feeds), sessions[UNFUSED].run(None, feeds)):
            np.testing.assert_array_equal(got, want)
    benchmark.group = f"{epilogue} b{b} s{s}"
    benchmark.extra_info["backend"] = backend
    time.sleep(POOL_SPIN_SECONDS)
    # Small shapes take tens of microseconds, so they get more rounds for a stable median.
    rounds = 300 if b * s <= 128 else 100 if b * s <= 1024 else 30
    benchmark.pedantic(sessions[backend].run, args=(None, feeds), rounds=rounds, iterations=1, warmup_rounds=5)
