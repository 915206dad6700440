#include "linear_int8.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_dispatch.h"
#include "quantize_rows.h"

namespace bort {
namespace {

// At most this many rows of a task are computed in one go: their prepared A (rows x padded_k) and float rows
// (rows x n) stay in L2 for the row stages, while each B panel is still reused by 16 row tiles. A task's rows
// are cut into equal chunks.
constexpr int64_t kMaxChunkRows = 96;

}  // namespace

// Float outputs at least this large (and not read again by a row stage) are written with non-temporal stores:
// an output the caches cannot keep until the next op reads it only doubles the memory traffic when each line is
// read for ownership before being written. What the caches keep scales with the last-level cache (shared with
// every other core of the socket): Bort's QKV output (12 MB at b8 s128, 6 MB at b1 s512, 48 MB at b8 s512) gained
// from streaming on an AMD EPYC Zen 4 (32 MB of L3 a CCD: 1.02-1.06x at b8 s128 and b1 s512, one thread) but lost on an
// Intel Xeon with a 480 MB L3 (attention read it back from memory: whole model 0.86x at b8 s128, 0.91x at
// b1 s512; level or better at b8 s512). A sixteenth of the last-level cache, at least 4 MB, fits both.
int64_t streamed_output_bytes() {
  constexpr int64_t kMinimum = int64_t{4} << 20;
  return std::max(kMinimum, last_level_cache_bytes() / 16);
}

namespace {

// Dequantizes each finished int32 tile into out (rows counted from out_row0).
class DequantizeSink final : public TileSink {
 public:
  DequantizeSink(Isa isa, const float* row_scale, const uint8_t* row_zero_point, const float* weight_scale,
                 const int32_t* colsum, const float* bias, Activation act, float* out, int64_t out_row0, int64_t n,
                 bool streamed = false)
      : streamed_(streamed),
        isa_(isa),
        row_scale_(row_scale),
        row_zero_point_(row_zero_point),
        weight_scale_(weight_scale),
        colsum_(colsum),
        bias_(bias),
        act_(act),
        out_(out),
        out_row0_(out_row0),
        n_(n) {}

  void tile(const int32_t* acc, int64_t ld, int64_t row0, int64_t rows, int64_t col0, int64_t cols) const override {
    dequantize_block_serial(isa_, acc, ld, row_scale_ + row0, row_zero_point_ + row0, weight_scale_ + col0,
                            colsum_ + col0, bias_ != nullptr ? bias_ + col0 : nullptr, act_,
                            out_ + (row0 - out_row0_) * n_ + col0, n_, rows, cols, streamed_);
  }

