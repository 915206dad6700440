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

}  // namespace bf16
}  // namespace bort
