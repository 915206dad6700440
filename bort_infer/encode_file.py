"""`bort-infer encode MODEL_DIR INPUT OUT.npy`: embed a text file, one text per line, into a .npy file.

Run-time world: onnxruntime, numpy, tokenizers and tqdm only (``--ray`` hands over to
``bort_infer.integrations.ray``, which imports Ray).

Lines. A line ends at ``\\n`` (a ``\\r\\n`` pair is one line ending; a UTF-8 byte-order mark at the start of
the input is dropped). Every line is one text, an empty line included, and a final ``\\n`` does not start
another text: ``"a\\n\\nb\\n"`` is three texts. Nothing else splits a line (not ``\\r`` alone, ``\\x0b``,
``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85`` or U+2028, which ``str.splitlines`` would split on), so row i of
the output is always line i + 1 of the input.

Output. Rows go to ``OUT.partial`` as they are computed, one chunk at a time, and ``OUT`` appears only
when every row is there (an atomic rename): a file named ``OUT`` is always complete. For a file input the
lines are counted first and ``OUT.partial`` is a preallocated .npy (``np.lib.format.open_memmap``); for
stdin the rows are appended after a header whose row count is filled in when the input ends (numpy pads
the header so that the count can grow in place). After each chunk is flushed to disk, ``OUT.progress``
records how many rows are done and a SHA-256 of the input bytes they came from, so ``--resume`` continues
an interrupted run from its last chunk, after checking that input, model and options are the same.
"""
from __future__ import annotations

import argparse
import codecs
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .model_dir import METADATA_FILE, ModelDirectoryError

PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"
PROGRESS_FORMAT = "bort-infer-encode-progress"
PROGRESS_VERSION = 1
_BOM = codecs.BOM_UTF8
_BLOCK = 1 << 24  # bytes per read when counting lines


@dataclass(frozen=True)
class EncodeResult:
    """What an encode run did: ``rows`` in the output, of which ``resumed_rows`` were already done;
    ``seconds`` in all, ``embed_seconds`` of them reading, embedding and writing (after the model loaded)."""

    path: Path
    rows: int
    hidden_size: int
    resumed_rows: int
    seconds: float
    embed_seconds: float = 0.0

    @property
    def sentences_per_second(self) -> float:
        done = self.rows - self.resumed_rows
        return done / self.embed_seconds if self.embed_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------- lines

def count_lines(path: str | Path) -> int:
    """Texts in a file under this module's line rules, checking on the way that it is valid UTF-8
    (an error names the line), so that a bad byte stops the run before any model work."""
    with open(path, "rb") as f:
        return scan_lines(f, str(path))[0]


def scan_lines(stream: BinaryIO, source: str, cut_bytes: int | None = None,
               block_size: int = _BLOCK) -> tuple[int, list[tuple[int, int]]]:
    """(texts in the stream, cuts), checking that it is valid UTF-8 (an error names the line).

    With ``cut_bytes``, cuts are (byte offset, line index) of line starts about ``cut_bytes`` apart, the
    first at or after byte ``cut_bytes``: they split the input into pieces of whole lines (used to spread
    one large file over many Ray tasks). A cut is never at the very end of the input."""
    rows = 0
    last = b""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0
    cuts: list[tuple[int, int]] = []
    next_cut = cut_bytes
    while True:
        block = stream.read(block_size)
        if not block:
            break
        pending = len(decoder.getstate()[0])  # an unfinished sequence carried over from the last block
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:
            at = max(exc.start - pending, 0)
            line = rows + block.count(b"\n", 0, at) + 1
            raise ValueError(f"{source}: line {line} is not valid UTF-8 (byte offset {consumed + at}): "
                             f"{exc.reason}") from None
        while next_cut is not None and next_cut < consumed + len(block):
            newline = block.find(b"\n", max(next_cut - consumed, 0))
            if newline < 0:
                break  # the line holding the cut goes on in the next block
            cuts.append((consumed + newline + 1, rows + block.count(b"\n", 0, newline + 1)))
            next_cut = cuts[-1][0] + cut_bytes
        rows += block.count(b"\n")
        last = block[-1:]
        consumed += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: line {rows + 1} is not valid UTF-8 (truncated sequence at the end of the "
                         f"input): {exc.reason}") from None
    if cuts and cuts[-1][0] == consumed:
        cuts.pop()
    return rows + (1 if last not in (b"", b"\n") else 0), cuts


def iter_raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The input's lines as raw bytes, each with its line ending (the last one may have none)."""
    yield from stream  # a binary stream splits on b"\n" only; decode_line drops a leading BOM


