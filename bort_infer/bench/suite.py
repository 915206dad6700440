"""The steps of a bort-bench run: build every artifact once (each in its own process), load every backend,
measure the grid."""
from __future__ import annotations

import logging
import sys
import time

from ..registry import model_spec
from .backends import BACKENDS, BackendUnavailable
from .runner import Cell, exact_length_inputs, measure_interleaved


def _build_one(model: str, backend: str, conn) -> None:
    """Child process: build one (model, backend)'s artifacts; sends None, or why it cannot be built."""
    from .backends import build

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        build(model, backend)
        conn.send(None)
    except BackendUnavailable as exc:
        conn.send(str(exc))
    except Exception as exc:  # a peer failing to build must not take the whole bench down
        conn.send(f"could not be built for {model}: {type(exc).__name__}: {exc}")


def _died(exitcode: int | None) -> str:
    import signal

    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        likely = "; most likely the kernel's out-of-memory killer" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{likely}"
    return f"exited with code {exitcode} without a result"


def build_artifacts(pairs: list[tuple[str, str]], build_one=_build_one) -> dict[str, str]:
    """Build (once, cached) every (model, backend)'s artifacts, each in a fresh child process: exporting
    and quantizing BERT-large needs several GB for a while, and none of it should outlive its build, add up
    across builds, or sit next to the sessions loaded afterwards. Returns {backend: why} for the backends
    that cannot be built here. `build_one(model, backend, conn)` runs in the child."""
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    context = get_context("spawn")
    skipped: dict[str, str] = {}
    for model, backend in tqdm(pairs, desc="building", unit="artifact", file=sys.stderr):
        if backend in skipped:
            continue
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=build_one, args=(model, backend, send), name=f"build {model} {backend}")
        child.start()
        send.close()  # so that a child that dies leaves an end-of-file here, not a hang
        try:
            why = receive.recv()
        except EOFError:
            child.join()
            why = f"its build for {model} failed: the build process was {_died(child.exitcode)}"
        child.join()
        if why is not None:
            skipped[backend] = why
    return skipped


def prepare(models: list[str], backends: list[str], threads: int) -> tuple[dict, dict[str, str]]:
    """Build (once, cached) and load every (model, backend); a backend that cannot run is skipped with why."""
    from tqdm.auto import tqdm

    pairs = [(m, b) for m in models for b in backends]
    skipped = build_artifacts(pairs)
    forwards = {}
    for model, backend in tqdm(pairs, desc="loading", unit="backend", file=sys.stderr):
        if backend in skipped:
            continue
        try:
            forwards[(model, backend)] = BACKENDS[backend](model, threads)
        except BackendUnavailable as exc:
            skipped[backend] = str(exc)
        except Exception as exc:
            skipped[backend] = f"could not be loaded for {model}: {type(exc).__name__}: {exc}"
    for key in [k for k in forwards if k[1] in skipped]:
        del forwards[key]
    return forwards, skipped


def measure_grid(forwards: dict, batches: list[int], seqs: list[int], repeat: int,
                 shape_budget: float) -> list[Cell]:
    """Every (model, backend) at every batch x sequence shape, interleaved shape by shape."""
    cells: list[Cell] = []
    for batch in batches:
        for seq in seqs:
            runs = {}
            for (model, backend), fwd in forwards.items():
                ids, mask = exact_length_inputs(batch, seq, model_spec(model)["hf_config"]["vocab_size"])
                runs[(model, backend)] = (lambda f=fwd, i=ids, m=mask: f(i, m))
            t0 = time.perf_counter()
            cells += measure_interleaved(runs, batch, seq, repeat, warmup=1, budget_s=shape_budget)
            print(f"measured b{batch} s{seq} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return cells
