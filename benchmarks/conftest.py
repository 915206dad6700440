"""pytest-benchmark suites: every speed target is a ratio against a peer measured in the same run.

At the end of a run, each group's "ratio" table (peer median / ours) is printed beside its target.
"""
from __future__ import annotations

import os
from collections import defaultdict

import pytest

os.environ.setdefault("BORT_INFER_PROGRESS", "0")
THREADS = int(os.environ.get("BORT_BENCH_THREADS", "2"))

# group → (ours, peer, target ratio): what the issues promise.
TARGETS: dict[str, list[tuple[str, str, float]]] = defaultdict(list)


def register_target(group: str, ours: str, peer: str, target: float) -> None:
    TARGETS[group].append((ours, peer, target))


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    medians = defaultdict(dict)
    for bench in session.benchmarks:
        if bench.stats is not None:
            medians[bench.group][bench.extra_info.get("backend", bench.name)] = bench.stats.median
    lines = []
    for group in sorted(medians):
        for ours, peer, target in TARGETS.get(group, []):
            if ours in medians[group] and peer in medians[group]:
                ratio = medians[group][peer] / medians[group][ours]
                verdict = "meets" if ratio >= target else "MISSES"
                lines.append(f"{group:<34} {ours:<20} vs {peer:<20} {ratio:6.2f}x  (target {target:.2f}x: {verdict})")
    if lines:
        terminalreporter.write_sep("=", "speed ratios (peer median / ours, same run)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def threads() -> int:
    return THREADS
