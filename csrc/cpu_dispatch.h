// Run-time choice between the portable scalar kernels, the AVX2+FMA kernels and the AVX-512 kernels.
//
// The library is compiled for baseline x86-64; vector code lives in functions carrying GCC target
// attributes (BORT_AVX2 / BORT_AVX512 in simd_math.h) and is only called when the CPU supports it.
#pragma once

#include <string>

namespace bort {

// Ordered: each ISA includes everything below it, so `isa >= Isa::kAvx2` means "AVX2 code may run".
enum class Isa { kScalar, kAvx2, kAvx512 };

// True when the CPU (not the override) supports AVX2 and FMA.
bool cpu_has_avx2_fma();

// True when the CPU and the OS (zmm and mask state enabled in XCR0) support everything BORT_AVX512 code
// is compiled for: AVX-512 F, DQ, BW and VL, plus AVX2 and FMA.
bool cpu_has_avx512();

// The ISA the kernels use now. Initialised from env BORT_INFER_ISA=scalar|avx2|avx512|auto (default auto:
// the best the CPU supports).
Isa active_isa();

// Force an ISA: "scalar", "avx2", "avx512" or "auto". Throws std::invalid_argument on an unknown name and
// std::runtime_error when the CPU lacks the requested ISA.
void set_isa(const std::string& name);

const char* isa_name(Isa isa);

}  // namespace bort
