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
    from ..build.random_checkpoint import create_random_checkpoint

    out = cache_root() / model / "checkpoint"
    stamp = {"config": model_spec(model), "seed": seed}
    if not _stamp_ok(out, stamp):
        create_random_checkpoint(model, out, seed=seed)
        _write_stamp(out, stamp)
    return out


def export(model: str, variant: str) -> Path:
    """A bort-infer model directory for `variant`: "plain-fp32" (torch export only, what an onnxruntime
    user gets), or "bort-infer-fp32" (our default export)."""
    from .. import __version__
    from ..build.export import export_model

    src = checkpoint(model)
    out = cache_root() / model / variant
    options = {"plain-fp32": dict(custom_ops=False), "bort-infer-fp32": dict(custom_ops=True)}[variant]
    stamp = {"bort_infer": __version__, "variant": variant,
             "source": json.loads((src / ".bort-bench-stamp.json").read_text())}
    if not _stamp_ok(out, stamp):
        export_model(str(src), out, overwrite=True, **options)
        _write_stamp(out, stamp)
    return out