def decode_line(raw: bytes, line_number: int, source: str, first: bool = False) -> str:
    """One raw line → its text: line ending (``\\n`` or ``\\r\\n``) removed, UTF-8 decoded strictly."""
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    if first and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: line {line_number} is not valid UTF-8: {exc.reason}") from None


def split_lines(data: bytes, source: str = "input") -> list[str]:
    """All texts of an in-memory input (the same rules as a streamed file)."""
    stream = io.BytesIO(data)
    return [decode_line(raw, i + 1, source, first=(i == 0)) for i, raw in enumerate(iter_raw_lines(stream))]


# ---------------------------------------------------------------------------------------------- .npy helpers

def _npy_header(rows: int, hidden: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                               "fortran_order": False, "shape": (rows, hidden)})
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _model_fingerprint(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / METADATA_FILE).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- encode

def encode_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                batch_size: int = 32, pooling: str | None = None, normalize: bool | None = None,
                threads: int | None = None, chunk_size: int = 4096, max_tokens: int | None = None,
                resume: bool = False, overwrite: bool = False, show_progress: bool | None = None,
                stdin: BinaryIO | None = None, session=None) -> EncodeResult:
    """Embed every line of ``input_path`` (``"-"``: stdin) into a float32 (lines, hidden) .npy at
    ``output_path``; see the module docstring for line rules, atomicity and resumption.

    Memory is bounded by ``chunk_size`` lines (and their vectors), not by the corpus. ``session`` (an open
    ``bort_infer.Session`` for ``model_dir``) may be passed to reuse one.
    """
    from .pooling import POOLINGS
    from .session import Session

    started = time.perf_counter()
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size), ("max_tokens", max_tokens)):
        if value is None and name == "max_tokens":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")

    from_stdin = str(input_path) == "-"
    source = "stdin" if from_stdin else str(input_path)
    if not from_stdin:
        input_path = Path(input_path)
        if not input_path.exists():
            raise FileNotFoundError(f"input file {input_path} does not exist")
        if input_path.is_dir():
            raise IsADirectoryError(f"input {input_path} is a directory; give a text file (one text per line), "
                                    "or use --ray to read a directory of text or Parquet files")
        if not os.access(input_path, os.R_OK):
            raise PermissionError(f"input file {input_path} is not readable")
    if str(output_path) == "-":
        raise ValueError("the output must be a file path (a .npy is written in place), not stdout")
    out = Path(output_path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory {parent} does not exist")
    if out.is_dir():
        raise IsADirectoryError(f"output {out} is a directory; give a file name such as {out / 'vectors.npy'}")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    progress_path = out.with_name(out.name + PROGRESS_SUFFIX)
    # Refuse before loading the model or reading a large input.
    if not resume and not overwrite:
        if out.exists():
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if partial.exists():
            state = _read_progress(progress_path)
            held = f"{state['rows_done']} rows" if state else "no finished chunk"
            raise FileExistsError(f"{partial} holds an interrupted run ({held}); pass --resume to continue it "
                                  "or --overwrite to start over")

    model_dir = Path(model_dir)
    if session is None:
        session = Session(model_dir, threads=threads)
    hidden = session.hidden_size
    meta = session.metadata
    how = meta.pooling if pooling is None else pooling
    do_normalize = meta.normalize if normalize is None else bool(normalize)
    try:
        fingerprint = _model_fingerprint(model_dir)
    except OSError as exc:
        raise ModelDirectoryError(f"{model_dir}: cannot read {METADATA_FILE}: {exc}") from None
    total = None if from_stdin else count_lines(input_path)

    # What must match for --resume (the input's content is checked by the SHA-256 of the rows done, so a
    # moved file or model directory can still be resumed); the paths are recorded for people.
    identity = {
        "format": PROGRESS_FORMAT, "version": PROGRESS_VERSION,
        "rows_total": total, "hidden_size": hidden, "dtype": "float32",
        "model_fingerprint": fingerprint, "pooling": how, "normalize": do_normalize,
    }
    about = {"input": "-" if from_stdin else str(Path(input_path).resolve()), "model": str(model_dir.resolve())}

    if resume and out.exists() and not partial.exists():
        # The run finished (OUT is only ever renamed into place complete): nothing to resume. Its content is
        # not compared with the input again; --overwrite recomputes it.
        shape, dtype = _npy_shape(out)
        if total is not None and shape == (total, hidden) and dtype == np.float32:
            print(f"bort-infer encode: {out} is already complete ({total} rows); nothing to resume",
                  file=sys.stderr)
            return EncodeResult(out, total, hidden, total, time.perf_counter() - started)
        if total is None:
            raise ValueError(f"{out} exists and there is no interrupted run to resume; pass --overwrite to "
                             "replace it")
        raise ValueError(f"{out} exists with shape {shape}, which does not match this input ({total} rows x "
                         f"{hidden}); pass --overwrite to replace it")

    done = 0
    prefix_sha = hashlib.sha256().hexdigest()
    prefix_bytes = 0
    if partial.exists() and resume:
        state = _read_progress(progress_path)
        if state is not None:
            mismatched = [k for k, v in identity.items() if state.get(k) != v]
            if mismatched:
                detail = ", ".join(f"{k}: was {state.get(k)!r}, now {identity[k]!r}" for k in mismatched)
                raise ValueError(f"cannot resume {partial}: the run it came from differs ({detail}); "
                                 "pass --overwrite to start over")
            done, prefix_sha, prefix_bytes = state["rows_done"], state["prefix_sha256"], state["prefix_bytes"]

    if resume and done == 0 and not partial.exists():
        print(f"bort-infer encode: nothing to resume ({partial} does not exist); starting", file=sys.stderr)

    writer = _StdinWriter(partial, hidden) if from_stdin else _MemmapWriter(partial, total, hidden)
    writer.open(done)
    _write_json_atomic(progress_path, {**identity, **about, "rows_done": done, "prefix_sha256": prefix_sha,
                                       "prefix_bytes": prefix_bytes})

    from tqdm.auto import tqdm

    disable = (not show_progress) if show_progress is not None else (
        True if os.environ.get("BORT_INFER_PROGRESS") == "0" else None)
    embed_started = time.perf_counter()
    bar = tqdm(total=total, initial=done, desc="encode", unit=" sentences", disable=disable, dynamic_ncols=True)
    owns_stream = stdin is None and not from_stdin
    stream = stdin if stdin is not None else (sys.stdin.buffer if from_stdin else open(input_path, "rb"))
    row = 0
    try:
        hasher = hashlib.sha256()
        lines = iter_raw_lines(stream)
        # Skip what is already written, checking that it came from the same bytes.
        skipped = 0
        if done:
            for raw in lines:
                hasher.update(raw)
                skipped += 1
                if skipped == done:
                    break
        if skipped < done:
            raise ValueError(f"{source} has {skipped} lines, but {partial} already holds {done} rows from it")
        if done and hasher.hexdigest() != prefix_sha:
            raise ValueError(f"cannot resume {partial}: the first {done} lines of {source} are not the ones its "
                             "rows came from; pass --overwrite to start over")
        row = done
        bytes_done = prefix_bytes
        while True:
            raws = []
            for raw in lines:
                raws.append(raw)
                if len(raws) == chunk_size:
                    break
            if not raws:
                break
            texts = [decode_line(r, row + i + 1, source, first=(row + i == 0)) for i, r in enumerate(raws)]
            if total is not None and row + len(texts) > total:
                raise ValueError(f"{source} grew while being encoded (more than the {total} lines counted)")
            vectors = session.encode(texts, batch_size=batch_size, pooling=how, normalize=do_normalize,
                                     max_tokens=max_tokens)
            writer.write(row, vectors)
            for raw in raws:
                hasher.update(raw)
                bytes_done += len(raw)
            row += len(texts)
            _write_json_atomic(progress_path, {**identity, **about, "rows_done": row,
                                               "prefix_sha256": hasher.hexdigest(), "prefix_bytes": bytes_done})
            bar.update(len(texts))
        if total is not None and row != total:
            raise ValueError(f"{source} changed while being encoded: {row} lines read, {total} counted")
        writer.finish(row)
    except KeyboardInterrupt:
        writer.close()
        print(f"\nbort-infer encode: interrupted after {row} rows; {partial} keeps them; run the same command "
              "with --resume to continue", file=sys.stderr)
        raise
    except BaseException:
        writer.close()
        raise
    finally:
        bar.close()
        if owns_stream:
            stream.close()
    os.replace(partial, out)
    _fsync_dir(out.parent if str(out.parent) else Path("."))
    progress_path.unlink(missing_ok=True)
    now = time.perf_counter()
    return EncodeResult(out, row, hidden, done, now - started, now - embed_started)


def _read_progress(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); pass --overwrite to start over") from None
    if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
        raise ValueError(f"{path} is not a bort-infer encode progress file; pass --overwrite to start over")
    return state


class _MemmapWriter:
    """A known row count: a preallocated .npy, memory-mapped, rows written in place and flushed per chunk."""

    def __init__(self, path: Path, rows: int, hidden: int):
        self.path, self.rows, self.hidden = path, rows, hidden
        self._mm = None

    def open(self, done: int) -> None:
        if self.rows == 0:
            with open(self.path, "wb") as f:
                np.save(f, np.empty((0, self.hidden), dtype=np.float32))
            return
        if done:
            self._mm = np.lib.format.open_memmap(self.path, mode="r+")
            if self._mm.shape != (self.rows, self.hidden) or self._mm.dtype != np.float32:
                shape = self._mm.shape
                self.close()
                raise ValueError(f"cannot resume {self.path}: it holds {shape}, expected {(self.rows, self.hidden)}")
        else:
            self._mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                                 shape=(self.rows, self.hidden))

    def write(self, start: int, vectors: np.ndarray) -> None:
        self._mm[start:start + len(vectors)] = vectors
        self._mm.flush()

    def finish(self, rows: int) -> None:
        if self._mm is not None:
            self._mm.flush()
        self.close()
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())

    def close(self) -> None:
        if self._mm is not None:
            mm, self._mm = self._mm, None
            mm.flush()
            del mm


