// pybind11 front end of the kernels: validates numpy inputs (ValueError on bad shapes or dtypes),
// converts them to C-contiguous float32, and runs the kernel with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "bias_gelu.h"
#include "bort_infer_ops.h"
#include "cpu_dispatch.h"
#include "dequantize_rows.h"
#include "embed_layernorm.h"
#include "gemm_bf16.h"
#include "gemm_int8.h"
#include "linear_bf16.h"
#include "linear_int8.h"
#include "parallel.h"
#include "quantize_rows.h"
#include "shape_checks.h"
#include "skip_layernorm.h"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

std::atomic<size_t> g_num_threads{bort::hardware_threads()};

bort::Shape shape_of(const py::array& a) { return bort::Shape(a.shape(), a.shape() + a.ndim()); }

bool is_numeric(const py::array& a) {
  const char k = a.dtype().kind();
  return k == 'f' || k == 'i' || k == 'u' || k == 'b';
}

// Any real-valued array-like becomes a C-contiguous float32 array (a copy only when needed).
FloatArray as_float(const py::handle& obj, const char* name) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw std::invalid_argument(std::string(name) + " must be array-like");
  if (!is_numeric(arr))
    throw std::invalid_argument(std::string(name) + " must be a real numeric array (float32 expected), got dtype " +
                                py::str(arr.dtype()).cast<std::string>());
  return FloatArray::ensure(arr);
}

std::optional<FloatArray> as_optional_float(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return as_float(obj, name);
}

py::array as_integer(const py::handle& obj, const char* name) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw std::invalid_argument(std::string(name) + " must be array-like");
  const char k = arr.dtype().kind();
  if (k != 'i' && k != 'u' && k != 'b')
    throw std::invalid_argument(std::string(name) + " must be an integer array (int32 or int64), got dtype " +
                                py::str(arr.dtype()).cast<std::string>());
  if (k == 'i' && arr.dtype().itemsize() == 4) return Int32Array::ensure(arr);
  return Int64Array::ensure(arr);
}

const float* data_or_null(const std::optional<FloatArray>& a) { return a ? a->data() : nullptr; }

template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> as_exact(const py::object& obj, const char* name,
                                                                   const char* expected) {
  py::array arr = py::array::ensure(obj);
  if (!arr || !arr.dtype().is(py::dtype::of<T>()))
    throw std::invalid_argument(std::string(name) + " must be a " + expected + " array");
  return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(arr);
}

py::array_t<float> attention(const py::object& qkv_obj, const py::object& bias_obj, const py::object& mask_obj,
                             int64_t num_heads, std::optional<float> scale, const std::string& precision) {
  const bort::AttentionPrecision prec = bort::attention_precision_from_name(precision);
  FloatArray qkv = as_float(qkv_obj, "qkv");
  auto bias = as_optional_float(bias_obj, "bias");
  std::optional<py::array> mask;
  if (!mask_obj.is_none()) mask = as_integer(mask_obj, "mask");
  const bort::Shape qkv_shape = shape_of(qkv);
  const bort::Shape bias_shape = bias ? shape_of(*bias) : bort::Shape{};
  const bort::Shape mask_shape = mask ? shape_of(*mask) : bort::Shape{};
  bort::AttentionDims dims = bort::check_attention(qkv_shape, bias ? &bias_shape : nullptr,
                                                   mask ? &mask_shape : nullptr, num_heads, scale ? &*scale : nullptr);
  dims.shape.precision = prec;
  bort::AttentionMask m;
  m.kind = dims.mask_kind;
  if (mask) {
    m.data = mask->data();
    m.is_int64 = mask->dtype().itemsize() == 8;
  }
  py::array_t<float> out({dims.batch, dims.seq, dims.shape.hidden()});
  const float* q = qkv.data();
  const float* b = data_or_null(bias);
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::attention_padded(q, b, m, o, dims.batch, dims.seq, dims.shape, pf);
  }
  return out;
}

py::array_t<float> packed_attention(const py::object& qkv_obj, const py::object& bias_obj, const py::object& cu_obj,
                                    int64_t num_heads, std::optional<float> scale, const py::object& rows_obj,
                                    const py::object& query_obj, const std::string& precision) {
  const bort::AttentionPrecision prec = bort::attention_precision_from_name(precision);
  FloatArray qkv = as_float(qkv_obj, "qkv");
  auto bias = as_optional_float(bias_obj, "bias");
  Int64Array cu = Int64Array::ensure(as_integer(cu_obj, "cu_seqlens"));
  std::optional<Int64Array> rows;
  if (!rows_obj.is_none()) rows = Int64Array::ensure(as_integer(rows_obj, "query_rows"));
  auto query = as_optional_float(query_obj, "query");
  const bort::Shape qkv_shape = shape_of(qkv);
  const bort::Shape bias_shape = bias ? shape_of(*bias) : bort::Shape{};
  const bort::Shape rows_shape = rows ? shape_of(*rows) : bort::Shape{};
  const bort::Shape query_shape = query ? shape_of(*query) : bort::Shape{};
  bort::PackedAttentionDims dims =
      bort::check_packed_attention(qkv_shape, bias ? &bias_shape : nullptr, shape_of(cu), rows ? &rows_shape : nullptr,
                                   query ? &query_shape : nullptr, num_heads, scale ? &*scale : nullptr);
  dims.shape.precision = prec;
  bort::PackedQueries queries;
  if (rows) {  // present but empty selects no row: a zero-row result
    queries.selected = true;
    queries.rows = rows->data();
    queries.count = dims.num_queries;
  }
  queries.separate_values = query.has_value();
  queries.values = data_or_null(query);
  bort::check_cu_seqlens(cu.data(), dims.num_seqs, dims.tokens);  // before the output is allocated
  if (rows) bort::check_query_rows(queries.rows, queries.count, dims.tokens);
  py::array_t<float> out({dims.num_queries, dims.shape.hidden()});
  const float* q = qkv.data();
  const float* b = data_or_null(bias);
  const int64_t* c = cu.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::attention_packed(q, b, c, dims.num_seqs, queries, o, dims.tokens, dims.shape, pf);
  }
  return out;
}

