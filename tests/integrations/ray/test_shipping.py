"""The model shipped through Ray's object store into a node cache, or read from a shared path."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pa = pytest.importorskip("pyarrow")

from bort_infer.integrations.ray import EmbedBatch, ShippedModel, embed_dataset, ship_model  # noqa: E402

from .conftest import check_exactly_once, collect, id_dataset  # noqa: E402


class RecordsModelPath(EmbedBatch):
    """Adds the directory this actor's Session loaded (to tell a shipped model from a shared path)."""

    def __call__(self, batch):
        out = super().__call__(batch)
        return out.append_column("model_path", pa.array([str(self.session.path)] * out.num_rows))


def test_model_on_a_shared_path_and_shipped_model_cache(ray_local, model, texts, reference, tmp_path):
    ds = embed_dataset(id_dataset(texts[:300], blocks=2), model, ship=False, udf_class=RecordsModelPath,
                       threads_per_actor=1, num_actors=1, reserve_cpus=0)
    table = collect(ds)
    assert set(table["model_path"].to_pylist()) == {str(model)}
    check_exactly_once(table, reference[:300])
    shipped = ship_model(model)
    assert isinstance(shipped, ShippedModel) and shipped.nbytes > 0
    first = shipped.materialize(tmp_path / "cache")
    assert first.name == shipped.digest and (first / "bort_infer.json").is_file()
    assert shipped.materialize(tmp_path / "cache") == first  # once per node
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in model.iterdir() if p.is_file())
