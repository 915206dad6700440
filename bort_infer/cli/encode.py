"""`bort-infer encode MODEL INPUT OUT`: the arguments, and the choice between one machine (a .npy, see
bort_infer.encode_file) and a Ray cluster (--ray: Parquet, see bort_infer.integrations.ray.file_job).

Imports no Ray without --ray, and never the build-time stack.
"""
from __future__ import annotations

import argparse

from ..options import DEFAULT_BATCH_SIZE, DEFAULT_FILE_CHUNK_SIZE, DEFAULT_STRIDE, LONG_TEXTS, check_positive_int


def _positive_int(text: str) -> int:
    """argparse type: a positive integer (the rule of bort_infer.options)."""
    try:
        value = int(text)
        check_positive_int("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    return value


# Options of one path only, and their defaults: giving one on the other path is an error, not a no-op.
_RAY_ONLY = {"column": None, "actors": None, "on_error": None, "model_on_shared_path": False}
_LOCAL_ONLY = {"chunk_size": None, "resume": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `bort-infer encode` arguments (cli.main registers the subparser and calls `run`)."""
    p.add_argument("model", help="exported bort-infer model directory")
    p.add_argument("input", help="text file, one text per line (UTF-8), or - for stdin; with --ray a text or "
                                 "Parquet file, or a directory of them")
    p.add_argument("out", help="output .npy file (with --ray: an output directory of Parquet files)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"texts per model call (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="token budget per model call (optional)")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="default: the model's")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize the vectors (default: the model's)")
    p.add_argument("--long-texts", choices=LONG_TEXTS, default="truncate",
                   help="a text over the model's token limit: cut to it (truncate, the default) or encoded as "
                        "overlapping windows averaged token-weighted (chunk)")
    p.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                   help=f"with --long-texts chunk: tokens shared by consecutive windows (default {DEFAULT_STRIDE})")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="onnxruntime threads (default: one per core); with --ray, threads per actor")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (or an interrupted run)")
    local = p.add_argument_group("one machine (.npy output)")
    local.add_argument("--chunk-size", type=_positive_int, default=None,
                       help="lines read, embedded and flushed at a time; bounds memory "
                            f"(default {DEFAULT_FILE_CHUNK_SIZE})")
    local.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from OUT.partial and OUT.progress")
    ray = p.add_argument_group("Ray cluster (Parquet output; pip install 'bort-infer[ray]')")
    ray.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="run on a Ray cluster: 'auto' (the running cluster), 'local' (start one here) or "
                          "an address such as ray://head:10001; writes Parquet (the input's columns + embedding)")
    ray.add_argument("--column", default=None, help="text column of a Parquet input (default: text)")
    ray.add_argument("--actors", type=_positive_int, default=None,
                     help="actor pool size (default: the cluster's CPUs // --threads)")
    ray.add_argument("--on-error", choices=["null", "raise"], default=None,
                     help="a row whose text is not a string (None, a number): give it a null embedding, name such "
                          "rows at the end and exit 1 (null, the default); or stop the job with an error naming "
                          "them (raise)")
    ray.add_argument("--model-on-shared-path", action="store_true",
                     help="workers read MODEL from the same path (shared filesystem) instead of receiving it "
                          "through Ray's object store")


def _given(args: argparse.Namespace, defaults: dict) -> list[str]:
    return ["--" + name.replace("_", "-") for name, default in defaults.items() if getattr(args, name) != default]


def run(args: argparse.Namespace) -> int:
    """`bort-infer encode` entry point (argparse namespace from add_arguments)."""
    if args.ray is not None:
        misplaced = _given(args, _LOCAL_ONLY)
        if misplaced:
            raise ValueError(f"not with --ray (a --ray run is rerun whole): {', '.join(misplaced)}")
        if str(args.input) == "-":
            raise ValueError("--ray reads text or Parquet files that every node can read, not stdin")
        from ..integrations.ray import encode_files

        summary = encode_files(args.model, args.input, args.out, address=args.ray, column=args.column,
                               threads_per_actor=args.threads, num_actors=args.actors, batch_size=args.batch_size,
                               max_tokens=args.max_tokens, pooling=args.pooling, normalize=args.normalize,
                               on_error=args.on_error or "null", ship=not args.model_on_shared_path,
                               overwrite=args.overwrite, long_texts=args.long_texts, stride=args.stride)
        print(summary.describe())
        return 1 if summary.error_rows else 0
    misplaced = _given(args, _RAY_ONLY)
    if misplaced:
        raise ValueError(f"only with --ray ADDRESS: {', '.join(misplaced)}")
    from ..encode_file import encode_file

    result = encode_file(args.model, args.input, args.out, batch_size=args.batch_size, pooling=args.pooling,
                         normalize=args.normalize, threads=args.threads,
                         chunk_size=args.chunk_size or DEFAULT_FILE_CHUNK_SIZE,
                         max_tokens=args.max_tokens, resume=args.resume, overwrite=args.overwrite,
                         long_texts=args.long_texts, stride=args.stride)
    resumed = f", {result.resumed_rows} of them from an earlier run" if result.resumed_rows else ""
    print(f"wrote {result.rows} x {result.hidden_size} float32 embeddings to {result.path}{resumed} "
          f"in {result.seconds:.1f}s ({result.sentences_per_second:.1f} sentences/s)")
    return 0
