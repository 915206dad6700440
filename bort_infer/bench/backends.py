"""The runtimes bort-bench compares. Each backend turns (model, threads) into a callable that runs one
forward pass on [batch, seq] token ids, or raises BackendUnavailable naming what is missing."""
from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np

from . import artifacts

Forward = Callable[[np.ndarray, np.ndarray], object]


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed (or cannot run here); the bench skips it with this note."""


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"{module} is not installed ({extra})")


def torch_fp32(model: str, threads: int) -> Forward:
    _require("torch", "pip install 'bort-infer[export]'")
    _require("transformers", "pip install 'bort-infer[export]'")
    import torch

    from ..build.hf import load_encoder

    torch.set_num_threads(threads)
    net = load_encoder(artifacts.checkpoint(model))

    def forward(ids: np.ndarray, mask: np.ndarray):
        with torch.inference_mode():
            return net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    return forward


def _ort_session(path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_fp32(model: str, threads: int) -> Forward:
    """A plain torch.onnx export run by onnxruntime with default optimizations: what its users get."""
    sess = _ort_session(artifacts.export(model, "plain-fp32") / "model.onnx", threads)
    names = [i.name for i in sess.get_inputs()]

    def forward(ids: np.ndarray, mask: np.ndarray):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return sess.run(None, {n: feeds[n] for n in names})
    return forward


def bort_infer_fp32(model: str, threads: int) -> Forward:
    from ..session import Session

    sess = Session(artifacts.export(model, "bort-infer-fp32"), threads=threads)
    return sess.forward


BACKENDS: dict[str, Callable[[str, int], Forward]] = {
    "torch-fp32": torch_fp32,
    "ort-fp32": ort_fp32,
    "bort-infer-fp32": bort_infer_fp32,
}
