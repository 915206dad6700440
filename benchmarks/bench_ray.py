"""Ray Data vs one plain Session on STS-B sentences (the Scale-out issue): is Ray's overhead <= 15%?

On one machine with C cores (C = 2 here), same model, same sentences, same Session.encode options:
- session-1xC: one process, Session(threads=C).encode(all sentences)      (the single-process path)
- ray-1xC:     embed_dataset with 1 actor x C threads
- ray-Cx1:     embed_dataset with C actors x 1 thread
A Ray run is timed from an in-memory dataset (ray.data.from_items) to every vector back on the driver,
actor start-up (model from the object store, Session creation) included; Ray itself is started and the
model shipped once, before timing, as on a running cluster, and each run starts once the previous run's
actors have given their CPUs back. Target: session time / Ray time >= 1/1.15 for the best actor layout
(overhead <= 15%).

Each Ray call embeds BORT_BENCH_RAY_ROWS_PER_CALL rows (default 1024, embed_dataset's default; the
dataset is cut into equal blocks of at most that many rows, and at least two per actor). Larger calls
have less per-call overhead (and, on a padded graph, less padding: Session.encode sorts a call's rows
by length) but balance worse across actors.

STS-B train has 11,498 sentences (columns 5 and 6 of sts-train.tsv); they are cycled to BORT_BENCH_RAY_SENTENCES
(default 20000). The model is BORT_BENCH_RAY_MODEL (default bort) exported as BORT_BENCH_RAY_VARIANT (default
bort-infer-fp32, what `bort-infer export` writes: custom ops, packed graph; also bort-infer-int8 or plain-fp32),
cached under ~/.cache/bort-infer. C is BORT_BENCH_THREADS (default 2, as in the other suites).

    python -m benchmarks.bench_ray [--model bort] [--variant bort-infer-fp32] [--sentences 20000] [--repeat 3]
    pytest benchmarks/bench_ray.py            # the same three, as pytest-benchmark entries with the target

The machine may be shared: rounds are interleaved (session, ray-1xC, ray-Cx1, session, ...) so that
background load spreads over all three, and medians are reported.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

try:
    from .conftest import register_target
except ImportError:  # run as a plain script
    def register_target(*_args, **_kwargs):
        return None

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb" / "sts-train.tsv"
N = int(os.environ.get("BORT_BENCH_RAY_SENTENCES", "20000"))
MODEL = os.environ.get("BORT_BENCH_RAY_MODEL", "bort")
VARIANT = os.environ.get("BORT_BENCH_RAY_VARIANT", "bort-infer-fp32")
CORES = int(os.environ.get("BORT_BENCH_THREADS", "2"))
BATCH_SIZE = 32
ROWS_PER_CALL = int(os.environ.get("BORT_BENCH_RAY_ROWS_PER_CALL", "1024"))
TARGET = 1 / 1.15
GROUP = f"ray vs session {MODEL} {VARIANT}"
SESSION, RAY_ONE, RAY_MANY = f"session-1x{CORES}", f"ray-1x{CORES}", f"ray-{CORES}x1"
register_target(GROUP, RAY_ONE, SESSION, TARGET)
register_target(GROUP, RAY_MANY, SESSION, TARGET)


def load_sentences(n: int = N) -> list[str]:
    out: list[str] = []
    for line in STSB.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            out += [cols[5], cols[6]]
    if not out:
        raise FileNotFoundError(f"no sentences in {STSB}")
    return [out[i % len(out)] for i in range(n)]


def model_dir(model: str = MODEL, variant: str = VARIANT) -> Path:
    from bort_infer.bench import artifacts

    return artifacts.export(model, variant)


def start_ray(num_cpus: int = CORES):
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "BORT_INFER_PROGRESS": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


class Runner:
    """The three ways to embed the same sentences; each call returns the vectors in input order."""

    def __init__(self, model: Path, sentences: list[str], cores: int = CORES):
        from bort_infer import Session
        from bort_infer.integrations.ray import ship_model

        self.sentences, self.cores = sentences, cores
        self.session = Session(model, threads=cores)
        self.ray = start_ray(cores)
        self.shipped = ship_model(model)
        self.rows = [{"id": i, "text": t} for i, t in enumerate(sentences)]

    def session_run(self) -> np.ndarray:
        return self.session.encode(self.sentences, batch_size=BATCH_SIZE)

    def wait_for_free_cpus(self, timeout: float = 60.0) -> None:
        """Actors of a finished dataset release their CPUs asynchronously: wait (untimed) so that a run does
        not time the previous run's teardown."""
        deadline = time.monotonic() + timeout
        while self.ray.available_resources().get("CPU", 0) < self.ray.cluster_resources().get("CPU", 0):
            if time.monotonic() > deadline:
                raise RuntimeError("Ray CPUs still held by a previous run's actors")
            gc.collect()
            time.sleep(0.1)

    def ray_run(self, actors: int, threads: int) -> np.ndarray:
        import pyarrow as pa

        from bort_infer.integrations.ray import embed_dataset, embeddings_to_numpy

        # equal blocks of at most ROWS_PER_CALL rows, one actor call each, and at least two per actor
        blocks = min(max(math.ceil(len(self.rows) / ROWS_PER_CALL), 2 * actors), len(self.rows))
        ds = self.ray.data.from_items(self.rows, override_num_blocks=blocks)
        out = embed_dataset(ds, self.shipped, num_actors=actors, threads_per_actor=threads, reserve_cpus=0,
                            batch_size=BATCH_SIZE, rows_per_call=math.ceil(len(self.rows) / blocks))
        table = pa.concat_tables(self.ray.get(list(out.to_arrow_refs())))
        vectors = np.empty((len(self.rows), self.session.hidden_size), dtype=np.float32)
        vectors[table["id"].to_numpy()] = embeddings_to_numpy(table["embedding"])
        return vectors

    def by_name(self, name: str):
        if name == SESSION:
            return self.session_run
        if name == RAY_ONE:
            return lambda: self.ray_run(1, self.cores)
        return lambda: self.ray_run(self.cores, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--variant", default=VARIANT, choices=["bort-infer-fp32", "bort-infer-int8", "plain-fp32"])
    parser.add_argument("--sentences", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("BORT_INFER_PROGRESS", "0")
    sentences = load_sentences(args.sentences)
    model = model_dir(args.model, args.variant)
    runner = Runner(model, sentences)
    names = [SESSION, RAY_ONE, RAY_MANY]
    print(f"{len(sentences)} STS-B sentences, {args.model} {args.variant} ({model}), {CORES} cores, "
          f"batch_size {BATCH_SIZE}, {ROWS_PER_CALL} rows per Ray call; load average {os.getloadavg()[0]:.2f}")
    reference = runner.session_run()  # warm-up, and the vectors every run must reproduce
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeat):
        for name in names:
            runner.wait_for_free_cpus()
            t0 = time.perf_counter()
            vectors = runner.by_name(name)()
            times[name].append(time.perf_counter() - t0)
            cos = ((vectors * reference).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)))
            assert cos.min() >= 0.99999, f"{name}: vectors differ from the single-process ones (min cos {cos.min()})"
            print(f"  round {r + 1} {name:<14} {times[name][-1]:7.2f}s  {len(sentences) / times[name][-1]:7.1f} "
                  f"sentences/s  (load {os.getloadavg()[0]:.2f})", flush=True)
    base = statistics.median(times[SESSION])
    results = {}
    print(f"\n{'layout':<14} {'median s':>9} {'min s':>8} {'sent/s (median)':>16} {'vs session':>11}")
    for name in names:
        med = statistics.median(times[name])
        results[name] = {"median_s": med, "min_s": min(times[name]), "times_s": times[name],
                         "sentences_per_s": len(sentences) / med, "overhead_vs_session": med / base - 1}
        print(f"{name:<14} {med:9.2f} {min(times[name]):8.2f} {len(sentences) / med:16.1f} "
              f"{(med / base - 1) * 100:+10.1f}%")
    best = min((n for n in names if n != SESSION), key=lambda n: results[n]["median_s"])
    overhead = results[best]["overhead_vs_session"]
    verdict = "meets" if overhead <= 0.15 else "MISSES"
    print(f"\nbest Ray layout {best}: overhead {overhead * 100:+.1f}% vs the single-process Session "
          f"(target <= 15%: {verdict}); medians of {args.repeat} interleaved rounds on a shared machine")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "variant": args.variant, "cores": CORES,
                                               "sentences": len(sentences), "results": results}, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def runner():
        pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
        if not STSB.is_file():
            pytest.skip(f"STS-B not found at {STSB}")
        r = Runner(model_dir(), load_sentences())
        r.session_run()  # warm-up
        yield r
        r.ray.shutdown()

    @pytest.mark.parametrize("layout", [SESSION, RAY_ONE, RAY_MANY])
    def test_ray_overhead(benchmark, runner, layout):
        benchmark.group = GROUP
        benchmark.extra_info["backend"] = layout
        benchmark.pedantic(runner.by_name(layout), setup=runner.wait_for_free_cpus, rounds=3, iterations=1)
        benchmark.extra_info["sentences_per_s"] = len(runner.sentences) / benchmark.stats.stats.median


if __name__ == "__main__":
    raise SystemExit(main())
