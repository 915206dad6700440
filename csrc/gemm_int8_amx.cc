// AMX-INT8 micro-kernel: tdpbusd multiplies a 16 x 64 u8 A tile by a 16 x (16 x 4) s8 B tile into a
// 16 x 16 int32 C tile, exactly. Block: 2 A tiles x 2 B tiles -> 4 C tiles (32 rows x 32 columns).
//
// The B tiles come straight from the packed panel (a k-group row of 16 columns is 64 contiguous bytes; rows
// are panel_width * 4 bytes apart), A from the rows (padded_k bytes apart; a partial last block of rows from a
// zero-padded copy).
//
// Tile configuration: ScopedTileConfig (amx_tiles.h), MLAS's own, so normally nothing is reloaded.
#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "gemm_int8.h"
#include "simd_math.h"

#if BORT_X86_64  // the whole file: x86-64 instructions only

namespace bort {
namespace {

// The finished int32 tiles of the previous block of rows, handed to the sink a few rows at a time between the
// tile products of the next block: the vector units run the epilogue while the AMX unit multiplies (handed over
// whole after the block, the epilogue and the tile products took turns: ~16% of int8 Bort went to it).
class PendingRows {
 public:
  explicit PendingRows(const TileSink& sink) : sink_(sink) {}

  // acc: rows x cols of C (ld kPanelWidth) at row0/col0, drained in `steps` calls of step() (or by finish()).
  void reset(const int32_t* acc, int64_t row0, int64_t rows, int64_t col0, int64_t cols, int64_t steps) {
    acc_ = acc;
    row0_ = row0;
    rows_ = rows;
    col0_ = col0;
    cols_ = cols;
    done_ = 0;
    rows_per_step_ = (rows + steps - 1) / std::max<int64_t>(steps, 1);
  }
  void step() {
    if (done_ >= rows_) return;
    const int64_t rows = std::min(rows_per_step_, rows_ - done_);
    sink_.tile(acc_ + done_ * kPanelWidth, kPanelWidth, row0_ + done_, rows, col0_, cols_);
    done_ += rows;
  }
  void finish() {
    if (done_ < rows_) sink_.tile(acc_ + done_ * kPanelWidth, kPanelWidth, row0_ + done_, rows_ - done_, col0_, cols_);
    done_ = rows_;
  }

 private:
  const TileSink& sink_;
  const int32_t* acc_ = nullptr;
  int64_t row0_ = 0, rows_ = 0, col0_ = 0, cols_ = 0, done_ = 0, rows_per_step_ = 1;
};

// C tiles 4..7 (rows 0-15 / 16-31 x columns 0-15 / 16-31) of the block at `c` (ld 64 int32).
template <bool kTwoRowTiles, bool kTwoColTiles>
BORT_AMX void block_kernel(const uint8_t* a, int64_t lda, const int8_t* b, int64_t group_bytes, int64_t k_tiles,
                           int32_t* c, PendingRows& pending, PanelPrefetch& prefetch) {
  _tile_zero(4);
  if (kTwoColTiles) _tile_zero(6);
  if (kTwoRowTiles) {
    _tile_zero(5);
    if (kTwoColTiles) _tile_zero(7);
  }
  const int a_stride = static_cast<int>(lda), b_stride = static_cast<int>(group_bytes);
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int8_t* bk = b + kt * 16 * group_bytes;
    _tile_loadd(0, bk, b_stride);
    if (kTwoColTiles) _tile_loadd(1, bk + 64, b_stride);
    _tile_loadd(2, a + kt * 64, a_stride);
    _tile_dpbusd(4, 2, 0);
    if (kTwoColTiles) _tile_dpbusd(6, 2, 1);
    if (kTwoRowTiles) {
      _tile_loadd(3, a + 16 * lda + kt * 64, a_stride);
      _tile_dpbusd(5, 3, 0);
      if (kTwoColTiles) _tile_dpbusd(7, 3, 1);
    }
    pending.step();  // plain vector code: it leaves the tiles alone
    prefetch.step();
  }
  constexpr int ldc_bytes = static_cast<int>(kPanelWidth * sizeof(int32_t));
  _tile_stored(4, c, ldc_bytes);
  if (kTwoColTiles) _tile_stored(6, c + 16, ldc_bytes);
  if (kTwoRowTiles) {
    _tile_stored(5, c + 16 * kPanelWidth, ldc_bytes);
    if (kTwoColTiles) _tile_stored(7, c + 16 * kPanelWidth + 16, ldc_bytes);
  }
}

}  // namespace

