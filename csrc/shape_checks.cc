#include "shape_checks.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>

namespace bort {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void check_vector(const char* op, const char* name, const Shape* s, int64_t expected) {
  if (s == nullptr) return;
  if (s->size() != 1 || (*s)[0] != expected)
    fail(std::string(op) + ": " + name + " must have shape [" + std::to_string(expected) + "], got " + shape_str(*s));
}

// A LayerNorm's epsilon (LinearInt8 / DequantizeRows' epilogue, SkipLayerNorm, the embedding ops).
void check_epsilon(const char* op, float epsilon) {
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon))
    fail(std::string(op) + ": epsilon must be finite and >= 0, got " + std::to_string(epsilon));
}

AttentionShape check_heads(const char* op, int64_t three_h, int64_t num_heads, const float* scale) {
  if (num_heads <= 0) fail(std::string(op) + ": num_heads must be positive, got " + std::to_string(num_heads));
  if (three_h <= 0 || three_h % 3 != 0)
    fail(std::string(op) + ": last dimension of qkv must be 3 * hidden (a positive multiple of 3), got " +
         std::to_string(three_h));
  const int64_t hidden = three_h / 3;
  if (hidden % num_heads != 0)
    fail(std::string(op) + ": hidden size " + std::to_string(hidden) + " is not divisible by num_heads " +
         std::to_string(num_heads));
  AttentionShape shape;
  shape.num_heads = num_heads;
  shape.head_dim = hidden / num_heads;
  if (scale != nullptr) {
    if (!std::isfinite(*scale)) fail(std::string(op) + ": scale must be finite, got " + std::to_string(*scale));
    shape.scale = *scale;
  } else {
    shape.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  }
  return shape;
}

// [..., width] → rows x width.
RowsDims rows_of(const char* op, const char* name, const Shape& x) {
  if (x.empty()) fail(std::string(op) + ": " + name + " must have rank >= 1, got a scalar");
  RowsDims dims;
  dims.width = x.back();
  dims.rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i)
    if (__builtin_mul_overflow(dims.rows, x[i], &dims.rows))  // only an empty tensor can claim such a shape
      fail(std::string(op) + ": " + name + " shape " + shape_str(x) + " is too large");
  return dims;
}

}  // namespace

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void check_output_size(const char* op, const char* output, const Shape& shape, int64_t element_size) {
  int64_t bytes = element_size;
  bool overflow = false;
  for (int64_t d : shape) {
    if (d == 0) return;  // empty: no bytes at all, whatever the other dimensions claim
    overflow = overflow || __builtin_mul_overflow(bytes, d, &bytes);
  }
  if (overflow || bytes > kMaxOutputBytes)
    fail(std::string(op) + ": output '" + output + "' of shape " + shape_str(shape) + " would take more than " +
         std::to_string(kMaxOutputBytes) + " bytes");
}

AttentionDims check_attention(const Shape& qkv, const Shape* bias, const Shape* mask, int64_t num_heads,
                              const float* scale) {
  const char* op = "FusedAttention";
  if (qkv.size() != 3) fail(std::string(op) + ": qkv must have rank 3 [batch, seq, 3*hidden], got " + shape_str(qkv));
  AttentionDims dims;
  dims.batch = qkv[0];
  dims.seq = qkv[1];
  dims.shape = check_heads(op, qkv[2], num_heads, scale);
  check_vector(op, "bias", bias, qkv[2]);
  if (mask == nullptr) {
    dims.mask_kind = MaskKind::kNone;
  } else if (mask->size() == 2) {
    if ((*mask)[0] != dims.batch || (*mask)[1] != dims.seq)
      fail(std::string(op) + ": mask must have shape [batch, seq] = [" + std::to_string(dims.batch) + ", " +
           std::to_string(dims.seq) + "] or [batch], got " + shape_str(*mask));
    dims.mask_kind = MaskKind::kKeyMask;
  } else if (mask->size() == 1) {
    if ((*mask)[0] != dims.batch)
      fail(std::string(op) + ": a rank-1 mask holds one length per sequence and must have shape [" +
           std::to_string(dims.batch) + "], got " + shape_str(*mask));
    dims.mask_kind = MaskKind::kLengths;
  } else {
    fail(std::string(op) + ": mask must have rank 2 [batch, seq] or rank 1 [batch], got " + shape_str(*mask));
  }
  return dims;
}

