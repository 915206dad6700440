"""`bort-infer encode` (bort_infer.cli.encode): its arguments, its summary, its errors, and the choice between
one machine and --ray."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bort_infer.cli import main as cli
from bort_infer.cli.encode import add_arguments, run
from bort_infer.encode_file import PARTIAL_SUFFIX

from ..conftest import assert_rows, write_lines
from ..test_encode_file import corpus, kill_during_run
from ..test_session import model_with_a_wrong_output

ROOT = Path(__file__).resolve().parents[2]


def parse(argv):
    parser = argparse.ArgumentParser(prog="bort-infer encode")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_prints_a_summary(tmp_path, model, capsys):
    src = write_lines(tmp_path / "in.txt", ["one", "two", "three"])
    args = parse([str(model), str(src), str(tmp_path / "v.npy"), "--batch-size", "2", "--no-normalize",
                  "--pooling", "mean", "--threads", "1", "--chunk-size", "2"])
    assert run(args) == 0
    assert "wrote 3 x 128 float32 embeddings" in capsys.readouterr().out
    assert np.load(tmp_path / "v.npy").shape == (3, 128)


def test_cli_encode_file_and_stdin(tmp_path, model, session):
    src = write_lines(tmp_path / "in.txt", ["x", "", "y"])
    assert cli.main(["encode", str(model), str(src), str(tmp_path / "v.npy")]) == 0
    assert_rows(tmp_path / "v.npy", session, ["x", "", "y"])
    proc = subprocess.run([sys.executable, "-m", "bort_infer.cli.main", "encode", str(model), "-",
                           str(tmp_path / "w.npy")], cwd=ROOT, input=b"x\n\ny\n", capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"wrote 3 x 128 float32 embeddings" in proc.stdout
    assert_rows(tmp_path / "w.npy", session, ["x", "", "y"])


def broken_model(tmp_path, model, how: str):
    target = tmp_path / f"model-{how}"
    if how == "missing":
        return target
    if how == "empty":
        target.mkdir()
        return target
    shutil.copytree(model, target)
    if how == "truncated":
        onnx = target / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    elif how == "wrong-version":
        meta = json.loads((target / "bort_infer.json").read_text())
        (target / "bort_infer.json").write_text(json.dumps({**meta, "format_version": 99}))
    elif how == "corrupt-metadata":
        (target / "bort_infer.json").write_text('{"format": "bort-infer-model", ')
    elif how == "inputs-not-a-list":
        meta = json.loads((target / "bort_infer.json").read_text())
        (target / "bort_infer.json").write_text(json.dumps({**meta, "inputs": 5}))
    elif how == "one-row-output":
        shutil.rmtree(target)
        model_with_a_wrong_output(model, target, "one-row")
    return target


@pytest.mark.parametrize("how, says", [
    ("missing", "does not exist"), ("empty", "bort_infer.json is missing (the directory is empty)"),
    ("truncated", "onnxruntime cannot load this model"), ("wrong-version", "format_version 99"),
    ("corrupt-metadata", "not valid JSON"), ("inputs-not-a-list", "inputs must list input_ids"),
    ("one-row-output", "the graph does not match its metadata"),
])
def test_cli_names_a_bad_model_directory(tmp_path, model, capsys, how, says):
    bad = broken_model(tmp_path, model, how)
    src = write_lines(tmp_path / "in.txt", ["a", "b", "c"])
    assert cli.main(["encode", str(bad), str(src), str(tmp_path / "v.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bort-infer encode: error:") and str(bad) in err and says in err and err.count("\n") == 1
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / ("v.npy" + PARTIAL_SUFFIX)).exists()


def test_cli_refuses_to_resume_a_truncated_partial_output_in_one_line(tmp_path, model, capsys):
    src = write_lines(tmp_path / "in.txt", corpus(40))
    out = tmp_path / "v.npy"
    kill_during_run(model, src, out, 3)
    partial = tmp_path / ("v.npy" + PARTIAL_SUFFIX)
    with open(partial, "r+b") as f:
        f.truncate(partial.stat().st_size - 1000)
    assert cli.main(["encode", str(model), str(src), str(out), "--chunk-size", "10", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bort-infer encode: error: cannot resume {partial}: it has ")
    assert "pass --overwrite to start over" in err and not out.exists()


@pytest.mark.parametrize("argv, says", [
    (["--column", "body"], "only with --ray ADDRESS: --column"),
    (["--on-error", "raise", "--actors", "2"], "only with --ray ADDRESS: --actors, --on-error"),
    (["--ray", "auto", "--resume"], "not with --ray (a --ray run is rerun whole): --resume"),
    (["--ray", "auto", "--chunk-size", "10"], "not with --ray (a --ray run is rerun whole): --chunk-size"),
])
def test_cli_refuses_options_of_the_other_path(tmp_path, model, capsys, argv, says):
    src = write_lines(tmp_path / "in.txt", ["a"])
    assert cli.main(["encode", str(model), str(src), str(tmp_path / "v.npy"), *argv]) == 2
    assert says in capsys.readouterr().err
    assert cli.main(["encode", str(model), "-", str(tmp_path / "out"), "--ray", "auto"]) == 2
    assert "not stdin" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--batch-size", "--max-tokens", "--threads", "--chunk-size"])
def test_cli_rejects_non_positive_numbers(tmp_path, model, capsys, flag):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["encode", str(model), "in.txt", str(tmp_path / "v.npy"), flag, "0"])
    assert exit_.value.code == 2 and f"argument {flag}: must be a positive integer" in capsys.readouterr().err


def test_encode_stays_in_the_run_time_world(tmp_path, model):
    """`bort-infer encode` (without --ray) imports neither the build-time stack nor Ray."""
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    code = ("import sys; from bort_infer.cli import main as cli; import bort_infer.integrations; "
            f"assert cli.main(['encode', {str(model)!r}, {str(src)!r}, {str(tmp_path / 'v.npy')!r}]) == 0; "
            "bad = [m for m in ('torch', 'transformers', 'optimum', 'onnx', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
