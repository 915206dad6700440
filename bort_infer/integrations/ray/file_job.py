"""``bort-infer encode --ray``: text or Parquet files in, a directory of Parquet files (input columns +
embedding) out, every input row exactly once."""
from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from ...model_dir import read_metadata
from ...options import DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, EncodeOptions, progress_bar_disabled
from ...textlines import iter_texts, scan_lines
from .actor_plan import ActorPlan, cluster_node_cpus, plan_actors
from .udf import DEFAULT_ROWS_PER_CALL, BadTextError, check_on_error, describe_row, embed_dataset

SUCCESS_FILE = "_SUCCESS"


@dataclass(frozen=True)
class RayEncodeSummary:
    output: str
    rows: int
    error_rows: int
    error_examples: tuple[str, ...]
    seconds: float
    plan: ActorPlan
    input_format: str

    def describe(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        text = (f"wrote {self.rows} rows ({self.input_format} input + embedding) to {self.output} in "
                f"{self.seconds:.1f}s ({rate:.1f} sentences/s) with {self.plan.num_actors} actor(s) x "
                f"{self.plan.threads_per_actor} thread(s)")
        if self.error_rows:
            text += (f"\n{self.error_rows} row(s) have a null embedding (their text is not a string), e.g. "
                     + "; ".join(self.error_examples))
        return text


def _filesystem(path: str):
    from pyarrow import fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _list_inputs(path: str) -> tuple[list[str], str]:
    """The input files (a file, or a directory's files, skipping names starting with '.' or '_') and
    their format: 'parquet' when every file ends in .parquet, else 'text'."""
    from pyarrow import fs as pafs

    filesystem, root = _filesystem(path)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {path} does not exist")
    if info.type == pafs.FileType.File:
        files = [root]
    else:
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and not any(part.startswith((".", "_")) for part in Path(f.path).relative_to(root).parts))
        if not files:
            raise FileNotFoundError(f"input directory {path} holds no files")
    parquet = [f.endswith(".parquet") for f in files]
    if all(parquet):
        fmt = "parquet"
    elif not any(parquet):
        fmt = "text"
    else:
        raise ValueError(f"{path} mixes Parquet and other files; give one kind")
    if "://" in path:
        scheme = path.split("://", 1)[0]
        files = [f"{scheme}://{f}" for f in files]
    return files, fmt


# One large input file must not become one actor task: Ray Data hands all the rows one read task produced
# to a single actor call. So the driver cuts the input into pieces (line-aligned byte ranges of text files,
# row ranges of Parquet files), about PIECES_PER_CPU per cluster CPU, each read by its own task.
PIECES_PER_CPU = 4
MIN_PIECE_BYTES, MAX_PIECE_BYTES = 1 << 14, 8 << 20  # ~300 and ~150k short sentences
MAX_PIECE_CALLS = 64  # a Parquet piece holds at most this many rows_per_call


def _plan_text_file(path: str, piece_bytes: int) -> tuple[int, list[dict]]:
    """Ray task: a text file's line count and its pieces, checking on the way that it is valid UTF-8."""
    filesystem, local = _filesystem(path)
    with filesystem.open_input_stream(local) as f:
        rows, cuts = scan_lines(f, path, cut_bytes=piece_bytes)
    starts = [(0, 0)] + cuts
    ends = [offset for offset, _ in cuts] + [filesystem.get_file_info(local).size]
    return rows, [{"path": path, "start": b, "end": e, "line": line} for (b, line), e in zip(starts, ends)]


def _parquet_rows(path: str, column: str) -> int:
    """Ray task: a Parquet file's row count from its footer, checking that it has the text column."""
    import pyarrow.parquet as pq

    filesystem, local = _filesystem(path)
    with filesystem.open_input_file(local) as f:
        footer = pq.ParquetFile(f)
        names = footer.schema_arrow.names
        if column not in names:
            raise ValueError(f"{path} has no column {column!r} (columns: {', '.join(names)}); pass --column")
        return footer.metadata.num_rows


