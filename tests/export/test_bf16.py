"""bf16 export (bort_infer/export/bf16.py): every linear on LinearBf16 with BFLOAT16 weights, the file about
half the fp32 one, the fidelity gate, and the real all-MiniLM-L6-v2 weights against fp32 on STS-B dev."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from bort_infer import Session
from bort_infer.export import bf16
from bort_infer.export.graph_rewrite import to_bf16_bits
from bort_infer.model_dir import read_metadata

from ..test_gemm_bf16 import bf16_bits
from .conftest import cosines, encode_varied, sts_spearman

LINEAR_WEIGHTS = ("qkv", "attn_out", "ffn_in", "ffn_out")


def graph(directory):
    return onnx.load(str(directory / "model.onnx"))


@pytest.mark.parametrize("form", ["packed", "padded"])
def test_every_linear_runs_on_linear_bf16_with_bf16_weights(exports, form):
    directory = exports("tiny-bort", quantize="bf16", form=form)
    meta = read_metadata(directory)
    assert meta.precision == "bf16" and "LinearBf16" in meta.custom_ops
    model = graph(directory)
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" not in ops and "BiasGelu" not in ops
    num_layers = meta.num_layers
    # Per layer: QKV (the packed form's last layer splits it into Q for the query rows and K|V for all
    # tokens), attention output, FFN input (with GELU), FFN output.
    linears = [n for n in model.graph.node if n.op_type == "LinearBf16"]
    assert len(linears) == 4 * num_layers + (1 if form == "packed" else 0)
    gelu = [n for n in linears if any(a.name == "activation" and a.s == b"gelu" for a in n.attribute)]
    assert len(gelu) == num_layers and all(len(n.input) == 3 for n in gelu)
    inits = {i.name: i for i in model.graph.initializer}
    for n in linears:
        assert inits[n.input[1]].data_type == onnx.TensorProto.BFLOAT16
    # No float32 initializer holds a weight matrix or an embedding table: only vectors (biases, LayerNorms).
    assert all(len(i.dims) <= 1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)


def attention_precisions(model) -> list[str]:
    """Each attention node's 'precision' attribute ("fp32" when absent, the ops' default)."""
    return [next((a.s.decode() for a in n.attribute if a.name == "precision"), "fp32") for n in model.graph.node
            if n.op_type in ("FusedAttention", "PackedAttention")]


@pytest.mark.parametrize("form", ["packed", "padded"])
def test_attention_takes_bf16_operands_in_a_bf16_export_and_fp32_in_an_fp32_one(exports, form):
    bf16_model = graph(exports("tiny-bort", quantize="bf16", form=form))
    assert attention_precisions(bf16_model) and set(attention_precisions(bf16_model)) == {"bf16"}
    fp32_model = graph(exports("tiny-bort", form=form))
    assert attention_precisions(fp32_model) and set(attention_precisions(fp32_model)) == {"fp32"}
    activations = read_metadata(exports("tiny-bort", quantize="bf16", form=form)).fidelity["activations"]
    assert "attention's Q K^T and P V operands" in activations


def test_bf16_weights_are_the_fp32_weights_rounded_to_nearest_even(exports):
    fp32 = {i.name: onnx.numpy_helper.to_array(i) for i in graph(exports("tiny-bort")).graph.initializer}
    bf16_inits = {i.name: i for i in graph(exports("tiny-bort", quantize="bf16")).graph.initializer}
    for name in ("layer.0/qkv", "layer.0/ffn_in", "layer.1/ffn_out"):
        stored = np.frombuffer(bf16_inits[f"{name}.weight_bf16"].raw_data, np.uint16)
        assert np.array_equal(stored, bf16_bits(fp32[f"{name}.weight"]).ravel())


def test_to_bf16_bits_is_the_kernels_rounding():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, size=10000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    assert np.array_equal(to_bf16_bits(x), bf16_bits(x))


def test_tiny_bort_bf16_keeps_vectors_reports_fidelity_and_halves_the_file(exports, tiny_bort_varied_fp32):
    directory = exports("tiny-bort", quantize="bf16")
    assert cosines(tiny_bort_varied_fp32, encode_varied(directory)).min() >= 0.9999
    info = Session(directory).info
    assert info["precision"] == "bf16"
    f = info["fidelity"]
    assert f["gate"] == {"min_cosine": bf16.MIN_COSINE, "passed": True}
    assert f["evaluation"]["cosine_min"] >= bf16.MIN_COSINE and f["evaluation"]["texts"] > 50
    assert f["batch_consistency"]["cosine_min"] >= 0.999999  # per-element rounding: no batch dependence
    sizes = f["size_bytes"]
    assert sizes["bf16_model"] <= 0.55 * sizes["fp32_model"]


def test_gate_refuses_to_write_a_bf16_model_under_it(checkpoints, tmp_path, monkeypatch):
    from bort_infer.export.export import export_model

    monkeypatch.setattr(bf16, "MIN_COSINE", 1.5)  # no model meets it
    out = tmp_path / "model"
    with pytest.raises(ValueError, match="bf16 fidelity under the gate"):
        export_model(str(checkpoints("tiny-bort")), out, quantize="bf16")
    assert not out.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("options, match", [
    (dict(custom_ops=False), "needs custom ops"),
    (dict(max_drop=0.01), "apply to an int8 export"),
    (dict(calibration_texts=["a text"]), "apply to an int8 export"),
])
def test_bf16_export_rejects_options_it_cannot_honour(checkpoints, tmp_path, options, match):
    from bort_infer.export.export import export_model

    with pytest.raises(ValueError, match=match):
        export_model(str(checkpoints("tiny-bort")), tmp_path / "model", quantize="bf16", **options)


def test_minilm_bf16_matches_fp32_on_sts_dev(exports, minilm_sts_dev):
    session = Session(exports("minilm", quantize="bf16"), threads=2)
    got = session.encode(minilm_sts_dev.texts, batch_size=64)
    cos = cosines(got, minilm_sts_dev.fp32)
    assert cos.min() >= bf16.MIN_COSINE, cos.min()
    rho_fp32 = sts_spearman(minilm_sts_dev.fp32, minilm_sts_dev.gold)
    rho_bf16 = sts_spearman(got, minilm_sts_dev.gold)
    assert abs(rho_bf16 - rho_fp32) <= 0.02, (rho_bf16, rho_fp32)
    f = session.info["fidelity"]
    assert f["gate"]["passed"] and f["evaluation"]["cosine_min"] >= bf16.MIN_COSINE
