"""fp32 export (bort_infer.export.export.export_model): the self-describing model directory, safe handling of
the output directory, and the parity gate that refuses to write a model that disagrees with PyTorch."""
from __future__ import annotations

import json
import shutil

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import bort_infer  # noqa: E402
from bort_infer import Session  # noqa: E402
from bort_infer.export import export as export_module  # noqa: E402
from bort_infer.export import hf  # noqa: E402
from bort_infer.export.export import PARITY_TEXTS, export_model  # noqa: E402
from bort_infer.export.graph_rewrite import ops_used  # noqa: E402
from bort_infer.model_dir import read_metadata  # noqa: E402

from ..conftest import minilm_dir  # noqa: E402

# The tiny-bort exports shared with tests/test_parity.py (built once per session), and what each must declare.
TINY_BORT_EXPORTS = [
    pytest.param({"custom_ops": False}, ("input_ids", "attention_mask"), [], id="plain-ort"),
    pytest.param({"custom_ops": True, "form": "padded"}, ("input_ids", "attention_mask"),
                 ["BiasGelu", "FusedAttention", "SkipLayerNorm"], id="bort-ops-padded"),
    pytest.param({"custom_ops": True, "form": "packed"}, ("input_ids", "position_ids", "cu_seqlens", "query_rows"),
                 ["BiasGelu", "PackedAttention", "SkipLayerNorm"], id="bort-ops-packed"),
]


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("options, inputs, custom_ops", TINY_BORT_EXPORTS)
def test_model_directory_describes_the_export(exports, checkpoints, options, inputs, custom_ops):
    import tokenizers
    import torch
    import transformers

    out, source = exports("tiny-bort", **options), checkpoints("tiny-bort")
    assert sorted(p.name for p in out.iterdir()) == ["bort_infer.json", "model.onnx", "tokenizer.json"]
    meta = read_json(out / "bort_infer.json")
    assert meta["architecture"] == "BertModel"
    assert (meta["hidden_size"], meta["num_layers"], meta["num_heads"]) == (128, 2, 4)
    assert (meta["max_length"], meta["pooling"], meta["normalize"], meta["precision"]) == (512, "cls", False, "fp32")
    assert meta["pad_token_id"] == 1  # Bort's <pad>
    assert meta["custom_ops"] == custom_ops and meta["inputs"] == list(inputs)
    assert meta["fidelity"] is None  # fp32: no quantization fidelity

    model = onnx.load(str(out / "model.onnx"))
    assert ops_used(model) == custom_ops
    assert [i.name for i in model.graph.input] == list(inputs)

    assert meta["versions"] == {
        "bort_infer": bort_infer.__version__, "onnxruntime": ort.__version__,
        "onnx": onnx.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__}
    assert meta["source"]["sha256"] == hf.weights_sha256(source)
    assert meta["source"]["model_type"] == "bert"
    parity = meta["source"]["parity_vs_pytorch"]
    assert parity["texts"] == len(PARITY_TEXTS) and parity["tokens"] > len(PARITY_TEXTS)
    assert parity["min_cosine"] >= export_module.PARITY_MIN_COSINE
    assert 0 <= parity["max_abs_diff"] <= export_module.PARITY_MAX_ABS

    tokenizer = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.truncation["max_length"] == 512 and tokenizer.padding is None
    ids = tokenizer.encode("Hello world.").ids
    assert ids[0] == 0 and ids[-1] == 2
    assert read_metadata(out).custom_ops == tuple(custom_ops)  # the run time accepts the directory


def test_minilm_directory_carries_its_pipeline_defaults(exports):
    import tokenizers

    out = exports("minilm", custom_ops=False)  # shared with tests/test_parity.py
    meta = read_json(out / "bort_infer.json")
    assert (meta["pooling"], meta["normalize"], meta["max_length"]) == ("mean", True, 256)
    assert (meta["hidden_size"], meta["num_layers"], meta["num_heads"]) == (384, 6, 12)
    assert meta["source"]["sha256"] == hf.weights_sha256(minilm_dir())
    assert "sentence-transformers" in meta["source"]["defaults_from"]
    assert tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")).truncation["max_length"] == 256


# ---------------------------------------------------------------------------------------------- output directory

