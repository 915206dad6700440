#include "attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "amx_tiles.h"
#include "cpu_dispatch.h"
#include "gemm_bf16.h"     // float_to_bf16, bf16_to_float
#include "row_dispatch.h"  // prefetch_row
#include "simd_math.h"
#include "simd_neon.h"

namespace bort {
namespace {

// Which keys of one sequence attend. Keys at or after key_end never attend; inside [0, key_end)
// `valid` (if not null) says which do. key_end == 0 means no key attends: HF then adds finfo.min to
// every score, which makes softmax uniform over all `len` keys, so we return the mean of V.
struct SeqKeys {
  int64_t key_end = 0;
  const uint8_t* valid = nullptr;
};

// One sequence: `len` keys (K row j at k + j * kv_stride, V row j at v + j * kv_stride) and
// `num_queries` queries, each given by a row pointer (q[i]) and an output row pointer (out[i]); head h
// is at offset h * head_dim in all of them. Padded batches, packed batches and packed batches that want
// only some rows (the CLS rows of a last layer) all reduce to this, so they share one core.
struct SeqView {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t kv_stride = 0;
  int64_t len = 0;
  SeqKeys keys;
  const float* const* q = nullptr;
  float* const* out = nullptr;
  int64_t num_queries = 0;
};

// A unit of parallel work: queries [q_begin, q_end) of heads [head_begin, head_end) of one sequence.
struct WorkItem {
  int64_t seq;
  int64_t head_begin;
  int64_t head_end;
  int64_t q_begin;
  int64_t q_end;
};

// All queries of a sequence in which no key attends get the mean of V (+ V bias) over every key, as in HF.
void uniform_rows(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head, int64_t q0, int64_t q1) {
  const int64_t D = sh.head_dim, H = sh.hidden();
  for (int64_t d = 0; d < D; ++d) {
    double acc = 0.0;
    for (int64_t j = 0; j < s.len; ++j) acc += s.v[j * s.kv_stride + head * D + d];
    float mean = s.len > 0 ? static_cast<float>(acc / s.len) : 0.0f;
    if (bias) mean += bias[2 * H + head * D + d];
    for (int64_t i = q0; i < q1; ++i) s.out[i][head * D + d] = mean;
  }
}

// Plain reference path: every step exactly as written in BertSelfAttention. Cold, as the kBf16 and kInt8
// references below: a vector path takes every head size that is a multiple of 8 (4 on NEON).
[[gnu::cold]] void attend_rows_scalar(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head,
                                      int64_t q0, int64_t q1) {
  const SeqKeys& keys = s.keys;
  if (keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim, H = sh.hidden();
  const float* bq = bias ? bias + head * D : nullptr;
  const float* bk = bias ? bias + H + head * D : nullptr;
  const float* bv = bias ? bias + 2 * H + head * D : nullptr;
  thread_local std::vector<float> probs;
  probs.assign(static_cast<size_t>(keys.key_end), 0.0f);
  for (int64_t i = q0; i < q1; ++i) {
    const float* q = s.q[i] + head * D;
    float max_score = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < keys.key_end; ++j) {
      if (keys.valid && !keys.valid[j]) continue;
      const float* k = s.k + j * s.kv_stride + head * D;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += (q[d] + (bq ? bq[d] : 0.0f)) * (k[d] + (bk ? bk[d] : 0.0f));
      probs[j] = dot * sh.scale;
      max_score = std::max(max_score, probs[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < keys.key_end; ++j) {
      if (keys.valid && !keys.valid[j]) {
        probs[j] = 0.0f;
        continue;
      }
      probs[j] = std::exp(probs[j] - max_score);
      sum += probs[j];
    }
    float* o = s.out[i] + head * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t j = 0; j < keys.key_end; ++j) {  // key-major so V rows are read contiguously
      const float* v = s.v + j * s.kv_stride + head * D;
      for (int64_t d = 0; d < D; ++d) o[d] += probs[j] * (v[d] + (bv ? bv[d] : 0.0f));
    }
    for (int64_t d = 0; d < D; ++d) o[d] /= sum;
  }
}

// Plain reference of AttentionPrecision::kBf16 (attention.h): the same bf16-rounded operands, pairs and order as
// the AVX512-BF16 path; exp and the order of the fp32 sums are std::exp's and sequential. It and the kInt8 reference
// are cold (compiled for size, which keeps the ops library within its budget): a CPU with AVX2 or NEON runs a vector
// path instead (the kFp32 ones where AVX512-BF16 is missing) unless no vector path takes the head size (head_dim not
// a multiple of 4 or 8), so they run when the scalar level is forced (tests) and in those rare cases.
float round_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

// The part kBf16 and kInt8 share, for one query row: softmax of scores[0, n) (keys that do not attend skipped),
// then o = (sum over key pairs of bf16(p_j) * bf16(v_j), odd key first) / sum + bv. scores is overwritten and has
// room for n + 1 entries (an odd key count is padded with a zero key).
[[gnu::cold]] void softmax_pv_scalar_bf16(const SeqView& s, const float* bv, int64_t offset, int64_t D, float* scores,
                                          float* o) {
  const SeqKeys& keys = s.keys;
  const int64_t n = keys.key_end;
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j)
    if (!keys.valid || keys.valid[j]) max_score = std::max(max_score, scores[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = keys.valid && !keys.valid[j] ? 0.0f : std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  scores[n] = 0.0f;
  auto value = [&](int64_t j, int64_t d) { return j < n ? round_bf16(s.v[j * s.kv_stride + offset + d]) : 0.0f; };
  const float inv_sum = 1.0f / sum;
  for (int64_t d = 0; d < D; ++d) {
    float acc = 0.0f;
    for (int64_t j = 0; j < n; j += 2) {
      acc += round_bf16(scores[j + 1]) * value(j + 1, d);
      acc += round_bf16(scores[j]) * value(j, d);
    }
    o[d] = std::fma(acc, inv_sum, bv ? bv[d] : 0.0f);
  }
}

[[gnu::cold]] void attend_rows_scalar_bf16(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head,
                                           int64_t q0, int64_t q1) {
  const SeqKeys& keys = s.keys;
  if (keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim, H = sh.hidden(), n = keys.key_end;
  const float* bq = bias ? bias + head * D : nullptr;
  const float* bv = bias ? bias + 2 * H + head * D : nullptr;
  thread_local std::vector<float> query, scores;
  query.assign(static_cast<size_t>(D + 1), 0.0f);   // a zero pads an odd head dim to whole pairs
  scores.assign(static_cast<size_t>(n + 1), 0.0f);  // and an odd key count
  auto key = [&](int64_t j, int64_t d) { return d < D ? round_bf16(s.k[j * s.kv_stride + head * D + d]) : 0.0f; };
  for (int64_t i = q0; i < q1; ++i) {
    const float* q = s.q[i] + head * D;
    for (int64_t d = 0; d < D; ++d) query[d] = round_bf16(bq ? (q[d] + bq[d]) * sh.scale : q[d] * sh.scale);
    for (int64_t j = 0; j < n; ++j) {
      if (keys.valid && !keys.valid[j]) continue;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; d += 2) {
        dot += query[d + 1] * key(j, d + 1);  // each product is exact in fp32: one rounding per step
        dot += query[d] * key(j, d);
      }
      scores[j] = dot;
    }
    softmax_pv_scalar_bf16(s, bv, head * D, D, scores.data(), s.out[i] + head * D);
  }
}

// kInt8's quantization of one row (attention.h): x_int into out, returns the row scale.
constexpr float kInt8TinyRow = 1e-30f;  // a row whose largest |x| is under this quantizes to zeros, scale 0

float quantize_row_s8(const float* x, int64_t n, int8_t* out) {
  float amax = 0.0f;
  for (int64_t d = 0; d < n; ++d) amax = std::max(amax, std::fabs(x[d]));
  const bool tiny = !(amax >= kInt8TinyRow);
  const float inv = tiny ? 0.0f : 127.0f / amax;
  for (int64_t d = 0; d < n; ++d) {
    const float r = std::nearbyint(x[d] * inv);
    out[d] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, r)));
  }
  return tiny ? 0.0f : amax / 127.0f;
}

// Plain reference of AttentionPrecision::kInt8: the same integers as the AVX512-BF16 level's vpdpbusd path (summed
// here as signed products, which equals its u8 sums minus the per-key offset) and the same score epilogue.
[[gnu::cold]] void attend_rows_scalar_int8(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head,
                                           int64_t q0, int64_t q1) {
  const SeqKeys& keys = s.keys;
  if (keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim, H = sh.hidden(), n = keys.key_end;
  const float* bq = bias ? bias + head * D : nullptr;
  const float* bv = bias ? bias + 2 * H + head * D : nullptr;
  thread_local std::vector<float> query, scores, key_scale;
  thread_local std::vector<int8_t> query_int, key_int;
  query.resize(static_cast<size_t>(D));
  query_int.resize(static_cast<size_t>(D));
  scores.assign(static_cast<size_t>(n + 1), 0.0f);
  key_scale.resize(static_cast<size_t>(n));
  key_int.resize(static_cast<size_t>(n * D));
  for (int64_t j = 0; j < n; ++j)
    key_scale[j] = quantize_row_s8(s.k + j * s.kv_stride + head * D, D, key_int.data() + j * D);
  for (int64_t i = q0; i < q1; ++i) {
    const float* q = s.q[i] + head * D;
    for (int64_t d = 0; d < D; ++d) query[d] = bq ? (q[d] + bq[d]) * sh.scale : q[d] * sh.scale;
    const float query_scale = quantize_row_s8(query.data(), D, query_int.data());
    for (int64_t j = 0; j < n; ++j) {
      if (keys.valid && !keys.valid[j]) continue;
      const int8_t* k = key_int.data() + j * D;
      int32_t dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += int32_t{query_int[d]} * int32_t{k[d]};
      scores[j] = static_cast<float>(dot) * (query_scale * key_scale[j]);
    }
    softmax_pv_scalar_bf16(s, bv, head * D, D, scores.data(), s.out[i] + head * D);
  }
}

#if BORT_X86_64
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA path.
//
// Algebra that removes work without changing the result:
//  * K bias adds q.bk to every score of a query row: a per-row constant, which softmax ignores.
//  * V bias: softmax rows sum to 1, so sum_j p_j (v_j + bv) = sum_j p_j v_j + bv.
//  * Q bias and the scale are folded into a small copy of the query tile.
// Per work item K is packed once, transposed in blocks of 16 keys ([block][d][16]), so the QK^T
// micro-kernel (6 queries x 16 keys, 12 accumulators) is two loads + six broadcasts per 12 FMAs.
// PV uses the same 6 x 16 shape over (queries x head-dim) on V packed per item in 16-wide column blocks.
// Scores of one 6-row query tile against all keys (6 x S floats) are the only score storage.

constexpr int kTileRows = 6;
constexpr int kKeyBlock = 16;

struct Avx2Scratch {
  std::vector<float> kpack, vpack, scores, keep, penalty, qtile;
};

// 8x8 transpose of r[0..7] in registers.
BORT_AVX2_INLINE void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// K of one head -> kpack[block of 16 keys][d][16], zero keys past num_keys (8x8 register transposes).
BORT_AVX2 void pack_keys(const float* k_base, int64_t stride, int64_t D, int64_t num_keys, int64_t padded_keys,
                         float* kpack) {
  for (int64_t j0 = 0; j0 < padded_keys; j0 += 8) {
    float* dst = kpack + (j0 / kKeyBlock) * D * kKeyBlock + (j0 % kKeyBlock);
    for (int64_t d = 0; d < D; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i)
        r[i] = j0 + i < num_keys ? _mm256_loadu_ps(k_base + (j0 + i) * stride + d) : _mm256_setzero_ps();
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (d + i) * kKeyBlock, r[i]);
    }
  }
}

