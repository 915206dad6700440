// onnxruntime custom-op front end: domain "ai.bort_infer", ops FusedAttention, PackedAttention, BiasGelu,
// SkipLayerNorm, EmbedLayerNormInt8, EmbedLayerNormBf16, QuantizeRows, DequantizeRows, LinearBf16 and LinearInt8.
// Registration entry point: RegisterCustomOps (exported, C linkage).
//
// Thin on purpose. An op is one kernel struct: its name, its inputs and outputs (name, required or optional, element
// type; the one place each name is written, used for the schema and every message), its attributes read when the
// session creates the kernel, and Compute. The plumbing below checks every input's presence, tensor-ness, element
// type and dimensions against that table before Compute runs; Compute checks shapes with csrc/shape_checks.* and
// calls a kernel that knows nothing of onnxruntime. Every failure becomes an error status naming the op, never an
// exception across the C boundary, never a crash. To add an op: one kernel struct here, one entry in kOps.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <array>
#include <cmath>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "bias_gelu.h"
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

namespace {

constexpr const char* kDomain = "ai.bort_infer";

[[noreturn]] void fail(const char* op, const std::string& message) {
  throw std::invalid_argument(std::string(op) + ": " + message);
}

// ---------------------------------------------------------------------------------------------
// Op tables

struct Port {
  const char* name;
  bool required;
  ONNXTensorElementDataType type;  // kAnyInt: int32 or int64, told apart at run time
};

constexpr bool kRequired = true;
constexpr bool kOptional = false;
constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kUint8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr auto kInt32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
constexpr auto kBfloat16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
constexpr auto kInt8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
constexpr auto kAnyInt = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // the schema lets any type through

template <size_t N>
using Ports = std::array<Port, N>;

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "string";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED: return "int32 or int64";
    default: return "another type";
  }
}

// ---------------------------------------------------------------------------------------------
// Inputs and outputs of one Compute call

// An input tensor as the kernels see it. The data of an empty tensor may be null.
struct Tensor {
  bort::Shape shape;
  ONNXTensorElementDataType type;
  const void* data;

  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
  bool is_int64() const { return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }
};

// Optional inputs are `const Tensor*`, null when absent.
const bort::Shape* shape_of(const Tensor* t) { return t ? &t->shape : nullptr; }
const float* floats(const Tensor* t) { return t ? t->as<float>() : nullptr; }

// An int32 or int64 tensor of `count` elements as int64 (the caller checked the shape).
std::vector<int64_t> to_int64(const Tensor& t, size_t count) {
  std::vector<int64_t> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = t.is_int64() ? t.as<int64_t>()[i] : t.as<int32_t>()[i];
  return out;
}

// Runs kernel tasks on the session's intra-op thread pool (serially when it has one thread).
class OrtParallelFor final : public bort::ParallelFor {
 public:
  explicit OrtParallelFor(const Ort::KernelContext& ctx) : ctx_(ctx) {}

  void run(size_t num_tasks, bort::TaskRef task) const override {
    if (num_tasks <= 1) {
      if (num_tasks == 1) task(0);
      return;
    }
    struct Call {
      bort::TaskRef task;
      std::mutex mutex;
      std::exception_ptr error;
    } call{task, {}, {}};
    auto trampoline = [](void* user, size_t i) {
      auto* c = static_cast<Call*>(user);
      try {
        c->task(i);
      } catch (...) {  // exceptions must not unwind through onnxruntime's thread pool
        std::lock_guard<std::mutex> lock(c->mutex);
        if (!c->error) c->error = std::current_exception();
      }
    };
    ctx_.ParallelFor(trampoline, num_tasks, 0, &call);
    if (call.error) std::rethrow_exception(call.error);
  }
  // The pool size is not visible through the API; it only steers task granularity.
  size_t concurrency() const override { return bort::hardware_threads(); }

 private:
  const Ort::KernelContext& ctx_;
};

// One Compute call: the node's inputs, each checked against the op's table (present if required, a tensor, of the
// table's element type, no negative dimension), the outputs and the thread pool.
class Io {
 public:
  template <size_t N, size_t M>
  Io(OrtKernelContext* ctx, const char* op, const Ports<N>& inputs, const Ports<M>& outputs)
      : ctx_(ctx), op_(op), outputs_(outputs.data()), pool_(ctx_) {
    const size_t given = ctx_.GetInputCount();
    inputs_.resize(N);
    for (size_t i = 0; i < N; ++i) {
      if (i < given) inputs_[i] = fetch(ctx_.GetInput(i), inputs[i]);
      if (inputs[i].required && !inputs_[i])
        fail(op_, std::string("required input '") + inputs[i].name + "' is missing");
    }
  }

