"""Packaging and the two worlds: every package is found for the wheel, and the run-time modules (all but
bort_infer.export, bort_infer.bench, bort_infer.cli.bench and the Ray integration; the server included)
import no build-time library. The wheel itself is built and checked in a fresh venv by tools/check_wheel.py
(a step of .ci/run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_under_bort_infer_is_found_for_the_wheel():
    from setuptools.config.pyprojecttoml import read_configuration

    found = set(read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"])
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "bort_infer").rglob("__init__.py")}
    assert on_disk <= found, f"not packaged: {sorted(on_disk - found)}"
    assert "bort_infer.integrations.ray" in found and "bort_infer.cli" in found


def test_run_time_modules_never_import_build_time_libraries():
    # Module names from the files: importing a package to list its modules would import the Ray integration.
    names = sorted(".".join(p.with_suffix("").relative_to(ROOT).parts).removesuffix(".__init__")
                   for p in (ROOT / "bort_infer").rglob("*.py"))
    outside = ("bort_infer.export", "bort_infer.bench", "bort_infer.cli.bench", "bort_infer.integrations.ray")
    code = f"""
import importlib, json, sys
names = [n for n in {names!r} if not n.startswith({outside!r})]
for name in names:
    importlib.import_module(name)
print(json.dumps({{"modules": names, "loaded": [m for m in ("torch", "transformers", "optimum", "onnx", "ray")
                                                if m in sys.modules]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = {"bort_infer.session", "bort_infer.options", "bort_infer.textlines", "bort_infer.encode_file",
                "bort_infer.pooling", "bort_infer.model_dir", "bort_infer.registry", "bort_infer.cli.main",
                "bort_infer.cli.encode", "bort_infer.cli.serve", "bort_infer.integrations", "bort_infer.batching",
                "bort_infer.serve", "bort_infer.serve.app", "bort_infer.serve.batcher", "bort_infer.serve.errors",
                "bort_infer.serve.limits", "bort_infer.serve.metrics", "bort_infer.serve.options",
                "bort_infer.serve.schemas", "bort_infer.serve.server"}
    assert expected <= set(result["modules"])
    assert result["loaded"] == []


def test_serving_requests_loads_no_build_time_library(model):
    # The server's whole request path (app, batching worker, tokenization, model) in a fresh process.
    code = f"""
import json, sys
from starlette.testclient import TestClient
from bort_infer import Session
from bort_infer.serve import ServeOptions, create_app
app = create_app(Session({str(model)!r}, threads=1), ServeOptions(model={str(model)!r}, model_name="m"))
with TestClient(app) as client:
    assert client.post("/v1/embeddings", json={{"input": ["a", "b"], "model": "m"}}).status_code == 200
    assert client.post("/embed", json={{"inputs": "c"}}).status_code == 200
    assert client.get("/metrics").status_code == 200
print(json.dumps([m for m in ("torch", "transformers", "optimum", "onnx", "ray") if m in sys.modules]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_known_models_are_read_from_the_checkout_or_the_installed_package():
    from bort_infer.registry import _models_dir, known_models

    assert {"bort", "bert-large", "tiny-bort", "tiny-bert-large"} <= set(known_models())
    assert (_models_dir() / "bort.json").is_file()


def test_the_dev_extra_holds_every_build_requirement():
    # `make asan` and `python setup.py build_ext --inplace` build outside pip's isolated build environment: after
    # README's install line (-e ".[export,dev]") setup.py's own imports (pybind11, a setuptools with
    # setuptools.modified) must already be installed.
    import re

    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(ROOT / "pyproject.toml")
    name = re.compile(r"[A-Za-z0-9_.-]+")
    dev = {name.match(r).group().lower() for r in config["project"]["optional-dependencies"]["dev"]}
    build = {name.match(r).group().lower() for r in config["build-system"]["requires"]}
    assert build <= dev, f"missing from the dev extra: {sorted(build - dev)}"
