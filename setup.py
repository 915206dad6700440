"""Build of the fused kernels as two shared objects in bort_infer/:

- ``libbort_infer_ops.so``: every kernel and the onnxruntime custom-op registration behind the C entry points of
  bort_infer/include/bort_infer_ops.h (``RegisterCustomOps``, version, ISA choice); no Python: it needs only the
  C/C++ runtimes, exports nothing else, and is what ``bort_infer.custom_op_library()`` returns;
- ``_C``: the pybind11 module (csrc/python_bindings.cc) over the same kernel objects, linked against the ops
  library (rpath $ORIGIN) so that ``_C.set_isa`` also steers the kernels onnxruntime runs.

Every kernel source is compiled once and linked into both.

Kernels are compiled for the baseline of the architecture (x86-64 or armv8-a); the AVX2+FMA, AVX-512 (VNNI,
BF16) and AMX paths, and on aarch64 the NEON dot-product and i8mm paths, are marked with GCC ``target`` attributes
and chosen at run time (``BORT_INFER_ISA``, see csrc/cpu_dispatch.h), so one build runs on any CPU of its
architecture.
"""
import os
import sys
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.modified import newer_group

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
from ort_headers import find_ort_include_dir  # noqa: E402

OPS_LIBRARY = "libbort_infer_ops.so"
PUBLIC_INCLUDE = "bort_infer/include"
BINDINGS = "csrc/python_bindings.cc"
# Only in the ops library: the onnxruntime registration and the other C entry points.
OPS_ENTRY_POINTS = ["csrc/ort_custom_ops.cc", "csrc/ops_library.cc"]
KERNELS = sorted(set(glob("csrc/*.cc")) - {BINDINGS, *OPS_ENTRY_POINTS})
VERSION_SCRIPT = "csrc/libbort_infer_ops.map"
# Front-end code that runs once per op call (input and shape validation, registration, dispatch), the GEMMs' task
# split and scalar references and the bf16 GEMM's packing (their vector paths are in gemm_bf16_*.cc and
# gemm_int8_*.cc), compiled for size: -O3 on them costs ~90 KB of the ops library and no measurable time.
SIZE_OPTIMIZED = {"csrc/ort_custom_ops.cc", "csrc/ops_library.cc", "csrc/shape_checks.cc", "csrc/cpu_dispatch.cc",
                  "csrc/gemm_bf16.cc", "csrc/gemm_int8.cc"}


class BuildExt(build_ext):
    """Builds the ops library, then _C over the same kernel objects. onnxruntime's headers are found (or
    fetched) only when something is really built."""

    def build_extensions(self):
        (c_ext,) = self.extensions
        c_path = self.get_ext_fullpath(c_ext.name)
        ops_path = self._built_ops_library()
        inputs = sorted(glob("csrc/*")) + glob(f"{PUBLIC_INCLUDE}/*.h")
        c_ext.depends = inputs
        if not (self.force or any(newer_group(inputs, out, missing="newer") for out in (c_path, ops_path))):
            return super().build_extensions()  # both up to date: build_ext skips _C as well
        c_ext.include_dirs.append(str(find_ort_include_dir(ROOT)))
        sources = KERNELS + OPS_ENTRY_POINTS
        fast = [s for s in sources if s not in SIZE_OPTIMIZED]
        small = [s for s in sources if s in SIZE_OPTIMIZED]
        object_of = {}
        for group, extra in ((fast, []), (small, size_compile_args)):
            built = self.compiler.compile(group, output_dir=self.build_temp, include_dirs=c_ext.include_dirs,
                                          extra_postargs=[*c_ext.extra_compile_args, *extra], depends=inputs)
            object_of.update(zip(group, built))
        objects = [object_of[s] for s in sources]
        kernels = objects[:len(KERNELS)]
        self.mkpath(os.path.dirname(ops_path))
        # Linked by hand, not with Python's LDSHARED: that would add the interpreter's library path as rpath.
        linker = getattr(self.compiler, "linker_so_cxx", None) or [self.compiler.compiler_cxx[0], "-shared"]
        run = getattr(self.compiler, "call", None) or self.compiler.spawn  # spawn: setuptools < 80
        run([*linker, *objects, "-o", ops_path, f"-Wl,-soname,{OPS_LIBRARY}",
             f"-Wl,--version-script={VERSION_SCRIPT}", *ops_link_args])
        c_ext.extra_objects = [*kernels, ops_path]
        self.force = True  # _C links against the new ops library
        super().build_extensions()

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()  # --inplace: _C, and the ops library beside it
        package_dir = self.get_finalized_command("build_py").get_package_dir("bort_infer")
        self.copy_file(self._built_ops_library(), os.path.join(package_dir, OPS_LIBRARY), level=self.verbose)

    def _built_ops_library(self):
        return os.path.join(self.build_lib, "bort_infer", OPS_LIBRARY)

    def get_outputs(self):
        return [*super().get_outputs(), self._built_ops_library()]


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

# Sections per function let the linker drop the unused ones; the ops library ships stripped.
extra_compile_args = ["-O3", "-fvisibility=hidden", "-fno-math-errno", "-ffunction-sections", "-fdata-sections"]
extra_link_args = ["-Wl,--gc-sections"]
ops_link_args = ["-Wl,--gc-sections", "-Wl,--as-needed", "-s"]
size_compile_args = ["-Os"]
if os.environ.get("BORT_INFER_SANITIZE"):
    # Debug build of the kernels for `make asan`: address + undefined-behaviour sanitizers.
    # -fno-wrapv undoes the -fwrapv of Python's flags, so UBSan sees signed overflow (e.g. shape arithmetic).
    extra_compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-wrapv", "-fsanitize=address,undefined"]
    extra_link_args = ["-fsanitize=address,undefined"]
    ops_link_args = extra_link_args
    size_compile_args = []

ext = Pybind11Extension(
    "bort_infer._C",
    [BINDINGS],
    include_dirs=["csrc", PUBLIC_INCLUDE],
    cxx_std=17,
    extra_compile_args=extra_compile_args,
    extra_link_args=[*extra_link_args, "-Wl,-rpath,$ORIGIN"],
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
