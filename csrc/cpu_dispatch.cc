#include "cpu_dispatch.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

#if BORT_X86_64
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if BORT_AARCH64 && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace bort {
namespace {

// This architecture's levels, lowest first (see cpu_dispatch.h).
#if BORT_X86_64
constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni, Isa::kAvx512Bf16, Isa::kAmx};
#elif BORT_AARCH64
constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kNeon, Isa::kNeonDotprod, Isa::kNeonI8mm};
#else
constexpr Isa kAllIsas[] = {Isa::kScalar};
#endif

bool is_x86_level(Isa isa) { return isa >= Isa::kAvx2 && isa <= Isa::kAmx; }
bool is_aarch64_level(Isa isa) { return isa >= Isa::kNeon && isa <= Isa::kNeonI8mm; }

// CPUID and XCR0 as read once: the raw bits every query below derives from.
struct CpuFeatures {
  bool avx2 = false, fma = false;
  bool avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false;
  bool avx512_vnni = false, avx512_bf16 = false;
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
  bool os_ymm = false, os_zmm = false, os_tiles = false;
  bool neon = false, neon_dotprod = false, neon_i8mm = false;
};

#if BORT_X86_64
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  // xgetbv by its encoding, so the file needs no -mxsave.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures read_features() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  if (osxsave) {
    const uint64_t xcr0 = read_xcr0();
    f.os_ymm = (xcr0 & 0x6) == 0x6;                // SSE and AVX state
    f.os_zmm = f.os_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
    f.os_tiles = (xcr0 & 0x60000) == 0x60000;      // XTILECFG, XTILEDATA
  }
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned max_subleaf = a;
  f.avx2 = (b >> 5) & 1;
  f.avx512f = (b >> 16) & 1;
  f.avx512dq = (b >> 17) & 1;
  f.avx512bw = (b >> 30) & 1;
  f.avx512vl = (b >> 31) & 1;
  f.avx512_vnni = (c >> 11) & 1;
  f.amx_bf16 = (d >> 22) & 1;
  f.amx_tile = (d >> 24) & 1;
  f.amx_int8 = (d >> 25) & 1;
  if (max_subleaf >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = (a >> 5) & 1;
  }
  return f;
}
#elif BORT_AARCH64
CpuFeatures read_features() {
  CpuFeatures f;
#if defined(__linux__)
  // Bits of the Linux arm64 hwcaps ABI (asm/hwcap.h), spelled out so that older C libraries' headers do.
  constexpr unsigned long kHwcapAsimd = 1ul << 1, kHwcapAsimddp = 1ul << 20, kHwcap2I8mm = 1ul << 13;
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  f.neon = (hwcap & kHwcapAsimd) != 0;
  f.neon_dotprod = f.neon && (hwcap & kHwcapAsimddp) != 0;
  f.neon_i8mm = f.neon_dotprod && (hwcap2 & kHwcap2I8mm) != 0;
#else
  f.neon = true;  // Advanced SIMD is part of every armv8-a CPU; the extensions are not assumed elsewhere
#endif
  return f;
}
#else
CpuFeatures read_features() { return {}; }
#endif

const CpuFeatures& features() {
  static const CpuFeatures f = read_features();
  return f;
}

// Linux gives a process the (8 KB) AMX tile data state only on request; without it the first tile
// instruction faults. Asked once per process; any refusal (old kernel, seccomp, non-Linux) means no AMX.
bool amx_permission_granted() {
  static const bool granted = [] {
#if defined(__linux__) && defined(__x86_64__)
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    unsigned long bitmask = 0;
    if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0) return false;
    return ((bitmask >> kXfeatureXtiledata) & 1) != 0;
#else
    return false;
#endif
  }();
  return granted;
}

bool has_amx_tiles() {
  const CpuFeatures& f = features();
  return has_avx512_bf16() && f.amx_tile && f.os_tiles && amx_permission_granted();
}

