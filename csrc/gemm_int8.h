// u8 x s8 -> int32 GEMM on weights packed once: C[m, n] = sum_k A[m, k] * B[k, n], exact (int32 lanes wrap
// like onnxruntime's MatMulInteger, never saturate).
//
// One packed layout serves every path. B is cut into panels of up to kPanelWidth = 64 columns (the last one
// narrower, rounded up to 16 with zero columns); inside a panel, k-group g (four consecutive k) holds, per
// column, its four weights: bytes [g][column][k % 4]. That is the operand order of AVX-512 VNNI vpdpbusd (16
// columns x 4 k per zmm) and of an AMX-INT8 B tile (16 k-groups x 64 bytes, row stride = panel width x 4). AVX2
// has two paths on it: vpmaddubsw (u8 x s8 pairs into int16, widened by vpmaddwd with ones) where no pair of the
// weights can saturate that int16 (saturation_free_pairs), else the same bytes sign-extended to int16 and vpmaddwd.
// K is padded with zeros to a multiple of kKPad = 64 (one AMX tile depth), so every kernel reads whole k-groups
// and tiles.
//
// Blocking: a task owns a block of rows and a range of panels; for each panel (at most 64 x K bytes, kept in
// L1/L2) it runs the register-blocked micro-kernel over every row tile of its block (AMX: for each L2-sized chunk
// of panels, every row block meets the chunk's panels in turn, its rows staying in L1), then hands each finished
// int32 tile (in L1) to a TileSink: the plain GEMM copies it out, the fused linear op dequantizes it in place
// (linear_int8.h), so no int32 tensor ever goes to memory there. Large M splits rows across tasks (each task
// re-reads B, which its panel loop keeps cache-resident); small M splits panels (B read once in total).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "aligned_vector.h"
#include "cpu_dispatch.h"
#include "parallel.h"

namespace bort {

constexpr int64_t kPanelWidth = 64;  // columns per packed panel
constexpr int64_t kKPad = 64;        // K is padded to a multiple of this

// Weights B [K, N] int8 (row-major, as the ONNX initializer stores them) packed for every int8 path, with
// their column sums (sum_k B[k, n], for the activation zero-point correction) precomputed.
class PackedInt8Weights {
 public:
  // b: [k, n] int8, row stride ldb (>= n). k, n >= 0.
  PackedInt8Weights(const int8_t* b, int64_t k, int64_t n, int64_t ldb);
  PackedInt8Weights(const int8_t* b, int64_t k, int64_t n) : PackedInt8Weights(b, k, n, n) {}

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  int64_t padded_k() const { return padded_k_; }
  int64_t num_panels() const { return (n_ + kPanelWidth - 1) / kPanelWidth; }
  int64_t panel_begin(int64_t p) const { return p * kPanelWidth; }
  // Columns of panel p holding weights (the packed panel may be wider: rounded up to 16).
  int64_t panel_columns(int64_t p) const;
  // Packed width of panel p: panel_columns rounded up to 16.
  int64_t panel_width(int64_t p) const { return (panel_columns(p) + 15) / 16 * 16; }
  const int8_t* panel(int64_t p) const { return packed_.data() + p * kPanelWidth * padded_k_; }
  const int32_t* column_sums() const { return colsum_.data(); }
  // True when no two weights k = 2j, 2j + 1 of a column can take an int16 pair sum of u8 x s8 products past its
  // range: their positive parts add up to at most 128 and their negative parts to at least -128 (255 x 128 =
  // 32640). vpmaddubsw is then exact on these weights (the export can quantize them so: quantize_columns).
  bool saturation_free_pairs() const { return saturation_free_pairs_; }
  // B[k, n] read back from the packed form (for the scalar reference and tests).
  int8_t at(int64_t k, int64_t n) const;
  size_t packed_bytes() const { return packed_.size(); }

