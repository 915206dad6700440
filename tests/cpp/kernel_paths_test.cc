// Every ISA path of the kernels against the scalar reference, on random shapes and hostile ones (empty,
// one element, widths off every vector multiple, NaN / inf / extreme values, fully masked rows, empty packed
// sequences, repeated query rows, int32 wrap-around), plus the dispatch rules. Built from csrc/ alone (no
// Python, no onnxruntime) for the host and for aarch64, where it runs under qemu-aarch64; driven by
// tests/cpp/test_kernel_paths.py.
//
//   kernel_paths_test            check every level this CPU supports; exit status 1 on any mismatch
//   kernel_paths_test --bench    also time each kernel at Bort-like shapes, scalar vs the best level
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "bias_gelu.h"
#include "cpu_dispatch.h"
#include "dequantize_rows.h"
#include "gemm_bf16.h"
#include "gemm_int8.h"
#include "linear_int8.h"
#include "parallel.h"
#include "quantize_rows.h"
#include "skip_layernorm.h"

namespace {

using bort::Isa;

int g_failures = 0;
int g_checks = 0;
std::mt19937_64 g_rng(20261205);

void fail(const std::string& what) {
  ++g_failures;
  if (g_failures <= 40) std::printf("FAIL %s\n", what.c_str());
}

// ------------------------------------------------------------------------------------------ inputs

std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g_rng);
  return v;
}

// Sprinkles hostile values: NaN, +-inf, huge, tiny, exact zeros.
void poison(std::vector<float>& v) {
  if (v.empty()) return;
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            3e38f,
                            -3e38f,
                            1e-40f,
                            0.0f,
                            -0.0f};
  std::uniform_int_distribution<size_t> at(0, v.size() - 1);
  for (float s : specials) v[at(g_rng)] = s;
}

template <typename T>
std::vector<T> randint(size_t n, int64_t lo, int64_t hi) {
  std::uniform_int_distribution<int64_t> d(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(d(g_rng));
  return v;
}

int64_t pick(std::initializer_list<int64_t> values) {
  std::uniform_int_distribution<size_t> d(0, values.size() - 1);
  return *(values.begin() + d(g_rng));
}

// ------------------------------------------------------------------------------------------ comparisons

// Same value: equal, both NaN, or within tol * max(1, |ref| scale of the whole output).
void expect_close(const std::string& what, const std::vector<float>& out, const std::vector<float>& ref,
                  float tol = 1e-5f) {
  ++g_checks;
  float scale = 1.0f;
  for (float r : ref)
    if (std::isfinite(r)) scale = std::max(scale, std::fabs(r));
  for (size_t i = 0; i < ref.size(); ++i) {
    const float a = out[i], b = ref[i];
    if (a == b || (std::isnan(a) && std::isnan(b))) continue;
    if (!std::isfinite(a) || !std::isfinite(b) || std::fabs(a - b) > tol * scale) {
      fail(what + ": element " + std::to_string(i) + " is " + std::to_string(a) + ", reference " + std::to_string(b));
      return;
    }
  }
}

template <typename T>
void expect_equal(const std::string& what, const std::vector<T>& out, const std::vector<T>& ref) {
  ++g_checks;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::memcmp(&out[i], &ref[i], sizeof(T)) != 0 && !(out[i] == ref[i])) {
      fail(what + ": element " + std::to_string(i) + " differs (" + std::to_string(out[i]) + " vs " +
           std::to_string(ref[i]) + ")");
      return;
    }
}

template <typename F>
void expect_throws(const std::string& what, const F& f) {
  ++g_checks;
  try {
    f();
  } catch (const std::invalid_argument&) {
    return;
  } catch (const std::exception& e) {
    fail(what + ": threw " + e.what() + " instead of std::invalid_argument");
    return;
  }
  fail(what + ": accepted");
}

// Runs `compute` (which fills its outputs from the current level) at `isa` and at scalar, then `compare`.
template <typename Out, typename Compute, typename Compare>
void against_scalar(Isa isa, const Compute& compute, const Compare& compare) {
  bort::set_isa("scalar");
  Out ref = compute();
  bort::set_isa(bort::isa_name(isa));
  Out out = compute();
  compare(out, ref);
}

