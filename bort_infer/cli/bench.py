"""`bort-bench`: does Bort run 7.9x faster than BERT-large on this CPU? Measured on every runtime."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..bench import artifacts, report, suite
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
                   help="seconds one shape's interleaved rotations may take; repeats shrink (to 3) to fit")
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
          f"batch {args.batch} x seq {args.seq}; threads {args.threads}; cache {artifacts.cache_root()}",
          file=sys.stderr)
    forwards, skipped = suite.prepare(args.models, args.backends, args.threads)
    cells = suite.measure_grid(forwards, args.batch, args.seq, args.repeat, args.shape_budget)
    text = report.report(cells, skipped, args.baseline)
    print(text)
    machine = report.machine_info(args.threads)
    if args.json:
        report.write_json(args.json, machine, cells, skipped, args.baseline)
    if args.plot:
        report.write_plot(cells, args.models, args.baseline, args.threads, args.plot)
    if args.markdown:
        report.write_markdown(args.markdown, machine, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
