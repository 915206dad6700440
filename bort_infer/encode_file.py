"""Embed a text file, one text per line (the rules of ``bort_infer.textlines``), into a float32 (lines, hidden)
.npy in input order, resumably: the engine of `bort-infer encode` without --ray.

Run-time world: onnxruntime, numpy, tokenizers and tqdm only.

Output. Rows go to ``OUT.partial`` as they are computed, one chunk at a time, appended after a .npy header
with ordinary writes (a full disk is an error naming the path, never a crash), and ``OUT`` appears only
when every row is there (an atomic rename): a file named ``OUT`` is always complete. The header holds the
row count when it is known (a file input, whose lines are counted first) and is rewritten with the final
count at the end (stdin; numpy pads the header so that the count can grow in place). After each chunk is
flushed to disk, ``OUT.progress`` records how many rows are done, a SHA-256 of the input bytes they came
from and one of every file of the model directory, so ``--resume`` continues an interrupted run from its
last chunk after checking that input, model, options and ``OUT.partial`` itself agree with it.

One run at a time per OUT: a run holds an exclusive lock (flock) on ``OUT.partial`` until OUT is in place,
and a second run on the same OUT fails at once.
"""
from __future__ import annotations

import errno
import fcntl
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

from .model_dir import file_digests
from .options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FILE_CHUNK_SIZE,
    DEFAULT_STRIDE,
    EncodeOptions,
    progress_bar_disabled,
)
from .textlines import count_lines, decode_line, iter_raw_lines

PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"
PROGRESS_FORMAT = "bort-infer-encode-progress"
PROGRESS_VERSION = 2
_ROW_DTYPE = np.dtype("<f4")


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
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(_ROW_DTYPE),
                                               "fortran_order": False, "shape": (rows, hidden)})
    return buf.getvalue()


def _read_npy_header(path: Path) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, header length) of a .npy file; a ValueError names the path."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            return shape, fortran, dtype, f.tell()
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{path} is not a .npy file ({exc})") from None


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


class _WriteError(OSError):
    """A write that failed (a full disk, a quota, an I/O error), said in one line naming the path and what
    is kept for --resume."""

    def __init__(self, exc: OSError, path: Path, rows_done: int):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            what = f"no space left on the device holding {path}"
            then = (f"; free some space, then run the same command with --resume to continue after the {rows_done} "
                    "rows done")
        else:
            what = f"cannot write {path}: {exc.strerror or exc}"
            then = f"; the {rows_done} rows done are kept: run the same command with --resume to continue"
        super().__init__(what + (then if rows_done else ""))
        self.errno = exc.errno


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_npy(path: Path) -> bool:
    """Whether --overwrite may replace `path`: a file that starts as every .npy does."""
    try:
        with open(path, "rb") as f:
            return f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX
    except OSError:
        return False


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    shape, _, dtype, _ = _read_npy_header(path)
    return shape, dtype


# ---------------------------------------------------------------------------------------------- encode

def encode_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                batch_size: int = DEFAULT_BATCH_SIZE, pooling: str | None = None, normalize: bool | None = None,
                threads: int | None = None, chunk_size: int = DEFAULT_FILE_CHUNK_SIZE, max_tokens: int | None = None,
                resume: bool = False, overwrite: bool = False, show_progress: bool | None = None,
                stdin: BinaryIO | None = None, session=None, long_texts: str = "truncate",
                stride: int = DEFAULT_STRIDE) -> EncodeResult:
    """Embed every line of ``input_path`` (``"-"``: stdin) into a float32 (lines, hidden) .npy at
    ``output_path``; see the module docstring for line rules, atomicity, locking and resumption.

    Memory is bounded by ``chunk_size`` lines (and their vectors), not by the corpus. ``session`` (an open
    ``bort_infer.Session`` for ``model_dir``) may be passed to reuse one. long_texts, stride: as for
    Session.encode ("chunk": a line over the model's limit is encoded as overlapping windows).
    """
    options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                            show_progress_bar=show_progress, chunk_size=chunk_size, long_texts=long_texts,
                            stride=stride)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")

    from_stdin = str(input_path) == "-"
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
    for ours in (out, out.with_name(out.name + PARTIAL_SUFFIX), out.with_name(out.name + PROGRESS_SUFFIX)):
        if not from_stdin and ours.exists() and os.path.samefile(ours, input_path):
            raise ValueError(f"the output {ours} is the input; give another file name")
    if overwrite and out.exists() and not _is_npy(out):
        raise FileExistsError(f"{out} exists and is not a .npy file; refusing to replace it (remove it yourself "
                              "if that is what you want)")

    run = _Run(out, input_path, from_stdin, options, resume, overwrite, stdin)
    with _PartialLock(run.partial) as lock:
        return run.execute(lock, model_dir, threads, session)


