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

// Epilogue of one stored 16 x 16 tile: `rows` rows and the columns in `mask` go to c.
BORT_AMX void finish_tile(const float* tile, int64_t rows, float* c, int64_t ldc, const float* bias, bool gelu,
                          __mmask16 mask) {
  const __m512 b = bias == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, bias);
  for (int64_t r = 0; r < rows; ++r) {
    __m512 v = _mm512_loadu_ps(tile + r * 16);
    if (bias != nullptr) v = _mm512_add_ps(v, b);
    if (gelu) v = simd::gelu_ps(v);
    _mm512_mask_storeu_ps(c + r * ldc, mask, v);
  }
}

inline __mmask16 column_mask(int64_t valid) {
  return valid >= 16 ? __mmask16{0xFFFF} : valid <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << valid) - 1);
}

BORT_AMX void run_block(const Block& blk) {
  const PackedBf16Weights& w = *blk.w;
  const bool gelu = blk.epilogue.activation == Activation::kGelu;
  const int64_t depth_blocks = w.padded_pairs() / kTileRows;  // 16 pair rows = 32 k per tile product
  const int a_stride = static_cast<int>(blk.lda * 2);
  alignas(64) float out[4][kTileRows * 16];
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
      for (int64_t c0 = 0; c0 < width; c0 += 32) {
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
          prefetch.step();
        }
        _tile_stored(4, out[0], 64);
        _tile_stored(5, out[1], 64);
        _tile_stored(6, out[2], 64);
        _tile_stored(7, out[3], 64);
        const int64_t col = j * PackedBf16Weights::kPanelWidth + c0;
        const float* bias = blk.epilogue.bias == nullptr ? nullptr : blk.epilogue.bias + col;
        float* c = blk.c + r0 * blk.ldc + col;
        float* c_bottom = c + kTileRows * blk.ldc;
        finish_tile(out[0], rows_top, c, blk.ldc, bias, gelu, column_mask(valid - c0));
        if (rows_bottom > 0) finish_tile(out[1], rows_bottom, c_bottom, blk.ldc, bias, gelu, column_mask(valid - c0));
        if (right) {
          const __mmask16 m = column_mask(valid - c0 - 16);
          const float* bias_right = bias == nullptr ? nullptr : bias + 16;
          finish_tile(out[2], rows_top, c + 16, blk.ldc, bias_right, gelu, m);
          if (rows_bottom > 0) finish_tile(out[3], rows_bottom, c_bottom + 16, blk.ldc, bias_right, gelu, m);
        }
      }
    }
  }
}

}  // namespace

void block_amx(const Block& blk) { run_block(blk); }

}  // namespace bf16
}  // namespace bort

#endif  // BORT_X86_64
