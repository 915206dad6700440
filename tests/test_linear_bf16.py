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


@pytest.mark.skipif("amx" not in PATHS, reason="CPU (or OS) without AMX-BF16")
@pytest.mark.parametrize("m, k, n", [(1, 64, 16), (17, 96, 70), (33, 1024, 200), (45, 128, 1000), (100, 768, 1024),
                                     (129, 64, 48)])
def test_linear_bf16_amx_epilogue_finishes_exactly_its_own_accumulators(m, k, n):
    # The AMX kernel finishes each 32 x 32 block of C while the next one is multiplied: the bias and GELU must land
    # on the block's own rows and columns (tails included), i.e. equal the plain GEMM's output finished afterwards.
    rng = np.random.default_rng(m + k + n)
    x, w = random_case(rng, m, k, n)
    bias = rng.standard_normal(n).astype(np.float32)
    packed = C.PackedBf16Weights(w)
    with use_path("amx"):
        plain = C.gemm_bf16(x, packed)
        with_bias, with_gelu = C.linear_bf16(x, packed, bias), C.linear_bf16(x, packed, bias, "gelu")
    assert same_bits(with_bias, plain + bias)
    assert same_bits(with_gelu, C.bias_gelu(plain, bias))


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


# ---------------------------------------------------------------------------------------------- onnxruntime op

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tests.test_custom_ops import DOMAIN, ORT_ERRORS  # noqa: E402


def linear_session(weight_bits: np.ndarray, *, bias: np.ndarray | None = None, activation: str | None = None,
                   weight_as_input: bool = False, x_type=TensorProto.FLOAT, threads: int = 1):
    """One LinearBf16 node; the weight is a BFLOAT16 initializer (or, weight_as_input, a graph input)."""
    weight = helper.make_tensor("w", TensorProto.BFLOAT16, weight_bits.shape,
                                np.ascontiguousarray(weight_bits, np.uint16).tobytes(), raw=True)
    inputs = [helper.make_tensor_value_info("x", x_type, None)]
    inits = []
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.BFLOAT16, None))
    else:
        inits.append(weight)
    names = ["x", "w"]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(bias, "b"))
        names.append("b")
    attrs = {} if activation is None else {"activation": activation}
    node = helper.make_node("LinearBf16", names, ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(C.__file__)
    so.intra_op_num_threads = threads
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bf16_tensor(bits: np.ndarray):
    """An OrtValue of bf16 bit patterns (numpy has no bfloat16)."""
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(bits, np.uint16),
                                                           TensorProto.BFLOAT16)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation", [None, "none", "gelu"])
@pytest.mark.parametrize("x_shape", [(0, 48), (1, 48), (3, 37, 48), (130, 48)])
def test_op_equals_the_kernel(threads, activation, x_shape):
    rng = np.random.default_rng(threads + len(x_shape))
    w = rng.standard_normal((48, 70)).astype(np.float32)
    bias = rng.standard_normal(70).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    got = linear_session(bf16_bits(w), bias=bias, activation=activation, threads=threads).run(None, {"x": x})[0]
    assert same_bits(got, C.linear_bf16(x, C.PackedBf16Weights(w), bias, activation or "none"))


def test_op_packs_a_weight_fed_at_run_time_on_each_call():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 33)).astype(np.float32)
    session = linear_session(np.zeros((33, 20), np.uint16), weight_as_input=True)
    for seed in (1, 2):
        w = np.random.default_rng(seed).standard_normal((33, 20)).astype(np.float32)
        got = session.run_with_ort_values(["y"], {"x": ort.OrtValue.ortvalue_from_numpy(x),
                                                   "w": bf16_tensor(bf16_bits(w))})[0].numpy()
        assert same_bits(got, C.gemm_bf16(x, C.PackedBf16Weights(w)))


def test_op_rejects_mismatched_shapes_naming_the_op():
    session = linear_session(np.zeros((4, 3), np.uint16), bias=np.zeros(3, np.float32))
    with pytest.raises(ORT_ERRORS, match=r"LinearBf16: x's last dimension 5 does not match weight \[4, 3\]"):
        session.run(None, {"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(ORT_ERRORS, match="LinearBf16: x must have rank >= 1"):
        session.run(None, {"x": np.zeros((), np.float32)})
    assert session.run(None, {"x": np.ones((2, 4), np.float32)})[0].shape == (2, 3)  # still usable


def test_op_rejects_a_bad_bias_and_a_bad_weight():
    with pytest.raises(ORT_ERRORS, match=r"LinearBf16: bias must have shape \[3\]"):
        linear_session(np.zeros((4, 3), np.uint16), bias=np.zeros(4, np.float32)).run(
            None, {"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(ORT_ERRORS, match=r"LinearBf16: weight must have shape \[K, N\]"):
        linear_session(np.zeros((2, 4, 3), np.uint16))
    session = linear_session(np.zeros((4, 3), np.uint16), weight_as_input=True)
    with pytest.raises(ORT_ERRORS, match=r"LinearBf16: weight must have shape \[K, N\]"):
        session.run_with_ort_values(["y"], {"x": ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 4), np.float32)),
                                            "w": bf16_tensor(np.zeros(12, np.uint16))})


def test_op_rejects_an_unknown_activation_and_wrong_types():
    with pytest.raises(ORT_ERRORS, match="LinearBf16: attribute 'activation' must be 'none' or 'gelu'"):
        linear_session(np.zeros((4, 3), np.uint16), activation="relu")
    with pytest.raises(ORT_ERRORS):  # float64 rows: the op takes float32 only (refused when the graph loads)
        linear_session(np.zeros((4, 3), np.uint16), x_type=TensorProto.DOUBLE)


def test_op_loads_an_empty_weight_claiming_a_huge_dimension_at_once():
    session = linear_session(np.zeros((2**40, 0), np.uint16))  # packing loops over nothing, not 2**40 rows
    assert session.run(None, {"x": np.zeros((0, 2**40), np.float32)})[0].shape == (0, 0)
