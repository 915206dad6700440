"""PackedAttention alone at Bort's shapes (hidden 1024, 8 heads x 128): precision="fp32" vs "bf16" (bf16 operands
of Q K^T and P V, fp32 accumulation and softmax) vs "int8" (Q K^T on int8 operands, P V as bf16; csrc/attention.h),
one-node onnxruntime graphs, interleaved rounds, medians. The ratio fp32 / bf16 is what the bf16 products are worth
on this CPU, bf16 / int8 what int8 Q K^T adds (on a CPU without AVX512-BF16 all three run the fp32 path and both
are ~1.0).

Run: python -m benchmarks.bench_attention [--threads 2] [--cpu-time] [--rounds 15] [--json out.json]
--cpu-time: one thread, the calling thread's CPU time (the steady figure on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

HIDDEN, HEADS = 1024, 8
SHAPES = [(1, 128), (8, 128), (1, 512), (8, 512)]
PRECISIONS = ("fp32", "bf16", "int8")
THREADS = int(os.environ.get("BORT_BENCH_THREADS", "2"))
POOL_SPIN_SECONDS = 0.1  # > how long an idle onnxruntime pool worker spins before it sleeps


def attention_session(tokens: int, threads: int, precision: str):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from bort_infer import custom_op_library

    node = helper.make_node("PackedAttention", ["qkv", "bias", "cu_seqlens"], ["out"], domain="ai.bort_infer",
                            num_heads=HEADS, precision=precision)
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [tokens, 3 * HIDDEN]),
              helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3 * HIDDEN]),
              helper.make_tensor_value_info("cu_seqlens", TensorProto.INT64, [None])]
    graph = helper.make_graph([node], "attention", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                          None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.bort_infer", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.register_custom_ops_library(custom_op_library())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def measure(batch: int, seq: int, threads: int, rounds: int, cpu_time: bool) -> dict:
    rng = np.random.default_rng(batch * seq)
    tokens = batch * seq
    feeds = {"qkv": rng.standard_normal((tokens, 3 * HIDDEN)).astype(np.float32),
             "bias": rng.standard_normal(3 * HIDDEN).astype(np.float32),
             "cu_seqlens": np.arange(0, tokens + 1, seq, dtype=np.int64)}
    sessions = {p: attention_session(tokens, 1 if cpu_time else threads, p) for p in PRECISIONS}
    clock = time.thread_time if cpu_time else time.perf_counter
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for sess in sessions.values():
        sess.run(None, feeds)
    for r in range(rounds):
        for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            time.sleep(POOL_SPIN_SECONDS)  # the other session's pool workers stop spinning
            sessions[p].run(None, feeds)
            for _ in range(5):
                t0 = clock()
                sessions[p].run(None, feeds)
                times[p].append((clock() - t0) * 1e3)
    row = {"batch": batch, "seq": seq, "threads": 1 if cpu_time else threads,
           "clock": "thread CPU" if cpu_time else "wall"}
    for p in PRECISIONS:
        row[f"{p}_ms"] = round(float(np.median(times[p])), 3)
    row["fp32_over_bf16"] = round(row["fp32_ms"] / row["bf16_ms"], 3)
    row["bf16_over_int8"] = round(row["bf16_ms"] / row["int8_ms"], 3)
    return row


def main(argv: list[str] | None = None) -> int:
    from bort_infer import _C

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of 5 calls each (default 15)")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, thread CPU time")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    print(f"kernel level: {_C.active_isa()}")
    rows = []
    for batch, seq in SHAPES:
        row = measure(batch, seq, args.threads, args.rounds, args.cpu_time)
        rows.append(row)
        print(f"b{batch} s{seq} ({row['threads']} thread(s), {row['clock']}): fp32 {row['fp32_ms']:8.3f} ms  "
              f"bf16 {row['bf16_ms']:8.3f} ms  int8 {row['int8_ms']:8.3f} ms  fp32/bf16 {row['fp32_over_bf16']:.2f}x  "
              f"bf16/int8 {row['bf16_over_int8']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"isa": _C.active_isa(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