class _PartialLock:
    """OUT.partial, opened (created if absent) and exclusively locked (flock) for the whole run, so that a
    second run on the same OUT fails at once instead of interleaving its rows with ours. ``existed``: the
    file was there before (an interrupted run); a file this lock created and nobody wrote is removed."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        self.existed = False
        self.written = False  # set once the run owns the content (truncated or appended to it)

    def __enter__(self) -> _PartialLock:
        while True:
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # renamed into place by a run that just finished
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BlockingIOError(f"another bort-infer encode is writing {self.path} (it holds the file's "
                                      "lock); wait for it to finish, or stop it and rerun with --resume") from None
            # Between open and lock the file may have been renamed to OUT by a run that finished: then this
            # lock is on OUT's file, not on the one at our path. Start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd, self.existed = fd, not created
                return self
            os.close(fd)

    def remove(self) -> None:
        """Unlink OUT.partial while still holding its lock (a run waiting on the old file then retries)."""
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc_info) -> None:
        if not self.existed and not self.written:
            self.remove()
        os.close(self.fd)


class _Run:
    """One `encode` run: its paths and options, what --resume must match, and the loop over chunks."""

    def __init__(self, out: Path, input_path, from_stdin: bool, options: EncodeOptions, resume: bool,
                 overwrite: bool, stdin: BinaryIO | None):
        self.out, self.input_path, self.from_stdin, self.options = out, input_path, from_stdin, options
        self.resume, self.overwrite, self.stdin = resume, overwrite, stdin
        self.source = "stdin" if from_stdin else str(input_path)
        self.partial = out.with_name(out.name + PARTIAL_SUFFIX)
        self.progress_path = out.with_name(out.name + PROGRESS_SUFFIX)
        self.started = time.perf_counter()

    def execute(self, lock: _PartialLock, model_dir, threads: int | None, session) -> EncodeResult:
        from .session import Session

        out, partial, progress_path, options = self.out, self.partial, self.progress_path, self.options
        # Refuse before loading the model or reading a large input.
        if not self.resume and not self.overwrite:
            if out.exists():
                raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
            if lock.existed:
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
        # Every file of the model (an output written inside the model directory excepted): a changed
        # model.onnx must not mix two models' vectors in one output.
        ours = [out, partial, progress_path, progress_path.with_name(progress_path.name + ".tmp")]
        model_files = file_digests(model_dir, skip=ours)
        total = None if self.from_stdin else count_lines(self.input_path)

        # What must match for --resume (the input's content is checked by the SHA-256 of the rows done, so a
        # moved file or model directory can still be resumed); the paths are recorded for people.
        identity = {
            "format": PROGRESS_FORMAT, "version": PROGRESS_VERSION,
            "rows_total": total, "hidden_size": hidden, "dtype": "float32",
            "pooling": how, "normalize": do_normalize, "model_files": model_files,
        }
        if options.long_texts == "chunk":  # (a truncating run's record stays as it always was)
            identity.update(long_texts="chunk", stride=options.stride)
        about = {"input": "-" if self.from_stdin else str(Path(self.input_path).resolve()),
                 "model": str(model_dir.resolve()), "chunk_size": options.chunk_size}

        if self.resume and out.exists() and not lock.existed:
            # The run finished (OUT is only ever renamed into place complete): nothing to resume. Its content is
            # not compared with the input again; --overwrite recomputes it.
            shape, dtype = _npy_shape(out)
            if total is not None and shape == (total, hidden) and dtype == np.float32:
                print(f"bort-infer encode: {out} is already complete ({total} rows); nothing to resume",
                      file=sys.stderr)
                return EncodeResult(out, total, hidden, total, time.perf_counter() - self.started)
            if total is None:
                raise ValueError(f"{out} exists and there is no interrupted run to resume; pass --overwrite to "
                                 "replace it")
            raise ValueError(f"{out} exists with shape {shape}, which does not match this input ({total} rows x "
                             f"{hidden}); pass --overwrite to replace it")

        done = 0
        prefix_sha = hashlib.sha256().hexdigest()
        prefix_bytes = 0
        header_len = len(_npy_header(total or 0, hidden))
        if lock.existed and self.resume:
            state = _read_progress(progress_path)
            if state is not None:
                _check_resumable(state, identity, partial, model_dir)
                done, prefix_sha, prefix_bytes = state["rows_done"], state["prefix_sha256"], state["prefix_bytes"]
                header_len = _check_partial(partial, state, total, hidden)
        if self.resume and not lock.existed:
            print(f"bort-infer encode: nothing to resume ({partial} does not exist); starting", file=sys.stderr)

        writer = _RowWriter(lock, hidden, header_len)

        def record(rows: int, sha: str, nbytes: int) -> None:
            payload = {**identity, **about, "rows_done": rows, "prefix_sha256": sha, "prefix_bytes": nbytes}
            try:
                _write_json_atomic(progress_path, payload)
            except OSError as exc:
                raise _WriteError(exc, progress_path, rows) from None

        try:
            writer.start(done, total or 0)
            record(done, prefix_sha, prefix_bytes)
            row = self._embed(session, writer, record, done, prefix_sha, prefix_bytes, total, how, do_normalize)
            writer.finish()
            os.replace(partial, out)
        except BaseException as exc:
            if writer.rows == 0:  # nothing worth resuming: leave nothing behind
                lock.remove()
                progress_path.unlink(missing_ok=True)
            elif not isinstance(exc, Exception):  # Ctrl-C, or SIGTERM as the command line raises it
                print(f"\nbort-infer encode: interrupted after {writer.rows} rows; {partial} keeps them; run the "
                      "same command with --resume to continue", file=sys.stderr)
            raise
        _fsync_dir(out.parent if str(out.parent) else Path("."))
        progress_path.unlink(missing_ok=True)
        now = time.perf_counter()
        return EncodeResult(out, row, hidden, done, now - self.started, now - self.embed_started)

    def _embed(self, session, writer: _RowWriter, record, done: int, prefix_sha: str, prefix_bytes: int,
               total: int | None, how: str, do_normalize: bool) -> int:
        """Read, embed and write every chunk after the first ``done`` rows; the rows written."""
        from tqdm.auto import tqdm

        options, source, partial = self.options, self.source, self.partial
        self.embed_started = time.perf_counter()
        bar = tqdm(total=total, initial=done, desc="encode", unit=" sentences",
                   disable=progress_bar_disabled(options.show_progress_bar), dynamic_ncols=True)
        owns_stream = self.stdin is None and not self.from_stdin
        stream = self.stdin if self.stdin is not None else (
            sys.stdin.buffer if self.from_stdin else open(self.input_path, "rb"))
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
                raise ValueError(f"cannot resume {partial}: the first {done} lines of {source} are not the ones "
                                 "its rows came from; pass --overwrite to start over")
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
                                         pooling=how, normalize=do_normalize, long_texts=options.long_texts,
                                         stride=options.stride)
                if vectors.shape != (len(texts), writer.hidden):  # one row per text, or nothing is written
                    raise RuntimeError(f"internal error: {len(texts)} texts gave vectors of shape {vectors.shape}")
                writer.write(vectors)
                for raw in raws:
                    hasher.update(raw)
                    bytes_done += len(raw)
                row += len(texts)
                record(row, hasher.hexdigest(), bytes_done)
                bar.update(len(texts))
            if total is not None and row != total:
                raise ValueError(f"{source} changed while being encoded: {row} lines read, {total} counted")
            return row
        finally:
            bar.close()
            if owns_stream:
                stream.close()


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


def _check_resumable(state: dict, identity: dict, partial: Path, model_dir: Path) -> None:
    """Refuse to resume a run of another version, input size, model or options."""
    if state.get("version") != PROGRESS_VERSION:
        raise ValueError(f"cannot resume {partial}: its progress file is of version {state.get('version')!r}, "
                         f"this bort-infer writes version {PROGRESS_VERSION}; pass --overwrite to start over")
    was, now = state.get("model_files"), identity["model_files"]
    if was != now:
        was = was if isinstance(was, dict) else {}
        changes = ([f"{name} changed" for name in sorted(was.keys() & now.keys()) if was[name] != now[name]]
                   + [f"{name} added" for name in sorted(now.keys() - was.keys())]
                   + [f"{name} removed" for name in sorted(was.keys() - now.keys())])
        raise ValueError(f"cannot resume {partial}: the model directory {model_dir} changed since its rows were "
                         f"written ({', '.join(changes[:5])}); pass --overwrite to start over")
    mismatched = [k for k, v in identity.items() if state.get(k) != v]
    if mismatched:
        detail = ", ".join(f"{k}: was {state.get(k)!r}, now {identity[k]!r}" for k in mismatched)
        raise ValueError(f"cannot resume {partial}: the run it came from differs ({detail}); "
                         "pass --overwrite to start over")
    for key in ("rows_done", "prefix_bytes", "chunk_size"):
        if not isinstance(state.get(key), int) or state[key] < 0:
            raise ValueError(f"cannot resume {partial}: its progress file has no valid {key}; pass --overwrite to "
                             "start over")


def _check_partial(partial: Path, state: dict, total: int | None, hidden: int) -> int:
    """Check OUT.partial against what its progress file says was written (the same rule for a file and
    stdin), so that a truncated, extended or foreign file is never resumed into wrong rows; returns the
    header's length."""
    done = state["rows_done"]

    def refuse(what: str) -> ValueError:
        return ValueError(f"cannot resume {partial}: {what}, which does not match its progress file ({done} rows "
                          "done); pass --overwrite to start over")

    try:
        shape, fortran, dtype, header_len = _read_npy_header(partial)
    except ValueError:
        raise refuse("it is not a .npy file") from None
    if dtype != _ROW_DTYPE:
        raise refuse(f"its rows are {dtype} ({dtype.str}), not little-endian float32")
    if fortran:
        raise refuse("it is in Fortran (column-major) order")
    # A file's header holds its row count from the start; stdin's holds 0 until the last chunk is written.
    rows = (total,) if total is not None else (0, done)
    if len(shape) != 2 or shape[1] != hidden or shape[0] not in rows:
        raise refuse(f"its header says shape {shape}, expected ({rows[0]}, {hidden})")
    if header_len != len(_npy_header(0, hidden)):
        raise refuse(f"its header ({header_len} bytes) is not the one bort-infer writes")
    row_bytes = _ROW_DTYPE.itemsize * hidden
    needed = header_len + done * row_bytes
    # A kill between writing a chunk and recording it leaves up to one chunk (of that run's size) more.
    most = needed + state["chunk_size"] * row_bytes
    size = partial.stat().st_size
    if not needed <= size <= most:
        expected = f"{needed} bytes" + (f" to {most}" if most > needed else "")
        raise refuse(f"it has {size} bytes, {done} rows take {expected}")
    return header_len


