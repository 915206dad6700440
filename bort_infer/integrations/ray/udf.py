"""The embedding UDF: ``EmbedBatch`` for ``Dataset.map_batches``, ``embed_dataset`` around it, and
``embeddings_to_numpy`` for its output column."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from ...model_dir import read_metadata
from ...options import DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, EncodeOptions, check_positive_int
from .actor_plan import cluster_node_cpus, plan_actors
from .shipping import ShippedModel, ship_model

DEFAULT_ROWS_PER_CALL = 1024
log = logging.getLogger(__name__)


class BadTextError(ValueError):
    """Rows whose text is not a str; the message names each row by its id."""



class EmbedBatch:
    """``ds.map_batches(EmbedBatch, fn_constructor_kwargs=dict(model=..., column="text"),
    batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=N), num_cpus=threads)``.

    model: a ShippedModel (from ship_model) or a model directory path readable on every node.
    threads: onnxruntime threads of this actor's Session (match the actor's num_cpus).
    batch_size / max_tokens: rows / token budget per model call (Session.encode); pooling, normalize:
    None for the model's defaults; long_texts, stride: as for Session.encode. on_error ("null" or "raise"),
    id_column: see the module docstring.
    Batches may come as pyarrow (preferred: no copy), pandas or a dict of numpy arrays; the output is
    pyarrow.
    """

    def __init__(self, model: ShippedModel | str | Path, column: str = "text", output_column: str = "embedding",
                 threads: int | None = 1, batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int | None = None,
                 pooling: str | None = None, normalize: bool | None = None, on_error: str = "null",
                 id_column: str | list[str] | None = None, long_texts: str = "truncate",
                 stride: int = DEFAULT_STRIDE):
        from ...session import Session

        check_on_error(on_error)
        self.options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                                     long_texts=long_texts, stride=stride)
        path = model.materialize() if isinstance(model, ShippedModel) else Path(model)
        self.session = Session(path, threads=threads)
        self.hidden = self.session.hidden_size
        self.column, self.output_column = column, output_column
        self.on_error = on_error
        self.id_columns = [id_column] if isinstance(id_column, str) else list(id_column or [])

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not isinstance(batch, pa.Table):  # batch_format "pandas" or "numpy"
            batch = pa.Table.from_pandas(batch, preserve_index=False) if hasattr(batch, "iloc") else pa.table(batch)
        names = batch.column_names
        if self.column not in names:
            raise KeyError(f"text column {self.column!r} is not in the dataset (columns: {', '.join(names)})")
        if self.output_column in names:
            raise ValueError(f"the dataset already has a column {self.output_column!r}; choose another "
                             "output_column")
        texts = batch.column(self.column).to_pylist()
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            shown = "; ".join(f"{self._row_id(batch, i)} ({type(texts[i]).__name__})" for i in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            message = f"{len(bad)} row(s) have a {self.column!r} that is not a str: {shown}{more}"
            if self.on_error == "raise":
                raise BadTextError(message)
            log.warning("%s; they get a null %r", message, self.output_column)
        vectors = np.zeros((len(texts), self.hidden), dtype=np.float32)
        if bad:
            bad_set = set(bad)
            good = [i for i in range(len(texts)) if i not in bad_set]
            if good:
                vectors[good] = self.session.encode([texts[i] for i in good], **self.options.session_kwargs())
            valid = np.ones(len(texts), dtype=bool)
            valid[bad] = False
        else:
            if texts:
                vectors[:] = self.session.encode(texts, **self.options.session_kwargs())
            valid = None
        return batch.append_column(self.output_column, _fixed_size_list(vectors, valid))

    def _row_id(self, batch: pa.Table, i: int) -> str:
        cols = self.id_columns or [c for c in batch.column_names if c != self.column]
        if not cols:
            return f"row {i} of a batch (the dataset has no other column to name it by)"
        return describe_row({c: batch.column(c)[i].as_py() if c in batch.column_names else "<missing>"
                              for c in cols})


def check_on_error(on_error: str) -> None:
    if on_error not in ("null", "raise"):
        raise ValueError(f"on_error must be 'null' or 'raise', got {on_error!r}")


def describe_row(values: dict) -> str:
    """``id=7, source='doc-3'``: how an error names a row (long values cut)."""
    parts = []
    for name, value in values.items():
        text = repr(value)
        parts.append(f"{name}={text[:80] + '...' if len(text) > 80 else text}")
    return ", ".join(parts)


def _fixed_size_list(vectors: np.ndarray, valid: np.ndarray | None) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    out = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    if valid is None:
        return out
    bitmap = pa.array(valid, type=pa.bool_()).buffers()[1]  # packed bits, 1 = valid: a validity bitmap
    return pa.Array.from_buffers(out.type, len(valid), [bitmap], null_count=int((~valid).sum()), children=[flat])


def embeddings_to_numpy(column) -> np.ndarray:
    """An embedding column (pyarrow fixed_size_list, or a numpy/pandas column of arrays) → float32 [n, hidden].
    Null rows (texts that were not str) become NaN rows."""
    if isinstance(column, np.ndarray) and column.ndim == 2:
        return column.astype(np.float32, copy=False)
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        width = arr.type.list_size
        flat = arr.flatten().to_numpy(zero_copy_only=False) if arr.null_count == 0 else None
        if flat is not None:
            return flat.astype(np.float32, copy=False).reshape(-1, width)
        out = np.full((len(arr), width), np.nan, dtype=np.float32)
        ok = np.asarray(arr.is_valid())
        out[ok] = arr.filter(pa.array(ok)).flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        return out
    return np.stack([np.asarray(v, dtype=np.float32) for v in column])



def embed_dataset(ds: ray.data.Dataset, model: ShippedModel | str | Path, column: str = "text", *,
                  output_column: str = "embedding", threads_per_actor: int | None = None,
                  num_actors: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int | None = None,
                  rows_per_call: int = DEFAULT_ROWS_PER_CALL, pooling: str | None = None,
                  normalize: bool | None = None, on_error: str = "null", id_column: str | list[str] | None = None,
                  ship: bool = True, reserve_cpus: float = 1.0, long_texts: str = "truncate",
                  stride: int = DEFAULT_STRIDE, udf_class: type = EmbedBatch,
                  **map_batches_kwargs) -> ray.data.Dataset:
    """``ds`` with an ``output_column`` of float32 vectors (pyarrow fixed_size_list) beside its columns.

    model: a model directory (shipped through the object store when ``ship`` is true, else read from that
    same path on every node) or a ShippedModel. The pool (num_actors x threads_per_actor) is sized from
    the cluster by ``plan_actors``; ``reserve_cpus`` CPUs stay free for ``ds``'s own read/transform tasks
    (0 is right when ``ds`` is materialized, or was made with from_items/from_arrow/from_pandas).
    rows_per_call: rows per actor call (Session.encode sorts them by length to batch them tightly);
    batch_size, max_tokens: rows and tokens per model call; long_texts, stride: as for Session.encode
    ("chunk": a text over the model's limit becomes overlapping windows, pooled). on_error ("null" or
    "raise"), id_column: see the module docstring. udf_class: EmbedBatch or a subclass of it. Other keyword
    arguments go to ``Dataset.map_batches`` (e.g. ``max_task_retries=N`` to bound the retries of a batch
    whose actor died; Ray Data's default retries without limit). Lazy, like every Ray Data transform.
    """
    check_on_error(on_error)
    EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                  long_texts=long_texts, stride=stride)  # fail here
    check_positive_int("rows_per_call", rows_per_call)
    if not ray.is_initialized():
        ray.init()
    if not isinstance(model, ShippedModel):
        if ship:
            model = ship_model(model)
        else:
            model = str(model)
            if Path(model).exists():
                read_metadata(model)  # check here too when the driver can see the shared path
    plan = plan_actors(cluster_node_cpus(), threads_per_actor, num_actors, reserve_cpus)
    for note in plan.notes:
        log.info(note)
    kwargs = dict(
        fn_constructor_kwargs=dict(model=model, column=column, output_column=output_column,
                                   threads=plan.threads_per_actor, batch_size=batch_size, max_tokens=max_tokens,
                                   pooling=pooling, normalize=normalize, on_error=on_error, id_column=id_column,
                                   long_texts=long_texts, stride=stride),
        batch_format="pyarrow", batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors), num_cpus=plan.cpus_per_actor)
    kwargs.update(map_batches_kwargs)
    return ds.map_batches(udf_class, **kwargs)

