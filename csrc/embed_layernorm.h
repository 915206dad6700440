// BERT's embeddings from int8 or bf16 tables, one pass per token:
//   y[t] = LayerNorm(word[ids[t]] * word_scale[ids[t]] + position[positions[t]] * position_scale[positions[t]])
//          * gamma + beta                                               (int8 tables, one scale per row)
//   y[t] = LayerNorm(float(word[ids[t]]) + float(position[positions[t]])) * gamma + beta     (bf16 tables)
// Each table row is widened to the floats the unfused graph (Gather, Cast, Mul for int8; Gather, Cast for bf16)
// computed; the sum and the LayerNorm are skip_layernorm's. Indices are checked by the caller
// (check_embedding_indices).
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

// Rows [num_rows, width] of bf16 (the upper 16 bits of a float32).
struct Bf16Table {
  const uint16_t* rows = nullptr;
  int64_t num_rows = 0;
};

// ids, positions: [tokens]; gamma [h]; beta [h] or nullptr; y [tokens, h].
void embed_layernorm_int8(const int64_t* ids, const int64_t* positions, int64_t tokens, const Int8Table& word,
                          const Int8Table& position, const float* gamma, const float* beta, float* y, int64_t h,
                          float epsilon, const ParallelFor& pf);
void embed_layernorm_bf16(const int64_t* ids, const int64_t* positions, int64_t tokens, const Bf16Table& word,
                          const Bf16Table& position, const float* gamma, const float* beta, float* y, int64_t h,
                          float epsilon, const ParallelFor& pf);

// y[i] = float(q[i]) * scale with the active ISA's path (exposed for tests of the paths).
void dequantize_int8_row(const int8_t* q, float scale, float* y, int64_t n);

}  // namespace bort