class _StdinWriter:
    """An unknown row count: a .npy header whose row count is filled in at the end, then rows appended."""

    def __init__(self, path: Path, hidden: int):
        self.path, self.hidden = path, hidden
        self.header_len = len(_npy_header(0, hidden))
        self.row_bytes = 4 * hidden
        self._f = None

    def open(self, done: int) -> None:
        if done:
            shape, dtype = _npy_shape(self.path)
            if len(shape) != 2 or shape[1] != self.hidden or dtype != np.float32:
                raise ValueError(f"cannot resume {self.path}: unexpected array header {shape} {dtype}")
            needed = self.header_len + done * self.row_bytes
            size = self.path.stat().st_size
            if size < needed:
                raise ValueError(f"cannot resume {self.path}: it has {size} bytes, {done} rows need {needed}")
            self._f = open(self.path, "r+b")
            self._f.truncate(needed)  # drop rows written after the last recorded chunk
            self._f.seek(needed)
        else:
            self._f = open(self.path, "wb")
            self._f.write(_npy_header(0, self.hidden))

    def write(self, start: int, vectors: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())

    def finish(self, rows: int) -> None:
        header = _npy_header(rows, self.hidden)
        if len(header) != self.header_len:  # numpy pads headers so the row count can grow in place
            raise RuntimeError("internal error: .npy header length changed with the row count")
        self._f.seek(0)
        self._f.write(header)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# ---------------------------------------------------------------------------------------------- CLI

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


