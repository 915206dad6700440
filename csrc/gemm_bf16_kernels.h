// The per-ISA parts of the bf16 GEMM (gemm_bf16.h), shared by gemm_bf16*.cc only.
#pragma once

#include <cstdint>

#include "gemm_bf16.h"

namespace bort {
namespace bf16 {

// One task's part of C: rows [0, rows) of the bf16 operand A times panels [panel_begin, panel_end) of w,
// written with the epilogue to c (row stride ldc; the panels' columns are absolute, so c is C's origin).
// A holds pair-interleaved rows (a + r * lda + 2p = the pair (a[r][2p], a[r][2p+1])), zero from k up to
// lda, and lda is 2 * w.padded_pairs(). The AMX path also reads rows up to the next multiple of 16 (zeros).
struct Block {
  const uint16_t* a = nullptr;
  int64_t lda = 0;
  int64_t rows = 0;
  const PackedBf16Weights* w = nullptr;
  int64_t panel_begin = 0, panel_end = 0;
  float* c = nullptr;
  int64_t ldc = 0;
  Bf16Epilogue epilogue;
  // The panels are probably not in this thread's L2 yet (its first task on them): paths that can, prefetch
  // each next panel during the first row group.
  bool panels_from_l3 = false;
};

void block_scalar(const Block& b);
void block_avx2(const Block& b);
void block_avx512_bf16(const Block& b);
void block_amx(const Block& b);

// y[i] = float_to_bf16(x[i]), vectorised.
void to_bf16_avx2(const float* x, uint16_t* y, int64_t n);
void to_bf16_avx512_bf16(const float* x, uint16_t* y, int64_t n);

// Columns of panel j that hold C's columns (the rest is the zero padding up to a multiple of 16).
inline int64_t valid_columns(const PackedBf16Weights& w, int64_t j) {
  const int64_t left = w.n() - j * PackedBf16Weights::kPanelWidth;
  const int64_t width = w.panel_width(j);
  return left < width ? left : width;
}

// One register tile's view of a block: up to a path's row limit of rows times one panel.
struct PanelTile {
  const uint16_t* a;  // the tile's first A row (row stride: the block's lda)
  int64_t rows;       // 1 to the path's row limit
  const uint16_t* b;  // the panel (pair rows of 2 * width bf16)
  int64_t width;      // the panel's width, a multiple of 16
  int64_t valid;      // its columns that hold C's columns (the rest is the zero padding: the tail)
  float* c;           // C at the tile's first row and the panel's first column (row stride: the block's ldc)
  const float* bias;  // the bias at the panel's first column, or nullptr
};

// Walks a block as every path does: groups of up to kMaxRows rows outer (their A rows stay in L1), the
// block's panels inner (each streams from L2), calling fn(tile) for each.
template <int64_t kMaxRows, typename F>
inline void for_each_panel_tile(const Block& blk, const F& fn) {
  const PackedBf16Weights& w = *blk.w;
  for (int64_t r0 = 0; r0 < blk.rows; r0 += kMaxRows) {
    const int64_t rows = blk.rows - r0 < kMaxRows ? blk.rows - r0 : kMaxRows;
    for (int64_t j = blk.panel_begin; j < blk.panel_end; ++j) {
      const int64_t col0 = j * PackedBf16Weights::kPanelWidth;
      fn(PanelTile{blk.a + r0 * blk.lda, rows, w.panel(j), w.panel_width(j), valid_columns(w, j),
                   blk.c + r0 * blk.ldc + col0, blk.epilogue.bias == nullptr ? nullptr : blk.epilogue.bias + col0});
    }
  }
}

}  // namespace bf16
}  // namespace bort