py::array_t<float> bias_gelu(const py::object& x_obj, const py::object& bias_obj) {
  FloatArray x = as_float(x_obj, "x");
  FloatArray bias = as_float(bias_obj, "bias");
  const bort::RowsDims dims = bort::check_bias_gelu(shape_of(x), shape_of(bias));
  py::array_t<float> out(shape_of(x));
  const float* xp = x.data();
  const float* bp = bias.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::bias_gelu(xp, bp, o, dims.rows, dims.width, pf);
  }
  return out;
}

py::array_t<float> skip_layernorm(const py::object& x_obj, const py::object& skip_obj, const py::object& gamma_obj,
                                  const py::object& beta_obj, const py::object& bias_obj, float epsilon,
                                  const py::object& skip_scale_obj) {
  FloatArray x = as_float(x_obj, "x");
  FloatArray skip = as_float(skip_obj, "skip");
  FloatArray gamma = as_float(gamma_obj, "gamma");
  auto beta = as_optional_float(beta_obj, "beta");
  auto bias = as_optional_float(bias_obj, "bias");
  auto skip_scale = as_optional_float(skip_scale_obj, "skip_scale");
  const bort::Shape beta_shape = beta ? shape_of(*beta) : bort::Shape{};
  const bort::Shape bias_shape = bias ? shape_of(*bias) : bort::Shape{};
  const bort::Shape scale_shape = skip_scale ? shape_of(*skip_scale) : bort::Shape{};
  const bort::RowsDims dims =
      bort::check_skip_layernorm(shape_of(x), shape_of(skip), shape_of(gamma), beta ? &beta_shape : nullptr,
                                 bias ? &bias_shape : nullptr, skip_scale ? &scale_shape : nullptr, epsilon);
  py::array_t<float> out(shape_of(x));
  const float *xp = x.data(), *sp = skip.data(), *gp = gamma.data();
  const float *bep = data_or_null(beta), *bip = data_or_null(bias), *ssp = data_or_null(skip_scale);
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::skip_layernorm(xp, sp, gp, bep, bip, ssp, o, dims.rows, dims.width, epsilon, pf);
  }
  return out;
}

// The embedding bindings' shared part: ids, positions, gamma and beta converted, shapes and indices checked, the
// output allocated, then run(ids, positions, dims, gamma, beta, out, pool) without the GIL.
template <typename Run>
py::array_t<float> embed_layernorm(const char* op, const py::object& ids_obj, const py::object& positions_obj,
                                   const bort::Shape& word, const bort::Shape* word_scale, const bort::Shape& position,
                                   const bort::Shape* position_scale, const py::object& gamma_obj,
                                   const py::object& beta_obj, float epsilon, const Run& run) {
  Int64Array ids = Int64Array::ensure(as_integer(ids_obj, "input_ids"));
  Int64Array positions = Int64Array::ensure(as_integer(positions_obj, "position_ids"));
  FloatArray gamma = as_float(gamma_obj, "gamma");
  auto beta = as_optional_float(beta_obj, "beta");
  const bort::Shape beta_shape = beta ? shape_of(*beta) : bort::Shape{};
  const bort::RowsDims dims =
      bort::check_embed_layernorm(op, shape_of(ids), shape_of(positions), word, word_scale, position, position_scale,
                                  shape_of(gamma), beta ? &beta_shape : nullptr, epsilon);
  bort::check_embedding_indices(op, "input_ids", ids.data(), dims.rows, word[0]);
  bort::check_embedding_indices(op, "position_ids", positions.data(), dims.rows, position[0]);
  py::array_t<float> out({dims.rows, dims.width});
  const int64_t *ip = ids.data(), *pp = positions.data();
  const float *gp = gamma.data(), *bp = data_or_null(beta);
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    run(ip, pp, dims, gp, bp, o, pf);
  }
  return out;
}

