"""tests/cpp/kernel_paths_test (every ISA path of csrc/'s kernels against the scalar reference, hostile shapes
included) built with the system compiler and run natively (the x86-64 AVX2 / AVX-512 paths this CPU has), and
cross-built for aarch64 and run under qemu-aarch64 as three CPUs, one per NEON level (runtime detection
through getauxval included). The aarch64 toolchain (Debian's g++-aarch64-linux-gnu, qemu-user) is installed
by tools/install_cross_toolchain.sh when missing; the aarch64 tests skip only when that is impossible."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "cpp-tests"  # git-ignored; make rebuilds what changed
SYSROOT = "/usr/aarch64-linux-gnu"
# qemu CPU models and the levels their hardware capabilities give: every NEON path, and each fallback.
QEMU_CPUS = {"max": "scalar neon neon_dotprod neon_i8mm", "cortex-a76": "scalar neon neon_dotprod",
             "cortex-a53": "scalar neon"}


def build(build_dir: Path, cxx: str) -> Path:
    proc = subprocess.run(["make", "-s", "-j2", "-C", str(ROOT / "tests" / "cpp"), f"BUILD={build_dir}", f"CXX={cxx}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return build_dir / "kernel_paths_test"


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def assert_all_levels_checked(out: subprocess.CompletedProcess, levels: str) -> None:
    assert out.returncode == 0 and "0 failures" in out.stdout, out.stdout[-4000:] + out.stderr
    assert f"levels: {levels} " in out.stdout
    for level in levels.split()[1:]:
        assert f"checked {level} against scalar" in out.stdout


@pytest.fixture(scope="module")
def native_binary() -> Path:
    if shutil.which("make") is None or shutil.which("g++") is None:
        pytest.skip("needs make and g++")
    return build(BUILD / platform.machine(), "g++")


@pytest.fixture(scope="module")
def aarch64_binary() -> Path:
    setup = subprocess.run([str(ROOT / "tools" / "install_cross_toolchain.sh")], capture_output=True, text=True)
    if setup.returncode != 0:
        pytest.skip(f"no aarch64 cross toolchain / qemu: {setup.stderr.strip()}")
    return build(BUILD / "aarch64", "aarch64-linux-gnu-g++")


def test_native_paths_equal_the_scalar_reference(native_binary):
    from tests.test_kernels import C

    out = run([str(native_binary)])
    assert_all_levels_checked(out, " ".join(C.supported_isas()))


@pytest.mark.parametrize("cpu", list(QEMU_CPUS))
def test_neon_paths_equal_the_scalar_reference_under_qemu(aarch64_binary, cpu):
    out = run(["qemu-aarch64", "-L", SYSROOT, str(aarch64_binary)], QEMU_CPU=cpu)
    assert_all_levels_checked(out, QEMU_CPUS[cpu])


@pytest.mark.parametrize("value, message", [("avx2", "unknown ISA 'avx2'"),
                                            ("neon_i8mm", "requested but this CPU lacks the int8 matrix extension")])
def test_a_bad_isa_choice_is_an_error_naming_the_accepted_values_on_aarch64(aarch64_binary, value, message):
    out = run(["qemu-aarch64", "-L", SYSROOT, str(aarch64_binary)], QEMU_CPU="cortex-a76", BORT_INFER_ISA=value)
    assert out.returncode == 2 and message in out.stdout, out.stdout
    assert value != "avx2" or "scalar|neon|neon_dotprod|neon_i8mm|auto" in out.stdout


def test_the_aarch64_build_holds_no_x86_code(aarch64_binary):
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump not installed")
    table = subprocess.run([objdump, "-t", "-C", str(aarch64_binary)], capture_output=True, text=True).stdout
    functions = [m.group(1) for m in re.finditer(r" F \.text\s+[0-9a-f]+\s+(.+)$", table, re.M)]
    assert any("attend_rows_neon" in f for f in functions) and any("gemm_int8_block_neon_i8mm" in f for f in functions)
    # Only the CPU feature queries (which answer false there) carry x86 names.
    x86 = [f for f in functions if re.search(r"avx|amx", f, re.I) and not re.search(r"::(cpu_)?has_", f)]
    assert not x86
