"""Ray fixtures: one local Ray instance (2 CPUs) for this package's tests, workers importing this checkout;
the models and texts they embed, and the checks they share."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ...conftest import STSB_DIR, VARIED_TEXTS

ROOT = Path(__file__).resolve().parents[3]


def start_local_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Workers import bort_infer (and classes defined in these tests) from this checkout even when it is
    # not pip-installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "BORT_INFER_PROGRESS": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False


@pytest.fixture(scope="package")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
    pytest.importorskip("ray.data", reason="ray[data] is not installed")
    start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def cpus_released(request):
    """After each test, the actors of its datasets must have given their CPUs back (else the next test
    would wait for them forever): fail clearly instead.

    A test marked `fails_a_ray_job` gets a fresh Ray instead: Ray keeps a failed execution, and its actor
    pool, alive for as long as the job's exception is referenced anywhere, and pytest's log capture keeps
    the record Ray Data logs with that exception until the end of the session."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    import gc
    import time

    failed_on_purpose = request.node.get_closest_marker("fails_a_ray_job") is not None
    deadline = time.monotonic() + (5 if failed_on_purpose else 30)
    while True:
        gc.collect()
        total = ray.cluster_resources().get("CPU", 0)
        free = ray.available_resources().get("CPU", 0)
        if free >= total:
            return
        if time.monotonic() > deadline and failed_on_purpose:
            start_local_ray()
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Ray still holds {total - free:g} of {total:g} CPUs 30 s after the test (leaked actors)")
        time.sleep(0.5)


N = 5000


@pytest.fixture(scope="module")
def model(exports):
    """The plain export: these tests are about the Ray plumbing (the packed one has its own test)."""
    return exports("tiny-bort", custom_ops=False)


@pytest.fixture(scope="module")
def packed_model(exports):
    return exports("tiny-bort")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """5k real sentences when STS-B is here (plus the varied hard cases), else generated ones."""
    out = list(VARIED_TEXTS)
    path = STSB_DIR / "sts-train.tsv"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            if len(cols) >= 7:
                out += [cols[5], cols[6]]
            if len(out) >= N:
                break
    i = 0
    while len(out) < N:
        out.append(f"generated sentence {i} " + "word " * (i % 41))
        i += 1
    return out[:N]


@pytest.fixture(scope="module")
def reference(session, texts) -> np.ndarray:
    return session.encode(texts)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def collect(ds):
    import pyarrow as pa
    import ray

    return pa.concat_tables(ray.get(list(ds.to_arrow_refs())))


def check_exactly_once(table, reference: np.ndarray) -> None:
    from bort_infer.integrations.ray import embeddings_to_numpy

    ids = table["id"].to_numpy()
    assert len(ids) == len(reference) and np.array_equal(np.sort(ids), np.arange(len(reference)))
    vectors = embeddings_to_numpy(table["embedding"])
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert cosine(vectors, reference[ids]).min() >= 0.99999


def id_dataset(texts, blocks=20):
    import ray

    return ray.data.from_items([{"id": i, "text": t, "source": f"doc-{i % 13}"} for i, t in enumerate(texts)],
                               override_num_blocks=blocks)