py::array_t<float> embed_layernorm_int8(const py::object& ids_obj, const py::object& positions_obj,
                                        const py::object& word_obj, const py::object& word_scale_obj,
                                        const py::object& position_obj, const py::object& position_scale_obj,
                                        const py::object& gamma_obj, const py::object& beta_obj, float epsilon) {
  auto word = as_exact<int8_t>(word_obj, "word", "int8");
  auto position = as_exact<int8_t>(position_obj, "position", "int8");
  FloatArray word_scale = as_float(word_scale_obj, "word_scale");
  FloatArray position_scale = as_float(position_scale_obj, "position_scale");
  const bort::Shape word_scale_shape = shape_of(word_scale), position_scale_shape = shape_of(position_scale);
  const bort::Int8Table word_table{word.data(), word_scale.data(), shape_of(word)[0]};
  const bort::Int8Table position_table{position.data(), position_scale.data(), shape_of(position)[0]};
  return embed_layernorm("EmbedLayerNormInt8", ids_obj, positions_obj, shape_of(word), &word_scale_shape,
                         shape_of(position), &position_scale_shape, gamma_obj, beta_obj, epsilon,
                         [&](const int64_t* ip, const int64_t* pp, const bort::RowsDims& dims, const float* gp,
                             const float* bp, float* o, const bort::ParallelFor& pf) {
                           bort::embed_layernorm_int8(ip, pp, dims.rows, word_table, position_table, gp, bp, o,
                                                      dims.width, epsilon, pf);
                         });
}

py::array_t<float> embed_layernorm_bf16(const py::object& ids_obj, const py::object& positions_obj,
                                        const py::object& word_obj, const py::object& position_obj,
                                        const py::object& gamma_obj, const py::object& beta_obj, float epsilon) {
  auto word = as_exact<uint16_t>(word_obj, "word", "uint16 (bf16 bits)");
  auto position = as_exact<uint16_t>(position_obj, "position", "uint16 (bf16 bits)");
  const bort::Bf16Table word_table{word.data(), shape_of(word)[0]};
  const bort::Bf16Table position_table{position.data(), shape_of(position)[0]};
  return embed_layernorm("EmbedLayerNormBf16", ids_obj, positions_obj, shape_of(word), nullptr, shape_of(position),
                         nullptr, gamma_obj, beta_obj, epsilon,
                         [&](const int64_t* ip, const int64_t* pp, const bort::RowsDims& dims, const float* gp,
                             const float* bp, float* o, const bort::ParallelFor& pf) {
                           bort::embed_layernorm_bf16(ip, pp, dims.rows, word_table, position_table, gp, bp, o,
                                                      dims.width, epsilon, pf);
                         });
}

py::array_t<float> dequantize_int8_row(const py::object& q_obj, float scale) {
  auto q = as_exact<int8_t>(q_obj, "q", "int8");
  py::array_t<float> out(q.size());
  bort::dequantize_int8_row(q.data(), scale, out.mutable_data(), static_cast<int64_t>(q.size()));
  return out;
}

py::tuple quantize_rows(const py::object& x_obj) {
  FloatArray x = as_float(x_obj, "x");
  const bort::Shape shape = shape_of(x);
  const bort::RowsDims dims = bort::check_quantize_rows(shape);
  const bort::Shape leading(shape.begin(), shape.end() - 1);
  py::array_t<uint8_t> q(shape);
  py::array_t<float> scale(leading);
  py::array_t<uint8_t> zero_point(leading);
  const float* xp = x.data();
  uint8_t *qp = q.mutable_data(), *zp = zero_point.mutable_data();
  float* sp = scale.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::quantize_rows(xp, qp, sp, zp, dims.rows, dims.width, pf);
  }
  return py::make_tuple(q, scale, zero_point);
}

bort::Activation parse_activation(const std::string& name) {
  if (name == "none") return bort::Activation::kNone;
  if (name == "gelu") return bort::Activation::kGelu;
  throw std::invalid_argument("activation must be 'none' or 'gelu', got '" + name + "'");
}

// The outputs of dequantize_rows and linear_int8: y (`shape`) when output_float; with requantize, q (`shape`),
// scale and zero_point (`shape` but the last dimension).
struct RowOutputs {
  std::optional<py::array_t<float>> y, scale;
  std::optional<py::array_t<uint8_t>> q, zero_point;
  bort::RequantizedRows requantized;

  RowOutputs(const bort::Shape& shape, bool output_float, bool requantize) {
    if (output_float) y.emplace(shape);
    if (!requantize) return;
    const bort::Shape leading(shape.begin(), shape.end() - 1);
    q.emplace(shape);
    scale.emplace(leading);
    zero_point.emplace(leading);
    requantized = {q->mutable_data(), scale->mutable_data(), zero_point->mutable_data()};
  }
  float* y_data() { return y ? y->mutable_data() : nullptr; }
  // y; (y, q, scale, zero_point) with requantize; (q, scale, zero_point) with requantize and no y.
  py::object result() {
    if (!q) return std::move(*y);
    if (!y) return py::make_tuple(*q, *scale, *zero_point);
    return py::make_tuple(*y, *q, *scale, *zero_point);
  }
};

