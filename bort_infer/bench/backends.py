"""The runtimes bort-bench compares. Each backend names the artifacts it needs (built and cached by
bench.artifacts), the precision it claims, and how to load it for (model, threads): a Loaded whose `run`
is the timed forward pass and whose `states` gives the same pass as numpy token states for the fidelity
check. A backend whose library is missing raises BackendUnavailable naming what to install."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import artifacts

Forward = Callable[[np.ndarray, np.ndarray], object]
States = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Precisions a backend can declare. "default": whatever the runtime picks on this CPU (read back at load).
PRECISIONS = ("fp32", "int8", "bf16", "default")


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed (or cannot run here); the bench skips it with this note."""


@dataclass
class Loaded:
    """A backend loaded for one model. `run(ids, mask)` is one timed forward pass (output left in the
    runtime's own form); `states(ids, mask)` is the same pass as float32 [batch, seq, hidden]; `precision`
    is what actually runs (OpenVINO's default resolves to bf16 or f32 here)."""

    run: Forward
    states: States
    precision: str

    def __call__(self, ids: np.ndarray, mask: np.ndarray):
        return self.run(ids, mask)


@dataclass(frozen=True)
class Backend:
    name: str
    precision: str  # one of PRECISIONS
    modules: tuple[str, ...]  # Python modules it needs beyond the run time's
    artifacts: tuple[str, ...]  # names in artifacts.ARTIFACTS, built before anything is loaded
    load: Callable[[str, int], Loaded]
    # What it holds once loaded and run at the grid's largest shape (b8 s512: weights in its own form plus
    # its arena), as a multiple of the model's fp32 weight bytes, on top of suite.BASE_BYTES: what a measuring
    # group reserves for it per model. Measured (see MEASURED_PEAK_GIB below).
    memory: float = 2.0

    @property
    def reduced_precision(self) -> bool:
        """Does it trade accuracy for speed (int8, bf16, or a runtime's own choice)? Such backends get
        their fidelity against fp32 printed beside their speed."""
        return self.precision != "fp32"


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"{module} is not installed (pip install 'bort-infer[export,bench]')")


def _torch_fp32(model: str, threads: int) -> Loaded:
    """transformers BertModel under torch.inference_mode, its default attention implementation."""
    import torch

    from ..export.hf import load_encoder

    torch.set_num_threads(threads)
    net = load_encoder(artifacts.path(model, "checkpoint"))

    def run(ids: np.ndarray, mask: np.ndarray):
        with torch.inference_mode():
            return net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    return Loaded(run, lambda ids, mask: run(ids, mask).numpy(), "fp32")


def _ort(onnx_path, threads: int, precision: str) -> Loaded:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(ids: np.ndarray, mask: np.ndarray):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return sess.run(None, {n: feeds[n] for n in names})
    return Loaded(run, lambda ids, mask: run(ids, mask)[0], precision)


def _ort_fp32(model: str, threads: int) -> Loaded:
    """A plain torch.onnx export run by onnxruntime with its default optimizations: what its users get."""
    return _ort(artifacts.path(model, "plain-fp32") / "model.onnx", threads, "fp32")


def _ort_fused_fp32(model: str, threads: int) -> Loaded:
    """onnxruntime's transformers optimizer applied to the plain export (fused contrib ops)."""
    return _ort(artifacts.path(model, "ort-fused-fp32") / "model.onnx", threads, "fp32")


def _ort_int8(model: str, threads: int) -> Loaded:
    """The plain export through onnxruntime.quantization.quantize_dynamic with its documented defaults."""
    return _ort(artifacts.path(model, "ort-int8") / "model.onnx", threads, "int8")


def _session(model: str, variant: str, threads: int, precision: str) -> Loaded:
    from ..session import Session

    sess = Session(artifacts.path(model, variant), threads=threads)
    return Loaded(sess.forward, sess.forward, precision)


def _ctranslate2_int8(model: str, threads: int) -> Loaded:
    import ctranslate2

    encoder = ctranslate2.Encoder(str(artifacts.path(model, "ctranslate2-int8")), device="cpu", compute_type="int8",
                                  intra_threads=threads, inter_threads=1)

    def run(ids: np.ndarray, mask: np.ndarray):
        lengths = mask.sum(axis=1)
        rows = [row[:n].tolist() for row, n in zip(ids, lengths)]
        return encoder.forward_batch(rows).last_hidden_state
    return Loaded(run, lambda ids, mask: np.array(run(ids, mask), dtype=np.float32), "int8")


