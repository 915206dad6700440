"""Sizing the actor pool from the cluster (no Ray needed to run)."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pa = pytest.importorskip("pyarrow")

from bort_infer.integrations.ray import plan_actors  # noqa: E402


def test_plan_actors_sizes_from_the_cluster():
    # 2 CPUs, 2 threads per actor: one actor; it asks for 1 logical CPU so a read task can still run.
    p = plan_actors([2.0])
    assert (p.num_actors, p.threads_per_actor, p.cpus_per_actor) == (1, 2, 1.0) and p.notes
    p = plan_actors([2.0], threads_per_actor=1, reserve_cpus=0)
    assert (p.num_actors, p.threads_per_actor, p.cpus_per_actor) == (2, 1, 1.0)
    # 4 nodes x 16 CPUs, 4 threads: 15 actors of 4 CPUs (one CPU left for reads/writes), whole cores.
    p = plan_actors([16.0] * 4, threads_per_actor=4)
    assert (p.num_actors, p.cpus_per_actor) == (15, 4.0) and not p.notes
    # nodes of 6 CPUs cannot hold two 4-thread actors each
    assert plan_actors([6.0, 6.0], threads_per_actor=4, reserve_cpus=0).num_actors == 2
    with pytest.raises(ValueError, match="threads_per_actor"):
        plan_actors([2.0], threads_per_actor=0)
