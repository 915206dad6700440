// onnxruntime custom-op front end: domain "ai.bort_infer", ops FusedAttention, PackedAttention,
// BiasGelu, SkipLayerNorm, QuantizeRows and DequantizeRows. Registration entry point: RegisterCustomOps (exported, C
// linkage).
//
// Every input's presence, rank, shape and dtype and every attribute is validated before a kernel
// runs; errors become an ORT error status (never an exception across the C boundary, never a crash).
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
#include "dequantize_rows.h"
#include "parallel.h"
#include "quantize_rows.h"
#include "shape_checks.h"
#include "skip_layernorm.h"

namespace {

constexpr const char* kDomain = "ai.bort_infer";

const OrtApi& api() { return Ort::GetApi(); }

// Runs kernel tasks on the session's intra-op thread pool (serially when it has one thread).
class OrtParallelFor final : public bort::ParallelFor {
 public:
  explicit OrtParallelFor(const OrtKernelContext* ctx) : ctx_(ctx) {}

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
      } catch (...) {  // exceptions must not unwind through ORT's thread pool
        std::lock_guard<std::mutex> lock(c->mutex);
        if (!c->error) c->error = std::current_exception();
      }
    };
    Ort::ThrowOnError(api().KernelContext_ParallelFor(ctx_, trampoline, num_tasks, 0, &call));
    if (call.error) std::rethrow_exception(call.error);
  }
  // The pool size is not visible through the C API; it only steers task granularity.
  size_t concurrency() const override { return bort::hardware_threads(); }

 private:
  const OrtKernelContext* ctx_;
};

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
    default: return "another type";
  }
}

struct InputTensor {
  bort::Shape shape;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const void* data = nullptr;
};