// V of one head -> vpack[block of 16 dims][key][16] (the last block is 8 wide when D % 16 == 8), so
// each PV pass over the keys reads one contiguous stream instead of one 64-byte piece per 12 KB row.
BORT_AVX2 void pack_values(const float* v_base, int64_t stride, int64_t D, int64_t num_keys, float* vpack) {
  for (int64_t j = 0; j < num_keys; ++j) {
    const float* v = v_base + j * stride;
    int64_t d0 = 0;
    for (; d0 + 16 <= D; d0 += 16) {
      float* dst = vpack + d0 * num_keys + j * 16;
      _mm256_storeu_ps(dst, _mm256_loadu_ps(v + d0));
      _mm256_storeu_ps(dst + 8, _mm256_loadu_ps(v + d0 + 8));
    }
    if (d0 < D) _mm256_storeu_ps(vpack + d0 * num_keys + j * 8, _mm256_loadu_ps(v + d0));
  }
}

// scores[r][kb*16 .. +16] = qtile[r] . K[kb*16 .. +16] for all 6 rows.
BORT_AVX2 void qk_tile(const float* qtile, const float* kpack, int64_t D, int64_t padded_keys, float* scores) {
  for (int64_t kb = 0; kb < padded_keys / kKeyBlock; ++kb) {
    const float* kblk = kpack + kb * D * kKeyBlock;
    __m256 acc[kTileRows][2];
#pragma GCC unroll 6
    for (int r = 0; r < kTileRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m256 k0 = _mm256_loadu_ps(kblk + d * kKeyBlock);
      const __m256 k1 = _mm256_loadu_ps(kblk + d * kKeyBlock + 8);
#pragma GCC unroll 6
      for (int r = 0; r < kTileRows; ++r) {
        const __m256 q = _mm256_broadcast_ss(qtile + r * D + d);
        acc[r][0] = _mm256_fmadd_ps(q, k0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(q, k1, acc[r][1]);
      }
    }
#pragma GCC unroll 6
    for (int r = 0; r < kTileRows; ++r) {
      _mm256_storeu_ps(scores + r * padded_keys + kb * kKeyBlock, acc[r][0]);
      _mm256_storeu_ps(scores + r * padded_keys + kb * kKeyBlock + 8, acc[r][1]);
    }
  }
}

// In place: row[j] <- exp(row[j] - max) for the keys that attend, 0 for masked keys; returns the sum.
// Entries at or past num_keys are scratch (PV never reads them).
// With holes in the mask, penalty is -inf and keep 0 for keys that do not attend (0 and 1 otherwise).
BORT_AVX2 float softmax_numerators(float* row, const float* keep, const float* penalty, int64_t num_keys,
                                   int64_t padded_keys, bool holes) {
  if (holes) {
    __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < padded_keys; j += 8)
      vmax = _mm256_max_ps(vmax, _mm256_add_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(penalty + j)));
    const __m256 m = _mm256_set1_ps(simd::hmax_ps(vmax));
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t j = 0; j < padded_keys; j += 8) {
      const __m256 e = simd::exp_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), m));
      const __m256 p = _mm256_mul_ps(e, _mm256_loadu_ps(keep + j));
      _mm256_storeu_ps(row + j, p);
      vsum = _mm256_add_ps(vsum, p);
    }
    return simd::hsum_ps(vsum);
  }
  // Every key in [0, num_keys) attends: only the partial last vector needs care.
  const int64_t full = num_keys & ~int64_t{7};
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < full; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  float max_score = simd::hmax_ps(vmax);
  for (int64_t j = full; j < num_keys; ++j) max_score = std::max(max_score, row[j]);
  const __m256 m = _mm256_set1_ps(max_score);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < full; j += 8) {
    const __m256 p = simd::exp_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), m));
    _mm256_storeu_ps(row + j, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  float sum = simd::hsum_ps(vsum);
  if (full < num_keys) {  // padded_keys is a multiple of 16, so this vector stays inside the row
    _mm256_storeu_ps(row + full, simd::exp_ps(_mm256_sub_ps(_mm256_loadu_ps(row + full), m)));
    for (int64_t j = full; j < num_keys; ++j) sum += row[j];
  }
  return sum;
}

// out_rows[r][offset .. offset + 8*NV) = sum_j probs[r][j] * V[j][..], then * inv_sum[r] + bv.
template <int NV>
BORT_AVX2 void pv_tile(const float* probs, int64_t padded_keys, const float* vblock, int64_t num_keys,
                       const float* inv_sum, const float* bv, float* const* out_rows, int64_t offset, int rows) {
  __m256 acc[kTileRows][NV];
#pragma GCC unroll 6
  for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t j = 0; j < num_keys; ++j) {
    __m256 vv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) vv[v] = _mm256_loadu_ps(vblock + j * 8 * NV + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < kTileRows; ++r) {
      const __m256 p = _mm256_broadcast_ss(probs + r * padded_keys + j);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(p, vv[v], acc[r][v]);
    }
  }
  // Constant trip counts everywhere (the row test is inside) so acc stays in registers.
#pragma GCC unroll 6
  for (int r = 0; r < kTileRows; ++r) {
    if (r >= rows) break;
    const __m256 inv = _mm256_set1_ps(inv_sum[r]);
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __m256 b = bv ? _mm256_loadu_ps(bv + 8 * v) : _mm256_setzero_ps();
      _mm256_storeu_ps(out_rows[r] + offset + 8 * v, _mm256_fmadd_ps(acc[r][v], inv, b));
    }
  }
}

BORT_AVX2 void attend_rows_avx2(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head, int64_t q0,
                                int64_t q1) {
  const SeqKeys& keys = s.keys;
  if (keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim, H = sh.hidden();
  const int64_t num_keys = keys.key_end;
  const int64_t padded_keys = (num_keys + kKeyBlock - 1) / kKeyBlock * kKeyBlock;

  thread_local Avx2Scratch scratch;
  scratch.kpack.resize(static_cast<size_t>(padded_keys * D));
  scratch.vpack.resize(static_cast<size_t>(num_keys * D));
  scratch.scores.resize(static_cast<size_t>(kTileRows * padded_keys));
  scratch.keep.resize(static_cast<size_t>(padded_keys));
  scratch.penalty.resize(static_cast<size_t>(padded_keys));
  scratch.qtile.resize(static_cast<size_t>(kTileRows * D));
  float* kpack = scratch.kpack.data();
  float* vpack = scratch.vpack.data();
  float* scores = scratch.scores.data();
  float* keep = scratch.keep.data();
  float* penalty = scratch.penalty.data();
  float* qtile = scratch.qtile.data();

  pack_keys(s.k + head * D, s.kv_stride, D, num_keys, padded_keys, kpack);
  pack_values(s.v + head * D, s.kv_stride, D, num_keys, vpack);
  const bool holes = keys.valid != nullptr;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; holes && j < padded_keys; ++j) {
    const bool attends = j < num_keys && (keys.valid == nullptr || keys.valid[j]);
    keep[j] = attends ? 1.0f : 0.0f;
    penalty[j] = attends ? 0.0f : neg_inf;
  }

  const float* bq = bias ? bias + head * D : nullptr;
  const float* bv = bias ? bias + 2 * H + head * D : nullptr;
  const __m256 vscale = _mm256_set1_ps(sh.scale);
  for (int64_t t = q0; t < q1; t += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, q1 - t));
    for (int r = 0; r < kTileRows; ++r) {
      float* dst = qtile + r * D;
      if (r >= rows) {
        std::fill(dst, dst + D, 0.0f);
        continue;
      }
      const float* q = s.q[t + r] + head * D;
      for (int64_t d = 0; d < D; d += 8) {
        __m256 v = _mm256_loadu_ps(q + d);
        if (bq) v = _mm256_add_ps(v, _mm256_loadu_ps(bq + d));
        _mm256_storeu_ps(dst + d, _mm256_mul_ps(v, vscale));
      }
    }
    qk_tile(qtile, kpack, D, padded_keys, scores);
    float inv_sum[kTileRows];
    for (int r = 0; r < kTileRows; ++r) {
      // Padding rows of the tile still get finite probabilities (their outputs are not stored).
      inv_sum[r] = 1.0f / softmax_numerators(scores + r * padded_keys, keep, penalty, num_keys, padded_keys, holes);
    }
    float* const* out_rows = s.out + t;
    int64_t d0 = 0;
    for (; d0 + 16 <= D; d0 += 16)
      pv_tile<2>(scores, padded_keys, vpack + d0 * num_keys, num_keys, inv_sum, bv ? bv + d0 : nullptr, out_rows,
                 head * D + d0, rows);
    if (d0 < D)
      pv_tile<1>(scores, padded_keys, vpack + d0 * num_keys, num_keys, inv_sum, bv ? bv + d0 : nullptr, out_rows,
                 head * D + d0, rows);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 path (head_dim % 16 == 0): the AVX2 algebra (K bias dropped, V bias added after normalisation,
// Q bias and scale folded into the query tile) with 16-lane registers and tiles sized for 32 zmm registers.
// QK^T: 8 queries x 48 keys (three 16-key blocks of the packed K): 24 accumulators, 3 K registers and one
// broadcast, so 11 loads per 24 FMAs. PV: 8 queries x 48 head dims on the packed V, same shape. (12 x 32
// needs 14 loads per 24 FMAs; its micro-kernels ran 5-10% slower in isolation, the same end to end.)
// A tile with fewer than 8 queries (the end of a chunk, the few rows of a query subset) runs an instance
// compiled for exactly that many rows, so no FMA is spent on padding rows.
//
// Layouts, chosen so that each micro-kernel addresses all its rows from one pointer with constant
// offsets (a pointer per row would not fit in the 15 general registers next to the loop state):
//   kpack  [key block][d][16]             (pack_keys, as the AVX2 path)
//   vpack  [dim block][key][16]           (pack_values, as the AVX2 path)
//   qtile  [dim block][row][16]           scaled query dims 16c..16c+15 of each row
//   scores [key block][row][16]           scores, then softmax numerators, of each row
// Scratch is 64-byte aligned so that no zmm access to it splits a cache line. The row max is taken
// right after each QK^T block, so softmax makes a single pass over the scores.

constexpr int kTileRows512 = 8;

// Grow-only 64-byte-aligned float buffer (std::vector only guarantees 16 bytes).
class AlignedFloats {
 public:
  AlignedFloats() = default;
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  ~AlignedFloats() { ::operator delete(data_, std::align_val_t{64}); }

  float* get(size_t n) {
    if (n > capacity_) {
      float* fresh = static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t{64}));
      ::operator delete(data_, std::align_val_t{64});
      data_ = fresh;
      capacity_ = n;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

struct Avx512Scratch {
  AlignedFloats kpack, vpack, scores, qtile, rowmax;
  std::vector<__mmask16> attend;
};

// Which keys of 16-key block b attend (bit i: key 16 b + i exists and is not padding), in `masks`.
inline const __mmask16* key_masks(const SeqKeys& keys, int64_t num_blocks, std::vector<__mmask16>& masks) {
  const int64_t num_keys = keys.key_end;
  masks.assign(static_cast<size_t>(num_blocks), __mmask16{0xFFFF});
  if (num_keys % 16 != 0) masks[num_blocks - 1] = static_cast<__mmask16>((1u << (num_keys % 16)) - 1);
  if (keys.valid != nullptr)
    for (int64_t j = 0; j < num_keys; ++j)
      if (!keys.valid[j]) masks[j / 16] = static_cast<__mmask16>(masks[j / 16] & ~(1u << (j % 16)));
  return masks.data();
}

// What the tiles of one work item share: packed K and V of one head, which keys attend, the biases.
struct Avx512Item {
  const float* kpack;
  const float* vpack;
  const __mmask16* attend;  // [num_blocks]: bit i = key 16 * block + i attends
  float* scores;            // [num_blocks][rows][16]
  float* qtile;             // [head_dim / 16][rows][16]
  float* rowmax;            // [rows][16]: lane-wise running max of each row's scores
  int64_t head_dim;
  int64_t num_keys;
  int64_t num_blocks;  // ceil(num_keys / 16)
  int64_t offset;      // head * head_dim: the head's columns in q, out and each third of the bias
  const float* bq;     // Q and V bias of the head, or null
  const float* bv;
  float scale;
};

// Scores of the R tile rows against NB 16-key blocks from kb, stored to `scores`; rowmax[r] takes the
// lane-wise max over the keys that attend. rowmax lives in scratch memory, not in registers: next to 24
// accumulators, R more live zmm values would spill.
template <int R, int NB>
BORT_AVX512_INLINE void qk_blocks512(const Avx512Item& it, int64_t kb) {
  const int64_t D = it.head_dim;
  const float* k = it.kpack + kb * D * 16;
  const float* q = it.qtile;
  __m512 acc[R][NB];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t c = 0; c < D / 16; ++c, k += 16 * 16, q += R * 16) {
#pragma GCC unroll 2
    for (int dd = 0; dd < 16; ++dd) {
      __m512 kv[NB];
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) kv[b] = _mm512_load_ps(k + b * D * 16 + dd * 16);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512 qv = _mm512_set1_ps(q[r * 16 + dd]);
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_fmadd_ps(qv, kv[b], acc[r][b]);
      }
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    const __mmask16 attend = it.attend[kb + b];
    float* s = it.scores + (kb + b) * R * 16;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm512_store_ps(s + r * 16, acc[r][b]);
      const __m512 m = _mm512_load_ps(it.rowmax + r * 16);
      _mm512_store_ps(it.rowmax + r * 16, _mm512_mask_max_ps(m, attend, m, acc[r][b]));
    }
  }
}

