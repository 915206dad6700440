// Shape and attribute validation shared by the pybind11 functions and the onnxruntime ops, so both
// front ends accept exactly the same inputs and report the same messages. Every check throws
// std::invalid_argument (pybind11 turns it into ValueError; the ORT ops into an error status).
// Dtypes are checked by each front end (pybind converts, ORT must reject).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention.h"
#include "dequantize_rows.h"

namespace bort {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);

struct AttentionDims {
  int64_t batch = 0;
  int64_t seq = 0;
  AttentionShape shape;
  MaskKind mask_kind = MaskKind::kNone;
};

// The most bytes one output may take (1 TiB): beyond any real model, and the largest allocation AddressSanitizer
// serves, so sanitizer builds refuse absurd outputs as release builds do instead of aborting.
constexpr int64_t kMaxOutputBytes = int64_t{1} << 40;

// An output of `shape` and `element_size`-byte elements fits kMaxOutputBytes; else the error names the op and output.
void check_output_size(const char* op, const char* output, const Shape& shape, int64_t element_size);

// qkv [B, S, 3H]; bias [3H] or null; mask [B, S] (key mask), [B] (lengths) or null (none).
// scale: nullptr = 1/sqrt(head_dim).
AttentionDims check_attention(const Shape& qkv, const Shape* bias, const Shape* mask, int64_t num_heads,
                              const float* scale);

struct PackedAttentionDims {
  int64_t tokens = 0;
  int64_t num_seqs = 0;
  int64_t num_queries = 0;  // output rows: query_rows' length (0 when it is present but empty), else tokens
  AttentionShape shape;
};

// qkv [T, 3H] (or K | V [T, 2H] when query is given); bias [3H] or null; cu_seqlens [num_seqs + 1];
// query_rows [Q] or null; query [Q, H] or null (needs query_rows). Values are checked by the kernel.
PackedAttentionDims check_packed_attention(const Shape& qkv, const Shape* bias, const Shape& cu_seqlens,
                                           const Shape* query_rows, const Shape* query, int64_t num_heads,
                                           const float* scale);

struct RowsDims {
  int64_t rows = 0;
  int64_t width = 0;
};

// x [..., N], bias [N].
RowsDims check_bias_gelu(const Shape& x, const Shape& bias);

// x [..., K].
RowsDims check_quantize_rows(const Shape& x);

// A linear op's weight: [K, N] with 0 <= K, N < 2^48 (LinearBf16, LinearInt8).
void check_linear_weight(const char* op, const Shape& weight);
// LinearBf16: weight as check_linear_weight; x [..., K]; bias [N] or null. Returns x's rows and width K.
RowsDims check_linear_bf16(const Shape& x, const Shape& weight, const Shape* bias);

// acc [..., N]; row_scale and row_zero_point acc's leading shape; weight_scale, weight_colsum [N]; bias [N] or null.
// The skip + LayerNorm epilogue: skip (acc's shape) or null; gamma [N], required with skip; beta and skip_scale
// [N] or null; gamma, beta and skip_scale are rejected without skip, and so is skip with the GELU activation.
// epsilon finite and >= 0.
RowsDims check_dequantize_rows(const Shape& acc, const Shape& row_scale, const Shape& row_zero_point,
                               const Shape& weight_scale, const Shape& weight_colsum, const Shape* bias,
                               const Shape* skip, const Shape* gamma, const Shape* beta, const Shape* skip_scale,
                               Activation activation, float epsilon);

// Which of DequantizeRows' outputs are requested: y (float) and the requantized y_quantized, y_scale and
// y_zero_point, which come all together or not at all; at least one output.
void check_dequantize_rows_outputs(bool y, bool y_quantized, bool y_scale, bool y_zero_point);

struct LinearInt8Dims {
  int64_t rows = 0, k = 0, n = 0;
  Shape output;  // the input's leading shape + [N]
};

// Exactly one input form: x [..., K] (float rows) or x_quantized [..., K] with x_scale and x_zero_point of
// its leading shape. weight [K, N]; weight_scale [N]; bias [N] or null; the skip + LayerNorm epilogue as in
// check_dequantize_rows with skip of the output's shape [..., N].
LinearInt8Dims check_linear_int8(const Shape* x, const Shape* x_quantized, const Shape* x_scale,
                                 const Shape* x_zero_point, const Shape& weight, const Shape& weight_scale,
                                 const Shape* bias, const Shape* skip, const Shape* gamma, const Shape* beta,
                                 const Shape* skip_scale, Activation activation, float epsilon);

// LinearInt8's outputs, as check_dequantize_rows_outputs.
void check_linear_int8_outputs(bool y, bool y_quantized, bool y_scale, bool y_zero_point);

// x [..., H], skip same shape as x, gamma [H], beta/bias/skip_scale [H] or null.
RowsDims check_skip_layernorm(const Shape& x, const Shape& skip, const Shape& gamma, const Shape* beta,
                              const Shape* bias, const Shape* skip_scale, float epsilon);

// EmbedLayerNormInt8 / EmbedLayerNormBf16 (`op` names it in errors): input_ids and position_ids [T] (the same
// length); word [V, H]; position [P, H]; word_scale [V] and position_scale [P] for int8 tables (null for bf16 ones);
// gamma [H]; beta [H] or null; epsilon finite and >= 0. Returns T rows of width H. The index values are checked by
// check_embedding_indices.
RowsDims check_embed_layernorm(const char* op, const Shape& input_ids, const Shape& position_ids, const Shape& word,
                               const Shape* word_scale, const Shape& position, const Shape* position_scale,
                               const Shape& gamma, const Shape* beta, float epsilon);
// Every ids[i] indexes one of a table's `rows` rows; else the error names op, `what`, i and the value.
void check_embedding_indices(const char* op, const char* what, const int64_t* ids, int64_t count, int64_t rows);

}  // namespace bort
