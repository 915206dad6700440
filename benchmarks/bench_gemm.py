"""int8 GEMM: bort-infer's own (LinearInt8) vs onnxruntime's MLAS (MatMulInteger), kernel and whole model.

Kernel (`python -m benchmarks.bench_gemm kernel [--cold]`): one-node onnxruntime graphs at Bort's linears, K x N of
1024 x 1024 (attention output), 1024 x 3072 (QKV), 1024 x 768 (FFN in), 768 x 1024 (FFN out), for M (rows =
tokens) of 1, 8, 128 and 1024:
- mlas: MatMulInteger, u8 rows x int8 weights (initializer) → int32, what the MLAS-path graph runs;
- ours: LinearInt8 from the same u8 rows (with their scales and zero points) → float32: our GEMM plus the
  dequantize epilogue, i.e. more work than MatMulInteger's.
Both run as the model runs them (benchmarks/bound_calls.py: aligned rows, output into a bound buffer; at
M = 1024 the output copy of a plain `run` took ~0.2 ms of a ~1.2 ms call on an Intel Xeon with AMX).
Printed per shape: median µs of each, GOPS (2·M·K·N / time), ops per cycle per thread when the clock is
given (--ghz; AVX-512 VNNI peak: 128 int8 ops per cycle per core on AMD Zen 4, 256 on Sapphire Rapids) and
the ratio mlas / ours. With --cold each backend's calls go round 8 copies of each GEMM (own weights, rows and
output) in sessions that do not spin, so that every call finds its operands outside the cores' L2, as a linear
inside a model does; without it one GEMM is called over and over, its operands warm in L2.

Model (`python -m benchmarks.bench_gemm model`): Bort b1 s128 and b8 s128, interleaved rounds
(bort_infer.bench.runner) of bort-infer int8 with --gemm ours, the same export with --gemm mlas,
onnxruntime's dynamic int8 (quantize_dynamic on the plain export) and, when openvino and nncf are
installed, OpenVINO int8 from NNCF's post-training quantization (transformer preset) of the plain export, as
bort-bench builds it.
Targets (peer median / ours, same run; TARGETS): with AMX >= 3x onnxruntime int8 and >= 2x OpenVINO int8; with
AVX-512 VNNI and no AMX >= 1.3x and >= 1.1x; AVX2 only: >= 1.2x onnxruntime int8. `--json FILE` keeps every
figure. `--cpu-time`: one thread per backend timed by its thread's CPU time, the steady figure on a shared machine
(OpenVINO's pass runs on the calling thread too).

Every session has BORT_BENCH_THREADS (default 2) intra-op threads. The machine is often shared: read the
ratios, not the absolute times, and say which CPU gave them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from .bound_calls import COLD_COPIES, COLD_HELP, aligned_array, bound_run, no_spinning, round_robin

THREADS = int(os.environ.get("BORT_BENCH_THREADS", "2"))
DOMAIN = "ai.bort_infer"
KERNEL_SHAPES = [(1024, 1024), (1024, 3072), (1024, 768), (768, 1024)]
KERNEL_ROWS = [1, 8, 128, 1024]
MODEL_SHAPES = [(1, 128), (8, 128)]
# Issue 11's whole-model targets (peer median / ours) by the CPU's int8 GEMM path.
TARGETS = {"amx": {"ort-int8": 3.0, "openvino-int8": 2.0},
           "avx512_vnni": {"ort-int8": 1.3, "openvino-int8": 1.1},
           "avx2": {"ort-int8": 1.2}}


def cpu_description() -> str:
    from bort_infer import _C

    name = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1)
    except (OSError, AttributeError):
        pass
    return f"{name}; kernel levels {', '.join(_C.supported_isas())}; int8 GEMM path {_C.int8_gemm_path()}"


# ---------------------------------------------------------------------------------------------- kernel

def _session(model, threads: int, spinning: bool = True):
    import onnxruntime as ort

    from bort_infer import custom_op_library

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        no_spinning(options)
    options.register_custom_ops_library(custom_op_library())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernel_weights(k: int, n: int, rng, weights: str = "full") -> np.ndarray:
    """A K x N int8 weight: uniform over [-127, 127] (full), or a Gaussian quantized by the export's pair-safe
    scaling (pair-safe: no two weights k = 2j, 2j + 1 of one sign past 128 together; bort_infer.export.quantize)."""
    if weights == "full":
        return rng.integers(-127, 128, (k, n), dtype=np.int8)
    from bort_infer.export.quantize import quantize_columns

    return quantize_columns(rng.standard_normal((k, n), dtype=np.float32), weights).weight


def kernel_sessions(k: int, n: int, threads: int, seed: int = 0, spinning: bool = True, weights: str = "full"):
    """(mlas, ours) one-node sessions for a K x N int8 weight (kernel_weights)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = kernel_weights(k, n, rng, weights)
    scale = np.full(n, 0.01, np.float32)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]

    def model(nodes, inputs, output, output_type, inits):
        graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, output_type, None)],
                                  [numpy_helper.from_array(v, name) for name, v in inits.items()])
        return helper.make_model(graph, opset_imports=opsets)

    rows = helper.make_tensor_value_info("xq", TensorProto.UINT8, ["m", k])
    mlas = model([helper.make_node("MatMulInteger", ["xq", "w"], ["acc"])], [rows], "acc", TensorProto.INT32,
                 {"w": weight})
    ours = model([helper.make_node("LinearInt8", ["", "xq", "xs", "xz", "w", "ws"], ["y"], domain=DOMAIN)],
                 [rows, helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["m"]),
                  helper.make_tensor_value_info("xz", TensorProto.UINT8, ["m"])], "y", TensorProto.FLOAT,
                 {"w": weight, "ws": scale})
    return _session(mlas, threads, spinning), _session(ours, threads, spinning)