// Softmax numerators in place (exp(s - max) for keys that attend, 0 for the others, including the
// padding keys of the last block, which PV never reads); inv_sum[r] = 1 / row sum.
template <int R>
BORT_AVX512_INLINE void softmax_numerators512(const Avx512Item& it, float* inv_sum) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_load_ps(it.rowmax + r * 16)));
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();  // two chains hide the add latency
    float* s = it.scores + r * 16;
    int64_t kb = 0;
    for (; kb + 2 <= it.num_blocks; kb += 2) {
      const __m512 p0 = _mm512_maskz_mov_ps(it.attend[kb], simd::exp_ps(_mm512_sub_ps(_mm512_load_ps(s), m)));
      const __m512 p1 =
          _mm512_maskz_mov_ps(it.attend[kb + 1], simd::exp_ps(_mm512_sub_ps(_mm512_load_ps(s + R * 16), m)));
      _mm512_store_ps(s, p0);
      _mm512_store_ps(s + R * 16, p1);
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
      s += 2 * R * 16;
    }
    if (kb < it.num_blocks) {
      const __m512 p0 = _mm512_maskz_mov_ps(it.attend[kb], simd::exp_ps(_mm512_sub_ps(_mm512_load_ps(s), m)));
      _mm512_store_ps(s, p0);
      sum0 = _mm512_add_ps(sum0, p0);
    }
    inv_sum[r] = 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
  }
}

// One key of PV for R rows x NV dim blocks: probabilities at p[r * 16], V at v[n * v_stride].
template <int R, int NV>
BORT_AVX512_INLINE void pv_key512(const float* p, const float* v, int64_t v_stride, __m512 (&acc)[R][NV]) {
  __m512 vv[NV];
#pragma GCC unroll 4
  for (int n = 0; n < NV; ++n) vv[n] = _mm512_load_ps(v + n * v_stride);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 pv = _mm512_set1_ps(p[r * 16]);
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_fmadd_ps(pv, vv[n], acc[r][n]);
  }
}

// out_rows[r][offset + d0 .. + 16*NV) = (sum_j p[r][j] V[j][d0 ..]) * inv_sum[r] + bv[d0 ..].
template <int R, int NV>
BORT_AVX512_INLINE void pv_blocks512(const Avx512Item& it, int64_t d0, const float* inv_sum, float* const* out_rows) {
  const int64_t num_keys = it.num_keys, v_stride = 16 * num_keys;
  const float* v = it.vpack + d0 * num_keys;
  const float* p = it.scores;
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
  const int64_t full_blocks = num_keys / 16;
  for (int64_t kb = 0; kb < full_blocks; ++kb, p += R * 16, v += 16 * 16) {
#pragma GCC unroll 2
    for (int jj = 0; jj < 16; ++jj) pv_key512<R, NV>(p + jj, v + jj * 16, v_stride, acc);
  }
  for (int64_t jj = 0; jj < num_keys % 16; ++jj) pv_key512<R, NV>(p + jj, v + jj * 16, v_stride, acc);
  const float* bv = it.bv;
  float* const* out = out_rows;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 inv = _mm512_set1_ps(inv_sum[r]);
    float* o = out[r] + it.offset + d0;
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) {
      const __m512 b = bv ? _mm512_loadu_ps(bv + d0 + 16 * n) : _mm512_setzero_ps();
      _mm512_storeu_ps(o + 16 * n, _mm512_fmadd_ps(acc[r][n], inv, b));
    }
  }
}

// R query rows (q_rows[0..R)) against every key of the item, written to out_rows[0..R).
template <int R>
BORT_AVX512 void attend_tile512(const Avx512Item& it, const float* const* q_rows, float* const* out_rows) {
  const int64_t D = it.head_dim;
  const __m512 vscale = _mm512_set1_ps(it.scale);
  for (int r = 0; r < R; ++r) {
    const float* q = q_rows[r] + it.offset;
    float* dst = it.qtile + r * 16;
    for (int64_t d = 0; d < D; d += 16, dst += R * 16) {
      __m512 v = _mm512_loadu_ps(q + d);
      if (it.bq) v = _mm512_add_ps(v, _mm512_loadu_ps(it.bq + d));
      _mm512_store_ps(dst, _mm512_mul_ps(v, vscale));
    }
  }
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int r = 0; r < R; ++r) _mm512_store_ps(it.rowmax + r * 16, neg_inf);
  int64_t kb = 0;
  for (; kb + 3 <= it.num_blocks; kb += 3) qk_blocks512<R, 3>(it, kb);
  if (it.num_blocks - kb == 2) qk_blocks512<R, 2>(it, kb);
  if (it.num_blocks - kb == 1) qk_blocks512<R, 1>(it, kb);
  float inv_sum[R];
  softmax_numerators512<R>(it, inv_sum);
  int64_t d0 = 0;
  for (; d0 + 48 <= D; d0 += 48) pv_blocks512<R, 3>(it, d0, inv_sum, out_rows);
  if (D - d0 == 32) pv_blocks512<R, 2>(it, d0, inv_sum, out_rows);
  if (D - d0 == 16) pv_blocks512<R, 1>(it, d0, inv_sum, out_rows);
}

using Tile512 = void (*)(const Avx512Item&, const float* const*, float* const*);

// Tiles of 8, 4, 2 and 1 rows (a remainder runs as at most three smaller tiles): every row count would compile
// eight copies of each tile body, about 100 KB of the ops library for the rare last tile of a sequence.
static_assert(kTileRows512 == 8, "tile_rows assumes 8-row tiles");
constexpr int64_t tile_rows(int64_t left) { return left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1; }
constexpr size_t tile_index(int64_t rows) { return rows == 8 ? 3 : rows == 4 ? 2 : rows == 2 ? 1 : 0; }

constexpr std::array<Tile512, 4> kTiles512 = {&attend_tile512<1>, &attend_tile512<2>, &attend_tile512<4>,
                                              &attend_tile512<8>};

BORT_AVX512 void attend_rows_avx512(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head,
                                    int64_t q0, int64_t q1) {
  const SeqKeys& keys = s.keys;
  if (keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim, H = sh.hidden();
  const int64_t num_keys = keys.key_end;
  const int64_t num_blocks = (num_keys + 15) / 16;

  thread_local Avx512Scratch scratch;
  Avx512Item it;
  it.head_dim = D;
  it.num_keys = num_keys;
  it.num_blocks = num_blocks;
  it.offset = head * D;
  it.bq = bias ? bias + head * D : nullptr;
  it.bv = bias ? bias + 2 * H + head * D : nullptr;
  it.scale = sh.scale;
  float* kpack = scratch.kpack.get(static_cast<size_t>(num_blocks * 16 * D));
  float* vpack = scratch.vpack.get(static_cast<size_t>(num_keys * D));
  it.kpack = kpack;
  it.vpack = vpack;
  it.scores = scratch.scores.get(static_cast<size_t>(num_blocks * kTileRows512 * 16));
  it.qtile = scratch.qtile.get(static_cast<size_t>(kTileRows512 * D));
  it.rowmax = scratch.rowmax.get(kTileRows512 * 16);
  pack_keys(s.k + head * D, s.kv_stride, D, num_keys, num_blocks * 16, kpack);
  pack_values(s.v + head * D, s.kv_stride, D, num_keys, vpack);

  it.attend = key_masks(keys, num_blocks, scratch.attend);

  for (int64_t t = q0; t < q1;) {
    const int64_t rows = tile_rows(q1 - t);
    kTiles512[tile_index(rows)](it, s.q + t, s.out + t);
    t += rows;
  }
}

// ---------------------------------------------------------------------------------------------
// AVX512-BF16 path of AttentionPrecision::kBf16 (head_dim % 32 == 0): the AVX-512 path's tiles and algebra with
// vdpbf16ps, which takes two head dims (QK^T) or two keys (PV) per instruction. Layouts (bf16 pairs are 32-bit
// elements; each micro-kernel again addresses all its rows from one pointer with constant offsets):
//   kpack  [key block][pair p][16 keys][2]        K dims (2p, 2p+1) of 16 keys
//   vpack  [dim block][key pair][16 dims][2]      V of keys (2j, 2j+1), zero for keys past num_keys
//   qtile  [pair block][row][16 pairs][2]          scaled query dims 32c..32c+31 of each row
//   scores [key block][row][16]                    fp32 scores, then softmax numerators (as the AVX-512 path)
//   probs  [key block][row][8 key pairs][2]        the numerators rounded to bf16

struct Bf16Scratch {
  AlignedFloats kpack, vpack, scores, probs, qtile, rowmax;
  std::vector<__mmask16> attend;
};

struct Bf16Item {
  Avx512Item f;  // attend, scores, rowmax, sizes, biases, scale (its kpack, vpack and qtile are unused)
  const uint16_t* kpack;
  const uint16_t* vpack;
  uint16_t* probs;
  uint16_t* qtile;
};

// In-register transpose of 16 rows of 16 int32 (r[i] element j -> r[j] element i).
BORT_AVX512_INLINE void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i a0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), b0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xDD);
    const __m512i a1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
    const __m512i b1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xDD);
    t[c] = _mm512_shuffle_i32x4(a0, a1, 0x88);
    t[8 + c] = _mm512_shuffle_i32x4(a0, a1, 0xDD);
    t[4 + c] = _mm512_shuffle_i32x4(b0, b1, 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(b0, b1, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

BORT_AVX512_BF16_INLINE __m512bh broadcast_pair(const uint16_t* p) {
  int32_t pair;
  std::memcpy(&pair, p, sizeof pair);
  return (__m512bh)_mm512_set1_epi32(pair);
}

// x holds 16 bf16 of one operand row in its low half and 16 of the next in its high half; returns the 16 pairs
// (low[i], high[i]).
BORT_AVX512_BF16_INLINE __m512i interleave_halves(__m512bh x) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                       5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, (__m512i)x);
}

template <int R, int NB>
BORT_AVX512_BF16_INLINE void qk_blocks_bf16(const Bf16Item& it, int64_t kb) {
  const int64_t D = it.f.head_dim, P = D / 2;
  const uint16_t* k = it.kpack + kb * P * 32;
  const uint16_t* q = it.qtile;
  __m512 acc[R][NB];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t c = 0; c < P / 16; ++c, k += 16 * 32, q += R * 32) {
#pragma GCC unroll 2
    for (int pp = 0; pp < 16; ++pp) {
      __m512bh kv[NB];
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) kv[b] = (__m512bh)_mm512_load_si512(k + b * P * 32 + pp * 32);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512bh qv = broadcast_pair(q + r * 32 + 2 * pp);
#pragma GCC unroll 4
        for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], qv, kv[b]);
      }
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    const __mmask16 attend = it.f.attend[kb + b];
    float* s = it.f.scores + (kb + b) * R * 16;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm512_store_ps(s + r * 16, acc[r][b]);
      const __m512 m = _mm512_load_ps(it.f.rowmax + r * 16);
      _mm512_store_ps(it.f.rowmax + r * 16, _mm512_mask_max_ps(m, attend, m, acc[r][b]));
    }
  }
}

