#include "skip_layernorm.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "cpu_dispatch.h"
#include "row_dispatch.h"
#include "simd_math.h"
#include "simd_neon.h"

namespace bort {
namespace {

// y = LayerNorm(x + skip [* skip_scale] [+ bias]) * gamma [+ beta]: x, skip, y [rows, h]. Each path computes one
// row: xr, sr, yr.
struct SkipLayerNormRows {
  const float *x, *skip, *gamma, *beta, *bias, *skip_scale;
  float* y;
  int64_t h;
  float eps;
  std::tuple<const float*, const float*, const float*, const float*, const float*, const float*, float*, int64_t, float>
  row(int64_t r) const {
    return {x + r * h, skip + r * h, gamma, beta, bias, skip_scale, y + r * h, h, eps};
  }
};

// Straightforward reference: sum, then a second pass for the variance (no E[x^2]-E[x]^2 cancellation).
void skip_layernorm_row_scalar(const float* xr, const float* sr, const float* gamma, const float* beta,
                               const float* bias, const float* skip_scale, float* yr, int64_t h, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < h; ++i) {
    const float t = xr[i] + sr[i] * (skip_scale ? skip_scale[i] : 1.0f) + (bias ? bias[i] : 0.0f);
    yr[i] = t;
    sum += t;
  }
  const float mean = static_cast<float>(sum / h);
  double sq = 0.0;
  for (int64_t i = 0; i < h; ++i) {
    const float d = yr[i] - mean;
    sq += static_cast<double>(d) * d;
  }
  const float rstd = 1.0f / std::sqrt(static_cast<float>(sq / h) + eps);
  for (int64_t i = 0; i < h; ++i) yr[i] = (yr[i] - mean) * rstd * gamma[i] + (beta ? beta[i] : 0.0f);
}

#if BORT_X86_64
// x + skip (* skip_scale) for 8 lanes starting at i.
BORT_AVX2_INLINE __m256 skip_term(const float* sr, const float* skip_scale, int64_t i, __m256 x) {
  const __m256 s = _mm256_loadu_ps(sr + i);
  return skip_scale ? _mm256_fmadd_ps(s, _mm256_loadu_ps(skip_scale + i), x) : _mm256_add_ps(x, s);
}

// Same math; the summed row is written to y in the first pass and re-read from L1 (a 1024-float
// row is 4 KB), so DRAM sees one read of x and skip and one write of y.
BORT_AVX2 void skip_layernorm_row_avx2(const float* xr, const float* sr, const float* gamma, const float* beta,
                                       const float* bias, const float* skip_scale, float* yr, int64_t h, float eps) {
  const int64_t hv = h & ~int64_t{7};
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= hv; i += 16) {
    __m256 a = skip_term(sr, skip_scale, i, _mm256_loadu_ps(xr + i));
    __m256 b = skip_term(sr, skip_scale, i + 8, _mm256_loadu_ps(xr + i + 8));
    if (bias) {
      a = _mm256_add_ps(a, _mm256_loadu_ps(bias + i));
      b = _mm256_add_ps(b, _mm256_loadu_ps(bias + i + 8));
    }
    _mm256_storeu_ps(yr + i, a);
    _mm256_storeu_ps(yr + i + 8, b);
    s0 = _mm256_add_ps(s0, a);
    s1 = _mm256_add_ps(s1, b);
  }
  for (; i < hv; i += 8) {
    __m256 a = skip_term(sr, skip_scale, i, _mm256_loadu_ps(xr + i));
    if (bias) a = _mm256_add_ps(a, _mm256_loadu_ps(bias + i));
    _mm256_storeu_ps(yr + i, a);
    s0 = _mm256_add_ps(s0, a);
  }
  float sum = simd::hsum_ps(_mm256_add_ps(s0, s1));
  for (; i < h; ++i) {
    const float t = xr[i] + sr[i] * (skip_scale ? skip_scale[i] : 1.0f) + (bias ? bias[i] : 0.0f);
    yr[i] = t;
    sum += t;
  }
  const float mean = sum / static_cast<float>(h);
  const __m256 vmean = _mm256_set1_ps(mean);
  __m256 q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps();
  i = 0;
  for (; i + 16 <= hv; i += 16) {
    const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(yr + i), vmean);
    const __m256 b = _mm256_sub_ps(_mm256_loadu_ps(yr + i + 8), vmean);
    q0 = _mm256_fmadd_ps(a, a, q0);
    q1 = _mm256_fmadd_ps(b, b, q1);
  }
  for (; i < hv; i += 8) {
    const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(yr + i), vmean);
    q0 = _mm256_fmadd_ps(a, a, q0);
  }
  float sq = simd::hsum_ps(_mm256_add_ps(q0, q1));
  for (; i < h; ++i) sq += (yr[i] - mean) * (yr[i] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(h) + eps);
  const __m256 vrstd = _mm256_set1_ps(rstd);
  i = 0;
  for (; i < hv; i += 8) {
    const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(yr + i), vmean), vrstd);
    const __m256 b = beta ? _mm256_loadu_ps(beta + i) : _mm256_setzero_ps();
    _mm256_storeu_ps(yr + i, _mm256_fmadd_ps(n, _mm256_loadu_ps(gamma + i), b));
  }
  for (; i < h; ++i) yr[i] = (yr[i] - mean) * rstd * gamma[i] + (beta ? beta[i] : 0.0f);
}

