// bf16 GEMM: weight packing, the scalar reference path, the choice of path and the split into tasks.
#include "gemm_bf16.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "bias_gelu.h"  // gelu_exact
#include "cpu_dispatch.h"
#include "gemm_bf16_kernels.h"

namespace bort {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// A subnormal bf16 is read as zero by the bf16 instructions; storing it as zero gives every path that value.
inline uint16_t flush_subnormal(uint16_t h) { return (h & 0x7F80u) == 0 ? static_cast<uint16_t>(h & 0x8000u) : h; }

}  // namespace

// ------------------------------------------------------------------------------------------------ packing

int64_t PackedBf16Weights::panel_width(int64_t j) const {
  const int64_t left = round_up(n_, 16) - j * kPanelWidth;
  return left < kPanelWidth ? left : kPanelWidth;
}

template <typename Load>
PackedBf16Weights PackedBf16Weights::pack(int64_t k, int64_t n, const Load& load) {
  if (k < 0 || n < 0)
    throw std::invalid_argument("bf16 weights: shape [" + std::to_string(k) + ", " + std::to_string(n) +
                                "] has a negative dimension");
  PackedBf16Weights p;
  p.k_ = k;
  p.n_ = n;
  p.padded_pairs_ = round_up((k + 1) / 2, kPairAlign);
  p.num_panels_ = (round_up(n, 16) + kPanelWidth - 1) / kPanelWidth;
  int64_t elements = 0;
  if (__builtin_mul_overflow(p.padded_pairs_ * 2, round_up(n, 16), &elements) || elements > (int64_t{1} << 40))
    throw std::invalid_argument("bf16 weights: shape [" + std::to_string(k) + ", " + std::to_string(n) +
                                "] is too large");
  p.bytes_ = static_cast<size_t>(round_up(elements * 2, 64));
  if (p.bytes_ > 0) {
    p.data_.reset(static_cast<uint16_t*>(std::aligned_alloc(64, p.bytes_)));
    if (!p.data_) throw std::bad_alloc();
    std::memset(p.data_.get(), 0, p.bytes_);
  }
  if (n == 0) return p;  // no column to fill, however many rows an empty [k, 0] claims
  for (int64_t row = 0; row < k; ++row) {
    const int64_t pair = row / 2, half = row % 2;
    for (int64_t j = 0; j < p.num_panels_; ++j) {
      const int64_t width = p.panel_width(j), col0 = j * kPanelWidth;
      uint16_t* dst = p.data_.get() + j * p.padded_pairs_ * 2 * kPanelWidth + pair * 2 * width + half;
      const int64_t cols = std::min(width, n - col0);
      for (int64_t c = 0; c < cols; ++c) dst[2 * c] = flush_subnormal(load(row, col0 + c));
    }
  }
  return p;
}

PackedBf16Weights PackedBf16Weights::from_float(const float* w, int64_t k, int64_t n) {
  return pack(k, n, [&](int64_t r, int64_t c) { return float_to_bf16(w[r * n + c]); });
}

PackedBf16Weights PackedBf16Weights::from_bf16(const uint16_t* w, int64_t k, int64_t n) {
  return pack(k, n, [&](int64_t r, int64_t c) { return w[r * n + c]; });
}

void PackedBf16Weights::unpack(uint16_t* w) const {
  if (n_ == 0) return;
  for (int64_t row = 0; row < k_; ++row)
    for (int64_t j = 0; j < num_panels_; ++j) {
      const int64_t width = panel_width(j), col0 = j * kPanelWidth;
      const uint16_t* src = panel(j) + (row / 2) * 2 * width + row % 2;
      const int64_t cols = std::min(width, n_ - col0);
      for (int64_t c = 0; c < cols; ++c) w[row * n_ + col0 + c] = src[2 * c];
    }
}

// ------------------------------------------------------------------------------------------------ scalar path