def time_calls(fn, seconds: float, max_calls: int = 200) -> list[float]:
    """Call fn repeatedly for about `seconds` (at least 3 calls); each call's wall time in seconds."""
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_kernels(rounds: int, threads: int, ghz: float | None, rows=KERNEL_ROWS, shapes=KERNEL_SHAPES,
                cold: bool = False, weights: str = "full") -> list[dict]:
    results = []
    copies = COLD_COPIES if cold else 1
    for k, n in shapes:
        sessions = [kernel_sessions(k, n, threads, seed, spinning=not cold, weights=weights) for seed in range(copies)]
        for m in rows:
            rng = np.random.default_rng(m)
            mlas_calls, our_calls = [], []
            for mlas, ours in sessions:
                xq = aligned_array(rng.integers(0, 256, (m, k), dtype=np.uint8))
                mlas_calls.append(bound_run(mlas, {"xq": xq}, (m, n), np.int32))
                our_calls.append(bound_run(ours, {"xq": xq, "xs": np.full(m, 0.02, np.float32),
                                                  "xz": rng.integers(0, 256, m, dtype=np.uint8)}, (m, n), np.float32))
            calls = {"mlas": round_robin(mlas_calls), "ours": round_robin(our_calls)}
            times = {name: [] for name in calls}
            for call in calls.values():  # warm up (every copy); the weights are packed at session creation
                for _ in range(copies):
                    call()
            for r in range(rounds):
                for name in (("mlas", "ours") if r % 2 == 0 else ("ours", "mlas")):
                    time.sleep(0.03)  # the other session's pool threads stop spinning
                    calls[name]()
                    times[name] += time_calls(calls[name], 0.05)
            ops = 2.0 * m * k * n
            row = {"m": m, "k": k, "n": n, "threads": threads, "operands": "cold" if cold else "warm",
                   "weights": weights}
            for name, t in times.items():
                med = float(np.median(t))
                row[f"{name}_us"] = round(med * 1e6, 2)
                row[f"{name}_gops"] = round(ops / med / 1e9, 1)
                if ghz:
                    row[f"{name}_ops_per_cycle_per_thread"] = round(ops / med / (ghz * 1e9) / threads, 1)
            row["ratio"] = round(row["mlas_us"] / row["ours_us"], 3)
            results.append(row)
            print_kernel_row(row, ghz)
    return results


def print_kernel_row(row: dict, ghz: float | None) -> None:
    per_cycle = ""
    if ghz:
        per_cycle = (f" | ops/cycle/thread ours {row['ours_ops_per_cycle_per_thread']:6.1f} "
                     f"mlas {row['mlas_ops_per_cycle_per_thread']:6.1f}")
    print(f"M={row['m']:5d} K={row['k']:5d} N={row['n']:5d}: ours {row['ours_us']:9.1f} us "
          f"{row['ours_gops']:7.1f} GOPS | mlas {row['mlas_us']:9.1f} us {row['mlas_gops']:7.1f} GOPS"
          f"{per_cycle} | mlas/ours {row['ratio']:.2f}x", flush=True)


# ---------------------------------------------------------------------------------------------- model

