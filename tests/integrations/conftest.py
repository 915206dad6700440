"""Ray fixtures: one local Ray instance (2 CPUs) per test module, workers importing this checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
    pytest.importorskip("ray.data", reason="ray[data] is not installed")
    if ray.is_initialized():
        ray.shutdown()
    # Workers import bort_infer (and classes defined in these tests) from this checkout even when it is
    # not pip-installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "BORT_INFER_PROGRESS": "0"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def cpus_released():
    """After each test, the actors of its datasets must have given their CPUs back (else the next test
    would wait for them forever): fail clearly instead."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    import gc
    import time

    deadline = time.monotonic() + 30
    while True:
        gc.collect()
        total = ray.cluster_resources().get("CPU", 0)
        free = ray.available_resources().get("CPU", 0)
        if free >= total:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Ray still holds {total - free:g} of {total:g} CPUs 30 s after the test (leaked actors)")
        time.sleep(0.5)
