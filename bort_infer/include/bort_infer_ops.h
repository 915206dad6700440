/* bort_infer_ops.h: the C interface of libbort_infer_ops.so, bort-infer's onnxruntime custom-op library.
 *
 * The library holds every ai.bort_infer kernel and their onnxruntime registration, and depends only on the
 * C and C++ runtimes (no Python). An application registers the ops on its session options before loading a
 * bort-infer model.onnx or model.ort:
 *
 *   - through onnxruntime, by path: OrtApi::RegisterCustomOpsLibrary_V2(options, "…/libbort_infer_ops.so")
 *     (C#: SessionOptions.RegisterCustomOpLibrary, Java: OrtSession.SessionOptions.registerCustomOpLibrary,
 *     Rust `ort`: SessionBuilder::with_operator_library); onnxruntime calls RegisterCustomOps below;
 *   - or linked directly: RegisterCustomOps(options, OrtGetApiBase()).
 *
 * `python -m bort_infer --ops-lib` and `--include-dir` print where the installed package keeps both files.
 * The op contract (inputs, outputs, attributes) is docs/ops.md; the model directory is docs/model-format.md.
 */
#ifndef BORT_INFER_OPS_H_
#define BORT_INFER_OPS_H_

#include <stddef.h>

/* The package version this header belongs to (equal to bort_infer.__version__). */
#define BORT_INFER_VERSION_MAJOR 0
#define BORT_INFER_VERSION_MINOR 1
#define BORT_INFER_VERSION_PATCH 0
#define BORT_INFER_VERSION "0.1.0"

/* The custom-op domain and its opset version, as a model's opset_import names them. */
#define BORT_INFER_OPS_DOMAIN "ai.bort_infer"
#define BORT_INFER_OPS_DOMAIN_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

/* onnxruntime's types (onnxruntime_c_api.h), declared here so that this header stands alone. */
struct OrtStatus;
struct OrtSessionOptions;
struct OrtApiBase;

/* The library's version string; equals BORT_INFER_VERSION when header and library match. */
const char* bort_infer_ops_version(void);

/* Adds the ai.bort_infer domain and all its ops to `options`. Returns NULL on success, else an OrtStatus
 * the caller releases with OrtApi::ReleaseStatus (onnxruntime older than the C API 21 gets an error). */
struct OrtStatus* RegisterCustomOps(struct OrtSessionOptions* options, const struct OrtApiBase* api_base);

/* Selects the kernels' instruction set for the whole process: "auto" (the best this CPU supports, the
 * default), "scalar" (the plain references) or a named ISA path (bort_infer_active_isa() names the one in
 * use). The BORT_INFER_ISA environment variable sets the initial choice. Returns 0 on success; otherwise
 * nonzero, the choice is unchanged and, when `error` is not NULL, a NUL-terminated reason (naming the
 * accepted values) is written into error[0 .. error_size). */
int bort_infer_set_isa(const char* name, char* error, size_t error_size);

/* The instruction set the kernels use now ("scalar", "avx2", ...); a static string. */
const char* bort_infer_active_isa(void);

#ifdef __cplusplus
}
#endif

#endif /* BORT_INFER_OPS_H_ */
