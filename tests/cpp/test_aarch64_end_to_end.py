"""tiny-bort end to end on aarch64 without ARM hardware: libbort_infer_ops.so and examples/c/bort_embed cross-built
for aarch64, onnxruntime's C library from its aarch64 wheel (pip download, same version as here), run under
qemu-aarch64 on model.onnx (packed int8, padded fp32) and on an x86-written model.ort; the vectors must match
Session's on x86-64 (another machine's kernels and onnxruntime's ARM GEMMs:
within 1e-5 relative, not bit for bit).

qemu-user 7.2 shows the host's /proc/cpuinfo, on which onnxruntime's CPU probe (cpuinfo) crashes at load, so the
program runs in a private mount namespace with an aarch64 /proc/cpuinfo bound over it (needs unshare + mount,
i.e. root or user namespaces). Skips, saying why, when the toolchain, the wheel or the namespace is unavailable.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import bort_infer
from bort_infer import Session

from ..conftest import VARIED_TEXTS

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "cpp-tests"
SYSROOT = "/usr/aarch64-linux-gnu"
# What an armv8.6 core with the dot products and i8mm reports (qemu's "max" CPU has all of it).
AARCH64_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm bf16\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x0\nCPU part\t: 0xd40\nCPU revision\t: 1\n\n" for i in range(2))


def make(*args: str) -> None:
    proc = subprocess.run(["make", "-s", "-j2", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory) -> dict[str, Path]:
    setup = subprocess.run([str(ROOT / "tools" / "install_cross_toolchain.sh")], capture_output=True, text=True)
    if setup.returncode != 0:
        pytest.skip(f"no aarch64 cross toolchain / qemu: {setup.stderr.strip()}")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private /proc/cpuinfo")
    cpuinfo = tmp_path_factory.mktemp("aarch64") / "cpuinfo"
    cpuinfo.write_text(AARCH64_CPUINFO)
    bind = f"mount --bind {cpuinfo} /proc/cpuinfo && head -1 /proc/cpuinfo"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", bind], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind an aarch64 /proc/cpuinfo in a mount namespace here: {probe.stderr.strip()}")
    wheels = BUILD / "aarch64-onnxruntime"
    version = onnxruntime.__version__
    capi = wheels / version / "onnxruntime" / "capi"
    if not capi.is_dir():
        download = subprocess.run([sys.executable, "-m", "pip", "download", f"onnxruntime=={version}", "--no-deps",
                                   "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--platform",
                                   "manylinux2014_aarch64", "--python-version",
                                   f"{sys.version_info.major}.{sys.version_info.minor}", "-q", "-d", str(wheels)],
                                  capture_output=True, text=True)
        found = sorted(wheels.glob(f"onnxruntime-{version}-*aarch64.whl"))
        if download.returncode != 0 or not found:
            pytest.skip(f"onnxruntime {version}'s aarch64 wheel is not downloadable here: "
                        f"{download.stderr.strip()[-300:]}")
        with zipfile.ZipFile(found[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith("onnxruntime/capi/libonnxruntime"):
                    wheel.extract(name, wheels / version)
    ops = BUILD / "aarch64"  # test_kernel_paths.py's aarch64 build: its kernel objects are the library's too
    make("-C", str(ROOT / "tests" / "cpp"), f"BUILD={ops}", "CXX=aarch64-linux-gnu-g++", f"PYTHON={sys.executable}",
         "ops-library")
    example = BUILD / "aarch64-example"
    make("-C", str(ROOT / "examples" / "c"), f"BUILD={example}", "CC=aarch64-linux-gnu-gcc", f"ORT_CAPI={capi}",
         f"BORT_OPS_LIB={ops / 'libbort_infer_ops.so'}", f"BORT_INCLUDE={bort_infer.include_dir()}",
         f"PYTHON={sys.executable}", "all")
    return {"program": example / "bort_embed", "ops": ops / "libbort_infer_ops.so", "cpuinfo": cpuinfo}


def embed_under_qemu(aarch64: dict[str, Path], model: Path, ids: list[list[int]], *options: str) -> np.ndarray:
    script = (f"mount --bind {aarch64['cpuinfo']} /proc/cpuinfo && exec qemu-aarch64 -L {SYSROOT} "
              f"{aarch64['program']} --ops-lib {aarch64['ops']} --threads 1 " + " ".join(options) + f" {model}")
    stdin = "".join(" ".join(map(str, s)) + "\n" for s in ids)
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], input=stdin, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "QEMU_CPU": "max"})
    assert out.returncode == 0, out.stderr[-2000:]
    return np.array([[np.float32(v) for v in line.split()] for line in out.stdout.splitlines()], dtype=np.float32)


@pytest.mark.parametrize("options, model_file",
                         [({"quantize": "int8"}, "model.onnx"), ({"form": "padded"}, "model.onnx"),
                          ({"ort_format": True}, "model.ort")],
                         ids=["packed int8", "padded fp32", "packed fp32 ORT format"])
def test_aarch64_vectors_match_session_on_x86(aarch64, exports, options, model_file):
    directory = exports("tiny-bort", **options)
    session = Session(directory, threads=1)
    ids = [e.ids for e in session.tokenize(VARIED_TEXTS[:12])]
    # An int8 export asks for attention on int8 / bf16 operands, which only AVX512-BF16 (or AMX) CPUs run; aarch64 runs
    # that attention in fp32, so the x86 reference does too (the int8 GEMMs are exact on every level).
    previous = bort_infer._C.active_isa()
    if bort_infer._C.best_isa() in ("avx512_bf16", "amx"):
        bort_infer._C.set_isa("avx512_vnni")
    try:
        want = {pooling: session.embed_ids(ids, pooling=pooling) for pooling in ("cls", "mean")}
    finally:
        bort_infer._C.set_isa(previous)
    # Packed graphs compute only the CLS rows in their last layer when asked for CLS pooling: both poolings run.
    # A padded graph computes every row either way, and its CLS vector is one of the rows the mean sums, so mean
    # alone covers its kernels (the pooling code is plain C, checked on x86 by tests/examples).
    for pooling in ("mean",) if options.get("form") == "padded" else ("cls", "mean"):
        got = embed_under_qemu(aarch64, directory, ids, "--pooling", pooling, "--model", model_file)
        assert got.shape == want[pooling].shape
        bound = 1e-5 * max(1.0, float(np.abs(want[pooling]).max()))
        diff = np.abs(got - want[pooling])
        if options.get("quantize"):
            # Attention's float sums differ in the last bit between the two machines' kernels; where that moves an
            # activation across a rounding boundary, requantizing it for the next int8 GEMM lands one level away.
            # One such step moves a text's whole vector slightly (LayerNorm spreads it): bound each text's vector.
            a, b = got.astype(np.float64), want[pooling].astype(np.float64)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cosine.min() >= 0.999999 and diff.max() <= 100 * bound
        else:
            assert diff.max() <= bound
