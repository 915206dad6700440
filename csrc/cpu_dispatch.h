// Run-time choice of the kernel paths: portable scalar, AVX2+FMA, AVX-512, and the AVX-512 extensions
// (VNNI int8 dot products, BF16 dot products) and AMX tiles used by the GEMMs.
//
// The library is compiled for baseline x86-64; vector code lives in functions carrying GCC target
// attributes (BORT_AVX2 / BORT_AVX512 / ... in simd_math.h) and is only called when the CPU supports it.
#pragma once

#include <string>
#include <vector>

namespace bort {

// Ordered levels: each includes every level below it, so `isa >= Isa::kAvx512` means "AVX-512 code may
// run" and a kernel without a path of its own for a level uses the best one below it (element-wise kernels
// run their AVX-512 path at every level above it). Real CPUs follow this order: every AMX CPU has
// AVX512-BF16, every AVX512-BF16 CPU has AVX512-VNNI.
enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Vnni, kAvx512Bf16, kAmx };

// Feature queries about the CPU (and the OS state it needs), independent of the override.
// True when the CPU supports AVX2 and FMA and the OS saves ymm state.
bool cpu_has_avx2_fma();
// AVX-512 F, DQ, BW and VL (plus AVX2 and FMA), with zmm and opmask state enabled in XCR0.
bool cpu_has_avx512();
// cpu_has_avx512() and AVX512-VNNI (vpdpbusd: u8 x s8 dot products into int32).
bool has_avx512_vnni();
// has_avx512_vnni() and AVX512-BF16 (vdpbf16ps, vcvtne2ps2bf16).
bool has_avx512_bf16();
// AMX-TILE + AMX-INT8 / AMX-BF16 on top of has_avx512_bf16(), tile state enabled in XCR0, and the Linux
// kernel granted this process the tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA),
// requested once per process on the first query; a refusal makes these false, never an error).
bool has_amx_int8();
bool has_amx_bf16();

// Whether the CPU supports `isa` (every feature of that level and of those below it).
bool isa_supported(Isa isa);
// The best supported level, what "auto" selects.
Isa best_isa();
// Every supported level, lowest first.
std::vector<Isa> supported_isas();

// The ISA the kernels use now. Initialised from env BORT_INFER_ISA (one of isa_names_accepted(); default
// auto: the best the CPU supports). An unknown or unsupported value leaves the choice at auto and is
// reported by isa_environment_error(), which the Python module and the onnxruntime registration turn into
// an error naming the accepted values.
Isa active_isa();

// Force an ISA by name (see isa_names_accepted()). Throws std::invalid_argument on an unknown name and
// std::runtime_error when the CPU lacks the requested ISA.
void set_isa(const std::string& name);

// "scalar", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx".
const char* isa_name(Isa isa);
// "scalar|avx2|avx512|avx512_vnni|avx512_bf16|amx|auto".
std::string isa_names_accepted();
// Empty when BORT_INFER_ISA is unset or valid for this CPU; otherwise what is wrong with it.
const std::string& isa_environment_error();

}  // namespace bort