  const Tensor& in(size_t i) const { return *inputs_[i]; }  // a required input
  const Tensor* optional(size_t i) const { return inputs_[i] ? &*inputs_[i] : nullptr; }

  template <typename T>
  T* out(size_t i, const bort::Shape& shape) const {
    bort::check_output_size(op_, outputs_[i].name, shape, sizeof(T));
    Ort::UnownedValue value = ctx_.GetOutput(i, shape);
    // onnxruntime hands out no value for an optional output the node leaves out (empty name).
    if (value == nullptr) fail(op_, "output " + std::to_string(i) + " is not part of the node");
    return static_cast<T*>(value.GetTensorMutableRawData());
  }

  const bort::ParallelFor& pool() const { return pool_; }

 private:
  std::optional<Tensor> fetch(Ort::ConstValue value, const Port& port) const {
    if (value == nullptr) return std::nullopt;  // an optional input the node leaves out
    if (!value.IsTensor()) fail(op_, std::string("input '") + port.name + "' must be a tensor");
    const auto info = value.GetTensorTypeAndShapeInfo();
    Tensor t{info.GetShape(), info.GetElementType(), nullptr};
    const bool type_ok = port.type == kAnyInt ? t.type == kInt32 || t.is_int64() : t.type == port.type;
    if (!type_ok)
      fail(op_,
           std::string("input '") + port.name + "' must be " + type_name(port.type) + ", got " + type_name(t.type));
    for (int64_t d : t.shape)
      if (d < 0) fail(op_, std::string("input '") + port.name + "' has a negative dimension");
    t.data = value.GetTensorRawData();
    return t;
  }

  Ort::KernelContext ctx_;
  const char* op_;
  const Port* outputs_;  // the op's output table
  OrtParallelFor pool_;
  std::vector<std::optional<Tensor>> inputs_;
};

// ---------------------------------------------------------------------------------------------
// Attributes, read when the session creates a kernel

class Attributes {
 public:
  Attributes(const OrtKernelInfo* info, const char* op) : info_(info), op_(op) {}

  std::optional<float> optional_float(const char* name) const { return get<float>(name, "a float"); }
  std::optional<int64_t> optional_int(const char* name) const { return get<int64_t>(name, "an int"); }
  std::optional<std::string> optional_string(const char* name) const { return get<std::string>(name, "a string"); }

  int64_t required_int(const char* name) const {
    auto v = optional_int(name);
    if (!v) fail(op_, std::string("integer attribute '") + name + "' is required");
    return *v;
  }

  // Input `index` when it is a constant of the graph (an initializer), else a null value.
  Ort::ConstValue constant_input(size_t index) const {
    if (index >= info_.GetInputCount()) return Ort::ConstValue{nullptr};  // an optional input the node leaves out
    int is_constant = 0;
    Ort::ConstValue value = info_.GetTensorConstantInput(index, &is_constant);
    return is_constant ? value : Ort::ConstValue{nullptr};
  }

