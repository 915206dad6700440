// AVX2 micro-kernels, both exact.
//
// Any weights (gemm_int8_block_avx2): activations arrive widened to int16, weights are sign-extended to int16 as
// they are loaded, and vpmaddwd adds pairs of int16 products into int32 (|255 * 128 * 2| fits). Register block:
// up to 4 rows x 8 columns; a lane pair holds one column's two partial sums (k-group weights 0,1 and 2,3), added
// once, after the K loop.
//
// Weights whose pairs cannot saturate (gemm_int8_block_avx2_maddubs, PackedInt8Weights::saturation_free_pairs):
// vpmaddubsw adds each u8 x s8 pair into an int16 that cannot saturate on them, vpmaddwd with ones adds a column's
// two pairs into int32: three instructions per 32 multiply-adds (with the accumulating add) against four and the
// weights' sign extension, on u8 rows as they come. Register block: up to 6 rows x 16 columns, one int32
// accumulator per row and 8 columns. On an AMD EPYC Zen 3, one thread, 1024 x 1024 weights: 150-176 GOPS against
// 70-112.
//
// Row tiles narrower than the widest block run the largest instantiated block that fits, then the next (the
// blocks instantiated are few: the ops library has a size budget). A single u8 row meets a whole panel at once
// (maddubs_row), reading it in address order.
#include <algorithm>

#include "gemm_int8.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace {

// c[r * ldc + 0 .. columns) for rows r < R of a (row stride lda elements) x the columns at b (k-group stride
// group_bytes). With `prefetch`, the 64-byte line prefetch + 64 g goes towards L2 at k group g.
using TileKernel = void (*)(const void* a, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t groups,
                            int32_t* c, int64_t ldc, const int8_t* prefetch);
struct RowBlock {
  int rows;
  TileKernel kernel;
  TileKernel whole_panel = nullptr;  // the same rows x a whole panel of kPanelWidth columns, if any
};

// The weights of k group g at b, after asking for the line prefetch + 64 g (if any) to come towards L2.
BORT_AVX2_INLINE const int8_t* k_group(const int8_t* b, int64_t group_bytes, int64_t g, const int8_t* prefetch) {
  if (prefetch != nullptr) _mm_prefetch(reinterpret_cast<const char*>(prefetch + 64 * g), _MM_HINT_T1);
  return b + g * group_bytes;
}

// Named accumulators rather than arrays, so that GCC keeps them all in registers (see the VNNI kernel): two per
// row in both kernels.
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

// 8 columns of int16 rows.
template <int R>
BORT_AVX2 void int16_tile(const void* rows, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t groups,
                          int32_t* c, int64_t ldc, const int8_t* prefetch) {
  static_assert(R >= 1 && R <= 4, "tile shape");
  const auto* a = static_cast<const int16_t*>(rows);
  BORT_AVX2_ROW(0);
  BORT_AVX2_ROW(1);
  BORT_AVX2_ROW(2);
  BORT_AVX2_ROW(3);
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = k_group(b, group_bytes, g, prefetch);
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

#undef BORT_AVX2_STEP
#undef BORT_AVX2_STORE

// acc + the 8 columns' sums of the u8 quad av (broadcast) x their 32 weights at b.
BORT_AVX2_INLINE __m256i maddubs_add(__m256i acc, __m256i av, __m256i b, __m256i ones) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(av, b), ones));
}
BORT_AVX2_INLINE __m256i maddubs_add(__m256i acc, __m256i av, const int8_t* b, __m256i ones) {
  return maddubs_add(acc, av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), ones);
}

#define BORT_MADDUBS_STEP(r)                         \
  if (R > r) {                                       \
    int32_t quad;                                    \
    __builtin_memcpy(&quad, a + r * lda + 4 * g, 4); \
    const __m256i av = _mm256_set1_epi32(quad);      \
    lo##r = maddubs_add(lo##r, av, b_lo, ones);      \
    hi##r = maddubs_add(hi##r, av, b_hi, ones);      \
  }
#define BORT_MADDUBS_STORE(r)                                                \
  if (R > r) {                                                               \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), lo##r);     \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8), hi##r); \
  }

// 16 columns (32 bytes of 8 columns x 4 k, then the next 8 columns) of u8 rows.
template <int R>
BORT_AVX2 void maddubs_tile(const void* rows, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t groups,
                            int32_t* c, int64_t ldc, const int8_t* prefetch) {
  static_assert(R >= 1 && R <= 6, "tile shape");
  const auto* a = static_cast<const uint8_t*>(rows);
  const __m256i ones = _mm256_set1_epi16(1);
  BORT_AVX2_ROW(0);
  BORT_AVX2_ROW(1);
  BORT_AVX2_ROW(2);
  BORT_AVX2_ROW(3);
  BORT_AVX2_ROW(4);
  BORT_AVX2_ROW(5);
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = k_group(b, group_bytes, g, prefetch);
    const __m256i b_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg));
    const __m256i b_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg + 32));
    BORT_MADDUBS_STEP(0)
    BORT_MADDUBS_STEP(1)
    BORT_MADDUBS_STEP(2)
    BORT_MADDUBS_STEP(3)
    BORT_MADDUBS_STEP(4)
    BORT_MADDUBS_STEP(5)
  }
  BORT_MADDUBS_STORE(0)
  BORT_MADDUBS_STORE(1)
  BORT_MADDUBS_STORE(2)
  BORT_MADDUBS_STORE(3)
  BORT_MADDUBS_STORE(4)
  BORT_MADDUBS_STORE(5)
}

#undef BORT_MADDUBS_STEP
#undef BORT_MADDUBS_STORE