BORT_AMX void gemm_int8_block_amx(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                  int64_t row_offset, const TileSink& sink) {
  // A tile product costs the same for 1 row as for 16: a block of a few rows (one text's CLS row) streams B
  // faster through VNNI registers (M = 1, one thread, Intel Xeon: 1.1-1.3x the AMX kernel; M = 8: 0.5x).
  constexpr int64_t kMinAmxRows = 4;
  if (a.rows < kMinAmxRows) return gemm_int8_block_avx512_vnni(a, w, p0, p1, row_offset, sink);
  ScopedTileConfig config;
  // Two blocks of C: one being multiplied, the other (the block before) being handed to the sink.
  alignas(64) int32_t tiles[2][32 * kPanelWidth];
  const auto* av = static_cast<const uint8_t*>(a.data);
  const int64_t k_tiles = w.padded_k() / 64;
  // Tiles load 16 whole rows: the rows of a last, partial row block are read from a zero-padded copy, so the
  // caller's rows are read where they are and nothing past them.
  const int64_t full_rows = a.rows / 32 * 32, tail_rows = a.rows - full_rows;
  const uint8_t* tail = nullptr;
  if (tail_rows > 0) {
    const size_t row_bytes = static_cast<size_t>(a.stride);
    auto* copy = static_cast<uint8_t*>(thread_scratch(kAmxTailScratch, 32 * row_bytes));
    std::memcpy(copy, av + full_rows * a.stride, static_cast<size_t>(tail_rows) * row_bytes);
    std::memset(copy + tail_rows * a.stride, 0, static_cast<size_t>(32 - tail_rows) * row_bytes);
    tail = copy;
  }
  // The panels go by in chunks of up to kChunkBytes of B, which stay in L2 while every 32-row block of A (K bytes
  // a row: 32 KB at K = 1024) meets the chunk's panels one after another from L1. Panel by panel over every row
  // block instead, each A block came from L2 once per panel: the tile loads from L2 of both operands left AMX
  // idle (kernel alone, one thread, Intel Xeon, M = 1024, K = 1024: N = 768 1.38x, N = 3072 1.29x).
  constexpr int64_t kChunkBytes = int64_t{1} << 20;  // half of a 2 MB L2: A, C and the output share the rest
  const int64_t chunk_panels = std::max<int64_t>(1, kChunkBytes / (kPanelWidth * std::max(w.padded_k(), kKPad)));
  PendingRows pending(sink);
  PanelPrefetch prefetch;
  int64_t block = 0;
  for (int64_t c0 = p0; c0 < p1; c0 += chunk_panels) {
    const int64_t c1 = std::min(p1, c0 + chunk_panels);
    for (int64_t r = 0; r < a.rows; r += 32) {
      const int64_t rows = std::min<int64_t>(32, a.rows - r);
      const uint8_t* ar = r < full_rows ? av + r * a.stride : tail;
      for (int64_t p = c0; p < c1; ++p, ++block) {
        const int64_t width = w.panel_width(p), group_bytes = width * 4;
        int32_t* tile = tiles[block % 2];
        const int64_t steps = (width + 31) / 32 * k_tiles;
        // The panel that comes next from L3: the chunk's next one during the first row block, the next chunk's
        // first one during the last.
        const bool last_rows = r + 32 >= a.rows;
        const int64_t next = r == 0 && p + 1 < c1 ? p + 1 : last_rows && p + 1 == c1 && c1 < p1 ? c1 : -1;
        prefetch.reset(next < 0 ? nullptr : w.panel(next), next < 0 ? 0 : w.panel_width(next) * w.padded_k(), steps);
        for (int64_t c = 0; c < width; c += 32) {
          const int8_t* b = w.panel(p) + c * 4;
          const bool two_cols = c + 32 <= width;
          if (rows > 16)
            (two_cols ? block_kernel<true, true> : block_kernel<true, false>)(ar, a.stride, b, group_bytes, k_tiles,
                                                                              tile + c, pending, prefetch);
          else
            (two_cols ? block_kernel<false, true> : block_kernel<false, false>)(ar, a.stride, b, group_bytes, k_tiles,
                                                                                tile + c, pending, prefetch);
        }
        pending.finish();
        pending.reset(tile, row_offset + r, rows, w.panel_begin(p), w.panel_columns(p), steps);
      }
    }
  }
  pending.finish();
}

}  // namespace bort

#endif  // BORT_X86_64
