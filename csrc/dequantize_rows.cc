#include "dequantize_rows.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "bias_gelu.h"
#include "cpu_dispatch.h"
#include "quantize_rows.h"
#include "row_dispatch.h"
#include "simd_math.h"
#include "simd_neon.h"
#include "skip_layernorm.h"

namespace bort {
namespace {

// v = act(row_scale[r] * weight_scale * (acc - row_zero_point[r] * weight_colsum) + bias) into y: acc [rows, n]
// (row stride acc_ld), y [rows, n] (row stride y_ld). Each path computes one row: a, row_scale, zero_point, y.
struct DequantizeRows {
  const int32_t* acc;
  int64_t acc_ld;
  const float* row_scale;
  const uint8_t* row_zero_point;
  const float *weight_scale, *bias;
  const int32_t* weight_colsum;
  float* y;
  int64_t y_ld, n;
  std::tuple<const int32_t*, float, uint8_t, const float*, const int32_t*, const float*, float*, int64_t> row(
      int64_t r) const {
    return {acc + r * acc_ld, row_scale[r], row_zero_point[r], weight_scale, weight_colsum, bias, y + r * y_ld, n};
  }
};

// The integer part of one output, centred on the row's zero point: unsigned arithmetic wraps like the vector
// paths' 32-bit lanes (signed overflow would be UB).
inline int32_t centred(int32_t acc, uint8_t zero_point, int32_t colsum) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) -
                              static_cast<uint32_t>(zero_point) * static_cast<uint32_t>(colsum));
}

template <Activation kAct>
void dequantize_row_scalar(const int32_t* a, float row_scale, uint8_t zero_point, const float* weight_scale,
                           const int32_t* weight_colsum, const float* bias, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(centred(a[i], zero_point, weight_colsum[i])) * (row_scale * weight_scale[i]);
    if (bias) v += bias[i];
    y[i] = kAct == Activation::kGelu ? gelu_exact(v) : v;
  }
}

#if BORT_X86_64
template <Activation kAct>
BORT_AVX2 void dequantize_row_avx2(const int32_t* a, float row_scale, uint8_t zero_point, const float* weight_scale,
                                   const int32_t* weight_colsum, const float* bias, float* y, int64_t n) {
  const __m256i zp = _mm256_set1_epi32(zero_point);
  const __m256 rs = _mm256_set1_ps(row_scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_sub_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)),
        _mm256_mullo_epi32(zp, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(weight_colsum + i))));
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(rs, _mm256_loadu_ps(weight_scale + i)));
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + i));
    if (kAct == Activation::kGelu) v = simd::gelu_ps(v);
    _mm256_storeu_ps(y + i, v);
  }
  if (i < n) {
    // The tail through a padded buffer, so it uses the same GELU approximation as the body.
    alignas(32) float buf[8] = {0};
    for (int64_t k = i; k < n; ++k)
      buf[k - i] = static_cast<float>(centred(a[k], zero_point, weight_colsum[k])) * (row_scale * weight_scale[k]) +
                   (bias ? bias[k] : 0.0f);
    if (kAct == Activation::kGelu) _mm256_store_ps(buf, simd::gelu_ps(_mm256_load_ps(buf)));
    std::copy(buf, buf + (n - i), y + i);
  }
}

// The AVX2 path lane for lane on 16 lanes (the same operations in the same order; GELU's 16-lane form equals
// its 8-lane form), with masked tails. Worth it for GELU (erf arithmetic) and for the fused linear op's
// epilogue, which reads its int32 tile from L1.
template <Activation kAct>
BORT_AVX512_INLINE __m512 dequantize16(__m512i acc, __m512i zp, __m512 rs, __m512i colsum, __m512 weight_scale,
                                       const float* bias, __m512 bias16) {
  const __m512i c = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zp, colsum));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(rs, weight_scale));
  if (bias) v = _mm512_add_ps(v, bias16);
  return kAct == Activation::kGelu ? simd::gelu_ps(v) : v;
}

