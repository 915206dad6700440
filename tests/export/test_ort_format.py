"""ORT format (bort_infer.export.ort_format, export --ort-format): model.ort gives exactly model.onnx's token
states for every graph kind; the operator config for minimal onnxruntime builds lists what the models use;
onnxruntime's mobile usability checker fails on custom-op graphs unless told to skip its optimization step
(docs/model-format.md documents that)."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import bort_infer
from bort_infer import Session
from bort_infer.export.ort_format import ORT_FILE, write_ops_config, write_ort_model
from bort_infer.model_dir import ModelDirectoryError, read_metadata

from ..conftest import VARIED_TEXTS

GRAPHS = {"packed fp32": {}, "packed int8": {"quantize": "int8"}, "plain": {"custom_ops": False}}


def with_ort_model(directory: Path, tmp_path: Path) -> Path:
    """A copy of `directory` whose bort_infer.json serves model.ort (converted here) as its model file."""
    copy = shutil.copytree(directory, tmp_path / "ort")
    write_ort_model(copy / "model.onnx", copy / ORT_FILE)
    (copy / "model.onnx").unlink()
    dataclasses.replace(read_metadata(directory), onnx_file=ORT_FILE).write(copy)
    return copy


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_ort_model_gives_the_onnx_models_token_states_exactly(exports, tmp_path, graph):
    directory = exports("tiny-bort", **GRAPHS[graph])
    onnx_session, ort_session = Session(directory, threads=1), Session(with_ort_model(directory, tmp_path), threads=1)
    ids = [e.ids for e in onnx_session.tokenize(VARIED_TEXTS)]
    for pooling in ("cls", "mean"):
        np.testing.assert_array_equal(ort_session.embed_ids(ids, pooling=pooling),
                                      onnx_session.embed_ids(ids, pooling=pooling))


def test_export_with_ort_format_writes_model_ort_and_names_it(exports):
    directory = exports("tiny-bort", ort_format=True)
    meta = read_metadata(directory)
    assert meta.ort_file == ORT_FILE and (directory / ORT_FILE).stat().st_size > 0
    assert json.loads((directory / "bort_infer.json").read_text())["ort_file"] == ORT_FILE
    assert sorted(p.name for p in directory.iterdir()) == ["bort_infer.json", "model.onnx", "model.ort",
                                                           "tokenizer.json"]  # no probe left behind
    options = ort.SessionOptions()
    options.register_custom_ops_library(bort_infer.custom_op_library())
    ort.InferenceSession(str(directory / ORT_FILE), options, providers=["CPUExecutionProvider"])


def config_ops(path: Path) -> dict[str, set[str]]:
    """domain -> operators of an operator config (types, where present, stripped)."""
    ops: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            domain, _, names = line.split(";")
            ops.setdefault(domain, set()).update(n.split("{")[0] for n in names.split(",") if n)
    return ops


def test_ops_config_lists_every_operator_of_the_models(exports, tmp_path):
    dirs = [exports("tiny-bort"), exports("tiny-bort", quantize="int8"), exports("tiny-bort", custom_ops=False)]
    ops = config_ops(write_ops_config(dirs, tmp_path / "ops.config"))
    assert ops["ai.bort_infer"] == {op for d in dirs for op in read_metadata(d).custom_ops}
    assert {"MatMul", "Gather"} <= ops["ai.onnx"]
    header = (tmp_path / "ops.config").read_text()
    assert all(f"{d / 'model.onnx'} (converted)" in header for d in dirs)  # not the scratch files


def test_ops_config_reads_an_exported_model_ort_and_can_list_types(exports, tmp_path):
    directory = exports("tiny-bort", ort_format=True)
    path = write_ops_config([directory], tmp_path / "ops.config", type_reduction=True)
    text = path.read_text()
    assert str(directory / ORT_FILE) in text and '{"inputs": {"0": ["float"]}}' in text
    assert config_ops(path)["ai.bort_infer"] == set(read_metadata(directory).custom_ops)


def test_ops_config_refuses_what_is_not_a_model_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="bort_infer.json is missing"):
        write_ops_config([tmp_path], tmp_path / "ops.config")
    with pytest.raises(ValueError, match="at least one model directory"):
        write_ops_config([], tmp_path / "ops.config")


def test_mobile_usability_checker_needs_skip_optimize_on_custom_op_graphs(exports):
    from onnxruntime.tools.mobile_helpers import usability_checker

    model = exports("tiny-bort") / "model.onnx"
    logger = logging.getLogger("usability")
    # Its optimization step opens the model in a session without custom ops (it has no option for them).
    with pytest.raises(Exception, match=r"ai\.bort_infer:\w+\(-1\) is not a registered function/op"):
        usability_checker.analyze_model(model, skip_optimize=False, logger=logger)
    # Without that step it analyses the graph; NNAPI/CoreML cannot take our ops, so the CPU EP is the answer.
    assert usability_checker.analyze_model(model, skip_optimize=True, logger=logger) is False