PackedAttentionDims check_packed_attention(const Shape& qkv, const Shape* bias, const Shape& cu_seqlens,
                                           const Shape* query_rows, const Shape* query, int64_t num_heads,
                                           const float* scale) {
  const char* op = "PackedAttention";
  PackedAttentionDims dims;
  if (query == nullptr) {
    if (qkv.size() != 2) fail(std::string(op) + ": qkv must have rank 2 [tokens, 3*hidden], got " + shape_str(qkv));
    dims.shape = check_heads(op, qkv[1], num_heads, scale);
  } else {
    if (query_rows == nullptr) fail(std::string(op) + ": query needs query_rows (the tokens it belongs to)");
    if (query->size() != 2)
      fail(std::string(op) + ": query must have rank 2 [queries, hidden], got " + shape_str(*query));
    const int64_t hidden = (*query)[1];
    // An empty query may claim any width: bound it before 2 * hidden and 3 * hidden are formed.
    if (hidden <= 0 || hidden > std::numeric_limits<int64_t>::max() / 3)
      fail(std::string(op) + ": query's width (hidden) must be positive and at most 2^63 / 3, got " +
           std::to_string(hidden));
    if (qkv.size() != 2 || qkv[1] != 2 * hidden)
      fail(std::string(op) + ": with a separate query the first input holds K | V and must have shape [tokens, " +
           std::to_string(2 * hidden) + "], got " + shape_str(qkv));
    dims.shape = check_heads(op, 3 * hidden, num_heads, scale);
  }
  dims.tokens = qkv[0];
  check_vector(op, "bias", bias, 3 * dims.shape.hidden());
  if (cu_seqlens.size() != 1 || cu_seqlens[0] < 1)
    fail(std::string(op) + ": cu_seqlens must have shape [num_seqs + 1] with at least one element, got " +
         shape_str(cu_seqlens));
  dims.num_seqs = cu_seqlens[0] - 1;
  dims.num_queries = dims.tokens;
  if (query_rows != nullptr) {
    if (query_rows->size() != 1) fail(std::string(op) + ": query_rows must have rank 1, got " + shape_str(*query_rows));
    dims.num_queries = (*query_rows)[0];
    if (query != nullptr && (*query)[0] != dims.num_queries)
      fail(std::string(op) + ": query must have one row per query_rows entry (" + std::to_string(dims.num_queries) +
           "), got " + shape_str(*query));
  }
  return dims;
}

RowsDims check_bias_gelu(const Shape& x, const Shape& bias) {
  const char* op = "BiasGelu";
  const RowsDims dims = rows_of(op, "x", x);
  check_vector(op, "bias", &bias, dims.width);
  return dims;
}

RowsDims check_quantize_rows(const Shape& x) { return rows_of("QuantizeRows", "x", x); }

void check_linear_weight(const char* op, const Shape& weight) {
  if (weight.size() != 2) fail(std::string(op) + ": weight must have shape [K, N] (rank 2), got " + shape_str(weight));
  // An empty weight may claim any K or N; packing rounds both up, so they are bounded far from int64 overflow.
  constexpr int64_t kMaxDim = int64_t{1} << 48;
  if (weight[0] < 0 || weight[1] < 0 || weight[0] >= kMaxDim || weight[1] >= kMaxDim)
    fail(std::string(op) + ": weight dimensions K and N must be in [0, 2^48), got " + shape_str(weight));
}

RowsDims check_linear_bf16(const Shape& x, const Shape& weight, const Shape* bias) {
  const char* op = "LinearBf16";
  check_linear_weight(op, weight);
  const RowsDims dims = rows_of(op, "x", x);
  if (dims.width != weight[0])
    fail(std::string(op) + ": x's last dimension " + std::to_string(dims.width) + " does not match weight " +
         shape_str(weight) + " (expected [..., " + std::to_string(weight[0]) + "])");
  check_vector(op, "bias", bias, weight[1]);
  return dims;
}

