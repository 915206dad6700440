// y = LayerNorm(x + skip [+ bias]) * gamma [+ beta]: BERT's residual add + LayerNorm in one pass.
#pragma once

#include <cstdint>

#include "parallel.h"

namespace bort {

// x, skip, y: [rows, h] row-major (y may alias x or skip); gamma: [h]; beta, bias: [h] or nullptr.
void skip_layernorm(const float* x, const float* skip, const float* gamma, const float* beta, const float* bias,
                    float* y, int64_t rows, int64_t h, float epsilon, const ParallelFor& pf);

}  // namespace bort