 private:
  int64_t k_, n_, padded_k_;
  // num_panels * kPanelWidth * padded_k bytes (a narrow last panel leaves slack); every panel starts on a cache line
  CacheLineVector<int8_t> packed_;
  std::vector<int32_t> colsum_;
  bool saturation_free_pairs_ = true;
};

// A finished int32 tile: rows [row0, row0 + rows) x columns [col0, col0 + cols) of C, acc[r * ld + c].
// Called from any task thread; tiles of one task arrive in the order of its blocking (above), a row tile possibly
// in several calls of a few rows each (AMX hands them over between its tile products).
class TileSink {
 public:
  virtual ~TileSink() = default;
  virtual void tile(const int32_t* acc, int64_t ld, int64_t row0, int64_t rows, int64_t col0, int64_t cols) const = 0;
};

// How the kernels read A: rows of `stride` elements whose entries [k, padded_k) are zero. The element type
// depends on the path (a_element_bytes): u8 for scalar / VNNI / AMX, u8 widened to int16 for AVX2.
struct GemmOperandA {
  const void* data = nullptr;
  int64_t stride = 0;  // elements per row
  int64_t rows = 0;
};

// The path the GEMM uses at `isa`: AMX-INT8 at kAmx, VNNI at kAvx512Vnni/kAvx512Bf16, AVX2 at kAvx2/kAvx512
// (AVX-512 without VNNI gains nothing over it): vpmaddubsw on weights whose pairs cannot saturate (kAvx2Maddubs,
// u8 rows, three instructions per 32 multiply-adds), else exact int16 products (kAvx2, four and a sign extension);
// on aarch64 sudot at kNeonI8mm, sdot at kNeonDotprod (activations offset to s8); scalar otherwise (plain NEON has
// no int8 dot product worth a path).
enum class Int8Path { kScalar, kAvx2, kAvx2Maddubs, kAvx512Vnni, kAmx, kNeonDotprod, kNeonI8mm };
// The path for `w` at `isa`, and the path for any weights (kAvx2Maddubs only ever for weights that allow it).
Int8Path int8_path_for(Isa isa, const PackedInt8Weights& w);
Int8Path int8_path_for(Isa isa);
const char* int8_path_name(Int8Path path);
// Bytes per element of the prepared A rows. No path reads past the last row (AMX, which loads whole 16-row
// tiles, copies a partial last row block into zero-padded scratch itself).
size_t a_element_bytes(Int8Path path);
// True when `path`'s A form of u8 rows [rows, k] is those rows themselves (u8, stride k == padded_k): the
// kernels can read the rows where they are, with no prepare_a_rows copy.
bool a_rows_read_in_place(Int8Path path, int64_t k, int64_t padded_k);
// Copies u8 rows src[r * lds + k] (r < rows, k < K) into dst in `path`'s form (stride padded_k, zero tail;
// kNeonDotprod stores a - 128 as s8, its kernel adds 128 x column sum back).
void prepare_a_rows(Int8Path path, const uint8_t* src, int64_t lds, int64_t rows, int64_t k, int64_t padded_k,
                    void* dst);

// C tiles of rows [0, a.rows) x panels [p0, p1) on the calling thread, handed to `sink` with row0 offset by
// `row_offset`.
void gemm_int8_block(Int8Path path, const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                     int64_t row_offset, const TileSink& sink);

// How a GEMM of m rows splits into tasks: row blocks of `rows_per_task` x panel blocks of `panels_per_task`.
// shared_rows: every row is prepared once up front and each task reads its block of them (any panel split, and
// AMX unless the caller finishes whole rows); otherwise each row task prepares and finishes its own rows, chunk
// by chunk, without a barrier.
struct GemmTaskPlan {
  int64_t rows_per_task = 0, row_tasks = 0;
  int64_t panels_per_task = 0, panel_tasks = 0;
  bool shared_rows = false;
  size_t num_tasks() const { return static_cast<size_t>(row_tasks * panel_tasks); }
};
// finishes_rows: the caller runs row stages (LayerNorm, requantization) that need whole rows of C.
GemmTaskPlan plan_gemm_tasks(Int8Path path, int64_t m, const PackedInt8Weights& w, size_t concurrency,
                             bool finishes_rows = false);

// C [m, n] int32 = A [m, k] u8 (row stride lda >= k) x B, on `isa`'s path (the plain GEMM, for tests and
// the kernel benchmark).
void gemm_u8s8(Isa isa, const uint8_t* a, int64_t m, int64_t lda, const PackedInt8Weights& w, int32_t* c,
               const ParallelFor& pf);

// A per-thread buffer of at least `bytes` bytes, 64-byte aligned, reused by later calls on the same thread
// (`slot` tells apart buffers needed at the same time: the users' slots are below).
void* thread_scratch(int slot, size_t bytes);
constexpr int kARowsScratch = 0;      // prepared A rows (gemm_u8s8, linear_int8)
constexpr int kQuantizedScratch = 1;  // quantized rows before prepare_a_rows (linear_int8)
constexpr int kFloatRowsScratch = 2;  // float rows awaiting the row stages (linear_int8)
constexpr int kAmxTailScratch = 3;    // the AMX kernel's zero-padded last row block

// Micro-kernel entry points of each path (one file per ISA); same contract as gemm_int8_block.
void gemm_int8_block_scalar(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                            int64_t row_offset, const TileSink& sink);
void gemm_int8_block_avx2(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1, int64_t row_offset,
                          const TileSink& sink);
void gemm_int8_block_avx2_maddubs(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                  int64_t row_offset, const TileSink& sink);
void gemm_int8_block_avx512_vnni(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                 int64_t row_offset, const TileSink& sink);
void gemm_int8_block_amx(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1, int64_t row_offset,
                         const TileSink& sink);
void gemm_int8_block_neon_dotprod(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                                  int64_t row_offset, const TileSink& sink);
void gemm_int8_block_neon_i8mm(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                               int64_t row_offset, const TileSink& sink);

}  // namespace bort
