// AVX-512 VNNI micro-kernel: vpdpbusd multiplies 4 u8 activations by 4 s8 weights per int32 lane and adds
// them without saturation, so the result equals the scalar reference exactly.
//
// Register blocking: kRows rows x up to 4 zmm (64 columns) = 24 accumulators; per k-group, one broadcast of
// 4 activation bytes per row and one load of 16 columns x 4 weights per zmm, each reused 6 or 4 times.
#include <algorithm>

#include "gemm_int8.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace {

constexpr int kRows = 6;

// The accumulators are named variables, not an array: GCC keeps a 24-vector array in memory (it exceeds its
// scalar-replacement limit), which costs a store per vpdpbusd. Unused rows / vectors compile away.
#define BORT_VNNI_ROW(r)                                                                                        \
  __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = _mm512_setzero_si512(), c##r##2 = _mm512_setzero_si512(), \
          c##r##3 = _mm512_setzero_si512()
#define BORT_VNNI_STEP(r)                                      \
  if (R > r) {                                                 \
    int32_t quad;                                              \
    __builtin_memcpy(&quad, a + r * lda + 4 * g, 4);           \
    const __m512i av = _mm512_set1_epi32(quad);                \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, b0);            \
    if (V > 1) c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, b1); \
    if (V > 2) c##r##2 = _mm512_dpbusd_epi32(c##r##2, av, b2); \
    if (V > 3) c##r##3 = _mm512_dpbusd_epi32(c##r##3, av, b3); \
  }
#define BORT_VNNI_STORE(r)                                     \
  if (R > r) {                                                 \
    _mm512_storeu_si512(c + r * ldc, c##r##0);                 \
    if (V > 1) _mm512_storeu_si512(c + r * ldc + 16, c##r##1); \
    if (V > 2) _mm512_storeu_si512(c + r * ldc + 32, c##r##2); \
    if (V > 3) _mm512_storeu_si512(c + r * ldc + 48, c##r##3); \
  }

// c[r * ldc + j] for R rows x 16 V columns: the sum over `groups` k-groups of a's 4 bytes times b's 4 weights.
template <int R, int V>
BORT_AVX512_VNNI void tile_kernel(const uint8_t* a, int64_t lda, const int8_t* b, int64_t groups, int32_t* c,
                                  int64_t ldc) {
  static_assert(R >= 1 && R <= kRows && V >= 1 && V <= 4, "tile shape");
  BORT_VNNI_ROW(0);
  BORT_VNNI_ROW(1);
  BORT_VNNI_ROW(2);
  BORT_VNNI_ROW(3);
  BORT_VNNI_ROW(4);
  BORT_VNNI_ROW(5);
  const int64_t group_bytes = 64 * V;
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = b + g * group_bytes;
    const __m512i b0 = _mm512_loadu_si512(bg);
    const __m512i b1 = V > 1 ? _mm512_loadu_si512(bg + 64) : b0;
    const __m512i b2 = V > 2 ? _mm512_loadu_si512(bg + 128) : b0;
    const __m512i b3 = V > 3 ? _mm512_loadu_si512(bg + 192) : b0;
    BORT_VNNI_STEP(0)
    BORT_VNNI_STEP(1)
    BORT_VNNI_STEP(2)
    BORT_VNNI_STEP(3)
    BORT_VNNI_STEP(4)
    BORT_VNNI_STEP(5)
  }
  BORT_VNNI_STORE(0)
  BORT_VNNI_STORE(1)
  BORT_VNNI_STORE(2)
  BORT_VNNI_STORE(3)
  BORT_VNNI_STORE(4)
  BORT_VNNI_STORE(5)
}

#undef BORT_VNNI_ROW
#undef BORT_VNNI_STEP
#undef BORT_VNNI_STORE

using TileKernel = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*, int64_t);

template <int R>
constexpr TileKernel kernel_for_width(int vectors) {
  return vectors == 1   ? tile_kernel<R, 1>
         : vectors == 2 ? tile_kernel<R, 2>
         : vectors == 3 ? tile_kernel<R, 3>
                        : tile_kernel<R, 4>;
}

TileKernel kernel_for(int rows, int vectors) {
  switch (rows) {
    case 1: return kernel_for_width<1>(vectors);
    case 2: return kernel_for_width<2>(vectors);
    case 3: return kernel_for_width<3>(vectors);
    case 4: return kernel_for_width<4>(vectors);
    case 5: return kernel_for_width<5>(vectors);
    default: return kernel_for_width<6>(vectors);
  }
}

}  // namespace

void gemm_int8_block_avx512_vnni(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                 int64_t row_offset, const TileSink& sink) {
  alignas(64) int32_t tile[kRows * kPanelWidth];
  const auto* av = static_cast<const uint8_t*>(a.data);
  const int64_t groups = w.padded_k() / 4;
  for (int64_t p = p0; p < p1; ++p) {
    const int vectors = static_cast<int>(w.panel_width(p) / 16);
    // The rows in as few tiles as 6-row tiles need, their sizes differing by at most one (8 rows: 4 + 4,
    // not 6 + 2, whose 2-row tile would load each weight vector for only two vpdpbusd).
    const int64_t tiles = (a.rows + kRows - 1) / kRows, base = a.rows / std::max<int64_t>(tiles, 1),
                  extra = a.rows - base * tiles;
    for (int64_t t = 0, r = 0; t < tiles; ++t) {
      const int rows = static_cast<int>(base + (t < extra ? 1 : 0));
      kernel_for(rows, vectors)(av + r * a.stride, a.stride, w.panel(p), groups, tile, kPanelWidth);
      sink.tile(tile, kPanelWidth, row_offset + r, rows, w.panel_begin(p), w.panel_columns(p));
      r += rows;
    }
  }
}

}  // namespace bort

#endif  // BORT_X86_64