  // Input `index` when it is a constant [K, N] weight of element type `type` holding at least one value,
  // checked (rank 2, K and N below 2^48) before anything is packed. Null when the weight is fed at run time,
  // or is empty: an empty weight may claim 2^47 rows or columns, so it is packed per call, after Compute has
  // checked it against the other inputs (packing never walks or allocates what an empty shape claims).
  struct ConstantWeight {
    const void* data = nullptr;
    bort::Shape shape;
  };
  std::optional<ConstantWeight> constant_weight(size_t index, ONNXTensorElementDataType type) const {
    const Ort::ConstValue weight = constant_input(index);
    if (weight == nullptr) return std::nullopt;
    if (!weight.IsTensor()) fail(op_, "input 'weight' must be a tensor");
    const auto info = weight.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != type)
      fail(op_, std::string("input 'weight' must be ") + type_name(type) + ", got " + type_name(info.GetElementType()));
    ConstantWeight w{weight.GetTensorRawData(), info.GetShape()};
    bort::check_linear_weight(op_, w.shape);
    if (w.shape[0] == 0 || w.shape[1] == 0) return std::nullopt;
    return w;
  }

  // Whether the node names output `index` (an optional output left out has an empty name, or is past the end).
  bool has_output(size_t index) const { return index < info_.GetOutputCount() && !info_.GetOutputName(index).empty(); }

  const char* op() const { return op_; }

 private:
  // nullopt when absent; present with another type is an error naming the op, the attribute and both types.
  template <typename T>
  std::optional<T> get(const char* name, const char* wanted) const {
    try {
      return info_.GetAttribute<T>(name);
    } catch (const Ort::Exception& e) {
      if (auto other = other_type(name, e.what()))
        fail(op_, std::string("attribute '") + name + "' must be " + wanted + ", got " + *other);
      return std::nullopt;
    }
  }

  // onnxruntime's getters fail alike for an absent attribute and one of another type; the other getters tell
  // them apart (and name the type). `message` is the failed getter's error.
  std::optional<std::string> other_type(const char* name, const std::string& message) const {
    const auto holds = [](auto get) {
      try {
        return get();
      } catch (const Ort::Exception&) {
        return false;
      }
    };
    if (holds([&] { return (info_.GetAttribute<int64_t>(name), true); })) return "int";
    if (holds([&] { return (info_.GetAttribute<float>(name), true); })) return "float";
    if (holds([&] { return (info_.GetAttribute<std::string>(name), true); })) return "string";
    // The list getters answer an empty list for an attribute of another type: only a non-empty list counts.
    if (holds([&] { return !info_.GetAttributes<int64_t>(name).empty(); })) return "ints";
    if (holds([&] { return !info_.GetAttributes<float>(name).empty(); })) return "floats";
    if (holds([&] { return (info_.GetTensorAttribute(name, Ort::AllocatorWithDefaultOptions()), true); }))
      return "tensor";
    // A type no getter reads (strings, graphs, ...): onnxruntime's message still says the type is wrong.
    if (message.find("type don't match") != std::string::npos) return "another type";
    return std::nullopt;
  }

  Ort::ConstKernelInfo info_;
  const char* op_;
};

float checked_epsilon(const Attributes& a) {
  const float eps = a.optional_float("epsilon").value_or(1e-12f);
  if (!std::isfinite(eps) || eps < 0.0f)
    fail(a.op(), "attribute 'epsilon' must be finite and >= 0, got " + std::to_string(eps));
  return eps;
}

int64_t checked_num_heads(const Attributes& a) {
  const int64_t heads = a.required_int("num_heads");
  if (heads <= 0) fail(a.op(), "num_heads must be positive, got " + std::to_string(heads));
  return heads;
}

// Attention ops: attribute 'precision' ("fp32", the default, "bf16" or "int8"; csrc/attention.h, which names the
// accepted values).
bort::AttentionPrecision checked_precision(const Attributes& a) {
  const std::string name = a.optional_string("precision").value_or("fp32");
  try {
    return bort::attention_precision_from_name(name);
  } catch (const std::invalid_argument& e) {
    fail(a.op(), std::string("attribute 'precision': ") + e.what());
  }
}

std::optional<float> checked_scale(const Attributes& a) {
  auto scale = a.optional_float("scale");
  if (scale && !std::isfinite(*scale)) fail(a.op(), "attribute 'scale' must be finite");
  return scale;
}

// ---------------------------------------------------------------------------------------------
// Kernels: the table, the attributes, Compute.

struct FusedAttention {
  static constexpr const char* kName = "FusedAttention";
  static constexpr Ports<3> kInputs{
      {{"qkv", kRequired, kFloat}, {"bias", kOptional, kFloat}, {"mask", kOptional, kAnyInt}}};
  static constexpr Ports<1> kOutputs{{{"out", kRequired, kFloat}}};
  int64_t num_heads;
  std::optional<float> scale;
  bort::AttentionPrecision precision;

  explicit FusedAttention(const Attributes& a)
      : num_heads(checked_num_heads(a)), scale(checked_scale(a)), precision(checked_precision(a)) {}

  void Compute(const Io& io) const {
    const Tensor& qkv = io.in(0);
    const Tensor *bias = io.optional(1), *mask = io.optional(2);
    bort::AttentionDims dims =
        bort::check_attention(qkv.shape, shape_of(bias), shape_of(mask), num_heads, scale ? &*scale : nullptr);
    dims.shape.precision = precision;
    bort::AttentionMask m;
    m.kind = dims.mask_kind;
    if (mask) {
      m.data = mask->data;
      m.is_int64 = mask->is_int64();
    }
    float* out = io.out<float>(0, {dims.batch, dims.seq, dims.shape.hidden()});
    bort::attention_padded(qkv.as<float>(), floats(bias), m, out, dims.batch, dims.seq, dims.shape, io.pool());
  }
};

