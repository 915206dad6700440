"""PyTorch → ONNX (bort_infer.export.onnx_export): the plain graph, with dynamic axes, equal to PyTorch, and
an encoder left as it was given (eval mode)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from bort_infer.export.hf import load_encoder  # noqa: E402
from bort_infer.export.onnx_export import INPUTS, OPSET, OUTPUT, export_plain_onnx  # noqa: E402


def test_plain_export_keeps_the_encoder_in_eval_mode_and_matches_it(checkpoints, tmp_path):
    import torch

    encoder = load_encoder(checkpoints("tiny-bort"), attn_implementation="eager")
    assert encoder.config.hidden_dropout_prob > 0  # dropout left on would change every forward pass
    path = export_plain_onnx(encoder, tmp_path / "plain.onnx")

    # A past bug: torch.onnx.export restored the wrapper's training mode onto the encoder.
    assert [name for name, module in encoder.named_modules() if module.training] == []

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == list(INPUTS)
    assert [o.name for o in model.graph.output] == [OUTPUT]
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {OPSET}
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, f"{value.name}: batch and sequence axes must be dynamic"

    # Larger than the traced (2, 16) batch, right-padded.
    lengths = np.array([40, 3, 17])
    mask = (np.arange(40)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.random.default_rng(0).integers(5, encoder.config.vocab_size, size=mask.shape).astype(np.int64)
    feeds = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    with torch.no_grad():
        runs = [encoder(**feeds).last_hidden_state.numpy() for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    valid = mask.astype(bool)
    assert np.abs(got[valid] - runs[0][valid]).max() <= 1e-4
