// The output side of an int8 GEMM with per-row activation and per-column weight quantization:
//   y[m, n] = act(row_scale[m] * weight_scale[n] * (acc[m, n] - row_zero_point[m] * weight_colsum[n]) + bias[n])
// where acc = q_x @ q_w is onnxruntime's MatMulInteger of the QuantizeRows output (u8, no zero point) by
// symmetric int8 weights; the zero-point term is subtracted here, with weight_colsum[n] = sum_k q_w[k, n].
// act is identity or the exact GELU, so an FFN input projection needs no separate bias+GELU pass.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace bort {

enum class Activation { kNone, kGelu };

// acc: [rows, n] int32; row_scale, row_zero_point: [rows]; weight_scale: [n]; weight_colsum: [n] int32;
// bias: [n] or nullptr; y: [rows, n] float32. Integer arithmetic wraps (never undefined) on hostile input.
void dequantize_rows(const int32_t* acc, const float* row_scale, const uint8_t* row_zero_point,
                     const float* weight_scale, const int32_t* weight_colsum, const float* bias, Activation act,
                     float* y, int64_t rows, int64_t n, const ParallelFor& pf);

}  // namespace bort
