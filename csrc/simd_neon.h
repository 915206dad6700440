// NEON (aarch64 Advanced SIMD) versions of simd_math.h's vector functions, for the aarch64 kernel paths.
//
// Advanced SIMD is part of the aarch64 baseline, so plain NEON code needs no target attribute; the int8 GEMM's
// dot-product and int8-matrix instructions do (BORT_NEON_DOTPROD, BORT_NEON_I8MM), and run only after CPU
// dispatch. The 4-lane functions use the constants of the AVX2 ones (simd_constants.h) in the same order (fused
// multiply-adds where those fuse), so every path computes the same polynomials.
#pragma once

#include <cstddef>

#include "cpu_dispatch.h"
#include "simd_constants.h"

#if BORT_AARCH64
#include <arm_neon.h>

// GCC 12's arm_neon.h declares these intrinsics under exactly these architecture strings.
#define BORT_NEON_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define BORT_NEON_I8MM __attribute__((target("arch=armv8.2-a+i8mm")))

namespace bort {
namespace simd {

// horner(__m256) on 4 lanes.
template <size_t N>
inline float32x4_t horner(float32x4_t x, const float (&c)[N]) {
  float32x4_t p = vdupq_n_f32(c[0]);
  for (size_t k = 1; k < N; ++k) p = vfmaq_f32(vdupq_n_f32(c[k]), p, x);
  return p;
}

// exp(x) for 4 floats, as exp_ps(__m256): ~1-2 ulp on [-87, 88].
inline float32x4_t exp_f32x4(float32x4_t x) {
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(coeff::kExpMin)), vdupq_n_f32(coeff::kExpMax));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(coeff::kLog2e)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(coeff::kLn2Hi));
  r = vfmsq_f32(r, n, vdupq_n_f32(coeff::kLn2Lo));
  const float32x4_t p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), horner(r, coeff::kExp), vmulq_f32(r, r));
  // 2^n through the exponent bits; the clamp keeps n within [-126, 127].
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

// erf(x) for 4 floats, as erf_ps(__m256): rational approximation on [-4, 4], ~1e-7.
inline float32x4_t erf_f32x4(float32x4_t x) {
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-coeff::kErfBound)), vdupq_n_f32(coeff::kErfBound));
  const float32x4_t x2 = vmulq_f32(x, x);
  return vdivq_f32(vmulq_f32(horner(x2, coeff::kErfP), x), horner(x2, coeff::kErfQ));
}

// Exact (erf) GELU of 4 floats: 0.5 v (1 + erf(v / sqrt 2)).
inline float32x4_t gelu_f32x4(float32x4_t v) {
  const float32x4_t half_v = vmulq_f32(v, vdupq_n_f32(0.5f));
  const float32x4_t e = erf_f32x4(vmulq_f32(v, vdupq_n_f32(coeff::kSqrtHalf)));
  return vfmaq_f32(half_v, half_v, e);
}

}  // namespace simd
}  // namespace bort

#endif  // BORT_AARCH64
