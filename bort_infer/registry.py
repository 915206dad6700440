"""Models we know, described by data: the top-level models/*.json of the source tree, which a wheel ships as
bort_infer/models/*.json (see setup.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent


def _models_dir() -> Path:
    installed = _PACKAGE / "models"
    return installed if installed.is_dir() else _PACKAGE.parent / "models"  # else a source checkout


def known_models() -> list[str]:
    return sorted(f.stem for f in _models_dir().glob("*.json"))


def model_spec(name: str) -> dict[str, Any]:
    """The spec of a known model: its HF config, tokenizer kind and default pooling."""
    known = known_models()
    if name not in known:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(known)}")
    return json.loads((_models_dir() / f"{name}.json").read_text())