// One key pair of PV for R rows x NV dim blocks: probability pairs at p[r * 16], V pairs at v[n * v_stride].
template <int R, int NV>
BORT_AVX512_BF16_INLINE void pv_pair_bf16(const uint16_t* p, const uint16_t* v, int64_t v_stride,
                                          __m512 (&acc)[R][NV]) {
  __m512bh vv[NV];
#pragma GCC unroll 4
  for (int n = 0; n < NV; ++n) vv[n] = (__m512bh)_mm512_load_si512(v + n * v_stride);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512bh pv = broadcast_pair(p + r * 16);
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], pv, vv[n]);
  }
}

// PV over key pairs [0, ceil(num_keys / 2)) for R rows x NV dim blocks from d0.
template <int R, int NV>
BORT_AVX512_BF16_INLINE void pv_blocks_bf16(const Bf16Item& it, int64_t d0, const float* inv_sum,
                                            float* const* out_rows) {
  const int64_t num_keys = it.f.num_keys, v_stride = 32 * it.f.num_blocks * 8;
  const uint16_t* v = it.vpack + (d0 / 16) * v_stride;
  const uint16_t* p = it.probs;
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
  const int64_t full_blocks = num_keys / 16;
  for (int64_t kb = 0; kb < full_blocks; ++kb, p += R * 16, v += 8 * 32) {
#pragma GCC unroll 2
    for (int jj = 0; jj < 8; ++jj) pv_pair_bf16<R, NV>(p + 2 * jj, v + jj * 32, v_stride, acc);
  }
  for (int64_t jj = 0; jj < (num_keys % 16 + 1) / 2; ++jj) pv_pair_bf16<R, NV>(p + 2 * jj, v + jj * 32, v_stride, acc);
  const float* bv = it.f.bv;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 inv = _mm512_set1_ps(inv_sum[r]);
    float* o = out_rows[r] + it.f.offset + d0;
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) {
      const __m512 b = bv ? _mm512_loadu_ps(bv + d0 + 16 * n) : _mm512_setzero_ps();
      _mm512_storeu_ps(o + 16 * n, _mm512_fmadd_ps(acc[r][n], inv, b));
    }
  }
}

// A function of its own, not inlined: the kBf16 and kInt8 tiles share one copy.
template <int R>
BORT_AVX512_BF16 void softmax_pv_bf16(const Bf16Item& it, float* const* out_rows);

// The scaled (and Q-biased) query rows as bf16 in qtile's [pair block][row][16 pairs][2] order for tiles of
// tile_rows rows; rows [rows, tile_rows) are zero.
BORT_AVX512_BF16_INLINE void fill_query_tile(const Bf16Item& it, const float* const* q_rows, int64_t rows,
                                             int64_t tile_rows) {
  const int64_t D = it.f.head_dim;
  const __m512 vscale = _mm512_set1_ps(it.f.scale);
  const float* bq = it.f.bq;
  for (int64_t r = 0; r < tile_rows; ++r) {
    uint16_t* dst = it.qtile + r * 32;
    for (int64_t d = 0; d < D; d += 32, dst += tile_rows * 32) {
      if (r >= rows) {
        _mm512_store_si512(dst, _mm512_setzero_si512());
        continue;
      }
      const float* q = q_rows[r] + it.f.offset;
      __m512 lo = _mm512_loadu_ps(q + d), hi = _mm512_loadu_ps(q + d + 16);
      if (bq) {
        lo = _mm512_add_ps(lo, _mm512_loadu_ps(bq + d));
        hi = _mm512_add_ps(hi, _mm512_loadu_ps(bq + d + 16));
      }
      _mm512_store_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, vscale), _mm512_mul_ps(lo, vscale)));
    }
  }
}

template <int R>
BORT_AVX512_BF16 void attend_tile_bf16(const Bf16Item& it, const float* const* q_rows, float* const* out_rows) {
  fill_query_tile(it, q_rows, R, R);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int r = 0; r < R; ++r) _mm512_store_ps(it.f.rowmax + r * 16, neg_inf);
  int64_t kb = 0;
  for (; kb + 3 <= it.f.num_blocks; kb += 3) qk_blocks_bf16<R, 3>(it, kb);
  if (it.f.num_blocks - kb == 2) qk_blocks_bf16<R, 2>(it, kb);
  if (it.f.num_blocks - kb == 1) qk_blocks_bf16<R, 1>(it, kb);
  softmax_pv_bf16<R>(it, out_rows);
}

// From the scores of R rows (with rowmax): softmax numerators, rounded to bf16, then P V (kBf16 and kInt8).
template <int R>
BORT_AVX512_BF16 void softmax_pv_bf16(const Bf16Item& it, float* const* out_rows) {
  const int64_t D = it.f.head_dim;
  float inv_sum[R];
  softmax_numerators512<R>(it.f, inv_sum);
  for (int64_t b = 0; b < it.f.num_blocks; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int64_t at = (b * R + r) * 16;
      _mm256_store_si256(reinterpret_cast<__m256i*>(it.probs + at),
                         (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(it.f.scores + at)));
    }
  int64_t d0 = 0;
  for (; d0 + 48 <= D; d0 += 48) pv_blocks_bf16<R, 3>(it, d0, inv_sum, out_rows);
  if (D - d0 == 32) pv_blocks_bf16<R, 2>(it, d0, inv_sum, out_rows);
  if (D - d0 == 16) pv_blocks_bf16<R, 1>(it, d0, inv_sum, out_rows);
}

using TileBf16 = void (*)(const Bf16Item&, const float* const*, float* const*);

constexpr std::array<TileBf16, 4> kTilesBf16 = {&attend_tile_bf16<1>, &attend_tile_bf16<2>, &attend_tile_bf16<4>,
                                                &attend_tile_bf16<8>};

// K rows of `heads` adjacent heads -> kpack (head i's blocks at kpack + i * head_step; keys past num_keys zero):
// 32 dims of a key rounded to bf16 in one register are its 16 pairs, and a 16 x 16 transpose of the 32-bit pairs
// of 16 keys gives the [pair][16 keys][2] rows of a key block. Block by block over the heads, so each key's heads
// are read as one piece of its row.
[[gnu::noinline, gnu::noclone]] BORT_AVX512_BF16 void pack_bf16_keys(const float* k_base, int64_t stride, int64_t D,
                                                                     int64_t num_keys, int64_t num_blocks,
                                                                     uint16_t* kpack, int64_t heads = 1,
                                                                     int64_t head_step = 0) {
  const int64_t P = D / 2;
  for (int64_t kb = 0; kb < num_blocks; ++kb) {
    // One head's key is a piece of a long row (Bort's: 512 bytes of 12 KB), which the hardware prefetchers do not
    // follow; the adjacent heads' pieces of a row they do (see attend_heads_amx_bf16).
    if (heads == 1)
      for (int64_t j = (kb + 1) * 16; j < std::min(num_keys, (kb + 2) * 16); ++j)
        prefetch_row(k_base + j * stride, D * static_cast<int64_t>(sizeof(float)));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d0 = 0; d0 < D; d0 += 32) {
        __m512i r[16];
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t j = kb * 16 + i;
          r[i] = _mm512_setzero_si512();
          if (j < num_keys) {
            const float* k = k_base + j * stride + h * D + d0;
            r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(k + 16), _mm512_loadu_ps(k));
          }
        }
        transpose16x16_epi32(r);
        for (int64_t p = 0; p < 16; ++p) _mm512_store_si512(kpack + h * head_step + (kb * P + d0 / 2 + p) * 32, r[p]);
      }
  }
}

// V rows of `heads` adjacent heads -> vpack (head i's at vpack + i * head_step), pair by pair over the heads.
[[gnu::noinline, gnu::noclone]] BORT_AVX512_BF16 void pack_bf16_values(const float* v_base, int64_t stride, int64_t D,
                                                                       int64_t num_keys, int64_t num_blocks,
                                                                       uint16_t* vpack, int64_t heads = 1,
                                                                       int64_t head_step = 0) {
  const int64_t v_stride = 32 * num_blocks * 8, num_pairs = (num_keys + 1) / 2;
  constexpr int64_t kAhead = 8;  // key pairs: each key is a piece of a long row, as in pack_bf16_keys
  for (int64_t jp = 0; jp < num_pairs; ++jp) {
    if (heads == 1)
      for (int64_t j = 2 * (jp + kAhead); j < std::min(num_keys, 2 * (jp + kAhead + 1)); ++j)
        prefetch_row(v_base + j * stride, D * static_cast<int64_t>(sizeof(float)));
    const float* v0 = v_base + 2 * jp * stride;
    const bool second = 2 * jp + 1 < num_keys;  // else key 2 jp + 1 is padding: zero
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d0 = 0; d0 < D; d0 += 16) {
        const __m512 a = _mm512_loadu_ps(v0 + h * D + d0);
        const __m512 b = second ? _mm512_loadu_ps(v0 + stride + h * D + d0) : _mm512_setzero_ps();
        _mm512_store_si512(vpack + h * head_step + (d0 / 16) * v_stride + jp * 32,
                           interleave_halves(_mm512_cvtne2ps_pbh(b, a)));
      }
  }
}

// Makes f describe `head`: its columns in q, out and each third of the bias.
inline void select_head(Avx512Item& f, const AttentionShape& sh, const float* bias, int64_t head) {
  f.offset = head * sh.head_dim;
  f.bq = bias ? bias + f.offset : nullptr;
  f.bv = bias ? bias + 2 * sh.hidden() + f.offset : nullptr;
}

// What kBf16 and kInt8 items share: sizes, biases, scores, rowmax, which keys attend, and V packed as bf16 pairs:
// of `heads` adjacent heads from `head` on (the item describes the first). Returns where head i's V starts:
// vpack + i * the returned step (bf16 elements).
BORT_AVX512_BF16 int64_t init_bf16_item(Bf16Item& it, Bf16Scratch& scratch, const SeqView& s, const AttentionShape& sh,
                                        const float* bias, int64_t head, int64_t tile_rows = kTileRows512,
                                        int64_t value_block_multiple = 1, int64_t heads = 1) {
  const int64_t D = sh.head_dim;
  const int64_t num_keys = s.keys.key_end;
  const int64_t num_blocks = (num_keys + 15) / 16;
  it.f.head_dim = D;
  it.f.num_keys = num_keys;
  it.f.num_blocks = num_blocks;
  select_head(it.f, sh, bias, head);
  it.f.scale = sh.scale;
  it.f.kpack = it.f.vpack = it.f.qtile = nullptr;
  it.f.scores = scratch.scores.get(static_cast<size_t>(num_blocks * tile_rows * 16));
  it.f.rowmax = scratch.rowmax.get(static_cast<size_t>(tile_rows * 16));
  // bf16 buffers live in 64-byte-aligned float storage, two bf16 per float.
  // V's key pairs padded to a multiple of value_block_multiple 16-key blocks; with a multiple above 1 (the AMX
  // path, which reads whole blocks) the pairs past the keys are zero: a padding key has probability 0, and
  // 0 x garbage could be NaN. The AVX512-BF16 path reads no pair past the keys.
  const int64_t value_blocks = (num_blocks + value_block_multiple - 1) / value_block_multiple * value_block_multiple;
  const int64_t head_step = value_blocks * 16 * D;
  uint16_t* vpack = reinterpret_cast<uint16_t*>(scratch.vpack.get(static_cast<size_t>(heads * head_step / 2)));
  it.vpack = vpack;
  it.probs = reinterpret_cast<uint16_t*>(scratch.probs.get(static_cast<size_t>(num_blocks * tile_rows * 8)));
  it.kpack = nullptr;
  it.qtile = nullptr;
  pack_bf16_values(s.v + head * D, s.kv_stride, D, num_keys, value_blocks, vpack, heads, head_step);
  if (value_block_multiple > 1) {
    const int64_t v_stride = value_blocks * 8 * 32, num_pairs = (num_keys + 1) / 2;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t db = 0; db < D / 16; ++db)
        std::memset(vpack + h * head_step + db * v_stride + num_pairs * 32, 0,
                    static_cast<size_t>(value_blocks * 8 - num_pairs) * 64);
  }
  it.f.attend = key_masks(s.keys, num_blocks, scratch.attend);
  return head_step;
}

