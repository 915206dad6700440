// Fused multi-head self-attention core (after the QKV projection, before the output projection):
// bias add, head split, softmax(scale * Q K^T + mask) V, head merge. Matches HF BertSelfAttention,
// including its treatment of fully padded rows (uniform weights over all keys).
#pragma once

#include <cstdint>
#include <vector>

#include "parallel.h"

namespace bort {

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  float scale = 0.0f;  // multiplies Q K^T
  int64_t hidden() const { return num_heads * head_dim; }
};

enum class MaskKind {
  kNone,     // every key attends
  kKeyMask,  // [B, S]: nonzero = attend, 0 = padding key
  kLengths,  // [B]: keys 0..len-1 attend (len clamped to [0, S])
};

struct AttentionMask {
  MaskKind kind = MaskKind::kNone;
  const void* data = nullptr;
  bool is_int64 = true;  // else int32
};

// Padded batch. qkv: [batch, seq, 3*hidden] (Q | K | V, heads contiguous in each); bias: [3*hidden]
// or nullptr; out: [batch, seq, hidden]. Mask shapes must already be checked against batch/seq.
void attention_padded(const float* qkv, const float* bias, const AttentionMask& mask, float* out, int64_t batch,
                      int64_t seq, const AttentionShape& shape, const ParallelFor& pf);

// Packed (padding-free) batch. qkv: [tokens, 3*hidden] holding the sequences back to back;
// cu_seqlens: [num_seqs + 1] offsets (0 = cu[0] <= cu[1] <= ... <= cu[num_seqs] = tokens, checked here,
// std::invalid_argument otherwise); out: [tokens, hidden]. Every token attends to its own sequence only.
void attention_packed(const float* qkv, const float* bias, const int64_t* cu_seqlens, int64_t num_seqs, float* out,
                      int64_t tokens, const AttentionShape& shape, const ParallelFor& pf);

}  // namespace bort
