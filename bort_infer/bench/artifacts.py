"""Checkpoints and exports that bort-bench measures, built once and cached under the user's cache dir."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..registry import model_spec

CACHE_LAYOUT_VERSION = 1


def cache_root() -> Path:
    base = os.environ.get("BORT_INFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bort-infer")
    return Path(base) / f"bench-v{CACHE_LAYOUT_VERSION}"


def _stamp_ok(directory: Path, stamp: dict) -> bool:
    f = directory / ".bort-bench-stamp.json"
    return f.is_file() and json.loads(f.read_text()) == stamp


def _write_stamp(directory: Path, stamp: dict) -> None:
    (directory / ".bort-bench-stamp.json").write_text(json.dumps(stamp))


def checkpoint(model: str, seed: int = 0) -> Path:
    """Random-init HF checkpoint of a known model (exact config), created once."""
    from ..export.random_checkpoint import create_random_checkpoint

    out = cache_root() / model / "checkpoint"
    stamp = {"config": model_spec(model), "seed": seed,
             "creator": _code_digest(("random_checkpoint.py", "tokenizer_training.py"))}
    if not _stamp_ok(out, stamp):
        create_random_checkpoint(model, out, seed=seed)
        _write_stamp(out, stamp)
    return out


EXPORT_VARIANTS = {
    "plain-fp32": dict(custom_ops=False),  # torch export only: what an onnxruntime user starts from
    "bort-infer-fp32": dict(custom_ops=True),
    "bort-infer-int8": dict(custom_ops=True, quantize="int8"),
}


def _code_digest(names: tuple[str, ...] = ()) -> str:
    """SHA-256 of bort_infer/export's code and data (or of the named files in it): an artifact made by other
    code is rebuilt, not reused."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "export"
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".txt")):
        if not names or f.name in names:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _derived(model: str, name: str) -> tuple[Path, dict, bool]:
    """(output dir, stamp, fresh?) for an artifact derived from the model's checkpoint."""
    from .. import __version__

    src = checkpoint(model)
    out = cache_root() / model / name
    stamp = {"bort_infer": __version__, "exporter": _code_digest(), "artifact": name,
             "source": json.loads((src / ".bort-bench-stamp.json").read_text())}
    return out, stamp, _stamp_ok(out, stamp)


def export(model: str, variant: str) -> Path:
    """A bort-infer model directory of one of EXPORT_VARIANTS."""
    from ..export.export import export_model

    out, stamp, fresh = _derived(model, variant)
    if not fresh:
        export_model(str(checkpoint(model)), out, overwrite=True, **EXPORT_VARIANTS[variant])
        _write_stamp(out, stamp)
    return out


def ort_dynamic_int8(model: str) -> Path:
    """The plain export quantized as onnxruntime documents it: quantize_dynamic, QInt8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out, stamp, fresh = _derived(model, "ort-int8")
    target = out / "model.onnx"
    if not fresh:
        out.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(export(model, "plain-fp32") / "model.onnx"), str(target), weight_type=QuantType.QInt8)
        _write_stamp(out, stamp)
    return target


def ctranslate2_int8(model: str) -> Path:
    """The checkpoint converted by CTranslate2's own converter with int8 weights."""
    from ctranslate2.converters import TransformersConverter

    out, stamp, fresh = _derived(model, "ctranslate2-int8")
    if not fresh:
        TransformersConverter(str(checkpoint(model))).convert(str(out), quantization="int8", force=True)
        _write_stamp(out, stamp)
    return out


def ort_fused_fp32(model: str) -> Path:
    """The plain export after onnxruntime's transformers optimizer (its fused Attention, SkipLayerNormalization,
    BiasGelu, EmbedLayerNormalization): onnxruntime's own best fp32 graph for BERT."""
    from onnxruntime.transformers.optimizer import optimize_model

    out, stamp, fresh = _derived(model, "ort-fused-fp32")
    target = out / "model.onnx"
    if not fresh:
        cfg = model_spec(model)["hf_config"]
        out.mkdir(parents=True, exist_ok=True)
        optimized = optimize_model(str(export(model, "plain-fp32") / "model.onnx"), model_type="bert",
                                   num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"])
        optimized.save_model_to_file(str(target))
        _write_stamp(out, stamp)
    return target
