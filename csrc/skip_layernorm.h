// y = LayerNorm(x + skip [* skip_scale] [+ bias]) * gamma [+ beta]: BERT's residual add + LayerNorm in
// one pass. skip_scale undoes a per-channel scaling folded into the LayerNorm that produced `skip` (the
// int8 exporter divides an activation by s there so that its outlier channels quantize well).
#pragma once

#include <cstdint>

#include "cpu_dispatch.h"
#include "parallel.h"

namespace bort {

// x, skip, y: [rows, h] row-major (y may alias x or skip); gamma: [h]; beta, bias, skip_scale: [h] or nullptr.
void skip_layernorm(const float* x, const float* skip, const float* gamma, const float* beta, const float* bias,
                    const float* skip_scale, float* y, int64_t rows, int64_t h, float epsilon, const ParallelFor& pf);

// The same on the calling thread with `isa`'s path (h > 0): for fused epilogues that normalise rows they
// have just produced (DequantizeRows' skip + LayerNorm).
void skip_layernorm_serial(Isa isa, const float* x, const float* skip, const float* gamma, const float* beta,
                           const float* bias, const float* skip_scale, float* y, int64_t rows, int64_t h,
                           float epsilon);

}  // namespace bort
