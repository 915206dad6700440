"""The file encoder (bort_infer.encode_file): one row per line in order, bounded chunks, atomic output, resumable
after a kill.

Runs the product's default export (bort-infer custom ops, packed graph)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bort_infer import ModelDirectoryError
from bort_infer.encode_file import PARTIAL_SUFFIX, PROGRESS_SUFFIX, encode_file
from bort_infer.textlines import count_lines

from .conftest import VARIED_TEXTS, assert_rows, write_lines

ROOT = Path(__file__).resolve().parents[1]


def corpus(n: int) -> list[str]:
    """Single-line texts (VARIED_TEXTS without their newlines) of varied lengths, some empty, with control
    characters."""
    base = [t.replace("\r", " ").replace("\n", " ") for t in VARIED_TEXTS]
    base.append("control \x00 nul \x07 bell \x1b[0m escape \x7f del")
    return [base[i % len(base)] if i % 7 else f"text {i} " + "w " * (i % 23) for i in range(n)]


# ------------------------------------------------------------------------------------------------ lines

def test_invalid_utf8_is_reported_with_its_line_before_any_work(tmp_path, model):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(ValueError, match="line 3 is not valid UTF-8"):
        encode_file(model, path, tmp_path / "out.npy")
    assert not (tmp_path / "out.npy").exists()
    path.write_bytes(b"ok\ncut \xe2\x82")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        count_lines(path)
    path.write_bytes(b"ok\n\xed\xa0\x80 a lone surrogate, as CESU-8 writes it\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        count_lines(path)


# ------------------------------------------------------------------------------------------------ encode

@pytest.mark.parametrize("trailing_newline", [True, False])
def test_every_line_one_row_in_order_across_chunks(tmp_path, model, session, trailing_newline):
    texts = corpus(103)
    texts[50] = "a hundred thousand characters " * 3334  # far beyond the model's 512 tokens: truncated
    src = write_lines(tmp_path / "in.txt", texts, trailing_newline)
    result = encode_file(model, src, tmp_path / "out.npy", chunk_size=10, batch_size=4, threads=1)
    assert (result.rows, result.resumed_rows, result.hidden_size) == (103, 0, session.hidden_size)
    assert_rows(tmp_path / "out.npy", session, texts)
    assert not (tmp_path / ("out.npy" + PARTIAL_SUFFIX)).exists()
    assert not (tmp_path / ("out.npy" + PROGRESS_SUFFIX)).exists()


def test_empty_input_gives_an_empty_matrix(tmp_path, model, session):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    encode_file(model, src, tmp_path / "out.npy")
    assert np.load(tmp_path / "out.npy").shape == (0, session.hidden_size)


def test_only_empty_lines(tmp_path, model, session):
    src = tmp_path / "blank.txt"
    src.write_bytes(b"\n\n\n")
    encode_file(model, src, tmp_path / "out.npy")
    assert_rows(tmp_path / "out.npy", session, ["", "", ""])


def test_options_pooling_and_normalize(tmp_path, model, session):
    texts = corpus(20)
    src = write_lines(tmp_path / "in.txt", texts)
    encode_file(model, src, tmp_path / "out.npy", pooling="mean", normalize=True, chunk_size=7)
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, session.encode(texts, pooling="mean", normalize=True), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_stdin_stream(tmp_path, model, session):
    texts = corpus(45)
    data = ("\n".join(texts) + "\n").encode()
    result = encode_file(model, "-", tmp_path / "out.npy", chunk_size=8, stdin=io.BytesIO(data))
    assert result.rows == 45
    assert_rows(tmp_path / "out.npy", session, texts)


def test_real_stdin_through_a_subprocess(tmp_path, model, session):
    texts = ["first", "", "third line"]
    code = ("import sys; from bort_infer.encode_file import encode_file; "
            "encode_file(sys.argv[1], '-', sys.argv[2], chunk_size=2)")
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(tmp_path / "out.npy")], cwd=ROOT,
                          input=b"first\n\nthird line\n", capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert_rows(tmp_path / "out.npy", session, texts)


# ------------------------------------------------------------------------------------------------ atomicity, resume

KILL_AFTER_CALLS = """
import os, sys
from bort_infer import Session
from bort_infer.encode_file import encode_file
calls = 0
real = Session.encode
def encode(self, *a, **k):
    global calls
    calls += 1
    if calls > int(sys.argv[4]):
        os._exit(9)  # like SIGKILL: no cleanup, no finally
    return real(self, *a, **k)
