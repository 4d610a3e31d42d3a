// src/random.hpp — a small, fully specified PRNG so that synthetic data and the SVD's test matrix
// are the same bits on every platform (<random>'s distributions are implementation-defined).
#pragma once

#include <cmath>
#include <cstdint>

namespace svdq::detail {

/// SplitMix64 (Steele, Lea, Flood 2014): seeds and hashes.
constexpr uint64_t splitmix64(uint64_t& state) noexcept {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// xoshiro256** 1.0 (Blackman, Vigna) seeded through SplitMix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) noexcept {
    uint64_t s = seed;
    for (auto& w : s_) w = splitmix64(s);
  }
  /// Two independent streams for (seed, stream) pairs.
  Rng(uint64_t seed, uint64_t stream) noexcept : Rng(seed ^ (0xD1B54A32D192ED03ULL * (stream + 1))) {}

  uint64_t next() noexcept {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// Uniform in (0, 1): 53 random bits, never 0.
  double uniform() noexcept { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  /// Standard normal by Box-Muller (both outputs used).
  double normal() noexcept {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = uniform(), u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double th = 6.283185307179586 * u2;
    spare_ = r * std::sin(th);
    has_spare_ = true;
    return r * std::cos(th);
  }
  /// Student-t with nu degrees of freedom: normal / sqrt(chi2_nu / nu), chi2 as a sum of squares.
  double student_t(int nu) noexcept {
    const double z = normal();
    double chi2 = 0;
    for (int i = 0; i < nu; ++i) {
      const double g = normal();
      chi2 += g * g;
    }
    return z / std::sqrt(chi2 / nu);
  }

 private:
  static constexpr uint64_t rotl(uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4] = {};
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace svdq::detail
