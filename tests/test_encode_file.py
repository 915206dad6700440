"""The file encoder (bort_infer.encode_file): one row per line in order, bounded chunks, atomic output, resumable
after a kill.

Runs the product's default export (bort-infer custom ops, packed graph)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
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


# ---------------------------------------------------------------------------------------- OUT.partial vs OUT.progress

def read_header(path: Path) -> tuple[dict, int]:
    """(the .npy header's fields, its length in bytes)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        return {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}, f.tell()


def rewrite_header(path: Path, **changes) -> None:
    fields, length = read_header(path)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {**fields, **changes})
    assert len(buf.getvalue()) == length
    with open(path, "r+b") as f:
        f.write(buf.getvalue())


ROW_BYTES = 128 * 4  # tiny-bort: hidden 128, float32


def damage(partial: Path, how: str) -> str:
    """Make OUT.partial disagree with OUT.progress (30 rows done of a 10-row-chunk run); returns what the
    error must say."""
    _, header = read_header(partial)
    if how == "shorter":
        with open(partial, "r+b") as f:
            f.truncate(header + 20 * ROW_BYTES)
        return "bytes"
    if how == "longer":  # more than the one chunk a kill between write and progress can leave
        with open(partial, "ab") as f:
            f.write(b"\0" * (11 * ROW_BYTES) + b"\0" * ((57 - 30) * ROW_BYTES))
        return "bytes"
    if how == "dtype":
        rewrite_header(partial, descr="<f8")
        return "float64"
    if how == "fortran":
        rewrite_header(partial, fortran_order=True)
        return "Fortran"
    if how == "hidden":
        fields, _ = read_header(partial)
        rewrite_header(partial, shape=(fields["shape"][0], 64))
        return "shape"
    if how == "rows":
        rewrite_header(partial, shape=(9, 128))
        return "shape"
    if how == "not-npy":
        with open(partial, "r+b") as f:
            f.write(b"PK\x03\x04 a zip file")
        return "not a .npy"
    raise AssertionError(how)


@pytest.mark.parametrize("mode", ["file", "stdin"])
@pytest.mark.parametrize("how", ["shorter", "longer", "dtype", "fortran", "hidden", "rows", "not-npy"])
def test_resume_refuses_a_partial_output_that_disagrees_with_its_progress_file(tmp_path, model, mode, how):
    texts = corpus(57)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    kill_during_run(model, src, out, 3, mode)
    partial = tmp_path / ("out.npy" + PARTIAL_SUFFIX)
    says = damage(partial, how)
    before = partial.read_bytes()
    stdin = open(src, "rb") if mode == "stdin" else None
    with pytest.raises(ValueError, match=f"cannot resume {partial}: .*{says}.*--overwrite"):
        encode_file(model, "-" if stdin else src, out, chunk_size=10, resume=True, stdin=stdin)
    assert partial.read_bytes() == before and not out.exists()  # nothing touched: the user decides


@pytest.mark.parametrize("mode", ["file", "stdin"])
def test_resume_drops_rows_written_after_the_last_recorded_chunk(tmp_path, model, session, mode):
    """A kill between writing a chunk and recording it leaves up to one chunk of rows beyond the progress
    file: they are rewritten, not trusted."""
    texts = corpus(57)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    kill_during_run(model, src, out, 3, mode)
    partial = tmp_path / ("out.npy" + PARTIAL_SUFFIX)
    with open(partial, "ab") as f:
        f.write(np.full((7, 128), 9.0, dtype="<f4").tobytes() + b"\1\2\3")  # 7 rows and a torn one
    stdin = open(src, "rb") if mode == "stdin" else None
    assert encode_file(model, "-" if stdin else src, out, chunk_size=10, resume=True, stdin=stdin).resumed_rows == 30
    assert_rows(out, session, texts)


def test_resume_refuses_a_changed_model_directory(tmp_path, model, session):
    import onnx

    own = shutil.copytree(model, tmp_path / "model")
    src = write_lines(tmp_path / "in.txt", corpus(40))
    out = tmp_path / "out.npy"
    kill_during_run(own, src, out, 2)
    graph = onnx.load(str(own / "model.onnx"))
    graph.doc_string = "re-exported: same inputs and outputs, other weights"
    onnx.save(graph, str(own / "model.onnx"))
    with pytest.raises(ValueError, match=r"cannot resume .*out.npy.partial: the model directory .*model changed "
                                         r"since its rows were written \(model.onnx changed\).*--overwrite"):
        encode_file(own, src, out, chunk_size=10, resume=True)
    shutil.copy(model / "model.onnx", own / "model.onnx")
    (own / "notes.txt").write_text("an added file")
    with pytest.raises(ValueError, match=r"\(notes.txt added\)"):
        encode_file(own, src, out, chunk_size=10, resume=True)
    (own / "notes.txt").unlink()
    assert encode_file(own, src, out, chunk_size=10, resume=True).resumed_rows == 20


