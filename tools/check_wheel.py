"""Check the regular (non-editable) wheel: build it, install it into a fresh venv outside the checkout, and
there import every module of the run-time world and of the Ray integration, run each console script's
--help, check that the package data (the known models, the calibration texts, the C header) and the
Python-free custom-op library are in the wheel, and register that library with onnxruntime's
RegisterCustomOpsLibrary from the venv.

Usage: python tools/check_wheel.py [--wheel PATH] [--keep]

The venv has no site-packages of its own beyond the wheel: the dependencies (onnxruntime, numpy, tokenizers,
tqdm; Ray where installed) are taken from this interpreter's site-packages through a .pth line, which puts
that directory on sys.path after the venv's own without running its .pth files: an editable install of this
checkout there stays inert, so every bort_infer module imported comes from the wheel (checked by path).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("bort-infer", "bort-bench")
BUILD_TIME = ("torch", "transformers", "optimum", "onnx")
# Modules whose world is not the run time: imported (where their dependencies exist) but not held to it.
NOT_RUN_TIME = ("bort_infer.export", "bort_infer.bench", "bort_infer.cli.bench", "bort_infer.integrations.ray")
RAY = "bort_infer.integrations.ray"

# Runs inside the venv: imports every module the wheel ships, reports where each came from.
PROBE = r"""
import importlib, json, sys
from pathlib import Path
import bort_infer
not_run_time, ray_pkg, build_time = json.loads(sys.argv[1])
# From the files (importing packages to list their modules would import the Ray integration first).
root = Path(bort_infer.__file__).parent.parent
names = sorted(".".join(p.with_suffix("").relative_to(root).parts).removesuffix(".__init__")
               for p in Path(bort_infer.__file__).parent.rglob("*.py"))
run_time = [n for n in names if not n.startswith(tuple(not_run_time))]
files, errors = {"bort_infer": bort_infer.__file__}, {}
for name in run_time:
    files[name] = importlib.import_module(name).__file__
leaked = [m for m in build_time if m in sys.modules]
try:
    import ray  # noqa: F401
    has_ray = True
except ImportError:
    has_ray = False
for name in [n for n in names if n.startswith(ray_pkg)] if has_ray else []:
    files[name] = importlib.import_module(name).__file__
# The custom-op library the wheel ships, through onnxruntime's RegisterCustomOpsLibrary.
import onnxruntime
onnxruntime.SessionOptions().register_custom_ops_library(bort_infer.custom_op_library())
files["ops library"] = bort_infer.custom_op_library()
files["include dir"] = bort_infer.include_dir()
print(json.dumps({"modules": names, "run_time": run_time, "files": files, "build_time_loaded": leaked,
                  "ray": has_ray}))
"""


def build_wheel(out_dir: Path) -> Path:
    """A regular wheel of this checkout (no build isolation: the build requirements are installed here)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out_dir)], check=True)
    (wheel,) = out_dir.glob("bort_infer-*.whl")
    return wheel


def make_venv(where: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel, seeing this interpreter's packages after its own (see the docstring)."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_host_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True)
    return python


def check(wheel: Path, work: Path) -> list[str]:
    problems = []
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("bort_infer/models/bort.json", "bort_infer/models/bert-large.json",
                 "bort_infer/export/data/fidelity_texts.txt", "bort_infer/libbort_infer_ops.so",
                 "bort_infer/include/bort_infer_ops.h"):
        if data not in names:
            problems.append(f"{data} is not in the wheel")
    packages = sorted(str(p.parent.relative_to(ROOT)).replace(os.sep, ".")
                      for p in (ROOT / "bort_infer").rglob("__init__.py"))
    for package in packages:
        if package.replace(".", "/") + "/__init__.py" not in names:
            problems.append(f"package {package} is not in the wheel")

    python = make_venv(work / "venv", wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["BORT_INFER_PROGRESS"] = "0"
    probe = subprocess.run([str(python), "-c", PROBE, json.dumps([NOT_RUN_TIME, RAY, BUILD_TIME])], cwd=work,
                           env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        return problems + [f"importing the wheel's modules failed:\n{probe.stderr}"]
    found = json.loads(probe.stdout)
    venv_root = str((work / "venv").resolve())
    for name, file in found["files"].items():
        if not str(Path(file).resolve()).startswith(venv_root):
            problems.append(f"{name} was imported from {file}, not from the wheel")
    if found["build_time_loaded"]:
        problems.append(f"the run-time modules imported {', '.join(found['build_time_loaded'])}")
    for name in (RAY, f"{RAY}.udf", f"{RAY}.shipping", f"{RAY}.file_job", "bort_infer.cli.main"):
        if name not in found["modules"]:
            problems.append(f"{name} is not in the wheel")
    ray_modules = [n for n in found["files"] if n.startswith(RAY)]
    print(f"check_wheel: {len(found['files'])} modules imported from the wheel ({len(found['run_time'])} of the "
          f"run-time world, {len(ray_modules)} of the Ray integration"
          f"{'' if found['ray'] else ': ray is not installed here'})")

    for script in SCRIPTS:
        run = subprocess.run([str(work / "venv" / "bin" / script), "--help"], cwd=work, env=env,
                             capture_output=True, text=True)
        if run.returncode != 0 or "usage:" not in run.stdout:
            problems.append(f"{script} --help failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="check this wheel instead of building one")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (wheel and venv)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bort-infer-wheel-check-"))
    try:
        wheel = args.wheel.resolve() if args.wheel else build_wheel(work / "dist")
        problems = check(wheel, work)
    finally:
        if args.keep:
            print(f"check_wheel: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"check_wheel: {problem}", file=sys.stderr)
    print(f"check_wheel: {'FAILED' if problems else 'ok'} in {time.perf_counter() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