// One u8 row x a whole panel of kPanelWidth columns: the panel is read in address order, which the hardware
// prefetchers stream from memory at full speed where a 16-column strip (64 of every 256 bytes) streams at about
// half (M = 1, weights from L3 or memory, one thread, AMD EPYC Zen 3: 0.36x-0.66x onnxruntime's MLAS by strips,
// 0.86x-1.07x so).
#define BORT_ROW_STEP(s)                             \
  lo##s = maddubs_add(lo##s, av, bg + 64 * s, ones); \
  hi##s = maddubs_add(hi##s, av, bg + 64 * s + 32, ones)
#define BORT_ROW_STORE(s)                                             \
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 16 * s), lo##s); \
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 16 * s + 8), hi##s)
BORT_AVX2 void maddubs_row(const void* rows, int64_t, const int8_t* b, int64_t group_bytes, int64_t groups, int32_t* c,
                           int64_t, const int8_t*) {
  static_assert(kPanelWidth == 64, "four 16-column strips");
  const auto* a = static_cast<const uint8_t*>(rows);
  const __m256i ones = _mm256_set1_epi16(1);
  BORT_AVX2_ROW(0);  // one accumulator pair per 16-column strip here
  BORT_AVX2_ROW(1);
  BORT_AVX2_ROW(2);
  BORT_AVX2_ROW(3);
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = b + g * group_bytes;
    int32_t quad;
    __builtin_memcpy(&quad, a + 4 * g, 4);
    const __m256i av = _mm256_set1_epi32(quad);
    BORT_ROW_STEP(0);
    BORT_ROW_STEP(1);
    BORT_ROW_STEP(2);
    BORT_ROW_STEP(3);
  }
  BORT_ROW_STORE(0);
  BORT_ROW_STORE(1);
  BORT_ROW_STORE(2);
  BORT_ROW_STORE(3);
}
#undef BORT_AVX2_ROW
#undef BORT_ROW_STEP
#undef BORT_ROW_STORE

// Widest first, ending with one row.
constexpr RowBlock kInt16Blocks[] = {{4, int16_tile<4>}, {1, int16_tile<1>}};
constexpr RowBlock kMaddubsBlocks[] = {{6, maddubs_tile<6>}, {2, maddubs_tile<2>}, {1, maddubs_tile<1>, maddubs_row}};

// For each panel, each tile of up to blocks[0].rows rows meets every `columns`-wide strip of the panel, then goes
// to the sink. One copy for both kernels (the ops library has a size budget): neither inlined nor specialized.
// Compiled for size: it runs once per tile and strip, its kernels carry the time.
__attribute__((noinline, noclone, optimize("Os"))) void run_row_tiles(const RowBlock* blocks, int64_t columns,
                                                                      size_t element_bytes, const GemmOperandA& a,
                                                                      const PackedInt8Weights& w, int64_t p0,
                                                                      int64_t p1, int64_t row_offset,
                                                                      const TileSink& sink) {
  constexpr int kMaxRows = 6;
  alignas(32) int32_t tile[kMaxRows * kPanelWidth];
  const auto* rows = static_cast<const char*>(a.data);
  const int64_t groups = w.padded_k() / 4, row_bytes = a.stride * static_cast<int64_t>(element_bytes);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t width = w.panel_width(p), group_bytes = width * 4;  // width: a multiple of 16
    for (int64_t r = 0; r < a.rows; r += blocks[0].rows) {
      const int tile_rows = static_cast<int>(std::min<int64_t>(blocks[0].rows, a.rows - r));
      for (int done = 0; done < tile_rows;) {
        const RowBlock* block = blocks;
        while (block->rows > tile_rows - done) ++block;  // the last block has one row
        if (block->whole_panel != nullptr && width == kPanelWidth) {
          block->whole_panel(rows + (r + done) * row_bytes, a.stride, w.panel(p), group_bytes, groups,
                             tile + done * kPanelWidth, kPanelWidth, nullptr);
          done += block->rows;
          continue;
        }
        for (int64_t c = 0; c < width; c += columns) {
          // Strips stream a panel from memory at about half speed (maddubs_row), so a panel's first row block
          // brings the next panel into L2 in address order, a line per k group, each strip a stretch of it
          // (M = 8, weights from L3 or memory, one thread, AMD EPYC Zen 3: 0.61x-0.71x MLAS before, 0.83x-1.01x).
          const int64_t ahead = (c / columns) * groups * 64;
          const int8_t* prefetch = r == 0 && done == 0 && p + 1 < p1 && ahead < w.panel_width(p + 1) * w.padded_k()
                                       ? w.panel(p + 1) + ahead
                                       : nullptr;
          block->kernel(rows + (r + done) * row_bytes, a.stride, w.panel(p) + c * 4, group_bytes, groups,
                        tile + done * kPanelWidth + c, kPanelWidth, prefetch);
        }
        done += block->rows;
      }
      sink.tile(tile, kPanelWidth, row_offset + r, tile_rows, w.panel_begin(p), w.panel_columns(p));
    }
  }
}

}  // namespace

void gemm_int8_block_avx2(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1, int64_t row_offset,
                          const TileSink& sink) {
  run_row_tiles(kInt16Blocks, 8, sizeof(int16_t), a, w, p0, p1, row_offset, sink);
}

void gemm_int8_block_avx2_maddubs(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                  int64_t row_offset, const TileSink& sink) {
  run_row_tiles(kMaddubsBlocks, 16, sizeof(uint8_t), a, w, p0, p1, row_offset, sink);
}

}  // namespace bort

#endif  // BORT_X86_64