BORT_AVX512_BF16 void attend_rows_avx512_bf16(const SeqView& s, const AttentionShape& sh, const float* bias,
                                              int64_t head, int64_t q0, int64_t q1) {
  if (s.keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim;
  thread_local Bf16Scratch scratch;
  Bf16Item it;
  init_bf16_item(it, scratch, s, sh, bias, head);
  const int64_t num_blocks = it.f.num_blocks;
  uint16_t* kpack = reinterpret_cast<uint16_t*>(scratch.kpack.get(static_cast<size_t>(num_blocks * 16 * D / 2)));
  it.kpack = kpack;
  it.qtile = reinterpret_cast<uint16_t*>(scratch.qtile.get(static_cast<size_t>(kTileRows512 * D / 2)));
  pack_bf16_keys(s.k + head * D, s.kv_stride, D, it.f.num_keys, num_blocks, kpack);

  for (int64_t t = q0; t < q1;) {
    const int64_t rows = tile_rows(q1 - t);
    kTilesBf16[tile_index(rows)](it, s.q + t, s.out + t);
    t += rows;
  }
}

// ---------------------------------------------------------------------------------------------
// AVX512-BF16 level path of AttentionPrecision::kInt8 (head_dim % 32 == 0): Q K^T with vpdpbusd (four head dims
// per 32-bit lane, u8 query x s8 key into int32; the query is offset by +128 to u8 and 128 * sum_d k_int is
// subtracted per key), then the kBf16 path's softmax and P V. Same tiles as the other AVX-512 paths. Layouts:
//   kpack  [key block][quad p][16 keys][4]      s8 K dims 4p..4p+3 of 16 keys (zero for keys past num_keys)
//   kscale [key block][16]                      each key's row scale (0 past num_keys)
//   kcomp  [key block][16]                      128 * sum_d k_int of each key
//   qtile  [32-dim block][row][8 quads][4]       u8 query dims (q_int + 128) of each row
// A score is float(acc - kcomp) * (q_scale * k_scale), the scalar reference's integer and epilogue.

struct Int8Scratch {
  Bf16Scratch b;
  AlignedFloats kpack, kscale, kcomp, qtile, qfloat, qscale, rows;
};

struct Int8Item {
  Bf16Item b;  // scores, rowmax, probs, vpack, sizes, biases, scale (its kpack and qtile are unused)
  const int8_t* kpack;
  const float* kscale;
  const int32_t* kcomp;
  uint8_t* qtile;
  float* qfloat;  // [head_dim]: one scaled query row before quantization
  float* qscale;  // [rows]: each tile row's scale
};

// quantize_row_s8's inverse and scale from the row's largest |x|.
inline float int8_inverse(float amax) { return amax >= kInt8TinyRow ? 127.0f / amax : 0.0f; }
inline float int8_scale(float amax) { return amax >= kInt8TinyRow ? amax / 127.0f : 0.0f; }

// 16 values -> quantize_row_s8's integers. max_ps returns its second operand when either is NaN, as
// std::max(-127.0f, r) returns -127.
BORT_AVX512_INLINE __m512i quantize16(__m512 x, __m512 inv) {
  const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f)));
}

// K rows of one head -> kpack, kscale, kcomp (num_blocks * 16 keys, the padding keys zero). Each block's 16 keys
// are quantized into `rows` ([16][D rounded up to 64] bytes), then 16 quads of the 16 keys at a time are
// transposed in registers into kpack's [quad][key] order.
BORT_AVX512_BF16 void pack_int8_keys(const float* k_base, int64_t stride, int64_t D, int64_t num_keys,
                                     int64_t num_blocks, int8_t* kpack, float* kscale, int32_t* kcomp, int8_t* rows) {
  const int64_t P = D / 4, row_bytes = (D + 63) / 64 * 64;
  for (int64_t kb = 0; kb < num_blocks; ++kb) {
    for (int64_t jj = 0; jj < 16; ++jj) {
      const int64_t j = kb * 16 + jj;
      int8_t* row = rows + jj * row_bytes;
      std::memset(row, 0, static_cast<size_t>(row_bytes));
      if (j >= num_keys) {
        kscale[j] = 0.0f;
        kcomp[j] = 0;
        continue;
      }
      const float* k = k_base + j * stride;
      __m512 amax = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(k + d)));
      const float a = _mm512_reduce_max_ps(amax);
      const __m512 inv = _mm512_set1_ps(int8_inverse(a));
      __m512i sum = _mm512_setzero_si512();
      for (int64_t d = 0; d < D; d += 16) {
        const __m512i x = quantize16(_mm512_loadu_ps(k + d), inv);
        sum = _mm512_add_epi32(sum, x);
        _mm_store_si128(reinterpret_cast<__m128i*>(row + d), _mm512_cvtepi32_epi8(x));
      }
      kscale[j] = int8_scale(a);
      kcomp[j] = 128 * _mm512_reduce_add_epi32(sum);
    }
    for (int64_t g = 0; g < P; g += 16) {
      __m512i r[16];
      for (int jj = 0; jj < 16; ++jj) r[jj] = _mm512_load_si512(rows + jj * row_bytes + 4 * g);
      transpose16x16_epi32(r);
      for (int64_t p = 0; p < std::min<int64_t>(16, P - g); ++p)
        _mm512_store_si512(kpack + (kb * P + g + p) * 64, r[p]);
    }
  }
}

// vpdpbusd acc += u8 a . s8 b, with the accumulator tied in place: GCC 12's builtin copies it to a new register
// and back around each instruction here, which with 24 accumulators spills them to the stack every step.
BORT_AVX512_VNNI_INLINE void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