// Returns nullopt for an absent optional input (empty name in the node, or fewer inputs given).
std::optional<InputTensor> get_input(OrtKernelContext* ctx, size_t index, const char* op, const char* name) {
  size_t count = 0;
  Ort::ThrowOnError(api().KernelContext_GetInputCount(ctx, &count));
  if (index >= count) return std::nullopt;
  const OrtValue* value = nullptr;
  Ort::ThrowOnError(api().KernelContext_GetInput(ctx, index, &value));
  if (value == nullptr) return std::nullopt;
  int is_tensor = 0;
  Ort::ThrowOnError(api().IsTensor(value, &is_tensor));
  if (!is_tensor) throw std::invalid_argument(std::string(op) + ": input '" + name + "' must be a tensor");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  Ort::ThrowOnError(api().GetTensorTypeAndShape(value, &info));
  std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> guard(
      info, [](OrtTensorTypeAndShapeInfo* p) { Ort::GetApi().ReleaseTensorTypeAndShapeInfo(p); });
  InputTensor t;
  Ort::ThrowOnError(api().GetTensorElementType(info, &t.type));
  size_t rank = 0;
  Ort::ThrowOnError(api().GetDimensionsCount(info, &rank));
  t.shape.resize(rank);
  Ort::ThrowOnError(api().GetDimensions(info, t.shape.data(), rank));
  for (int64_t d : t.shape)
    if (d < 0) throw std::invalid_argument(std::string(op) + ": input '" + name + "' has a negative dimension");
  // API 21 has no const accessor; the data is only read.
  void* data = nullptr;
  Ort::ThrowOnError(api().GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  t.data = data;
  return t;
}

InputTensor require_input(OrtKernelContext* ctx, size_t index, const char* op, const char* name) {
  auto t = get_input(ctx, index, op, name);
  if (!t) throw std::invalid_argument(std::string(op) + ": required input '" + name + "' is missing");
  return *t;
}

void require_float(const std::optional<InputTensor>& t, const char* op, const char* name) {
  if (t && t->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw std::invalid_argument(std::string(op) + ": input '" + name + "' must be float32, got " + type_name(t->type));
}

void require_type(const InputTensor& t, ONNXTensorElementDataType type, const char* op, const char* name) {
  if (t.type != type)
    throw std::invalid_argument(std::string(op) + ": input '" + name + "' must be " + type_name(type) + ", got " +
                                type_name(t.type));
}

void require_int(const std::optional<InputTensor>& t, const char* op, const char* name) {
  if (t && t->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && t->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64)
    throw std::invalid_argument(std::string(op) + ": input '" + name + "' must be int32 or int64, got " +
                                type_name(t->type));
}

void* allocate_output(OrtKernelContext* ctx, size_t index, const bort::Shape& shape) {
  OrtValue* out = nullptr;
  Ort::ThrowOnError(api().KernelContext_GetOutput(ctx, index, shape.data(), shape.size(), &out));
  // onnxruntime hands out no value for an optional output the node leaves out (empty name).
  if (out == nullptr) throw std::invalid_argument("output " + std::to_string(index) + " is not part of the node");
  void* data = nullptr;
  Ort::ThrowOnError(api().GetTensorMutableData(out, &data));
  return data;
}

float* allocate_output(OrtKernelContext* ctx, const bort::Shape& shape) {
  return static_cast<float*>(allocate_output(ctx, 0, shape));
}

// An int32 or int64 tensor of `count` elements as int64 (the caller checked the shape).
std::vector<int64_t> to_int64(const InputTensor& t, size_t count) {
  std::vector<int64_t> out(count);
  for (size_t i = 0; i < count; ++i)
    out[i] = t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? static_cast<const int64_t*>(t.data)[i]
                                                           : static_cast<const int32_t*>(t.data)[i];
  return out;
}

const float* float_data(const std::optional<InputTensor>& t) {
  return t ? static_cast<const float*>(t->data) : nullptr;
}
const bort::Shape* shape_ptr(const std::optional<InputTensor>& t) { return t ? &t->shape : nullptr; }

OrtStatus* to_status(const std::exception& e) { return api().CreateStatus(ORT_INVALID_ARGUMENT, e.what()); }

// The type of attribute `name` when the node has it under a type other than the one asked for, else nullopt.
// onnxruntime's getters fail alike for an absent attribute and one of another type; the other getters tell
// them apart (and name the type for the message). `message` is the failed getter's error.
std::optional<std::string> other_attribute_type(const OrtKernelInfo* info, const char* name,
                                                const std::string& message) {
  const Ort::ConstKernelInfo k{info};
  const auto holds = [](auto get) {
    try {
      return get();
    } catch (const Ort::Exception&) {
      return false;
    }
  };
  if (holds([&] { return (k.GetAttribute<int64_t>(name), true); })) return "int";
  if (holds([&] { return (k.GetAttribute<float>(name), true); })) return "float";
  if (holds([&] { return (k.GetAttribute<std::string>(name), true); })) return "string";
  // The list getters answer an empty list for an attribute of another type: only a non-empty list counts.
  if (holds([&] { return !k.GetAttributes<int64_t>(name).empty(); })) return "ints";
  if (holds([&] { return !k.GetAttributes<float>(name).empty(); })) return "floats";
  if (holds([&] { return (k.GetTensorAttribute(name, Ort::AllocatorWithDefaultOptions()), true); })) return "tensor";
  // A type no getter reads (strings, graphs, ...): onnxruntime's message still says the type is wrong.
  if (message.find("type don't match") != std::string::npos) return "another type";
  return std::nullopt;
}

// An attribute the node may leave out: nullopt when absent; present with another type is an error naming the op.
template <typename T>
std::optional<T> optional_attribute(const OrtKernelInfo* info, const char* op, const char* name, const char* type) {
  try {
    return Ort::ConstKernelInfo{info}.GetAttribute<T>(name);
  } catch (const Ort::Exception& e) {
    if (auto other = other_attribute_type(info, name, e.what()))
      throw std::invalid_argument(std::string(op) + ": attribute '" + name + "' must be " + type + ", got " + *other);
    return std::nullopt;
  }
}

std::optional<float> float_attribute(const OrtKernelInfo* info, const char* op, const char* name) {
  return optional_attribute<float>(info, op, name, "a float");
}
std::optional<int64_t> int_attribute(const OrtKernelInfo* info, const char* op, const char* name) {
  return optional_attribute<int64_t>(info, op, name, "an int");
}
std::optional<std::string> string_attribute(const OrtKernelInfo* info, const char* op, const char* name) {
  return optional_attribute<std::string>(info, op, name, "a string");
}

// Whether the node names output `index` (an optional output left out has an empty name, or is past the end).
bool has_output(const OrtKernelInfo* info, size_t index) {
  size_t count = 0;
  Ort::ThrowOnError(api().KernelInfo_GetOutputCount(info, &count));
  if (index >= count) return false;
  size_t size = 0;  // the name's length including its terminating NUL
  Ort::ThrowOnError(api().KernelInfo_GetOutputName(info, index, nullptr, &size));
  return size > 1;
}

float checked_epsilon(const OrtKernelInfo* info, const char* op) {
  const float eps = float_attribute(info, op, "epsilon").value_or(1e-12f);
  if (!std::isfinite(eps) || eps < 0.0f)
    throw std::invalid_argument(std::string(op) + ": attribute 'epsilon' must be finite and >= 0, got " +
                                std::to_string(eps));
  return eps;
}

int64_t required_num_heads(const OrtKernelInfo* info, const char* op) {
  auto heads = int_attribute(info, op, "num_heads");
  if (!heads) throw std::invalid_argument(std::string(op) + ": integer attribute 'num_heads' is required");
  if (*heads <= 0)
    throw std::invalid_argument(std::string(op) + ": num_heads must be positive, got " + std::to_string(*heads));
  return *heads;
}

std::optional<float> checked_scale(const OrtKernelInfo* info, const char* op) {
  auto scale = float_attribute(info, op, "scale");
  if (scale && !std::isfinite(*scale))
    throw std::invalid_argument(std::string(op) + ": attribute 'scale' must be finite");
  return scale;
}

// ---------------------------------------------------------------------------------------------

struct FusedAttentionKernel {
  int64_t num_heads;
  std::optional<float> scale;

  OrtStatus* ComputeV2(OrtKernelContext* ctx) try {
    const char* op = "FusedAttention";
    const InputTensor qkv = require_input(ctx, 0, op, "qkv");
    const auto bias = get_input(ctx, 1, op, "bias");
    const auto mask = get_input(ctx, 2, op, "mask");
    require_float(qkv, op, "qkv");
    require_float(bias, op, "bias");
    require_int(mask, op, "mask");
    const bort::AttentionDims dims =
        bort::check_attention(qkv.shape, shape_ptr(bias), shape_ptr(mask), num_heads, scale ? &*scale : nullptr);
    bort::AttentionMask m;
    m.kind = dims.mask_kind;
    if (mask) {
      m.data = mask->data;
      m.is_int64 = mask->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    }
    float* out = allocate_output(ctx, {dims.batch, dims.seq, dims.shape.hidden()});
    bort::attention_padded(static_cast<const float*>(qkv.data), float_data(bias), m, out, dims.batch, dims.seq,
                           dims.shape, OrtParallelFor(ctx));
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

struct PackedAttentionKernel {
  int64_t num_heads;
  std::optional<float> scale;

  OrtStatus* ComputeV2(OrtKernelContext* ctx) try {
    const char* op = "PackedAttention";
    const InputTensor qkv = require_input(ctx, 0, op, "qkv");
    const auto bias = get_input(ctx, 1, op, "bias");
    const InputTensor cu = require_input(ctx, 2, op, "cu_seqlens");
    const auto rows = get_input(ctx, 3, op, "query_rows");
    const auto query = get_input(ctx, 4, op, "query");
    require_float(qkv, op, "qkv");
    require_float(bias, op, "bias");
    require_int(cu, op, "cu_seqlens");
    require_int(rows, op, "query_rows");
    require_float(query, op, "query");
    const bort::PackedAttentionDims dims = bort::check_packed_attention(
        qkv.shape, shape_ptr(bias), cu.shape, shape_ptr(rows), shape_ptr(query), num_heads, scale ? &*scale : nullptr);
    const std::vector<int64_t> offsets = to_int64(cu, static_cast<size_t>(dims.num_seqs + 1));
    std::vector<int64_t> row_indices;
    bort::PackedQueries queries;
    if (rows) {  // present but empty selects no row: a zero-row result
      row_indices = to_int64(*rows, static_cast<size_t>(dims.num_queries));
      queries.selected = true;
      queries.rows = row_indices.data();
      queries.count = dims.num_queries;
    }
    queries.separate_values = query.has_value();
    queries.values = float_data(query);
    float* out = allocate_output(ctx, {dims.num_queries, dims.shape.hidden()});
    bort::attention_packed(static_cast<const float*>(qkv.data), float_data(bias), offsets.data(), dims.num_seqs,
                           queries, out, dims.tokens, dims.shape, OrtParallelFor(ctx));
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

struct BiasGeluKernel {
  OrtStatus* ComputeV2(OrtKernelContext* ctx) try {
    const char* op = "BiasGelu";
    const InputTensor x = require_input(ctx, 0, op, "x");
    const InputTensor bias = require_input(ctx, 1, op, "bias");
    require_float(x, op, "x");
    require_float(bias, op, "bias");
    const bort::RowsDims dims = bort::check_bias_gelu(x.shape, bias.shape);
    float* out = allocate_output(ctx, x.shape);
    bort::bias_gelu(static_cast<const float*>(x.data), static_cast<const float*>(bias.data), out, dims.rows, dims.width,
                    OrtParallelFor(ctx));
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

struct SkipLayerNormKernel {
  float epsilon;

  OrtStatus* ComputeV2(OrtKernelContext* ctx) try {
    const char* op = "SkipLayerNorm";
    const InputTensor x = require_input(ctx, 0, op, "x");
    const InputTensor skip = require_input(ctx, 1, op, "skip");
    const InputTensor gamma = require_input(ctx, 2, op, "gamma");
    const auto beta = get_input(ctx, 3, op, "beta");
    const auto bias = get_input(ctx, 4, op, "bias");
    const auto skip_scale = get_input(ctx, 5, op, "skip_scale");
    require_float(x, op, "x");
    require_float(skip, op, "skip");
    require_float(gamma, op, "gamma");
    require_float(beta, op, "beta");
    require_float(bias, op, "bias");
    require_float(skip_scale, op, "skip_scale");
    const bort::RowsDims dims = bort::check_skip_layernorm(x.shape, skip.shape, gamma.shape, shape_ptr(beta),
                                                           shape_ptr(bias), shape_ptr(skip_scale), epsilon);
    float* out = allocate_output(ctx, x.shape);
    bort::skip_layernorm(static_cast<const float*>(x.data), static_cast<const float*>(skip.data),
                         static_cast<const float*>(gamma.data), float_data(beta), float_data(bias),
                         float_data(skip_scale), out, dims.rows, dims.width, epsilon, OrtParallelFor(ctx));
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

struct QuantizeRowsKernel {
  OrtStatus* ComputeV2(OrtKernelContext* ctx) try {
    const char* op = "QuantizeRows";
    const InputTensor x = require_input(ctx, 0, op, "x");
    require_float(x, op, "x");
    const bort::RowsDims dims = bort::check_quantize_rows(x.shape);
    const bort::Shape leading(x.shape.begin(), x.shape.end() - 1);
    auto* q = static_cast<uint8_t*>(allocate_output(ctx, 0, x.shape));
    auto* scale = static_cast<float*>(allocate_output(ctx, 1, leading));
    auto* zero_point = static_cast<uint8_t*>(allocate_output(ctx, 2, leading));
    bort::quantize_rows(static_cast<const float*>(x.data), q, scale, zero_point, dims.rows, dims.width,
                        OrtParallelFor(ctx));
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

struct DequantizeRowsKernel {
  bort::Activation activation;
  float epsilon;
  bool output_y;            // output 0
  bool output_requantized;  // outputs 1-3

  OrtStatus* ComputeV2(OrtKernelContext* ctx) try {
    const char* op = "DequantizeRows";
    const InputTensor acc = require_input(ctx, 0, op, "acc");
    const InputTensor row_scale = require_input(ctx, 1, op, "row_scale");
    const InputTensor row_zero_point = require_input(ctx, 2, op, "row_zero_point");
    const InputTensor weight_scale = require_input(ctx, 3, op, "weight_scale");
    const InputTensor weight_colsum = require_input(ctx, 4, op, "weight_colsum");
    const auto bias = get_input(ctx, 5, op, "bias");
    const auto skip = get_input(ctx, 6, op, "skip");
    const auto gamma = get_input(ctx, 7, op, "gamma");
    const auto beta = get_input(ctx, 8, op, "beta");
    const auto skip_scale = get_input(ctx, 9, op, "skip_scale");
    require_type(acc, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, op, "acc");
    require_float(row_scale, op, "row_scale");
    require_type(row_zero_point, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, op, "row_zero_point");
    require_float(weight_scale, op, "weight_scale");
    require_type(weight_colsum, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, op, "weight_colsum");
    require_float(bias, op, "bias");
    require_float(skip, op, "skip");
    require_float(gamma, op, "gamma");
    require_float(beta, op, "beta");
    require_float(skip_scale, op, "skip_scale");
    const bort::RowsDims dims = bort::check_dequantize_rows(
        acc.shape, row_scale.shape, row_zero_point.shape, weight_scale.shape, weight_colsum.shape, shape_ptr(bias),
        shape_ptr(skip), shape_ptr(gamma), shape_ptr(beta), shape_ptr(skip_scale), activation, epsilon);
    bort::SkipLayerNormEpilogue norm;
    norm.skip = float_data(skip);
    norm.gamma = float_data(gamma);
    norm.beta = float_data(beta);
    norm.skip_scale = float_data(skip_scale);
    norm.epsilon = epsilon;
    float* y = output_y ? static_cast<float*>(allocate_output(ctx, 0, acc.shape)) : nullptr;
    bort::RequantizedRows requantized;
    if (output_requantized) {
      const bort::Shape leading(acc.shape.begin(), acc.shape.end() - 1);
      requantized.q = static_cast<uint8_t*>(allocate_output(ctx, 1, acc.shape));
      requantized.scale = static_cast<float*>(allocate_output(ctx, 2, leading));
      requantized.zero_point = static_cast<uint8_t*>(allocate_output(ctx, 3, leading));
    }
    bort::dequantize_rows(static_cast<const int32_t*>(acc.data), static_cast<const float*>(row_scale.data),
                          static_cast<const uint8_t*>(row_zero_point.data),
                          static_cast<const float*>(weight_scale.data), static_cast<const int32_t*>(weight_colsum.data),
                          float_data(bias), activation, norm, y, requantized, dims.rows, dims.width,
                          OrtParallelFor(ctx));
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

// ---------------------------------------------------------------------------------------------
// Op descriptions. `kInputs` and `kOutputs` list (required?, element type) per input and output;
// UNDEFINED accepts any type at graph level (int32 or int64 inputs, checked at run time).

struct InputSpec {
  bool required;
  ONNXTensorElementDataType type;
};
using OutputSpec = InputSpec;

constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kAnyInt = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
constexpr auto kUint8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr auto kInt32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;

template <typename Derived, typename Kernel>
struct OpBase : Ort::CustomOpBase<Derived, Kernel, /*WithStatus=*/true> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetOutputTypeCount() const { return Derived::kOutputs.size(); }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return Derived::kOutputs[i].type; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return Derived::kOutputs[i].required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetInputTypeCount() const { return Derived::kInputs.size(); }
  ONNXTensorElementDataType GetInputType(size_t i) const { return Derived::kInputs[i].type; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return Derived::kInputs[i].required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }

  OrtStatus* CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const try {
    *kernel = static_cast<const Derived*>(this)->Make(info);
    return nullptr;
  } catch (const std::exception& e) {
    return to_status(e);
  }
};

constexpr std::array<OutputSpec, 1> kOneFloatOutput{{{true, kFloat}}};

struct FusedAttentionOp : OpBase<FusedAttentionOp, FusedAttentionKernel> {
  static constexpr std::array<InputSpec, 3> kInputs{{{true, kFloat}, {false, kFloat}, {false, kAnyInt}}};
  static constexpr auto kOutputs = kOneFloatOutput;
  const char* GetName() const { return "FusedAttention"; }
  FusedAttentionKernel* Make(const OrtKernelInfo* info) const {
    return new FusedAttentionKernel{required_num_heads(info, GetName()), checked_scale(info, GetName())};
  }
};

struct PackedAttentionOp : OpBase<PackedAttentionOp, PackedAttentionKernel> {
  static constexpr std::array<InputSpec, 5> kInputs{
      {{true, kFloat}, {false, kFloat}, {true, kAnyInt}, {false, kAnyInt}, {false, kFloat}}};
  static constexpr auto kOutputs = kOneFloatOutput;
  const char* GetName() const { return "PackedAttention"; }
  PackedAttentionKernel* Make(const OrtKernelInfo* info) const {
    return new PackedAttentionKernel{required_num_heads(info, GetName()), checked_scale(info, GetName())};
  }
};

struct BiasGeluOp : OpBase<BiasGeluOp, BiasGeluKernel> {
  static constexpr std::array<InputSpec, 2> kInputs{{{true, kFloat}, {true, kFloat}}};
  static constexpr auto kOutputs = kOneFloatOutput;
  const char* GetName() const { return "BiasGelu"; }
  BiasGeluKernel* Make(const OrtKernelInfo*) const { return new BiasGeluKernel{}; }
};

struct SkipLayerNormOp : OpBase<SkipLayerNormOp, SkipLayerNormKernel> {
  static constexpr std::array<InputSpec, 6> kInputs{
      {{true, kFloat}, {true, kFloat}, {true, kFloat}, {false, kFloat}, {false, kFloat}, {false, kFloat}}};
  static constexpr auto kOutputs = kOneFloatOutput;
  const char* GetName() const { return "SkipLayerNorm"; }
  SkipLayerNormKernel* Make(const OrtKernelInfo* info) const {
    return new SkipLayerNormKernel{checked_epsilon(info, GetName())};
  }
};

struct QuantizeRowsOp : OpBase<QuantizeRowsOp, QuantizeRowsKernel> {
  static constexpr std::array<InputSpec, 1> kInputs{{{true, kFloat}}};
  static constexpr std::array<OutputSpec, 3> kOutputs{{{true, kUint8}, {true, kFloat}, {true, kUint8}}};
  const char* GetName() const { return "QuantizeRows"; }
  QuantizeRowsKernel* Make(const OrtKernelInfo*) const { return new QuantizeRowsKernel{}; }
};

struct DequantizeRowsOp : OpBase<DequantizeRowsOp, DequantizeRowsKernel> {
  // acc, row_scale, row_zero_point, weight_scale, weight_colsum, bias, then the skip + LayerNorm epilogue's
  // skip, gamma, beta, skip_scale.
  static constexpr std::array<InputSpec, 10> kInputs{{{true, kInt32},
                                                      {true, kFloat},
                                                      {true, kUint8},
                                                      {true, kFloat},
                                                      {true, kInt32},
                                                      {false, kFloat},
                                                      {false, kFloat},
                                                      {false, kFloat},
                                                      {false, kFloat},
                                                      {false, kFloat}}};
  // y, then the requantized y_quantized, y_scale, y_zero_point; which of them the node names is checked
  // when the kernel is created.
  static constexpr std::array<OutputSpec, 4> kOutputs{
      {{false, kFloat}, {false, kUint8}, {false, kFloat}, {false, kUint8}}};
  const char* GetName() const { return "DequantizeRows"; }
  DequantizeRowsKernel* Make(const OrtKernelInfo* info) const {
    const std::string act = string_attribute(info, GetName(), "activation").value_or("none");
    if (act != "none" && act != "gelu")
      throw std::invalid_argument("DequantizeRows: attribute 'activation' must be 'none' or 'gelu', got '" + act + "'");
    const bool y = has_output(info, 0), y_quantized = has_output(info, 1);
    bort::check_dequantize_rows_outputs(y, y_quantized, has_output(info, 2), has_output(info, 3));
    return new DequantizeRowsKernel{act == "gelu" ? bort::Activation::kGelu : bort::Activation::kNone,
                                    checked_epsilon(info, GetName()), y, y_quantized};
  }
};

// Op objects and domains must outlive every session that uses them: keep them for the process.
FusedAttentionOp g_fused_attention;
PackedAttentionOp g_packed_attention;
BiasGeluOp g_bias_gelu;
SkipLayerNormOp g_skip_layernorm;
QuantizeRowsOp g_quantize_rows;
DequantizeRowsOp g_dequantize_rows;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* ort = api_base->GetApi(ORT_API_VERSION);
  if (ort == nullptr) {
    // Older runtime than our headers: report through the oldest API, which every runtime serves.
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "bort_infer custom ops need onnxruntime >= 1.21 (C API 21)");
  }
  Ort::InitApi(ort);
  static std::mutex mutex;
  static std::vector<OrtCustomOpDomain*> domains;  // one per registration; never released
  std::lock_guard<std::mutex> lock(mutex);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = ort->CreateCustomOpDomain(kDomain, &domain)) return st;
  domains.push_back(domain);
  for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{&g_fused_attention, &g_packed_attention, &g_bias_gelu,
                                                             &g_skip_layernorm, &g_quantize_rows, &g_dequantize_rows}) {
    if (OrtStatus* st = ort->CustomOpDomain_Add(domain, op)) return st;
  }
  return ort->AddCustomOpDomain(options, domain);
}