namespace bf16 {

// The reference: one accumulator per output, pairs in order, odd element first (see gemm_bf16.h). Written
// with std::fma (the same value: a bf16 product is exact in fp32) because GCC 12.2's -O3 loop vectorizer
// miscompiles the plain `acc += x * y; acc += u * v;` form of this loop (it drops the stride of b).
void block_scalar(const Block& blk) {
  const PackedBf16Weights& w = *blk.w;
  const bool gelu = blk.epilogue.activation == Activation::kGelu;
  for_each_panel_tile<1>(blk, [&](const PanelTile& t) {
    for (int64_t c = 0; c < t.valid; ++c) {
      const uint16_t* b = t.b + 2 * c;
      float acc = 0.0f;
      for (int64_t p = 0; p < w.pairs(); ++p) {
        const uint16_t* bp = b + p * 2 * t.width;
        acc = std::fma(bf16_to_float(t.a[2 * p + 1]), bf16_to_float(bp[1]), acc);
        acc = std::fma(bf16_to_float(t.a[2 * p]), bf16_to_float(bp[0]), acc);
      }
      if (t.bias != nullptr) acc += t.bias[c];
      t.c[c] = gelu ? gelu_exact(acc) : acc;
    }
  });
}

}  // namespace bf16

// ------------------------------------------------------------------------------------------------ dispatch

namespace {

using BlockFn = void (*)(const bf16::Block&);
using ConvertFn = void (*)(const float*, uint16_t*, int64_t);

void to_bf16_scalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = float_to_bf16(x[i]);
}

struct Bf16PathEntry {
  Isa isa;
  Bf16Path path;
  BlockFn block;
  ConvertFn convert;
};
constexpr Bf16PathEntry kBf16Paths[] = {
#if BORT_X86_64
    {Isa::kAmx, Bf16Path::kAmx, bf16::block_amx, bf16::to_bf16_avx512_bf16},
    {Isa::kAvx512Bf16, Bf16Path::kAvx512Bf16, bf16::block_avx512_bf16, bf16::to_bf16_avx512_bf16},
    {Isa::kAvx2, Bf16Path::kAvx2, bf16::block_avx2, bf16::to_bf16_avx2},
#endif
    {Isa::kScalar, Bf16Path::kScalar, bf16::block_scalar, to_bf16_scalar}};

const Bf16PathEntry& entry_of(Bf16Path path) {
  for (const Bf16PathEntry& e : kBf16Paths)
    if (e.path == path) return e;
  throw std::logic_error(std::string("bf16 GEMM path ") + bf16_path_name(path) + " is not built for this CPU");
}

}  // namespace

Bf16Path active_bf16_path() {
  return select_entry(active_isa(), kBf16Paths,
                      [](const Bf16PathEntry& e) { return e.path != Bf16Path::kAmx || has_amx_bf16(); })
      .path;
}

const char* bf16_path_name(Bf16Path path) {
  switch (path) {
    case Bf16Path::kAmx: return "amx";
    case Bf16Path::kAvx512Bf16: return "avx512_bf16";
    case Bf16Path::kAvx2: return "avx2";
    case Bf16Path::kScalar: break;
  }
  return "scalar";
}

