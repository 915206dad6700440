#include "embed_layernorm.h"

#include <vector>

#include "cpu_dispatch.h"
#include "gemm_bf16.h"  // bf16_to_float
#include "row_dispatch.h"
#include "simd_math.h"
#include "skip_layernorm.h"

namespace bort {
namespace {

// Scalar reference: one rounding, the float product of the widened integer and the scale.
void dequantize_int8_row_scalar(const int8_t* q, float scale, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(q[i]) * scale;
}

#if BORT_X86_64
BORT_AVX2 void dequantize_int8_row_avx2(const int8_t* q, float scale, float* y, int64_t n) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), s));
  }
  dequantize_int8_row_scalar(q + i, scale, y + i, n - i);
}
#endif

using DequantizeFn = void (*)(const int8_t*, float, float*, int64_t);
constexpr IsaPath<DequantizeFn> kDequantizePaths[] = {
#if BORT_X86_64
    {Isa::kAvx2, dequantize_int8_row_avx2},
#endif
    {Isa::kScalar, dequantize_int8_row_scalar}};

}  // namespace

void dequantize_int8_row(const int8_t* q, float scale, float* y, int64_t n) {
  select_path(active_isa(), kDequantizePaths)(q, scale, y, n);
}

namespace {

// The shared token loop: widen(table, row, out) writes a table row's h floats.
template <typename Table, typename Widen>
void embed_rows(const int64_t* ids, const int64_t* positions, int64_t tokens, const Table& word, const Table& position,
                const Widen& widen, const float* gamma, const float* beta, float* y, int64_t h, float epsilon,
                const ParallelFor& pf) {
  if (tokens <= 0 || h <= 0) return;
  const Isa isa = active_isa();
  for_each_row_block(tokens, h, pf, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> position_row;
    position_row.resize(static_cast<size_t>(h));
    for (int64_t t = t0; t < t1; ++t) {
      // Word rows are scattered over a large table (Bort's: 51 MB): fetch the next one while this one is done.
      if (t + 1 < t1) prefetch_row(word.rows + ids[t + 1] * h, h * static_cast<int64_t>(sizeof(*word.rows)));
      float* row = y + t * h;
      widen(word, ids[t], row);
      widen(position, positions[t], position_row.data());
      skip_layernorm_serial(isa, row, position_row.data(), gamma, beta, /*bias=*/nullptr, /*skip_scale=*/nullptr, row,
                            1, h, epsilon);
    }
  });
}

}  // namespace

void embed_layernorm_int8(const int64_t* ids, const int64_t* positions, int64_t tokens, const Int8Table& word,
                          const Int8Table& position, const float* gamma, const float* beta, float* y, int64_t h,
                          float epsilon, const ParallelFor& pf) {
  const DequantizeFn dequantize = select_path(active_isa(), kDequantizePaths);
  const auto widen = [&](const Int8Table& table, int64_t r, float* out) {
    dequantize(table.rows + r * h, table.scale[r], out, h);
  };
  embed_rows(ids, positions, tokens, word, position, widen, gamma, beta, y, h, epsilon, pf);
}

void embed_layernorm_bf16(const int64_t* ids, const int64_t* positions, int64_t tokens, const Bf16Table& word,
                          const Bf16Table& position, const float* gamma, const float* beta, float* y, int64_t h,
                          float epsilon, const ParallelFor& pf) {
  // Exact (the bits shifted into place); a plain loop the compiler vectorizes at every level.
  const auto widen = [&](const Bf16Table& table, int64_t r, float* out) {
    const uint16_t* row = table.rows + r * h;
    for (int64_t i = 0; i < h; ++i) out[i] = bf16_to_float(row[i]);
  };
  embed_rows(ids, positions, tokens, word, position, widen, gamma, beta, y, h, epsilon, pf);
}

}  // namespace bort