def test_non_empty_output_without_overwrite_is_refused(exports, checkpoints, tmp_path):
    out = shutil.copytree(exports("tiny-bort", custom_ops=False), tmp_path / "model")
    before = (out / "bort_infer.json").read_bytes()
    with pytest.raises(ValueError, match=r"output directory .*model is not empty; pass --overwrite to replace it"):
        export_model(str(checkpoints("tiny-bort")), out, custom_ops=False)
    assert (out / "bort_infer.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial directory left behind


def test_overwrite_replaces_a_model_directory(exports, checkpoints, tmp_path):
    # A packed custom-op model, plus a stray file, replaced by a plain export.
    out = shutil.copytree(exports("tiny-bort", custom_ops=True, form="packed"), tmp_path / "model")
    (out / "stale.txt").write_text("from an older export")
    meta = export_model(str(checkpoints("tiny-bort")), out, custom_ops=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["bort_infer.json", "model.onnx", "tokenizer.json"]
    assert meta.custom_ops == () and read_json(out / "bort_infer.json")["custom_ops"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert Session(out).encode("Hello world.").shape == (128,)


def test_overwrite_refuses_a_directory_that_is_not_a_model_directory(checkpoints, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("irreplaceable")
    with pytest.raises(ValueError, match=r"holds files that are not a bort-infer model \(thesis.txt\); refusing"):
        export_model(str(checkpoints("tiny-bort")), out, custom_ops=False, overwrite=True)
    assert (out / "thesis.txt").read_text() == "irreplaceable"


def test_overwrite_refuses_a_directory_holding_only_hidden_files(checkpoints, tmp_path):
    out = tmp_path / "project"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".env").write_text("SECRET=1\n")
    with pytest.raises(ValueError, match=r"holds files that are not a bort-infer model \(.env, .git\); refusing"):
        export_model(str(checkpoints("tiny-bort")), out, custom_ops=False, overwrite=True)
    assert (out / ".env").read_text() == "SECRET=1\n" and (out / ".git" / "HEAD").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_overwrite_refuses_a_model_directory_that_holds_a_subdirectory(exports, checkpoints, tmp_path):
    """bort-infer writes no subdirectory into a model directory: one there (a .git, a user's data) is not ours."""
    out = shutil.copytree(exports("tiny-bort", custom_ops=False), tmp_path / "model")
    (out / ".git").mkdir()
    with pytest.raises(ValueError, match=r"holds directories bort-infer never writes \(.git\); refusing"):
        export_model(str(checkpoints("tiny-bort")), out, custom_ops=False, overwrite=True)
    assert (out / ".git").is_dir() and (out / "model.onnx").is_file()


def test_overwrite_refuses_a_directory_whose_metadata_is_not_ours(checkpoints, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "bort_infer.json").write_text('{"name": "somebody else\'s file"}')
    with pytest.raises(ValueError, match="holds files that are not a bort-infer model"):
        export_model(str(checkpoints("tiny-bort")), out, custom_ops=False, overwrite=True)


def test_output_that_is_a_file_or_has_no_parent_is_refused(checkpoints, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        export_model(str(checkpoints("tiny-bort")), tmp_path / "file", custom_ops=False, overwrite=True)
    with pytest.raises(ValueError, match="parent .* does not exist"):
        export_model(str(checkpoints("tiny-bort")), tmp_path / "missing" / "model", custom_ops=False)


@pytest.mark.parametrize("options, message", [
    ({"custom_ops": False, "form": "packed"}, "the packed graph form runs on bort-infer's ops; it needs custom ops"),
    ({"form": "ragged"}, "unknown graph form 'ragged'"),
])
def test_inconsistent_options_are_rejected_before_any_work(checkpoints, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        export_model(str(checkpoints("tiny-bort")), tmp_path / "model", **options)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- parity gate

def test_a_rewritten_graph_that_disagrees_with_pytorch_is_not_written(checkpoints, tmp_path, monkeypatch):
    real_emit = export_module.emit

    def emit_with_a_miswired_bias(enc, form, *args, **kwargs):
        layer = enc.layers[-1]
        layer.ffn_out_bias = layer.ffn_out_bias.copy()
        layer.ffn_out_bias[0] += 0.5  # one feature off: LayerNorm cannot hide it
        return real_emit(enc, form, *args, **kwargs)

    monkeypatch.setattr(export_module, "emit", emit_with_a_miswired_bias)
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match=r"exported graph disagrees with PyTorch: .*the model was not written"):
        export_model(str(checkpoints("tiny-bort")), out, form="packed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


def _fail(*args, **kwargs):
    raise RuntimeError("forced failure")


@pytest.mark.parametrize("step, options", [
    ("checkpoint", {}), ("onnxruntime-fusions", {}), ("rewrite", {}), ("int8", {"quantize": "int8"}),
    ("plain-int8", {"quantize": "int8", "custom_ops": False}),
])
def test_a_failed_export_leaves_no_temporary_files(checkpoints, tmp_path, monkeypatch, step, options):
    """Wherever an export fails, neither the output's parent nor the temporary directory keeps anything,
    even while the caller still holds the exception (and so the frames it went through)."""
    import tempfile

    import onnxruntime.quantization as ort_quantization
    import onnxruntime.transformers.optimizer as ort_optimizer

    from bort_infer.export import quantize as quantize_module

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    target = {"checkpoint": (hf, "load_encoder"),
              "onnxruntime-fusions": (ort_optimizer, "optimize_by_fusion"),  # inside its TemporaryDirectory
              "rewrite": (export_module, "emit"), "int8": (quantize_module, "quantize_encoder"),
              "plain-int8": (ort_quantization.onnx_quantizer.ONNXQuantizer, "quantize_model")}[step]
    monkeypatch.setattr(*target, _fail)
    out = tmp_path / "out" / "model"
    out.parent.mkdir()
    with pytest.raises(Exception, match="forced failure") as failure:
        export_model(str(checkpoints("tiny-bort")), out, **options)
    assert failure.value is not None  # the exception (and its traceback) is still referenced here
    assert list(out.parent.iterdir()) == []
    assert list(private_tmp.iterdir()) == []


def test_a_failed_export_leaves_the_previous_model_in_place(exports, checkpoints, tmp_path, monkeypatch):
    real_reference = export_module.parity_reference

    def drifted_reference(*args, **kwargs):  # PyTorch's states no longer match the graph about to be written
        ids, mask, states = real_reference(*args, **kwargs)
        return ids, mask, states + 0.5

    monkeypatch.setattr(export_module, "parity_reference", drifted_reference)
    out = shutil.copytree(exports("tiny-bort", custom_ops=False), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="exported graph disagrees with PyTorch"):
        export_model(str(checkpoints("tiny-bort")), out, custom_ops=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]



def test_starting_from_the_plain_export_gives_the_same_model(exports, checkpoints, tmp_path):
    plain = exports("tiny-bort", custom_ops=False) / "model.onnx"
    before = plain.read_bytes()
    out = tmp_path / "model"
    export_model(str(checkpoints("tiny-bort")), out, plain_onnx=plain)
    assert (out / "model.onnx").read_bytes() == (exports("tiny-bort") / "model.onnx").read_bytes()
    assert plain.read_bytes() == before  # the caller's file is read, not moved or changed


def test_a_plain_export_of_another_checkpoint_is_refused_by_the_parity_check(exports, checkpoints, tmp_path):
    other = exports("tiny-bert-large", custom_ops=False) / "model.onnx"
    with pytest.raises((RuntimeError, ValueError)):
        export_model(str(checkpoints("tiny-bort")), tmp_path / "model", plain_onnx=other)
    assert list(tmp_path.iterdir()) == []


def test_the_int8_probe_loads_each_graph_once_however_often_it_embeds(exports, tmp_path, monkeypatch):
    import numpy as np
    import onnx

    from bort_infer import session as session_module

    directory = exports("tiny-bort")
    loads = []
    real_session = session_module.Session

    def counting_session(*args, **kwargs):
        loads.append(args[0])
        return real_session(*args, **kwargs)

    monkeypatch.setattr(session_module, "Session", counting_session)
    probe = export_module._Probe(tmp_path / ".probe", directory / "tokenizer.json", read_metadata(directory))
    model = onnx.load(str(directory / "model.onnx"))
    first = probe.embed(model, ["a text", "another text"])
    np.testing.assert_array_equal(probe.embed(model, ["a text", "another text"]), first)
    assert len(loads) == 1
    probe.embed(onnx.load(str(directory / "model.onnx")), ["a text"])  # another graph object: loaded again
    assert len(loads) == 2


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_the_fidelity_gate_reads_the_fp32_side_from_the_written_fp32_model_with_the_same_figures_and_model(
        exports, checkpoints, tmp_path, monkeypatch, quantize):
    """The int8 search and both gates take their fp32 vectors from the fp32 model.onnx the export has
    written (no second fp32 graph in memory): the figures and the model are those of the fp32 graph emitted
    again in memory, as before."""
    from bort_infer.export import bf16 as bf16_module
    from bort_infer.export import quantize as quantize_module

    directory = exports("tiny-bort", quantize=quantize)
    convert, search = bf16_module.convert_encoder, quantize_module.quantize_encoder
    monkeypatch.setattr(bf16_module, "convert_encoder",
                        lambda enc, form, embed, fp32_vectors=None: convert(enc, form, embed))
    monkeypatch.setattr(quantize_module, "quantize_encoder",
                        lambda *args, fp32_embed=None, **kwargs: search(*args, **kwargs))
    again = tmp_path / "re-emitted"
    export_model(str(checkpoints("tiny-bort")), again, quantize=quantize)
    assert (directory / "model.onnx").read_bytes() == (again / "model.onnx").read_bytes()
    assert read_metadata(directory).fidelity == read_metadata(again).fidelity