bort::SkipLayerNormEpilogue norm_epilogue(const std::optional<FloatArray>& skip, const std::optional<FloatArray>& gamma,
                                          const std::optional<FloatArray>& beta,
                                          const std::optional<FloatArray>& skip_scale, float epsilon) {
  return {data_or_null(skip), data_or_null(gamma), data_or_null(beta), data_or_null(skip_scale), epsilon};
}

// Returns y; (y, q, scale, zero_point) with requantize; (q, scale, zero_point) with requantize and no y.
py::object dequantize_rows(const py::object& acc_obj, const py::object& row_scale_obj,
                           const py::object& row_zero_point_obj, const py::object& weight_scale_obj,
                           const py::object& weight_colsum_obj, const py::object& bias_obj,
                           const std::string& activation, const py::object& skip_obj, const py::object& gamma_obj,
                           const py::object& beta_obj, const py::object& skip_scale_obj, float epsilon, bool requantize,
                           bool output_float) {
  auto acc = as_exact<int32_t>(acc_obj, "acc", "int32");
  FloatArray row_scale = as_float(row_scale_obj, "row_scale");
  auto row_zero_point = as_exact<uint8_t>(row_zero_point_obj, "row_zero_point", "uint8");
  FloatArray weight_scale = as_float(weight_scale_obj, "weight_scale");
  auto weight_colsum = as_exact<int32_t>(weight_colsum_obj, "weight_colsum", "int32");
  auto bias = as_optional_float(bias_obj, "bias");
  auto skip = as_optional_float(skip_obj, "skip");
  auto gamma = as_optional_float(gamma_obj, "gamma");
  auto beta = as_optional_float(beta_obj, "beta");
  auto skip_scale = as_optional_float(skip_scale_obj, "skip_scale");
  const bort::Activation act = parse_activation(activation);
  const bort::Shape bias_shape = bias ? shape_of(*bias) : bort::Shape{};
  const bort::Shape skip_shape = skip ? shape_of(*skip) : bort::Shape{};
  const bort::Shape gamma_shape = gamma ? shape_of(*gamma) : bort::Shape{};
  const bort::Shape beta_shape = beta ? shape_of(*beta) : bort::Shape{};
  const bort::Shape scale_shape = skip_scale ? shape_of(*skip_scale) : bort::Shape{};
  const bort::Shape acc_shape = shape_of(acc);
  const bort::RowsDims dims = bort::check_dequantize_rows(
      acc_shape, shape_of(row_scale), shape_of(row_zero_point), shape_of(weight_scale), shape_of(weight_colsum),
      bias ? &bias_shape : nullptr, skip ? &skip_shape : nullptr, gamma ? &gamma_shape : nullptr,
      beta ? &beta_shape : nullptr, skip_scale ? &scale_shape : nullptr, act, epsilon);
  bort::check_dequantize_rows_outputs(output_float, requantize, requantize, requantize);
  RowOutputs out(acc_shape, output_float, requantize);
  const bort::SkipLayerNormEpilogue norm = norm_epilogue(skip, gamma, beta, skip_scale, epsilon);
  const int32_t *ap = acc.data(), *cp = weight_colsum.data();
  const float *rsp = row_scale.data(), *wsp = weight_scale.data(), *bp = data_or_null(bias);
  const uint8_t* zp = row_zero_point.data();
  float* o = out.y_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::dequantize_rows(ap, rsp, zp, wsp, cp, bp, act, norm, o, out.requantized, dims.rows, dims.width, pf);
  }
  return out.result();
}

// ------------------------------------------------------------------------------------------------ bf16

using Uint16Array = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

// uint16 arrays are bf16 bit patterns; anything else real-valued is converted to float32.
bool is_bf16_bits(const py::array& a) { return a.dtype().is(py::dtype::of<uint16_t>()); }

std::shared_ptr<bort::PackedBf16Weights> pack_bf16_weights(const py::object& obj) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw std::invalid_argument("weight must be array-like");
  if (arr.ndim() != 2)
    throw std::invalid_argument("weight must have shape [K, N], got " + bort::shape_str(shape_of(arr)));
  const int64_t k = arr.shape(0), n = arr.shape(1);
  if (is_bf16_bits(arr)) {
    Uint16Array w = Uint16Array::ensure(arr);
    py::gil_scoped_release release;
    return std::make_shared<bort::PackedBf16Weights>(bort::PackedBf16Weights::from_bf16(w.data(), k, n));
  }
  FloatArray w = as_float(arr, "weight");
  py::gil_scoped_release release;
  return std::make_shared<bort::PackedBf16Weights>(bort::PackedBf16Weights::from_float(w.data(), k, n));
}

py::array_t<uint16_t> unpack_bf16_weights(const bort::PackedBf16Weights& w) {
  py::array_t<uint16_t> out({w.k(), w.n()});
  w.unpack(out.mutable_data());
  return out;
}

py::array_t<uint16_t> float_to_bf16(const py::object& x_obj) {
  FloatArray x = as_float(x_obj, "x");
  py::array_t<uint16_t> out(shape_of(x));
  bort::float_to_bf16_array(x.data(), out.mutable_data(), static_cast<int64_t>(x.size()));
  return out;
}

