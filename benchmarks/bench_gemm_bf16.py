"""bf16 speed (issue 11, bf16 part), every figure from one interleaved run (bort_infer.bench.runner):

1. Kernel: the LinearBf16 op vs onnxruntime's fp32 MatMul (MLAS), one-node graphs with the weight as an
   initializer and the same session options, at Bort's K x N (1024x3072 QKV, 1024x1024 attention output,
   1024x768 FFN input, 768x1024 FFN output) and M (tokens) in {1, 8, 128, 1024}: GFLOPS of each, the ratio;
   both called as the model runs them (benchmarks/bound_calls.py: aligned rows, output into a bound buffer).
2. Whole model: Bort exported with --precision bf16 vs bort-infer fp32 vs OpenVINO at its default inference
   precision (what its CPU plugin picks: bf16 on CPUs with AVX512-BF16 or AMX) and forced to f32, b1 s128
   and b8 s128 (the packed graph, every token's state).

With --cold the kernel calls of each backend go round 8 copies of each GEMM (its own weights, input rows and output)
in sessions that do not spin, so that every call finds its operands outside the cores' L2, as a linear inside a
model does once the other ops have run; without it one GEMM is called over and over, its operands warm in L2.

With --cpu-time every backend runs on one thread and each call is timed by the process's CPU time, interleaved
the same way: on a shared machine those figures hardly move with the other load (wall-clock ones do), at
the price of measuring one thread only.

Target (issue 11, CPUs with AMX only): Bort bf16 >= 1.5x OpenVINO at its default precision. On other CPUs the
ratio is reported, not judged.

Run: python -m benchmarks.bench_gemm_bf16 [--threads 2] [--model bort] [--skip-kernel] [--skip-model] [--cold]
     [--json out.json];  pytest benchmarks/bench_gemm_bf16.py --benchmark-group-by=group (pytest-benchmark form).
Exports are built once under BORT_INFER_CACHE (see bort_infer.bench.artifacts).
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import pytest

from .bound_calls import COLD_COPIES, COLD_HELP, aligned_array, bound_run, no_spinning, round_robin
from .conftest import THREADS, register_target

os.environ.setdefault("BORT_INFER_PROGRESS", "0")

KERNEL_SHAPES = [(1024, 3072), (1024, 1024), (1024, 768), (768, 1024)]  # (K, N)
KERNEL_ROWS = [1, 8, 128, 1024]
MODEL_SHAPES = [(1, 128), (8, 128)]
MODEL_BACKENDS = ["bort-infer-bf16", "bort-infer-fp32", "openvino", "openvino-fp32"]
AMX_TARGET = 1.5  # bort-infer-bf16 vs openvino (default precision), CPUs with AMX


def _c():
    from bort_infer import _C

    return _C


def cpu_description() -> dict:
    """The CPU's name and the kernel levels and bf16 path this build runs on it."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    C = _c()
    return {"cpu": name, "cores": os.cpu_count(), "isa_levels": C.supported_isas(), "bf16_path": C.bf16_path(),
            "amx_bf16": C.has_amx_bf16()}


# ---------------------------------------------------------------------------------------------- kernel

def _one_node_session(node, inputs, initializers, threads: int, spinning: bool = True):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([node], node.op_type, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                            None)], initializers)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(node.domain, 1)] if node.domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        no_spinning(options)
    options.register_custom_ops_library(_c().__file__)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernel_sessions(weight: np.ndarray, threads: int, spinning: bool = True) -> dict:
    """{"linear-bf16": session, "mlas-fp32": session}, each computing x [M, K] @ weight [K, N]."""
    from onnx import TensorProto, helper, numpy_helper

    from bort_infer.export.graph_rewrite import DOMAIN, to_bf16_bits

    k, n = weight.shape
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])]
    bits = to_bf16_bits(weight)
    w_bf16 = helper.make_tensor("w", TensorProto.BFLOAT16, bits.shape, bits.tobytes(), raw=True)
    return {
        "linear-bf16": _one_node_session(helper.make_node("LinearBf16", ["x", "w"], ["y"], domain=DOMAIN), x,
                                         [w_bf16], threads, spinning),
        "mlas-fp32": _one_node_session(helper.make_node("MatMul", ["x", "w"], ["y"]), x,
                                       [numpy_helper.from_array(weight, "w")], threads, spinning),
    }


