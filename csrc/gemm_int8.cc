#include "gemm_int8.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace bort {

// ---------------------------------------------------------------------------------------------
// Paths and operand A

namespace {

using BlockFn = void (*)(const GemmOperandA&, const PackedInt8Weights&, int64_t, int64_t, int64_t, const TileSink&);
struct Int8PathEntry {
  Isa isa;
  Int8Path path;
  BlockFn block;
};
constexpr Int8PathEntry kInt8Paths[] = {
#if BORT_X86_64
    {Isa::kAmx, Int8Path::kAmx, gemm_int8_block_amx},
    {Isa::kAvx512Vnni, Int8Path::kAvx512Vnni, gemm_int8_block_avx512_vnni},
    {Isa::kAvx2, Int8Path::kAvx2Maddubs, gemm_int8_block_avx2_maddubs},
    {Isa::kAvx2, Int8Path::kAvx2, gemm_int8_block_avx2},
#endif
#if BORT_AARCH64
    {Isa::kNeonI8mm, Int8Path::kNeonI8mm, gemm_int8_block_neon_i8mm},
    {Isa::kNeonDotprod, Int8Path::kNeonDotprod, gemm_int8_block_neon_dotprod},
#endif
    {Isa::kScalar, Int8Path::kScalar, gemm_int8_block_scalar}};

}  // namespace

Int8Path int8_path_for(Isa isa, const PackedInt8Weights& w) {
  return select_entry(
             isa, kInt8Paths,
             [&](const Int8PathEntry& e) { return e.path != Int8Path::kAvx2Maddubs || w.saturation_free_pairs(); })
      .path;
}

Int8Path int8_path_for(Isa isa) {
  return select_entry(isa, kInt8Paths, [](const Int8PathEntry& e) { return e.path != Int8Path::kAvx2Maddubs; }).path;
}

const char* int8_path_name(Int8Path path) {
  switch (path) {
    case Int8Path::kNeonI8mm: return "neon_i8mm";
    case Int8Path::kNeonDotprod: return "neon_dotprod";
    case Int8Path::kAmx: return "amx";
    case Int8Path::kAvx512Vnni: return "avx512_vnni";
    case Int8Path::kAvx2: return "avx2";
    case Int8Path::kAvx2Maddubs: return "avx2_maddubs";
    case Int8Path::kScalar: break;
  }
  return "scalar";
}

size_t a_element_bytes(Int8Path path) { return path == Int8Path::kAvx2 ? 2 : 1; }

bool a_rows_read_in_place(Int8Path path, int64_t k, int64_t padded_k) {
  return k == padded_k && a_element_bytes(path) == 1 && path != Int8Path::kNeonDotprod;
}

void prepare_a_rows(Int8Path path, const uint8_t* src, int64_t lds, int64_t rows, int64_t k, int64_t padded_k,
                    void* dst) {
  if (path == Int8Path::kAvx2) {
    auto* d = static_cast<int16_t*>(dst);
    for (int64_t r = 0; r < rows; ++r) {
      int16_t* row = d + r * padded_k;
      for (int64_t i = 0; i < k; ++i) row[i] = src[r * lds + i];
      std::fill(row + k, row + padded_k, int16_t{0});
    }
    return;
  }
  auto* d = static_cast<uint8_t*>(dst);
  for (int64_t r = 0; r < rows; ++r) {
    if (path == Int8Path::kNeonDotprod) {
      for (int64_t i = 0; i < k; ++i) d[r * padded_k + i] = static_cast<uint8_t>(src[r * lds + i] ^ 0x80u);  // a - 128
    } else if (k > 0) {
      std::memcpy(d + r * padded_k, src + r * lds, static_cast<size_t>(k));
    }
    std::memset(d + r * padded_k + k, 0, static_cast<size_t>(padded_k - k));
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar reference: the definition every SIMD path must reproduce bit for bit.

void gemm_int8_block_scalar(const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                            int64_t row_offset, const TileSink& sink) {
  const auto* av = static_cast<const uint8_t*>(a.data);
  std::vector<int32_t> tile(static_cast<size_t>(kPanelWidth));
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t cols = w.panel_columns(p), n0 = w.panel_begin(p);
    for (int64_t r = 0; r < a.rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        uint32_t acc = 0;  // wraps like an int32 lane
        for (int64_t kk = 0; kk < w.k(); ++kk)
          acc += static_cast<uint32_t>(av[r * a.stride + kk]) * static_cast<uint32_t>(int32_t{w.at(kk, n0 + c)});
        tile[c] = static_cast<int32_t>(acc);
      }
      sink.tile(tile.data(), kPanelWidth, row_offset + r, 1, n0, cols);
    }
  }
}

