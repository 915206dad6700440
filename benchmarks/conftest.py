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
# Absolute bounds that are not speed ratios (cold start, memory): name → (key, upper bound, unit).
BOUNDS: dict[str, tuple[str, float, str]] = {}
MEASURED: dict[str, dict] = {}


def register_target(group: str, ours: str, peer: str, target: float) -> None:
    TARGETS[group].append((ours, peer, target))


def register_bound(name: str, key: str, bound: float, unit: str) -> None:
    BOUNDS[name] = (key, bound, unit)


@pytest.fixture
def record_bound():
    """record_bound(name, figures): report figures[key] against the bound registered under name."""
    def record(name: str, figures: dict) -> None:
        MEASURED[name] = figures
    return record


def pytest_terminal_summary(terminalreporter, config):
    if MEASURED:
        terminalreporter.write_sep("=", "bounds (measured in this run)")
        for name, figures in MEASURED.items():
            key, bound, unit = BOUNDS[name]
            verdict = "meets" if figures[key] <= bound else "MISSES"
            details = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
            terminalreporter.write_line(f"{name:<22} {key} {figures[key]:.3g} {unit} (bound {bound:g} {unit}: "
                                        f"{verdict})   [{details}]")
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
