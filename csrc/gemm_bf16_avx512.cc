// AVX512-BF16 path of the bf16 GEMM: vdpbf16ps register tiles of up to 6 rows x 64 columns (24 zmm
// accumulators, 4 weight vectors, 1 broadcast pair: 29 of 32 registers). Each step of a tile reads one pair
// row of the weight panel (4 x 64 bytes) and broadcasts each A row's pair: 24 dot products per 10 loads.
#include <array>
#include <cstring>

#include "gemm_bf16_kernels.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace bf16 {
namespace {

constexpr int kMaxRows = 6;
constexpr int kMaxVectors = PackedBf16Weights::kPanelWidth / 16;

BORT_AVX512_BF16_INLINE __m512 finish(__m512 v, const float* bias, bool gelu, __mmask16 mask) {
  if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias));
  if (gelu) v = simd::gelu_ps(v);
  return v;
}

// C rows [0, MR) x columns [0, 16 NV) from `pairs` pair rows; `last` masks the last vector's columns.
template <int MR, int NV>
BORT_AVX512_BF16 void tile(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t b_stride, int64_t pairs, float* c,
                           int64_t ldc, const float* bias, bool gelu, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* bp = b + p * b_stride;
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(bp + 32 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 mask = v == NV - 1 ? last : __mmask16{0xFFFF};
      _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask,
                            finish(acc[r][v], bias == nullptr ? nullptr : bias + 16 * v, gelu, mask));
    }
}

using TileFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t, const float*,
                        bool, __mmask16);

template <int MR>
constexpr std::array<TileFn, kMaxVectors> row_of_tiles() {
  return {tile<MR, 1>, tile<MR, 2>, tile<MR, 3>, tile<MR, 4>};
}

const std::array<std::array<TileFn, kMaxVectors>, kMaxRows> kTiles = {
    row_of_tiles<1>(), row_of_tiles<2>(), row_of_tiles<3>(), row_of_tiles<4>(), row_of_tiles<5>(), row_of_tiles<6>()};

}  // namespace

void block_avx512_bf16(const Block& blk) {
  const bool gelu = blk.epilogue.activation == Activation::kGelu;
  // The 6 rows' A (6 x 2K bytes at K = 1024) stay in L1 across the block's panels, each panel streams from L2
  // (the caller sizes blocks so that they fit). The last vector of a panel holds its tail.
  for_each_panel_tile<kMaxRows>(blk, [&](const PanelTile& t) {
    const int64_t vectors = t.width / 16, tail = t.valid - 16 * (vectors - 1);
    kTiles[t.rows - 1][vectors - 1](t.a, blk.lda, t.b, 2 * t.width, blk.w->pairs(), t.c, blk.ldc, t.bias, gelu,
                                    static_cast<__mmask16>((1u << tail) - 1));
  });
}

namespace {

BORT_AVX512_BF16 void convert(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(y + i, (__m512i)h);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(y + i, m, (__m256i)h);
  }
}

}  // namespace

void to_bf16_avx512_bf16(const float* x, uint16_t* y, int64_t n) { convert(x, y, n); }

}  // namespace bf16
}  // namespace bort

#endif  // BORT_X86_64
