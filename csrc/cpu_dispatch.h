// Run-time choice between the portable scalar kernels and the AVX2+FMA kernels.
//
// The library is compiled for baseline x86-64; AVX2 code lives in functions carrying
// __attribute__((target("avx2,fma"))) and is only called when the CPU supports it.
#pragma once

#include <string>

namespace bort {

enum class Isa { kScalar, kAvx2 };

// True when the CPU (not the override) supports AVX2 and FMA.
bool cpu_has_avx2_fma();

// The ISA the kernels use now. Initialised from env BORT_INFER_ISA=scalar|avx2|auto (default auto).
Isa active_isa();

// Force an ISA: "scalar", "avx2" or "auto". Throws std::invalid_argument on an unknown name and
// std::runtime_error when "avx2" is requested on a CPU without AVX2+FMA.
void set_isa(const std::string& name);

const char* isa_name(Isa isa);

}  // namespace bort
