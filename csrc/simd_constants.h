// The polynomial constants of the vector exp, erf and GELU (simd_math.h: AVX2+FMA and AVX-512, simd_neon.h:
// NEON), written once so every width and architecture evaluates the same polynomials in the same order.
// Coefficients are listed highest power first, as Horner's rule consumes them.
#pragma once

namespace bort {
namespace simd {
namespace coeff {

// exp(x) = 2^n * P(r), x = n*ln2 + r, |r| <= ln2/2 (Cephes), on x clamped to [kExpMin, kExpMax].
constexpr float kExpMin = -87.3f;
constexpr float kExpMax = 88.3f;
constexpr float kLog2e = 1.44269504088896341f;
// ln2 in two parts (kLn2Hi + kLn2Lo) so that r keeps full precision.
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
// P(r) = 1 + r + r^2 * (kExp[0] r^5 + ... + kExp[5]).
constexpr float kExp[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                          4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// erf(x) = x * P(x^2) / Q(x^2) on x clamped to [-kErfBound, kErfBound]: the odd/even rational minimax
// approximation used by Eigen and TensorFlow (max abs/rel error ~1e-7; erf(|x| >= 4) == +-1 in float).
constexpr float kErfBound = 4.0f;
constexpr float kErfP[] = {-2.72614225801306e-10f, 2.77068142495902e-08f,  -2.10102402082508e-06f,
                           -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                           -1.60960333262415e-02f};
constexpr float kErfQ[] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                           -7.37332916720468e-03f, -1.42647390514189e-02f};

// Exact GELU: 0.5 v (1 + erf(v * kSqrtHalf)).
constexpr float kSqrtHalf = 0.70710678118654752440f;

}  // namespace coeff
}  // namespace simd
}  // namespace bort
