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


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"{module} is not installed ({install})")


def torch_fp32(model: str, threads: int) -> Forward:
    """transformers BertModel under torch.inference_mode, its default attention implementation."""
    _require("torch", "pip install 'bort-infer[export]'")
    _require("transformers", "pip install 'bort-infer[export]'")
    import torch

    from ..export.hf import load_encoder

    torch.set_num_threads(threads)
    net = load_encoder(artifacts.checkpoint(model))

    def forward(ids: np.ndarray, mask: np.ndarray):
        with torch.inference_mode():
            return net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    return forward


def _ort_forward(onnx_path, threads: int) -> Forward:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def forward(ids: np.ndarray, mask: np.ndarray):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return sess.run(None, {n: feeds[n] for n in names})
    return forward


def ort_fp32(model: str, threads: int) -> Forward:
    """A plain torch.onnx export run by onnxruntime with its default optimizations: what its users get."""
    return _ort_forward(artifacts.export(model, "plain-fp32") / "model.onnx", threads)


def ort_fused_fp32(model: str, threads: int) -> Forward:
    """onnxruntime's transformers optimizer applied to the plain export (fused contrib ops)."""
    return _ort_forward(artifacts.ort_fused_fp32(model), threads)


def ort_int8(model: str, threads: int) -> Forward:
    """The plain export through onnxruntime.quantization.quantize_dynamic with its documented defaults."""
    return _ort_forward(artifacts.ort_dynamic_int8(model), threads)


def _session_forward(model: str, variant: str, threads: int) -> Forward:
    from ..session import Session

    sess = Session(artifacts.export(model, variant), threads=threads)
    return sess.forward


def bort_infer_fp32(model: str, threads: int) -> Forward:
    return _session_forward(model, "bort-infer-fp32", threads)


def bort_infer_int8(model: str, threads: int) -> Forward:
    return _session_forward(model, "bort-infer-int8", threads)


def ctranslate2_int8(model: str, threads: int) -> Forward:
    _require("ctranslate2", "pip install ctranslate2, or 'bort-infer[bench]'")
    import ctranslate2

    encoder = ctranslate2.Encoder(str(artifacts.ctranslate2_int8(model)), device="cpu", compute_type="int8",
                                  intra_threads=threads, inter_threads=1)

    def forward(ids: np.ndarray, mask: np.ndarray):
        lengths = mask.sum(axis=1)
        rows = [row[:n].tolist() for row, n in zip(ids, lengths)]
        return encoder.forward_batch(rows).last_hidden_state
    return forward


def openvino_fp32(model: str, threads: int) -> Forward:
    _require("openvino", "pip install openvino, or 'bort-infer[bench]'")
    import openvino as ov

    compiled = ov.Core().compile_model(str(artifacts.export(model, "plain-fp32") / "model.onnx"), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}

    def forward(ids: np.ndarray, mask: np.ndarray):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return request.infer({n: feeds[n] for n in names})
    return forward


# What each backend needs built (cached by bench.artifacts) before it can load; built in a separate process
# ahead of loading anything, so that building BERT-large artifacts never shares memory with loaded sessions.
BUILDS: dict[str, tuple[tuple[str, ...], Callable[[str], object]]] = {
    # backend: (modules it needs, builder)
    "torch-fp32": (("torch", "transformers"), artifacts.checkpoint),
    "ort-fp32": ((), lambda m: artifacts.export(m, "plain-fp32")),
    "ort-fused-fp32": ((), artifacts.ort_fused_fp32),
    "ort-int8": ((), artifacts.ort_dynamic_int8),
    "bort-infer-fp32": ((), lambda m: artifacts.export(m, "bort-infer-fp32")),
    "bort-infer-int8": ((), lambda m: artifacts.export(m, "bort-infer-int8")),
    "ctranslate2-int8": (("ctranslate2",), artifacts.ctranslate2_int8),
    "openvino-fp32": (("openvino",), lambda m: artifacts.export(m, "plain-fp32")),
}


def build(model: str, backend: str) -> None:
    """Build (or find cached) what `backend` needs for `model`; BackendUnavailable if its library is missing."""
    modules, builder = BUILDS[backend]
    for module in modules:
        _require(module, "pip install 'bort-infer[bench]'")
    builder(model)


BACKENDS: dict[str, Callable[[str, int], Forward]] = {
    "torch-fp32": torch_fp32,
    "ort-fp32": ort_fp32,
    "ort-fused-fp32": ort_fused_fp32,
    "ort-int8": ort_int8,
    "bort-infer-fp32": bort_infer_fp32,
    "bort-infer-int8": bort_infer_int8,
    "ctranslate2-int8": ctranslate2_int8,
    "openvino-fp32": openvino_fp32,
}
