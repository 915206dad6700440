"""onnxruntime's ORT format (the flatbuffer model format of its mobile and minimal builds): model.ort beside
model.onnx, and the reduced-operator config a minimal onnxruntime build is compiled with.

Needs only onnxruntime (its bundled tools), with the bort-infer custom ops registered while converting: the
ORT format stores each node's kernel choice, so onnxruntime must know ai.bort_infer's ops then.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..model_dir import read_metadata

ORT_FILE = "model.ort"
OPS_CONFIG_FILE = "required_operators.config"  # onnxruntime's own name for it


def write_ort_model(onnx_path: str | Path, ort_path: str | Path) -> Path:
    """Convert an ONNX model (plain or with ai.bort_infer ops) to ORT format, as onnxruntime's
    convert_onnx_models_to_ort does with its default ('Fixed', all optimizations) style: the graph is
    optimized once here and saved with its kernel assignments. NCHWc layouts (x86-only) stay out, as that
    tool leaves them out unless told the target is amd64, so the file runs on ARM too."""
    import onnxruntime as ort

    from .. import custom_op_library

    ort_path = Path(ort_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.register_custom_ops_library(custom_op_library())
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    if not ort_path.is_file() or ort_path.stat().st_size == 0:
        raise RuntimeError(f"onnxruntime wrote no ORT-format model to {ort_path}")
    return ort_path


def write_ops_config(model_dirs: Sequence[str | Path], output: str | Path, *, type_reduction: bool = False) -> Path:
    """The operators (and with type_reduction, the element types) the models in `model_dirs` need, in the
    config format of onnxruntime's `build.sh --include_ops_by_config`. Read from each directory's
    ORT-format model (bort_infer.json's ort_file); a directory without one is converted to a scratch file."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    if not model_dirs:
        raise ValueError("name at least one model directory")
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="bort-infer-ops-config-") as scratch:
        ort_models, converted = [], {}
        for i, directory in enumerate(model_dirs):
            meta = read_metadata(directory)
            if meta.ort_file:
                ort_models.append(Path(directory) / meta.ort_file)
            else:
                source = Path(directory) / meta.onnx_file
                ort_models.append(write_ort_model(source, Path(scratch) / f"{i}.ort"))
                converted[str(ort_models[-1])] = f"{source} (converted)"
        create_config_from_models(ort_models, output, type_reduction)
        if not output.is_file():
            raise RuntimeError(f"onnxruntime wrote no operator config to {output}")
    # The config's header lists the models it came from: name the ONNX files, not the scratch conversions.
    text = output.read_text()
    for scratch_file, source in converted.items():
        text = text.replace(scratch_file, source)
    output.write_text(text)
    return output