const bort::SerialFor kSerial;
const bort::ThreadFor kThreads(3);

std::string shape(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (int64_t d : dims) s += (s.size() > 1 ? "," : "") + std::to_string(d);
  return s + "]";
}

// ------------------------------------------------------------------------------------------ kernels

void check_bias_gelu(Isa isa) {
  for (int64_t n : {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1024}) {
    for (int64_t rows : {0, 1, 3, 7}) {
      const bool hostile = n > 8 && rows > 1;
      std::vector<float> x = randn(static_cast<size_t>(rows * n), 3.0f), bias = randn(static_cast<size_t>(n));
      if (hostile) poison(x);
      for (bool with_bias : {true, false}) {
        const std::string what = std::string("bias_gelu ") + bort::isa_name(isa) + " " + shape({rows, n});
        against_scalar<std::vector<float>>(
            isa,
            [&] {
              std::vector<float> y(x.size());
              bort::bias_gelu(x.data(), with_bias ? bias.data() : nullptr, y.data(), rows, n, kThreads);
              return y;
            },
            [&](const std::vector<float>& out, const std::vector<float>& ref) { expect_close(what, out, ref); });
      }
    }
  }
  // erf alone (a test hook; GELU keeps NaN through its v factor): the vector forms clamp NaN to +-4.
  std::vector<float> x = randn(1000, 2.5f);
  x[7] = std::numeric_limits<float>::infinity();
  x[8] = -3e38f;
  x[9] = 0.0f;
  against_scalar<std::vector<float>>(
      isa,
      [&] {
        std::vector<float> y(x.size());
        bort::erf_array(x.data(), y.data(), static_cast<int64_t>(x.size()));
        return y;
      },
      [&](const std::vector<float>& out, const std::vector<float>& ref) {
        expect_close(std::string("erf ") + bort::isa_name(isa), out, ref, 2e-6f);
      });
}

void check_skip_layernorm(Isa isa) {
  for (int64_t h : {1, 2, 3, 4, 5, 8, 12, 16, 17, 31, 32, 33, 100, 768, 1023}) {
    for (int64_t rows : {0, 1, 5}) {
      const size_t count = static_cast<size_t>(rows * h);
      std::vector<float> x = randn(count, 2.0f), skip = randn(count), gamma = randn(static_cast<size_t>(h)),
                         beta = randn(static_cast<size_t>(h)), bias = randn(static_cast<size_t>(h)),
                         skip_scale = randn(static_cast<size_t>(h));
      for (int variant = 0; variant < 4; ++variant) {
        const bool with_beta = variant & 1, with_extras = variant & 2;
        const std::string what = std::string("skip_layernorm ") + bort::isa_name(isa) + " " + shape({rows, h}) +
                                 " variant " + std::to_string(variant);
        against_scalar<std::vector<float>>(
            isa,
            [&] {
              std::vector<float> y(count);
              bort::skip_layernorm(x.data(), skip.data(), gamma.data(), with_beta ? beta.data() : nullptr,
                                   with_extras ? bias.data() : nullptr, with_extras ? skip_scale.data() : nullptr,
                                   y.data(), rows, h, 1e-12f, kThreads);
              return y;
            },
            [&](const std::vector<float>& out, const std::vector<float>& ref) { expect_close(what, out, ref); });
      }
    }
  }
}

struct Quantized {
  std::vector<uint8_t> q, zero_point;
  std::vector<float> scale;
};

