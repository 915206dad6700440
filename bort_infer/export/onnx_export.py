"""PyTorch → ONNX: the plain graph of an encoder, as an onnxruntime user would export it.

Inputs `input_ids` and `attention_mask` ([batch, seq], int64, both axes dynamic); output
`last_hidden_state` [batch, seq, hidden]. Token type ids are fixed to 0 (one text per row), which is what
sentence embedding pipelines feed; models with type_vocab_size 1 (Bort) have no other value anyway.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"


def export_plain_onnx(model, path: str | Path, opset: int = OPSET) -> Path:
    """Export `model` (a transformers BertModel, eval mode, eager attention) to `path`."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path = Path(path)
    seq = min(16, int(model.config.max_position_embeddings))
    ids = torch.full((2, seq), 5, dtype=torch.long)
    mask = torch.ones((2, seq), dtype=torch.long)
    mask[1, seq // 2:] = 0
    axes = {0: "batch", 1: "sequence"}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent Python branches in transformers
        # eval() on the wrapper: the exporter restores the wrapper's own mode afterwards, recursively, and a
        # fresh Module is in training mode, which would leave the encoder with dropout on.
        torch.onnx.export(LastHiddenState(model).eval(), (ids, mask), str(path), input_names=list(INPUTS),
                          output_names=[OUTPUT], dynamic_axes={"input_ids": axes, "attention_mask": axes, OUTPUT: axes},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    log.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