Isa parse_or_throw(const std::string& name) {
  if (name == "auto") return best_isa();
  for (Isa isa : kAllIsas) {
    if (name != isa_name(isa)) continue;
    if (!isa_supported(isa)) {
      static const char* const kLacks[] = {"",
                                           "AVX2/FMA",
                                           "AVX-512 (F, DQ, BW, VL)",
                                           "AVX512-VNNI",
                                           "AVX512-BF16",
                                           "AMX (TILE, INT8, BF16, or the OS permission to use tiles)",
                                           "Advanced SIMD (NEON)",
                                           "the dot-product extension (FEAT_DotProd)",
                                           "the int8 matrix extension (FEAT_I8MM)"};
      throw std::runtime_error("BORT_INFER_ISA=" + name + " requested but this CPU lacks " +
                               kLacks[static_cast<int>(isa)]);
    }
    return isa;
  }
  throw std::invalid_argument("unknown ISA '" + name + "' (expected one of " + isa_names_accepted() + ")");
}

struct InitialChoice {
  Isa isa = Isa::kScalar;
  std::string error;
};

const InitialChoice& initial_choice() {
  static const InitialChoice choice = [] {
    InitialChoice c;
    c.isa = best_isa();
    const char* env = std::getenv("BORT_INFER_ISA");
    if (env == nullptr || *env == '\0') return c;
    try {
      c.isa = parse_or_throw(env);
    } catch (const std::exception& e) {
      // Not thrown here (a static initialiser must not make the library unloadable): reported by
      // isa_environment_error() at import and at custom-op registration.
      c.error = std::string("BORT_INFER_ISA: ") + e.what();
    }
    return c;
  }();
  return choice;
}

// Atomic so that a Python thread calling set_isa() never races a kernel reading it.
std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_choice().isa)};
  return slot;
}

}  // namespace

bool cpu_has_avx2_fma() {
  const CpuFeatures& f = features();
  return f.avx2 && f.fma && f.os_ymm;
}

bool cpu_has_avx512() {
  const CpuFeatures& f = features();
  return cpu_has_avx2_fma() && f.os_zmm && f.avx512f && f.avx512dq && f.avx512bw && f.avx512vl;
}

bool has_avx512_vnni() { return cpu_has_avx512() && features().avx512_vnni; }

bool has_avx512_bf16() { return has_avx512_vnni() && features().avx512_bf16; }

bool has_amx_int8() { return has_amx_tiles() && features().amx_int8; }

bool has_amx_bf16() { return has_amx_tiles() && features().amx_bf16; }

bool has_neon() { return features().neon; }

bool has_neon_dotprod() { return features().neon_dotprod; }

bool has_neon_i8mm() { return features().neon_i8mm; }

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
    for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
      const long size = sysconf(name);
      if (size > 0) return static_cast<int64_t>(size);
    }
#endif
    return int64_t{0};
  }();
  return bytes;
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2: return cpu_has_avx2_fma();
    case Isa::kAvx512: return cpu_has_avx512();
    case Isa::kAvx512Vnni: return has_avx512_vnni();
    case Isa::kAvx512Bf16: return has_avx512_bf16();
    case Isa::kAmx: return has_amx_int8() && has_amx_bf16();
    case Isa::kNeon: return has_neon();
    case Isa::kNeonDotprod: return has_neon_dotprod();
    case Isa::kNeonI8mm: return has_neon_i8mm();
  }
  return false;
}

bool isa_runs(Isa active, Isa path) {
  if (path == Isa::kScalar) return true;
  const bool same_architecture =
      (is_x86_level(path) && is_x86_level(active)) || (is_aarch64_level(path) && is_aarch64_level(active));
  return same_architecture && path <= active;
}

Isa best_isa() {
  Isa best = Isa::kScalar;
  for (Isa isa : kAllIsas)
    if (isa_supported(isa))
      best = isa;
    else
      break;  // levels are cumulative: a missing level caps everything above it
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) break;
    out.push_back(isa);
  }
  return out;
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(const std::string& name) { isa_slot().store(static_cast<int>(parse_or_throw(name))); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kNeonI8mm: return "neon_i8mm";
    case Isa::kNeonDotprod: return "neon_dotprod";
    case Isa::kNeon: return "neon";
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512Vnni: return "avx512_vnni";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: break;
  }
  return "scalar";
}

std::string isa_names_accepted() {
  std::string out;
  for (Isa isa : kAllIsas) out += std::string(isa_name(isa)) + "|";
  return out + "auto";
}

const std::string& isa_environment_error() { return initial_choice().error; }

}  // namespace bort