void check_quantize_rows(Isa isa) {
  for (int64_t k : {1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 64, 65, 768, 3072}) {
    for (int64_t rows : {1, 2, 9}) {
      std::vector<float> x = randn(static_cast<size_t>(rows * k), 4.0f);
      if (k > 16) poison(x);
      if (rows > 1)  // an all-zero row and an all-negative row
        for (int64_t i = 0; i < k; ++i) {
          x[static_cast<size_t>(i)] = 0.0f;
          x[static_cast<size_t>(k + i)] = -std::fabs(x[static_cast<size_t>(k + i)]) - 1.0f;
        }
      const std::string what = std::string("quantize_rows ") + bort::isa_name(isa) + " " + shape({rows, k});
      against_scalar<Quantized>(
          isa,
          [&] {
            Quantized r{std::vector<uint8_t>(x.size()), std::vector<uint8_t>(static_cast<size_t>(rows)),
                        std::vector<float>(static_cast<size_t>(rows))};
            bort::quantize_rows(x.data(), r.q.data(), r.scale.data(), r.zero_point.data(), rows, k, kThreads);
            return r;
          },
          [&](const Quantized& out, const Quantized& ref) {
            expect_equal(what + " q", out.q, ref.q);
            expect_equal(what + " scale", out.scale, ref.scale);
            expect_equal(what + " zero_point", out.zero_point, ref.zero_point);
          });
    }
  }
}

void check_dequantize_rows(Isa isa) {
  for (int64_t n : {1, 3, 4, 7, 8, 15, 16, 17, 33, 64, 100, 768}) {
    const int64_t rows = pick({1, 2, 5});
    const size_t count = static_cast<size_t>(rows * n);
    std::vector<int32_t> acc = randint<int32_t>(count, -200000, 200000);
    if (n > 8) {
      acc[0] = std::numeric_limits<int32_t>::max();  // the zero-point term wraps past these
      acc[1] = std::numeric_limits<int32_t>::min();
    }
    std::vector<int32_t> colsum = randint<int32_t>(static_cast<size_t>(n), -30000, 30000);
    std::vector<uint8_t> zp = randint<uint8_t>(static_cast<size_t>(rows), 0, 255);
    std::vector<float> rs(static_cast<size_t>(rows), 1e-3f), ws = randn(static_cast<size_t>(n), 0.01f),
                                                             bias = randn(static_cast<size_t>(n)), skip = randn(count),
                                                             gamma = randn(static_cast<size_t>(n));
    for (int variant = 0; variant < 3; ++variant) {  // plain, GELU, skip + LayerNorm with requantization
      const bort::Activation act = variant == 1 ? bort::Activation::kGelu : bort::Activation::kNone;
      bort::SkipLayerNormEpilogue norm;
      if (variant == 2) {
        norm.skip = skip.data();
        norm.gamma = gamma.data();
      }
      const std::string what = std::string("dequantize_rows ") + bort::isa_name(isa) + " " + shape({rows, n}) +
                               " variant " + std::to_string(variant);
      against_scalar<std::pair<std::vector<float>, Quantized>>(
          isa,
          [&] {
            std::vector<float> y(count);
            Quantized r{std::vector<uint8_t>(count), std::vector<uint8_t>(static_cast<size_t>(rows)),
                        std::vector<float>(static_cast<size_t>(rows))};
            bort::RequantizedRows requantized;
            if (variant == 2) requantized = {r.q.data(), r.scale.data(), r.zero_point.data()};
            bort::dequantize_rows(acc.data(), rs.data(), zp.data(), ws.data(), colsum.data(), bias.data(), act, norm,
                                  y.data(), requantized, rows, n, kThreads);
            return std::make_pair(y, r);
          },
          [&](const std::pair<std::vector<float>, Quantized>& out,
              const std::pair<std::vector<float>, Quantized>& ref) {
            expect_close(what + " y", out.first, ref.first);
            if (variant != 2) return;
            // The requantized rows are QuantizeRows(y) of the same path, bit for bit.
            Quantized again{std::vector<uint8_t>(count), std::vector<uint8_t>(static_cast<size_t>(rows)),
                            std::vector<float>(static_cast<size_t>(rows))};
            bort::quantize_rows(out.first.data(), again.q.data(), again.scale.data(), again.zero_point.data(), rows, n,
                                kSerial);
            expect_equal(what + " requantized q", out.second.q, again.q);
            expect_equal(what + " requantized scale", out.second.scale, again.scale);
          });
    }
  }
}