def run_kernels(threads: int, repeats: int = 30, budget_s: float = 6.0, cpu_time: bool = False,
                cold: bool = False) -> list[dict]:
    from bort_infer.bench.runner import measure_interleaved

    rng = np.random.default_rng(0)
    rows = []
    copies = COLD_COPIES if cold else 1
    for k, n in KERNEL_SHAPES:
        sessions = [kernel_sessions(rng.standard_normal((k, n)).astype(np.float32), 1 if cpu_time else threads,
                                    spinning=not cold) for _ in range(copies)]
        runs = {}
        for m in KERNEL_ROWS:
            xs = [aligned_array(rng.standard_normal((m, k)).astype(np.float32)) for _ in range(copies)]
            for name in sessions[0]:
                calls = [bound_run(own[name], {"x": x}, (m, n), np.float32) for own, x in zip(sessions, xs)]
                runs[(f"M{m}", name)] = round_robin(calls)
        # One interleaved measurement per weight shape: both backends and every M take turns.
        cells = measure_cpu_time(runs, repeats) if cpu_time else measure_interleaved(runs, 0, 0, repeats,
                                                                                     budget_s=budget_s)
        for cell in cells:
            m = int(cell.model[1:])
            rows.append({"k": k, "n": n, "m": m, "backend": cell.backend, "median_ms": cell.median_ms,
                         "iqr_ms": cell.iqr_ms, "gflops": 2 * m * k * n / (cell.median_ms * 1e-3) / 1e9})
    return rows


def print_kernels(rows: list[dict]) -> None:
    print(f"{'K x N':>11} {'M':>5} {'LinearBf16':>12} {'MLAS fp32':>12} {'ratio':>7}   (GFLOPS, medians)")
    by = {(r["k"], r["n"], r["m"], r["backend"]): r for r in rows}
    for k, n in KERNEL_SHAPES:
        for m in KERNEL_ROWS:
            ours, peer = by[(k, n, m, "linear-bf16")], by[(k, n, m, "mlas-fp32")]
            print(f"{k:>5} x {n:<5} {m:>5} {ours['gflops']:>12.1f} {peer['gflops']:>12.1f} "
                  f"{peer['median_ms'] / ours['median_ms']:>6.2f}x")


# ---------------------------------------------------------------------------------------------- model

def model_forwards(model: str, threads: int) -> tuple[dict, dict]:
    """(name → forward(ids, mask), name → precision it runs at) for MODEL_BACKENDS."""
    from bort_infer import Session
    from bort_infer.bench import artifacts, backends

    forwards, precision = {}, {}
    for name in MODEL_BACKENDS:
        if name.startswith("bort-infer"):
            session = Session(artifacts.ensure(model, name), threads=threads)
            forwards[name], precision[name] = session.forward, session.metadata.precision
        else:
            loaded = backends.load(name, model, threads)
            forwards[name], precision[name] = loaded.run, loaded.precision
    return forwards, precision


def measure_cpu_time(runs: dict, repeats: int) -> list:
    """measure_interleaved's rounds (a warm-up call each, then rotated turns of one call), timed by the
    process's CPU time: for one-thread backends, the work of the call whatever else the machine runs."""
    import time

    from bort_infer.bench.runner import Cell, rotated

    keys = list(runs)
    cells = {key: Cell(key[0], key[1], 0, 0) for key in keys}
    for key in keys:
        runs[key]()
    for r in range(repeats):
        for key in rotated(keys, r):
            t0 = time.process_time()
            runs[key]()
            ms = (time.process_time() - t0) * 1e3
            cells[key].times_ms.append(ms)
            cells[key].round_ms.append(ms)
    return [cells[key] for key in keys]


