// Per-row (per-token) asymmetric uint8 quantization of activations, the input side of an int8 GEMM.
//
// One scale and zero point per row make a token's quantization independent of every other row in the
// batch: a text gets the same int8 vector alone or inside any batch, and a row with small values is not
// rounded away by another row's outliers (what a per-tensor range does).
#pragma once

#include <cstdint>

#include "cpu_dispatch.h"
#include "parallel.h"

namespace bort {

// x: [rows, k] float32. For each row: lo = min(0, min x), hi = max(0, max x), scale = (hi - lo) / 255
// (1 for an all-zero row), zero_point = round(-lo / scale), q = clamp(round(x / scale) + zero_point, 0, 255).
// So x ~= scale * (q - zero_point), 0 is exact, and NaN inputs quantize to a defined (clamped) value.
void quantize_rows(const float* x, uint8_t* q, float* scale, uint8_t* zero_point, int64_t rows, int64_t k,
                   const ParallelFor& pf);

// The same on the calling thread with `isa`'s path (k >= 0): for fused epilogues that quantize rows they
// have just produced (DequantizeRows' requantized outputs), so that they match QuantizeRows bit for bit.
void quantize_rows_serial(Isa isa, const float* x, uint8_t* q, float* scale, uint8_t* zero_point, int64_t rows,
                          int64_t k);

}  // namespace bort