// Whole vectors with plain loads and stores (a masked store costs ~1.6x a plain one on Zen 4, and this loop is
// bound by its stores), then the tail masked. kStream: whole vectors go out with non-temporal stores, from the
// first 64-byte aligned element on (the ones before it masked; every lane's arithmetic is the same wherever its
// vector starts), for outputs far larger than the caches: no read for ownership of lines that are only written.
template <Activation kAct, bool kStream = false>
BORT_AVX512 void dequantize_row_avx512(const int32_t* a, float row_scale, uint8_t zero_point, const float* weight_scale,
                                       const int32_t* weight_colsum, const float* bias, float* y, int64_t n) {
  const __m512i zp = _mm512_set1_epi32(zero_point);
  const __m512 rs = _mm512_set1_ps(row_scale);
#define BORT_DEQUANTIZE_AT(LOAD_I, LOAD_F, i)                                                                \
  dequantize16<kAct>(LOAD_I(a + (i)), zp, rs, LOAD_I(weight_colsum + (i)), LOAD_F(weight_scale + (i)), bias, \
                     bias ? LOAD_F(bias + (i)) : _mm512_setzero_ps())
#define BORT_LOAD_I(p) _mm512_loadu_si512(p)
#define BORT_LOAD_F(p) _mm512_loadu_ps(p)
#define BORT_MASKED_I(p) _mm512_maskz_loadu_epi32(m, p)
#define BORT_MASKED_F(p) _mm512_maskz_loadu_ps(m, p)
  int64_t i = 0;
  const uintptr_t misaligned = reinterpret_cast<uintptr_t>(y) % 64;
  if (kStream && misaligned % sizeof(float) == 0) {
    const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((64 - misaligned) % 64 / sizeof(float)));
    if (head > 0) {
      const __mmask16 m = static_cast<__mmask16>((1u << head) - 1);
      _mm512_mask_storeu_ps(y, m, BORT_DEQUANTIZE_AT(BORT_MASKED_I, BORT_MASKED_F, 0));
    }
    for (i = head; i + 16 <= n; i += 16) _mm512_stream_ps(y + i, BORT_DEQUANTIZE_AT(BORT_LOAD_I, BORT_LOAD_F, i));
  }
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, BORT_DEQUANTIZE_AT(BORT_LOAD_I, BORT_LOAD_F, i));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, BORT_DEQUANTIZE_AT(BORT_MASKED_I, BORT_MASKED_F, i));
  }
}

#undef BORT_DEQUANTIZE_AT
#undef BORT_LOAD_I
#undef BORT_LOAD_F
#undef BORT_MASKED_I
#undef BORT_MASKED_F

#endif  // BORT_X86_64

#if BORT_AARCH64
// The AVX2 path on 4 lanes (wrapping int32 arithmetic, then the same float operations), tail via a buffer.
template <Activation kAct>
void dequantize_row_neon(const int32_t* a, float row_scale, uint8_t zero_point, const float* weight_scale,
                         const int32_t* weight_colsum, const float* bias, float* y, int64_t n) {
  const int32x4_t zp = vdupq_n_s32(zero_point);
  const float32x4_t rs = vdupq_n_f32(row_scale);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const int32x4_t c = vsubq_s32(vld1q_s32(a + i), vmulq_s32(zp, vld1q_s32(weight_colsum + i)));
    float32x4_t v = vmulq_f32(vcvtq_f32_s32(c), vmulq_f32(rs, vld1q_f32(weight_scale + i)));
    if (bias) v = vaddq_f32(v, vld1q_f32(bias + i));
    if (kAct == Activation::kGelu) v = simd::gelu_f32x4(v);
    vst1q_f32(y + i, v);
  }
  if (i < n) {
    float buf[4] = {0};
    for (int64_t k = i; k < n; ++k)
      buf[k - i] = static_cast<float>(centred(a[k], zero_point, weight_colsum[k])) * (row_scale * weight_scale[k]) +
                   (bias ? bias[k] : 0.0f);
    if (kAct == Activation::kGelu) vst1q_f32(buf, simd::gelu_f32x4(vld1q_f32(buf)));
    std::copy(buf, buf + (n - i), y + i);
  }
}
#endif  // BORT_AARCH64