namespace {

void convert(Bf16Path path, const float* x, uint16_t* y, int64_t n) { entry_of(path).convert(x, y, n); }

struct AlignedBuffer {
  struct Free {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint16_t[], Free> data;
  explicit AlignedBuffer(size_t elements) {
    const size_t bytes = (elements * sizeof(uint16_t) + 63) / 64 * 64;
    data.reset(static_cast<uint16_t*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
    if (!data) throw std::bad_alloc();
  }
};

// Weight bytes of one task's panels kept in L2 (1-2 MB per core on current x86) while its row groups pass over
// them: at K = 1024 that is 4 panels (256 columns); rows per task bound the A block the same way. 128 rows (one
// b1 s128 text) make one row task, so each thread reads its own columns' weights from L3 and no weight twice
// (96 split it in two, both threads reading every panel: Bort bf16 b1 s128, Intel Xeon AMX, 1.05x; b8 s128 level).
constexpr int64_t kTaskWeightBytes = 512 * 1024;
constexpr int64_t kTaskRows = 128;

void run(const uint16_t* a, int64_t lda, int64_t m, const PackedBf16Weights& w, const Bf16Epilogue& epilogue, float* c,
         Bf16Path path, const ParallelFor& pf) {
  const int64_t panels = w.num_panels();
  const int64_t panel_bytes = std::max<int64_t>(1, w.padded_pairs() * 4 * PackedBf16Weights::kPanelWidth);
  int64_t panels_per_task = std::max<int64_t>(1, kTaskWeightBytes / panel_bytes);
  const int64_t row_tasks = (m + kTaskRows - 1) / kTaskRows;
  const int64_t rows_per_task = round_up((m + row_tasks - 1) / row_tasks, 16);
  // Small M: few row tasks, so split the columns finer until every thread has a few tasks (the weights are
  // read once whatever the split).
  const int64_t wanted = pf.concurrency() > 1 ? 4 * static_cast<int64_t>(pf.concurrency()) : 1;
  const int64_t column_tasks_wanted = (wanted + row_tasks - 1) / row_tasks;
  panels_per_task =
      std::min(panels_per_task, std::max<int64_t>(1, (panels + column_tasks_wanted - 1) / column_tasks_wanted));
  const int64_t column_tasks = (panels + panels_per_task - 1) / panels_per_task;

  const BlockFn kernel = entry_of(path).block;
  // Consecutive tasks share a column block, so a thread working through them finds its weights in L2.
  pf.run(static_cast<size_t>(row_tasks * column_tasks), [&](size_t t) {
    const int64_t col_task = static_cast<int64_t>(t) / row_tasks, row_task = static_cast<int64_t>(t) % row_tasks;
    bf16::Block blk;
    const int64_t r0 = row_task * rows_per_task;
    blk.rows = std::min(m, r0 + rows_per_task) - r0;
    if (blk.rows <= 0) return;
    blk.a = a + r0 * lda;
    blk.lda = lda;
    blk.w = &w;
    blk.panel_begin = col_task * panels_per_task;
    blk.panel_end = std::min(panels, blk.panel_begin + panels_per_task);
    blk.c = c + r0 * w.n();
    blk.ldc = w.n();
    blk.epilogue = epilogue;
    // Threads take tasks in order, so the first row tasks of a column block, one per thread, meet its panels
    // first; later ones find them in L2 (where prefetching them again only takes L2 bandwidth from the tiles).
    blk.panels_from_l3 = row_task < static_cast<int64_t>(pf.concurrency());
    kernel(blk);
  });
}

// Rows of A in the kernels' operand layout: bf16, row stride 2 * padded_pairs (zero past k), and for AMX
// zero rows up to a multiple of 16.
struct Operand {
  AlignedBuffer buffer;
  int64_t lda;
  Operand(int64_t m, const PackedBf16Weights& w, Bf16Path path)
      : buffer(static_cast<size_t>((path == Bf16Path::kAmx ? round_up(m, 16) : m) * 2 * w.padded_pairs())),
        lda(2 * w.padded_pairs()) {
    if (path == Bf16Path::kAmx)
      std::memset(buffer.data.get() + m * lda, 0, static_cast<size_t>((round_up(m, 16) - m) * lda) * 2);
  }
  uint16_t* row(int64_t r) { return buffer.data.get() + r * lda; }
};

}  // namespace

void float_to_bf16_array(const float* x, uint16_t* y, int64_t n) {
  if (n > 0) convert(active_bf16_path(), x, y, n);
}

void gemm_bf16(const float* a, int64_t m, const PackedBf16Weights& w, const Bf16Epilogue& epilogue, float* c,
               const ParallelFor& pf) {
  if (m <= 0 || w.n() <= 0) return;
  const Bf16Path path = active_bf16_path();
  Operand op(m, w, path);
  const int64_t k = w.k();
  auto convert_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      convert(path, a + r * k, op.row(r), k);
      std::fill(op.row(r) + k, op.row(r) + op.lda, uint16_t{0});
    }
  };
  // Converting is one pass over A; below ~64K elements a second round of task dispatch costs more than it saves.
  if (m * k < (int64_t{1} << 16))
    convert_rows(0, m);
  else
    for_each_row_block(m, k, pf, convert_rows);
  run(op.row(0), op.lda, m, w, epilogue, c, path, pf);
}

void gemm_bf16_rows(const uint16_t* a, int64_t lda, int64_t m, const PackedBf16Weights& w, const Bf16Epilogue& epilogue,
                    float* c, const ParallelFor& pf) {
  if (m <= 0 || w.n() <= 0) return;
  if (lda < w.k()) throw std::invalid_argument("gemm_bf16_rows: lda is smaller than k");
  const Bf16Path path = active_bf16_path();
  // Copied into the operand layout: zero padding past k, and subnormals flushed as the bf16 instructions
  // read them, so every path sees the same values.
  Operand op(m, w, path);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t i = 0; i < w.k(); ++i) op.row(r)[i] = flush_subnormal(a[r * lda + i]);
    std::fill(op.row(r) + w.k(), op.row(r) + op.lda, uint16_t{0});
  }
  run(op.row(0), op.lda, m, w, epilogue, c, path, pf);
}

}  // namespace bort
