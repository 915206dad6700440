"""`bort-infer encode --ray` (bort_infer.integrations.ray.file_job): text and Parquet files in, Parquet out,
every input row exactly once, errors named, a large file cut into pieces."""
from __future__ import annotations

import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bort-infer[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from bort_infer.cli import main as cli  # noqa: E402
from bort_infer.integrations.ray import BadTextError, embeddings_to_numpy, encode_files, file_job  # noqa: E402


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


def test_overwrite_replaces_only_a_ray_output(ray_local, model, tmp_path):
    """--overwrite deletes OUT: only when it is what an encode --ray run writes (Parquet files, _SUCCESS)."""
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "notes.md").write_text("irreplaceable")
    with pytest.raises(FileExistsError, match=r"project holds files that are not an encode --ray output "
                                              r"\(.git, notes.md\); refusing to replace it"):
        encode_files(model, str(src), str(project), overwrite=True, num_actors=1, threads_per_actor=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not an encode --ray output"):
        encode_files(model, str(src), str(tmp_path / "file"), overwrite=True, num_actors=1, threads_per_actor=1)
    assert (project / "notes.md").read_text() == "irreplaceable" and (tmp_path / "file").read_text() == "x"
    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the first's output
        encode_files(model, str(src), str(out), overwrite=True, num_actors=1, threads_per_actor=1)
        assert pq.read_table(out).num_rows == 2


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
