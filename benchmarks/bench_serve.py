"""bort-infer serve under load (issue 15), loopback only, every request loop bounded in count and time:

- throughput: 32 concurrent clients, each request 1-8 STS-B sentences (OpenAI /v1/embeddings, base64 as the
  openai client asks by default) → sentences/s vs offline Session.encode of the same texts (target >= 0.9x)
  and vs Infinity (`infinity_emb v2`, its optimum/ONNX int8 engine or torch, on the same checkpoint; target
  ours >= 2x), interleaved rounds in one run;
- latency: one client, one sentence per request: p50 (target <= 1.3x a direct Session.encode call) and p99;
- overload: an open-loop request stream at 4x the measured capacity: every answer must be 200 or 429, every
  accepted request answered, and the server's peak RSS is reported.

The clients are a lean asyncio HTTP/1.1 client (keep-alive connections, no JSON parsing on the hot path) in
this process; the servers are subprocesses. All share the machine's cores: the figures are the whole
system's. Run:

    python -m benchmarks.bench_serve --model DIR --checkpoint HF_DIR [--infinity-bin PATH] [--json OUT]

--model is a bort-infer model directory (default: bort-bench's Bort int8 export, built once under
~/.cache/bort-infer); --checkpoint is the Hugging Face checkpoint Infinity serves (default: bort-bench's
random-init Bort). `--model tiny` runs a smoke test on tiny-bort (numbers meaningless). `--only latency` runs
the latency part alone (minutes, not the whole run: the figure that moves most with the machine's load).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb"
HOST = "127.0.0.1"
QUEUE_SECONDS = 2.0  # the overload server's --max-queue, in seconds of the measured throughput


def load_sentences() -> list[str]:
    out = []
    for split in ("train", "dev"):
        path = STSB / f"sts-{split}.tsv"
        if not path.is_file():
            raise SystemExit(f"STS-B not found at {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            if len(cols) >= 7:
                out += [cols[5], cols[6]]
    return out


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = re.search(r"model name\s*:\s*(.*)", text)
    flags = set((re.search(r"flags\s*:\s*(.*)", text) or ["", ""])[1].split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name.group(1).strip() if name else 'unknown'} ({os.cpu_count()} cores; {' '.join(isa)})"


# ---------------------------------------------------------------------------------------------------- client


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a prepared body, read status and body (Content-Length)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                          b"\r\n%s" % (path.encode(), HOST.encode(), len(body), body))
        return await asyncio.wait_for(self._response(), timeout)

    async def _response(self) -> tuple[int, bytes]:
        status = int((await self.reader.readline()).split()[1])
        length, close = None, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise RuntimeError("response without Content-Length")
        body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Target:
    """A server under test: where it listens, how to ask it, its process (for RSS)."""

    name: str
    port: int
    model: str
    proc: subprocess.Popen | None = None
    path: str = "/v1/embeddings"

    def body(self, texts: list[str]) -> bytes:
        return json.dumps({"model": self.model, "input": texts, "encoding_format": "base64"}).encode()


def decode(body: bytes) -> np.ndarray:
    data = json.loads(body)["data"]
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


@dataclass
class LoadResult:
    seconds: float
    sentences: int
    requests: int
    statuses: dict = field(default_factory=dict)
    errors: int = 0
    bodies: list = field(default_factory=list)  # (request index, body) of 200 answers, when kept

    @property
    def sentences_per_second(self) -> float:
        return self.sentences / self.seconds


async def closed_loop(target: Target, requests: list[list[str]], clients: int, deadline_s: float,
                      keep_bodies: bool) -> LoadResult:
    """``clients`` connections, each sending its next request when the last is answered, until every
    request was sent once or the deadline passed."""
    bodies = [target.body(r) for r in requests]
    next_index = 0
    result = LoadResult(0.0, 0, 0)
    stop_at = time.perf_counter() + deadline_s

    async def client():
        nonlocal next_index
        conn = Connection(target.port)
        try:
            while next_index < len(bodies) and time.perf_counter() < stop_at:
                i = next_index
                next_index += 1
                try:
                    status, body = await conn.post(target.path, bodies[i])
                except (OSError, asyncio.TimeoutError, RuntimeError, asyncio.IncompleteReadError):
                    result.errors += 1
                    conn.close()
                    continue
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.sentences += len(requests[i])
                    result.requests += 1
                    if keep_bodies:
                        result.bodies.append((i, body))
        finally:
            conn.close()
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - began
    return result


async def sequential_latencies(target: Target, texts: list[str]) -> list[float]:
    conn = Connection(target.port)
    out = []
    try:
        for t in texts:
            body = target.body([t])
            began = time.perf_counter()
            status, _ = await conn.post(target.path, body)
            out.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"{target.name}: status {status} in the latency loop")
    finally:
        conn.close()
    return out


async def open_loop(target: Target, requests: list[list[str]], rate: float, max_connections: int = 1024) -> dict:
    """Send requests[i] at start + i / rate whatever the answers (a fresh connection when none is idle, up to
    max_connections); count every answer by status."""
    bodies = [target.body(r) for r in requests]
    idle: list[Connection] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    statuses: dict[int, int] = {}
    errors: list[str] = []
    latencies: list[float] = []

    async def one(i: int) -> None:
        nonlocal opened
        async with slots:
            if idle:
                conn = idle.pop()
            else:
                conn = Connection(target.port)
                opened += 1
            began = time.perf_counter()
            try:
                status, body = await conn.post(target.path, bodies[i])
            except (OSError, asyncio.TimeoutError, RuntimeError, asyncio.IncompleteReadError) as exc:
                errors.append(type(exc).__name__)
                conn.close()
                return
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - began)
                if body.count(b'"index"') != len(requests[i]):
                    errors.append("wrong row count")
            idle.append(conn)
    tasks = []
    began = time.perf_counter()
    for i in range(len(bodies)):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    sent_seconds = time.perf_counter() - began
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return {"sent": len(bodies), "offered_requests_per_second": len(bodies) / sent_seconds,
            "seconds": time.perf_counter() - began, "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "errors": len(errors), "error_kinds": sorted(set(errors)), "connections": opened,
            "accepted_p50_s": float(np.median(latencies)) if latencies else None,
            "accepted_p99_s": float(np.percentile(latencies, 99)) if latencies else None}


def run(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# --------------------------------------------------------------------------------------------------- servers


def _wait_ready(port: int, path: str, proc: subprocess.Popen, seconds: float) -> None:
    import http.client

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer on port {port} within {seconds:.0f} s")


def start_ours(model: Path, threads: int, name: str, *options: str) -> Target:
    proc = subprocess.Popen([sys.executable, "-m", "bort_infer.cli.main", "serve", str(model), "--port", "0",
                             "--threads", str(threads), "--model-name", name, *options], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"on http://[\d.]+:(\d+) ", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"bort-infer serve did not start: {line!r}")
    target = Target("bort-infer serve", int(match.group(1)), name, proc)
    _wait_ready(target.port, "/health", proc, 60)
    return target


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def prepare_infinity_onnx(checkpoint: Path, out: Path) -> Path:
    """The checkpoint as Infinity's optimum engine reads it on a CPU: its files, the plain ONNX graph
    (bort-infer's plain export: optimum's own exporter feeds token type 1, out of Bort's range) and
    onnxruntime's dynamic int8 quantization of it (``model_quantized.onnx``, which the engine prefers on a
    CPU and then optimizes with onnxruntime's transformer fusions), made once."""
    if (out / "model_quantized.onnx").is_file():
        return out
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoModel

    from bort_infer.export.onnx_export import export_plain_onnx

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    export_plain_onnx(model, tmp / "model.onnx")
    ORTQuantizer.from_pretrained(tmp, file_name="model.onnx").quantize(
        AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True), save_dir=tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def start_infinity(binary: str, model_dir: Path, engine: str, threads: int, name: str) -> Target:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), INFINITY_ANONYMOUS_USAGE_STATS="0", HF_HUB_OFFLINE="1")
    # --model-id "." from inside the directory: Infinity 0.0.78 hands optimum 2.x the ONNX file's absolute path
    # where optimum wants a name relative to the model directory ("Could not find any ONNX files").
    proc = subprocess.Popen([binary, "v2", "--model-id", ".", "--served-model-name", name, "--engine",
                             engine, "--device", "cpu", "--host", HOST, "--port", str(port), "--batch-size", "32"],
                            cwd=model_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = Target(f"infinity ({engine})", port, name, proc, path="/embeddings")
    try:
        _wait_ready(port, "/models", proc, 600)
    except RuntimeError as exc:
        stop(target)
        tail = (proc.stderr.read() or "")[-1500:] if proc.stderr else ""
        raise RuntimeError(f"{exc}: {tail}") from None
    return target


def stop(target: Target | None) -> int | None:
    if target is None or target.proc is None:
        return None
    if target.proc.poll() is None:
        target.proc.send_signal(signal.SIGTERM)
        try:
            return target.proc.wait(60)
        except subprocess.TimeoutExpired:
            target.proc.kill()
            target.proc.wait()
    return target.proc.returncode


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------------- phases


def offline_seconds(session, texts: list[str]) -> float:
    began = time.perf_counter()
    session.encode(texts)
    return time.perf_counter() - began


def check_rows(result: LoadResult, requests: list[list[str]], reference: dict[str, np.ndarray]) -> float:
    """Minimum cosine between the served rows and the offline vectors of the same texts."""
    worst = 1.0
    for i, body in result.bodies:
        got = decode(body)
        want = np.stack([reference[t] for t in requests[i]])
        if got.shape != want.shape:
            return float("nan")
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        worst = min(worst, float(cos.min()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bort-infer model directory (default: bort-bench's Bort int8; "
                                                        "'tiny': a smoke run on tiny-bort)")
    parser.add_argument("--checkpoint", default=None, help="HF checkpoint for Infinity (default: bort-bench's Bort)")
    parser.add_argument("--infinity-bin", default=shutil.which("infinity_emb"),
                        help="the infinity_emb executable (default: on PATH); none: Infinity is skipped")
    parser.add_argument("--infinity-engine", default="optimum", choices=["optimum", "torch"])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BORT_BENCH_THREADS", "2")))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=600, help="requests per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--only", default="all", choices=["all", "latency"],
                        help="latency: the one-client latency part alone (no throughput rounds, no overload)")
    args = parser.parse_args(argv)
    os.environ.setdefault("BORT_INFER_PROGRESS", "0")

    from bort_infer import Session

    if args.model == "tiny" or args.model is None:
        from bort_infer.bench.artifacts import checkpoint, export

        name = "tiny-bort" if args.model == "tiny" else "bort"
        model = export(name, "bort-infer-int8")
        ckpt = Path(args.checkpoint) if args.checkpoint else checkpoint(name)
    else:
        model = Path(args.model)
        ckpt = Path(args.checkpoint) if args.checkpoint else None
    rng = random.Random(args.seed)
    sentences = load_sentences()
    rng.shuffle(sentences)
    rounds_requests = [[[rng.choice(sentences) for _ in range(rng.randint(1, 8))] for _ in range(args.requests)]
                       for _ in range(args.rounds)]
    report: dict = {"cpu": cpu_name(), "threads": args.threads, "clients": args.clients, "model": str(model),
                    "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg_at_start": os.getloadavg()}
    print(f"CPU: {report['cpu']}; threads {args.threads}; load average at start {report['load_avg_at_start']}")

    session = Session(model, threads=args.threads)
    ours = start_ours(model, args.threads, "bort")
    infinity, infinity_error = None, None
    if args.infinity_bin and ckpt is not None:
        try:
            inf_dir = ckpt if args.infinity_engine == "torch" else prepare_infinity_onnx(
                ckpt, ckpt.with_name(ckpt.name + "-infinity-onnx"))
            infinity = start_infinity(args.infinity_bin, inf_dir, args.infinity_engine, args.threads, "bort")
        except Exception as exc:  # reported in the table, the rest of the benchmark still runs
            infinity_error = f"{type(exc).__name__}: {exc}"[:2000]
    else:
        infinity_error = "infinity_emb not found (pip install 'infinity-emb[server,optimum]')" if ckpt else \
            "no checkpoint given"
    report["infinity"] = {"engine": args.infinity_engine, "error": infinity_error}
    try:
        # Warm-up: every path once, so first-call costs are not timed.
        session.encode(rounds_requests[0][0])
        for t in (ours, infinity):
            if t is not None:
                run(closed_loop(t, rounds_requests[0][:64], args.clients, 60, False))

        if args.only == "all":
            rows = []
            for r, requests in enumerate(rounds_requests):
                texts = [t for req in requests for t in req]
                reference = dict(zip(texts, session.encode(texts)))
                order = [("offline", None), ("ours", ours), ("infinity", infinity)]
                order = order[r % 3:] + order[:r % 3]
                row = {"round": r, "sentences": len(texts)}
                for name, target in order:
                    if name == "offline":
                        row["offline_sps"] = len(texts) / offline_seconds(session, texts)
                    elif target is not None:
                        res = run(closed_loop(target, requests, args.clients, 300, keep_bodies=name == "ours"))
                        row[f"{name}_sps"] = res.sentences_per_second
                        row[f"{name}_statuses"] = {str(k): v for k, v in res.statuses.items()}
                        row[f"{name}_errors"] = res.errors
                        row[f"{name}_answered"] = res.sentences == len(texts)
                        if name == "ours":
                            row["ours_requests_per_second"] = res.requests / res.seconds
                            row["ours_min_cosine_vs_offline"] = check_rows(res, requests, reference)
                rows.append(row)
                print(json.dumps(row))
            report["throughput_rounds"] = rows
            med = {k: float(np.median([row[k] for row in rows])) for k in rows[0] if k.endswith("_sps")}
            report["throughput_median_sps"] = med
            report["ours_vs_offline"] = med["ours_sps"] / med["offline_sps"]
            if "infinity_sps" in med:
                report["ours_vs_infinity"] = med["ours_sps"] / med["infinity_sps"]

        # Latency: one client, one sentence per request, interleaved blocks against a direct call.
        lat_texts = [rng.choice(sentences) for _ in range(args.latency_requests)]
        served, direct, inf_lat = [], [], []
        for block in range(0, len(lat_texts), 50):
            part = lat_texts[block:block + 50]
            served += run(sequential_latencies(ours, part))
            for t in part:
                began = time.perf_counter()
                session.encode([t])
                direct.append(time.perf_counter() - began)
            if infinity is not None:
                inf_lat += run(sequential_latencies(infinity, part))
        report["latency_ms"] = {
            "ours_p50": 1e3 * float(np.median(served)), "ours_p99": 1e3 * float(np.percentile(served, 99)),
            "direct_encode_p50": 1e3 * float(np.median(direct)),
            "direct_encode_p99": 1e3 * float(np.percentile(direct, 99)),
        }
        if inf_lat:
            report["latency_ms"]["infinity_p50"] = 1e3 * float(np.median(inf_lat))
            report["latency_ms"]["infinity_p99"] = 1e3 * float(np.percentile(inf_lat, 99))
        report["ours_p50_vs_direct"] = report["latency_ms"]["ours_p50"] / report["latency_ms"]["direct_encode_p50"]
        print(json.dumps(report["latency_ms"]))

        if args.only == "all":
            # Overload: 4x the measured request capacity, open loop, bounded count, on a fresh server whose queue
            # holds about QUEUE_SECONDS of the measured throughput (as an operator sizes --max-queue).
            capacity = float(np.median([row["ours_requests_per_second"] for row in rows]))
            rate = 4 * capacity
            max_queue = max(64, int(QUEUE_SECONDS * med["ours_sps"]))
            report["ours_exit_code_after_sigterm"] = stop(ours)
            ours = start_ours(model, args.threads, "bort", "--max-queue", str(max_queue), "--max-input-texts", "8")
            pool = [req for requests in rounds_requests for req in requests]
            over_requests = [pool[i % len(pool)] for i in range(int(rate * args.overload_seconds))]
            rss_before = rss_mb(ours.proc.pid)
            peak = [rss_before]

            async def overload_with_rss():
                async def sample():
                    while True:
                        peak.append(rss_mb(ours.proc.pid))
                        await asyncio.sleep(0.05)
                sampler = asyncio.ensure_future(sample())
                try:
                    return await open_loop(ours, over_requests, rate)
                finally:
                    sampler.cancel()
            over = run(overload_with_rss())
            over.update({"capacity_requests_per_second": capacity, "target_rate": rate, "max_queue_texts": max_queue,
                         "rss_mb_before": rss_before, "rss_mb_peak_during": max(peak),
                         "rss_mb_process_peak": rss_mb(ours.proc.pid, "VmHWM")})
            over["only_200_and_429"] = set(over["statuses"]) <= {"200", "429"} and over["errors"] == 0
            report["overload"] = over
            print(json.dumps(over))
    finally:
        code = stop(ours)
        report.setdefault("ours_exit_code_after_sigterm", code)
        report["overload_server_exit_code_after_sigterm"] = code
        stop(infinity)
    report["load_avg_at_end"] = os.getloadavg()
    if args.only == "latency":
        _print_latency(report)
    else:
        _print_summary(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _print_summary(r: dict) -> None:
    med = r["throughput_median_sps"]
    print(f"\nbort-infer serve benchmark — {r['cpu']}, {r['threads']} threads per server, {r['clients']} clients; "
          "clients and servers share the machine")
    print(f"throughput (median of {len(r['throughput_rounds'])} interleaved rounds, sentences/s): offline encode "
          f"{med['offline_sps']:.0f}, served {med['ours_sps']:.0f} → {r['ours_vs_offline']:.2f}x (target >= 0.9x)")
    if "ours_vs_infinity" in r:
        print(f"  Infinity ({r['infinity']['engine']}): {med['infinity_sps']:.0f} → ours {r['ours_vs_infinity']:.2f}x "
              "(target >= 2x)")
    else:
        print(f"  Infinity not measured: {r['infinity']['error']}")
    _print_latency(r)
    o = r["overload"]
    print(f"overload: offered {o['offered_requests_per_second']:.0f} req/s (4x capacity "
          f"{o['capacity_requests_per_second']:.0f}; --max-queue {o['max_queue_texts']}); "
          f"statuses {o['statuses']}, errors {o['errors']}; peak RSS "
          f"{o['rss_mb_peak_during']:.0f} MB (before {o['rss_mb_before']:.0f}); only 200/429: {o['only_200_and_429']}")
    worst = min(x["ours_min_cosine_vs_offline"] for x in r["throughput_rounds"])
    print(f"served rows vs offline: min cosine {worst:.6f}; exit code after SIGTERM: "
          f"{r['ours_exit_code_after_sigterm']}")


def _print_latency(r: dict) -> None:
    lat = r["latency_ms"]
    print(f"latency, one sentence ({r['cpu']}, {r['threads']} threads): served p50 {lat['ours_p50']:.2f} ms, p99 "
          f"{lat['ours_p99']:.2f} ms; direct encode p50 {lat['direct_encode_p50']:.2f} ms, p99 "
          f"{lat['direct_encode_p99']:.2f} ms → {r['ours_p50_vs_direct']:.2f}x (target <= 1.3x)"
          + (f"; Infinity p50 {lat['infinity_p50']:.2f} ms" if "infinity_p50" in lat else ""))


if __name__ == "__main__":
    sys.exit(main())
