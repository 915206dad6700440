"""Cold start and memory of the run time, each measured in a fresh process (Bort int8 by default):

- cold start: new process → import bort_infer → Session(int8 Bort) → first vector; target <= 1 s. The
  phases are reported so the one that dominates is visible.
- peak RSS streaming 2k and 20k STS-B sentences through Session.encode_iter (its defaults) from a generator:
  target <= 400 MB, and 20k within 15% of 2k (memory bounded by the batch budget, not the corpus). Both
  runs draw from the same seeded shuffle of the corpus, so both see its mix of lengths (the file's first
  2k lines are short captions; longer news and forum sentences come later, and longer batches need more
  activation memory whatever the corpus size).
Run: pytest benchmarks/bench_footprint.py -s   (BORT_BENCH_MODEL=tiny-bort for a smoke run)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import register_bound

MODEL = os.environ.get("BORT_BENCH_MODEL", "bort")
STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-train.tsv"
register_bound("cold start", "total_s", 1.0, "s")
register_bound("streaming 20k", "peak_rss_mb", 400.0, "MB")
register_bound("streaming 20k vs 2k", "rss_growth", 1.15, "x")

COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
import bort_infer
t1 = time.perf_counter()
session = bort_infer.Session(sys.argv[1], threads=2)
t2 = time.perf_counter()
session.encode("A first sentence to embed.")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_vector_s": t3 - t2, "total_s": t3 - t0}))
"""

STREAM = r"""
import json, sys
import numpy as np
import bort_infer

def peak_rss_mb():
    # VmHWM belongs to this address space; ru_maxrss would carry the parent's peak across exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

model, corpus, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [l.split("\t") for l in open(corpus, encoding="utf-8").read().splitlines()]
texts = [c[5] for c in lines if len(c) >= 7] + [c[6] for c in lines if len(c) >= 7]
del lines
order = np.random.default_rng(0).permutation(len(texts))
session = bort_infer.Session(model, threads=2)
before = peak_rss_mb()
rows = 0
for chunk in session.encode_iter(texts[order[i % len(texts)]] for i in range(n)):
    rows += len(chunk)
assert rows == n
peak = peak_rss_mb()
print(json.dumps({"texts": n, "rss_after_load_mb": before, "peak_rss_mb": peak}))
"""


def _run(code: str, *args) -> dict:
    env = dict(os.environ, BORT_INFER_PROGRESS="0")
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def int8_model() -> Path:
    from bort_infer.bench import artifacts

    return artifacts.export(MODEL, "bort-infer-int8")


def test_cold_start(int8_model, record_bound):
    _run(COLD_START, int8_model)  # the first run warms the page cache, as on any machine that ran it before
    runs = [_run(COLD_START, int8_model) for _ in range(5)]
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    record_bound("cold start", median)


def test_streaming_memory_is_bounded(int8_model, record_bound):
    if not STSB.is_file():
        pytest.skip(f"STS-B not found at {STSB}")
    small = _run(STREAM, int8_model, STSB, 2_000)
    large = _run(STREAM, int8_model, STSB, 20_000)
    record_bound("streaming 20k", large)
    record_bound("streaming 20k vs 2k", {**large, "rss_growth": large["peak_rss_mb"] / small["peak_rss_mb"],
                                         "peak_rss_2k_mb": small["peak_rss_mb"]})