def run_model(model: str, threads: int, repeats: int = 40, budget_s: float = 60.0,
              cpu_time: bool = False) -> tuple[list[dict], dict]:
    from bort_infer.bench.runner import exact_length_inputs, measure_interleaved
    from bort_infer.registry import model_spec

    forwards, precision = model_forwards(model, 1 if cpu_time else threads)
    rows = []
    for batch, seq in MODEL_SHAPES:
        ids, mask = exact_length_inputs(batch, seq, model_spec(model)["hf_config"]["vocab_size"])
        runs = {(model, name): (lambda f=f, ids=ids, mask=mask: f(ids, mask)) for name, f in forwards.items()}
        cells = (measure_cpu_time(runs, max(5, repeats // (4 * batch))) if cpu_time
                 else measure_interleaved(runs, batch, seq, repeats, budget_s=budget_s))
        for cell in cells:
            rows.append({"batch": batch, "seq": seq, "backend": cell.backend, "precision": precision[cell.backend],
                         "median_ms": cell.median_ms, "iqr_ms": cell.iqr_ms, "rounds": len(cell.round_ms)})
    return rows, precision


def print_model(rows: list[dict], model: str) -> None:
    print(f"{model}: median ms (IQR), and each backend's time / bort-infer-bf16's")
    for batch, seq in MODEL_SHAPES:
        cells = {r["backend"]: r for r in rows if (r["batch"], r["seq"]) == (batch, seq)}
        ours = cells["bort-infer-bf16"]["median_ms"]
        for name, r in cells.items():
            print(f"  b{batch} s{seq}  {name:<17} {r['precision']:<10} {r['median_ms']:8.2f} ({r['iqr_ms']:.2f})  "
                  f"{r['median_ms'] / ours:5.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--model", default=os.environ.get("BORT_BENCH_MODEL", "bort"))
    parser.add_argument("--skip-kernel", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread per backend, each call timed by the process's CPU time")
    parser.add_argument("--cold", action="store_true", help=COLD_HELP)
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args(argv)
    threads = 1 if args.cpu_time else args.threads
    result = {"machine": cpu_description(), "threads": threads, "clock": "cpu" if args.cpu_time else "wall",
              "kernel_operands": "cold" if args.cold else "warm",
              "load_average": os.getloadavg()}
    print(json.dumps(result["machine"]), f"threads {threads}, {result['clock']} clock, load {result['load_average']}")
    if not args.skip_kernel:
        result["kernel"] = run_kernels(threads, cpu_time=args.cpu_time, cold=args.cold)
        print_kernels(result["kernel"])
    if not args.skip_model:
        result["model"], _ = run_model(args.model, threads, cpu_time=args.cpu_time)
        print_model(result["model"], args.model)
        if result["machine"]["amx_bf16"]:
            for batch, seq in MODEL_SHAPES:
                cells = {r["backend"]: r["median_ms"] for r in result["model"]
                         if (r["batch"], r["seq"]) == (batch, seq)}
                ratio = cells["openvino"] / cells["bort-infer-bf16"]
                verdict = "meets" if ratio >= AMX_TARGET else "MISSES"
                print(f"target b{batch} s{seq}: bf16 vs OpenVINO default {ratio:.2f}x (>= {AMX_TARGET}x: {verdict})")
    result["load_average_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


# ---------------------------------------------------------------------------------------------- pytest form

MODEL = os.environ.get("BORT_BENCH_MODEL", "bort")
for _b, _s in MODEL_SHAPES:
    if os.environ.get("BORT_BENCH_AMX_TARGET", "auto") != "off":
        try:
            if _c().has_amx_bf16():
                register_target(f"{MODEL} b{_b} s{_s} bf16", "bort-infer-bf16", "openvino", AMX_TARGET)
        except ImportError:
            pass

_kernel_sessions: dict = {}
_model: dict = {}


@pytest.mark.parametrize("backend", ["linear-bf16", "mlas-fp32"])
@pytest.mark.parametrize("m", KERNEL_ROWS)
@pytest.mark.parametrize("k, n", KERNEL_SHAPES)
def test_kernel(benchmark, threads, backend, m, k, n):
    if (k, n) not in _kernel_sessions:
        weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
        _kernel_sessions[(k, n)] = kernel_sessions(weight, threads)
    x = aligned_array(np.random.default_rng(1).standard_normal((m, k)).astype(np.float32))
    call = bound_run(_kernel_sessions[(k, n)][backend], {"x": x}, (m, n), np.float32)
    benchmark.group = f"gemm K{k} N{n} M{m}"
    benchmark.extra_info["backend"] = backend
    benchmark.pedantic(call, rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
@pytest.mark.parametrize("batch, seq", MODEL_SHAPES)
def test_model(benchmark, threads, backend, batch, seq):
    from bort_infer.bench.runner import exact_length_inputs
    from bort_infer.registry import model_spec

    if not _model:
        try:
            _model.update(model_forwards(MODEL, threads)[0])
        except Exception as exc:  # the suite reports what it could measure
            pytest.skip(f"whole-model backends unavailable: {exc}")
    ids, mask = exact_length_inputs(batch, seq, model_spec(MODEL)["hf_config"]["vocab_size"])
    benchmark.group = f"{MODEL} b{batch} s{seq} bf16"
    benchmark.extra_info["backend"] = backend
    benchmark.pedantic(_model[backend], args=(ids, mask), rounds=20, warmup_rounds=2)


if __name__ == "__main__":
    raise SystemExit(main())