struct PackedAttention {
  static constexpr const char* kName = "PackedAttention";
  static constexpr Ports<5> kInputs{{{"qkv", kRequired, kFloat},
                                     {"bias", kOptional, kFloat},
                                     {"cu_seqlens", kRequired, kAnyInt},
                                     {"query_rows", kOptional, kAnyInt},
                                     {"query", kOptional, kFloat}}};
  static constexpr Ports<1> kOutputs{{{"out", kRequired, kFloat}}};
  int64_t num_heads;
  std::optional<float> scale;
  bort::AttentionPrecision precision;

  explicit PackedAttention(const Attributes& a)
      : num_heads(checked_num_heads(a)), scale(checked_scale(a)), precision(checked_precision(a)) {}

  void Compute(const Io& io) const {
    const Tensor &qkv = io.in(0), &cu = io.in(2);
    const Tensor *bias = io.optional(1), *rows = io.optional(3), *query = io.optional(4);
    bort::PackedAttentionDims dims = bort::check_packed_attention(
        qkv.shape, shape_of(bias), cu.shape, shape_of(rows), shape_of(query), num_heads, scale ? &*scale : nullptr);
    dims.shape.precision = precision;
    const std::vector<int64_t> offsets = to_int64(cu, static_cast<size_t>(dims.num_seqs + 1));
    std::vector<int64_t> row_indices;
    bort::PackedQueries queries;
    if (rows) {  // present but empty selects no row: a zero-row result
      row_indices = to_int64(*rows, static_cast<size_t>(dims.num_queries));
      queries.selected = true;
      queries.rows = row_indices.data();
      queries.count = dims.num_queries;
    }
    queries.separate_values = query != nullptr;
    queries.values = floats(query);
    bort::check_cu_seqlens(offsets.data(), dims.num_seqs, dims.tokens);  // before the output is allocated
    if (rows) bort::check_query_rows(queries.rows, queries.count, dims.tokens);
    float* out = io.out<float>(0, {dims.num_queries, dims.shape.hidden()});
    bort::attention_packed(qkv.as<float>(), floats(bias), offsets.data(), dims.num_seqs, queries, out, dims.tokens,
                           dims.shape, io.pool());
  }
};

struct BiasGelu {
  static constexpr const char* kName = "BiasGelu";
  static constexpr Ports<2> kInputs{{{"x", kRequired, kFloat}, {"bias", kRequired, kFloat}}};
  static constexpr Ports<1> kOutputs{{{"out", kRequired, kFloat}}};

  explicit BiasGelu(const Attributes&) {}

  void Compute(const Io& io) const {
    const Tensor &x = io.in(0), &bias = io.in(1);
    const bort::RowsDims dims = bort::check_bias_gelu(x.shape, bias.shape);
    float* out = io.out<float>(0, x.shape);
    bort::bias_gelu(x.as<float>(), bias.as<float>(), out, dims.rows, dims.width, io.pool());
  }
};

struct SkipLayerNorm {
  static constexpr const char* kName = "SkipLayerNorm";
  static constexpr Ports<6> kInputs{{{"x", kRequired, kFloat},
                                     {"skip", kRequired, kFloat},
                                     {"gamma", kRequired, kFloat},
                                     {"beta", kOptional, kFloat},
                                     {"bias", kOptional, kFloat},
                                     {"skip_scale", kOptional, kFloat}}};
  static constexpr Ports<1> kOutputs{{{"out", kRequired, kFloat}}};
  float epsilon;

  explicit SkipLayerNorm(const Attributes& a) : epsilon(checked_epsilon(a)) {}

  void Compute(const Io& io) const {
    const Tensor &x = io.in(0), &skip = io.in(1), &gamma = io.in(2);
    const Tensor *beta = io.optional(3), *bias = io.optional(4), *skip_scale = io.optional(5);
    const bort::RowsDims dims = bort::check_skip_layernorm(x.shape, skip.shape, gamma.shape, shape_of(beta),
                                                           shape_of(bias), shape_of(skip_scale), epsilon);
    float* out = io.out<float>(0, x.shape);
    bort::skip_layernorm(x.as<float>(), skip.as<float>(), gamma.as<float>(), floats(beta), floats(bias),
                         floats(skip_scale), out, dims.rows, dims.width, epsilon, io.pool());
  }
};

// What both embedding ops check first: the shapes, then every index (a bad one is an error naming it).
struct EmbeddingRows {
  bort::RowsDims dims;
  std::vector<int64_t> word, position;
};

