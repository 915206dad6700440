"""Runs fuzzed one-node ai.bort_infer graphs in a worker process, so that a crash is a finding, not the end of pytest.

A graph is described by a JSON spec (built by tests/fuzz/graphs.py):
    {"op": "PackedAttention",
     "inputs": [["qkv", {"shape": [5, 96], "dtype": "float32", "fill": "normal", "seed": 3}], ["bias", null], ...],
     "attrs": {"num_heads": 2, "scale": {"tensor": [1]}},
     "outputs": ["out"], "threads": 1, "isa": "auto"}
An input is null (absent: "" in the node), or a shape, a dtype and either "values" or a "fill" ("normal",
"hostile": inf / nan / huge / subnormal floats, "ints": small integers, "bytes": every 8-bit value), and
"constant": true for an initializer.
judge(spec) builds the graph, runs it and holds the outcome against tests/fuzz/contracts.py: a graph breaking the
contract must fail with an onnxruntime error naming the op; any other graph must give the reference result.

Worker protocol (`python -m tests.fuzz.runner`): one JSON spec per stdin line, one JSON verdict per stdout line
({"ok": bool, "detail": str}). `python -m tests.fuzz.runner --one SPEC_JSON` judges one spec and prints the
verdict (the reproducer a failing fuzz run prints).
"""
from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "ai.bort_infer"
TOL = 1e-4  # on max|out - ref| / max(1, max|ref|); the kernel tests hold 1e-5 on their own inputs
OUTPUT_TYPES = {  # each op's declared output element types (ONNX TensorProto numbers)
    "FusedAttention": [1], "PackedAttention": [1], "BiasGelu": [1], "SkipLayerNorm": [1], "EmbedLayerNormInt8": [1],
    "EmbedLayerNormBf16": [1],
    "QuantizeRows": [2, 1, 2], "DequantizeRows": [1, 2, 1, 2], "LinearBf16": [1], "LinearInt8": [1, 2, 1, 2],
}
# numpy has no bfloat16: such tensors are their bit patterns under this dtype (fed to onnxruntime as BFLOAT16).
BF16 = np.dtype([("bfloat16", "<u2")])
TENSOR_TYPE_BFLOAT16, TENSOR_TYPE_STRING = 16, 8


