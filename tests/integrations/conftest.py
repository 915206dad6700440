"""Ray fixtures: one local Ray instance (2 CPUs) per test module, workers importing this checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="module")
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
