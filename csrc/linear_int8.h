// LinearInt8: an int8 linear layer in one op, equal bit for bit to QuantizeRows -> MatMulInteger ->
// DequantizeRows (same rounding, exact integer GEMM, the same epilogue code):
//   q, s, z = QuantizeRows(x)                      (or rows already quantized by an earlier epilogue)
//   acc     = q @ W                                 (u8 x s8 -> int32 on PackedInt8Weights, gemm_int8.h)
//   v       = act(s[m] * weight_scale[n] * (acc[m, n] - z[m] * colsum[n]) + bias[n])
//   y       = LayerNorm(v + skip [* skip_scale]) * gamma [+ beta]    (optional)
//   and optionally y's own QuantizeRows form for the next int8 GEMM.
// Each int32 tile is dequantized while it is in L1; rows are normalised and requantized while they are in L2.
#pragma once

#include <cstdint>

#include "dequantize_rows.h"
#include "gemm_int8.h"
#include "parallel.h"

namespace bort {

// The input rows: float x (quantized here exactly as QuantizeRows does), or rows already quantized.
struct LinearInt8Input {
  const float* x = nullptr;             // [rows, k], or
  const uint8_t* q = nullptr;           // [rows, k] with
  const float* scale = nullptr;         // [rows] and
  const uint8_t* zero_point = nullptr;  // [rows]
};

// rows x w.k() input -> y [rows, w.n()] (or nullptr when only `requantized` is wanted). weight_scale [n];
// bias [n] or nullptr. GELU and the skip + LayerNorm stage exclude each other (the caller checks).
void linear_int8(const LinearInt8Input& in, int64_t rows, const PackedInt8Weights& w, const float* weight_scale,
                 const float* bias, Activation act, const SkipLayerNormEpilogue& norm, float* y,
                 const RequantizedRows& requantized, const ParallelFor& pf);

// Float outputs of at least this many bytes with no activation or row stage go out with non-temporal stores
// (where the path has them; the same values): max(4 MB, the last-level cache / 16).
int64_t streamed_output_bytes();

}  // namespace bort
