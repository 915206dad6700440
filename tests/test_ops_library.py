"""libbort_infer_ops.so, the custom-op library for non-Python apps: it needs no Python, exports only the C entry
points of bort_infer_ops.h, stays small, and its C functions (version, ISA choice) behave as the header says.
Running real models through onnxruntime's C API from a C program: tests/examples/test_c_consumer.py."""
from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bort_infer

from .test_kernels import OPS_LIBRARY, C

HEADER = Path(bort_infer.include_dir()) / "bort_infer_ops.h"
C_ENTRY_POINTS = {"RegisterCustomOps", "bort_infer_ops_version", "bort_infer_set_isa", "bort_infer_active_isa"}
# What a plain C++ library may need from the system: the C and C++ runtimes and the dynamic loader.
ALLOWED_NEEDED = re.compile(r"^(libc|libm|libstdc\+\+|libgcc_s|ld-linux[-\w]*)\.so(\.\d+)*$")
SANITIZED = bool(os.environ.get("BORT_INFER_C_DIR"))  # `make asan` builds link the sanitizer runtimes

needs_binutils = pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("nm") is None,
                                    reason="binutils (readelf, nm) not installed")


def dynamic_symbols(*flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, OPS_LIBRARY], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_custom_op_library_is_the_python_free_library_beside_the_module():
    assert Path(bort_infer.custom_op_library()).name == "libbort_infer_ops.so"
    assert Path(bort_infer.custom_op_library()).parent == Path(bort_infer.__file__).parent


@needs_binutils
@pytest.mark.skipif(SANITIZED, reason="a sanitizer build needs the sanitizer runtimes")
def test_needs_only_the_c_and_cxx_runtimes():
    dynamic = subprocess.run(["readelf", "-d", OPS_LIBRARY], check=True, capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert needed and all(ALLOWED_NEEDED.match(n) for n in needed), needed
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic
    assert not [s for s in dynamic_symbols("--undefined-only") if s.startswith(("Py", "_Py"))]


@needs_binutils
def test_exports_only_the_c_entry_points():
    assert dynamic_symbols("--defined-only") == C_ENTRY_POINTS


@pytest.mark.skipif(platform.machine() != "x86_64" or SANITIZED, reason="the size budget is for x86-64 release builds")
def test_stays_small():
    # Shipped stripped: 399 KB (7 Dec 2026) with the int8 and bf16 GEMMs (each with AMX, AVX-512 and AVX2 paths) in
    # it, the front end and the bf16 GEMM's packing and scalar path compiled for size (setup.py SIZE_OPTIMIZED).
    # The budget is 400 KB.
    size = os.path.getsize(OPS_LIBRARY)
    assert size <= 400 * 1024, f"{OPS_LIBRARY} is {size / 1024:.0f} KB"


def test_version_matches_the_header_and_the_package():
    lib = ctypes.CDLL(OPS_LIBRARY)
    lib.bort_infer_ops_version.restype = ctypes.c_char_p
    header = HEADER.read_text()
    macro = re.search(r'#define BORT_INFER_VERSION "([^"]+)"', header).group(1)
    parts = [re.search(rf"#define BORT_INFER_VERSION_{p} (\d+)", header).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
    assert lib.bort_infer_ops_version().decode() == macro == bort_infer.__version__ == ".".join(parts)


def test_isa_choice_through_the_c_api_and_through_the_module_is_one_choice():
    lib = ctypes.CDLL(OPS_LIBRARY)  # the copy _C loaded: one process, one library
    lib.bort_infer_active_isa.restype = ctypes.c_char_p
    error = ctypes.create_string_buffer(256)
    try:
        C.set_isa("scalar")
        assert lib.bort_infer_active_isa() == b"scalar"
        C.set_isa("auto")
        assert lib.bort_infer_active_isa().decode() == C.best_isa()
        assert lib.bort_infer_set_isa(b"scalar", error, len(error)) == 0
        assert lib.bort_infer_active_isa() == b"scalar"
        assert lib.bort_infer_set_isa(b"avx1024", error, len(error)) != 0
        assert b"avx1024" in error.value and b"scalar|" in error.value and b"|auto" in error.value
        assert lib.bort_infer_active_isa() == b"scalar"  # a refused choice changes nothing
        assert lib.bort_infer_set_isa(None, None, 0) != 0
        tiny = ctypes.create_string_buffer(8)
        assert lib.bort_infer_set_isa(b"bogus", tiny, len(tiny)) != 0 and len(tiny.value) == 7
    finally:
        C.set_isa("auto")


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.parametrize("std", ["c99", "c11"])
def test_header_stands_alone_in_c(tmp_path, std):
    src = tmp_path / "use.c"
    src.write_text('#include "bort_infer_ops.h"\nconst char* (*version)(void) = &bort_infer_ops_version;\n'
                   'int (*choose)(const char*, char*, size_t) = &bort_infer_set_isa;\n')
    compiler = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([compiler, f"-std={std}", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only",
                    f"-I{HEADER.parent}", str(src)], check=True)


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
@pytest.mark.parametrize("order", ["ours first", "onnxruntime first"])
def test_header_agrees_with_onnxruntimes_header_in_cxx(tmp_path, order):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from ort_headers import find_ort_include_dir

    ours, theirs = '#include "bort_infer_ops.h"\n', "#include <onnxruntime_c_api.h>\n"
    src = tmp_path / "use.cc"
    src.write_text((ours + theirs if order == "ours first" else theirs + ours) +
                   "OrtStatus* (*entry)(OrtSessionOptions*, const OrtApiBase*) = &RegisterCustomOps;\n")
    subprocess.run(["c++", "-std=c++17", "-Wall", "-Werror", "-fsyntax-only", f"-I{HEADER.parent}",
                    f"-I{find_ort_include_dir(Path(__file__).resolve().parents[1])}", str(src)], check=True)


@pytest.mark.parametrize("value, message", [("avx1024", "unknown ISA 'avx1024'"), ("neon_i8mm" if platform.machine()
                                            == "x86_64" else "amx", "unknown ISA")])
def test_registration_refuses_a_bad_isa_environment_variable_naming_the_accepted_values(value, message):
    code = ("import onnxruntime as ort, sys\n"
            f"try:\n    ort.SessionOptions().register_custom_ops_library({OPS_LIBRARY!r})\n"
            "except Exception as e:\n    print(e); sys.exit(3)\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, BORT_INFER_ISA=value),
                         capture_output=True, text=True)
    assert out.returncode == 3, out.stdout + out.stderr
    assert message in out.stdout and "scalar|" in out.stdout and "|auto" in out.stdout
