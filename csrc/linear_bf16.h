// The LinearBf16 op: y [rows, n] = act(x [rows, k] @ W + bias), with x float32 rows rounded to bf16, W bf16
// weights packed once (the onnxruntime op packs its weight initializer when the session creates the kernel),
// products and sums in fp32 (see gemm_bf16.h) and the bias and optional exact GELU applied to the fp32
// accumulators as they are stored: no intermediate tensor, no second pass.
//
// No residual stage: in BERT every residual add is followed by a LayerNorm over the whole row, which
// SkipLayerNorm does in one pass (it takes the bias too); a residual here would save nothing.
#pragma once

#include <cstdint>

#include "dequantize_rows.h"  // Activation
#include "gemm_bf16.h"
#include "parallel.h"

namespace bort {

// x [rows, w.k()], bias [w.n()] or nullptr, y [rows, w.n()]; shapes checked by the caller (check_linear_bf16).
void linear_bf16(const float* x, int64_t rows, const PackedBf16Weights& w, const float* bias, Activation activation,
                 float* y, const ParallelFor& pf);

}  // namespace bort
