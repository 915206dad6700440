"""Whole-model speed at fixed shapes: bort-infer vs onnxruntime on the same Bort checkpoint, same run.

Targets (ratios, peer median / ours):
- fp32, our kernels vs onnxruntime's own fused fp32 graph: >= 1.10x at b1 s128 and b8 s128 (kernels issue)
- int8, ours vs onnxruntime's plain dynamic int8: >= 1.2x at b1 s128 and b8 s128 (int8 issue);
  >= 1.25x b1 s128, b8 s128; >= 1.3x b1 s32; >= 1.4x b1 s128 with CLS pooling (encode issue)
Run: pytest benchmarks/bench_e2e.py --benchmark-group-by=group (BORT_BENCH_MODEL=tiny-bort for a smoke run)
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from bort_infer.bench import backends
from bort_infer.bench.runner import exact_length_inputs
from bort_infer.registry import model_spec

from .conftest import register_target

MODEL = os.environ.get("BORT_BENCH_MODEL", "bort")
SHAPES = [(1, 128), (8, 128), (1, 32)]
for b, s in SHAPES:
    group = f"{MODEL} b{b} s{s}"
    register_target(group, "bort-infer-fp32", "ort-fused-fp32", 1.10 if s == 128 else 1.0)
    register_target(group, "bort-infer-int8", "ort-int8", 1.3 if s == 32 else 1.25)
register_target(f"{MODEL} b1 s128 cls", "bort-infer-int8", "ort-int8", 1.4)

_loaded: dict[str, object] = {}


def forward_of(name: str, threads: int):
    if name not in _loaded:
        try:
            _loaded[name] = backends.load(name, MODEL, threads)
        except Exception as exc:  # the suite reports what it could measure
            pytest.skip(f"{name} unavailable: {exc}")
    return _loaded[name]


@pytest.mark.parametrize("backend", ["ort-fused-fp32", "bort-infer-fp32", "ort-int8", "bort-infer-int8"])
@pytest.mark.parametrize("batch, seq", SHAPES)
def test_fixed_shape(benchmark, threads, backend, batch, seq):
    fwd = forward_of(backend, threads)
    ids, mask = exact_length_inputs(batch, seq, model_spec(MODEL)["hf_config"]["vocab_size"])
    benchmark.group = f"{MODEL} b{batch} s{seq}"
    benchmark.extra_info["backend"] = backend
    benchmark.pedantic(fwd, args=(ids, mask), rounds=20 if seq <= 128 else 5, warmup_rounds=2)


@pytest.mark.parametrize("backend", ["ort-int8", "bort-infer-int8"])
def test_cls_pooling(benchmark, threads, backend):
    """A CLS embedding: the peer runs the whole model and takes row 0; ours skips the last layer's other rows."""
    ids, mask = exact_length_inputs(1, 128, model_spec(MODEL)["hf_config"]["vocab_size"])
    if backend == "bort-infer-int8":
        from bort_infer import Session
        from bort_infer.bench import artifacts

        sess = Session(artifacts.export(MODEL, "bort-infer-int8"), threads=threads)
        run = lambda: sess.embed_tokens(ids, mask, pooling="cls")  # noqa: E731
    else:
        fwd = forward_of(backend, threads)
        run = lambda: np.asarray(fwd(ids, mask)[0])[:, 0]  # noqa: E731
    benchmark.group = f"{MODEL} b1 s128 cls"
    benchmark.extra_info["backend"] = backend
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
