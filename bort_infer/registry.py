"""Models we know, described by data: models/*.json, installed as the package ``bort_infer.models``."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


def _models_dir():
    try:
        return resources.files("bort_infer.models")
    except ModuleNotFoundError:  # a source checkout that was never installed
        return Path(__file__).resolve().parent.parent / "models"


def known_models() -> list[str]:
    return sorted(f.name[: -len(".json")] for f in _models_dir().iterdir() if f.name.endswith(".json"))


def model_spec(name: str) -> dict[str, Any]:
    """The spec of a known model: its HF config, tokenizer kind and default pooling."""
    known = known_models()
    if name not in known:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(known)}")
    return json.loads(_models_dir().joinpath(f"{name}.json").read_text())
