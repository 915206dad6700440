// AMX-BF16 path of the bf16 GEMM: C in 32 x 32 blocks of four 16 x 16 fp32 tiles (tmm4-7), A in two tiles
// of 16 rows x 32 bf16 (tmm2-3), weights in two tiles of 16 pair rows x 16 columns (tmm0-1) read straight
// from the packed panels (their pair rows are the VNNI layout a B tile wants, row stride 4 x panel width).
//
// Tile configuration: exactly the one onnxruntime's MLAS AMX kernels load once per thread and then assume
// (palette 1, tiles 0-7 all 16 rows x 64 bytes), so running this kernel on an onnxruntime pool thread leaves
// MLAS's tiles configured as it expects. For the same reason the tiles are never released. Tails: rows past
// M are the zero rows the caller pads A with, columns past N the panels' zero columns; the epilogue stores
// only real rows and columns.
#include <cstring>

#include "amx_tiles.h"
#include "gemm_bf16_kernels.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace bf16 {
namespace {

constexpr int kTileRows = 16;

BORT_AMX void configure_tiles() {
  static const AmxTileConfig config = bort_tile_config();
  _tile_loadconfig(&config);
}

inline __mmask16 column_mask(int64_t valid) {
  return valid >= 16 ? __mmask16{0xFFFF} : valid <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << valid) - 1);
}

// The stored tiles of the previous 32 x 32 block of C, finished (bias, GELU, masked store) a few rows at a time
// between the tile products of the next block, as the int8 kernel's PendingRows does: the vector units run the
// epilogue while the tile unit multiplies. Rows 0-15 come from the top tiles, 16-31 from the bottom ones; each
// row is its left 16 columns and, when the block has them, its right 16.
class PendingBlock {
 public:
  // tiles: C tiles 4..7 stored as [top left, bottom left, top right, bottom right], 16 x 16 fp32 each.
  BORT_AMX void reset(const float (*tiles)[kTileRows * 16], int64_t rows_top, int64_t rows_bottom, bool right, float* c,
                      int64_t ldc, const float* bias, bool gelu, int64_t valid, int64_t steps) {
    tiles_ = tiles;
    rows_top_ = rows_top;
    rows_ = rows_top + rows_bottom;
    right_ = right;
    c_ = c;
    ldc_ = ldc;
    gelu_ = gelu;
    mask_left_ = column_mask(valid);
    mask_right_ = column_mask(valid - 16);
    bias_ = bias;
    done_ = 0;
    rows_per_step_ = (rows_ + steps - 1) / (steps > 0 ? steps : 1);
  }
  BORT_AMX void step() {
    for (int64_t i = 0; i < rows_per_step_ && done_ < rows_; ++i) finish_row(done_++);
  }
  BORT_AMX void finish() {
    while (done_ < rows_) finish_row(done_++);
  }

 private:
  BORT_AMX void finish_row(int64_t r) {
    const bool top = r < rows_top_;
    const int64_t tile_row = top ? r : r - rows_top_;
    // A bottom row's tile row counts from the bottom tiles' first row, 16 rows below the top's.
    float* c = c_ + (top ? r : kTileRows + tile_row) * ldc_;
    store(tiles_[top ? 0 : 1] + tile_row * 16, bias_, mask_left_, c);
    if (right_)
      store(tiles_[top ? 2 : 3] + tile_row * 16, bias_ == nullptr ? nullptr : bias_ + 16, mask_right_, c + 16);
  }
  // One row of a stored tile: bias, GELU, the columns in mask to c. Not inlined: one copy of GELU's code, which
  // keeps the ops library within its size budget.
  BORT_AMX __attribute__((noinline)) void store(const float* tile_row, const float* bias, __mmask16 mask,
                                                float* c) const {
    __m512 v = _mm512_loadu_ps(tile_row);
    if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias));
    if (gelu_) v = simd::gelu_ps(v);
    _mm512_mask_storeu_ps(c, mask, v);
  }

  const float (*tiles_)[kTileRows * 16] = nullptr;
  int64_t rows_top_ = 0, rows_ = 0, done_ = 0, rows_per_step_ = 1, ldc_ = 0;
  bool right_ = false, gelu_ = false;
  float* c_ = nullptr;
  const float* bias_ = nullptr;
  __mmask16 mask_left_ = 0, mask_right_ = 0;
};

