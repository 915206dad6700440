// Run-time choice of the kernel paths: the portable scalar references everywhere; on x86-64 AVX2+FMA,
// AVX-512, and the AVX-512 extensions (VNNI int8 dot products, BF16 dot products) and AMX tiles used by the
// GEMMs; on aarch64 NEON (Advanced SIMD), with the dot-product (sdot/udot) and int8 matrix (i8mm: usdot)
// extensions used by the int8 GEMM.
//
// The library is compiled for the baseline of its architecture (x86-64, armv8-a); vector code beyond it
// lives in functions carrying GCC target attributes (BORT_AVX2 / BORT_AVX512 / ... in simd_math.h,
// BORT_NEON_DOTPROD / BORT_NEON_I8MM in simd_neon.h), compiled only for its architecture (BORT_X86_64,
// BORT_AARCH64 below), and only called when the CPU supports it. A kernel lists its paths in a table and
// select_path() picks one: no kernel compares levels itself.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define BORT_X86_64 1
#else
#define BORT_X86_64 0
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define BORT_AARCH64 1
#else
#define BORT_AARCH64 0
#endif

namespace bort {

// Levels. Within one architecture they are ordered and cumulative: each includes every level of that
// architecture below it, and a kernel without a path of its own for a level uses the best one below it
// (element-wise kernels run their AVX-512 path at every level above it). Real CPUs follow these orders: every
// AMX CPU has AVX512-BF16, every AVX512-BF16 CPU has AVX512-VNNI; every i8mm core has the dot products.
// kScalar (the references) belongs to every architecture; levels of another architecture are never supported.
enum class Isa {
  kScalar,
  // x86-64
  kAvx2,
  kAvx512,
  kAvx512Vnni,
  kAvx512Bf16,
  kAmx,
  // aarch64
  kNeon,
  kNeonDotprod,
  kNeonI8mm,
};

// Feature queries about the CPU (and the OS state it needs), independent of the override; false on another
// architecture.
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
// aarch64, from the kernel's hardware capabilities (getauxval(AT_HWCAP / AT_HWCAP2)): Advanced SIMD; the
// dot products (FEAT_DotProd: sdot, udot); the int8 matrix extension (FEAT_I8MM: usdot, smmla), with the dot
// products.
bool has_neon();
bool has_neon_dotprod();
bool has_neon_i8mm();
// Bytes of the CPU's last-level cache as the C library reports it (sysconf: level 3, else level 2), read once;
// 0 when it reports none. The whole socket's cache, as a VM is shown it, not this core's share.
int64_t last_level_cache_bytes();

// Whether the CPU supports `isa` (every feature of that level and of those below it).
bool isa_supported(Isa isa);
// The best supported level, what "auto" selects.
Isa best_isa();
// Every supported level, lowest first.
std::vector<Isa> supported_isas();

// Whether code written for level `path` may run while `active` is selected: the scalar references always,
// otherwise a level of the same architecture at or below `active`.
bool isa_runs(Isa active, Isa path);

// The ISA the kernels use now. Initialised from env BORT_INFER_ISA (one of isa_names_accepted(); default
// auto: the best the CPU supports). An unknown or unsupported value leaves the choice at auto and is
// reported by isa_environment_error(), which the Python module and the onnxruntime registration turn into
// an error naming the accepted values.
Isa active_isa();

// Force an ISA by name (see isa_names_accepted()). Throws std::invalid_argument on an unknown name and
// std::runtime_error when the CPU lacks the requested ISA.
void set_isa(const std::string& name);

// "scalar", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "neon", "neon_dotprod", "neon_i8mm".
const char* isa_name(Isa isa);
// The names set_isa and BORT_INFER_ISA accept: this architecture's levels, lowest first, then "auto"
// (x86-64: "scalar|avx2|avx512|avx512_vnni|avx512_bf16|amx|auto", aarch64: "scalar|neon|neon_dotprod|
// neon_i8mm|auto").
std::string isa_names_accepted();
// Empty when BORT_INFER_ISA is unset or valid for this CPU; otherwise what is wrong with it.
const std::string& isa_environment_error();

// ---------------------------------------------------------------------------------------------
// The one dispatch helper. A kernel lists its implementations best first, each with the level it needs,
// the scalar reference last, e.g.
//
//   constexpr IsaPath<RowsFn> kPaths[] = {
//   #if BORT_X86_64
//       {Isa::kAvx512, rows_avx512}, {Isa::kAvx2, rows_avx2},
//   #endif
//   #if BORT_AARCH64
//       {Isa::kNeon, rows_neon},
//   #endif
//       {Isa::kScalar, rows_scalar}};
//   select_path(isa, kPaths)(x, y, n);
//
// and select_path returns the first one that may run at `active`. Entries of other types work too (any
// struct with an `isa` member), with a predicate for what else an entry needs (a head size, a feature).

template <typename Fn>
struct IsaPath {
  Isa isa;
  Fn fn;
};

template <typename Entry, size_t N, typename Usable>
const Entry& select_entry(Isa active, const Entry (&entries)[N], const Usable& usable) {
  static_assert(N > 0, "a kernel has at least its scalar reference");
  for (const Entry& e : entries)
    if (isa_runs(active, e.isa) && usable(e)) return e;
  return entries[N - 1];  // the scalar reference, listed last
}

template <typename Entry, size_t N>
const Entry& select_entry(Isa active, const Entry (&entries)[N]) {
  return select_entry(active, entries, [](const Entry&) { return true; });
}

template <typename Fn, size_t N>
Fn select_path(Isa active, const IsaPath<Fn> (&paths)[N]) {
  return select_entry(active, paths).fn;
}

}  // namespace bort
