"""bort-bench's machine description: the CPU and the instruction sets that decide which kernels run."""
from bort_infer.bench.machine import headline, isa_summary, machine_info, read_cpuinfo

ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
flags		: fpu sse2 avx fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni

processor	: 1
model name	: something else entirely
flags		: fpu
"""

SAPPHIRE_RAPIDS_FLAGS = "avx2 fma avx512f avx512_vnni avx_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"


def test_cpu_model_and_isa_come_from_the_first_processor():
    cpu = read_cpuinfo(ZEN4)
    assert cpu["cpu"] == "AMD EPYC"
    assert cpu["cpu_id"] == {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "stepping": "1"}
    assert cpu["isa"] == ["AVX2", "FMA", "AVX-512", "AVX512-VNNI", "AVX512-BF16"]


def test_the_summary_says_when_amx_is_missing():
    assert isa_summary(read_cpuinfo(ZEN4)["isa"]) == "AVX2, AVX-512, AVX512-VNNI, AVX512-BF16, no AMX"
    spr = read_cpuinfo(f"model name : Intel(R) Xeon(R) Platinum\nflags : {SAPPHIRE_RAPIDS_FLAGS}\n")
    assert isa_summary(spr["isa"]) == ("AVX2, AVX-512, AVX512-VNNI, AVX-VNNI, AVX512-BF16, AVX512-FP16, AMX, AMX-INT8, "
                                       "AMX-BF16")
    assert isa_summary([]) == "no AVX2, no AMX"


def test_machine_info_names_the_cpu_threads_and_libraries():
    info = machine_info(threads=2)
    assert info["threads"] == 2 and info["cpu"] and "isa" in info and info["onnxruntime"]
    line = headline(info)
    assert info["cpu"] in line and info["isa_summary"] in line and "2 threads per backend" in line