namespace {

// The epilogue inputs shared by DequantizeRows and LinearInt8, for an output of shape `out` ([..., width]).
void check_epilogue(const char* op, const char* out_name, const Shape& out, int64_t width, const Shape* bias,
                    const Shape* skip, const Shape* gamma, const Shape* beta, const Shape* skip_scale,
                    Activation activation, float epsilon) {
  check_vector(op, "bias", bias, width);
  if (skip == nullptr) {
    // Without skip these inputs would be silently ignored: a graph that passes them meant something else.
    const std::pair<const char*, const Shape*> layernorm_inputs[] = {
        {"gamma", gamma}, {"beta", beta}, {"skip_scale", skip_scale}};
    for (const auto& [name, shape] : layernorm_inputs)
      if (shape != nullptr)
        fail(std::string(op) + ": " + name +
             " belongs to the skip + LayerNorm epilogue and needs skip, which is absent");
  } else {
    if (*skip != out)
      fail(std::string(op) + ": skip must have the shape of " + out_name + " " + shape_str(out) + ", got " +
           shape_str(*skip));
    if (gamma == nullptr) fail(std::string(op) + ": skip needs gamma (the LayerNorm scale), which is absent");
    if (activation == Activation::kGelu)
      fail(std::string(op) +
           ": activation 'gelu' cannot be combined with skip (there is no GELU + LayerNorm epilogue)");
  }
  check_vector(op, "gamma", gamma, width);
  check_vector(op, "beta", beta, width);
  check_vector(op, "skip_scale", skip_scale, width);
  check_epsilon(op, epsilon);
}

void check_row_quantization(const char* op, const char* what, const Shape& leading, const Shape& scale,
                            const Shape& zero_point, const char* scale_name, const char* zero_point_name) {
  if (scale != leading)
    fail(std::string(op) + ": " + scale_name + " must have " + what + "'s leading shape " + shape_str(leading) +
         ", got " + shape_str(scale));
  if (zero_point != leading)
    fail(std::string(op) + ": " + zero_point_name + " must have " + what + "'s leading shape " + shape_str(leading) +
         ", got " + shape_str(zero_point));
}

void check_requantized_outputs(const char* op, bool y, bool y_quantized, bool y_scale, bool y_zero_point) {
  if (y_quantized != y_scale || y_quantized != y_zero_point)
    fail(std::string(op) +
         ": the requantized outputs y_quantized, y_scale and y_zero_point must be requested "
         "together or not at all (requested: y_quantized " +
         (y_quantized ? "yes" : "no") + ", y_scale " + (y_scale ? "yes" : "no") + ", y_zero_point " +
         (y_zero_point ? "yes" : "no") + ")");
  if (!y && !y_quantized) fail(std::string(op) + ": no output is requested (want y, the requantized outputs, or both)");
}

}  // namespace

RowsDims check_dequantize_rows(const Shape& acc, const Shape& row_scale, const Shape& row_zero_point,
                               const Shape& weight_scale, const Shape& weight_colsum, const Shape* bias,
                               const Shape* skip, const Shape* gamma, const Shape* beta, const Shape* skip_scale,
                               Activation activation, float epsilon) {
  const char* op = "DequantizeRows";
  const RowsDims dims = rows_of(op, "acc", acc);
  check_row_quantization(op, "acc", Shape(acc.begin(), acc.end() - 1), row_scale, row_zero_point, "row_scale",
                         "row_zero_point");
  check_vector(op, "weight_scale", &weight_scale, dims.width);
  check_vector(op, "weight_colsum", &weight_colsum, dims.width);
  check_epilogue(op, "acc", acc, dims.width, bias, skip, gamma, beta, skip_scale, activation, epsilon);
  return dims;
}

void check_dequantize_rows_outputs(bool y, bool y_quantized, bool y_scale, bool y_zero_point) {
  check_requantized_outputs("DequantizeRows", y, y_quantized, y_scale, y_zero_point);
}

