"""`bort-bench`: does Bort run 7.9x faster than BERT-large on this CPU? Measured on every runtime."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .. import __version__
from ..bench import artifacts, machine, report, suite
from ..bench.backends import BACKENDS
from ..registry import model_spec

DEFAULT_BASELINE = "bert-large"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bort-bench", description=__doc__)
    p.add_argument("--models", default="bort,bert-large", help="comma-separated known models (models/*.json)")
    p.add_argument("--baseline", default=None,
                   help=f"the model the others are compared with (default: {DEFAULT_BASELINE} if measured, "
                        "else the last of --models)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of: {', '.join(BACKENDS)}")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--seq", default="32,128,512", help="comma-separated sequence lengths (tokens)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads for every backend")
    p.add_argument("--repeat", type=int, default=15, help="interleaved rounds per shape (upper bound)")
    p.add_argument("--shape-budget", type=float, default=45.0,
                   help="seconds one shape's interleaved rounds may take (per measurement group); rounds shrink to "
                        "--min-rounds to fit")
    p.add_argument("--min-rounds", type=int, default=3, help="interleaved rounds every shape gets, however slow")
    p.add_argument("--memory", type=float, default=suite.DEFAULT_MEMORY_GB,
                   help="GB the run may hold at once: builds run two at a time only within it, and backends are "
                        "measured in groups that fit it (a larger budget interleaves more backends together)")
    p.add_argument("--build-jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="artifacts built at once (memory permitting)")
    p.add_argument("--quick", action="store_true", help="one shape (b1 s32), 3 repeats: a smoke run")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="plot latency and the speed ratio (matplotlib)")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown report")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.repeat = "1", "32", 3
    for name in ("models", "backends"):
        setattr(args, name, [x.strip() for x in getattr(args, name).split(",") if x.strip()])
    try:
        args.batch = [int(x) for x in args.batch.split(",")]
        args.seq = [int(x) for x in args.seq.split(",")]
    except ValueError:
        p.error("--batch and --seq take comma-separated integers")
    if min(args.batch) < 1 or min(args.seq) < 2 or args.threads < 1 or args.repeat < 1:
        p.error("batch >= 1, seq >= 2, threads >= 1 and repeat >= 1 are required")
    if args.min_rounds < 1 or args.build_jobs < 1 or args.memory <= 0:
        p.error("--min-rounds >= 1, --build-jobs >= 1 and --memory > 0 are required")
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        p.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    for m in args.models:
        try:
            spec = model_spec(m)
        except ValueError as exc:
            p.error(str(exc))
        if max(args.seq) > spec["hf_config"]["max_position_embeddings"]:
            p.error(f"--seq {max(args.seq)} exceeds {m}'s {spec['hf_config']['max_position_embeddings']} positions")
    if args.baseline is None:
        args.baseline = DEFAULT_BASELINE if DEFAULT_BASELINE in args.models else args.models[-1]
    elif args.baseline not in args.models:
        p.error(f"--baseline {args.baseline} is not among --models")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    print(f"bort-bench {__version__}: models {', '.join(args.models)}; backends {', '.join(args.backends)}; "
          f"batch {args.batch} x seq {args.seq}; threads {args.threads}; memory {args.memory:g} GB; cache "
          f"{artifacts.cache_root()}", file=sys.stderr)
    memory = int(args.memory * suite.GB)
    t0 = time.perf_counter()
    builds: list[dict] = []
    skipped = suite.prepare(args.models, args.backends, memory, parallel=args.build_jobs, usage=builds)
    build_s = time.perf_counter() - t0
    grid = suite.Grid(tuple(args.batch), tuple(args.seq), args.repeat, args.shape_budget, args.min_rounds)
    measured = [b for b in args.backends if b not in skipped]
    t0 = time.perf_counter()
    groups, result = suite.measure(args.models, measured, args.threads, grid, memory)
    measure_s = time.perf_counter() - t0
    skipped.update(result.skipped)
    info = machine.machine_info(args.threads)
    text = report.report(result.cells, skipped, args.baseline, info, result.precision, result.fidelity, groups)
    print(text)
    run = {"command": " ".join(["bort-bench", *(sys.argv[1:] if argv is None else argv)]),
           "date": time.strftime("%Y-%m-%d"), "build_s": round(build_s, 1), "measure_s": round(measure_s, 1),
           "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
           # each build's and each measuring group's process: wall time and peak resident set
           "resources": {"builds": builds, "groups": result.resources}}
    if args.json:
        report.write_json(args.json, run, info, result.cells, skipped, args.baseline, result.precision,
                          result.fidelity, groups)
    if args.plot and result.cells:
        report.write_plot(result.cells, args.models, args.baseline, args.threads, args.plot)
    if args.markdown:
        summary = report.summary_table(result.cells, args.baseline, result.precision, result.fidelity)
        report.write_markdown(args.markdown, run, info, text, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