def model_backends(model: str, threads: int, with_openvino: bool) -> dict:
    """name → forward(ids, mask): our int8 export on each GEMM, and the int8 peers of bort-bench."""
    from bort_infer import Session
    from bort_infer.bench import artifacts, backends

    def session(variant: str):
        return Session(artifacts.ensure(model, variant), threads=threads).forward

    runs = {"bort-infer-int8 (ours)": session("bort-infer-int8-ours"),
            "bort-infer-int8 (mlas)": session("bort-infer-int8-mlas"),
            "ort-int8": backends.load("ort-int8", model, threads).run}
    if with_openvino:
        try:
            runs["openvino-int8"] = backends.load("openvino-int8", model, threads).run
        except backends.BackendUnavailable as exc:
            print(f"openvino-int8 skipped: {exc}", file=sys.stderr)
    return runs


def cpu_time_interleaved(runs: dict, batch: int, seq: int, repeats: int) -> list:
    """One-thread CPU time of each forward (the calling thread's, which runs the whole pass when every backend
    has one thread), interleaved rounds: what a pass costs, whatever else the machine runs meanwhile."""
    from bort_infer.bench.runner import Cell

    cells = {key: Cell(key[0], key[1], batch, seq) for key in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.thread_time()
            fn()
            cells[key].times_ms.append((time.thread_time() - t0) * 1e3)
    return list(cells.values())


def run_model(model: str, rounds: int, threads: int, with_openvino: bool, cpu_time: bool = False) -> list[dict]:
    from bort_infer import _C
    from bort_infer.bench.runner import exact_length_inputs, measure_interleaved
    from bort_infer.registry import model_spec

    targets = TARGETS.get(_C.int8_gemm_path(), {})
    forwards = model_backends(model, 1 if cpu_time else threads, with_openvino)
    vocab = model_spec(model)["hf_config"]["vocab_size"]
    results = []
    for batch, seq in MODEL_SHAPES:
        ids, mask = exact_length_inputs(batch, seq, vocab)
        runs = {(model, name): (lambda f=f, ids=ids, mask=mask: f(ids, mask)) for name, f in forwards.items()}
        measure = cpu_time_interleaved if cpu_time else measure_interleaved
        cells = {c.backend: c for c in measure(runs, batch, seq, repeats=rounds)}
        ours = cells["bort-infer-int8 (ours)"].median_ms
        for name, cell in cells.items():
            row = {**cell.to_json(), "threads": 1 if cpu_time else threads,
                   "clock": "thread CPU" if cpu_time else "wall", "peer_over_ours": round(cell.median_ms / ours, 3)}
            results.append(row)
            target = targets.get(name)
            verdict = ""
            if target is not None:
                verdict = f" (target {target:.2f}x: {'meets' if row['peer_over_ours'] >= target else 'MISSES'})"
            print(f"{model} b{batch} s{seq} {name:24s} median {cell.median_ms:8.2f} ms  iqr {cell.iqr_ms:6.2f}  "
                  f"{row['peer_over_ours']:.2f}x of ours{verdict}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    from bort_infer.model_dir import INT8_WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["kernel", "model", "all"])
    parser.add_argument("--model", default=os.environ.get("BORT_BENCH_MODEL", "bort"))
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--ghz", type=float, default=None, help="core clock, to print int8 ops per cycle")
    parser.add_argument("--rows", type=int, nargs="*", default=KERNEL_ROWS, help="kernel M values")
    parser.add_argument("--no-openvino", action="store_true", help="leave OpenVINO int8 out of the model run")
    parser.add_argument("--cpu-time", action="store_true",
                        help="model run: one thread per backend, timed by the thread's CPU time (steady on a busy "
                             "machine; wall-clock ratios at 2 threads are the targets' figures)")
    parser.add_argument("--cold", action="store_true", help=COLD_HELP)
    parser.add_argument("--weights", choices=INT8_WEIGHTS, default="full",
                        help="kernel weights: uniform int8 (full) or as a pair-safe int8 export scales them (on "
                             "AVX2-only CPUs our GEMM then takes vpmaddubsw, and MLAS cannot saturate)")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("BORT_INFER_PROGRESS", "0")
    report = {"cpu": cpu_description(), "threads": args.threads, "ghz": args.ghz}
    print(f"CPU: {report['cpu']}; {args.threads} threads", flush=True)
    if args.what in ("kernel", "all"):
        report["kernel"] = run_kernels(args.rounds, args.threads, args.ghz, rows=args.rows, cold=args.cold,
                                       weights=args.weights)
    if args.what in ("model", "all"):
        report["model"] = run_model(args.model, args.rounds, args.threads, not args.no_openvino, args.cpu_time)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
