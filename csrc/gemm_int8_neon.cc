// aarch64 micro-kernels on the shared packed layout (gemm_int8.h): 16 bytes of a k-group are 4 columns x 4 k,
// exactly the vector operand of a by-element dot-product instruction (one int32 lane per column), whose
// indexed operand is 4 activation bytes of one row.
//
// - i8mm (FEAT_I8MM): sudot multiplies the s8 weights by the u8 activations directly.
// - dotprod (FEAT_DotProd): sdot multiplies s8 by s8, so prepare_a_rows stores the activations as a - 128 and
//   the kernel adds 128 * column sum back: sum_k (a - 128) w + 128 sum_k w = sum_k a w, exactly (int32 lanes
//   wrap in both, like the scalar reference).
//
// Register blocking: kRows rows x 16 columns = 16 accumulators; per 4 k-groups, one 16-byte load of each row's
// activations and 4 x 4 weight vectors, each reused by every row.
#include <algorithm>

#include "gemm_int8.h"
#include "simd_neon.h"

#if BORT_AARCH64
namespace bort {
namespace {

constexpr int kRows = 4;
constexpr int64_t kCols = 16;

// Named accumulators (not an array), so that GCC keeps all of them in registers.
#define BORT_NEON_ROW(r) int32x4_t c##r##0 = vdupq_n_s32(0), c##r##1 = c##r##0, c##r##2 = c##r##0, c##r##3 = c##r##0
// One k-group (lane l of the 4 loaded) of row r: 4 dot products, one per 4-column weight vector.
#define BORT_NEON_STEP(r, l, DOT)        \
  if (R > r) {                           \
    c##r##0 = DOT(c##r##0, w0, a##r, l); \
    c##r##1 = DOT(c##r##1, w1, a##r, l); \
    c##r##2 = DOT(c##r##2, w2, a##r, l); \
    c##r##3 = DOT(c##r##3, w3, a##r, l); \
  }
#define BORT_NEON_GROUP(l, DOT)                   \
  {                                               \
    const int8_t* bg = b + (g + l) * group_bytes; \
    const int8x16_t w0 = vld1q_s8(bg);            \
    const int8x16_t w1 = vld1q_s8(bg + 16);       \
    const int8x16_t w2 = vld1q_s8(bg + 32);       \
    const int8x16_t w3 = vld1q_s8(bg + 48);       \
    BORT_NEON_STEP(0, l, DOT)                     \
    BORT_NEON_STEP(1, l, DOT)                     \
    BORT_NEON_STEP(2, l, DOT)                     \
    BORT_NEON_STEP(3, l, DOT)                     \
  }
#define BORT_NEON_STORE(r)                \
  if (R > r) {                            \
    vst1q_s32(c + r * ldc, c##r##0);      \
    vst1q_s32(c + r * ldc + 4, c##r##1);  \
    vst1q_s32(c + r * ldc + 8, c##r##2);  \
    vst1q_s32(c + r * ldc + 12, c##r##3); \
  }
// The body of a tile kernel: R rows of A (element type A_T, loaded with LOAD) x 16 columns at b, `groups` a
// multiple of 4 (K is padded to 64).
#define BORT_NEON_TILE(A_T, LOAD, DOT)                     \
  BORT_NEON_ROW(0);                                        \
  BORT_NEON_ROW(1);                                        \
  BORT_NEON_ROW(2);                                        \
  BORT_NEON_ROW(3);                                        \
  for (int64_t g = 0; g < groups; g += 4) {                \
    const A_T a0 = LOAD(a + 4 * g);                        \
    const A_T a1 = R > 1 ? LOAD(a + lda + 4 * g) : a0;     \
    const A_T a2 = R > 2 ? LOAD(a + 2 * lda + 4 * g) : a0; \
    const A_T a3 = R > 3 ? LOAD(a + 3 * lda + 4 * g) : a0; \
    BORT_NEON_GROUP(0, DOT)                                \
    BORT_NEON_GROUP(1, DOT)                                \
    BORT_NEON_GROUP(2, DOT)                                \
    BORT_NEON_GROUP(3, DOT)                                \
  }                                                        \
  BORT_NEON_STORE(0)                                       \
  BORT_NEON_STORE(1)                                       \
  BORT_NEON_STORE(2)                                       \
  BORT_NEON_STORE(3)

#define BORT_SDOT(acc, w, a, l) vdotq_laneq_s32(acc, w, a, l)
#define BORT_SUDOT(acc, w, a, l) vsudotq_laneq_s32(acc, w, a, l)

// c[r * ldc + 0..15] for R rows (activations offset to s8) x 16 columns at b.
template <int R>
BORT_NEON_DOTPROD void tile_dotprod(const int8_t* a, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t groups,
                                    int32_t* c, int64_t ldc) {
  static_assert(R >= 1 && R <= kRows, "tile shape");
  BORT_NEON_TILE(int8x16_t, vld1q_s8, BORT_SDOT)
}

// The same with u8 activations, multiplied as they are.
template <int R>
BORT_NEON_I8MM void tile_i8mm(const uint8_t* a, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t groups,
                              int32_t* c, int64_t ldc) {
  static_assert(R >= 1 && R <= kRows, "tile shape");
  BORT_NEON_TILE(uint8x16_t, vld1q_u8, BORT_SUDOT)
}

#undef BORT_NEON_ROW
#undef BORT_NEON_STEP
#undef BORT_NEON_GROUP
#undef BORT_NEON_STORE
#undef BORT_NEON_TILE
#undef BORT_SDOT
#undef BORT_SUDOT

template <typename A>
using TileKernel = void (*)(const A*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);

template <typename A, template <int> class Kernels>
TileKernel<A> kernel_for(int rows) {
  switch (rows) {
    case 1: return Kernels<1>::fn;
    case 2: return Kernels<2>::fn;
    case 3: return Kernels<3>::fn;
    default: return Kernels<4>::fn;
  }
}

template <int R>
struct DotprodKernels {
  static constexpr TileKernel<int8_t> fn = tile_dotprod<R>;
};
template <int R>
struct I8mmKernels {
  static constexpr TileKernel<uint8_t> fn = tile_i8mm<R>;
};

// Every panel x row tile of the block; `offset_correction` adds 128 * column sum (the dotprod path).
template <typename A, template <int> class Kernels>
void block(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1, int64_t row_offset,
           const TileSink& sink, bool offset_correction) {
  alignas(64) int32_t tile[kRows * kPanelWidth];
  const auto* av = static_cast<const A*>(a.data);
  const int64_t groups = w.padded_k() / 4;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t width = w.panel_width(p), group_bytes = width * 4, cols = w.panel_columns(p);
    const int32_t* colsum = w.column_sums() + w.panel_begin(p);
    for (int64_t r = 0; r < a.rows; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, a.rows - r));
      const TileKernel<A> kernel = kernel_for<A, Kernels>(rows);
      for (int64_t c = 0; c < width; c += kCols)
        kernel(av + r * a.stride, a.stride, w.panel(p) + c * 4, group_bytes, groups, tile + c, kPanelWidth);
      if (offset_correction)
        for (int i = 0; i < rows; ++i)
          for (int64_t c = 0; c < cols; ++c)
            tile[i * kPanelWidth + c] = static_cast<int32_t>(static_cast<uint32_t>(tile[i * kPanelWidth + c]) +
                                                             128u * static_cast<uint32_t>(colsum[c]));
      sink.tile(tile, kPanelWidth, row_offset + r, rows, w.panel_begin(p), cols);
    }
  }
}

}  // namespace

void gemm_int8_block_neon_dotprod(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                  int64_t row_offset, const TileSink& sink) {
  block<int8_t, DotprodKernels>(a, w, p0, p1, row_offset, sink, /*offset_correction=*/true);
}

void gemm_int8_block_neon_i8mm(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                               int64_t row_offset, const TileSink& sink) {
  block<uint8_t, I8mmKernels>(a, w, p0, p1, row_offset, sink, /*offset_correction=*/false);
}

}  // namespace bort
#endif  // BORT_AARCH64