// a [..., K] (float32, or uint16 bf16 bits) → [..., N].
py::array_t<float> gemm_bf16(const py::object& a_obj, const bort::PackedBf16Weights& w) {
  py::array arr = py::array::ensure(a_obj);
  if (!arr) throw std::invalid_argument("a must be array-like");
  const bool bits = is_bf16_bits(arr);
  if (!bits && !is_numeric(arr))
    throw std::invalid_argument("a must be float32 rows or uint16 bf16 bits, got dtype " +
                                py::str(arr.dtype()).cast<std::string>());
  bort::Shape shape = shape_of(arr);
  if (shape.empty() || shape.back() != w.k())
    throw std::invalid_argument("gemm_bf16: a must have shape [..., " + std::to_string(w.k()) + "], got " +
                                bort::shape_str(shape));
  const bort::RowsDims dims = bort::check_quantize_rows(shape);  // rows of [..., K]
  shape.back() = w.n();
  py::array_t<float> out(shape);
  float* o = out.mutable_data();
  if (bits) {
    Uint16Array a = Uint16Array::ensure(arr);
    const uint16_t* ap = a.data();
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::gemm_bf16_rows(ap, w.k(), dims.rows, w, {}, o, pf);
  } else {
    FloatArray a = FloatArray::ensure(arr);
    const float* ap = a.data();
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::gemm_bf16(ap, dims.rows, w, {}, o, pf);
  }
  return out;
}

py::array_t<float> linear_bf16(const py::object& x_obj, const bort::PackedBf16Weights& w, const py::object& bias_obj,
                               const std::string& activation) {
  FloatArray x = as_float(x_obj, "x");
  auto bias = as_optional_float(bias_obj, "bias");
  const bort::Activation act = parse_activation(activation);
  const bort::Shape bias_shape = bias ? shape_of(*bias) : bort::Shape{};
  bort::Shape shape = shape_of(x);
  const bort::RowsDims dims = bort::check_linear_bf16(shape, {w.k(), w.n()}, bias ? &bias_shape : nullptr);
  shape.back() = w.n();
  py::array_t<float> out(shape);
  const float* xp = x.data();
  const float* bp = data_or_null(bias);
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::linear_bf16(xp, dims.rows, w, bp, act, o, pf);
  }
  return out;
}

// This module's kernels and the ops library's (those onnxruntime runs) are separate copies of the same code:
// one choice steers both.
void set_isa(const std::string& name) {
  bort::set_isa(name);  // throws on an unknown or unsupported name, before anything changes
  char error[256];
  if (bort_infer_set_isa(name.c_str(), error, sizeof error) != 0) throw std::runtime_error(error);
}

std::shared_ptr<bort::PackedInt8Weights> pack_int8_weights(const py::object& weight_obj) {
  auto weight = as_exact<int8_t>(weight_obj, "weight", "int8");
  if (weight.ndim() != 2)
    throw std::invalid_argument("weight must have rank 2 [K, N], got " + bort::shape_str(shape_of(weight)));
  const int8_t* wp = weight.data();
  const int64_t k = weight.shape(0), n = weight.shape(1);
  py::gil_scoped_release release;
  return std::make_shared<bort::PackedInt8Weights>(wp, k, n);
}

py::array_t<int8_t> unpack_int8_weights(const bort::PackedInt8Weights& w) {
  py::array_t<int8_t> out({w.k(), w.n()});
  int8_t* o = out.mutable_data();
  for (int64_t k = 0; k < w.k(); ++k)
    for (int64_t n = 0; n < w.n(); ++n) o[k * w.n() + n] = w.at(k, n);
  return out;
}

// The Python class of packed weights W: built once from a [K, N] array by `pack`, with k, n and unpack().
template <typename W, typename Unpacked>
py::class_<W, std::shared_ptr<W>> bind_packed_weights(py::module_& m, const char* name, const char* doc,
                                                      std::shared_ptr<W> (*pack)(const py::object&),
                                                      Unpacked (*unpack)(const W&), const char* unpack_doc) {
  return py::class_<W, std::shared_ptr<W>>(m, name, doc)
      .def(py::init(pack), py::arg("weight"))
      .def_property_readonly("k", &W::k)
      .def_property_readonly("n", &W::n)
      .def("unpack", unpack, unpack_doc);
}

py::array_t<int32_t> gemm_u8s8(const py::object& a_obj, const bort::PackedInt8Weights& w) {
  auto a = as_exact<uint8_t>(a_obj, "a", "uint8");
  if (a.ndim() != 2 || a.shape(1) != w.k())
    throw std::invalid_argument("a must have shape [M, " + std::to_string(w.k()) + "], got " +
                                bort::shape_str(shape_of(a)));
  const int64_t m = a.shape(0);
  py::array_t<int32_t> c({m, w.n()});
  const uint8_t* ap = a.data();
  int32_t* cp = c.mutable_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::gemm_u8s8(bort::active_isa(), ap, m, w.k(), w, cp, pf);
  }
  return c;
}