void gemm_int8_block(Int8Path path, const GemmOperandA& a, const PackedInt8Weights& w, int64_t p0, int64_t p1,
                     int64_t row_offset, const TileSink& sink) {
  if (a.rows <= 0 || p0 >= p1) return;
  for (const Int8PathEntry& e : kInt8Paths)
    if (e.path == path) return e.block(a, w, p0, p1, row_offset, sink);
  throw std::logic_error(std::string("int8 GEMM path ") + int8_path_name(path) + " is not built for this CPU");
}

// ---------------------------------------------------------------------------------------------
// Task planning

namespace {

// Rows split into `tasks` blocks (rounded up to `align` rows, which may leave fewer tasks), each over all panels.
GemmTaskPlan row_task_plan(int64_t m, int64_t tasks, int64_t align, int64_t panels) {
  GemmTaskPlan plan;
  plan.rows_per_task = ((m + tasks - 1) / tasks + align - 1) / align * align;
  plan.row_tasks = (m + plan.rows_per_task - 1) / plan.rows_per_task;
  plan.panels_per_task = panels;
  plan.panel_tasks = 1;
  return plan;
}

// The panels split into `wanted` blocks (fewer when they do not divide evenly).
void split_panels(GemmTaskPlan& plan, int64_t panels, int64_t wanted) {
  plan.panels_per_task = (panels + wanted - 1) / wanted;
  plan.panel_tasks = (panels + plan.panels_per_task - 1) / plan.panels_per_task;
}

}  // namespace

GemmTaskPlan plan_gemm_tasks(Int8Path path, int64_t m, const PackedInt8Weights& w, size_t concurrency,
                             bool finishes_rows) {
  GemmTaskPlan plan;
  const int64_t panels = w.num_panels();
  const int64_t threads = static_cast<int64_t>(std::max<size_t>(1, concurrency));
  if (m <= 0 || panels <= 0) return plan;
  // A task below ~15 us (4M multiply-adds on VNNI, 1M on AVX2) gains less from a second thread than waking it costs
  // (and on a busy machine the other core may not come at all): tiny GEMMs (one text's CLS row) run as one task.
  // On AVX2 a GEMM of under 4 rows costs what 4 rows do: it streams the weights (1 MB took 45 us on one AMD EPYC
  // Zen 3 core, at M = 1, and half that on two).
  const bool avx2 = path == Int8Path::kAvx2 || path == Int8Path::kAvx2Maddubs;
  const int64_t min_macs_per_task = avx2 ? int64_t{1} << 20 : int64_t{4} << 20;
  const int64_t costed_rows = avx2 ? std::max<int64_t>(m, 4) : m;
  const int64_t by_work = std::max<int64_t>(1, costed_rows * w.padded_k() * w.n() / min_macs_per_task);
  constexpr int64_t kMinRowsPerTask = 32;
  if (path == Int8Path::kAmx && finishes_rows && m >= 2 * kMinRowsPerTask) {
    // Row tasks that finish their own rows (in L2) beat panel tasks whose rows are finished after a barrier,
    // from L3, though each task streams B again: Bort int8, Intel Xeon, 2 threads: b1 s128 1.07x, b8 s128
    // 1.08x, b8 s512 1.06x (its LayerNorm linears: B 0.75-1 MB).
    return row_task_plan(m, std::min(m / kMinRowsPerTask, 4 * threads), 32, panels);
  }
  if (path == Int8Path::kAmx) {
    // AMX multiplies faster than B streams in from L3 (Bort's QKV weights, 3 MB, exceed L2): every B panel is
    // read once per block of up to ~512 KB of A rows (which stay in L2 while the task's panels go by), and the
    // tasks split the panels. Row tasks that each stream all of B ran at half the speed (Intel Xeon, AMX).
    constexpr int64_t kAmxBlockBytes = int64_t{512} << 10;
    const int64_t max_rows = std::max<int64_t>(32, kAmxBlockBytes / std::max(w.padded_k(), kKPad) / 32 * 32);
    plan.row_tasks = (m + max_rows - 1) / max_rows;
    plan.rows_per_task = ((m + plan.row_tasks - 1) / plan.row_tasks + 31) / 32 * 32;
    plan.row_tasks = (m + plan.rows_per_task - 1) / plan.rows_per_task;
    const int64_t wanted = threads > 1 ? std::min({panels, std::max<int64_t>(1, 4 * threads / plan.row_tasks),
                                                   std::max<int64_t>(1, by_work / plan.row_tasks)})
                                       : 1;
    split_panels(plan, panels, wanted);
    plan.shared_rows = true;
    return plan;
  }
  // Tasks are claimed one at a time by whichever thread is free, so equal tasks, as many as a small multiple
  // of the threads, keep the threads finishing together.
  // Few rows: the GEMM streams B, so tasks split the panels and B is read once in total. Enough rows per
  // thread: tasks split rows, each task re-reading B panel by panel (a panel is reused by all of the task's
  // rows while it sits in L1/L2, which costs little against rows x K x 64 multiply-adds).
  if (threads > 1 && m >= kMinRowsPerTask * threads)
    return row_task_plan(m, std::min(m / kMinRowsPerTask, 4 * threads) / threads * threads, 1, panels);
  plan.rows_per_task = m;
  plan.row_tasks = 1;
  split_panels(plan, panels, threads > 1 ? std::min({panels, 4 * threads, by_work}) : 1);
  plan.shared_rows = plan.panel_tasks > 1;
  return plan;
}

