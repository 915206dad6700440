"""The steps of a bort-bench run: build every artifact the chosen backends need (once, cached; each in
its own process, two at a time when memory allows), then measure the grid in groups of backends that fit
the memory budget together, each group in its own process.

Why processes: exporting and quantizing BERT-large needs GBs for a while, and none of it should outlive
its build, add up across builds, or sit next to the sessions measured afterwards; and a runtime's memory
arenas never shrink, so a group's process returns all of it when the group is done. Why groups: holding
every runtime's BERT-large at once (ten copies of 1.3 GB of fp32 weights, or their int8/bf16 forms, each
with its arena) would need far more memory than a laptop has. Inside a group every backend × every model
is interleaved round by round, so the Bort/BERT-large ratio of each backend, and the speed-ups between
backends of the same group, see the same background load. Groups put the reduced-precision backends
together (ours and every int8/bf16 peer) and the fp32 backends together, in as few groups as the budget
allows; `--memory` raises the budget (one group: everything interleaved)."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field

from ..registry import model_spec
from . import artifacts
from .backends import BACKENDS, BackendUnavailable, check_available
from .runner import Cell, exact_length_inputs, measure_interleaved

GB = 2**30
# What a process with the run time's libraries imported holds before it loads or builds anything.
BASE_BYTES = int(0.5 * GB)
DEFAULT_MEMORY_GB = 5.5


def _died(exitcode: int | None) -> str:
    import signal

    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        likely = "; most likely the kernel's out-of-memory killer" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{likely}"
    return f"exited with code {exitcode} without a result"


# ---------------------------------------------------------------------------------------------- building

def _peak_rss_bytes() -> int:
    """This process's peak resident set so far (getrusage: kB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _in_child(work, args, conn) -> None:
    """A child process's entry: runs `work(*args)` and sends back (its result, or why it failed as a string;
    {"wall_s", "peak_rss_bytes"} of this process), so that the parent can say what each child cost."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t0 = time.perf_counter()
    try:
        result = work(*args)
    except Exception as exc:  # a peer failing to build or load must not take the whole bench down
        result = f"{type(exc).__name__}: {exc}"
    conn.send((result, {"wall_s": time.perf_counter() - t0, "peak_rss_bytes": _peak_rss_bytes()}))


def _usage(what: str, wall_s: float, peak_rss_bytes: int | None) -> dict:
    return {"what": what, "wall_s": round(wall_s, 1),
            "peak_rss_gib": None if peak_rss_bytes is None else round(peak_rss_bytes / GB, 2)}


def usage_line(usage: dict) -> str:
    peak = "peak unknown" if usage["peak_rss_gib"] is None else f"peak {usage['peak_rss_gib']:.2f} GiB resident"
    return f"  {usage['what']}: {usage['wall_s']:.0f} s, {peak}"


def _build_one(model: str, name: str) -> None:
    """Child process: build one artifact (an exception says why it could not be built)."""
    artifacts.build(model, name)


def build_estimate(model: str, name: str) -> int:
    """Bytes the build scheduler reserves for building artifact `name` of `model`."""
    return BASE_BYTES + int(artifacts.ARTIFACTS[name].memory * artifacts.weight_bytes(model))


# What the builds import (exporting, quantizing, converting): 10-15 s per process on a slow machine, paid once
# by the fork server each build's process is forked from instead of once per build.
BUILD_PRELOAD = ("torch", "transformers.models.bert.modeling_bert", "onnx", "onnxruntime",
                 "bort_infer.export.export", "bort_infer.bench.artifacts")


@contextlib.contextmanager
def _build_processes(preload: tuple[str, ...]):
    """A multiprocessing context whose processes are forked from a fresh fork server that has imported
    `preload` (a module that fails to import is skipped), stopped on exit: it starts from this process's
    environment and directory as they are now, and its imports do not sit in memory beside what is measured
    next. The server only imports: the idle threads a few libraries start then (OpenBLAS's pool, Arrow's
    allocator thread) are not carried into a fork and are started again there, as in every PyTorch DataLoader
    worker forked after `import torch`. Where there is no fork server (Windows), each process is spawned."""
    from multiprocessing import forkserver, get_all_start_methods, get_context

    if "forkserver" not in get_all_start_methods():
        yield get_context("spawn")
        return
    server = forkserver._forkserver  # _stop: CPython's own (private) way to end it, used by its tests
    server._stop()  # one left by an earlier call would have that call's environment
    context = get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    try:
        yield context
    finally:
        server._stop()


def build_artifacts(jobs: list[tuple[str, str]], build_one=_build_one, memory_bytes: int = int(DEFAULT_MEMORY_GB * GB),
                    parallel: int = 2, estimate=build_estimate,
                    usage: list[dict] | None = None) -> dict[tuple[str, str], str]:
    """Build every (model, artifact) of `jobs` (listed with what each needs before it, as artifacts.plan
    orders them), each in a child process of its own (forked from a fork server that has imported
    BUILD_PRELOAD when `build_one` is the real build), up to `parallel` at once while their estimated peaks fit
    `memory_bytes` (one always runs, however large). Returns {(model, artifact): why} for those that could
    not be built, including those whose sources could not. `build_one(model, name)` runs in the child (it
returns None or raises); each build's wall time and peak resident set are printed and appended to `usage`."""
    with _build_processes(BUILD_PRELOAD if build_one is _build_one else ()) as context:
        return _build_in(context, jobs, build_one, memory_bytes, parallel, estimate, usage)


