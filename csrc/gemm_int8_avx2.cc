// AVX2 micro-kernel, exact: activations arrive widened to int16, weights are sign-extended to int16 as they
// are loaded, and vpmaddwd adds pairs of int16 products into int32 (|255 * 128 * 2| fits). vpmaddubsw would
// add u8 x s8 pairs into a saturating int16 (255 * 127 * 2 > 32767), so it is not used.
//
// One zmm-free register block: kRows rows x 8 columns. A lane pair holds one column's two partial sums
// (k-group weights 0,1 and 2,3); they are added once, after the K loop.
#include <algorithm>

#include "gemm_int8.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace {

constexpr int kRows = 4;

// Named accumulators rather than arrays, so that GCC keeps them all in registers (see the VNNI kernel).
#define BORT_AVX2_ROW(r) __m256i lo##r = _mm256_setzero_si256(), hi##r = _mm256_setzero_si256()
#define BORT_AVX2_STEP(r)                                         \
  if (R > r) {                                                    \
    long long quad;                                               \
    __builtin_memcpy(&quad, a + r * lda + 4 * g, 8);              \
    const __m256i av = _mm256_set1_epi64x(quad);                  \
    lo##r = _mm256_add_epi32(lo##r, _mm256_madd_epi16(av, b_lo)); \
    hi##r = _mm256_add_epi32(hi##r, _mm256_madd_epi16(av, b_hi)); \
  }
// hadd gives columns (0 1 4 5 | 2 3 6 7); the 64-bit permute puts them in order.
#define BORT_AVX2_STORE(r)                                       \
  if (R > r)                                                     \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), \
                        _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo##r, hi##r), 0xD8));

// c[r * ldc + 0..7] = A rows x 8 columns at b (the panel's k-group stride is group_bytes).
template <int R>
BORT_AVX2 void tile_kernel(const int16_t* a, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t groups,
                           int32_t* c, int64_t ldc) {
  static_assert(R >= 1 && R <= kRows, "tile shape");
  BORT_AVX2_ROW(0);
  BORT_AVX2_ROW(1);
  BORT_AVX2_ROW(2);
  BORT_AVX2_ROW(3);
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = b + g * group_bytes;
    const __m256i b_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg)));
    const __m256i b_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + 16)));
    BORT_AVX2_STEP(0)
    BORT_AVX2_STEP(1)
    BORT_AVX2_STEP(2)
    BORT_AVX2_STEP(3)
  }
  BORT_AVX2_STORE(0)
  BORT_AVX2_STORE(1)
  BORT_AVX2_STORE(2)
  BORT_AVX2_STORE(3)
}

#undef BORT_AVX2_ROW
#undef BORT_AVX2_STEP
#undef BORT_AVX2_STORE

using TileKernel = void (*)(const int16_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);

TileKernel kernel_for(int rows) {
  switch (rows) {
    case 1: return tile_kernel<1>;
    case 2: return tile_kernel<2>;
    case 3: return tile_kernel<3>;
    default: return tile_kernel<4>;
  }
}

}  // namespace

void gemm_int8_block_avx2(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1, int64_t row_offset,
                          const TileSink& sink) {
  alignas(32) int32_t tile[kRows * kPanelWidth];
  const auto* av = static_cast<const int16_t*>(a.data);
  const int64_t groups = w.padded_k() / 4;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t width = w.panel_width(p), group_bytes = width * 4;
    for (int64_t r = 0; r < a.rows; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, a.rows - r));
      const TileKernel kernel = kernel_for(rows);
      for (int64_t c = 0; c < width; c += 8)
        kernel(av + r * a.stride, a.stride, w.panel(p) + c * 4, group_bytes, groups, tile + c, kPanelWidth);
      sink.tile(tile, kPanelWidth, row_offset + r, rows, w.panel_begin(p), w.panel_columns(p));
    }
  }
}

}  // namespace bort

#endif  // BORT_X86_64
