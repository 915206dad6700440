// Row-wise kernels (bias_gelu, skip_layernorm, dequantize_rows) write each ISA path for one row. The kernel's
// arguments live in one struct whose row(r) gives the arguments of row r as a tuple, in the order of the
// paths' parameters; the paths are listed for select_path (cpu_dispatch.h), and these helpers walk the rows on
// the chosen path, serially or in blocks of rows over a ParallelFor, so no path repeats the row loop, the row
// offsets or the task split.
#pragma once

#include <cstdint>
#include <tuple>

#include "parallel.h"

namespace bort {

// Asks for the `bytes` at p (a hint: never faults), for the row a loop reads next. A row of a few KB (Bort's
// 1,024 floats are one 4 KB page) is where the hardware prefetchers start cold, so without it each row's first
// lines wait out the latency of L3 or memory.
inline void prefetch_row(const void* p, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(static_cast<const char*>(p) + i);
}

// fn(args.row(r)...) for r in [r0, r1), in order, on this thread.
template <typename Fn, typename Args>
void run_rows(Fn fn, const Args& args, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) std::apply(fn, args.row(r));
}

// fn(args.row(r)...) for r in [0, rows), rows of `width` elements, in blocks of rows over pf's threads
// (for_each_row_block: tasks of >= 8K elements).
template <typename Fn, typename Args>
void run_rows(Fn fn, const Args& args, int64_t rows, int64_t width, const ParallelFor& pf) {
  for_each_row_block(rows, width, pf, [&](int64_t r0, int64_t r1) { run_rows(fn, args, r0, r1); });
}

}  // namespace bort
