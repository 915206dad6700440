// Fused multi-head self-attention core (after the QKV projection, before the output projection):
// bias add, head split, softmax(scale * Q K^T + mask) V, head merge. Matches HF BertSelfAttention,
// including its treatment of fully padded rows (uniform weights over all keys).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel.h"

namespace bort {

// The arithmetic of the two products Q K^T and P V.
// kFp32: fp32 throughout.
// kBf16: both products take bf16 operands with fp32 accumulation; everything else stays fp32. The query row is
//   (q + bq) * scale in fp32, then rounded to bf16 (float_to_bf16, gemm_bf16.h); K is rounded without its bias
//   (the K bias adds q.bk to every score of a row, a constant softmax ignores); a score is one fp32 accumulator
//   over the head dims in pairs, odd element first (the order of vdpbf16ps, as in gemm_bf16.h). Softmax is fp32:
//   p_j = exp(s_j - max), sum = sum_j p_j. The output is (sum over key pairs of bf16(p_j) * bf16(v_j), odd key
//   first) / sum + bv, with V rounded without its bias (the probabilities sum to 1). It runs on the AVX512-BF16
//   path (head_dim % 32 == 0) and on the scalar reference (ISA scalar, or a head size no vector path takes); the
//   other vector paths compute kFp32 (which is more exact), since an emulation of bf16 products is no faster there.
// kInt8: Q K^T on int8 operands with int32 accumulation, P V as kBf16. Each query row q' = (q + bq) * scale (fp32)
//   and each key row k (without its bias, as kBf16) is quantized symmetrically on its own (per token per head):
//   a = max_d |x_d|, x_int = clamp(nearbyint(x_d * (127 / a)), -127, 127), row scale a / 127 (a row with
//   a < 1e-30 quantizes to zeros with scale 0). A score is float(sum_d q_int k_int) * (q_scale * k_scale), the
//   integer sum exact. Softmax, the bf16 probabilities and P V are those of kBf16. It runs on the AVX512-BF16 level
//   (vpdpbusd with the query offset to u8 by +128 and 128 * sum_d k_int subtracted per key, which gives the same
//   integer; head_dim % 32 == 0) and on the scalar reference; the other vector paths compute kFp32. Measured on
//   all-MiniLM-L6-v2 (STS-B dev, 3,000 sentences; 48 texts of 450-512 tokens): cosine to fp32 of the pooled
//   vectors >= 0.99998 with Q K^T in int8; P V in int8 too (P u8 at 1/255, V s8 per column) fell to 0.9935 on the
//   long texts, so P V stays bf16.
enum class AttentionPrecision { kFp32, kBf16, kInt8 };

// "fp32", "bf16" or "int8"; std::invalid_argument naming the accepted values otherwise.
AttentionPrecision attention_precision_from_name(const std::string& name);
const char* attention_precision_name(AttentionPrecision precision);

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  float scale = 0.0f;  // multiplies Q K^T
  AttentionPrecision precision = AttentionPrecision::kFp32;
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

// Which rows of a packed batch to compute. Default: every token, in order (out has `tokens` rows).
// selected: out row i is token rows[i]'s output, for i < count (any order, repeats allowed, count may be 0);
// this is how a last layer computes only each text's CLS row while its keys and values cover every token.
// separate_values: values [count, hidden] hold the projected queries of those rows, and the first input
// holds only K | V. Flags, not null pointers, say what is given: an empty tensor's data pointer may be null.
struct PackedQueries {
  bool selected = false;
  const int64_t* rows = nullptr;
  int64_t count = 0;
  bool separate_values = false;
  const float* values = nullptr;
};

// Checks 0 = cu[0] <= cu[1] <= ... <= cu[num_seqs] = tokens; std::invalid_argument otherwise.
void check_cu_seqlens(const int64_t* cu_seqlens, int64_t num_seqs, int64_t tokens);

// Checks 0 <= rows[i] < tokens for every i < count; std::invalid_argument naming the first bad entry.
void check_query_rows(const int64_t* rows, int64_t count, int64_t tokens);

// Packed (padding-free) batch. qkv: [tokens, 3*hidden] holding the sequences back to back (or
// [tokens, 2*hidden] K | V when queries.values is given); cu_seqlens: [num_seqs + 1] offsets, checked
// here; out: [queries.count or tokens, hidden]. Every query attends to its own sequence's keys only.
// Bad offsets or query rows throw std::invalid_argument before anything is read through them (front ends also
// call the two checks above before they allocate the output).
void attention_packed(const float* qkv, const float* bias, const int64_t* cu_seqlens, int64_t num_seqs,
                      const PackedQueries& queries, float* out, int64_t tokens, const AttentionShape& shape,
                      const ParallelFor& pf);

}  // namespace bort
