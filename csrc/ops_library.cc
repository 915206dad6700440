// The C entry points of libbort_infer_ops.so besides RegisterCustomOps (ort_custom_ops.cc): version and
// ISA control, declared in the public header bort_infer/include/bort_infer_ops.h.
#include <onnxruntime_c_api.h>

#include <cstring>
#include <exception>
#include <stdexcept>
#include <type_traits>

#include "bort_infer_ops.h"
#include "cpu_dispatch.h"

// The public header declares RegisterCustomOps without onnxruntime's headers; it must be the function
// onnxruntime's RegisterCustomOpsLibrary looks up.
static_assert(std::is_same<decltype(&RegisterCustomOps), OrtStatus* (*)(OrtSessionOptions*, const OrtApiBase*)>::value,
              "bort_infer_ops.h declares RegisterCustomOps with the wrong signature");

#define BORT_C_EXPORT extern "C" __attribute__((visibility("default")))

BORT_C_EXPORT const char* bort_infer_ops_version(void) { return BORT_INFER_VERSION; }

BORT_C_EXPORT int bort_infer_set_isa(const char* name, char* error, size_t error_size) {
  try {
    if (name == nullptr) throw std::invalid_argument("bort_infer_set_isa: name is NULL");
    bort::set_isa(name);
    return 0;
  } catch (const std::exception& e) {
    if (error != nullptr && error_size > 0) {
      std::strncpy(error, e.what(), error_size - 1);
      error[error_size - 1] = '\0';
    }
    return 1;
  }
}

BORT_C_EXPORT const char* bort_infer_active_isa(void) { return bort::isa_name(bort::active_isa()); }
