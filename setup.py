"""Build of bort_infer._C: the fused kernels as one shared object that is both a pybind11 module and an
onnxruntime custom-op library (it exports ``RegisterCustomOps``).

Kernels are compiled for baseline x86-64; the AVX2+FMA and AVX-512 paths are marked with GCC ``target``
attributes and chosen at run time from CPUID (``BORT_INFER_ISA=scalar|avx2|avx512|auto``), so one build
runs on any x86-64 CPU.
"""
import os
import sys
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
from ort_headers import find_ort_include_dir  # noqa: E402


class BuildExt(build_ext):
    """Finds (or fetches) onnxruntime's headers only when the extension is really built."""

    def build_extensions(self):
        include = str(find_ort_include_dir(ROOT))
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()


extra_compile_args = ["-O3", "-fvisibility=hidden", "-fno-math-errno"]
extra_link_args = []
if os.environ.get("BORT_INFER_SANITIZE"):
    # Debug build of the kernels for `make asan`: address + undefined-behaviour sanitizers.
    extra_compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    extra_link_args = ["-fsanitize=address,undefined"]

ext = Pybind11Extension(
    "bort_infer._C",
    sorted(glob("csrc/*.cc")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    packages=["bort_infer", "bort_infer.export", "bort_infer.bench", "bort_infer.models"],
    package_dir={"bort_infer.models": "models"},
    package_data={"bort_infer.models": ["*.json"], "bort_infer.export": ["data/*.txt"]},
)