EmbeddingRows checked_embedding_rows(const char* op, const Tensor& ids, const Tensor& positions, const Tensor& word,
                                     const Tensor* word_scale, const Tensor& position, const Tensor* position_scale,
                                     const Tensor& gamma, const Tensor* beta, float epsilon) {
  EmbeddingRows rows;
  rows.dims =
      bort::check_embed_layernorm(op, ids.shape, positions.shape, word.shape, shape_of(word_scale), position.shape,
                                  shape_of(position_scale), gamma.shape, shape_of(beta), epsilon);
  rows.word = to_int64(ids, static_cast<size_t>(rows.dims.rows));
  rows.position = to_int64(positions, static_cast<size_t>(rows.dims.rows));
  bort::check_embedding_indices(op, "input_ids", rows.word.data(), rows.dims.rows, word.shape[0]);
  bort::check_embedding_indices(op, "position_ids", rows.position.data(), rows.dims.rows, position.shape[0]);
  return rows;
}

struct EmbedLayerNormInt8 {
  static constexpr const char* kName = "EmbedLayerNormInt8";
  static constexpr Ports<8> kInputs{{{"input_ids", kRequired, kAnyInt},
                                     {"position_ids", kRequired, kAnyInt},
                                     {"word", kRequired, kInt8},
                                     {"word_scale", kRequired, kFloat},
                                     {"position", kRequired, kInt8},
                                     {"position_scale", kRequired, kFloat},
                                     {"gamma", kRequired, kFloat},
                                     {"beta", kOptional, kFloat}}};
  static constexpr Ports<1> kOutputs{{{"out", kRequired, kFloat}}};
  float epsilon;

  explicit EmbedLayerNormInt8(const Attributes& a) : epsilon(checked_epsilon(a)) {}

  void Compute(const Io& io) const {
    const Tensor &word = io.in(2), &word_scale = io.in(3), &position = io.in(4), &position_scale = io.in(5),
                 &gamma = io.in(6);
    const Tensor* beta = io.optional(7);
    const EmbeddingRows rows = checked_embedding_rows(kName, io.in(0), io.in(1), word, &word_scale, position,
                                                      &position_scale, gamma, beta, epsilon);
    bort::embed_layernorm_int8(rows.word.data(), rows.position.data(), rows.dims.rows,
                               {word.as<int8_t>(), word_scale.as<float>(), word.shape[0]},
                               {position.as<int8_t>(), position_scale.as<float>(), position.shape[0]},
                               gamma.as<float>(), floats(beta), io.out<float>(0, {rows.dims.rows, rows.dims.width}),
                               rows.dims.width, epsilon, io.pool());
  }
};

struct EmbedLayerNormBf16 {
  static constexpr const char* kName = "EmbedLayerNormBf16";
  static constexpr Ports<6> kInputs{{{"input_ids", kRequired, kAnyInt},
                                     {"position_ids", kRequired, kAnyInt},
                                     {"word", kRequired, kBfloat16},
                                     {"position", kRequired, kBfloat16},
                                     {"gamma", kRequired, kFloat},
                                     {"beta", kOptional, kFloat}}};
  static constexpr Ports<1> kOutputs{{{"out", kRequired, kFloat}}};
  float epsilon;

  explicit EmbedLayerNormBf16(const Attributes& a) : epsilon(checked_epsilon(a)) {}

  void Compute(const Io& io) const {
    const Tensor &word = io.in(2), &position = io.in(3), &gamma = io.in(4);
    const Tensor* beta = io.optional(5);
    const EmbeddingRows rows =
        checked_embedding_rows(kName, io.in(0), io.in(1), word, nullptr, position, nullptr, gamma, beta, epsilon);
    bort::embed_layernorm_bf16(rows.word.data(), rows.position.data(), rows.dims.rows,
                               {word.as<uint16_t>(), word.shape[0]}, {position.as<uint16_t>(), position.shape[0]},
                               gamma.as<float>(), floats(beta), io.out<float>(0, {rows.dims.rows, rows.dims.width}),
                               rows.dims.width, epsilon, io.pool());
  }
};

struct QuantizeRows {
  static constexpr const char* kName = "QuantizeRows";
  static constexpr Ports<1> kInputs{{{"x", kRequired, kFloat}}};
  static constexpr Ports<3> kOutputs{
      {{"q", kRequired, kUint8}, {"scale", kRequired, kFloat}, {"zero_point", kRequired, kUint8}}};

  explicit QuantizeRows(const Attributes&) {}

  void Compute(const Io& io) const {
    const Tensor& x = io.in(0);
    const bort::RowsDims dims = bort::check_quantize_rows(x.shape);
    const bort::Shape leading(x.shape.begin(), x.shape.end() - 1);
    auto* q = io.out<uint8_t>(0, x.shape);
    auto* scale = io.out<float>(1, leading);
    auto* zero_point = io.out<uint8_t>(2, leading);
    bort::quantize_rows(x.as<float>(), q, scale, zero_point, dims.rows, dims.width, io.pool());
  }
};