 private:
  bool streamed_;
  Isa isa_;
  const float* row_scale_;
  const uint8_t* row_zero_point_;
  const float* weight_scale_;
  const int32_t* colsum_;
  const float* bias_;
  Activation act_;
  float* out_;
  int64_t out_row0_, n_;
};

// Rows [r0, r1) of the input in `path`'s A form: where they are when they are already-quantized rows the kernels
// can read as they are (a_rows_read_in_place), otherwise written to dst,
// quantizing float rows first (their scales and zero points go to row_scale / row_zero_point). dst may be
// nullptr only in the first case.
const void* prepare_input_rows(Isa isa, Int8Path path, const LinearInt8Input& in, int64_t r0, int64_t r1, int64_t k,
                               int64_t padded_k, float* row_scale, uint8_t* row_zero_point, void* dst) {
  const int64_t rows = r1 - r0;
  const bool in_place = a_rows_read_in_place(path, k, padded_k);
  if (in.x == nullptr && in_place) return in.q + r0 * k;
  if (in.x != nullptr && in_place) {  // quantized straight into the A rows: one pass over the activations
    quantize_rows_serial(isa, in.x + r0 * k, static_cast<uint8_t*>(dst), row_scale + r0, row_zero_point + r0, rows, k);
    return dst;
  }
  const uint8_t* q = in.q != nullptr ? in.q + r0 * k : nullptr;
  if (in.x != nullptr) {
    auto* tmp =
        static_cast<uint8_t*>(thread_scratch(kQuantizedScratch, static_cast<size_t>(std::max<int64_t>(rows * k, 1))));
    quantize_rows_serial(isa, in.x + r0 * k, tmp, row_scale + r0, row_zero_point + r0, rows, k);
    q = tmp;
  }
  prepare_a_rows(path, q, k, rows, k, padded_k, dst);
  return dst;
}

}  // namespace

void linear_int8(const LinearInt8Input& in, int64_t rows, const PackedInt8Weights& w, const float* weight_scale,
                 const float* bias, Activation act, const SkipLayerNormEpilogue& norm, float* y,
                 const RequantizedRows& requantized, const ParallelFor& pf) {
  const bool requantize = requantized.q != nullptr;
  if (rows <= 0 || (y == nullptr && !requantize)) return;
  const int64_t k = w.k(), n = w.n(), kp = w.padded_k();
  if (n <= 0) {  // no output columns; empty rows still get QuantizeRows' scale 1 and zero point 0
    if (requantize)
      quantize_rows_serial(Isa::kScalar, nullptr, requantized.q, requantized.scale, requantized.zero_point, rows, 0);
    return;
  }
  const Isa isa = active_isa();
  const Int8Path path = int8_path_for(isa, w);
  const size_t elem = a_element_bytes(path);
  const bool row_stages = norm.skip != nullptr || requantize;
  const bool copy_a = in.x != nullptr || !a_rows_read_in_place(path, k, kp);  // else the kernels read in.q

  // Row scales and zero points: the input's, or filled in as the rows are quantized.
  std::vector<float> own_scale;
  std::vector<uint8_t> own_zero_point;
  float* row_scale = const_cast<float*>(in.scale);
  uint8_t* row_zero_point = const_cast<uint8_t*>(in.zero_point);
  if (in.x != nullptr) {
    own_scale.resize(static_cast<size_t>(rows));
    own_zero_point.resize(static_cast<size_t>(rows));
    row_scale = own_scale.data();
    row_zero_point = own_zero_point.data();
  }

  const bool streamed = y != nullptr && !row_stages && act == Activation::kNone &&
                        rows * n * static_cast<int64_t>(sizeof(float)) >= streamed_output_bytes();
  const GemmTaskPlan plan = plan_gemm_tasks(path, rows, w, pf.concurrency(), row_stages);
  if (!plan.shared_rows) {
    // Row tasks: each quantizes, multiplies and finishes its own rows, chunk by chunk, without a barrier.
    pf.run(static_cast<size_t>(plan.row_tasks), [&](size_t t) {
      const int64_t t0 = static_cast<int64_t>(t) * plan.rows_per_task;
      const int64_t t1 = std::min(rows, t0 + plan.rows_per_task);
      const int64_t chunks = (t1 - t0 + kMaxChunkRows - 1) / kMaxChunkRows;
      int64_t chunk_rows = (t1 - t0 + chunks - 1) / std::max<int64_t>(chunks, 1);
      if (path == Int8Path::kAmx) chunk_rows = (chunk_rows + 31) / 32 * 32;  // whole 32-row blocks: no tail copies
      for (int64_t r0 = t0; r0 < t1; r0 += chunk_rows) {
        const int64_t r1 = std::min(t1, r0 + chunk_rows), chunk = r1 - r0;
        void* buf = copy_a ? thread_scratch(kARowsScratch, static_cast<size_t>(chunk * kp) * elem) : nullptr;
        const void* a = prepare_input_rows(isa, path, in, r0, r1, k, kp, row_scale, row_zero_point, buf);
        float* out = y != nullptr
                         ? y + r0 * n
                         : static_cast<float*>(thread_scratch(kFloatRowsScratch, static_cast<size_t>(chunk * n) * 4));
        const DequantizeSink sink(isa, row_scale, row_zero_point, weight_scale, w.column_sums(), bias, act, out, r0, n,
                                  streamed);
        GemmOperandA op;
        op.data = a;
        op.stride = kp;
        op.rows = chunk;
        gemm_int8_block(path, op, w, 0, w.num_panels(), r0, sink);
        if (row_stages) finish_rows_serial(isa, out, norm.at_row(r0, n), requantized.at_row(r0, n), chunk, n);
      }
      if (streamed) streamed_stores_done();
    });
    return;
  }

  // Panel tasks: prepare every row once, split the columns (and the rows into blocks), then finish the rows.
  std::vector<char> a_rows(copy_a ? static_cast<size_t>(rows * kp) * elem + 64 : 0);
  char* buf = copy_a ? a_rows.data() + (64 - reinterpret_cast<uintptr_t>(a_rows.data()) % 64) % 64 : nullptr;
  const auto* a = copy_a ? static_cast<const char*>(buf) : reinterpret_cast<const char*>(in.q);
  if (copy_a)
    for_each_row_block(rows, k, pf, [&](int64_t r0, int64_t r1) {
      prepare_input_rows(isa, path, in, r0, r1, k, kp, row_scale, row_zero_point,
                         buf + static_cast<size_t>(r0 * kp) * elem);
    });
  std::vector<float> own_out(y == nullptr ? static_cast<size_t>(rows * n) : 0);
  float* out = y != nullptr ? y : own_out.data();
  const DequantizeSink sink(isa, row_scale, row_zero_point, weight_scale, w.column_sums(), bias, act, out, 0, n,
                            streamed);
  pf.run(plan.num_tasks(), [&](size_t t) {
    const int64_t rt = static_cast<int64_t>(t) / plan.panel_tasks, pt = static_cast<int64_t>(t) % plan.panel_tasks;
    const int64_t r0 = rt * plan.rows_per_task, p0 = pt * plan.panels_per_task;
    GemmOperandA op;
    op.data = a + static_cast<size_t>(r0 * kp) * elem;
    op.stride = kp;
    op.rows = std::min(rows, r0 + plan.rows_per_task) - r0;
    gemm_int8_block(path, op, w, p0, std::min(w.num_panels(), p0 + plan.panels_per_task), r0, sink);
    if (streamed) streamed_stores_done();
  });
  if (row_stages)
    for_each_row_block(rows, n, pf, [&](int64_t r0, int64_t r1) {
      finish_rows_serial(isa, out + r0 * n, norm.at_row(r0, n), requantized.at_row(r0, n), r1 - r0, n);
    });
}

}  // namespace bort
