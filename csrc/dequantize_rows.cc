#include "dequantize_rows.h"

#include <algorithm>

#include "bias_gelu.h"
#include "cpu_dispatch.h"
#include "simd_math.h"

namespace bort {
namespace {

void dequantize_rows_scalar(const int32_t* acc, const float* row_scale, const uint8_t* row_zero_point,
                            const float* weight_scale, const int32_t* weight_colsum, const float* bias, Activation act,
                            float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t zp = row_zero_point[r];
    for (int64_t i = 0; i < n; ++i) {
      // Unsigned arithmetic wraps like the vector path's 32-bit lanes (signed overflow would be UB).
      const uint32_t centred = static_cast<uint32_t>(acc[r * n + i]) -
                               static_cast<uint32_t>(zp) * static_cast<uint32_t>(weight_colsum[i]);
      float v = static_cast<float>(static_cast<int32_t>(centred)) * (row_scale[r] * weight_scale[i]);
      if (bias) v += bias[i];
      y[r * n + i] = act == Activation::kGelu ? gelu_exact(v) : v;
    }
  }
}

template <Activation kAct>
BORT_AVX2 void dequantize_rows_avx2(const int32_t* acc, const float* row_scale, const uint8_t* row_zero_point,
                                    const float* weight_scale, const int32_t* weight_colsum, const float* bias,
                                    float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* a = acc + r * n;
    float* yr = y + r * n;
    const __m256i zp = _mm256_set1_epi32(row_zero_point[r]);
    const __m256 rs = _mm256_set1_ps(row_scale[r]);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256i c = _mm256_sub_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)),
          _mm256_mullo_epi32(zp, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(weight_colsum + i))));
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(rs, _mm256_loadu_ps(weight_scale + i)));
      if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + i));
      if (kAct == Activation::kGelu) v = simd::gelu_ps(v);
      _mm256_storeu_ps(yr + i, v);
    }
    if (i < n) {
      // The tail through a padded buffer, so it uses the same GELU approximation as the body.
      alignas(32) float buf[8] = {0};
      for (int64_t k = i; k < n; ++k) {
        const uint32_t centred = static_cast<uint32_t>(a[k]) - static_cast<uint32_t>(row_zero_point[r]) *
                                                                   static_cast<uint32_t>(weight_colsum[k]);
        buf[k - i] = static_cast<float>(static_cast<int32_t>(centred)) * (row_scale[r] * weight_scale[k]) +
                     (bias ? bias[k] : 0.0f);
      }
      if (kAct == Activation::kGelu) _mm256_store_ps(buf, simd::gelu_ps(_mm256_load_ps(buf)));
      std::copy(buf, buf + (n - i), yr + i);
    }
  }
}

// GELU variant only: it is bound by the erf arithmetic, which 16 lanes speed up; without an activation
// the kernel streams memory and the AVX2 path is as fast. The tail goes through masked loads and stores.
BORT_AVX512 void dequantize_rows_gelu_avx512(const int32_t* acc, const float* row_scale,
                                             const uint8_t* row_zero_point, const float* weight_scale,
                                             const int32_t* weight_colsum, const float* bias, float* y, int64_t rows,
                                             int64_t n) {
  const __mmask16 tail = static_cast<__mmask16>((1u << (n % 16)) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* a = acc + r * n;
    float* yr = y + r * n;
    const __m512i zp = _mm512_set1_epi32(row_zero_point[r]);
    const __m512 rs = _mm512_set1_ps(row_scale[r]);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = i + 16 <= n ? __mmask16{0xFFFF} : tail;
      const __m512i c = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, a + i),
                                         _mm512_mullo_epi32(zp, _mm512_maskz_loadu_epi32(m, weight_colsum + i)));
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(rs, _mm512_maskz_loadu_ps(m, weight_scale + i)));
      if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + i));
      _mm512_mask_storeu_ps(yr + i, m, simd::gelu_ps(v));
    }
  }
}

}  // namespace

void dequantize_rows(const int32_t* acc, const float* row_scale, const uint8_t* row_zero_point,
                     const float* weight_scale, const int32_t* weight_colsum, const float* bias, Activation act,
                     float* y, int64_t rows, int64_t n, const ParallelFor& pf) {
  if (rows <= 0 || n <= 0) return;
  const Isa isa = active_isa();
  const size_t rows_per_min_task = std::max<int64_t>(1, (int64_t{1} << 13) / n);
  const size_t tasks = choose_num_tasks(static_cast<size_t>(rows), rows_per_min_task, pf.concurrency());
  const int64_t per_task = (rows + static_cast<int64_t>(tasks) - 1) / static_cast<int64_t>(tasks);
  pf.run(tasks, [&](size_t t) {
    const int64_t r0 = static_cast<int64_t>(t) * per_task, r1 = std::min(rows, r0 + per_task);
    if (r0 >= r1) return;
    const int32_t* a = acc + r0 * n;
    float* out = y + r0 * n;
    if (isa >= Isa::kAvx512 && act == Activation::kGelu)
      dequantize_rows_gelu_avx512(a, row_scale + r0, row_zero_point + r0, weight_scale, weight_colsum, bias, out,
                                  r1 - r0, n);
    else if (isa < Isa::kAvx2)
      dequantize_rows_scalar(a, row_scale + r0, row_zero_point + r0, weight_scale, weight_colsum, bias, act, out,
                             r1 - r0, n);
    else if (act == Activation::kGelu)
      dequantize_rows_avx2<Activation::kGelu>(a, row_scale + r0, row_zero_point + r0, weight_scale, weight_colsum,
                                              bias, out, r1 - r0, n);
    else
      dequantize_rows_avx2<Activation::kNone>(a, row_scale + r0, row_zero_point + r0, weight_scale, weight_colsum,
                                              bias, out, r1 - r0, n);
  });
}

}  // namespace bort