struct DequantizeRows {
  static constexpr const char* kName = "DequantizeRows";
  // acc, row_scale, row_zero_point, weight_scale, weight_colsum, bias, then the skip + LayerNorm epilogue's skip,
  // gamma, beta, skip_scale.
  static constexpr Ports<10> kInputs{{{"acc", kRequired, kInt32},
                                      {"row_scale", kRequired, kFloat},
                                      {"row_zero_point", kRequired, kUint8},
                                      {"weight_scale", kRequired, kFloat},
                                      {"weight_colsum", kRequired, kInt32},
                                      {"bias", kOptional, kFloat},
                                      {"skip", kOptional, kFloat},
                                      {"gamma", kOptional, kFloat},
                                      {"beta", kOptional, kFloat},
                                      {"skip_scale", kOptional, kFloat}}};
  // y, then the requantized y_quantized, y_scale, y_zero_point; which of them the node names is checked when the
  // kernel is created.
  static constexpr Ports<4> kOutputs{{{"y", kOptional, kFloat},
                                      {"y_quantized", kOptional, kUint8},
                                      {"y_scale", kOptional, kFloat},
                                      {"y_zero_point", kOptional, kUint8}}};
  bort::Activation activation;
  float epsilon;
  bool output_y;            // output 0
  bool output_requantized;  // outputs 1-3

  explicit DequantizeRows(const Attributes& a)
      : activation(checked_activation(a)),
        epsilon(checked_epsilon(a)),
        output_y(a.has_output(0)),
        output_requantized(a.has_output(1)) {
    bort::check_dequantize_rows_outputs(output_y, output_requantized, a.has_output(2), a.has_output(3));
  }

  static bort::Activation checked_activation(const Attributes& a) {
    const std::string act = a.optional_string("activation").value_or("none");
    if (act != "none" && act != "gelu")
      fail(a.op(), "attribute 'activation' must be 'none' or 'gelu', got '" + act + "'");
    return act == "gelu" ? bort::Activation::kGelu : bort::Activation::kNone;
  }

  void Compute(const Io& io) const {
    const Tensor &acc = io.in(0), &row_scale = io.in(1), &row_zero_point = io.in(2), &weight_scale = io.in(3),
                 &weight_colsum = io.in(4);
    const Tensor *bias = io.optional(5), *skip = io.optional(6), *gamma = io.optional(7), *beta = io.optional(8),
                 *skip_scale = io.optional(9);
    const bort::RowsDims dims = bort::check_dequantize_rows(
        acc.shape, row_scale.shape, row_zero_point.shape, weight_scale.shape, weight_colsum.shape, shape_of(bias),
        shape_of(skip), shape_of(gamma), shape_of(beta), shape_of(skip_scale), activation, epsilon);
    const bort::SkipLayerNormEpilogue norm{floats(skip), floats(gamma), floats(beta), floats(skip_scale), epsilon};
    float* y = output_y ? io.out<float>(0, acc.shape) : nullptr;
    bort::RequantizedRows requantized;
    if (output_requantized) {
      const bort::Shape leading(acc.shape.begin(), acc.shape.end() - 1);
      requantized.q = io.out<uint8_t>(1, acc.shape);
      requantized.scale = io.out<float>(2, leading);
      requantized.zero_point = io.out<uint8_t>(3, leading);
    }
    bort::dequantize_rows(acc.as<int32_t>(), row_scale.as<float>(), row_zero_point.as<uint8_t>(),
                          weight_scale.as<float>(), weight_colsum.as<int32_t>(), floats(bias), activation, norm, y,
                          requantized, dims.rows, dims.width, io.pool());
  }
};

struct LinearBf16 {
  static constexpr const char* kName = "LinearBf16";
  static constexpr Ports<3> kInputs{
      {{"x", kRequired, kFloat}, {"weight", kRequired, kBfloat16}, {"bias", kOptional, kFloat}}};
  static constexpr Ports<1> kOutputs{{{"y", kRequired, kFloat}}};
  bort::Activation activation;
  // The weight initializer, packed once when the session creates the kernel. A weight fed at run time (not in
  // any model we write) is packed on each call.
  std::shared_ptr<const bort::PackedBf16Weights> packed;

