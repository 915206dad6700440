// Vectorised transcendental functions for the AVX2+FMA and AVX-512 kernels (x86-64 only; the NEON versions
// are in simd_neon.h).
//
// Every function here carries a target attribute because the library is compiled for baseline x86-64;
// only call them from functions with the same (or a wider) target attribute, after CPU dispatch.
// The 16-lane versions are the 8-lane algorithms with the same constants (simd_constants.h) in the same order,
// so both widths give the same result for the same input lane.
#pragma once

#include <cstddef>

#include "cpu_dispatch.h"
#include "simd_constants.h"

#if BORT_X86_64
// GCC 12's AVX-512 intrinsics initialise _mm512_undefined_ps() from itself, which -Wall reports as
// uninitialised at every inlined use (fixed in later GCC releases); the warning concerns the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define BORT_AVX2 __attribute__((target("avx2,fma")))
#define BORT_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

// The feature set cpu_has_avx512() checks; AVX2+FMA are included so AVX-512 code can call AVX2 helpers.
#define BORT_AVX512_TARGET "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"
#define BORT_AVX512 __attribute__((target(BORT_AVX512_TARGET)))
#define BORT_AVX512_INLINE __attribute__((target(BORT_AVX512_TARGET), always_inline)) inline

// The levels above AVX-512 (see cpu_dispatch.h), each a superset of the one before.
#define BORT_AVX512_VNNI_TARGET BORT_AVX512_TARGET ",avx512vnni"
#define BORT_AVX512_VNNI __attribute__((target(BORT_AVX512_VNNI_TARGET)))
#define BORT_AVX512_VNNI_INLINE __attribute__((target(BORT_AVX512_VNNI_TARGET), always_inline)) inline
#define BORT_AVX512_BF16_TARGET BORT_AVX512_VNNI_TARGET ",avx512bf16"
#define BORT_AVX512_BF16 __attribute__((target(BORT_AVX512_BF16_TARGET)))
#define BORT_AVX512_BF16_INLINE __attribute__((target(BORT_AVX512_BF16_TARGET), always_inline)) inline
#define BORT_AMX_TARGET BORT_AVX512_BF16_TARGET ",amx-tile,amx-int8,amx-bf16"
#define BORT_AMX __attribute__((target(BORT_AMX_TARGET)))
#define BORT_AMX_INLINE __attribute__((target(BORT_AMX_TARGET), always_inline)) inline

namespace bort {
namespace simd {

// The polynomial with coefficients c (highest power first) at x, by Horner's rule (p = p * x + c), 8 lanes.
template <size_t N>
BORT_AVX2_INLINE __m256 horner(__m256 x, const float (&c)[N]) {
  __m256 p = _mm256_set1_ps(c[0]);
  for (size_t k = 1; k < N; ++k) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c[k]));
  return p;
}

// exp(x) for 8 floats, ~1-2 ulp on [-87, 88] (coeff::kExp after x = n*ln2 + r, |r| <= ln2/2).
// Inputs below -87.3 give ~1e-38 rather than 0: callers that need exact zeros must mask.
BORT_AVX2_INLINE __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(coeff::kExpMin)), _mm256_set1_ps(coeff::kExpMax));
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(coeff::kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(coeff::kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(coeff::kLn2Lo), r);
  const __m256 p = _mm256_fmadd_ps(horner(r, coeff::kExp), _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // Scale by 2^n through the exponent bits; n is within [-126, 127] thanks to the clamp.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// erf(x) for 8 floats: x * P(x^2) / Q(x^2) (coeff::kErfP, kErfQ) on [-4, 4].
BORT_AVX2_INLINE __m256 erf_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-coeff::kErfBound)), _mm256_set1_ps(coeff::kErfBound));
  const __m256 x2 = _mm256_mul_ps(x, x);
  return _mm256_div_ps(_mm256_mul_ps(horner(x2, coeff::kErfP), x), horner(x2, coeff::kErfQ));
}

BORT_AVX2_INLINE float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

BORT_AVX2_INLINE float hmin_ps(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Exact (erf) GELU of 8 floats: 0.5 v (1 + erf(v / sqrt 2)).
BORT_AVX2_INLINE __m256 gelu_ps(__m256 v) {
  const __m256 half_v = _mm256_mul_ps(v, _mm256_set1_ps(0.5f));
  const __m256 e = erf_ps(_mm256_mul_ps(v, _mm256_set1_ps(coeff::kSqrtHalf)));
  return _mm256_fmadd_ps(half_v, e, half_v);
}

BORT_AVX2_INLINE float hmax_ps(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---------------------------------------------------------------------------------------------
// 16 lanes (AVX-512)

// horner(__m256) on 16 lanes.
template <size_t N>
BORT_AVX512_INLINE __m512 horner(__m512 x, const float (&c)[N]) {
  __m512 p = _mm512_set1_ps(c[0]);
  for (size_t k = 1; k < N; ++k) p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c[k]));
  return p;
}

// exp(x) for 16 floats: exp_ps(__m256) lane for lane (scalef multiplies by 2^n exactly, as the exponent
// bits do there, because the clamp keeps n within [-126, 127]).
BORT_AVX512_INLINE __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(coeff::kExpMin)), _mm512_set1_ps(coeff::kExpMax));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(coeff::kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(coeff::kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(coeff::kLn2Lo), r);
  return _mm512_scalef_ps(
      _mm512_fmadd_ps(horner(r, coeff::kExp), _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f))), n);
}

// erf(x) for 16 floats: erf_ps(__m256) lane for lane.
BORT_AVX512_INLINE __m512 erf_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-coeff::kErfBound)), _mm512_set1_ps(coeff::kErfBound));
  const __m512 x2 = _mm512_mul_ps(x, x);
  return _mm512_div_ps(_mm512_mul_ps(horner(x2, coeff::kErfP), x), horner(x2, coeff::kErfQ));
}

// Exact (erf) GELU of 16 floats: gelu_ps(__m256) lane for lane.
BORT_AVX512_INLINE __m512 gelu_ps(__m512 v) {
  const __m512 half_v = _mm512_mul_ps(v, _mm512_set1_ps(0.5f));
  const __m512 e = erf_ps(_mm512_mul_ps(v, _mm512_set1_ps(coeff::kSqrtHalf)));
  return _mm512_fmadd_ps(half_v, e, half_v);
}

}  // namespace simd
}  // namespace bort

#endif  // BORT_X86_64
