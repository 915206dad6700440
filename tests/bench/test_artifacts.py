"""bort-bench's artifacts: built once, from what they need, rebuilt when what made them changes."""
import json

import pytest

from bort_infer.bench import artifacts
from bort_infer.bench.artifacts import ARTIFACTS, Artifact


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Two artifacts, `base` and `derived` (made from base), whose builders count their calls."""
    monkeypatch.setenv("BORT_INFER_CACHE", str(tmp_path))
    built = []

    def make(name, fail=False):
        def build(model, out):
            built.append(name)
            (out / "value.txt").write_text(f"{name} of {model}")
            if fail:
                raise RuntimeError(f"{name} failed")
        return build

    table = {"base": Artifact("base", (), make("base")), "derived": Artifact("derived", ("base",), make("derived")),
             "broken": Artifact("broken", ("base",), make("broken", fail=True))}
    monkeypatch.setattr(artifacts, "ARTIFACTS", table)
    return built


def test_plan_lists_what_is_needed_first_and_each_once():
    assert artifacts.plan("bort", ["ort-int8", "openvino-int8", "plain-fp32"]) == [
        "checkpoint", "plain-fp32", "ort-int8", "openvino-int8"]
    assert artifacts.plan("bort", ["fidelity-reference"]) == ["checkpoint", "plain-fp32", "fidelity-reference"]


def test_every_artifact_needs_only_known_artifacts():
    for art in ARTIFACTS.values():
        assert set(art.needs) <= set(ARTIFACTS) and art.memory > 0


def test_an_artifact_is_built_once_and_then_found(fake):
    assert artifacts.ensure("tiny-bort", "derived").name == "derived"
    assert fake == ["base", "derived"]
    assert artifacts.is_built("tiny-bort", "derived")
    artifacts.ensure("tiny-bort", "derived")
    assert fake == ["base", "derived"]
    assert (artifacts.path("tiny-bort", "derived") / "value.txt").read_text() == "derived of tiny-bort"


def test_a_rebuilt_source_makes_what_was_made_from_it_stale(fake):
    artifacts.ensure("tiny-bort", "derived")
    artifacts.build("tiny-bort", "base")
    stamp = json.loads((artifacts.path("tiny-bort", "base") / artifacts.STAMP).read_text())
    stamp["code"] = "other code"
    (artifacts.path("tiny-bort", "base") / artifacts.STAMP).write_text(json.dumps(stamp))
    assert not artifacts.is_built("tiny-bort", "base") and not artifacts.is_built("tiny-bort", "derived")


def test_a_failed_build_leaves_nothing_that_looks_built(fake):
    artifacts.ensure("tiny-bort", "base")
    with pytest.raises(RuntimeError, match="broken failed"):
        artifacts.build("tiny-bort", "broken")
    assert not artifacts.path("tiny-bort", "broken").exists()
    assert [p.name for p in artifacts.path("tiny-bort", "base").parent.iterdir()] == ["base"]


def test_building_before_what_it_needs_is_refused(fake):
    with pytest.raises(RuntimeError, match="needs base built first"):
        artifacts.build("tiny-bort", "derived")


def test_weight_bytes_follow_the_config():
    assert artifacts.weight_bytes("bert-large") == pytest.approx(4 * 335e6, rel=0.02)
    assert artifacts.weight_bytes("bort") == pytest.approx(4 * 75e6, rel=0.02)


@pytest.mark.parametrize("model", ["tiny-bort", "tiny-bert-large"])
def test_the_fused_fp32_graph_is_byte_for_byte_what_onnxruntimes_optimizer_makes_with_its_defaults(
        model, tmp_path, monkeypatch):
    """Built without the optimizer's symbolic shape inference (several copies of the weights) and the one
    no-op Reshape it would have removed removed here: the same file as optimize_model with its defaults."""
    from onnxruntime.transformers.optimizer import optimize_model

    from bort_infer.registry import model_spec

    monkeypatch.setenv("BORT_INFER_CACHE", str(tmp_path))
    built = artifacts.ensure(model, "ort-fused-fp32") / "model.onnx"
    cfg = model_spec(model)["hf_config"]
    default = optimize_model(str(artifacts.path(model, "plain-fp32") / "model.onnx"), model_type="bert",
                             num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"])
    default.save_model_to_file(str(tmp_path / "default.onnx"))
    assert built.read_bytes() == (tmp_path / "default.onnx").read_bytes()


def test_a_reshape_to_minus_one_of_a_shape_is_dropped_and_its_consumers_read_the_shape():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["s", "flat"], ["r"]),
             helper.make_node("Reshape", ["x", "two"], ["y"]), helper.make_node("Equal", ["r", "s"], ["e"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in ("y", "e")],
        [numpy_helper.from_array(np.array([-1], np.int64), "flat"), numpy_helper.from_array(np.array([3, 2], np.int64),
                                                                                          "two")])
    model = helper.make_model(graph)
    assert artifacts.drop_noop_shape_reshapes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Shape", "Reshape", "Equal"]
    assert list(model.graph.node[2].input) == ["s", "s"] and [i.name for i in model.graph.initializer] == ["two"]
