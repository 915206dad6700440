"""Ray Data scale-out: embed a text column of a Ray dataset on a cluster of CPU nodes.

Install with ``pip install 'bort-infer[ray]'`` on the driver and on every node (workers import
bort_infer, onnxruntime and tokenizers to run the model).

- ``EmbedBatch``: a callable class for ``Dataset.map_batches``. Each actor loads one ``Session`` (with
  ``threads`` onnxruntime threads) and turns a text column into a fixed-size-list<float32> embedding
  column; every other column of the row is kept, so ids travel with their vectors.
- ``embed_dataset(ds, model, column="text", ...)``: the same with defaults sized from the cluster.
- ``ship_model(model_dir)``: a model directory put into Ray's object store once; each actor writes it
  to a node-local cache directory (one copy per node, keyed by its SHA-256) and loads it from there.
  Alternatively pass a path that every node can read (a shared filesystem) and nothing is shipped.
- ``encode_files(...)``: ``bort-infer encode --ray``: text or Parquet files in, Parquet out.

Bad rows. A text that is not a str (None, a number, ...) is never passed to the model, and one bad row
never costs the others their vectors. With ``on_error="null"`` (the default) the job goes on: such a row
keeps its place with a null embedding (its text column shows why), and the actor logs a warning naming it
by its id (``id_column``, or else all of the row's other columns). With ``on_error="raise"`` the batch
fails with ``BadTextError`` naming each such row by its id and the job stops with that message (Ray does
not retry an error raised by our code, only a worker that died).

Fault tolerance. Actors are restarted when they die and a batch whose actor died is run again (Ray Data's
defaults for actor pools: ``max_restarts=-1``, ``max_task_retries=-1``; pass ``max_task_retries=N`` to
``embed_dataset`` to bound the retries), so a killed worker or a lost node costs time, never rows: Ray Data
keeps only the output of a batch that completed, so each row appears exactly once. Output order is not
the input's: ids travel with their vectors.
"""
from __future__ import annotations

try:
    import pyarrow  # noqa: F401
    import ray
    import ray.data  # noqa: F401  (ray[data])
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("bort_infer.integrations.ray needs Ray Data: pip install 'bort-infer[ray]' "
                      f"(ray[data] and pyarrow); {exc}") from exc

from .actor_plan import ActorPlan, plan_actors
from .file_job import RayEncodeSummary, encode_files
from .shipping import ShippedModel, ship_model
from .udf import BadTextError, EmbedBatch, embed_dataset, embeddings_to_numpy

__all__ = ["ActorPlan", "BadTextError", "EmbedBatch", "RayEncodeSummary", "ShippedModel", "embed_dataset",
           "embeddings_to_numpy", "encode_files", "plan_actors", "ship_model"]