LinearInt8Dims check_linear_int8(const Shape* x, const Shape* x_quantized, const Shape* x_scale,
                                 const Shape* x_zero_point, const Shape& weight, const Shape& weight_scale,
                                 const Shape* bias, const Shape* skip, const Shape* gamma, const Shape* beta,
                                 const Shape* skip_scale, Activation activation, float epsilon) {
  const char* op = "LinearInt8";
  if ((x == nullptr) == (x_quantized == nullptr))
    fail(std::string(op) +
         ": give exactly one input form: x (float rows) or x_quantized (uint8 rows with x_scale "
         "and x_zero_point)");
  const Shape& in = x != nullptr ? *x : *x_quantized;
  const char* in_name = x != nullptr ? "x" : "x_quantized";
  const RowsDims rows = rows_of(op, in_name, in);
  const Shape leading(in.begin(), in.end() - 1);
  if (x_quantized != nullptr) {
    if (x_scale == nullptr || x_zero_point == nullptr)
      fail(std::string(op) + ": x_quantized needs x_scale and x_zero_point (its rows' quantization)");
    check_row_quantization(op, "x_quantized", leading, *x_scale, *x_zero_point, "x_scale", "x_zero_point");
  } else if (x_scale != nullptr || x_zero_point != nullptr) {
    fail(std::string(op) + ": x_scale and x_zero_point belong to x_quantized; float x is quantized by the op");
  }
  check_linear_weight(op, weight);
  if (weight[0] != rows.width)
    fail(std::string(op) + ": weight has " + std::to_string(weight[0]) + " rows but the input rows have " +
         std::to_string(rows.width) + " values (" + in_name + " " + shape_str(in) + ", weight " + shape_str(weight) +
         ")");
  LinearInt8Dims dims;
  dims.rows = rows.rows;
  dims.k = weight[0];
  dims.n = weight[1];
  dims.output = leading;
  dims.output.push_back(dims.n);
  check_vector(op, "weight_scale", &weight_scale, dims.n);
  check_epilogue(op, "the output", dims.output, dims.n, bias, skip, gamma, beta, skip_scale, activation, epsilon);
  return dims;
}

void check_linear_int8_outputs(bool y, bool y_quantized, bool y_scale, bool y_zero_point) {
  check_requantized_outputs("LinearInt8", y, y_quantized, y_scale, y_zero_point);
}

RowsDims check_skip_layernorm(const Shape& x, const Shape& skip, const Shape& gamma, const Shape* beta,
                              const Shape* bias, const Shape* skip_scale, float epsilon) {
  const char* op = "SkipLayerNorm";
  const RowsDims dims = rows_of(op, "x", x);
  if (skip != x) fail(std::string(op) + ": skip must have the shape of x " + shape_str(x) + ", got " + shape_str(skip));
  check_vector(op, "gamma", &gamma, dims.width);
  check_vector(op, "beta", beta, dims.width);
  check_vector(op, "bias", bias, dims.width);
  check_vector(op, "skip_scale", skip_scale, dims.width);
  check_epsilon(op, epsilon);
  return dims;
}

RowsDims check_embed_layernorm(const char* op, const Shape& input_ids, const Shape& position_ids, const Shape& word,
                               const Shape* word_scale, const Shape& position, const Shape* position_scale,
                               const Shape& gamma, const Shape* beta, float epsilon) {
  if (input_ids.size() != 1) fail(std::string(op) + ": input_ids must have rank 1, got " + shape_str(input_ids));
  if (position_ids != input_ids)
    fail(std::string(op) + ": position_ids must have the shape of input_ids " + shape_str(input_ids) + ", got " +
         shape_str(position_ids));
  if (word.size() != 2) fail(std::string(op) + ": word must have rank 2, got " + shape_str(word));
  if (position.size() != 2 || position[1] != word[1])
    fail(std::string(op) + ": position must have shape [P, " + std::to_string(word[1]) + "], got " +
         shape_str(position));
  check_vector(op, "word_scale", word_scale, word[0]);
  check_vector(op, "position_scale", position_scale, position[0]);
  check_vector(op, "gamma", &gamma, word[1]);
  check_vector(op, "beta", beta, word[1]);
  check_epsilon(op, epsilon);
  RowsDims dims;
  dims.rows = input_ids[0];
  dims.width = word[1];
  return dims;
}

void check_embedding_indices(const char* op, const char* what, const int64_t* ids, int64_t count, int64_t rows) {
  for (int64_t i = 0; i < count; ++i)
    if (ids[i] < 0 || ids[i] >= rows)
      fail(std::string(op) + ": " + what + "[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
           " is not a row of the " + std::to_string(rows) + "-row table");
}

}  // namespace bort