// x + skip (* skip_scale) (+ bias) for the 16 lanes of m starting at i (masked-off lanes are 0).
BORT_AVX512_INLINE __m512 skip_sum16(const float* xr, const float* sr, const float* bias, const float* skip_scale,
                                     int64_t i, __mmask16 m) {
  const __m512 x = _mm512_maskz_loadu_ps(m, xr + i), s = _mm512_maskz_loadu_ps(m, sr + i);
  __m512 t = skip_scale ? _mm512_fmadd_ps(s, _mm512_maskz_loadu_ps(m, skip_scale + i), x) : _mm512_add_ps(x, s);
  if (bias) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(m, bias + i));
  return t;
}

// The AVX2 pass structure with 16 lanes (two accumulators per sum); a partial last vector is masked
// rather than finished in scalar code. ~10% faster than the AVX2 path at Bort's shapes.
BORT_AVX512 void skip_layernorm_row_avx512(const float* xr, const float* sr, const float* gamma, const float* beta,
                                           const float* bias, const float* skip_scale, float* yr, int64_t h,
                                           float eps) {
  const __mmask16 all = 0xFFFF, tail = static_cast<__mmask16>((1u << (h % 16)) - 1);
  const int64_t h16 = h & ~int64_t{15};
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= h16; i += 32) {
    const __m512 a = skip_sum16(xr, sr, bias, skip_scale, i, all);
    const __m512 b = skip_sum16(xr, sr, bias, skip_scale, i + 16, all);
    _mm512_storeu_ps(yr + i, a);
    _mm512_storeu_ps(yr + i + 16, b);
    s0 = _mm512_add_ps(s0, a);
    s1 = _mm512_add_ps(s1, b);
  }
  for (; i < h; i += 16) {
    const __mmask16 m = i < h16 ? all : tail;
    const __m512 a = skip_sum16(xr, sr, bias, skip_scale, i, m);
    _mm512_mask_storeu_ps(yr + i, m, a);
    s0 = _mm512_add_ps(s0, a);
  }
  const float mean = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / static_cast<float>(h);
  const __m512 vmean = _mm512_set1_ps(mean);
  __m512 q0 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps();
  for (i = 0; i + 32 <= h16; i += 32) {
    const __m512 a = _mm512_sub_ps(_mm512_loadu_ps(yr + i), vmean);
    const __m512 b = _mm512_sub_ps(_mm512_loadu_ps(yr + i + 16), vmean);
    q0 = _mm512_fmadd_ps(a, a, q0);
    q1 = _mm512_fmadd_ps(b, b, q1);
  }
  for (; i < h; i += 16) {
    const __mmask16 m = i < h16 ? all : tail;
    const __m512 a = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, yr + i), vmean);
    q0 = _mm512_fmadd_ps(a, a, q0);
  }
  const float sq = _mm512_reduce_add_ps(_mm512_add_ps(q0, q1));
  const __m512 vrstd = _mm512_set1_ps(1.0f / std::sqrt(sq / static_cast<float>(h) + eps));
  // Whole vectors with plain stores (a masked store costs ~1.6x a plain one on Zen 4), then the masked tail.
  for (i = 0; i < h16; i += 16) {
    const __m512 n = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(yr + i), vmean), vrstd);
    const __m512 b = beta ? _mm512_loadu_ps(beta + i) : _mm512_setzero_ps();
    _mm512_storeu_ps(yr + i, _mm512_fmadd_ps(n, _mm512_loadu_ps(gamma + i), b));
  }
  if (i < h) {
    const __m512 n = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, yr + i), vmean), vrstd);
    const __m512 b = beta ? _mm512_maskz_loadu_ps(tail, beta + i) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(yr + i, tail, _mm512_fmadd_ps(n, _mm512_maskz_loadu_ps(tail, gamma + i), b));
  }
}

#endif  // BORT_X86_64

