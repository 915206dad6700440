"""Build of bort_infer._C: the fused kernels as one shared object that is both a pybind11 module and an
onnxruntime custom-op library (it exports ``RegisterCustomOps``).

Kernels are compiled for baseline x86-64; the AVX2+FMA, AVX-512 (VNNI, BF16) and AMX paths are marked with
GCC ``target`` attributes and chosen at run time from CPUID
(``BORT_INFER_ISA=scalar|avx2|avx512|avx512_vnni|avx512_bf16|amx|auto``), so one build runs on any x86-64 CPU.
"""
import os
import sys
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

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


class BuildPy(build_py):
    """Ships the known models, models/*.json at the top of the source tree, as bort_infer/models/*.json
    (bort_infer.registry reads them there when installed, from the checkout otherwise)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "bort_infer" / "models"
            self.mkpath(str(target))
            for spec in sorted((ROOT / "models").glob("*.json")):
                self.copy_file(str(spec), str(target / spec.name))


# One compiler per core (NPY_NUM_BUILD_JOBS overrides): the kernels build in half the time on 2 cores.
ParallelCompile("NPY_NUM_BUILD_JOBS").install()

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
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
