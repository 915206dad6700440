"""`bort-infer predict MODEL INPUT OUT`: a task model over a text file, one JSON result per line.

INPUT holds one input per line (bort_infer.textlines' rules; - for stdin). With a pair model (a cross-encoder,
or --pairs) a line is two texts separated by its first tab. A sequence-classification model writes per line
its labels' {"label", "score"} best first (--top-k, or all; --logits: the raw logits); a token-classification
model writes the line's entities ({"entity_group", "score", "word", "start", "end"}). OUT is JSON Lines in
input order (- for stdout); a file appears only when complete (written as OUT.partial, then renamed).

Run-time world: no torch, transformers or onnx.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

from ..model_dir import EMBEDDING, SEQUENCE_CLASSIFICATION
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_FILE_CHUNK_SIZE, HeadOptions
from ..textlines import iter_texts
from .encode import _positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="exported bort-infer model directory of a sequence- or token-classification task")
    p.add_argument("input", help="text file, one input per line (UTF-8), or - for stdin")
    p.add_argument("out", help="output JSON Lines file, or - for stdout")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"inputs per model call (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="token budget per model call (optional)")
    p.add_argument("--top-k", type=_positive_int, default=None,
                   help="sequence classification: the k best labels per input (default: every label)")
    p.add_argument("--logits", action="store_true", help="sequence classification: write the raw logits")
    p.add_argument("--pairs", action="store_true",
                   help="each line is two texts separated by a tab (always so for a cross-encoder)")
    p.add_argument("--threads", type=_positive_int, default=None, help="onnxruntime threads (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _inputs(lines: Iterator[str], pairs: bool, source: str) -> Iterator[str | tuple[str, str]]:
    for number, line in enumerate(lines, start=1):
        if not pairs:
            yield line
            continue
        first, tab, second = line.partition("\t")
        if not tab:
            raise ValueError(f"{source}: line {number} holds no tab; each line of a pair model's input is "
                             "TEXT<tab>TEXT")
        yield first, second


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(args: argparse.Namespace) -> int:
    from ..session import Session

    started = time.perf_counter()
    session = Session(args.model, threads=args.threads)
    meta = session.metadata
    if meta.task == EMBEDDING:
        raise ValueError(f"{args.model} is an embedding model (task 'embedding'): use `bort-infer encode`")
    sequence = meta.task == SEQUENCE_CLASSIFICATION
    if not sequence and (args.top_k is not None or args.logits or args.pairs):
        raise ValueError("--top-k, --logits and --pairs apply to a sequence-classification model; "
                         f"{args.model} is {meta.task}")
    HeadOptions(batch_size=args.batch_size, max_tokens=args.max_tokens, top_k=args.top_k)  # fail before reading
    to_stdout = args.out == "-"
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    if not to_stdout:
        if out.exists() and not args.overwrite:
            raise ValueError(f"output {out} exists; pass --overwrite to replace it")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise FileNotFoundError(f"output directory {out.parent} does not exist")
    source = "stdin" if args.input == "-" else args.input
    stream = nullcontext(sys.stdin.buffer) if args.input == "-" else open(args.input, "rb")
    sink = nullcontext(sys.stdout) if to_stdout else open(partial, "w", encoding="utf-8")
    rows = 0
    try:
        with stream as f, sink as w:
            inputs = _inputs(iter_texts(f, source), args.pairs or meta.pairs, source)
            for chunk in _chunks(inputs, DEFAULT_FILE_CHUNK_SIZE):
                if sequence:
                    results = session.predict(chunk, batch_size=args.batch_size, max_tokens=args.max_tokens,
                                              top_k=args.top_k, return_logits=args.logits)
                    if args.logits:
                        results = [r.tolist() for r in results]
                else:
                    results = session.tag(chunk, batch_size=args.batch_size, max_tokens=args.max_tokens)
                w.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
                rows += len(results)
    except BaseException:
        if not to_stdout:
            partial.unlink(missing_ok=True)
        raise
    if not to_stdout:
        os.replace(partial, out)
        print(f"wrote {rows} {meta.task} results to {out} in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
    return 0