#if BORT_AARCH64
// x + skip (* skip_scale) (+ bias) for the 4 lanes starting at i.
inline float32x4_t skip_sum4(const float* xr, const float* sr, const float* bias, const float* skip_scale, int64_t i) {
  const float32x4_t x = vld1q_f32(xr + i), s = vld1q_f32(sr + i);
  float32x4_t t = skip_scale ? vfmaq_f32(x, s, vld1q_f32(skip_scale + i)) : vaddq_f32(x, s);
  if (bias) t = vaddq_f32(t, vld1q_f32(bias + i));
  return t;
}

// The AVX2 pass structure on 4 lanes: the summed row goes to y in the first pass (two accumulators), the
// squared deviations in the second, the normalized row in the third; the tail in scalar code.
void skip_layernorm_row_neon(const float* xr, const float* sr, const float* gamma, const float* beta, const float* bias,
                             const float* skip_scale, float* yr, int64_t h, float eps) {
  const int64_t h4 = h & ~int64_t{3};
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 8 <= h4; i += 8) {
    const float32x4_t a = skip_sum4(xr, sr, bias, skip_scale, i), b = skip_sum4(xr, sr, bias, skip_scale, i + 4);
    vst1q_f32(yr + i, a);
    vst1q_f32(yr + i + 4, b);
    s0 = vaddq_f32(s0, a);
    s1 = vaddq_f32(s1, b);
  }
  for (; i < h4; i += 4) {
    const float32x4_t a = skip_sum4(xr, sr, bias, skip_scale, i);
    vst1q_f32(yr + i, a);
    s0 = vaddq_f32(s0, a);
  }
  float sum = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < h; ++i) {
    const float t = xr[i] + sr[i] * (skip_scale ? skip_scale[i] : 1.0f) + (bias ? bias[i] : 0.0f);
    yr[i] = t;
    sum += t;
  }
  const float mean = sum / static_cast<float>(h);
  const float32x4_t vmean = vdupq_n_f32(mean);
  float32x4_t q0 = vdupq_n_f32(0.0f), q1 = vdupq_n_f32(0.0f);
  for (i = 0; i + 8 <= h4; i += 8) {
    const float32x4_t a = vsubq_f32(vld1q_f32(yr + i), vmean), b = vsubq_f32(vld1q_f32(yr + i + 4), vmean);
    q0 = vfmaq_f32(q0, a, a);
    q1 = vfmaq_f32(q1, b, b);
  }
  for (; i < h4; i += 4) {
    const float32x4_t a = vsubq_f32(vld1q_f32(yr + i), vmean);
    q0 = vfmaq_f32(q0, a, a);
  }
  float sq = vaddvq_f32(vaddq_f32(q0, q1));
  for (; i < h; ++i) sq += (yr[i] - mean) * (yr[i] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(h) + eps);
  const float32x4_t vrstd = vdupq_n_f32(rstd);
  for (i = 0; i < h4; i += 4) {
    const float32x4_t n = vmulq_f32(vsubq_f32(vld1q_f32(yr + i), vmean), vrstd);
    const float32x4_t b = beta ? vld1q_f32(beta + i) : vdupq_n_f32(0.0f);
    vst1q_f32(yr + i, vfmaq_f32(b, n, vld1q_f32(gamma + i)));
  }
  for (; i < h; ++i) yr[i] = (yr[i] - mean) * rstd * gamma[i] + (beta ? beta[i] : 0.0f);
}
#endif  // BORT_AARCH64

using RowFn = void (*)(const float*, const float*, const float*, const float*, const float*, const float*, float*,
                       int64_t, float);
constexpr IsaPath<RowFn> kSkipLayerNormPaths[] = {
#if BORT_X86_64
    {Isa::kAvx512, skip_layernorm_row_avx512},
    {Isa::kAvx2, skip_layernorm_row_avx2},
#endif
#if BORT_AARCH64
    {Isa::kNeon, skip_layernorm_row_neon},
#endif
    {Isa::kScalar, skip_layernorm_row_scalar}};

}  // namespace

void skip_layernorm_serial(Isa isa, const float* x, const float* skip, const float* gamma, const float* beta,
                           const float* bias, const float* skip_scale, float* y, int64_t rows, int64_t h,
                           float epsilon) {
  run_rows(select_path(isa, kSkipLayerNormPaths),
           SkipLayerNormRows{x, skip, gamma, beta, bias, skip_scale, y, h, epsilon}, 0, rows);
}

void skip_layernorm(const float* x, const float* skip, const float* gamma, const float* beta, const float* bias,
                    const float* skip_scale, float* y, int64_t rows, int64_t h, float epsilon, const ParallelFor& pf) {
  if (rows <= 0 || h <= 0) return;
  run_rows(select_path(active_isa(), kSkipLayerNormPaths),
           SkipLayerNormRows{x, skip, gamma, beta, bias, skip_scale, y, h, epsilon}, rows, h, pf);
}

}  // namespace bort