#define BORT_QK8_ROW(r) __m512i a##r##0 = _mm512_setzero_si512(), a##r##1 = a##r##0, a##r##2 = a##r##0
#define BORT_QK8_STEP(r)                          \
  if (R > r) {                                    \
    int32_t quad;                                 \
    std::memcpy(&quad, qg + r * 32, sizeof quad); \
    const __m512i qv = _mm512_set1_epi32(quad);   \
    dpbusd(a##r##0, qv, k0);                      \
    if (NB > 1) dpbusd(a##r##1, qv, k1);          \
    if (NB > 2) dpbusd(a##r##2, qv, k2);          \
  }
#define BORT_QK8_SCORES(r)                             \
  if (R > r) {                                         \
    qk8_scores<R>(it, kb, r, a##r##0);                 \
    if (NB > 1) qk8_scores<R>(it, kb + 1, r, a##r##1); \
    if (NB > 2) qk8_scores<R>(it, kb + 2, r, a##r##2); \
  }

// Row r's scores against key block kb from its integer sums: float(acc - kcomp) * (q_scale * k_scale), stored to
// the tile of R rows; rowmax takes the lane-wise max over the keys that attend.
template <int R>
BORT_AVX512_BF16_INLINE void qk8_scores(const Int8Item& it, int64_t kb, int r, __m512i acc) {
  const __m512 score = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_load_si512(it.kcomp + kb * 16))),
                                     _mm512_mul_ps(_mm512_set1_ps(it.qscale[r]), _mm512_load_ps(it.kscale + kb * 16)));
  _mm512_store_ps(it.b.f.scores + (kb * R + r) * 16, score);
  const __m512 m = _mm512_load_ps(it.b.f.rowmax + r * 16);
  _mm512_store_ps(it.b.f.rowmax + r * 16, _mm512_mask_max_ps(m, it.b.f.attend[kb], m, score));
}

template <int R, int NB>
BORT_AVX512_BF16_INLINE void qk_blocks_int8(const Int8Item& it, int64_t kb) {
  const int64_t D = it.b.f.head_dim, P = D / 4;
  const int8_t* k = it.kpack + kb * P * 64;
  const uint8_t* q = it.qtile;
  BORT_QK8_ROW(0);
  BORT_QK8_ROW(1);
  BORT_QK8_ROW(2);
  BORT_QK8_ROW(3);
  BORT_QK8_ROW(4);
  BORT_QK8_ROW(5);
  BORT_QK8_ROW(6);
  BORT_QK8_ROW(7);
  // One loop over the quads (two nested loops made GCC store every accumulator to the stack each step).
  for (int64_t g = 0; g < P; ++g, k += 64) {
    const uint8_t* qg = q + (g / 8) * R * 32 + (g % 8) * 4;
    const __m512i k0 = _mm512_load_si512(k);
    const __m512i k1 = NB > 1 ? _mm512_load_si512(k + P * 64) : k0;
    const __m512i k2 = NB > 2 ? _mm512_load_si512(k + 2 * P * 64) : k0;
    BORT_QK8_STEP(0)
    BORT_QK8_STEP(1)
    BORT_QK8_STEP(2)
    BORT_QK8_STEP(3)
    BORT_QK8_STEP(4)
    BORT_QK8_STEP(5)
    BORT_QK8_STEP(6)
    BORT_QK8_STEP(7)
  }
  BORT_QK8_SCORES(0)
  BORT_QK8_SCORES(1)
  BORT_QK8_SCORES(2)
  BORT_QK8_SCORES(3)
  BORT_QK8_SCORES(4)
  BORT_QK8_SCORES(5)
  BORT_QK8_SCORES(6)
  BORT_QK8_SCORES(7)
}

#undef BORT_QK8_ROW
#undef BORT_QK8_STEP
#undef BORT_QK8_SCORES

template <int R>
BORT_AVX512_BF16 void attend_tile_int8(const Int8Item& it, const float* const* q_rows, float* const* out_rows) {
  const int64_t D = it.b.f.head_dim;
  const __m512 vscale = _mm512_set1_ps(it.b.f.scale);
  const float* bq = it.b.f.bq;
  const __m512i offset = _mm512_set1_epi32(128);
  for (int r = 0; r < R; ++r) {
    const float* q = q_rows[r] + it.b.f.offset;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      __m512 v = _mm512_loadu_ps(q + d);
      if (bq) v = _mm512_add_ps(v, _mm512_loadu_ps(bq + d));
      v = _mm512_mul_ps(v, vscale);
      _mm512_store_ps(it.qfloat + d, v);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    const float a = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(int8_inverse(a));
    it.qscale[r] = int8_scale(a);
    for (int64_t d = 0; d < D; d += 16) {
      const __m512i x = _mm512_add_epi32(quantize16(_mm512_load_ps(it.qfloat + d), inv), offset);
      _mm_store_si128(reinterpret_cast<__m128i*>(it.qtile + (d / 32) * R * 32 + r * 32 + d % 32),
                      _mm512_cvtepi32_epi8(x));
    }
  }
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int r = 0; r < R; ++r) _mm512_store_ps(it.b.f.rowmax + r * 16, neg_inf);
  int64_t kb = 0;
  for (; kb + 3 <= it.b.f.num_blocks; kb += 3) qk_blocks_int8<R, 3>(it, kb);
  if (it.b.f.num_blocks - kb == 2) qk_blocks_int8<R, 2>(it, kb);
  if (it.b.f.num_blocks - kb == 1) qk_blocks_int8<R, 1>(it, kb);
  softmax_pv_bf16<R>(it.b, out_rows);
}

using TileInt8 = void (*)(const Int8Item&, const float* const*, float* const*);

constexpr std::array<TileInt8, 4> kTilesInt8 = {&attend_tile_int8<1>, &attend_tile_int8<2>, &attend_tile_int8<4>,
                                                &attend_tile_int8<8>};

BORT_AVX512_BF16 void attend_rows_avx512_int8(const SeqView& s, const AttentionShape& sh, const float* bias,
                                              int64_t head, int64_t q0, int64_t q1) {
  if (s.keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim;
  thread_local Int8Scratch scratch;
  Int8Item it;
  init_bf16_item(it.b, scratch.b, s, sh, bias, head);
  const int64_t num_blocks = it.b.f.num_blocks;
  // int8 and int32 buffers live in 64-byte-aligned float storage.
  int8_t* kpack = reinterpret_cast<int8_t*>(scratch.kpack.get(static_cast<size_t>(num_blocks * 16 * D / 4)));
  float* kscale = scratch.kscale.get(static_cast<size_t>(num_blocks * 16));
  int32_t* kcomp = reinterpret_cast<int32_t*>(scratch.kcomp.get(static_cast<size_t>(num_blocks * 16)));
  it.kpack = kpack;
  it.kscale = kscale;
  it.kcomp = kcomp;
  it.qtile = reinterpret_cast<uint8_t*>(scratch.qtile.get(static_cast<size_t>(kTileRows512 * D / 4)));
  it.qfloat = scratch.qfloat.get(static_cast<size_t>(D));
  it.qscale = scratch.qscale.get(kTileRows512);
  int8_t* rows = reinterpret_cast<int8_t*>(scratch.rows.get(static_cast<size_t>((D + 63) / 64 * 256)));
  pack_int8_keys(s.k + head * D, s.kv_stride, D, it.b.f.num_keys, num_blocks, kpack, kscale, kcomp, rows);

  for (int64_t t = q0; t < q1;) {
    const int64_t rows = tile_rows(q1 - t);
    kTilesInt8[tile_index(rows)](it, s.q + t, s.out + t);
    t += rows;
  }
}

// ---------------------------------------------------------------------------------------------
// AMX-BF16 path of AttentionPrecision::kBf16 (head_dim % 32 == 0): the AVX512-BF16 path's operands and
// roundings (bf16 of the scaled query, of K, of V and of the softmax numerators; fp32 sums, softmax and
// normalisation), with both products on the tile unit, 16 query rows at a time. Layouts:
//   kpack  [key block][pair p][16 keys][2]      as the AVX512-BF16 path: 16 pairs x 16 keys is one B tile
//   qtile  [pair block c][row 0-15][16 pairs][2] one A tile per 32 head dims (rows past the queries zero)
//   scores [tile j % 2][key block][row 0-15][16] one C tile per key block
//   probs  [tile j % 2][32-key step][row 0-15][32 keys]  the numerators rounded to bf16: one A tile per step
//   vpack  [dim block][key pair][16 dims][2]     as the AVX512-BF16 path, key pairs padded to whole steps
//                                               with zeros: 16 pairs x 16 dims is one B tile
// Tiles: configuration from amx_tiles.h; Q·Kᵀ accumulates in tmm0, tmm5 and tmm6 (tmm1 query, tmm2-4 keys); P·V
// in tmm0-3 (four 16-dim blocks), tmm4 probabilities, tmm5-7 values.
constexpr int64_t kAmxRows = 16;
constexpr int64_t kQkGroupBlocks = 3;  // key blocks whose Q·Kᵀ score tiles accumulate side by side
constexpr int64_t kPvPassDims = 64;    // head dims of one P·V pass (four C tiles)

struct AmxAttentionScratch {
  Bf16Scratch b;
  AlignedFloats probs;
};

// The softmax of one query tile, run in small pieces between the tile products of other tiles (see
// attend_heads_amx_bf16): each row's max over the keys that attend, its numerators exp(score - max) rounded to
// bf16 straight into the P tiles (key blocks 2 st and 2 st + 1 are the pair halves of step st) and 1 / their
// sum. The same values and order of summation as the AVX512-BF16 path's softmax_numerators512.
class AmxSoftmax {
 public:
  // Starts a tile: f's scores ([key block][row 0-15][16]) become probs and inv_sum, spread over `calls` step()s.
  BORT_AMX_INLINE void reset(const Avx512Item& f, uint16_t* probs, float* inv_sum, int64_t steps, int64_t calls) {
    f_ = &f;
    probs_ = probs;
    inv_sum_ = inv_sum;
    steps_ = steps;
    row_ = 0;
    pos_ = 0;
    max_done_ = false;
    calls_ = std::max<int64_t>(calls, 1);
    // At most kMaxUnitsPerCall units between two groups of tile products; finish() does what is left.
    units_ = std::min(kAmxRows * (steps + (f.num_blocks + kMaxBlocks - 1) / kMaxBlocks), kMaxUnitsPerCall * calls_);
    credit_ = 0;
    lanes_ = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  }
  void stop() { row_ = kAmxRows; }
  // One call's share of the work, in units of a few dozen vector instructions, so that the products in flight
  // are never far behind in the instruction stream (a whole row at once hid half as much).
  BORT_AMX_INLINE void step() {
    for (credit_ += units_; credit_ >= calls_ && row_ < kAmxRows; credit_ -= calls_) unit();
  }
  BORT_AMX_INLINE void finish() {
    while (row_ < kAmxRows) unit();
  }

 private:
  static constexpr int64_t kMaxBlocks = 16;  // key blocks of the max pass per unit
  // More vector work than this between two groups of tile products starved the tile unit. Intel Xeon with AMX,
  // attention alone, one thread, 16 heads of 64 dims (BERT-large: ~8 units a call uncapped), before the pipeline /
  // uncapped / 4: b8 s128 2.15-2.19 / 2.23 / 1.99 ms, b1 s512 2.85-2.94 / 2.96-3.04 / 2.66-2.81 ms (5 level with 4,
  // 8 worse); Bort's 8 heads of 128 (~4 units a call) level.
  static constexpr int64_t kMaxUnitsPerCall = 4;

  BORT_AMX_INLINE __m512 scores(int64_t kb) const { return _mm512_load_ps(f_->scores + (kb * kAmxRows + row_) * 16); }
  BORT_AMX_INLINE __m512 numerators(int64_t kb) const {
    return _mm512_maskz_mov_ps(f_->attend[kb], simd::exp_ps(_mm512_sub_ps(scores(kb), m_)));
  }
  // Row row_'s max over the keys that attend, kMaxBlocks key blocks at a time; then its numerators a step (two
  // key blocks) at a time, rounded to bf16 into the P tiles; then 1 / their sum.
  BORT_AMX_INLINE void unit() {
    const Avx512Item& f = *f_;
    const int64_t nb = f.num_blocks;
    if (!max_done_) {
      const int64_t end = std::min(nb, pos_ + kMaxBlocks);
      for (int64_t kb = pos_; kb < end; ++kb) lanes_ = _mm512_mask_max_ps(lanes_, f.attend[kb], lanes_, scores(kb));
      pos_ = end;
      if (pos_ == nb) {
        m_ = _mm512_set1_ps(_mm512_reduce_max_ps(lanes_));
        sum0_ = sum1_ = _mm512_setzero_ps();  // two chains hide the add latency
        max_done_ = true;
        pos_ = 0;
      }
      return;
    }
    const int64_t st = pos_++;
    const __m512 p0 = numerators(2 * st);
    __m512 p1 = _mm512_setzero_ps();
    if (2 * st + 1 < nb) {
      p1 = numerators(2 * st + 1);
      sum1_ = _mm512_add_ps(sum1_, p1);
    }
    sum0_ = _mm512_add_ps(sum0_, p0);
    _mm512_store_si512(probs_ + (st * kAmxRows + row_) * 32, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
    if (pos_ < steps_) return;
    inv_sum_[row_] = 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum0_, sum1_));
    ++row_;
    pos_ = 0;
    max_done_ = false;
    lanes_ = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  }

  const Avx512Item* f_ = nullptr;
  uint16_t* probs_ = nullptr;
  float* inv_sum_ = nullptr;
  int64_t steps_ = 0, row_ = kAmxRows, pos_ = 0, calls_ = 1, units_ = 0, credit_ = 0;
  bool max_done_ = false;
  __m512 lanes_, m_, sum0_, sum1_;
};

// How many softmax.step() calls a tile's Q·Kᵀ and P·V make: one after each group of tile products.
inline int64_t qk_calls(int64_t num_blocks, int64_t head_dim) {
  return (num_blocks + kQkGroupBlocks - 1) / kQkGroupBlocks * (head_dim / 32);
}
inline int64_t pv_calls(int64_t steps, int64_t head_dim) { return (head_dim + kPvPassDims - 1) / kPvPassDims * steps; }

// Q·Kᵀ of the query tile in it.qtile into it.f.scores: one 16 x 16 score tile per key block, three key blocks at
// a time: the products into one score tile form a chain (each waits for the one before), so three independent
// chains keep the AMX unit busy (one chain left it waiting out each product's latency). Every score tile sees
// the same products in the same order.
BORT_AMX_INLINE void qk_tile_amx(const Bf16Item& it, AmxSoftmax& softmax) {
  const int64_t P = it.f.head_dim / 2, nb = it.f.num_blocks;
  for (int64_t kb = 0; kb < nb; kb += kQkGroupBlocks) {
    const int64_t group = std::min(kQkGroupBlocks, nb - kb);
    const uint16_t* k0 = it.kpack + kb * P * 32;
    _tile_zero(0);
    if (group > 1) _tile_zero(5);
    if (group > 2) _tile_zero(6);
    for (int64_t c = 0; c < P / 16; ++c) {
      const uint16_t* k = k0 + c * 16 * 32;
      _tile_loadd(1, it.qtile + c * kAmxRows * 32, 64);
      _tile_loadd(2, k, 64);
      _tile_dpbf16ps(0, 1, 2);
      if (group > 1) {
        _tile_loadd(3, k + P * 32, 64);
        _tile_dpbf16ps(5, 1, 3);
      }
      if (group > 2) {
        _tile_loadd(4, k + 2 * P * 32, 64);
        _tile_dpbf16ps(6, 1, 4);
      }
      softmax.step();  // plain vector code: it leaves the tiles alone
    }
    float* scores = it.f.scores + kb * kAmxRows * 16;
    _tile_stored(0, scores, 64);
    if (group > 1) _tile_stored(5, scores + kAmxRows * 16, 64);
    if (group > 2) _tile_stored(6, scores + 2 * kAmxRows * 16, 64);
  }
}

// P·V of a tile whose softmax is done (it.probs, inv_sum), normalised, plus the V bias, into the output rows;
// 64 head dims (four C tiles) at a time, D % 32 == 0 leaving 32 or 64 for the last pass.
BORT_AMX_INLINE void pv_tile_amx(const Bf16Item& it, int64_t v_stride, int64_t steps, const float* inv_sum,
                                 float* const* out_rows, int64_t rows, AmxSoftmax& softmax) {
  const int64_t D = it.f.head_dim;
  alignas(64) float acc[4][kAmxRows * 16];
  const float* bv = it.f.bv;
  for (int64_t d0 = 0; d0 < D; d0 += kPvPassDims) {
    const bool four = D - d0 >= kPvPassDims;
    _tile_zero(0);
    _tile_zero(1);
    if (four) {
      _tile_zero(2);
      _tile_zero(3);
    }
    const uint16_t* v = it.vpack + (d0 / 16) * v_stride;
    for (int64_t st = 0; st < steps; ++st, v += 16 * 32) {
      // V tiles rotate through 5-7, so a load need not wait for the product still reading its tile.
      _tile_loadd(4, it.probs + st * kAmxRows * 32, 64);
      _tile_loadd(5, v, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, v + v_stride, 64);
      _tile_dpbf16ps(1, 4, 6);
      if (four) {
        _tile_loadd(7, v + 2 * v_stride, 64);
        _tile_dpbf16ps(2, 4, 7);
        _tile_loadd(5, v + 3 * v_stride, 64);
        _tile_dpbf16ps(3, 4, 5);
      }
      softmax.step();
    }
    _tile_stored(0, acc[0], 64);
    _tile_stored(1, acc[1], 64);
    if (four) {
      _tile_stored(2, acc[2], 64);
      _tile_stored(3, acc[3], 64);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 inv = _mm512_set1_ps(inv_sum[r]);
      float* o = out_rows[r] + it.f.offset + d0;
      for (int n = 0; n < (four ? 4 : 2); ++n) {
        const __m512 b = bv ? _mm512_loadu_ps(bv + d0 + 16 * n) : _mm512_setzero_ps();
        _mm512_storeu_ps(o + 16 * n, _mm512_fmadd_ps(_mm512_load_ps(acc[n] + r * 16), inv, b));
      }
    }
  }
}

// Heads [h0, h1) of queries [q0, q1): K and V of every head packed first (each key's heads are one piece of its
// row), then query tile by query tile, head by head, so the query and output rows are also read and written in
// pieces of several heads. One head at a time, each key's and query's 512 bytes (Bort) were read alone from a 12 KB
// row and the loads waited on L3; pieces of several heads the hardware prefetchers follow, and software prefetches
// (kept for a single head) only waited for fill buffers there. Intel Xeon with AMX, Bort b8 s128: attention alone,
// one thread, 1.91-2.04 -> 1.61-1.69 ms; the four attention nodes of Bort int8, 2 threads, 4.65-4.79 -> 4.04-4.21 ms.
//
// The tiles (query tile x head) run as a pipeline: tile j's Q·Kᵀ and tile j - 2's P·V take turns on the AMX unit
// while the vector units run tile j - 1's softmax between their tile products (scores and P tiles are double
// buffered). One tile after another, the tile unit idled through each softmax and the vector units through the
// products. Intel Xeon with AMX, attention alone, one thread: b1 s512 2.27 -> 2.02-2.06 ms (the softmax had been
// 0.92 ms of it), b8 s128 1.53-1.65 -> 1.38-1.44 ms; Bort int8, 2 threads: b1 s512 15.5-16.3 -> 14.8-15.2 ms,
// b8 s512 118-120 -> 114-117 ms. The softmax handed over a whole row at a time hid about half as much.
BORT_AMX void attend_heads_amx_bf16(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t h0,
                                    int64_t h1, int64_t q0, int64_t q1) {
  if (s.keys.key_end == 0) {
    for (int64_t h = h0; h < h1; ++h) uniform_rows(s, sh, bias, h, q0, q1);
    return;
  }
  const int64_t D = sh.head_dim, heads = h1 - h0;
  thread_local AmxAttentionScratch scratch;
  Bf16Item first;
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(float));
  if (heads == 1)  // the first key block, while V is packed
    for (int64_t j = 0; j < std::min<int64_t>(16, s.keys.key_end); ++j)
      prefetch_row(s.k + j * s.kv_stride + h0 * D, row_bytes);
  // Scores for two tiles (tile_rows 2 x 16): [buffer][key block][row][16].
  const int64_t v_step = init_bf16_item(first, scratch.b, s, sh, bias, h0, 2 * kAmxRows, 2, heads);
  const int64_t num_blocks = first.f.num_blocks, num_keys = first.f.num_keys, k_step = num_blocks * 16 * D;
  uint16_t* kpack = reinterpret_cast<uint16_t*>(scratch.b.kpack.get(static_cast<size_t>(heads * k_step / 2)));
  first.kpack = kpack;
  first.qtile = reinterpret_cast<uint16_t*>(scratch.b.qtile.get(static_cast<size_t>(kAmxRows * D / 2)));
  if (heads == 1)
    for (int64_t t = q0; t < std::min(q1, q0 + kAmxRows); ++t) prefetch_row(s.q[t] + h0 * D, row_bytes);
  pack_bf16_keys(s.k + h0 * D, s.kv_stride, D, num_keys, num_blocks, kpack, heads, k_step);
  const int64_t steps = (num_keys + 31) / 32, v_stride = steps * 16 * 32;  // vpack: 2 x steps key blocks
  const int64_t probs_step = steps * kAmxRows * 32, scores_step = num_blocks * kAmxRows * 16;
  auto* probs = reinterpret_cast<uint16_t*>(scratch.probs.get(static_cast<size_t>(probs_step)));  // 2 buffers
  alignas(64) float inv_sum[2][kAmxRows];

  // Tile j: query tile q0 + (j / heads) * 16 of head h0 + j % heads, its scores and P tiles in buffer j % 2.
  const int64_t tiles = (q1 - q0 + kAmxRows - 1) / kAmxRows * heads;
  auto tile = [&](int64_t j) {
    Bf16Item it = first;
    select_head(it.f, sh, bias, h0 + j % heads);
    it.kpack = kpack + (j % heads) * k_step;
    it.vpack = first.vpack + (j % heads) * v_step;
    it.f.scores += (j % 2) * scores_step;
    it.probs = probs + (j % 2) * probs_step;
    return it;
  };
  auto query = [&](int64_t j) { return q0 + (j / heads) * kAmxRows; };
  const int64_t calls = qk_calls(num_blocks, D) + pv_calls(steps, D);
  ScopedTileConfig config;
  AmxSoftmax softmax;
  Bf16Item before;  // tile j - 1, whose softmax runs now
  for (int64_t j = 0; j < tiles + 2; ++j) {
    if (j >= 1 && j <= tiles) {
      before = tile(j - 1);
      softmax.reset(before.f, before.probs, inv_sum[(j - 1) % 2], steps, calls);
    } else {
      softmax.stop();
    }
    if (j < tiles) {
      const int64_t t = query(j);
      if (heads == 1)
        for (int64_t u = t + kAmxRows; u < std::min(q1, t + 2 * kAmxRows); ++u)
          prefetch_row(s.q[u] + h0 * D, row_bytes);
      const Bf16Item it = tile(j);
      fill_query_tile(it, s.q + t, std::min(kAmxRows, q1 - t), kAmxRows);
      qk_tile_amx(it, softmax);
    }
    if (j >= 2) {
      const int64_t t = query(j - 2);
      pv_tile_amx(tile(j - 2), v_stride, steps, inv_sum[j % 2], s.out + t, std::min(kAmxRows, q1 - t), softmax);
    }
    softmax.finish();
  }
}

#endif  // BORT_X86_64

#if BORT_AARCH64
// ---------------------------------------------------------------------------------------------
// NEON path (head_dim % 4 == 0), one query row at a time with the AVX2 algebra: the K bias is dropped (a
// per-row constant, which softmax ignores), the Q bias and the scale are folded into a copy of the query,
// the V bias is added after normalisation. Scores come four keys per step (four dot products sharing each
// query load), exp four lanes at a time, then P V key by key into the output row.
void attend_rows_neon(const SeqView& s, const AttentionShape& sh, const float* bias, int64_t head, int64_t q0,
                      int64_t q1) {
  const SeqKeys& keys = s.keys;
  if (keys.key_end == 0) return uniform_rows(s, sh, bias, head, q0, q1);
  const int64_t D = sh.head_dim, H = sh.hidden(), num_keys = keys.key_end, stride = s.kv_stride;
  const float* bq = bias ? bias + head * D : nullptr;
  const float* bv = bias ? bias + 2 * H + head * D : nullptr;
  const float* k_base = s.k + head * D;
  const float* v_base = s.v + head * D;
  thread_local std::vector<float> query, scores;
  query.resize(static_cast<size_t>(D));
  scores.resize(static_cast<size_t>(num_keys + 3));
  const float32x4_t scale = vdupq_n_f32(sh.scale);
  for (int64_t i = q0; i < q1; ++i) {
    const float* q = s.q[i] + head * D;
    for (int64_t d = 0; d < D; d += 4) {
      const float32x4_t qd = vld1q_f32(q + d);
      vst1q_f32(query.data() + d, vmulq_f32(bq ? vaddq_f32(qd, vld1q_f32(bq + d)) : qd, scale));
    }
    int64_t j = 0;
    for (; j + 4 <= num_keys; j += 4) {
      const float* k = k_base + j * stride;
      float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t d = 0; d < D; d += 4) {
        const float32x4_t qd = vld1q_f32(query.data() + d);
        a0 = vfmaq_f32(a0, qd, vld1q_f32(k + d));
        a1 = vfmaq_f32(a1, qd, vld1q_f32(k + stride + d));
        a2 = vfmaq_f32(a2, qd, vld1q_f32(k + 2 * stride + d));
        a3 = vfmaq_f32(a3, qd, vld1q_f32(k + 3 * stride + d));
      }
      vst1q_f32(scores.data() + j, vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)));
    }
    for (; j < num_keys; ++j) {
      const float* k = k_base + j * stride;
      float32x4_t a = vdupq_n_f32(0.0f);
      for (int64_t d = 0; d < D; d += 4) a = vfmaq_f32(a, vld1q_f32(query.data() + d), vld1q_f32(k + d));
      scores[j] = vaddvq_f32(a);
    }
    float max_score = -std::numeric_limits<float>::infinity();
    for (j = 0; j < num_keys; ++j)
      if (!keys.valid || keys.valid[j]) max_score = std::max(max_score, scores[j]);
    // exp over whole vectors (the padding past num_keys is computed and ignored), then masked keys get 0.
    const float32x4_t vmax = vdupq_n_f32(max_score);
    for (j = 0; j < num_keys; j += 4)
      vst1q_f32(scores.data() + j, simd::exp_f32x4(vsubq_f32(vld1q_f32(scores.data() + j), vmax)));
    float sum = 0.0f;
    for (j = 0; j < num_keys; ++j) {
      if (keys.valid && !keys.valid[j]) scores[j] = 0.0f;
      sum += scores[j];
    }
    float* o = s.out[i] + head * D;
    for (int64_t d = 0; d < D; d += 4) vst1q_f32(o + d, vdupq_n_f32(0.0f));
    for (j = 0; j < num_keys; ++j) {  // key-major so V rows are read contiguously
      if (scores[j] == 0.0f) continue;
      const float32x4_t p = vdupq_n_f32(scores[j]);
      const float* v = v_base + j * stride;
      for (int64_t d = 0; d < D; d += 4) vst1q_f32(o + d, vfmaq_f32(vld1q_f32(o + d), p, vld1q_f32(v + d)));
    }
    const float32x4_t inv_sum = vdupq_n_f32(1.0f / sum);
    for (int64_t d = 0; d < D; d += 4) {
      const float32x4_t od = vmulq_f32(vld1q_f32(o + d), inv_sum);
      vst1q_f32(o + d, bv ? vaddq_f32(od, vld1q_f32(bv + d)) : od);
    }
  }
}
#endif  // BORT_AARCH64