BORT_AMX void run_block(const Block& blk) {
  const PackedBf16Weights& w = *blk.w;
  const bool gelu = blk.epilogue.activation == Activation::kGelu;
  const int64_t depth_blocks = w.padded_pairs() / kTileRows;  // 16 pair rows = 32 k per tile product
  const int a_stride = static_cast<int>(blk.lda * 2);
  // Two blocks' tiles: one being multiplied into, the other (the block before) being finished.
  alignas(64) float out[2][4][kTileRows * 16];
  int64_t block = 0;
  PendingBlock pending;
  PanelPrefetch prefetch;
  configure_tiles();
  for (int64_t r0 = 0; r0 < blk.rows; r0 += 2 * kTileRows) {
    const int64_t rows_top = blk.rows - r0 < kTileRows ? blk.rows - r0 : kTileRows;
    const int64_t rows_bottom = blk.rows - r0 - rows_top < kTileRows ? blk.rows - r0 - rows_top : kTileRows;
    const uint16_t* a = blk.a + r0 * blk.lda;
    for (int64_t j = blk.panel_begin; j < blk.panel_end; ++j) {
      const int64_t width = w.panel_width(j), valid = valid_columns(w, j);
      const int b_stride = static_cast<int>(width * 4);
      const uint16_t* panel = w.panel(j);
      // The first row block takes each panel from L3: the block's next panel comes in meanwhile.
      const int64_t steps = (width + 31) / 32 * depth_blocks;
      const bool prefetch_next = blk.panels_from_l3 && r0 == 0 && j + 1 < blk.panel_end;
      prefetch.reset(prefetch_next ? w.panel(j + 1) : nullptr,
                     prefetch_next ? w.panel_width(j + 1) * w.padded_pairs() * 4 : 0, steps);
      for (int64_t c0 = 0; c0 < width; c0 += 32, ++block) {
        const bool right = c0 + 16 < width;
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        for (int64_t d = 0; d < depth_blocks; ++d) {
          const uint16_t* ap = a + d * 32;
          const uint16_t* bp = panel + (d * kTileRows * width + c0) * 2;
          _tile_loadd(2, ap, a_stride);
          _tile_loadd(0, bp, b_stride);
          _tile_dpbf16ps(4, 2, 0);
          if (right) {
            _tile_loadd(1, bp + 32, b_stride);
            _tile_dpbf16ps(6, 2, 1);
          }
          if (rows_bottom > 0) {
            _tile_loadd(3, ap + kTileRows * blk.lda, a_stride);
            _tile_dpbf16ps(5, 3, 0);
            if (right) _tile_dpbf16ps(7, 3, 1);
          }
          pending.step();  // plain vector code: it leaves the tiles alone
          prefetch.step();
        }
        float (*tiles)[kTileRows * 16] = out[block % 2];
        _tile_stored(4, tiles[0], 64);
        _tile_stored(5, tiles[1], 64);
        _tile_stored(6, tiles[2], 64);
        _tile_stored(7, tiles[3], 64);
        pending.finish();
        const int64_t col = j * PackedBf16Weights::kPanelWidth + c0;
        pending.reset(tiles, rows_top, rows_bottom, right, blk.c + r0 * blk.ldc + col, blk.ldc,
                      blk.epilogue.bias == nullptr ? nullptr : blk.epilogue.bias + col, gelu, valid - c0, depth_blocks);
      }
    }
  }
  pending.finish();
}

}  // namespace

void block_amx(const Block& blk) { run_block(blk); }

}  // namespace bf16
}  // namespace bort

#endif  // BORT_X86_64