  explicit LinearBf16(const Attributes& a) : activation(DequantizeRows::checked_activation(a)) {
    const auto weight = a.constant_weight(1, kBfloat16);
    if (!weight) return;
    packed = std::make_shared<const bort::PackedBf16Weights>(bort::PackedBf16Weights::from_bf16(
        static_cast<const uint16_t*>(weight->data), weight->shape[0], weight->shape[1]));
  }

  void Compute(const Io& io) const {
    const Tensor &x = io.in(0), &weight = io.in(1);
    const Tensor* bias = io.optional(2);
    const bort::RowsDims dims = bort::check_linear_bf16(x.shape, weight.shape, shape_of(bias));
    std::optional<bort::PackedBf16Weights> per_call;
    const bort::PackedBf16Weights* w = packed.get();
    if (w == nullptr) {
      per_call = bort::PackedBf16Weights::from_bf16(weight.as<uint16_t>(), weight.shape[0], weight.shape[1]);
      w = &*per_call;
    }
    bort::Shape out_shape = x.shape;
    out_shape.back() = w->n();
    bort::linear_bf16(x.as<float>(), dims.rows, *w, floats(bias), activation, io.out<float>(0, out_shape), io.pool());
  }
};

// The int8 linear layer in one op (csrc/linear_int8.h): input rows (float, or uint8 rows with their scales and
// zero points), int8 weights [K, N] with per-column scales, then DequantizeRows' epilogue and outputs.
struct LinearInt8 {
  static constexpr const char* kName = "LinearInt8";
  static constexpr Ports<11> kInputs{{{"x", kOptional, kFloat},
                                      {"x_quantized", kOptional, kUint8},
                                      {"x_scale", kOptional, kFloat},
                                      {"x_zero_point", kOptional, kUint8},
                                      {"weight", kRequired, kInt8},
                                      {"weight_scale", kRequired, kFloat},
                                      {"bias", kOptional, kFloat},
                                      {"skip", kOptional, kFloat},
                                      {"gamma", kOptional, kFloat},
                                      {"beta", kOptional, kFloat},
                                      {"skip_scale", kOptional, kFloat}}};
  static constexpr Ports<4> kOutputs = DequantizeRows::kOutputs;
  static constexpr size_t kWeight = 4;
  bort::Activation activation;
  float epsilon;
  bool output_y, output_requantized;
  // Packed once, when the session creates the kernel, if the weight is a constant initializer (as exported
  // graphs have it); otherwise packed on every call.
  std::shared_ptr<const bort::PackedInt8Weights> packed;

  explicit LinearInt8(const Attributes& a)
      : activation(DequantizeRows::checked_activation(a)),
        epsilon(checked_epsilon(a)),
        output_y(a.has_output(0)),
        output_requantized(a.has_output(1)),
        packed(pack_constant_weight(a)) {
    bort::check_linear_int8_outputs(output_y, output_requantized, a.has_output(2), a.has_output(3));
  }

  static std::shared_ptr<const bort::PackedInt8Weights> pack_constant_weight(const Attributes& a) {
    const auto weight = a.constant_weight(kWeight, kInt8);
    if (!weight) return nullptr;
    return std::make_shared<const bort::PackedInt8Weights>(static_cast<const int8_t*>(weight->data), weight->shape[0],
                                                           weight->shape[1]);
  }

  void Compute(const Io& io) const {
    const Tensor *x = io.optional(0), *x_quantized = io.optional(1), *x_scale = io.optional(2),
                 *x_zero_point = io.optional(3);
    const Tensor &weight = io.in(kWeight), &weight_scale = io.in(5);
    const Tensor *bias = io.optional(6), *skip = io.optional(7), *gamma = io.optional(8), *beta = io.optional(9),
                 *skip_scale = io.optional(10);
    const bort::LinearInt8Dims dims = bort::check_linear_int8(
        shape_of(x), shape_of(x_quantized), shape_of(x_scale), shape_of(x_zero_point), weight.shape, weight_scale.shape,
        shape_of(bias), shape_of(skip), shape_of(gamma), shape_of(beta), shape_of(skip_scale), activation, epsilon);
    std::shared_ptr<const bort::PackedInt8Weights> w = packed;
    if (!w) w = std::make_shared<const bort::PackedInt8Weights>(weight.as<int8_t>(), dims.k, dims.n);
    if (w->k() != dims.k || w->n() != dims.n)  // a constant never changes shape; this guards the invariant
      fail(kName, "the packed weight does not match input 'weight' " + bort::shape_str(weight.shape));
    const bort::SkipLayerNormEpilogue norm{floats(skip), floats(gamma), floats(beta), floats(skip_scale), epsilon};
    float* y = output_y ? io.out<float>(0, dims.output) : nullptr;
    bort::RequantizedRows requantized;
    if (output_requantized) {
      const bort::Shape leading(dims.output.begin(), dims.output.end() - 1);
      requantized.q = io.out<uint8_t>(1, dims.output);
      requantized.scale = io.out<float>(2, leading);
      requantized.zero_point = io.out<uint8_t>(3, leading);
    }
    bort::LinearInt8Input in;
    in.x = floats(x);
    if (x_quantized != nullptr) {
      in.q = x_quantized->as<uint8_t>();
      in.scale = x_scale->as<float>();
      in.zero_point = x_zero_point->as<uint8_t>();
    }
    bort::linear_int8(in, dims.rows, *w, weight_scale.as<float>(), floats(bias), activation, norm, y, requantized,
                      io.pool());
  }
};