// ---------------------------------------------------------------------------------------------
// Plain GEMM

namespace {

class CopySink final : public TileSink {
 public:
  CopySink(int32_t* c, int64_t ldc) : c_(c), ldc_(ldc) {}
  void tile(const int32_t* acc, int64_t ld, int64_t row0, int64_t rows, int64_t col0, int64_t cols) const override {
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(c_ + (row0 + r) * ldc_ + col0, acc + r * ld, static_cast<size_t>(cols) * sizeof(int32_t));
  }

 private:
  int32_t* c_;
  int64_t ldc_;
};

}  // namespace

void gemm_u8s8(Isa isa, const uint8_t* a, int64_t m, int64_t lda, const PackedInt8Weights& w, int32_t* c,
               const ParallelFor& pf) {
  if (m <= 0 || w.n() <= 0) return;
  const Int8Path path = int8_path_for(isa, w);
  const CopySink sink(c, w.n());
  const GemmTaskPlan plan = plan_gemm_tasks(path, m, w, pf.concurrency());
  const int64_t kp = w.padded_k();
  const size_t elem = a_element_bytes(path);
  void* shared_a = nullptr;
  std::unique_ptr<char[], void (*)(void*)> shared_holder(nullptr, std::free);
  if (plan.shared_rows) {
    const size_t bytes = static_cast<size_t>(m * kp) * elem;
    shared_a = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (shared_a == nullptr) throw std::bad_alloc();
    shared_holder.reset(static_cast<char*>(shared_a));
    std::memset(shared_a, 0, bytes);
    prepare_a_rows(path, a, lda, m, w.k(), kp, shared_a);
  }
  pf.run(plan.num_tasks(), [&](size_t t) {
    const int64_t rt = static_cast<int64_t>(t) / plan.panel_tasks, pt = static_cast<int64_t>(t) % plan.panel_tasks;
    const int64_t r0 = rt * plan.rows_per_task, r1 = std::min(m, r0 + plan.rows_per_task);
    const int64_t p0 = pt * plan.panels_per_task, p1 = std::min(w.num_panels(), p0 + plan.panels_per_task);
    GemmOperandA op;
    op.stride = kp;
    op.rows = r1 - r0;
    if (shared_a != nullptr) {
      op.data = static_cast<const char*>(shared_a) + static_cast<size_t>(r0 * kp) * elem;
    } else {
      void* buf = thread_scratch(kARowsScratch, static_cast<size_t>(op.rows * kp) * elem);
      prepare_a_rows(path, a + r0 * lda, lda, op.rows, w.k(), kp, buf);
      op.data = buf;
    }
    gemm_int8_block(path, op, w, p0, p1, r0, sink);
  });
}

// ---------------------------------------------------------------------------------------------
// Scratch

void* thread_scratch(int slot, size_t bytes) {
  struct Buffer {
    std::unique_ptr<char[], void (*)(void*)> data{nullptr, std::free};
    size_t size = 0;
  };
  constexpr int kSlots = 4;
  thread_local Buffer buffers[kSlots];
  if (slot < 0 || slot >= kSlots) throw std::logic_error("thread_scratch: bad slot");
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    const size_t size = (bytes + 4095) / 4096 * 4096;
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr) throw std::bad_alloc();
    b.data.reset(static_cast<char*>(p));
    b.size = size;
  }
  return b.data.get();
}

}  // namespace bort
