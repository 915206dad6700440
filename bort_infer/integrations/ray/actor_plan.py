"""Sizing an actor pool from the cluster: how many actors of how many threads, asking Ray for how many CPUs."""
from __future__ import annotations

from dataclasses import dataclass, field

import ray

from ...options import check_positive_int

DEFAULT_THREADS_PER_ACTOR = 2


@dataclass(frozen=True)
class ActorPlan:
    num_actors: int
    threads_per_actor: int
    cpus_per_actor: float
    cluster_cpus: float
    reserved_cpus: float
    notes: tuple[str, ...] = field(default=())


def plan_actors(node_cpus: list[float], threads_per_actor: int | None = None, num_actors: int | None = None,
                reserve_cpus: float = 1.0) -> ActorPlan:
    """How many actors of how many threads, and how many logical CPUs each asks Ray for.

    Each actor asks for as many CPUs as it runs threads, so Ray places them where cores are free, and the
    pool leaves ``reserve_cpus`` CPUs free for the dataset's own tasks (read, repartition, write): Ray Data
    hangs when an actor pool holds every CPU (ray-project/ray#44687). When that does not fit (a forced
    ``num_actors``, a small machine) the actors ask for fewer logical CPUs than they run threads.
    """
    nodes = [float(c) for c in node_cpus if c and c > 0]
    if not nodes:
        raise RuntimeError("the Ray cluster has no CPUs")
    total = sum(nodes)
    check_positive_int("threads_per_actor", threads_per_actor, optional=True)
    check_positive_int("num_actors", num_actors, optional=True)
    if reserve_cpus < 0:
        raise ValueError(f"reserve_cpus must be >= 0, got {reserve_cpus!r}")
    threads = threads_per_actor or max(1, min(DEFAULT_THREADS_PER_ACTOR, int(max(nodes))))
    available = max(total - reserve_cpus, 0.0)
    notes = []
    if num_actors is None:
        fits = min(sum(int(c // threads) for c in nodes), int(available // threads))
        num_actors = max(1, fits)
    cpus = float(threads)
    if num_actors * threads > available:
        cpus = available / num_actors
        notes.append(f"{num_actors} actor(s) x {threads} thread(s) exceed the {available:g} CPUs left after reserving "
                     f"{reserve_cpus:g}; each actor asks Ray for {cpus:.3g} logical CPUs (cores are shared)")
    return ActorPlan(num_actors, threads, cpus, total, reserve_cpus, tuple(notes))


def cluster_node_cpus() -> list[float]:
    return [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]

