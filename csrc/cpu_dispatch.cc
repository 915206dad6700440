#include "cpu_dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace bort {
namespace {

Isa best_supported() {
  if (cpu_has_avx512()) return Isa::kAvx512;
  return cpu_has_avx2_fma() ? Isa::kAvx2 : Isa::kScalar;
}

Isa parse_or_throw(const std::string& name) {
  if (name == "auto") return best_supported();
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") {
    if (!cpu_has_avx2_fma()) throw std::runtime_error("BORT_INFER_ISA=avx2 requested but this CPU lacks AVX2/FMA");
    return Isa::kAvx2;
  }
  if (name == "avx512") {
    if (!cpu_has_avx512())
      throw std::runtime_error("BORT_INFER_ISA=avx512 requested but this CPU lacks AVX-512 (F, DQ, BW, VL)");
    return Isa::kAvx512;
  }
  throw std::invalid_argument("unknown ISA '" + name + "' (expected 'scalar', 'avx2', 'avx512' or 'auto')");
}

Isa initial_isa() {
  const char* env = std::getenv("BORT_INFER_ISA");
  if (env == nullptr || *env == '\0') return best_supported();
  try {
    return parse_or_throw(env);
  } catch (const std::exception&) {
    // A bad environment value must not make the library unloadable; fall back to the safe choice.
    return best_supported();
  }
}

// Atomic so that a Python thread calling set_isa() never races a kernel reading it.
std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

bool cpu_has_avx512() {
  // libgcc reports AVX-512 features only when XCR0 shows the OS saves zmm and opmask state.
  static const bool has = [] {
    __builtin_cpu_init();
    return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  return has;
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(const std::string& name) { isa_slot().store(static_cast<int>(parse_or_throw(name))); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: break;
  }
  return "scalar";
}

}  // namespace bort