class _RowWriter:
    """Rows appended to the locked OUT.partial after a .npy header, with plain writes: a full disk is an
    OSError naming the path (a memory-mapped file would die of SIGBUS), and rows on disk are never torn
    by a later error."""

    def __init__(self, lock: _PartialLock, hidden: int, header_len: int):
        self.lock, self.hidden, self.header_len = lock, hidden, header_len
        self.row_bytes = _ROW_DTYPE.itemsize * hidden
        self.rows = 0

    def start(self, done: int, header_rows: int) -> None:
        """Continue after ``done`` rows (dropping anything after them), or start with a fresh header."""
        self.lock.written = True
        if done:
            os.ftruncate(self.lock.fd, self.header_len + done * self.row_bytes)
            self.rows = done
            return
        os.ftruncate(self.lock.fd, 0)
        header = _npy_header(header_rows, self.hidden)
        if len(header) != self.header_len:
            raise RuntimeError("internal error: .npy header length changed with the row count")
        self._pwrite(header, 0)

    def write(self, vectors: np.ndarray) -> None:
        self._pwrite(np.ascontiguousarray(vectors, dtype=_ROW_DTYPE).tobytes(),
                     self.header_len + self.rows * self.row_bytes)
        self._fsync()
        self.rows += len(vectors)

    def finish(self) -> None:
        # numpy pads headers so that the row count can grow in place
        self._pwrite(_npy_header(self.rows, self.hidden), 0)
        self._fsync()

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.lock.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise _WriteError(exc, self.lock.path, self.rows) from None

    def _fsync(self) -> None:
        try:
            os.fsync(self.lock.fd)
        except OSError as exc:
            raise _WriteError(exc, self.lock.path, self.rows) from None