// Attention on one random problem: padded with each mask kind, and packed with query subsets.
void check_attention(Isa isa) {
  for (int64_t head_dim : {3, 4, 8, 12, 16, 20, 32, 64}) {
    const int64_t heads = pick({1, 2, 3}), hidden = heads * head_dim, batch = pick({1, 2, 3}),
                  seq = pick({1, 2, 5, 9, 17, 33});
    const bool with_bias = head_dim != 8;
    std::vector<float> qkv = randn(static_cast<size_t>(batch * seq * 3 * hidden)), bias = randn(3 * hidden);
    const bort::AttentionShape sh{heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
    // Key mask with holes, a fully padded row (HF's uniform weights) and lengths beyond the sequence.
    std::vector<int64_t> key_mask = randint<int64_t>(static_cast<size_t>(batch * seq), 0, 1);
    for (int64_t j = 0; j < seq; ++j) key_mask[static_cast<size_t>(j)] = 0;
    if (batch > 1) key_mask[static_cast<size_t>(seq)] = 1;
    std::vector<int64_t> lengths = randint<int64_t>(static_cast<size_t>(batch), -2, seq + 3);
    for (int kind = 0; kind < 3; ++kind) {
      bort::AttentionMask mask;
      mask.kind = kind == 0 ? bort::MaskKind::kNone : kind == 1 ? bort::MaskKind::kKeyMask : bort::MaskKind::kLengths;
      mask.data = kind == 1 ? key_mask.data() : lengths.data();
      const std::string what = std::string("attention_padded ") + bort::isa_name(isa) + " b" + std::to_string(batch) +
                               " s" + std::to_string(seq) + " h" + std::to_string(heads) + " d" +
                               std::to_string(head_dim) + " mask " + std::to_string(kind);
      against_scalar<std::vector<float>>(
          isa,
          [&] {
            std::vector<float> out(static_cast<size_t>(batch * seq * hidden));
            bort::attention_padded(qkv.data(), with_bias ? bias.data() : nullptr, mask, out.data(), batch, seq, sh,
                                   kThreads);
            return out;
          },
          [&](const std::vector<float>& out, const std::vector<float>& ref) { expect_close(what, out, ref); });
    }
    // Packed: the same tokens as sequences of random lengths (some empty), every row, then a subset with
    // repeats (the CLS rows twice), then that subset with separately projected queries.
    const int64_t tokens = batch * seq;
    std::vector<int64_t> cu{0};
    while (cu.back() < tokens) cu.push_back(std::min<int64_t>(tokens, cu.back() + pick({0, 1, 3, 8})));
    const int64_t num_seqs = static_cast<int64_t>(cu.size()) - 1;
    std::vector<int64_t> rows;
    for (int64_t s = 0; s < num_seqs; ++s)
      if (cu[s] < cu[s + 1]) rows.push_back(cu[s]);
    const std::vector<int64_t> first_rows = rows;
    rows.insert(rows.end(), first_rows.begin(), first_rows.end());
    std::vector<float> kv(static_cast<size_t>(tokens * 2 * hidden)), query(rows.size() * hidden);
    for (int64_t t = 0; t < tokens; ++t)
      std::copy_n(qkv.data() + t * 3 * hidden + hidden, 2 * hidden, kv.data() + t * 2 * hidden);
    for (size_t i = 0; i < rows.size(); ++i)
      std::copy_n(qkv.data() + rows[i] * 3 * hidden, hidden, query.data() + i * hidden);
    for (int form = 0; form < 3; ++form) {
      const std::string what = std::string("attention_packed ") + bort::isa_name(isa) + " t" + std::to_string(tokens) +
                               " n" + std::to_string(num_seqs) + " d" + std::to_string(head_dim) + " form " +
                               std::to_string(form);
      against_scalar<std::vector<float>>(
          isa,
          [&] {
            bort::PackedQueries queries;
            if (form > 0) {
              queries.selected = true;
              queries.rows = rows.data();
              queries.count = static_cast<int64_t>(rows.size());
            }
            if (form == 2) {
              queries.separate_values = true;
              queries.values = query.data();
            }
            const int64_t out_rows = form > 0 ? static_cast<int64_t>(rows.size()) : tokens;
            std::vector<float> out(static_cast<size_t>(out_rows * hidden));
            bort::attention_packed(form == 2 ? kv.data() : qkv.data(), with_bias ? bias.data() : nullptr, cu.data(),
                                   num_seqs, queries, out.data(), tokens, sh, kThreads);
            return out;
          },
          [&](const std::vector<float>& out, const std::vector<float>& ref) { expect_close(what, out, ref); });
    }
  }
  // Hostile offsets and rows: errors, never reads through them.
  std::vector<float> qkv = randn(6 * 3 * 8);
  const bort::AttentionShape sh{2, 4, 0.5f};
  std::vector<float> out(6 * 8);
  for (const std::vector<int64_t>& cu : std::vector<std::vector<int64_t>>{{1, 6}, {0, 7}, {0, 4, 2, 6}, {0, -1, 6}})
    expect_throws("attention_packed offsets " + std::to_string(cu[1]), [&] {
      bort::attention_packed(qkv.data(), nullptr, cu.data(), static_cast<int64_t>(cu.size()) - 1, {}, out.data(), 6, sh,
                             kSerial);
    });
  const std::vector<int64_t> cu{0, 6};
  for (int64_t row : {-1, 6, 1 << 30}) {
    bort::PackedQueries queries;
    queries.selected = true;
    queries.rows = &row;
    queries.count = 1;
    expect_throws("attention_packed query row " + std::to_string(row), [&] {
      bort::attention_packed(qkv.data(), nullptr, cu.data(), 1, queries, out.data(), 6, sh, kSerial);
    });
  }
}

void check_gemm_int8(Isa isa) {
  struct Case {
    int64_t m, k, n;
  };
  std::vector<Case> cases{{1, 1, 1},     {1, 64, 16},   {4, 64, 64}, {5, 63, 17},   {3, 65, 130},
                          {13, 130, 65}, {33, 256, 64}, {2, 7, 200}, {1, 70000, 16}};  // the last one wraps int32
  for (int i = 0; i < 6; ++i)
    cases.push_back({pick({1, 2, 3, 4, 6, 7, 25}), pick({3, 4, 60, 128, 200}), pick({1, 15, 16, 17, 63, 64, 65, 100})});
  // Every case twice: full-range weights, and weights within +-64, whose pairs cannot saturate (AVX2's vpmaddubsw).
  for (const Case& c : cases)
    for (const int bound : {128, 64}) {
      std::vector<uint8_t> a = randint<uint8_t>(static_cast<size_t>(c.m * c.k), 0, 255);
      std::vector<int8_t> b = randint<int8_t>(static_cast<size_t>(c.k * c.n), -bound, std::min(bound, 127));
      if (c.k >= 70000) {
        std::fill(a.begin(), a.end(), uint8_t{255});
        std::fill(b.begin(), b.end(), static_cast<int8_t>(std::min(bound, 127)));
      }
      const bort::PackedInt8Weights w(b.data(), c.k, c.n);
      const std::string what = std::string("gemm_u8s8 ") + bort::isa_name(isa) + " " +
                               bort::int8_path_name(bort::int8_path_for(isa, w)) + " " + shape({c.m, c.k, c.n});
      against_scalar<std::vector<int32_t>>(
          isa,
          [&] {
            std::vector<int32_t> out(static_cast<size_t>(c.m * c.n));
            bort::gemm_u8s8(bort::active_isa(), a.data(), c.m, c.k, w, out.data(), kThreads);
            return out;
          },
          [&](const std::vector<int32_t>& out, const std::vector<int32_t>& ref) { expect_equal(what, out, ref); });
      // The fused linear op on the same weights from float rows, with GELU.
      if (c.k > 1000) continue;
      std::vector<float> x = randn(static_cast<size_t>(c.m * c.k)), ws = randn(static_cast<size_t>(c.n), 0.01f),
                         bias = randn(static_cast<size_t>(c.n));
      against_scalar<std::vector<float>>(
          isa,
          [&] {
            std::vector<float> y(static_cast<size_t>(c.m * c.n));
            bort::LinearInt8Input in;
            in.x = x.data();
            bort::linear_int8(in, c.m, w, ws.data(), bias.data(), bort::Activation::kGelu, {}, y.data(), {}, kThreads);
            return y;
          },
          [&](const std::vector<float>& out, const std::vector<float>& ref) {
            expect_close(std::string("linear_int8 ") + bort::isa_name(isa) + " " + shape({c.m, c.k, c.n}), out, ref);
          });
    }
}

void check_gemm_bf16(Isa isa) {
  for (int64_t k : {1, 2, 3, 31, 64, 130})
    for (int64_t n : {1, 16, 17, 100}) {
      const int64_t m = pick({1, 3, 17});
      std::vector<float> a = randn(static_cast<size_t>(m * k)), w = randn(static_cast<size_t>(k * n));
      const bort::PackedBf16Weights packed = bort::PackedBf16Weights::from_float(w.data(), k, n);
      against_scalar<std::vector<float>>(
          isa,
          [&] {
            std::vector<float> c(static_cast<size_t>(m * n));
            bort::gemm_bf16(a.data(), m, packed, {}, c.data(), kThreads);
            return c;
          },
          [&](const std::vector<float>& out, const std::vector<float>& ref) {
            expect_close(std::string("gemm_bf16 ") + bort::isa_name(isa) + " " + shape({m, k, n}), out, ref);
          });
    }
}

// ------------------------------------------------------------------------------------------ dispatch rules

void check_dispatch() {
  const std::vector<Isa> supported = bort::supported_isas();
  ++g_checks;
  if (supported.empty() || supported.front() != Isa::kScalar || bort::best_isa() != supported.back())
    fail("supported_isas() must start at scalar and end at best_isa()");
  for (const char* name : {"avx1024", "NEON", "sse", ""}) {
    ++g_checks;
    try {
      bort::set_isa(name);
      fail(std::string("set_isa('") + name + "') was accepted");
    } catch (const std::invalid_argument& e) {
      const std::string message = e.what();
      if (message.find(bort::isa_names_accepted()) == std::string::npos)
        fail("the error for '" + std::string(name) + "' does not name the accepted values: " + message);
    }
  }
  // A level this CPU lacks (the other architecture's, at least) is refused, and the choice stays.
  bort::set_isa("scalar");
  for (const char* name : {"avx2", "amx", "neon", "neon_i8mm"}) {
    bool known = bort::isa_names_accepted().find(name) != std::string::npos;
    bool lacks = true;
    for (Isa isa : supported) lacks = lacks && std::string(bort::isa_name(isa)) != name;
    if (!lacks) continue;
    ++g_checks;
    try {
      bort::set_isa(name);
      fail(std::string("set_isa('") + name + "') was accepted on a CPU without it");
    } catch (const std::runtime_error& e) {
      if (!known) fail(std::string("'") + name + "' was called unsupported though it is not a level here");
    } catch (const std::invalid_argument& e) {
      if (known) fail(std::string("'") + name + "' was called unknown though it is a level here");
    }
    if (bort::active_isa() != Isa::kScalar) fail("a refused set_isa changed the level");
  }
  // isa_runs: the scalar reference always, another architecture never, a lower level of the same one.
  ++g_checks;
  if (!bort::isa_runs(Isa::kNeon, Isa::kScalar) || bort::isa_runs(Isa::kNeonI8mm, Isa::kAvx2) ||
      bort::isa_runs(Isa::kAmx, Isa::kNeon) || !bort::isa_runs(Isa::kNeonI8mm, Isa::kNeonDotprod) ||
      bort::isa_runs(Isa::kNeonDotprod, Isa::kNeonI8mm) || !bort::isa_runs(Isa::kAvx512Bf16, Isa::kAvx2))
    fail("isa_runs does not follow the per-architecture level order");
  bort::set_isa("auto");
}

// ------------------------------------------------------------------------------------------ bench

double seconds(const std::function<void()>& f, int reps) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// Median over interleaved rounds of (scalar time / best-level time), one thread.
void bench_ratio(const char* name, const std::function<void()>& run, int reps) {
  const Isa best = bort::best_isa();
  std::vector<double> ratios;
  for (int round = 0; round < 5; ++round) {
    bort::set_isa("scalar");
    const double scalar = seconds(run, reps);
    bort::set_isa(bort::isa_name(best));
    const double vector = seconds(run, reps);
    ratios.push_back(scalar / vector);
  }
  std::sort(ratios.begin(), ratios.end());
  std::printf("bench %-16s %s vs scalar: %.2fx (median of 5 interleaved rounds)\n", name, bort::isa_name(best),
              ratios[2]);
  bort::set_isa("auto");
}

void bench() {
  // Bort's shapes (models/bort.json): hidden 1024 in 8 heads of 128, FFN 768; 128 tokens.
  const int64_t tokens = 128, hidden = 1024, ffn = 768, heads = 8, head_dim = 128;
  std::vector<float> x = randn(static_cast<size_t>(tokens * ffn)), y(x.size()), bias = randn(ffn);
  bench_ratio("bias_gelu", [&] { bort::bias_gelu(x.data(), bias.data(), y.data(), tokens, ffn, kSerial); }, 3);
  std::vector<float> h = randn(static_cast<size_t>(tokens * hidden)), skip = randn(h.size()), gamma = randn(hidden),
                     out(h.size());
  bench_ratio(
      "skip_layernorm",
      [&] {
        bort::skip_layernorm(h.data(), skip.data(), gamma.data(), nullptr, bias.data(), nullptr, out.data(), tokens,
                             hidden, 1e-12f, kSerial);
      },
      10);
  std::vector<uint8_t> q(h.size()), zp(tokens);
  std::vector<float> scale(tokens);
  bench_ratio(
      "quantize_rows",
      [&] { bort::quantize_rows(h.data(), q.data(), scale.data(), zp.data(), tokens, hidden, kSerial); }, 10);
  std::vector<int32_t> acc = randint<int32_t>(h.size(), -100000, 100000),
                       colsum = randint<int32_t>(hidden, -1000, 1000);
  std::vector<float> ws = randn(hidden, 0.01f);
  bench_ratio(
      "dequantize_rows",
      [&] {
        bort::dequantize_rows(acc.data(), scale.data(), zp.data(), ws.data(), colsum.data(), bias.data(),
                              bort::Activation::kNone, {}, out.data(), {}, tokens, hidden, kSerial);
      },
      10);
  std::vector<float> qkv = randn(static_cast<size_t>(tokens * 3 * hidden));
  const std::vector<int64_t> cu{0, tokens};
  const bort::AttentionShape sh{heads, head_dim, 0.125f};
  bench_ratio(
      "attention",
      [&] { bort::attention_packed(qkv.data(), nullptr, cu.data(), 1, {}, out.data(), tokens, sh, kSerial); }, 1);
  std::vector<int8_t> b = randint<int8_t>(static_cast<size_t>(hidden * hidden), -128, 127);
  const bort::PackedInt8Weights w(b.data(), hidden, hidden);
  std::vector<int32_t> c(static_cast<size_t>(tokens * hidden));
  bench_ratio(
      "gemm_u8s8", [&] { bort::gemm_u8s8(bort::active_isa(), q.data(), tokens, hidden, w, c.data(), kSerial); }, 1);
}

}  // namespace