// Which core runs: a vector core needs head dims in whole registers of its width. A core with attend_heads
// takes several heads of a sequence at once (work items then hold whole heads while there are enough of them) and
// has no attend; the others take one head at a time through attend.
using AttendFn = void (*)(const SeqView&, const AttentionShape&, const float*, int64_t, int64_t, int64_t);
using AttendHeadsFn = void (*)(const SeqView&, const AttentionShape&, const float*, int64_t, int64_t, int64_t, int64_t);
struct AttentionCore {
  Isa isa;
  int64_t lanes;      // head_dim must be a multiple of this
  int64_t tile_rows;  // queries per register tile: work is split in whole tiles
  AttendFn attend;
  AttendHeadsFn attend_heads = nullptr;
};
constexpr AttentionCore kAttentionCores[] = {
#if BORT_X86_64
    {Isa::kAvx512, 16, kTileRows512, attend_rows_avx512},
    {Isa::kAvx2, 8, kTileRows, attend_rows_avx2},
#endif
#if BORT_AARCH64
    {Isa::kNeon, 4, 1, attend_rows_neon},
#endif
    {Isa::kScalar, 1, 1, attend_rows_scalar}};
// AttentionPrecision::kBf16: its AVX512-BF16 path, else the fp32 vector paths, and its own scalar reference.
constexpr AttentionCore kAttentionCoresBf16[] = {
#if BORT_X86_64
    {Isa::kAmx, 32, kAmxRows, nullptr, attend_heads_amx_bf16},
    {Isa::kAvx512Bf16, 32, kTileRows512, attend_rows_avx512_bf16},
    {Isa::kAvx512, 16, kTileRows512, attend_rows_avx512},
    {Isa::kAvx2, 8, kTileRows, attend_rows_avx2},
#endif
#if BORT_AARCH64
    {Isa::kNeon, 4, 1, attend_rows_neon},
#endif
    {Isa::kScalar, 1, 1, attend_rows_scalar_bf16}};

