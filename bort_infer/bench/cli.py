"""`bort-bench`: does Bort run 7.9x faster than BERT-large on this CPU? Measured on every runtime."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from collections import defaultdict

from .. import __version__
from ..registry import model_spec
from . import artifacts
from .backends import BACKENDS, BackendUnavailable
from .runner import Cell, exact_length_inputs, measure_interleaved

PAPER_CLAIM = 7.9
DEFAULT_BASELINE = "bert-large"


def gop_per_sequence(model: str, seq: int) -> float:
    """Multiply-adds ×2 of the encoder at one sequence length (projections, FFN, attention)."""
    c = model_spec(model)["hf_config"]
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    per_layer = 2 * seq * 4 * h * h + 2 * seq * 2 * h * i + 2 * 2 * seq * seq * h
    return layers * per_layer / 1e9


def machine_info(threads: int) -> dict:
    import onnxruntime

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": threads, "bort_infer": __version__, "onnxruntime": onnxruntime.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    info["isa"] = [x for x in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if x in flags]
                    break
    except OSError:
        pass
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bort-bench", description=__doc__)
    p.add_argument("--models", default="bort,bert-large", help="comma-separated known models (models/*.json)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of: {', '.join(BACKENDS)}")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--seq", default="128", help="comma-separated sequence lengths (tokens)")
    p.add_argument("--baseline", default=None,
                   help=f"the model the others are compared with (default: {DEFAULT_BASELINE} if measured, "
                        "else the last of --models)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads for every backend")
    p.add_argument("--repeat", type=int, default=15, help="timed repeats per cell (upper bound)")
    p.add_argument("--cell-budget", type=float, default=60.0,
                   help="seconds one shape's rotation may take; repeats shrink (min 3) to fit")
    p.add_argument("--quick", action="store_true", help="one shape (b1 s32), 3 repeats: a smoke run")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
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
    if args.baseline is None:
        args.baseline = DEFAULT_BASELINE if DEFAULT_BASELINE in args.models else args.models[-1]
    elif args.baseline not in args.models:
        p.error(f"--baseline {args.baseline} is not among --models")
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
    return args


def run(args: argparse.Namespace) -> tuple[list[Cell], dict[str, str]]:
    forwards, skipped = {}, {}
    for model in args.models:
        for backend in args.backends:
            print(f"preparing {backend} for {model} …", file=sys.stderr, flush=True)
            try:
                forwards[(model, backend)] = BACKENDS[backend](model, args.threads)
            except BackendUnavailable as exc:
                skipped[backend] = str(exc)
    cells: list[Cell] = []
    for batch in args.batch:
        for seq in args.seq:
            runs = {}
            for (model, backend), fwd in forwards.items():
                ids, mask = exact_length_inputs(batch, seq, model_spec(model)["hf_config"]["vocab_size"])
                runs[(model, backend)] = (lambda f=fwd, i=ids, m=mask: f(i, m))
            print(f"measuring b{batch} s{seq} …", file=sys.stderr, flush=True)
            cells += measure_interleaved(runs, batch, seq, args.repeat, budget_s=args.cell_budget)
    return cells, skipped


def report(cells: list[Cell], skipped: dict[str, str], models: list[str], baseline: str) -> str:
    lines = [f"{'model':<16}{'backend':<18}{'batch':>6}{'seq':>6}{'median ms':>12}{'IQR ms':>10}{'n':>4}"]
    for c in cells:
        lines.append(f"{c.model:<16}{c.backend:<18}{c.batch:>6}{c.seq_len:>6}{c.median_ms:>12.2f}"
                     f"{c.iqr_ms:>10.2f}{len(c.times_ms):>4}")
    for backend, why in skipped.items():
        lines.append(f"skipped {backend}: {why}")
    by_key = {(c.model, c.backend, c.batch, c.seq_len): c for c in cells}
    subjects = [m for m in models if m != baseline]
    if baseline in models and subjects:
        lines.append("")
        lines.append(f"Speed ratio {baseline} time / model time (paper claims {PAPER_CLAIM}x for Bort on CPU):")
        ratios = defaultdict(list)
        for (model, backend, b, s), cell in sorted(by_key.items()):
            base = by_key.get((baseline, backend, b, s))
            if model in subjects and base is not None:
                r = base.median_ms / cell.median_ms
                ratios[(model, backend)].append((r, b, s))
                flops = gop_per_sequence(baseline, s) / gop_per_sequence(model, s)
                lines.append(f"  {model:<12}{backend:<18} b{b:<3} s{s:<4} {r:6.2f}x   (FLOP ratio {flops:.1f}x)")
        lines.append("")
        lines.append("Verdict:")
        for (model, backend), rs in ratios.items():
            worst = min(rs)
            holds = "holds" if worst[0] >= PAPER_CLAIM else "does NOT hold"
            lines.append(f"  {backend}: minimum {model}/{baseline} speed-up {worst[0]:.2f}x (at b{worst[1]} s{worst[2]}) "
                         f"vs claimed {PAPER_CLAIM}x → the claim {holds} on this backend")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    print(f"bort-bench {__version__}: models {', '.join(args.models)}; backends {', '.join(args.backends)}; "
          f"threads {args.threads}; cache {artifacts.cache_root()}", file=sys.stderr)
    cells, skipped = run(args)
    print(report(cells, skipped, args.models, args.baseline))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(args.threads), "results": [c.to_json() for c in cells],
                       "skipped": skipped}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