int main(int argc, char** argv) {
  const bool do_bench = argc > 1 && std::strcmp(argv[1], "--bench") == 0;
  if (!bort::isa_environment_error().empty()) {  // what the Python module and RegisterCustomOps refuse too
    std::printf("%s\n", bort::isa_environment_error().c_str());
    return 2;
  }
  std::printf("levels:");
  for (Isa isa : bort::supported_isas()) std::printf(" %s", bort::isa_name(isa));
  std::printf(" (best %s)\n", bort::isa_name(bort::best_isa()));
  check_dispatch();
  for (Isa isa : bort::supported_isas()) {
    if (isa == Isa::kScalar) continue;
    const int before = g_checks;
    check_bias_gelu(isa);
    check_skip_layernorm(isa);
    check_quantize_rows(isa);
    check_dequantize_rows(isa);
    check_attention(isa);
    check_gemm_int8(isa);
    check_gemm_bf16(isa);
    std::printf("checked %s against scalar: %d comparisons (int8 GEMM path %s)\n", bort::isa_name(isa),
                g_checks - before, bort::int8_path_name(bort::int8_path_for(isa)));
  }
  bort::set_isa("auto");
  if (do_bench) bench();
  std::printf("%s: %d checks, %d failures\n", g_failures == 0 ? "ok" : "FAILED", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