def _build_in(context, jobs, build_one, memory_bytes, parallel, estimate, usage) -> dict[tuple[str, str], str]:
    from multiprocessing.connection import wait

    from tqdm.auto import tqdm

    failed: dict[tuple[str, str], str] = {}
    done: set[tuple[str, str]] = set()
    pending = list(jobs)
    running: dict = {}  # receive end → (job, process, reserved bytes, start time)
    bar = tqdm(total=len(jobs), desc="building", unit="artifact", file=sys.stderr)

    def needs(job):
        return [(job[0], dep) for dep in artifacts.ARTIFACTS[job[1]].needs if (job[0], dep) in set(jobs)]

    while pending or running:
        for job in list(pending):  # a job whose sources failed cannot be built
            broken = [d for d in needs(job) if d in failed]
            if broken:
                failed[job] = f"needs {broken[0][1]}, which could not be built"
                pending.remove(job)
                bar.update()
        reserved = sum(r[2] for r in running.values())
        for job in list(pending):
            if len(running) >= parallel:
                break
            if not all(d in done for d in needs(job)):
                continue
            cost = estimate(*job)
            if running and reserved + cost > memory_bytes:
                continue
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_in_child, args=(build_one, job, send), name=f"build {job[0]} {job[1]}")
            child.start()
            send.close()  # so that a child that dies leaves an end-of-file here, not a hang
            running[receive] = (job, child, cost, time.perf_counter())
            reserved += cost
            pending.remove(job)
        if not running:
            if pending:  # nothing can start and nothing runs: an ordering bug, not a build failure
                raise RuntimeError(f"cannot schedule {pending}: what they need is not in the job list")
            break
        for receive in wait(list(running)):
            job, child, _, started = running.pop(receive)
            try:
                why, used = receive.recv()
            except EOFError:
                child.join()
                why = f"the build process was {_died(child.exitcode)}"
                used = {"wall_s": time.perf_counter() - started, "peak_rss_bytes": None}
            child.join()
            record = _usage(f"build {job[0]} {job[1]}", used["wall_s"], used["peak_rss_bytes"])
            bar.write(usage_line(record) + ("" if why is None else " (failed)"), file=sys.stderr)
            if usage is not None:
                usage.append(record)
            if why is None:
                done.add(job)
            else:
                failed[job] = why
            bar.update()
    bar.close()
    return failed