// ---------------------------------------------------------------------------------------------
// The OrtCustomOp of a kernel struct.

// An error as an onnxruntime status whose message names the op (kernels' own messages may not).
OrtStatus* to_status(const char* op, const std::exception& e, OrtErrorCode code = ORT_INVALID_ARGUMENT) {
  std::string message = e.what();
  const std::string prefix = std::string(op) + ": ";
  if (message.compare(0, prefix.size(), prefix) != 0) message = prefix + message;
  return Ort::GetApi().CreateStatus(code, message.c_str());
}

template <typename Kernel>
struct Instance : Kernel {
  using Kernel::Kernel;
  OrtStatus* ComputeV2(OrtKernelContext* ctx) const {
    try {
      this->Compute(Io(ctx, Kernel::kName, Kernel::kInputs, Kernel::kOutputs));
      return nullptr;
    } catch (const Ort::Exception& e) {
      return to_status(Kernel::kName, e, e.GetOrtErrorCode());
    } catch (const std::exception& e) {
      return to_status(Kernel::kName, e);
    }
  }
};

OrtCustomOpInputOutputCharacteristic characteristic(const Port& p) {
  return p.required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

template <typename Kernel>
struct Op : Ort::CustomOpBase<Op<Kernel>, Instance<Kernel>, /*WithStatus=*/true> {
  const char* GetName() const { return Kernel::kName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return Kernel::kInputs.size(); }
  ONNXTensorElementDataType GetInputType(size_t i) const { return Kernel::kInputs[i].type; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return characteristic(Kernel::kInputs[i]);
  }
  size_t GetOutputTypeCount() const { return Kernel::kOutputs.size(); }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return Kernel::kOutputs[i].type; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return characteristic(Kernel::kOutputs[i]);
  }

  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Instance<Kernel>(Attributes(info, Kernel::kName));
      return nullptr;
    } catch (const Ort::Exception& e) {
      return to_status(Kernel::kName, e, e.GetOrtErrorCode());
    } catch (const std::exception& e) {
      return to_status(Kernel::kName, e);
    }
  }
};

// The OrtCustomOp of a kernel struct: one per process, since every session that uses it keeps a pointer to it.
template <typename Kernel>
OrtCustomOp* op() {
  static Op<Kernel> instance;
  return &instance;
}

// The domain's ops: adding one is its kernel struct above and its entry here.
OrtCustomOp* const kOps[] = {op<FusedAttention>(), op<PackedAttention>(),    op<BiasGelu>(),
                             op<SkipLayerNorm>(),  op<EmbedLayerNormInt8>(), op<EmbedLayerNormBf16>(),
                             op<QuantizeRows>(),   op<DequantizeRows>(),     op<LinearBf16>(),
                             op<LinearInt8>()};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* ort = api_base->GetApi(ORT_API_VERSION);
  if (ort == nullptr) {
    // Older runtime than our headers: report through the oldest API, which every runtime serves.
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "bort_infer custom ops need onnxruntime >= 1.21 (C API 21)");
  }
  Ort::InitApi(ort);
  // A BORT_INFER_ISA this library cannot honour is the caller's mistake: refuse rather than guess.
  if (!bort::isa_environment_error().empty())
    return ort->CreateStatus(ORT_INVALID_ARGUMENT, bort::isa_environment_error().c_str());
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    Ort::CustomOpDomain domain{kDomain};
    for (OrtCustomOp* custom_op : kOps) domain.Add(custom_op);
    Ort::UnownedSessionOptions{options}.Add(domain);
    domain.release();  // one per registration, never released: it must outlive the sessions that use it
    return nullptr;
  } catch (const Ort::Exception& e) {
    return ort->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
}