def _plan_inputs(files: list[str], fmt: str, column: str, rows_per_call: int) -> tuple[int, list[dict]]:
    """(input rows, pieces), planned by Ray tasks that read the inputs where the workers read them."""
    target = PIECES_PER_CPU * max(int(sum(cluster_node_cpus())), 1)
    try:
        if fmt == "text":
            filesystem, _ = _filesystem(files[0])
            total_bytes = sum(info.size for info in filesystem.get_file_info([_filesystem(f)[1] for f in files]))
            piece_bytes = min(max(total_bytes // target, MIN_PIECE_BYTES), MAX_PIECE_BYTES)
            plan = ray.remote(num_cpus=0)(_plan_text_file)
            planned = ray.get([plan.remote(f, piece_bytes) for f in files])
            return sum(rows for rows, _ in planned), [piece for _, pieces in planned for piece in pieces]
        count = ray.remote(num_cpus=0)(_parquet_rows)
        rows = ray.get([count.remote(f, column) for f in files])
    except ray.exceptions.RayError as exc:
        failure = _user_error(exc)
        if failure is None:
            raise
        name, message = failure
        raise ValueError(message) if name == "ValueError" else \
            RuntimeError(f"cannot read the input: {name}: {message}") from None
    piece_rows = min(max(-(-sum(rows) // target), rows_per_call), MAX_PIECE_CALLS * rows_per_call)
    pieces = [{"path": f, "start": start, "end": min(start + piece_rows, n)}
              for f, n in zip(files, rows) for start in range(0, n, piece_rows)]
    return sum(rows), pieces


def _read_text_pieces(batch: dict, rows_per_block: int):
    """Ray task: text pieces (line-aligned byte ranges) -> rows (path, line, text), under bort_infer.textlines'
    line rules."""
    for path, start, end, line in zip(batch["path"], batch["start"], batch["end"], batch["line"]):
        path, start, end, line = str(path), int(start), int(end), int(line)
        filesystem, local = _filesystem(path)
        with filesystem.open_input_file(local) as f:
            f.seek(start)
            texts = iter_texts(f, path, first_line=line, limit=end - start)
            while block := list(itertools.islice(texts, rows_per_block)):
                yield _text_table(path, line, block)
                line += len(block)


def _text_table(path: str, start: int, texts: list[str]) -> pa.Table:
    return pa.table({"path": pa.array([path] * len(texts), type=pa.string()),
                     "line": pa.array(np.arange(start, start + len(texts), dtype=np.int64)),
                     "text": pa.array(texts, type=pa.string())})


def _read_parquet_pieces(batch: dict, rows_per_block: int):
    """Ray task: Parquet pieces (row ranges) → their rows, reading only the row groups they touch."""
    import pyarrow.parquet as pq

    for path, start, end in zip(batch["path"], batch["start"], batch["end"]):
        path, start, end = str(path), int(start), int(end)
        filesystem, local = _filesystem(path)
        with filesystem.open_input_file(local) as f:
            parquet = pq.ParquetFile(f)
            groups, position, offset = [], None, 0
            for g in range(parquet.num_row_groups):
                n = parquet.metadata.row_group(g).num_rows
                if offset < end and offset + n > start:
                    groups.append(g)
                    position = offset if position is None else position
                offset += n
            for record_batch in parquet.iter_batches(batch_size=rows_per_block, row_groups=groups):
                lo, hi = max(start - position, 0), min(end - position, record_batch.num_rows)
                if hi > lo:
                    yield pa.Table.from_batches([record_batch.slice(lo, hi - lo)])
                position += record_batch.num_rows


def encode_files(model_dir: str | Path, input_path: str, output_path: str, *, address: str = "auto",
                 column: str | None = None, threads_per_actor: int | None = None, num_actors: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int | None = None,
                 rows_per_call: int = DEFAULT_ROWS_PER_CALL,
                 pooling: str | None = None, normalize: bool | None = None, on_error: str = "null",
                 ship: bool = True, overwrite: bool = False, show_progress: bool | None = None,
                 long_texts: str = "truncate", stride: int = DEFAULT_STRIDE) -> RayEncodeSummary:
    """`bort-infer encode --ray ADDRESS`: text files (one text per line; rows get ``path``, ``line`` (0-based)
    and ``text``) or Parquet files (rows keep their columns; ``column`` names the text, default ``text``) →
    a directory of Parquet files with an ``embedding`` column added (null where the text is not a
    string, with on_error="null"). Input and output must be readable/writable from every node: a shared
    filesystem, or a URI such as s3://bucket/prefix.

    Before embedding, Ray tasks count the input rows (Parquet footers; the lines of text files, checking
    that they are valid UTF-8) and cut the input into pieces read in parallel. Every input row is one
    output row: the output's row count is checked against the input's before the output is declared
    complete. A local output is written to OUT.partial/ and renamed to OUT when complete; a URI output is
    written in place (after removing an old one, with ``overwrite``). Either way a ``_SUCCESS`` file is
    written last, and a failed run removes what it wrote. If Ray is already initialized in this process,
    that connection is used and ``address`` is ignored.
    """
    from pyarrow import fs as pafs

    started = time.perf_counter()
    check_on_error(on_error)
    EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                  long_texts=long_texts, stride=stride)  # before Ray
    if ship or Path(model_dir).exists():
        read_metadata(model_dir)  # a bad model directory is named here, before any Ray work
    files, fmt = _list_inputs(str(input_path))
    if fmt == "text" and column not in (None, "text"):
        raise ValueError(f"column {column!r} names a Parquet column; rows read from text files are "
                         "(path, line, text)")
    column = column or "text"

    out = str(output_path)
    remote = "://" in out
    out_fs, out_local = _filesystem(out)
    if not remote and not Path(out_local).parent.is_dir():
        raise FileNotFoundError(f"output directory {Path(out_local).parent} does not exist")
    if out_fs.get_file_info(out_local).type != pafs.FileType.NotFound:
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        _check_replaceable(out_fs, out_local, out)

    # A local output is built beside OUT and renamed into place; a URI (no rename on object stores) in place.
    target = out if remote else out_local + ".partial"
    target_local = out_local if remote else target

    started_ray = False
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, logging_level="WARNING",
                     include_dashboard=False if address == "local" else None)
        except ConnectionError as exc:
            raise RuntimeError(f"cannot connect to a Ray cluster at {address!r} ({exc}); start one with "
                               "`ray start --head`, or use --ray local for a one-machine run") from None
        started_ray = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress_bar_disabled(show_progress) is not True
        expected, pieces = _plan_inputs(files, fmt, column, rows_per_call)
        reader = _read_parquet_pieces if fmt == "parquet" else _read_text_pieces
        nodes = cluster_node_cpus()
        plan = plan_actors(nodes, threads_per_actor, num_actors, reserve_cpus=0)
        _remove(out_fs, target_local)  # a stale OUT.partial, or (URI, overwrite) the old output
        if expected == 0:  # nothing to embed (empty files): an empty, complete output
            out_fs.create_dir(target_local)
            return _complete(out_fs, out, out_local, target_local, remote, 0, plan, fmt, started)
        # Reads and writes ask Ray for no CPU, so the actor pool can hold every core without starving them.
        ds = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
            reader, fn_kwargs={"rows_per_block": rows_per_call}, batch_size=1, num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=min(len(pieces), max(2, len(nodes) * 2))))
        embedded = embed_dataset(ds, str(model_dir), column, ship=ship, threads_per_actor=plan.threads_per_actor,
                                 num_actors=plan.num_actors, batch_size=batch_size, max_tokens=max_tokens,
                                 rows_per_call=rows_per_call, pooling=pooling, normalize=normalize,
                                 on_error=on_error, id_column=["path", "line"] if fmt == "text" else None,
                                 reserve_cpus=0, long_texts=long_texts, stride=stride)
        failure = None
        try:
            embedded.write_parquet(target, ray_remote_args={"num_cpus": 0})
        except Exception as exc:
            _remove(out_fs, target_local)
            failure = _user_error(exc)
            if failure is None:
                raise
        if failure is not None:
            # Raised without the Ray exception: its traceback holds the failed execution, whose actors keep
            # their CPUs for as long as it is referenced.
            del embedded, ds
            name, message = failure
            raise BadTextError(message) if name == BadTextError.__name__ else \
                RuntimeError(f"the Ray job failed: {name}: {message}")
    finally:
        if started_ray:
            ray.shutdown()
    return _complete(out_fs, out, out_local, target_local, remote, expected, plan, fmt, started, column)


def _complete(out_fs, out: str, out_local: str, target_local: str, remote: bool, expected: int, plan: ActorPlan,
              fmt: str, started: float, column: str = "text") -> RayEncodeSummary:
    """Check that the output holds one row per input row, then mark it complete (_SUCCESS, rename)."""
    rows, error_rows, examples = _summarize(out_fs, target_local, column) if expected else (0, 0, ())
    if rows != expected:
        _remove(out_fs, target_local)
        raise RuntimeError(f"the Ray job wrote {rows} rows for {expected} input rows; its output was removed")
    with out_fs.open_output_stream(f"{target_local}/{SUCCESS_FILE}"):
        pass
    if not remote:
        _remove(out_fs, out_local)
        os.replace(target_local, out_local)
    return RayEncodeSummary(out, rows, error_rows, examples, time.perf_counter() - started, plan, fmt)


def _check_replaceable(filesystem, path: str, out: str) -> None:
    """--overwrite deletes OUT: refuse unless it is what a run writes (Parquet files and _SUCCESS), or empty."""
    from pyarrow import fs as pafs

    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        raise FileExistsError(f"{out} is a file, not an encode --ray output; refusing to replace it")
    entries = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    foreign = sorted({e.path[len(path):].lstrip("/").split("/")[0] for e in entries
                      if e.type != pafs.FileType.File or not (e.base_name.endswith(".parquet")
                                                              or e.base_name == SUCCESS_FILE)})
    if foreign:
        raise FileExistsError(f"{out} holds files that are not an encode --ray output ({', '.join(foreign[:5])}); "
                              "refusing to replace it")


def _remove(filesystem, path: str) -> None:
    from pyarrow import fs as pafs

    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    elif kind == pafs.FileType.File:
        filesystem.delete_file(path)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$", re.M)


def _user_error(exc: BaseException) -> tuple[str, str] | None:
    """(class name, message) of the exception a task or UDF raised inside a failed Ray Data job. Ray
    re-raises it as a RayTaskError(UserCodeException) that keeps the original only as traceback text."""
    if not isinstance(exc, ray.exceptions.RayError):
        return None
    text = _ANSI.sub("", str(exc)).split("The above exception was the direct cause", 1)[0]
    found = _ERROR_LINE.findall(text)
    if not found:
        return None
    name, message = found[-1]
    return name.rsplit(".", 1)[-1], message.strip()


def _summarize(filesystem, directory: str, text_column: str) -> tuple[int, int, tuple[str, ...]]:
    """Rows written, rows with a null embedding, and up to 5 of those named by their other columns."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    dataset = pads.dataset(directory, format="parquet", filesystem=filesystem)
    unembedded = pc.field("embedding").is_null()
    bad_rows = dataset.count_rows(filter=unembedded)
    id_cols = [c for c in dataset.schema.names if c not in (text_column, "embedding")]
    examples = []
    if bad_rows:
        for row in dataset.head(5, columns=id_cols + [text_column], filter=unembedded).to_pylist():
            text = row.pop(text_column)
            examples.append(f"{describe_row(row) or 'a row'} ({type(text).__name__})")
    return dataset.count_rows(), bad_rows, tuple(examples)