def build_plan(models: list[str], backends: list[str], with_fidelity: bool) -> list[tuple[str, str]]:
    """Every (model, artifact) the backends need, what each needs first, and the fidelity reference when
    a reduced-precision backend is measured; already-built ones are left out."""
    jobs = []
    for model in models:
        names = [a for b in backends for a in BACKENDS[b].artifacts]
        if with_fidelity:
            names.append("fidelity-reference")
        jobs += [(model, a) for a in artifacts.plan(model, names) if not artifacts.is_built(model, a)]
    return jobs


def prepare(models: list[str], backends: list[str], memory_bytes: int, parallel: int = 2,
            usage: list[dict] | None = None) -> dict[str, str]:
    """Build (once, cached) what every backend needs; returns {backend: why} for those that cannot run here.
    Each build's wall time and peak resident set are appended to `usage`."""
    skipped: dict[str, str] = {}
    for b in backends:
        try:
            check_available(b, to_build=True)
        except BackendUnavailable as exc:
            skipped[b] = str(exc)
    wanted = [b for b in backends if b not in skipped]
    with_fidelity = any(BACKENDS[b].reduced_precision for b in wanted)
    failed = build_artifacts(build_plan(models, wanted, with_fidelity), memory_bytes=memory_bytes, parallel=parallel,
                             usage=usage)
    for (model, name), why in failed.items():
        for b in wanted:
            if name in artifacts.plan(model, BACKENDS[b].artifacts) and b not in skipped:
                skipped[b] = f"its {name} artifact for {model} could not be built: {why}"
    if any(name == "fidelity-reference" for _, name in failed):
        model, why = next((m, w) for (m, n), w in failed.items() if n == "fidelity-reference")
        skipped["fidelity"] = f"the fidelity reference for {model} could not be built: {why}"
    return skipped


# ---------------------------------------------------------------------------------------------- measuring

def load_estimate(model: str, backend: str) -> int:
    """Bytes backend `backend` holds once loaded for `model` and run at the grid's largest shape."""
    return int(BACKENDS[backend].memory * artifacts.weight_bytes(model))


def measurement_groups(models: list[str], backends: list[str], memory_bytes: int,
                       estimate=None) -> list[list[str]]:
    """Backends split into groups that fit `memory_bytes` together (with BASE_BYTES for the process): the
    reduced-precision ones first, then fp32, bort-infer's own first within each kind (so that its closest
    peers share its group whenever they fit), each backend placed in the first group of its kind it fits
    (first fit: no group is closed while a later backend still fits it). A backend too large for any group
    gets one of its own."""
    estimate = estimate or load_estimate

    def ours_first(kind: list[str]) -> list[str]:
        return [b for b in kind if b.startswith("bort-infer")] + [b for b in kind if not b.startswith("bort-infer")]

    ordered = (ours_first([b for b in backends if BACKENDS[b].reduced_precision])
               + ours_first([b for b in backends if not BACKENDS[b].reduced_precision]))
    groups: list[list[str]] = []
    used: list[int] = []
    for b in ordered:
        cost = sum(estimate(m, b) for m in models)
        for i, group in enumerate(groups):
            same_kind = BACKENDS[group[0]].reduced_precision == BACKENDS[b].reduced_precision
            if same_kind and BASE_BYTES + used[i] + cost <= memory_bytes:
                group.append(b)
                used[i] += cost
                break
        else:
            groups.append([b])
            used.append(cost)
    return groups


@dataclass
class GroupResult:
    cells: list[Cell] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)  # backend → what actually ran
    fidelity: dict[str, dict[str, dict]] = field(default_factory=dict)  # backend → model → figures
    seconds: dict[str, float] = field(default_factory=dict)  # load / fidelity / measure
    resources: list[dict] = field(default_factory=list)  # each group process's wall time and peak resident set


@dataclass(frozen=True)
class Grid:
    batches: tuple[int, ...]
    seqs: tuple[int, ...]
    repeat: int
    shape_budget: float
    min_rounds: int = 3