// Returns y; (y, q, scale, zero_point) with requantize; (q, scale, zero_point) with requantize and no y.
py::object linear_int8(const py::object& x_obj, const bort::PackedInt8Weights& w, const py::object& weight_scale_obj,
                       const py::object& bias_obj, const std::string& activation, const py::object& skip_obj,
                       const py::object& gamma_obj, const py::object& beta_obj, const py::object& skip_scale_obj,
                       float epsilon, bool requantize, bool output_float, const py::object& x_quantized_obj,
                       const py::object& x_scale_obj, const py::object& x_zero_point_obj) {
  auto x = as_optional_float(x_obj, "x");
  std::optional<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>> xq, xz;
  if (!x_quantized_obj.is_none()) xq = as_exact<uint8_t>(x_quantized_obj, "x_quantized", "uint8");
  if (!x_zero_point_obj.is_none()) xz = as_exact<uint8_t>(x_zero_point_obj, "x_zero_point", "uint8");
  auto xs = as_optional_float(x_scale_obj, "x_scale");
  FloatArray weight_scale = as_float(weight_scale_obj, "weight_scale");
  auto bias = as_optional_float(bias_obj, "bias");
  auto skip = as_optional_float(skip_obj, "skip");
  auto gamma = as_optional_float(gamma_obj, "gamma");
  auto beta = as_optional_float(beta_obj, "beta");
  auto skip_scale = as_optional_float(skip_scale_obj, "skip_scale");
  const bort::Activation act = parse_activation(activation);
  auto shape_or_null = [](const auto& a, bort::Shape& storage) -> const bort::Shape* {
    if (!a) return nullptr;
    storage = shape_of(*a);
    return &storage;
  };
  bort::Shape s_x, s_xq, s_xs, s_xz, s_bias, s_skip, s_gamma, s_beta, s_scale;
  const bort::LinearInt8Dims dims = bort::check_linear_int8(
      shape_or_null(x, s_x), shape_or_null(xq, s_xq), shape_or_null(xs, s_xs), shape_or_null(xz, s_xz),
      bort::Shape{w.k(), w.n()}, shape_of(weight_scale), shape_or_null(bias, s_bias), shape_or_null(skip, s_skip),
      shape_or_null(gamma, s_gamma), shape_or_null(beta, s_beta), shape_or_null(skip_scale, s_scale), act, epsilon);
  bort::check_linear_int8_outputs(output_float, requantize, requantize, requantize);
  RowOutputs out(dims.output, output_float, requantize);
  const bort::SkipLayerNormEpilogue norm = norm_epilogue(skip, gamma, beta, skip_scale, epsilon);
  bort::LinearInt8Input in;
  in.x = data_or_null(x);
  if (xq) {
    in.q = xq->data();
    in.scale = xs->data();
    in.zero_point = xz->data();
  }
  const float *wsp = weight_scale.data(), *bp = data_or_null(bias);
  float* o = out.y_data();
  {
    py::gil_scoped_release release;
    bort::ThreadFor pf(g_num_threads.load());
    bort::linear_int8(in, dims.rows, w, wsp, bp, act, norm, o, out.requantized, pf);
  }
  return out.result();
}

