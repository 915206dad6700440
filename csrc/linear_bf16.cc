#include "linear_bf16.h"

namespace bort {

void linear_bf16(const float* x, int64_t rows, const PackedBf16Weights& w, const float* bias, Activation activation,
                 float* y, const ParallelFor& pf) {
  Bf16Epilogue epilogue;
  epilogue.bias = bias;
  epilogue.activation = activation;
  gemm_bf16(x, rows, w, epilogue, y, pf);
}

}  // namespace bort