def numpy_dtype(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(object) if name == "str" else np.dtype(name)


def bf16_of(values: np.ndarray) -> np.ndarray:
    from ..test_gemm_bf16 import bf16_bits

    return bf16_bits(values.astype(np.float32)).view(BF16)
PROTOCOL_PREFIX = "FUZZ-VERDICT "


# ----------------------------------------------------------------------------------------------
# Inside the worker

class HugeEmpty:
    """An empty tensor claiming dimensions numpy cannot represent (2**62 x 0): the graph makes it with
    ConstantOfShape; the contract sees its shape and dtype."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), numpy_dtype(dtype)
        self.ndim, self.size = len(self.shape), 0

    def __len__(self):
        return self.shape[0]


def numpy_can_hold(shape) -> bool:
    nonzero = 1
    for d in shape:
        nonzero *= d or 1
    return 8 * nonzero < 2**63


def materialize(desc: dict | None) -> np.ndarray | HugeEmpty | None:
    """The numpy array an input description stands for (deterministic in its seed)."""
    if desc is None:
        return None
    shape, dtype = tuple(desc["shape"]), desc["dtype"]
    if not numpy_can_hold(shape):
        return HugeEmpty(shape, dtype)
    if dtype == "str":
        return np.full(shape, "x", dtype=object)
    if "values" in desc:
        values = np.array(desc["values"], dtype=np.float64 if dtype.startswith("float") else np.int64)
        if dtype == "bfloat16":
            return bf16_of(values).reshape(shape)
        with np.errstate(over="ignore", invalid="ignore"):
            return values.astype(dtype).reshape(shape)
    rng = np.random.default_rng(desc.get("seed", 0))
    size = int(np.prod(shape, dtype=np.int64))
    fill = desc.get("fill", "normal")
    if fill == "hostile":
        pool = np.array([np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-40, -0.0, 0.0, 1.0, -1.0, 65504.0])
        values = np.where(rng.random(size) < 0.5, rng.choice(pool, size), rng.standard_normal(size) * 1e4)
    elif fill == "ints":
        values = rng.integers(-3, 8, size)
    elif fill == "bytes":  # every int8 or uint8 value (the cast wraps)
        values = rng.integers(0, 256, size)
    elif fill == "positive":
        values = rng.uniform(1e-3, 1e-1, size)
    else:
        values = rng.standard_normal(size)
    if dtype == "bool":
        return np.asarray(values.reshape(shape) > 0)  # a comparison of a 0-d array is a numpy scalar, not an array
    if dtype == "bfloat16":
        with np.errstate(over="ignore", invalid="ignore"):
            return bf16_of(values).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype).reshape(shape)


def attribute_value(value):
    from onnx import numpy_helper

    if isinstance(value, dict):
        return numpy_helper.from_array(np.array(value["tensor"], np.int64), "t")
    return value


def build_model(spec: dict, arrays: dict) -> bytes:
    from onnx import helper

    names = [name if arrays[name] is not None else "" for name, _ in spec["inputs"]]
    if spec.get("trim"):
        while names and not names[-1]:
            names.pop()
    constant = {name for name, desc in spec["inputs"] if desc is not None and desc.get("constant")}
    graph_inputs, nodes, initializers = [], [], []
    for name in names:
        if not name:
            continue
        a = arrays[name]
        elem = tensor_type(a.dtype)
        if name in constant and isinstance(a, np.ndarray):  # an initializer: the op sees a constant input
            raw = a.tobytes() if a.dtype.kind != "O" else None
            initializers.append(helper.make_tensor(name, elem, a.shape, raw, raw=True) if raw is not None else
                                helper.make_tensor(name, elem, a.shape, [v.encode() for v in a.flat]))
        elif isinstance(a, HugeEmpty):
            initializers.append(helper.make_tensor(f"{name}.shape", 7, [a.ndim], list(a.shape)))
            value = helper.make_tensor("value", elem, [1], [0])
            nodes.append(helper.make_node("ConstantOfShape", [f"{name}.shape"], [name], value=value))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, elem, [None] * a.ndim))
    outputs = spec["outputs"]
    declared = OUTPUT_TYPES[spec["op"]]
    attrs = {k: attribute_value(v) for k, v in spec["attrs"].items()}
    try:
        node = helper.make_node(spec["op"], names, outputs, domain=DOMAIN, **attrs)
    except (ValueError, TypeError) as exc:  # an attribute onnx itself cannot express: not the op's business
        raise Unbuildable(f"{type(exc).__name__}: {exc}") from None
    graph_outputs = [helper.make_tensor_value_info(o, declared[i] if i < len(declared) else 1, None)
                     for i, o in enumerate(outputs) if o]
    graph = helper.make_graph([*nodes, node], "fuzz", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    return model.SerializeToString()


def tensor_type(dtype: np.dtype) -> int:
    from onnx import helper

    if dtype == BF16:
        return TENSOR_TYPE_BFLOAT16
    return TENSOR_TYPE_STRING if dtype.kind == "O" else helper.np_dtype_to_tensor_dtype(dtype)


def feed(a: np.ndarray):
    import onnxruntime as ort

    if a.dtype == BF16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), TENSOR_TYPE_BFLOAT16)
    return a


class Unbuildable(Exception):
    pass


_SESSION_OPTIONS = {}


def session_options(threads: int):
    if threads not in _SESSION_OPTIONS:
        import onnxruntime as ort

        from ..test_kernels import OPS_LIBRARY

        so = ort.SessionOptions()
        so.register_custom_ops_library(OPS_LIBRARY)
        so.log_severity_level = 4
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # one node: nothing to optimize
        _SESSION_OPTIONS[threads] = so
    return _SESSION_OPTIONS[threads]


def run_graph(spec: dict, arrays: dict):
    """("result", outputs) or ("error", message); any exception other than onnxruntime's propagates."""
    import onnxruntime as ort

    try:
        model = build_model(spec, arrays)
    except Unbuildable as exc:
        return "unbuildable", str(exc)
    try:
        options = session_options(spec.get("threads", 1))
        sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feeds = {name: a for name, a in arrays.items() if isinstance(a, np.ndarray)}
        feeds = {i.name: feed(feeds[i.name]) for i in sess.get_inputs()}
        return "result", sess.run(None, feeds)
    except ValueError as exc:  # onnxruntime made the outputs, numpy cannot hold an empty one claiming 2**62 rows
        if "array is too big" not in str(exc):
            raise
        return "unrepresentable", str(exc)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        return "error", str(exc)


def compare(outputs: list[str], got: list, expected: list) -> str | None:
    """Why the outputs differ from the expectations, or None. got holds the node's named outputs in order."""
    values = iter(got)
    results = [next(values, None) if name else None for name in outputs]
    results += [None] * (len(expected) - len(results))
    for i, (e, g) in enumerate(zip(expected, results)):
        if e is None:
            continue
        if g is None:
            return f"output {i} is missing"
        if g.shape != tuple(e.shape) or g.dtype != e.dtype:
            return f"output {i} is {g.dtype}{list(g.shape)}, expected {e.dtype}{list(e.shape)}"
        if e.values is None or g.size == 0:
            continue
        if e.how == "exact":
            if not np.array_equal(g, e.values, equal_nan=True):
                return f"output {i} differs from the bit-exact reference"
        elif e.how == "requantized":
            q, scale, zero_point = results[1], results[2], results[3]
            y = results[0]
            if y is not None:
                from ..test_kernels import C

                want = C.quantize_rows(y)
                if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip((q, scale, zero_point), want)):
                    return "the requantized outputs are not QuantizeRows of y"
            else:
                back = (q.astype(np.float64) - zero_point[..., None]) * scale[..., None]
                checked = np.isfinite(e.values)  # eps = 0 on a constant row: 0 / 0
                scale_of_ref = max(1.0, float(np.abs(e.values[checked]).max(initial=0)))
                bound = 0.51 * scale[..., None] + TOL * scale_of_ref + e.allowance
                if (checked & ~(np.abs(back - e.values) <= bound)).any():
                    return "the requantized outputs do not dequantize to the reference"
        else:
            ref = e.values
            checked = np.isfinite(ref)
            err = np.abs(g.astype(np.float64) - ref)
            bound = TOL * max(1.0, float(np.abs(ref[checked]).max(initial=0))) + e.allowance
            bad = checked & ~(err <= bound)
            if bad.any():
                where = tuple(int(v[0]) for v in np.nonzero(bad))
                return f"output {i} differs from the reference at {where}: {g[where]} vs {ref[where]}"
    return None


