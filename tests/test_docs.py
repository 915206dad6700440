"""docs/ops.md and docs/model-format.md are contracts for apps in other languages: every registered op with
every input and output name, and every bort_infer.json field, is documented there."""
from __future__ import annotations

import re
from pathlib import Path

from bort_infer.model_dir import ModelMetadata

ROOT = Path(__file__).resolve().parents[1]
OPS_DOC = (ROOT / "docs" / "ops.md").read_text()
FORMAT_DOC = (ROOT / "docs" / "model-format.md").read_text()


def registered_ops() -> dict[str, list[str]]:
    """Op name -> its input and output names, from the op tables of csrc/ort_custom_ops.cc."""
    source = (ROOT / "csrc" / "ort_custom_ops.cc").read_text()
    ops = {}
    for block in re.split(r"\nstruct ", source)[1:]:
        name = re.search(r'kName = "(\w+)"', block)
        if name:
            ops[name.group(1)] = re.findall(r'\{"(\w+)", k(?:Required|Optional)', block)
    return ops


def section(op: str) -> str:
    match = re.search(rf"^## {op}\n(.*?)(?=^## |\Z)", OPS_DOC, re.S | re.M)
    assert match, f"docs/ops.md has no section '## {op}'"
    return match.group(1)


def test_every_registered_op_is_documented_with_its_inputs_and_outputs():
    ops = registered_ops()
    assert {"FusedAttention", "PackedAttention", "BiasGelu", "SkipLayerNorm", "QuantizeRows",
            "DequantizeRows"} <= set(ops)
    for op, ports in ops.items():
        text = section(op)
        assert ports and all(f"`{port}`" in text for port in ports), (op, [p for p in ports if f"`{p}`" not in text])
    assert "ai.bort_infer" in OPS_DOC and "opset version 1" in OPS_DOC


def test_every_metadata_field_is_documented():
    meta = ModelMetadata(architecture="BertModel", hidden_size=8, num_layers=1, num_heads=1, max_length=8,
                         pooling="cls", normalize=False, precision="int8", pad_token_id=0, ort_file="model.ort",
                         int8_gemm="ours")
    missing = [key for key in meta.to_json() if f"`{key}`" not in FORMAT_DOC]
    assert not missing


def test_every_input_of_both_graph_forms_is_documented():
    from bort_infer.export.graph_rewrite import PACKED_INPUTS, PADDED_INPUTS

    assert all(f"`{name}`" in FORMAT_DOC for name in PACKED_INPUTS + PADDED_INPUTS)
