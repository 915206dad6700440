"""EmbedBatch and embed_dataset on a local 2-CPU Ray: same vectors as one Session, every row exactly once (also
when an actor dies mid-run), bad rows named by their id.

The 5k-row equality runs the product's default export (bort-infer custom ops, packed graph), which also
proves that Ray workers load the custom-op library; the other tests are about the Ray plumbing and use the
plain export."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pa = pytest.importorskip("pyarrow")

from bort_infer import Session  # noqa: E402
from bort_infer.integrations.ray import BadTextError, EmbedBatch, embed_dataset, embeddings_to_numpy, ship_model  # noqa: E402
from bort_infer.integrations.ray import udf as udf_module  # noqa: E402

from .conftest import N, check_exactly_once, collect, id_dataset  # noqa: E402

# ------------------------------------------------------------------------------------------------ EmbedBatch (no Ray)

@pytest.mark.parametrize("batch_format", ["pyarrow", "pandas", "numpy"])
def test_embed_batch_in_each_batch_format_names_bad_rows(model, session, caplog, batch_format):
    """EmbedBatch as one actor runs it: each batch format map_batches may hand it, and rows left without
    a vector named by their id."""
    table = pa.table({"id": [10, 11, 12], "text": ["one", None, "three"]})
    batch = {"pyarrow": table, "pandas": table.to_pandas(),
             "numpy": {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}}[batch_format]
    udf = EmbedBatch(model, threads=1, id_column="id")
    with caplog.at_level(logging.WARNING, logger=udf_module.__name__):
        out = udf(batch)
    assert out.column_names == ["id", "text", "embedding"] and out["id"].to_pylist() == [10, 11, 12]
    vectors = embeddings_to_numpy(out["embedding"])
    np.testing.assert_allclose(vectors[[0, 2]], session.encode(["one", "three"]), atol=2e-5)
    assert out["embedding"].null_count == 1 and np.isnan(vectors[1]).all()
    assert "id=11 (NoneType)" in caplog.text
    with pytest.raises(BadTextError, match="id=11"):
        EmbedBatch(model, threads=1, id_column="id", on_error="raise")(batch)


# ------------------------------------------------------------------------------------------------ embed_dataset

def test_embed_dataset_equals_single_process_session(ray_local, packed_model, texts):
    reference = Session(packed_model, threads=1).encode(texts)
    ds = embed_dataset(id_dataset(texts), packed_model, threads_per_actor=1, num_actors=2, reserve_cpus=0,
                       rows_per_call=512)
    table = collect(ds)
    check_exactly_once(table, reference)
    assert table.column_names == ["id", "text", "source", "embedding"]
    ids = table["id"].to_pylist()
    assert table["source"].to_pylist() == [f"doc-{i % 13}" for i in ids]  # other columns travel with the rows


def test_actor_killed_mid_run_still_gives_every_row_once(ray_local, model, texts, reference, tmp_path):
    marker = tmp_path / "died-once"
    victim = N // 2

    class DiesOnce(EmbedBatch):
        """Kills its own worker process (no cleanup) on the batch holding `victim`, once."""

        def __call__(self, batch):
            if victim in batch.column("id").to_pylist() and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    # Ray Data's own defaults for the actor pool (restart dead actors, retry their batches): what users get.
    ds = embed_dataset(id_dataset(texts), ship_model(model), udf_class=DiesOnce, threads_per_actor=1,
                       num_actors=2, reserve_cpus=0, rows_per_call=256)
    table = collect(ds)
    assert marker.exists(), "the actor never died: the test did not test anything"
    check_exactly_once(table, reference)


def test_bad_rows_get_a_null_embedding_and_the_job_goes_on(ray_local, model, session):
    values = ["fine", None, 12, "also fine", 3.5, ""]
    good = [i for i, v in enumerate(values) if isinstance(v, str)]
    typed = ray.data.from_arrow(pa.table({"key": [f"k{i}" for i in range(6)],
                                          "text": [v if isinstance(v, str) else None for v in values]}))
    # Python objects of mixed types in one block (Ray itself cannot batch blocks whose types differ)
    mixed = ray.data.from_items([{"key": f"k{i}", "text": v} for i, v in enumerate(values)], override_num_blocks=1)
    for source in (typed, mixed):
        out = collect(embed_dataset(source, model, threads_per_actor=1, num_actors=1, reserve_cpus=0)).sort_by("key")
        assert out.column_names == ["key", "text", "embedding"]
        assert out["key"].to_pylist() == [f"k{i}" for i in range(6)]
        assert [v is not None for v in out["embedding"].to_pylist()] == [isinstance(v, str) for v in values]
        vectors = embeddings_to_numpy(out["embedding"])
        assert np.isnan(vectors[[i for i in range(6) if i not in good]]).all()
        np.testing.assert_allclose(vectors[good], session.encode([values[i] for i in good]), atol=2e-5)


@pytest.mark.fails_a_ray_job
def test_bad_rows_can_stop_the_job_with_an_error_naming_their_ids(ray_local, model):
    rows = [{"id": i, "text": f"fine {i}"} for i in range(40)]
    rows[7]["text"] = None
    rows[23]["text"] = None
    ds = embed_dataset(ray.data.from_items(rows, override_num_blocks=2), model, id_column="id", on_error="raise",
                       threads_per_actor=1, num_actors=1, reserve_cpus=0)
    with pytest.raises(Exception) as info:
        collect(ds)
    del ds  # a failed execution keeps its actors (and their CPUs) while the dataset is referenced
    message = str(info.value)
    del info
    assert "BadTextError" in message and "id=7 (NoneType)" in message and "id=23 (NoneType)" in message