def use_isa(isa: str):
    """Kernel path for the next run (C.set_isa steers the ops library too); "auto" where the CPU lacks it."""
    from ..test_kernels import C

    try:
        C.set_isa(isa)
    except (ValueError, RuntimeError):
        C.set_isa("auto")


def judge(spec: dict) -> dict:
    from .contracts import Invalid, TooLarge, contract

    op = spec["op"]
    arrays = {name: materialize(desc) for name, desc in spec["inputs"]}
    use_isa(spec.get("isa", "auto"))
    outcome, payload = run_graph(spec, arrays)
    if outcome == "unbuildable":
        return {"ok": True, "detail": payload}
    if outcome == "error" and "ConstantOfShape node" in payload:  # onnxruntime cannot make such an input
        return {"ok": True, "detail": "the input cannot be made"}
    try:
        with np.errstate(all="ignore"):  # references of hostile values divide by zero on purpose
            expected = contract(op, arrays, spec["attrs"], spec["outputs"])
    except TooLarge as why:
        if outcome == "error" and op not in payload:
            return {"ok": False, "detail": f"failed ({why}) with an error that does not name {op}: {payload}"}
        return {"ok": True, "detail": f"too large: {why}"}
    except Invalid as why:
        if outcome in ("result", "unrepresentable"):
            return {"ok": False, "detail": f"accepted a graph breaking the contract ({why}) and returned a result"}
        if op not in payload:
            return {"ok": False, "detail": f"refused ({why}) with an error that does not name {op}: {payload}"}
        return {"ok": True, "detail": f"refused: {why}"}
    if outcome == "error":
        return {"ok": False, "detail": f"refused a valid graph: {payload}"}
    if outcome == "unrepresentable":
        return {"ok": True, "detail": "result (numpy cannot hold it)"}
    problem = compare(spec["outputs"], payload, expected)
    return {"ok": problem is None, "detail": problem or "correct result"}


def serve():
    """The worker loop: a spec per stdin line, a verdict per stdout line."""
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            verdict = judge(json.loads(line))
        except Exception as exc:  # a bug of the harness or the reference, reported as a failure of that spec
            verdict = {"ok": False, "detail": f"harness error: {type(exc).__name__}: {exc}"}
        out.write(PROTOCOL_PREFIX + json.dumps(verdict) + "\n")
        out.flush()


# ----------------------------------------------------------------------------------------------
# In the test process

class WorkerDied(Exception):
    pass


class Worker:
    """A worker subprocess judging specs one after the other; restarted after it dies."""

    def __init__(self, timeout: float = 120.0):
        self.timeout = timeout
        self.proc = None
        self.stderr = None
        self.judged = 0

    def start(self):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.runner"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1)

    def stderr_tail(self, chars: int = 4000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-chars:]

    def judge(self, spec: dict) -> dict:
        """The verdict on spec; raises WorkerDied (with the worker's exit status and stderr) if it dies or hangs."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
            if not ready:
                self.proc.kill()
                self.proc.wait()
                raise WorkerDied(f"no verdict within {self.timeout:.0f} s (hang)\n{self.stderr_tail()}")
            line = self.proc.stdout.readline()
            if not line:
                status = self.proc.wait()
                raise WorkerDied(f"the worker died (exit status {status})\n{self.stderr_tail()}")
            if line.startswith(PROTOCOL_PREFIX):
                self.judged += 1
                return json.loads(line[len(PROTOCOL_PREFIX):])

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.proc = None


def judge_alone(spec: dict, timeout: float = 300.0) -> str:
    """Judges spec in a fresh process: its verdict, or how the process died (to confirm a crash's culprit)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.fuzz.runner", "--one", json.dumps(spec)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no verdict within {timeout:.0f} s (hangs alone too)"
    if proc.returncode != 0:
        return f"exit status {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout.strip()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(judge(json.loads(sys.argv[2]))))
    else:
        serve()
