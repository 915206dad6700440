"""Ray Data scale-out on a local 2-CPU Ray: same vectors as one Session, every row exactly once (also when
an actor dies mid-run), bad rows named by their id, model shipped or on a shared path, `encode --ray`.

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
pq = pytest.importorskip("pyarrow.parquet")

from bort_infer import Session  # noqa: E402
from bort_infer.cli import main as cli  # noqa: E402
from bort_infer.integrations.ray import file_job  # noqa: E402
from bort_infer.integrations.ray import udf as udf_module  # noqa: E402
from bort_infer.integrations.ray import (BadTextError, EmbedBatch, ShippedModel, embed_dataset,  # noqa: E402
                                         embeddings_to_numpy, encode_files, plan_actors, ship_model)

from ..conftest import STSB_DIR, VARIED_TEXTS  # noqa: E402

N = 5000


@pytest.fixture(scope="module")
def model(exports):
    return exports("tiny-bort", custom_ops=False)


@pytest.fixture(scope="module")
def packed_model(exports):
    return exports("tiny-bort")


@pytest.fixture(scope="module")
def session(model):
    return Session(model, threads=1)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """5k real sentences when STS-B is here (plus the varied hard cases), else generated ones."""
    out = list(VARIED_TEXTS)
    path = STSB_DIR / "sts-train.tsv"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            if len(cols) >= 7:
                out += [cols[5], cols[6]]
            if len(out) >= N:
                break
    i = 0
    while len(out) < N:
        out.append(f"generated sentence {i} " + "word " * (i % 41))
        i += 1
    return out[:N]


@pytest.fixture(scope="module")
def reference(session, texts) -> np.ndarray:
    return session.encode(texts)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def collect(ds) -> pa.Table:
    return pa.concat_tables(ray.get(list(ds.to_arrow_refs())))


def check_exactly_once(table: pa.Table, reference: np.ndarray) -> None:
    ids = table["id"].to_numpy()
    assert len(ids) == len(reference) and np.array_equal(np.sort(ids), np.arange(len(reference)))
    vectors = embeddings_to_numpy(table["embedding"])
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert cosine(vectors, reference[ids]).min() >= 0.99999


def id_dataset(texts, blocks=20):
    return ray.data.from_items([{"id": i, "text": t, "source": f"doc-{i % 13}"} for i, t in enumerate(texts)],
                               override_num_blocks=blocks)


# ------------------------------------------------------------------------------------------------ sizing (no Ray)

def test_plan_actors_sizes_from_the_cluster():
    # 2 CPUs, 2 threads per actor: one actor; it asks for 1 logical CPU so a read task can still run.
    p = plan_actors([2.0])
    assert (p.num_actors, p.threads_per_actor, p.cpus_per_actor) == (1, 2, 1.0) and p.notes
    p = plan_actors([2.0], threads_per_actor=1, reserve_cpus=0)
    assert (p.num_actors, p.threads_per_actor, p.cpus_per_actor) == (2, 1, 1.0)
    # 4 nodes x 16 CPUs, 4 threads: 15 actors of 4 CPUs (one CPU left for reads/writes), whole cores.
    p = plan_actors([16.0] * 4, threads_per_actor=4)
    assert (p.num_actors, p.cpus_per_actor) == (15, 4.0) and not p.notes
    # nodes of 6 CPUs cannot hold two 4-thread actors each
    assert plan_actors([6.0, 6.0], threads_per_actor=4, reserve_cpus=0).num_actors == 2
    with pytest.raises(ValueError, match="threads_per_actor"):
        plan_actors([2.0], threads_per_actor=0)


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


# ------------------------------------------------------------------------------------------------ encode --ray

def test_encode_files_text_and_parquet(ray_local, model, session, tmp_path):
    texts = ["first", "", "third has words", "Ünïcödé \u2028 stays one line", "last"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(("\n".join(texts) + "\n").encode())
    (tmp_path / "in" / "b.txt").write_bytes("\n".join(texts[::-1]).encode())  # no final newline
    (tmp_path / "in" / "_SUCCESS").write_bytes(b"")  # ignored
    summary = encode_files(model, str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1, threads_per_actor=1)
    assert summary.rows == 10 and summary.error_rows == 0 and summary.input_format == "text"
    assert not (tmp_path / "out.partial").exists() and (tmp_path / "out" / "_SUCCESS").is_file()
    out = pq.read_table(tmp_path / "out")
    assert out.column_names == ["path", "line", "text", "embedding"]
    got = {(os.path.basename(p), ln): (t, v) for p, ln, t, v in zip(out["path"].to_pylist(), out["line"].to_pylist(),
                                                                    out["text"].to_pylist(),
                                                                    embeddings_to_numpy(out["embedding"]))}
    assert sorted(got) == [("a.txt", i) for i in range(5)] + [("b.txt", i) for i in range(5)]
    ref = session.encode(texts)
    for i, t in enumerate(texts):
        assert got[("a.txt", i)][0] == t and got[("b.txt", 4 - i)][0] == t
        np.testing.assert_allclose(got[("a.txt", i)][1], ref[i], atol=2e-5)

    # Parquet in and out through URIs, the multi-node form: written in place, completed by _SUCCESS.
    table = pa.table({"doc_id": [f"d{i}" for i in range(50)], "score": np.arange(50) * 0.5,
                      "body": [f"parquet text {i}" for i in range(50)]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=16)
    with pytest.raises(FileExistsError, match="--overwrite"):
        encode_files(model, str(tmp_path / "in.parquet"), str(tmp_path / "out"), column="body")
    summary = encode_files(model, (tmp_path / "in.parquet").as_uri(), (tmp_path / "out").as_uri(), column="body",
                           overwrite=True, num_actors=2, threads_per_actor=1)
    assert summary.rows == 50 and summary.input_format == "parquet" and (tmp_path / "out" / "_SUCCESS").is_file()
    out = pq.read_table(tmp_path / "out").sort_by("doc_id")
    assert out.column_names == ["doc_id", "score", "body", "embedding"]
    assert out.select(["doc_id", "score", "body"]).equals(table.sort_by("doc_id"))
    order = [int(d[1:]) for d in out["doc_id"].to_pylist()]
    np.testing.assert_allclose(embeddings_to_numpy(out["embedding"]),
                               session.encode([f"parquet text {i}" for i in order]), atol=2e-5)


@pytest.mark.fails_a_ray_job
def test_encode_files_errors(ray_local, model, tmp_path, monkeypatch):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "body": ["x", None, "z"]}), src)
    out = tmp_path / "out"
    # refused before any Ray work
    with pytest.raises(ValueError, match="no column 'text'"):
        encode_files(model, str(src), str(out))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encode_files(model, str(tmp_path / "missing"), str(out))
    (tmp_path / "bad.txt").write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        encode_files(model, str(tmp_path / "bad.txt"), str(out))
    with pytest.raises(ValueError, match="names a Parquet column"):
        encode_files(model, str(tmp_path / "bad.txt"), str(out), column="body")
    # a failure on the workers is one clear line, and nothing is left behind
    with pytest.raises(RuntimeError, match="the Ray job failed: ModelDirectoryError: model directory .*nowhere"):
        encode_files(tmp_path / "nowhere", str(src), str(out), column="body", ship=False, num_actors=1,
                     threads_per_actor=1)
    with pytest.raises(BadTextError, match="doc_id='b'"):
        encode_files(model, str(src), str(out), column="body", on_error="raise", num_actors=1, threads_per_actor=1)
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    # an output that does not hold every input row exactly once is removed, never completed
    plan_inputs = file_job._plan_inputs

    def one_row_more(*args):
        rows, pieces = plan_inputs(*args)
        return rows + 1, pieces

    monkeypatch.setattr(file_job, "_plan_inputs", one_row_more)
    with pytest.raises(RuntimeError, match="wrote 3 rows for 4 input rows"):
        encode_files(model, str(src), str(out), column="body", num_actors=1, threads_per_actor=1)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_cli_encode_with_ray(ray_local, model, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n\nfour\n")
    # reuses the Ray instance this process is connected to
    assert cli.main(["encode", str(model), str(src), str(tmp_path / "out"), "--ray", "local", "--threads", "1",
                     "--actors", "1", "--pooling", "mean"]) == 0
    assert "wrote 4 rows (text input + embedding)" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out").num_rows == 4
    # a bad row: every row written, the bad one named, exit status 1
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "text": ["x", None, "z"]}), tmp_path / "in.parquet")
    assert cli.main(["encode", str(model), str(tmp_path / "in.parquet"), str(tmp_path / "out2"), "--ray", "auto",
                     "--threads", "1", "--actors", "1"]) == 1
    printed = capsys.readouterr().out
    assert "1 row(s) have a null embedding (their text is not a string), e.g. doc_id='b' (NoneType)" in printed
    assert pq.read_table(tmp_path / "out2").num_rows == 3


def test_text_pieces_cover_every_line_once_under_the_rules_of_encode(tmp_path):
    from bort_infer.textlines import scan_lines, split_lines

    data = ("\ufeffbom\r\n\r\nsplit\u2028not\x0bhere\r\nlone\rcr\n\n" + "".join(f"line {i}\n" for i in range(40))
            + "no final newline\r").encode()
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    texts = split_lines(data)
    rows, pieces = file_job._plan_text_file(str(path), piece_bytes=20)
    assert rows == len(texts) and len(pieces) > 10
    assert [p["start"] for p in pieces[1:]] == [p["end"] for p in pieces[:-1]] and pieces[-1]["end"] == len(data)
    tables = list(file_job._read_text_pieces({k: [p[k] for p in pieces] for k in pieces[0]}, rows_per_block=3))
    table = pa.concat_tables(tables)
    assert table["text"].to_pylist() == texts and table["line"].to_pylist() == list(range(rows))
    assert max(t.num_rows for t in tables) <= 3
    # cuts found across read blocks are the same as within one block
    with open(path, "rb") as f:
        assert scan_lines(f, "t", cut_bytes=20, block_size=7) == (rows, [(p["start"], p["line"]) for p in pieces[1:]])


def test_one_large_file_is_read_as_many_pieces(ray_local, tmp_path):
    """Ray Data gives all rows of one read task to one actor call: one large file must become many tasks."""
    path = tmp_path / "one.txt"
    path.write_text("".join(f"sentence number {i} with a few words\n" for i in range(20000)))
    rows, pieces = file_job._plan_inputs([str(path)], "text", "text", 1024)
    assert rows == 20000 and len(pieces) >= 8  # PIECES_PER_CPU per CPU of the 2-CPU cluster

    table = pa.table({"body": [f"t{i}" for i in range(5000)]})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=3000)
    rows, pieces = file_job._plan_inputs([str(tmp_path / "one.parquet")], "parquet", "body", 256)
    assert rows == 5000 and len(pieces) == 8
    read = pa.concat_tables(file_job._read_parquet_pieces({k: [p[k] for p in pieces] for k in pieces[0]}, 100))
    assert read.equals(table)
