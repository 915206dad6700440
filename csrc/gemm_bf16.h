// bf16 GEMM: fp32 (or bf16) rows x prepacked bf16 weights -> fp32, products and sums in fp32.
//
// Numerics, identical on every path (scalar, AVX2+FMA, AVX512-BF16):
// - fp32 -> bf16 rounds to nearest even, exactly as vcvtne2ps2bf16: NaN stays a quiet NaN (sign and top
//   payload kept), fp32 subnormals become signed zero (the bf16 instructions treat subnormal inputs as zero).
// - C[m, n] is one fp32 accumulator per element, starting at +0, and for each pair p = 0 .. ceil(K/2) - 1:
//   acc += a[2p+1] * b[2p+1][n], then acc += a[2p] * b[2p][n], each a single rounding (a bf16 product is exact
//   in fp32): the order vdpbf16ps uses (measured on Zen 4: odd element first). An odd K pads with zero.
// Every path therefore gives the same bits, except where a partial sum falls into the fp32 subnormal range:
// vdpbf16ps flushes it to zero, the AVX2 and scalar paths keep it. The AMX path (tdpbf16ps) accumulates in
// its own order; it agrees within the bound of reordering an fp32 sum: |d| <= 2 K 2^-24 sum_k |a_k b_k|.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "dequantize_rows.h"  // Activation
#include "parallel.h"

namespace bort {

// Round to nearest even, as described above.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7F800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);           // zero or subnormal
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// y[i] = float_to_bf16(x[i]) with the active ISA's vector conversion (bit-identical to the scalar one).
void float_to_bf16_array(const float* x, uint16_t* y, int64_t n);

// Weights [K, N] in the layout every bf16 kernel reads: panels of kPanelWidth columns (the last one
// narrower, N padded with zero columns to a multiple of 16); inside a panel of width w, pair row p holds
// for each column c the two bf16 (b[2p][c], b[2p+1][c]) side by side: p * 2w + 2c + {0, 1}. That is the
// pair-interleaved operand of vdpbf16ps (16 columns = one zmm) and the VNNI layout of an AMX B tile
// (16 pair rows x 64 bytes, row stride 4w bytes). Pair rows are padded with zeros to a multiple of 16 (one
// AMX tile's depth). Subnormal bf16 weights are stored as signed zero, as the bf16 instructions read them.
class PackedBf16Weights {
 public:
  static constexpr int64_t kPanelWidth = 64;
  static constexpr int64_t kPairAlign = 16;

  // w: [k, n] row-major float32 (rounded with float_to_bf16) or bf16 bits. k, n >= 0.
  static PackedBf16Weights from_float(const float* w, int64_t k, int64_t n);
  static PackedBf16Weights from_bf16(const uint16_t* w, int64_t k, int64_t n);

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  int64_t pairs() const { return (k_ + 1) / 2; }          // pair rows holding data
  int64_t padded_pairs() const { return padded_pairs_; }  // pair rows stored per panel
  int64_t num_panels() const { return num_panels_; }
  int64_t panel_width(int64_t j) const;  // a multiple of 16
  const uint16_t* panel(int64_t j) const { return data_.get() + j * padded_pairs_ * 2 * kPanelWidth; }
  size_t bytes() const { return bytes_; }

  // Back to [k, n] row-major bf16 bits (subnormals flushed as stored).
  void unpack(uint16_t* w) const;

 private:
  struct Free {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  template <typename Load>
  static PackedBf16Weights pack(int64_t k, int64_t n, const Load& load);

  int64_t k_ = 0, n_ = 0, padded_pairs_ = 0, num_panels_ = 0;
  size_t bytes_ = 0;
  std::unique_ptr<uint16_t[], Free> data_;
};

// Applied to each accumulator as it leaves the kernel: v = act(acc + bias[n]).
struct Bf16Epilogue {
  const float* bias = nullptr;  // [n] or nullptr
  Activation activation = Activation::kNone;
};

// The kernel paths, chosen from active_isa(): AMX-BF16 tiles, AVX512-BF16 (vdpbf16ps), AVX2+FMA (bf16
// widened to fp32), scalar. A CPU with AVX-512 but without its BF16 extension runs the AVX2 path.
enum class Bf16Path { kScalar, kAvx2, kAvx512Bf16, kAmx };
Bf16Path active_bf16_path();
const char* bf16_path_name(Bf16Path path);

// c [m, n] = epilogue(a [m, k] @ w), a float32 rows (converted with float_to_bf16), c float32, both
// row-major and dense (a's row stride k, c's n). Tasks run on pf.
void gemm_bf16(const float* a, int64_t m, const PackedBf16Weights& w, const Bf16Epilogue& epilogue, float* c,
               const ParallelFor& pf);

// The same from bf16 rows: a [m, k] with row stride lda >= k (elements).
void gemm_bf16_rows(const uint16_t* a, int64_t lda, int64_t m, const PackedBf16Weights& w, const Bf16Epilogue& epilogue,
                    float* c, const ParallelFor& pf);

}  // namespace bort