py::array_t<float> erf_for_tests(const py::object& x_obj) {
  FloatArray x = as_float(x_obj, "x");
  py::array_t<float> out(shape_of(x));
  bort::erf_array(x.data(), out.mutable_data(), static_cast<int64_t>(x.size()));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  // A bad BORT_INFER_ISA fails the import (ImportError naming the accepted values) rather than running
  // silently on another path than the one asked for.
  if (!bort::isa_environment_error().empty()) throw std::invalid_argument(bort::isa_environment_error());
  m.doc() =
      "bort-infer fused CPU kernels (attention core, bias+GELU, skip+LayerNorm). The same shared object "
      "is an onnxruntime custom-op library (domain 'ai.bort_infer'): pass its __file__ to "
      "SessionOptions.register_custom_ops_library.";
  m.def("attention", &attention, py::arg("qkv"), py::arg("bias"), py::arg("mask"), py::arg("num_heads"),
        py::arg("scale") = py::none(), py::arg("precision") = "fp32",
        "Multi-head attention core. qkv float32 [B, S, 3H]; bias [3H] or None; mask int [B, S] (1 = attend), "
        "int [B] (lengths) or None. Returns float32 [B, S, H]. precision 'fp32', 'bf16' (bf16 operands of "
        "Q K^T and P V, fp32 accumulation and softmax) or 'int8' (Q K^T on int8 operands, P V as bf16); see "
        "csrc/attention.h.");
  m.def("packed_attention", &packed_attention, py::arg("qkv"), py::arg("bias"), py::arg("cu_seqlens"),
        py::arg("num_heads"), py::arg("scale") = py::none(), py::arg("query_rows") = py::none(),
        py::arg("query") = py::none(), py::arg("precision") = "fp32",
        "Attention over packed sequences. qkv float32 [T, 3H]; bias [3H] or None; cu_seqlens int [N + 1]. "
        "Returns float32 [T, H], or [Q, H] for query_rows int [Q] (token indices whose outputs are wanted). "
        "With query float32 [Q, H] (those rows' projected queries), qkv holds only K | V [T, 2H]. precision as "
        "attention's.");
  m.def("bias_gelu", &bias_gelu, py::arg("x"), py::arg("bias"), "gelu(x + bias), exact erf GELU; bias [x.shape[-1]].");
  m.def("skip_layernorm", &skip_layernorm, py::arg("x"), py::arg("skip"), py::arg("gamma"),
        py::arg("beta") = py::none(), py::arg("bias") = py::none(), py::arg("epsilon") = 1e-12f,
        py::arg("skip_scale") = py::none(),
        "LayerNorm(x + skip [* skip_scale] [+ bias]) * gamma [+ beta] over the last axis.");
  m.def("embed_layernorm_int8", &embed_layernorm_int8, py::arg("input_ids"), py::arg("position_ids"), py::arg("word"),
        py::arg("word_scale"), py::arg("position"), py::arg("position_scale"), py::arg("gamma"),
        py::arg("beta") = py::none(), py::arg("epsilon") = 1e-12f,
        "LayerNorm(word[input_ids] * word_scale[input_ids] + position[position_ids] * position_scale[position_ids]) "
        "* gamma [+ beta] for int8 tables (one scale per row) → float32 [T, W] (the EmbedLayerNormInt8 op).");
  m.def("embed_layernorm_bf16", &embed_layernorm_bf16, py::arg("input_ids"), py::arg("position_ids"), py::arg("word"),
        py::arg("position"), py::arg("gamma"), py::arg("beta") = py::none(), py::arg("epsilon") = 1e-12f,
        "LayerNorm(float(word[input_ids]) + float(position[position_ids])) * gamma [+ beta] for bf16 tables given as "
        "uint16 arrays of their bits → float32 [T, W] (the EmbedLayerNormBf16 op).");
  m.def("dequantize_int8_row", &dequantize_int8_row, py::arg("q"), py::arg("scale"),
        "float(q) * scale for int8 q (flattened) with the active ISA's path: EmbedLayerNormInt8's table rows.");
  m.def("quantize_rows", &quantize_rows, py::arg("x"),
        "Per-row asymmetric uint8 quantization of float x [..., K] → (q uint8 [..., K], scale float32 [...], "
        "zero_point uint8 [...]) with x ~= scale * (q - zero_point).");
  m.def("dequantize_rows", &dequantize_rows, py::arg("acc"), py::arg("row_scale"), py::arg("row_zero_point"),
        py::arg("weight_scale"), py::arg("weight_colsum"), py::arg("bias") = py::none(), py::arg("activation") = "none",
        py::arg("skip") = py::none(), py::arg("gamma") = py::none(), py::arg("beta") = py::none(),
        py::arg("skip_scale") = py::none(), py::arg("epsilon") = 1e-12f, py::arg("requantize") = false,
        py::arg("output_float") = true,
        "v = act(row_scale[m] * weight_scale[n] * (acc[m, n] - row_zero_point[m] * weight_colsum[n]) + bias[n]) for "
        "int32 acc [..., N]; activation 'none' or 'gelu'. With skip (acc's shape; needs gamma, excludes gelu): "
        "v = LayerNorm(v + skip [* skip_scale]) * gamma [+ beta]. Returns y = v; with requantize, (y, q, scale, "
        "zero_point) where the last three are quantize_rows(y) exactly; with requantize and output_float=False, "
        "(q, scale, zero_point) only.");
  bind_packed_weights(m, "PackedBf16Weights",
                      "Weights [K, N] packed once in the bf16 kernels' layout. From float32 (rounded to nearest "
                      "even, as float_to_bf16) or from uint16 bf16 bit patterns.",
                      &pack_bf16_weights, &unpack_bf16_weights, "The stored weights as uint16 bf16 bits [K, N].")
      .def_property_readonly("nbytes", &bort::PackedBf16Weights::bytes, "Bytes of the packed weights.");
  m.def("float_to_bf16", &float_to_bf16, py::arg("x"),
        "float32 → bf16 bit patterns (uint16), round to nearest even; NaN stays NaN, fp32 subnormals become "
        "signed zero (as vcvtne2ps2bf16).");
  m.def("gemm_bf16", &gemm_bf16, py::arg("a"), py::arg("weights"),
        "a [..., K] (float32 rounded to bf16, or uint16 bf16 bits) @ weights (PackedBf16Weights) → float32 "
        "[..., N]; products and sums in fp32.");
  m.def("linear_bf16", &linear_bf16, py::arg("x"), py::arg("weights"), py::arg("bias") = py::none(),
        py::arg("activation") = "none",
        "act(x [..., K] @ weights + bias) → float32 [..., N]: x rounded to bf16, fp32 accumulation, bias and "
        "activation ('none' or 'gelu', exact erf GELU) applied to the accumulators.");
  m.def(
      "bf16_path", [] { return std::string(bort::bf16_path_name(bort::active_bf16_path())); },
      "The bf16 GEMM path the active ISA runs: 'amx', 'avx512_bf16', 'avx2' or 'scalar'.");
  bind_packed_weights(m, "PackedInt8Weights",
                      "int8 weights [K, N] packed once for every int8 GEMM path (panels of 64 columns x K padded "
                      "to 64), with their column sums.",
                      &pack_int8_weights, &unpack_int8_weights, "The weights read back from the packed form.")
      .def_property_readonly("padded_k", &bort::PackedInt8Weights::padded_k)
      .def_property_readonly("packed_bytes", &bort::PackedInt8Weights::packed_bytes)
      .def_property_readonly("column_sums",
                             [](const bort::PackedInt8Weights& w) {
                               py::array_t<int32_t> out(w.n());
                               std::copy(w.column_sums(), w.column_sums() + w.n(), out.mutable_data());
                               return out;
                             })
      .def_property_readonly("saturation_free_pairs", &bort::PackedInt8Weights::saturation_free_pairs,
                             "No two weights k = 2j, 2j + 1 of a column can saturate an int16 pair sum of u8 x s8 "
                             "products (vpmaddubsw is exact on them).");
  m.def("gemm_u8s8", &gemm_u8s8, py::arg("a"), py::arg("weights"),
        "Exact int32 C [M, N] = a uint8 [M, K] @ weights (PackedInt8Weights), on the active ISA's int8 path "
        "(int32 lanes wrap as onnxruntime's MatMulInteger does).");
  m.def(
      "int8_gemm_path",
      [](const bort::PackedInt8Weights* w) {
        const bort::Isa isa = bort::active_isa();
        return std::string(
            bort::int8_path_name(w != nullptr ? bort::int8_path_for(isa, *w) : bort::int8_path_for(isa)));
      },
      py::arg("weights") = py::none(),
      "The int8 GEMM path the active ISA uses for these weights (or for any weights): scalar, avx2, avx2_maddubs "
      "(weights whose pairs cannot saturate), avx512_vnni, amx, neon_dotprod or neon_i8mm.");
  m.def("linear_int8", &linear_int8, py::arg("x"), py::arg("weights"), py::arg("weight_scale"),
        py::arg("bias") = py::none(), py::arg("activation") = "none", py::arg("skip") = py::none(),
        py::arg("gamma") = py::none(), py::arg("beta") = py::none(), py::arg("skip_scale") = py::none(),
        py::arg("epsilon") = 1e-12f, py::arg("requantize") = false, py::arg("output_float") = true,
        py::arg("x_quantized") = py::none(), py::arg("x_scale") = py::none(), py::arg("x_zero_point") = py::none(),
        "The fused int8 linear layer: quantize_rows(x) (or the given x_quantized, x_scale, x_zero_point with x=None) "
        "-> exact u8 x s8 GEMM on weights -> dequantize_rows' epilogue (weight_scale [N], bias, 'gelu' or "
        "skip + LayerNorm, requantize), bit for bit equal to that three-step chain. Returns as dequantize_rows.");
  m.def("linear_int8_streamed_output_bytes", &bort::streamed_output_bytes,
        "Float outputs of linear_int8 at least this large (no activation, no row stage) are written with "
        "non-temporal stores: max(4 MB, last-level cache / 16).");
  m.def("erf", &erf_for_tests, py::arg("x"),
        "erf with the active ISA's implementation (for testing the vectorised erf).");
  m.def("set_isa", &set_isa, py::arg("isa"),
        ("Select the kernel level of this module and of the ops library: one of " + bort::isa_names_accepted() +
         " ('auto' = best supported). ValueError for an unknown name, RuntimeError when the CPU lacks it.")
            .c_str());
  m.def("active_isa", [] { return std::string(bort::isa_name(bort::active_isa())); });
  m.def("best_isa", [] { return std::string(bort::isa_name(bort::best_isa())); }, "What 'auto' selects.");
  m.def(
      "supported_isas",
      [] {
        std::vector<std::string> names;
        for (bort::Isa isa : bort::supported_isas()) names.emplace_back(bort::isa_name(isa));
        return names;
      },
      "Every kernel level this CPU supports, lowest first.");
  m.def("cpu_has_avx2", &bort::cpu_has_avx2_fma);
  m.def("cpu_has_avx512", &bort::cpu_has_avx512, "True when the CPU and OS support AVX-512 F, DQ, BW and VL.");
  m.def("has_avx512_vnni", &bort::has_avx512_vnni, "AVX-512 plus VNNI (vpdpbusd).");
  m.def("has_avx512_bf16", &bort::has_avx512_bf16, "AVX-512 VNNI plus AVX512-BF16 (vdpbf16ps).");
  m.def("has_amx_int8", &bort::has_amx_int8, "AMX-INT8 tiles, usable by this process (OS permission granted).");
  m.def("has_amx_bf16", &bort::has_amx_bf16, "AMX-BF16 tiles, usable by this process (OS permission granted).");
  m.def(
      "set_num_threads",
      [](int64_t n) {
        if (n < 0) throw std::invalid_argument("num_threads must be >= 0 (0 = all hardware threads)");
        g_num_threads = n == 0 ? bort::hardware_threads() : static_cast<size_t>(n);
      },
      py::arg("num_threads"), "Threads used by the direct Python calls (ORT ops use the session's pool).");
  m.def("get_num_threads", [] { return g_num_threads.load(); });
}