// Each path with one instantiation per activation.
// none_streamed: the identity epilogue with streaming stores where the path has them (the same values).
using RowFn = void (*)(const int32_t*, float, uint8_t, const float*, const int32_t*, const float*, float*, int64_t);
struct DequantizePath {
  Isa isa;
  RowFn none, gelu, none_streamed;
};
constexpr DequantizePath kDequantizePaths[] = {
#if BORT_X86_64
    {Isa::kAvx512, dequantize_row_avx512<Activation::kNone>, dequantize_row_avx512<Activation::kGelu>,
     dequantize_row_avx512<Activation::kNone, true>},
    {Isa::kAvx2, dequantize_row_avx2<Activation::kNone>, dequantize_row_avx2<Activation::kGelu>,
     dequantize_row_avx2<Activation::kNone>},
#endif
#if BORT_AARCH64
    {Isa::kNeon, dequantize_row_neon<Activation::kNone>, dequantize_row_neon<Activation::kGelu>,
     dequantize_row_neon<Activation::kNone>},
#endif
    {Isa::kScalar, dequantize_row_scalar<Activation::kNone>, dequantize_row_scalar<Activation::kGelu>,
     dequantize_row_scalar<Activation::kNone>}};

}  // namespace

void dequantize_block_serial(Isa isa, const int32_t* acc, int64_t acc_ld, const float* row_scale,
                             const uint8_t* row_zero_point, const float* weight_scale, const int32_t* weight_colsum,
                             const float* bias, Activation act, float* y, int64_t y_ld, int64_t rows, int64_t n,
                             bool streamed) {
  const DequantizePath& path = select_entry(isa, kDequantizePaths);
  run_rows(act == Activation::kGelu ? path.gelu
           : streamed               ? path.none_streamed
                                    : path.none,
           DequantizeRows{acc, acc_ld, row_scale, row_zero_point, weight_scale, bias, weight_colsum, y, y_ld, n}, 0,
           rows);
}

void streamed_stores_done() {
#if BORT_X86_64
  _mm_sfence();
#endif
}

void finish_rows_serial(Isa isa, float* y, const SkipLayerNormEpilogue& norm, const RequantizedRows& requantized,
                        int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * n;
    // The residual rows come from L3 or memory (the rows of y were just written here).
    if (norm.skip != nullptr && r + 1 < rows) prefetch_row(norm.skip + (r + 1) * n, n * sizeof(float));
    if (norm.skip != nullptr)
      skip_layernorm_serial(isa, row, norm.skip + r * n, norm.gamma, norm.beta, /*bias=*/nullptr, norm.skip_scale, row,
                            1, n, norm.epsilon);
    if (requantized.q != nullptr)
      quantize_rows_serial(isa, row, requantized.q + r * n, requantized.scale + r, requantized.zero_point + r, 1, n);
  }
}

void dequantize_rows(const int32_t* acc, const float* row_scale, const uint8_t* row_zero_point,
                     const float* weight_scale, const int32_t* weight_colsum, const float* bias, Activation act,
                     const SkipLayerNormEpilogue& norm, float* y, const RequantizedRows& requantized, int64_t rows,
                     int64_t n, const ParallelFor& pf) {
  const bool requantize = requantized.q != nullptr;
  if (rows <= 0 || (y == nullptr && !requantize)) return;
  if (n <= 0) {  // nothing to compute, but empty rows still get QuantizeRows' scale 1 and zero point 0
    if (requantize)
      quantize_rows_serial(Isa::kScalar, y, requantized.q, requantized.scale, requantized.zero_point, rows, 0);
    return;
  }
  const Isa isa = active_isa();
  const bool row_epilogue = norm.skip != nullptr || requantize;
  for_each_row_block(rows, n, pf, [&](int64_t r0, int64_t r1) {
    if (!row_epilogue) {
      dequantize_block_serial(isa, acc + r0 * n, n, row_scale + r0, row_zero_point + r0, weight_scale, weight_colsum,
                              bias, act, y + r0 * n, n, r1 - r0, n);
      return;
    }
    // Without y the float row lives in this task's scratch (one row: it stays in L1 between the stages).
    std::vector<float> scratch(y == nullptr ? static_cast<size_t>(n) : 0);
    for (int64_t r = r0; r < r1; ++r) {
      float* row = y != nullptr ? y + r * n : scratch.data();
      dequantize_block_serial(isa, acc + r * n, n, row_scale + r, row_zero_point + r, weight_scale, weight_colsum, bias,
                              act, row, n, 1, n);
      finish_rows_serial(isa, row, norm.at_row(r, n), requantized.at_row(r, n), 1, n);
    }
  });
}

}  // namespace bort
