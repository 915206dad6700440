"""Embed a text file, one text per line (the rules of ``bort_infer.textlines``), into a float32 (lines, hidden)
.npy in input order, resumably: the engine of `bort-infer encode` without --ray.

Run-time world: onnxruntime, numpy, tokenizers and tqdm only.

Output. Rows go to ``OUT.partial`` as they are computed, one chunk at a time, and ``OUT`` appears only
when every row is there (an atomic rename): a file named ``OUT`` is always complete. For a file input the
lines are counted first and ``OUT.partial`` is a preallocated .npy (``np.lib.format.open_memmap``); for
stdin the rows are appended after a header whose row count is filled in when the input ends (numpy pads
the header so that the count can grow in place). After each chunk is flushed to disk, ``OUT.progress``
records how many rows are done and a SHA-256 of the input bytes they came from, so ``--resume`` continues
an interrupted run from its last chunk, after checking that input, model and options are the same.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .model_dir import METADATA_FILE, ModelDirectoryError
from .options import DEFAULT_BATCH_SIZE, DEFAULT_FILE_CHUNK_SIZE, EncodeOptions, progress_bar_disabled
from .textlines import count_lines, decode_line, iter_raw_lines

PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"
PROGRESS_FORMAT = "bort-infer-encode-progress"
PROGRESS_VERSION = 1


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
                batch_size: int = DEFAULT_BATCH_SIZE, pooling: str | None = None, normalize: bool | None = None,
                threads: int | None = None, chunk_size: int = DEFAULT_FILE_CHUNK_SIZE, max_tokens: int | None = None,
                resume: bool = False, overwrite: bool = False, show_progress: bool | None = None,
                stdin: BinaryIO | None = None, session=None) -> EncodeResult:
    """Embed every line of ``input_path`` (``"-"``: stdin) into a float32 (lines, hidden) .npy at
    ``output_path``; see the module docstring for line rules, atomicity and resumption.

    Memory is bounded by ``chunk_size`` lines (and their vectors), not by the corpus. ``session`` (an open
    ``bort_infer.Session`` for ``model_dir``) may be passed to reuse one.
    """
    from .session import Session

    started = time.perf_counter()
    options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                            show_progress_bar=show_progress, chunk_size=chunk_size)
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
    how = options.pooling_for(meta.pooling)
    do_normalize = options.normalize_for(meta.normalize)
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

    disable = progress_bar_disabled(options.show_progress_bar)
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
                if len(raws) == options.chunk_size:
                    break
            if not raws:
                break
            texts = [decode_line(r, row + i + 1, source, first=(row + i == 0)) for i, r in enumerate(raws)]
            if total is not None and row + len(texts) > total:
                raise ValueError(f"{source} grew while being encoded (more than the {total} lines counted)")
            vectors = session.encode(texts, batch_size=options.batch_size, max_tokens=options.max_tokens,
                                     pooling=how, normalize=do_normalize)
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
