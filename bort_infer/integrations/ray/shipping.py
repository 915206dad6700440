"""Model shipping: a model directory put into Ray's object store once, written by each actor to a node-local
cache (one copy per node, keyed by its SHA-256) and loaded from there."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from ...model_dir import METADATA_FILE, ModelDirectoryError, read_metadata

CACHE_ENV = "BORT_INFER_RAY_CACHE"


@dataclass(frozen=True)
class ShippedModel:
    """A model directory in Ray's object store: ``ref`` holds {relative path: bytes}."""

    ref: Any  # ray.ObjectRef
    digest: str
    name: str
    nbytes: int

    def materialize(self, cache_dir: str | Path | None = None) -> Path:
        """The model as a local directory on this node, written once per node (atomic rename)."""
        root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "bort-infer-ray")
        root.mkdir(parents=True, exist_ok=True)
        target = root / self.digest
        if (target / METADATA_FILE).is_file():
            return target
        files: dict[str, bytes] = ray.get(self.ref)
        if _digest(files) != self.digest:
            raise ModelDirectoryError(f"model {self.name} arrived corrupted (SHA-256 mismatch)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.digest[:12]}-", dir=root))
        try:
            for rel, data in files.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            try:
                os.rename(tmp, target)
            except OSError:  # another actor on this node got there first
                if not (target / METADATA_FILE).is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + len(files[rel]).to_bytes(8, "little"))
        h.update(files[rel])
    return h.hexdigest()


def ship_model(model_dir: str | Path) -> ShippedModel:
    """Validate a model directory here and put its files into Ray's object store (call after ray.init)."""
    d = Path(model_dir)
    read_metadata(d)  # a ModelDirectoryError names the problem on the driver, not on every worker
    files = {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    return ShippedModel(ref=ray.put(files), digest=_digest(files), name=str(d),
                        nbytes=sum(len(b) for b in files.values()))

