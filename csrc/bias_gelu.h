// y = gelu(x + bias) with the exact (erf) GELU, as in HF BERT's intermediate layer.
#pragma once

#include <cmath>
#include <cstdint>

#include "parallel.h"
#include "simd_constants.h"

namespace bort {

// Reference (scalar) exact GELU.
inline float gelu_exact(float v) { return 0.5f * v * (1.0f + std::erf(v * simd::coeff::kSqrtHalf)); }

// x, y: [rows, n] row-major (y may alias x); bias: [n] or nullptr.
void bias_gelu(const float* x, const float* bias, float* y, int64_t rows, int64_t n, const ParallelFor& pf);

// Exposed for tests of the vectorised erf: y[i] = erf(x[i]) with the active ISA's implementation.
void erf_array(const float* x, float* y, int64_t n);

}  // namespace bort