def measure_group(models: list[str], backends: list[str], threads: int, grid: Grid, log=None) -> GroupResult:
    """Load every (model, backend) of the group, measure fidelity of the reduced-precision ones, then the
    grid, shape by shape, each shape's rounds interleaving every backend × model."""
    from . import fidelity

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = GroupResult()
    loaded = {}
    t0 = time.perf_counter()
    for backend in backends:
        for model in models:
            try:
                loaded[(model, backend)] = BACKENDS[backend].load(model, threads)
            except BackendUnavailable as exc:
                result.skipped[backend] = str(exc)
            except Exception as exc:
                result.skipped[backend] = f"could not be loaded for {model}: {type(exc).__name__}: {exc}"
            if backend in result.skipped:
                break
        if backend not in result.skipped:
            result.precision[backend] = loaded[(models[0], backend)].precision
    for key in [k for k in loaded if k[1] in result.skipped]:
        del loaded[key]
    result.seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for (model, backend), fwd in loaded.items():
        if not BACKENDS[backend].reduced_precision:
            continue
        ref_file = artifacts.path(model, "fidelity-reference") / "reference.npz"
        if not ref_file.is_file():
            continue
        batches, reference = fidelity.Batches.load(ref_file)
        try:
            result.fidelity.setdefault(backend, {})[model] = fidelity.compare(fwd.states, batches, reference)
        except Exception as exc:  # a backend whose output cannot be compared is reported, not measured blind
            result.fidelity.setdefault(backend, {})[model] = {"error": f"{type(exc).__name__}: {exc}"}
    result.seconds["fidelity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for batch in grid.batches:
        for seq in grid.seqs:
            runs = {}
            for backend in backends:  # a backend's models side by side (see runner.rotated)
                for model in models:
                    if (model, backend) in loaded:
                        ids, mask = exact_length_inputs(batch, seq, model_spec(model)["hf_config"]["vocab_size"])
                        runs[(model, backend)] = (lambda f=loaded[(model, backend)].run, i=ids, m=mask: f(i, m))
            t1 = time.perf_counter()
            result.cells += measure_interleaved(runs, batch, seq, grid.repeat, warmup=1, budget_s=grid.shape_budget,
                                                min_rounds=grid.min_rounds)
            log(f"  measured b{batch} s{seq} in {time.perf_counter() - t1:.0f} s")
    result.seconds["measure"] = time.perf_counter() - t0
    return result


def measure(models: list[str], backends: list[str], threads: int, grid: Grid, memory_bytes: int,
            child=measure_group) -> tuple[list[list[str]], GroupResult]:
    """Measure every backend in memory-bounded groups (see measurement_groups), each in a child process
    running `child(models, group, threads, grid)`; returns the groups and everything they measured, with each
    group process's wall time and peak resident set (printed too). A group whose process dies skips its
    backends with why."""
    from multiprocessing import get_context

    context = get_context("spawn")
    groups = measurement_groups(models, backends, memory_bytes)
    total = GroupResult()
    for i, group in enumerate(groups, 1):
        print(f"measuring group {i}/{len(groups)}: {', '.join(group)}", file=sys.stderr, flush=True)
        receive, send = context.Pipe(duplex=False)
        proc = context.Process(target=_in_child, args=(child, (models, group, threads, grid), send),
                               name=f"measure group {i}")
        started = time.perf_counter()
        proc.start()
        send.close()
        try:
            got, used = receive.recv()
        except EOFError:
            proc.join()
            got = f"the measuring process was {_died(proc.exitcode)}"
            used = {"wall_s": time.perf_counter() - started, "peak_rss_bytes": None}
        proc.join()
        record = _usage(f"measuring group {i} ({', '.join(group)})", used["wall_s"], used["peak_rss_bytes"])
        print(usage_line(record), file=sys.stderr, flush=True)
        total.resources.append(record)
        if isinstance(got, str):
            for b in group:
                total.skipped[b] = f"could not be measured: {got}"
            continue
        total.cells += got.cells
        total.skipped.update(got.skipped)
        total.precision.update(got.precision)
        total.fidelity.update(got.fidelity)
        for k, v in got.seconds.items():
            total.seconds[k] = total.seconds.get(k, 0.0) + v
    return groups, total