# Options of one path only, and their defaults: giving one on the other path is an error, not a no-op.
_RAY_ONLY = {"column": None, "actors": None, "on_error": None, "model_on_shared_path": False}
_LOCAL_ONLY = {"chunk_size": None, "resume": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `bort-infer encode` arguments (cli.py registers the subparser and calls `run`)."""
    p.add_argument("model", help="exported bort-infer model directory")
    p.add_argument("input", help="text file, one text per line (UTF-8), or - for stdin; with --ray a text or "
                                 "Parquet file, or a directory of them")
    p.add_argument("out", help="output .npy file (with --ray: an output directory of Parquet files)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="texts per model call (default 32)")
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="token budget per model call (optional)")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="default: the model's")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize the vectors (default: the model's)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="onnxruntime threads (default: one per core); with --ray, threads per actor")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (or an interrupted run)")
    local = p.add_argument_group("one machine (.npy output)")
    local.add_argument("--chunk-size", type=_positive_int, default=None,
                       help="lines read, embedded and flushed at a time; bounds memory (default 4096)")
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
        from .integrations.ray import encode_files

        summary = encode_files(args.model, args.input, args.out, address=args.ray, column=args.column,
                               threads_per_actor=args.threads, num_actors=args.actors, batch_size=args.batch_size,
                               max_tokens=args.max_tokens, pooling=args.pooling, normalize=args.normalize,
                               on_error=args.on_error or "null", ship=not args.model_on_shared_path,
                               overwrite=args.overwrite)
        print(summary.describe())
        return 1 if summary.error_rows else 0
    misplaced = _given(args, _RAY_ONLY)
    if misplaced:
        raise ValueError(f"only with --ray ADDRESS: {', '.join(misplaced)}")
    result = encode_file(args.model, args.input, args.out, batch_size=args.batch_size, pooling=args.pooling,
                         normalize=args.normalize, threads=args.threads, chunk_size=args.chunk_size or 4096,
                         max_tokens=args.max_tokens, resume=args.resume, overwrite=args.overwrite)
    resumed = f", {result.resumed_rows} of them from an earlier run" if result.resumed_rows else ""
    print(f"wrote {result.rows} x {result.hidden_size} float32 embeddings to {result.path}{resumed} "
          f"in {result.seconds:.1f}s ({result.sentences_per_second:.1f} sentences/s)")
    return 0
