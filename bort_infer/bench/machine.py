"""The machine a bort-bench run measured: CPU model, the instruction sets that decide which kernels run
(AVX2, AVX-512, VNNI, AVX512-BF16, AMX), cores, memory and library versions. Speed figures mean nothing
without it, so it heads the table and goes into the JSON."""
from __future__ import annotations

import os
import platform

# /proc/cpuinfo flag → the name the report prints, in the order it prints them.
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def read_cpuinfo(text: str) -> dict:
    """CPU model, family/model/stepping and the ISA flags of the first processor in /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: every core of a machine reports the same
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.processor() or "unknown"),
            "cpu_id": {k: fields[k] for k in ("vendor_id", "cpu family", "model", "stepping") if k in fields},
            "isa": [name for flag, name in ISA_FLAGS.items() if flag in flags]}


def isa_summary(isa: list[str]) -> str:
    """"AVX2, AVX-512, AVX512-VNNI, AVX512-BF16, no AMX": what the kernels can use, and the absence that
    matters most for int8 and bf16 GEMMs."""
    has = [x for x in isa if x != "FMA"]
    if "AVX2" not in isa:
        has.insert(0, "no AVX2")
    if not any(x.startswith("AMX") for x in isa):
        has.append("no AMX")
    return ", ".join(has)


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(threads: int) -> dict:
    """Everything the report states about the machine and the software it measured."""
    import onnxruntime

    from .. import __version__

    try:
        with open("/proc/cpuinfo") as f:
            cpu = read_cpuinfo(f.read())
    except OSError:
        cpu = {"cpu": platform.processor() or "unknown", "cpu_id": {}, "isa": []}
    info = {**cpu, "isa_summary": isa_summary(cpu["isa"]), "cpu_count": os.cpu_count(), "memory_gib": memory_gib(),
            "threads": threads, "platform": platform.platform(), "python": platform.python_version(),
            "bort_infer": __version__, "onnxruntime": onnxruntime.__version__}
    for module in ("torch", "openvino", "nncf", "ctranslate2"):
        version = _version_of(module)
        if version:
            info[module] = version
    return info


def headline(machine: dict) -> str:
    """One line naming the CPU, its ISA, cores and threads."""
    return (f"{machine.get('cpu', '?')} ({machine.get('isa_summary', '?')}), {machine.get('cpu_count')} cores, "
            f"{machine.get('memory_gib')} GiB; {machine.get('threads')} threads per backend")


def _version_of(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None
