// PackedInt8Weights: the int8 GEMM's weights packed once (layout in gemm_int8.h), their column sums and whether
// their pairs can saturate vpmaddubsw. Apart from gemm_int8.cc because it runs at session load on every weight
// (22 M of them in Bort) and is compiled for speed, while the rest of gemm_int8.cc is compiled for size (setup.py).
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "gemm_int8.h"

namespace bort {

PackedInt8Weights::PackedInt8Weights(const int8_t* b, int64_t k, int64_t n, int64_t ldb)
    : k_(k), n_(n), padded_k_((k + kKPad - 1) / kKPad * kKPad) {
  if (k < 0 || n < 0 || ldb < n) throw std::invalid_argument("PackedInt8Weights: bad shape");
  packed_.assign(static_cast<size_t>(num_panels() * kPanelWidth * padded_k_), 0);
  colsum_.assign(static_cast<size_t>(n), 0);
  if (k == 0 || n == 0) return;  // nothing to pack or sum, however many rows or columns an empty weight claims
  for (int64_t p = 0; p < num_panels(); ++p) {
    int8_t* dst = packed_.data() + p * kPanelWidth * padded_k_;
    const int64_t width = panel_width(p), n0 = panel_begin(p), cols = panel_columns(p);
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t c = 0; c < cols; ++c) dst[(kk / 4) * width * 4 + c * 4 + kk % 4] = b[kk * ldb + n0 + c];
  }
  // Wrapping sums, as the int32 accumulators wrap; and whether a pair k = 2j, 2j + 1 (an odd K's last weight pairs
  // with a zero) could saturate vpmaddubsw's int16, in the same pass (branch-free, so that it vectorizes).
  const std::vector<int8_t> zero_row(k % 2 != 0 ? static_cast<size_t>(n) : 0, 0);
  std::vector<uint32_t> sums(static_cast<size_t>(n), 0);
  int saturating_pairs = 0;
  for (int64_t kk = 0; kk < k; kk += 2) {
    const int8_t* row0 = b + kk * ldb;
    const int8_t* row1 = kk + 1 < k ? row0 + ldb : zero_row.data();
    for (int64_t c = 0; c < n; ++c) {
      const int w0 = row0[c], w1 = row1[c];
      sums[c] += static_cast<uint32_t>(w0 + w1);
      saturating_pairs |= (std::max(w0, 0) + std::max(w1, 0) > 128) | (std::min(w0, 0) + std::min(w1, 0) < -128);
    }
  }
  for (int64_t c = 0; c < n; ++c) colsum_[c] = static_cast<int32_t>(sums[c]);
  saturation_free_pairs_ = saturating_pairs == 0;
}

int64_t PackedInt8Weights::panel_columns(int64_t p) const { return std::min(kPanelWidth, n_ - panel_begin(p)); }

int8_t PackedInt8Weights::at(int64_t kk, int64_t col) const {
  const int64_t p = col / kPanelWidth;
  return panel(p)[(kk / 4) * panel_width(p) * 4 + (col - panel_begin(p)) * 4 + kk % 4];
}

}  // namespace bort
