// AVX2+FMA path of the bf16 GEMM for CPUs without the bf16 instructions: each pair-interleaved weight
// vector (8 columns x 2 bf16) widens to its even-k and odd-k fp32 halves with one shift and one mask, and
// two FMAs per pair do what one vdpbf16ps does, in its order (odd element first). A bf16 product is exact
// in fp32, so the FMA rounds exactly where the bf16 instruction does. Register tile: 4 rows x 16 columns.
#include <array>
#include <cstring>

#include "gemm_bf16_kernels.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace bf16 {
namespace {

constexpr int kMaxRows = 4;

BORT_AVX2_INLINE __m256 even_half(__m256i pairs) { return _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16)); }
BORT_AVX2_INLINE __m256 odd_half(__m256i pairs) {
  return _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// C rows [0, MR) x 16 columns, of which the first `valid` are stored.
template <int MR>
BORT_AVX2 void tile(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t b_stride, int64_t pairs, float* c,
                    int64_t ldc, const float* bias, bool gelu, int valid) {
  __m256 acc[MR][2];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* bp = b + p * b_stride;
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 16));
    const __m256 b0_even = even_half(b0), b0_odd = odd_half(b0), b1_even = even_half(b1), b1_odd = odd_half(b1);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
      const __m256i av = _mm256_set1_epi32(pair);
      const __m256 a_even = even_half(av), a_odd = odd_half(av);
      acc[r][0] = _mm256_fmadd_ps(a_even, b0_even, _mm256_fmadd_ps(a_odd, b0_odd, acc[r][0]));
      acc[r][1] = _mm256_fmadd_ps(a_even, b1_even, _mm256_fmadd_ps(a_odd, b1_odd, acc[r][1]));
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask[2] = {_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane),
                           _mm256_cmpgt_epi32(_mm256_set1_epi32(valid - 8), lane)};
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) {
      __m256 out = acc[r][v];
      if (bias != nullptr) out = _mm256_add_ps(out, _mm256_maskload_ps(bias + 8 * v, mask[v]));
      if (gelu) out = simd::gelu_ps(out);
      _mm256_maskstore_ps(c + r * ldc + 8 * v, mask[v], out);
    }
}

using TileFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t, const float*,
                        bool, int);
const std::array<TileFn, kMaxRows> kTiles = {tile<1>, tile<2>, tile<3>, tile<4>};

// The scalar rule of gemm_bf16.h, 8 lanes at a time; returns the 8 bf16 in the low 16 bits of each lane.
BORT_AVX2_INLINE __m256i to_bf16_lanes(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i high = _mm256_srli_epi32(u, 16);
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), _mm256_and_si256(high, _mm256_set1_epi32(1)))),
      16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  const __m256i zero_exponent =
      _mm256_cmpeq_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7F800000)), _mm256_setzero_si256());
  __m256i out = _mm256_blendv_epi8(rounded, _mm256_or_si256(high, _mm256_set1_epi32(0x40)), nan);
  return _mm256_blendv_epi8(out, _mm256_and_si256(high, _mm256_set1_epi32(0x8000)), zero_exponent);
}

}  // namespace

void block_avx2(const Block& blk) {
  const bool gelu = blk.epilogue.activation == Activation::kGelu;
  for_each_panel_tile<kMaxRows>(blk, [&](const PanelTile& t) {
    for (int64_t c0 = 0; c0 < t.width; c0 += 16)
      kTiles[t.rows - 1](t.a, blk.lda, t.b + 2 * c0, 2 * t.width, blk.w->pairs(), t.c + c0, blk.ldc,
                         t.bias == nullptr ? nullptr : t.bias + c0, gelu,
                         static_cast<int>(t.valid - c0 < 16 ? t.valid - c0 : 16));
  });
}

namespace {

BORT_AVX2 void convert(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    // packus interleaves the two 128-bit lanes; the permute puts the 16 results back in order.
    const __m256i packed =
        _mm256_packus_epi32(to_bf16_lanes(_mm256_loadu_ps(x + i)), to_bf16_lanes(_mm256_loadu_ps(x + i + 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_permute4x64_epi64(packed, 0xD8));
  }
  for (; i < n; ++i) y[i] = float_to_bf16(x[i]);
}

}  // namespace

void to_bf16_avx2(const float* x, uint16_t* y, int64_t n) { convert(x, y, n); }

}  // namespace bf16
}  // namespace bort

#endif  // BORT_X86_64
