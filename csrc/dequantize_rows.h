// The output side of an int8 GEMM with per-row activation and per-column weight quantization:
//   v[m, n] = act(row_scale[m] * weight_scale[n] * (acc[m, n] - row_zero_point[m] * weight_colsum[n]) + bias[n])
// where acc = q_x @ q_w is onnxruntime's MatMulInteger of the QuantizeRows output (u8, no zero point) by
// symmetric int8 weights; the zero-point term is subtracted here, with weight_colsum[n] = sum_k q_w[k, n].
// act is identity or the exact GELU, so an FFN input projection needs no separate bias+GELU pass.
//
// Two optional epilogue stages save the next graph nodes: BERT's residual + LayerNorm (the SkipLayerNorm
// math with the bias already inside v) and the per-row u8 quantization of the result (exactly what
// QuantizeRows would produce from y), which feeds the next int8 GEMM directly. Each row goes through every
// stage before the next row starts, so it stays in L1.
#pragma once

#include <cstdint>

#include "cpu_dispatch.h"
#include "parallel.h"

namespace bort {

enum class Activation { kNone, kGelu };

// v = LayerNorm(v + skip[m] [* skip_scale]) * gamma [+ beta]; inactive when skip is nullptr.
struct SkipLayerNormEpilogue {
  const float* skip = nullptr;        // [rows, n]
  const float* gamma = nullptr;       // [n], required with skip
  const float* beta = nullptr;        // [n] or nullptr
  const float* skip_scale = nullptr;  // [n] or nullptr
  float epsilon = 1e-12f;

  // The same epilogue for rows starting at `row` of a [rows, n] problem.
  SkipLayerNormEpilogue at_row(int64_t row, int64_t n) const {
    SkipLayerNormEpilogue e = *this;
    if (skip != nullptr) e.skip = skip + row * n;
    return e;
  }
};

// Where QuantizeRows(y) goes: q [rows, n], scale [rows], zero_point [rows]; all nullptr when not wanted.
struct RequantizedRows {
  uint8_t* q = nullptr;
  float* scale = nullptr;
  uint8_t* zero_point = nullptr;

  RequantizedRows at_row(int64_t row, int64_t n) const {
    if (q == nullptr) return *this;
    return {q + row * n, scale + row, zero_point + row};
  }
};

// acc: [rows, n] int32; row_scale, row_zero_point: [rows]; weight_scale: [n]; weight_colsum: [n] int32;
// bias: [n] or nullptr; y: [rows, n] float32, or nullptr when only the requantized rows are wanted.
// GELU with the LayerNorm stage is not an epilogue (the caller rejects it). Integer arithmetic wraps (never
// undefined) on hostile input.
void dequantize_rows(const int32_t* acc, const float* row_scale, const uint8_t* row_zero_point,
                     const float* weight_scale, const int32_t* weight_colsum, const float* bias, Activation act,
                     const SkipLayerNormEpilogue& norm, float* y, const RequantizedRows& requantized, int64_t rows,
                     int64_t n, const ParallelFor& pf);

// The stages one at a time on the calling thread with `isa`'s path, shared with the fused linear op
// (linear_int8.h) so that both give the same bits:
// the dequantize stage for a [rows, n] block whose acc and y rows are acc_ld and y_ld elements apart
// (y = act(...), no skip or requantization). Columns past a multiple of 8 take the same (tail) code whichever
// block they are in, as long as blocks start at multiples of 16. `streamed` (identity activation only): y is
// written with non-temporal stores where the path has them (the same values; for outputs far larger than the
// caches); the writing thread calls streamed_stores_done() before another thread may read y.
void dequantize_block_serial(Isa isa, const int32_t* acc, int64_t acc_ld, const float* row_scale,
                             const uint8_t* row_zero_point, const float* weight_scale, const int32_t* weight_colsum,
                             const float* bias, Activation act, float* y, int64_t y_ld, int64_t rows, int64_t n,
                             bool streamed = false);
void streamed_stores_done();
// The row stages after it for complete rows y [rows, n] (in place): skip + LayerNorm when norm.skip is set,
// then the requantization when requantized.q is set. norm and requantized point at these rows.
void finish_rows_serial(Isa isa, float* y, const SkipLayerNormEpilogue& norm, const RequantizedRows& requantized,
                        int64_t rows, int64_t n);

}  // namespace bort