def test_an_output_inside_the_model_directory_still_resumes(tmp_path, model, session):
    own = shutil.copytree(model, tmp_path / "model")
    texts = corpus(25)
    src = write_lines(tmp_path / "in.txt", texts)
    kill_during_run(own, src, own / "out.npy", 1)
    assert encode_file(own, src, own / "out.npy", chunk_size=10, resume=True).resumed_rows == 10
    assert_rows(own / "out.npy", session, texts)


# ---------------------------------------------------------------------------------------- failures, disks, locks

def test_a_run_that_fails_before_its_first_chunk_leaves_nothing_behind(tmp_path, model, monkeypatch):
    from bort_infer import Session

    def fail(*args, **kwargs):
        raise RuntimeError("the model failed")

    src = write_lines(tmp_path / "in.txt", corpus(25))
    monkeypatch.setattr(Session, "encode", fail)
    with pytest.raises(RuntimeError, match="the model failed"):
        encode_file(model, src, tmp_path / "out.npy", chunk_size=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_a_run_that_fails_later_keeps_its_finished_chunks_for_resume(tmp_path, model, session, monkeypatch):
    from bort_infer import Session

    real = Session.encode
    calls = []

    def fail_on_the_third_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the model failed")
        return real(self, *args, **kwargs)

    texts = corpus(25)
    src = write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    monkeypatch.setattr(Session, "encode", fail_on_the_third_chunk)
    with pytest.raises(RuntimeError, match="the model failed"):
        encode_file(model, src, out, chunk_size=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy.partial", "out.npy.progress"]
    monkeypatch.setattr(Session, "encode", real)
    assert encode_file(model, src, out, chunk_size=10, resume=True).resumed_rows == 20
    assert_rows(out, session, texts)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 KiB tmpfs at tmp_path / "small" (mounting needs root: skips where it is not permitted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = shutil.which("mount")
    proc = mount and subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if not proc or proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip() if proc else 'no mount'}")
    yield mnt
    subprocess.run([shutil.which("umount"), str(mnt)], capture_output=True)


def test_a_full_disk_is_a_clear_error_and_the_run_resumes(tmp_path, model, session, small_filesystem):
    texts = corpus(300)  # 300 rows x 512 bytes: more than the 64 KiB filesystem holds
    src = write_lines(tmp_path / "in.txt", texts)
    out = small_filesystem / "out.npy"
    command = [sys.executable, "-m", "bort_infer.cli.main", "encode", str(model), str(src), str(out),
               "--chunk-size", "40"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # not killed by SIGBUS (-7)
    error = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and error.startswith("bort-infer encode: error: no space left on the device")
    assert str(small_filesystem / "out.npy.") in error and "--resume" in error
    assert not out.exists()
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_filesystem)], check=True)
    proc = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_rows(out, session, texts)


PAUSE_AFTER_FIRST_CHUNK = """
import sys, time
from pathlib import Path
from bort_infer import Session
from bort_infer.encode_file import encode_file
real = Session.encode
calls = 0
def encode(self, *a, **k):
    global calls
    calls += 1
    if calls == 2:  # the first chunk is on disk
        Path(sys.argv[4]).touch()
        while not Path(sys.argv[5]).exists():
            time.sleep(0.02)
    return real(self, *a, **k)
Session.encode = encode
encode_file(sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=10, overwrite=True)
"""


def test_a_second_run_on_the_same_output_is_refused_at_once(tmp_path, model, session):
    texts, others = corpus(30), ["another input"] * 30
    src, other = write_lines(tmp_path / "in.txt", texts), write_lines(tmp_path / "other.txt", others)
    out, ready, go = tmp_path / "out.npy", tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_FIRST_CHUNK, str(model), str(src), str(out),
                              str(ready), str(go)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        partial = tmp_path / ("out.npy" + PARTIAL_SUFFIX)
        for flags in ({"overwrite": True}, {"resume": True}, {}):
            with pytest.raises(BlockingIOError, match=f"another bort-infer encode is writing {partial}"):
                encode_file(model, other, out, chunk_size=10, **flags)
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    assert_rows(out, session, texts)  # the first run's rows, whole
    encode_file(model, other, out, chunk_size=10, overwrite=True)  # the lock went with the first run
    assert_rows(out, session, others)


def test_overwrite_replaces_only_a_npy_output_and_never_the_input(tmp_path, model):
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    notes = tmp_path / "notes.txt"
    notes.write_text("irreplaceable")
    with pytest.raises(FileExistsError, match=f"{notes} exists and is not a .npy file; refusing to replace it"):
        encode_file(model, src, notes, overwrite=True)
    assert notes.read_text() == "irreplaceable"
    for flags in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(ValueError, match=f"the output {src} is the input"):
            encode_file(model, src, src, **flags)
    assert src.read_text() == "a\nb\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "notes.txt"]


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
