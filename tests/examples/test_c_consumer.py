"""examples/c/bort_embed.c, a C program on onnxruntime's C API and libbort_infer_ops.so (no Python), gives the
vectors Session gives on the same token ids: the packed and the padded model inputs, CLS and mean pooling,
with and without normalization, Session's batching, from model.onnx or model.ort; fp32 within 1e-5, int8
identical. Built with the system compiler by examples/c/Makefile against onnxruntime's C library from its
pip wheel."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bort_infer
from bort_infer import Session
from bort_infer.pooling import l2_normalize

from ..conftest import VARIED_TEXTS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "c"
# Export options of each model directory the program is checked on (shared with the other tests' exports).
MODELS = {
    "packed fp32": {},
    "packed int8": {"quantize": "int8"},
    "padded fp32": {"form": "padded"},
    "padded fp32, no custom ops": {"custom_ops": False},
}
TEXTS = VARIED_TEXTS * 2  # several model calls with the small batch options below

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="needs make and a C compiler")


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> Path:
    """bort_embed (ops library registered by path) and bort_embed_linked (linked against it)."""
    build = tmp_path_factory.mktemp("c-consumer")
    subprocess.run(["make", "-s", "-C", str(EXAMPLE), f"BUILD={build}", f"PYTHON={sys.executable}",
                    f"BORT_OPS_LIB={bort_infer.custom_op_library()}", f"BORT_INCLUDE={bort_infer.include_dir()}",
                    "CFLAGS=-O2 -Wall -Wextra -pedantic -Werror", "all", "linked"], check=True)
    return build


def run_c(program: Path, model: Path, ids: list[list[int]], *options: str) -> subprocess.CompletedProcess:
    stdin = "".join(" ".join(map(str, seq)) + "\n" for seq in ids)
    return subprocess.run([str(program), "--ops-lib", bort_infer.custom_op_library(), "--threads", "1", *options,
                           str(model)], input=stdin, capture_output=True, text=True)


def vectors(out: subprocess.CompletedProcess) -> np.ndarray:
    assert out.returncode == 0, out.stderr
    return np.array([[np.float32(v) for v in line.split()] for line in out.stdout.splitlines()], dtype=np.float32)


def assert_matches(got: np.ndarray, want: np.ndarray, precision: str) -> None:
    assert got.shape == want.shape
    if precision == "int8":
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got - want).max() <= 1e-5


@pytest.fixture(scope="module", params=list(MODELS))
def model(request, exports) -> tuple[Path, Session]:
    directory = exports("tiny-bort", **MODELS[request.param])
    return directory, Session(directory, threads=1)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_same_vectors_as_session(programs, model, pooling, normalize):
    directory, session = model
    ids = [e.ids for e in session.tokenize(TEXTS)]
    want = session.embed_ids(ids, pooling=pooling, batch_size=5, max_tokens=300)
    if normalize:
        want = l2_normalize(want)
    got = vectors(run_c(programs / "bort_embed", directory, ids, "--pooling", pooling, "--normalize",
                        str(int(normalize)), "--batch-size", "5", "--max-tokens", "300"))
    assert_matches(got, want, session.metadata.precision)


@pytest.mark.filterwarnings("ignore:.*were truncated")
def test_model_defaults_and_default_batching_as_encode(programs, model):
    directory, session = model
    got = vectors(run_c(programs / "bort_embed", directory, [e.ids for e in session.tokenize(TEXTS)]))
    assert_matches(got, session.encode(TEXTS), session.metadata.precision)


@pytest.mark.parametrize("options", [{}, {"quantize": "int8"}], ids=["fp32", "int8"])
def test_same_vectors_from_an_ort_format_model(programs, exports, options):
    directory = exports("tiny-bort", ort_format=True, **options)
    session = Session(directory, threads=1)
    ids = [e.ids for e in session.tokenize(TEXTS)]
    for pooling in ("cls", "mean"):
        got = vectors(run_c(programs / "bort_embed", directory, ids, "--model", "model.ort", "--pooling", pooling))
        assert_matches(got, session.embed_ids(ids, pooling=pooling), session.metadata.precision)


def test_linked_against_the_ops_library(programs, exports):
    directory = exports("tiny-bort", quantize="int8")
    session = Session(directory, threads=1)
    ids = [e.ids for e in session.tokenize(VARIED_TEXTS)]
    got = vectors(run_c(programs / "bort_embed_linked", directory, ids, "--pooling", "mean"))
    np.testing.assert_array_equal(got, session.embed_ids(ids, pooling="mean"))


def test_bad_input_is_an_error_naming_it(programs, exports):
    directory = exports("tiny-bort")
    program = str(programs / "bort_embed")
    no_ops = subprocess.run([program, str(directory)], input="0 5 2\n", capture_output=True, text=True)
    assert no_ops.returncode == 1 and "--ops-lib" in no_ops.stderr
    for stdin, message in [("0 x 2\n", "other than token ids"), ("\n", "empty line"),
                           (" ".join(["5"] * 513) + "\n", "max_length"), ("0 99999999 2\n", "Run")]:
        out = subprocess.run([program, "--ops-lib", bort_infer.custom_op_library(), str(directory)], input=stdin,
                             capture_output=True, text=True)
        assert out.returncode == 1 and message in out.stderr, (stdin[:20], out.stderr)
    missing = subprocess.run([program, str(directory / "nowhere")], input="", capture_output=True, text=True)
    assert missing.returncode == 1 and "bort_infer.json" in missing.stderr