Session.encode = encode
src = sys.argv[2]
stdin = open(src, "rb") if sys.argv[5] == "stdin" else None
encode_file(sys.argv[1], "-" if stdin else src, sys.argv[3], chunk_size=10, stdin=stdin)
"""


def kill_during_run(model, src, out, chunks_before_kill, mode="file"):
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CALLS, str(model), str(src), str(out),
                           str(chunks_before_kill), mode], cwd=ROOT, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()


@pytest.mark.parametrize("mode", ["file", "stdin"])
def test_killed_run_leaves_no_complete_looking_file_and_resumes(tmp_path, model, session, mode):
    texts = corpus(57)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    kill_during_run(model, src, out, 3, mode)
    partial = tmp_path / ("out.npy" + PARTIAL_SUFFIX)
    assert not out.exists() and partial.exists()
    assert json.loads((tmp_path / ("out.npy" + PROGRESS_SUFFIX)).read_text())["rows_done"] == 30

    with pytest.raises(FileExistsError, match="--resume"):
        encode_file(model, src, out, chunk_size=10)
    stdin = open(src, "rb") if mode == "stdin" else None
    result = encode_file(model, "-" if stdin else src, out, chunk_size=10, resume=True, stdin=stdin)
    assert (result.rows, result.resumed_rows) == (57, 30)
    assert_rows(out, session, texts)
    assert not partial.exists()


def test_resume_refuses_a_changed_input_or_options(tmp_path, model, session):
    texts = corpus(40)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    kill_during_run(model, src, out, 2)
    with pytest.raises(ValueError, match="pooling"):
        encode_file(model, src, out, chunk_size=10, resume=True, pooling="mean")
    edited = texts.copy()
    edited[3] = "an edit inside the rows already written"
    write_lines(src, edited)
    with pytest.raises(ValueError, match="are not the ones"):
        encode_file(model, src, out, chunk_size=10, resume=True)
    result = encode_file(model, src, out, chunk_size=10, overwrite=True)
    assert result.resumed_rows == 0
    assert_rows(out, session, edited)


def test_resume_follows_content_not_paths(tmp_path, model, session):
    texts = corpus(33)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    kill_during_run(model, src, out, 1)
    moved = src.rename(tmp_path / "moved.txt")
    assert encode_file(model, moved, out, chunk_size=10, resume=True).resumed_rows == 10
    assert_rows(out, session, texts)


def test_resume_of_a_complete_output_does_nothing(tmp_path, model):
    src = write_lines(tmp_path / "in.txt", corpus(12))
    out = tmp_path / "out.npy"
    encode_file(model, src, out)
    before = out.stat().st_mtime_ns
    assert encode_file(model, src, out, resume=True).resumed_rows == 12
    assert out.stat().st_mtime_ns == before


def test_existing_output_needs_overwrite(tmp_path, model):
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    out = tmp_path / "out.npy"
    encode_file(model, src, out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        encode_file(model, src, out)
    encode_file(model, src, out, overwrite=True)


# ------------------------------------------------------------------------------------------------ errors

def test_clear_errors(tmp_path, model):
    src = write_lines(tmp_path / "in.txt", ["a"])
    with pytest.raises(FileNotFoundError, match="input file .*missing.txt does not exist"):
        encode_file(model, tmp_path / "missing.txt", tmp_path / "out.npy")
    with pytest.raises(FileNotFoundError, match="output directory .*nowhere does not exist"):
        encode_file(model, src, tmp_path / "nowhere" / "out.npy")
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        encode_file(tmp_path / "no-model", src, tmp_path / "out.npy")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelDirectoryError, match="bort_infer.json is missing"):
        encode_file(tmp_path / "not-a-model", src, tmp_path / "out.npy")
    with pytest.raises(ValueError, match="chunk_size"):
        encode_file(model, src, tmp_path / "out.npy", chunk_size=0)
    with pytest.raises(ValueError, match="max_tokens"):
        encode_file(model, src, tmp_path / "out.npy", max_tokens=0)
    with pytest.raises(IsADirectoryError):
        encode_file(model, tmp_path, tmp_path / "out.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "not-a-model"]  # nothing half-written