// AttentionPrecision::kInt8: vpdpbusd Q K^T with AVX512-BF16 P V (the AVX512-BF16 level includes VNNI), else the fp32
// vector paths, and its own scalar reference.
constexpr AttentionCore kAttentionCoresInt8[] = {
#if BORT_X86_64
    {Isa::kAvx512Bf16, 32, kTileRows512, attend_rows_avx512_int8},
    {Isa::kAvx512, 16, kTileRows512, attend_rows_avx512},
    {Isa::kAvx2, 8, kTileRows, attend_rows_avx2},
#endif
#if BORT_AARCH64
    {Isa::kNeon, 4, 1, attend_rows_neon},
#endif
    {Isa::kScalar, 1, 1, attend_rows_scalar_int8}};

// Splits the work into ~4 tasks per thread (the pool hands them out dynamically, which evens out threads slowed by
// other load), counted in query rows x heads, but never below 24 rows per task: each task re-packs K and V
// (2 x S x D a head). With 8 tasks per thread a text's heads were split in two at b1 s128 and b1 s512, packing K and
// V twice (Bort int8, Intel Xeon with AMX, 2 threads: 1.03x and 1.07x faster at 4). With group_heads a task holds
// several whole heads of a sequence while that leaves ~4 tasks per thread (a head of few queries costs its K and V
// packing whatever its rows: one text's CLS row in 8 heads is 8 tasks) and their packed bf16 K and V fit
// kGroupedPackBytes; one head otherwise. A head's queries are split in whole tiles of the path that runs them.
std::vector<WorkItem> plan_work(const std::vector<SeqView>& seqs, const AttentionShape& sh, size_t concurrency,
                                int64_t tile, bool group_heads) {
  // A quarter of a 2 MB L2: the heads' K and V are read again for every query tile (Bort b8 s512, 8 heads of
  // 512 keys, 2 MB: 0.91-0.94x in the model; 8 heads of 128 keys, 512 KB: 1.11-1.15x its attention nodes).
  constexpr int64_t kGroupedPackBytes = int64_t{512} << 10;
  const int64_t num_heads = sh.num_heads;
  int64_t total_rows = 0, total_heads = 0;
  for (const SeqView& s : seqs) {
    total_rows += s.num_queries * num_heads;
    total_heads += s.num_queries > 0 ? num_heads : 0;
  }
  int64_t chunk = std::numeric_limits<int64_t>::max(), max_group = num_heads;
  if (concurrency > 1) {
    const int64_t target_tasks = static_cast<int64_t>(4 * concurrency);
    chunk = std::max<int64_t>(24, (total_rows + target_tasks - 1) / target_tasks);
    chunk = (chunk + tile - 1) / tile * tile;
    max_group = total_heads / target_tasks;
  }
  if (!group_heads) max_group = 1;
  std::vector<WorkItem> items;
  for (int64_t s = 0; s < static_cast<int64_t>(seqs.size()); ++s) {
    const int64_t n = seqs[s].num_queries;
    if (n == 0) continue;
    const int64_t pack_bytes = std::max<int64_t>(1, 2 * seqs[s].keys.key_end * sh.head_dim * 2);
    const int64_t group =
        std::clamp<int64_t>(std::min({chunk / n, kGroupedPackBytes / pack_bytes, max_group}), 1, num_heads);
    for (int64_t h = 0; h < num_heads; h += group)
      for (int64_t q = 0; q < n; q += std::min(chunk, n - q))
        items.push_back({s, h, std::min(num_heads, h + group), q, q + std::min(chunk, n - q)});
  }
  return items;
}

void run_attention(const std::vector<SeqView>& seqs, const AttentionShape& sh, const float* bias,
                   const ParallelFor& pf) {
  const auto usable = [&](const AttentionCore& c) { return sh.head_dim % c.lanes == 0; };
  const AttentionCore& core =
      sh.precision == AttentionPrecision::kBf16   ? select_entry(active_isa(), kAttentionCoresBf16, usable)
      : sh.precision == AttentionPrecision::kInt8 ? select_entry(active_isa(), kAttentionCoresInt8, usable)
                                                  : select_entry(active_isa(), kAttentionCores, usable);
  const std::vector<WorkItem> items =
      plan_work(seqs, sh, pf.concurrency(), core.tile_rows, core.attend_heads != nullptr);
  pf.run(items.size(), [&](size_t i) {
    const WorkItem& w = items[i];
    if (core.attend_heads != nullptr)
      return core.attend_heads(seqs[w.seq], sh, bias, w.head_begin, w.head_end, w.q_begin, w.q_end);
    for (int64_t h = w.head_begin; h < w.head_end; ++h) core.attend(seqs[w.seq], sh, bias, h, w.q_begin, w.q_end);
  });
}

template <typename T>
int64_t mask_value(const void* data, int64_t i) {
  return static_cast<int64_t>(static_cast<const T*>(data)[i]);
}

}  // namespace

AttentionPrecision attention_precision_from_name(const std::string& name) {
  if (name == "fp32") return AttentionPrecision::kFp32;
  if (name == "bf16") return AttentionPrecision::kBf16;
  if (name == "int8") return AttentionPrecision::kInt8;
  throw std::invalid_argument("attention precision must be 'fp32', 'bf16' or 'int8', got '" + name + "'");
}

const char* attention_precision_name(AttentionPrecision precision) {
  switch (precision) {
    case AttentionPrecision::kBf16: return "bf16";
    case AttentionPrecision::kInt8: return "int8";
    case AttentionPrecision::kFp32: break;
  }
  return "fp32";
}

void attention_padded(const float* qkv, const float* bias, const AttentionMask& mask, float* out, int64_t batch,
                      int64_t seq, const AttentionShape& shape, const ParallelFor& pf) {
  if (batch <= 0 || seq <= 0) return;
  const int64_t H = shape.hidden(), rows = batch * seq;
  auto value = [&](int64_t i) {
    return mask.is_int64 ? mask_value<int64_t>(mask.data, i) : mask_value<int32_t>(mask.data, i);
  };
  std::vector<const float*> q_rows(static_cast<size_t>(rows));
  std::vector<float*> out_rows(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    q_rows[r] = qkv + r * 3 * H;
    out_rows[r] = out + r * H;
  }
  std::vector<uint8_t> valid;
  std::vector<SeqView> seqs(static_cast<size_t>(batch));
  if (mask.kind == MaskKind::kKeyMask) valid.resize(static_cast<size_t>(rows));
  for (int64_t b = 0; b < batch; ++b) {
    SeqView& v = seqs[b];
    v.k = qkv + b * seq * 3 * H + H;
    v.v = v.k + H;
    v.kv_stride = 3 * H;
    v.len = seq;
    v.q = q_rows.data() + b * seq;
    v.out = out_rows.data() + b * seq;
    v.num_queries = seq;
    switch (mask.kind) {
      case MaskKind::kNone: v.keys.key_end = seq; break;
      case MaskKind::kLengths:
        // Lengths come from the model's inputs: clamp instead of trusting them as bounds.
        v.keys.key_end = std::min<int64_t>(std::max<int64_t>(value(b), 0), seq);
        break;
      case MaskKind::kKeyMask: {
        uint8_t* row = valid.data() + b * seq;
        int64_t key_end = 0;
        for (int64_t j = 0; j < seq; ++j) {
          row[j] = value(b * seq + j) != 0;
          if (row[j]) key_end = j + 1;
        }
        v.keys.key_end = key_end;
        // A mask that is a plain prefix needs no per-key test in the kernel.
        const bool prefix = std::all_of(row, row + key_end, [](uint8_t x) { return x != 0; });
        v.keys.valid = prefix ? nullptr : row;
        break;
      }
    }
  }
  run_attention(seqs, shape, bias, pf);
}

void check_cu_seqlens(const int64_t* cu_seqlens, int64_t num_seqs, int64_t tokens) {
  if (num_seqs < 0) throw std::invalid_argument("cu_seqlens must have at least one element");
  if (cu_seqlens[0] != 0) throw std::invalid_argument("cu_seqlens[0] must be 0, got " + std::to_string(cu_seqlens[0]));
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (cu_seqlens[s + 1] < cu_seqlens[s])
      throw std::invalid_argument("cu_seqlens must be non-decreasing (cu_seqlens[" + std::to_string(s + 1) + "] = " +
                                  std::to_string(cu_seqlens[s + 1]) + " < " + std::to_string(cu_seqlens[s]) + ")");
  }
  if (cu_seqlens[num_seqs] != tokens)
    throw std::invalid_argument("cu_seqlens[-1] = " + std::to_string(cu_seqlens[num_seqs]) +
                                " must equal the number of tokens " + std::to_string(tokens));
}

void check_query_rows(const int64_t* rows, int64_t count, int64_t tokens) {
  for (int64_t i = 0; i < count; ++i)
    if (rows[i] < 0 || rows[i] >= tokens)
      throw std::invalid_argument("query_rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                  " is not a token index in [0, " + std::to_string(tokens) + ")");
}

void attention_packed(const float* qkv, const float* bias, const int64_t* cu_seqlens, int64_t num_seqs,
                      const PackedQueries& queries, float* out, int64_t tokens, const AttentionShape& shape,
                      const ParallelFor& pf) {
  check_cu_seqlens(cu_seqlens, num_seqs, tokens);
  const int64_t H = shape.hidden();
  const bool separate_q = queries.separate_values;
  if (separate_q && !queries.selected)
    throw std::invalid_argument("query values need query_rows to say which tokens they belong to");
  if (queries.selected && queries.count < 0)
    throw std::invalid_argument("query_rows count must be >= 0, got " + std::to_string(queries.count));
  const int64_t kv_stride = separate_q ? 2 * H : 3 * H;
  const float* k_base = separate_q ? qkv : qkv + H;
  const int64_t num_queries = queries.selected ? queries.count : tokens;

  // Query i (output row i) belongs to the sequence holding token rows[i]; group queries by sequence.
  if (queries.selected) check_query_rows(queries.rows, queries.count, tokens);
  std::vector<int64_t> seq_of(static_cast<size_t>(num_queries));
  for (int64_t i = 0; i < num_queries; ++i) {
    const int64_t row = queries.selected ? queries.rows[i] : i;
    seq_of[i] = std::upper_bound(cu_seqlens, cu_seqlens + num_seqs + 1, row) - cu_seqlens - 1;
  }
  std::vector<int64_t> first(static_cast<size_t>(num_seqs + 1), 0);  // counting sort by sequence
  for (int64_t i = 0; i < num_queries; ++i) ++first[seq_of[i] + 1];
  for (int64_t s = 0; s < num_seqs; ++s) first[s + 1] += first[s];
  std::vector<const float*> q_rows(static_cast<size_t>(num_queries));
  std::vector<float*> out_rows(static_cast<size_t>(num_queries));
  std::vector<int64_t> fill(first.begin(), first.end() - 1);
  for (int64_t i = 0; i < num_queries; ++i) {
    const int64_t row = queries.selected ? queries.rows[i] : i;
    const int64_t slot = fill[seq_of[i]]++;
    q_rows[slot] = separate_q ? queries.values + i * H : qkv + row * 3 * H;
    out_rows[slot] = out + i * H;
  }
  std::vector<SeqView> seqs(static_cast<size_t>(num_seqs));
  for (int64_t s = 0; s < num_seqs; ++s) {
    SeqView& v = seqs[s];
    v.k = k_base + cu_seqlens[s] * kv_stride;
    v.v = v.k + H;
    v.kv_stride = kv_stride;
    v.len = cu_seqlens[s + 1] - cu_seqlens[s];
    v.keys.key_end = v.len;
    v.q = q_rows.data() + first[s];
    v.out = out_rows.data() + first[s];
    v.num_queries = first[s + 1] - first[s];
  }
  run_attention(seqs, shape, bias, pf);
}

}  // namespace bort
