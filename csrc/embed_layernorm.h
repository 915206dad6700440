// BERT's embeddings from int8 tables, one pass per token:
//   y[t] = LayerNorm(word[ids[t]] * word_scale[ids[t]] + position[positions[t]] * position_scale[positions[t]])
//          * gamma + beta
// Each table row is dequantized to the float products the unfused graph (Gather, Cast, Mul) computed; the sum
// and the LayerNorm are skip_layernorm's. Indices are checked by the caller (check_embedding_indices).
#pragma once

#include <cstdint>

#include "parallel.h"

namespace bort {

// Rows [num_rows, width] of int8 with one scale per row.
struct Int8Table {
  const int8_t* rows = nullptr;
  const float* scale = nullptr;
  int64_t num_rows = 0;
};

// ids, positions: [tokens]; gamma [h]; beta [h] or nullptr; y [tokens, h].
void embed_layernorm_int8(const int64_t* ids, const int64_t* positions, int64_t tokens, const Int8Table& word,
                          const Int8Table& position, const float* gamma, const float* beta, float* y, int64_t h,
                          float epsilon, const ParallelFor& pf);

// y[i] = float(q[i]) * scale with the active ISA's path (exposed for tests of the paths).
void dequantize_int8_row(const int8_t* q, float scale, float* y, int64_t n);

}  // namespace bort