def _openvino(path, threads: int, precision_hint: str | None, weights: str) -> Loaded:
    """OpenVINO's CPU plugin, LATENCY hint. precision_hint None leaves the inference precision to the
    plugin (bf16 on CPUs with AVX512-BF16 or AMX, else f32); the precision it chose is read back."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision_hint is not None:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
    chosen = chosen.get_type_name() if hasattr(chosen, "get_type_name") else str(chosen)
    request = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}
    output = compiled.output(0)

    def run(ids: np.ndarray, mask: np.ndarray):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return request.infer({n: feeds[n] for n in names})

    # int8 weights run their GEMMs in int8; everything else at the chosen precision.
    used = chosen if weights == "fp32" else f"{weights} (rest {chosen})"
    return Loaded(run, lambda ids, mask: np.array(run(ids, mask)[output], dtype=np.float32), used)


def _openvino_default(model: str, threads: int) -> Loaded:
    return _openvino(artifacts.path(model, "plain-fp32") / "model.onnx", threads, None, "fp32")


def _openvino_fp32(model: str, threads: int) -> Loaded:
    return _openvino(artifacts.path(model, "plain-fp32") / "model.onnx", threads, "f32", "fp32")


def _openvino_int8(model: str, threads: int) -> Loaded:
    return _openvino(artifacts.path(model, "openvino-int8") / "model.xml", threads, None, "int8")


# Each backend alone in its own measuring process with Bort and BERT-large loaded, after its fidelity check and
# one warm-up and one timed call at b8 s512: the process's peak resident set (bort-bench's run.resources), GiB,
# 6 Dec 2026, AMD EPYC Zen 4, 2 threads, load 4-7. A backend's `memory` is (peak - 0.32 GiB, what such a process
# holds with every backend's library imported and nothing loaded) over Bort's plus BERT-large's fp32 weight bytes
# (1.52 GiB together), rounded up to 0.05; a group reserves suite.BASE_BYTES (0.47 GiB) once on top.
MEASURED_PEAK_GIB = {"torch-fp32": 2.36, "ort-fp32": 3.32, "ort-fused-fp32": 3.04, "openvino-fp32": 3.27,
                     "bort-infer-fp32": 2.90, "openvino": 3.28, "ort-int8": 1.23, "ctranslate2-int8": 0.83,
                     "openvino-int8": 1.63, "bort-infer-int8": 1.25, "bort-infer-bf16": 2.00}

_EXPORT = ("torch", "transformers")
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch-fp32", "fp32", _EXPORT, ("checkpoint",), _torch_fp32, memory=1.35),
    Backend("ort-fp32", "fp32", (), ("plain-fp32",), _ort_fp32, memory=2),
    Backend("ort-fused-fp32", "fp32", (), ("ort-fused-fp32",), _ort_fused_fp32, memory=1.8),
    Backend("openvino-fp32", "fp32", ("openvino",), ("plain-fp32",), _openvino_fp32, memory=1.95),
    Backend("bort-infer-fp32", "fp32", (), ("bort-infer-fp32",),
            lambda m, t: _session(m, "bort-infer-fp32", t, "fp32"), memory=1.7),
    Backend("openvino", "default", ("openvino",), ("plain-fp32",), _openvino_default, memory=1.95),
    Backend("ort-int8", "int8", (), ("ort-int8",), _ort_int8, memory=0.6),
    Backend("ctranslate2-int8", "int8", ("ctranslate2",), ("ctranslate2-int8",), _ctranslate2_int8,
            memory=0.35),
    Backend("openvino-int8", "int8", ("openvino", "nncf"), ("openvino-int8",), _openvino_int8, memory=0.9),
    Backend("bort-infer-int8", "int8", (), ("bort-infer-int8",),
            lambda m, t: _session(m, "bort-infer-int8", t, "int8"), memory=0.65),
    # `export --precision bf16`: bf16 GEMMs (AVX512-BF16 or AMX where the CPU has them, exact emulation on
    # AVX2), the rest fp32; the peer it answers is OpenVINO's default precision (bf16 on such CPUs).
    Backend("bort-infer-bf16", "bf16", (), ("bort-infer-bf16",),
            lambda m, t: _session(m, "bort-infer-bf16", t, "bf16"), memory=1.15),
)}


def check_available(name: str, to_build: bool = False) -> None:
    """BackendUnavailable if a module backend `name` needs is missing (building needs the export stack too)."""
    for module in (*(_EXPORT if to_build else ()), *BACKENDS[name].modules):
        _require(module)


def load(name: str, model: str, threads: int) -> Loaded:
    """Backend `name` loaded for `model`, its artifacts built in this process first unless cached (for the
    pytest-benchmark suites; bort-bench builds them in child processes, see bench.suite)."""
    check_available(name, to_build=True)
    for artifact in BACKENDS[name].artifacts:
        artifacts.ensure(model, artifact)
    return BACKENDS[name].load(model, threads)
