// NEON (aarch64 Advanced SIMD) versions of simd_math.h's vector functions, for the aarch64 kernel paths.
//
// Advanced SIMD is part of the aarch64 baseline, so plain NEON code needs no target attribute; the int8 GEMM's
// dot-product and int8-matrix instructions do (BORT_NEON_DOTPROD, BORT_NEON_I8MM), and run only after CPU
// dispatch. The 4-lane functions use the constants of the AVX2 ones in the same order (fused multiply-adds
// where those fuse), so every path computes the same polynomials.
#pragma once

#include "cpu_dispatch.h"

#if BORT_AARCH64
#include <arm_neon.h>

// GCC 12's arm_neon.h declares these intrinsics under exactly these architecture strings.
#define BORT_NEON_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define BORT_NEON_I8MM __attribute__((target("arch=armv8.2-a+i8mm")))

namespace bort {
namespace simd {

// exp(x) for 4 floats, as exp_ps(__m256): ~1-2 ulp on [-87, 88].
inline float32x4_t exp_f32x4(float32x4_t x) {
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  const float32x4_t r2 = vmulq_f32(r, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, r2);
  // 2^n through the exponent bits; the clamp keeps n within [-126, 127].
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

// erf(x) for 4 floats, as erf_ps(__m256): rational approximation on [-4, 4], ~1e-7.
inline float32x4_t erf_f32x4(float32x4_t x) {
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-4.0f)), vdupq_n_f32(4.0f));
  const float32x4_t x2 = vmulq_f32(x, x);
  float32x4_t p = vdupq_n_f32(-2.72614225801306e-10f);
  p = vfmaq_f32(vdupq_n_f32(2.77068142495902e-08f), p, x2);
  p = vfmaq_f32(vdupq_n_f32(-2.10102402082508e-06f), p, x2);
  p = vfmaq_f32(vdupq_n_f32(-5.69250639462346e-05f), p, x2);
  p = vfmaq_f32(vdupq_n_f32(-7.34990630326855e-04f), p, x2);
  p = vfmaq_f32(vdupq_n_f32(-2.95459980854025e-03f), p, x2);
  p = vfmaq_f32(vdupq_n_f32(-1.60960333262415e-02f), p, x2);
  p = vmulq_f32(p, x);
  float32x4_t q = vdupq_n_f32(-1.45660718464996e-05f);
  q = vfmaq_f32(vdupq_n_f32(-2.13374055278905e-04f), q, x2);
  q = vfmaq_f32(vdupq_n_f32(-1.68282697438203e-03f), q, x2);
  q = vfmaq_f32(vdupq_n_f32(-7.37332916720468e-03f), q, x2);
  q = vfmaq_f32(vdupq_n_f32(-1.42647390514189e-02f), q, x2);
  return vdivq_f32(p, q);
}

// Exact (erf) GELU of 4 floats: 0.5 v (1 + erf(v / sqrt 2)).
inline float32x4_t gelu_f32x4(float32x4_t v) {
  const float32x4_t half_v = vmulq_f32(v, vdupq_n_f32(0.5f));
  const float32x4_t e = erf_f32x4(vmulq_f32(v, vdupq_n_f32(0.70710678118654752440f)));
  return vfmaq_f32(half_v, half_v, e);
}

}  // namespace simd
}  // namespace bort

#endif  // BORT_AARCH64
