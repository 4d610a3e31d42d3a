// Tier-1 exact tests of svdq/types.hpp: the 16-bit conversions (against the CUDA toolkit's host
// conversions when present, and always against an independent double-precision oracle written
// here), the matrix views, dtype_name / dtype_size.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "svdq/types.hpp"

#if SVDQ_HAVE_CUDA_HEADERS
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace {

using svdq::bf16_bits_to_float;
using svdq::float_to_bf16_bits;
using svdq::float_to_half_bits;
using svdq::half_bits_to_float;

float f_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t u_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- independent oracle: an IEEE-style binary format with `mbits` fraction bits ----------------
struct Fmt16 {
  int mbits;  // fraction bits
  int ebits;  // exponent bits
  int bias() const { return (1 << (ebits - 1)) - 1; }
  int emin() const { return 1 - bias(); }
  double maxfinite() const {
    return std::ldexp(2.0 - std::ldexp(1.0, -mbits), (1 << ebits) - 2 - bias());
  }
};
constexpr Fmt16 kHalf{10, 5};
constexpr Fmt16 kBf16{7, 8};

// Exact value of a bit pattern (NaN for NaN patterns).
double oracle_decode(uint16_t b, Fmt16 f) {
  const bool neg = (b >> (f.mbits + f.ebits)) & 1;
  const int e = (b >> f.mbits) & ((1 << f.ebits) - 1);
  const int m = b & ((1 << f.mbits) - 1);
  double v;
  if (e == (1 << f.ebits) - 1) {
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), f.emin() - f.mbits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -f.mbits), e - f.bias());
  }
  return neg ? -v : v;
}

// Round a (non-NaN) float to nearest-even in format f, overflow to Inf; returns the bits.
uint16_t oracle_encode(float x, Fmt16 f) {
  const uint16_t sign = std::signbit(x) ? static_cast<uint16_t>(1u << (f.mbits + f.ebits)) : 0;
  const uint16_t inf_bits = static_cast<uint16_t>(((1u << f.ebits) - 1) << f.mbits);
  const double ax = std::fabs(static_cast<double>(x));
  if (std::isinf(ax)) return sign | inf_bits;
  if (ax == 0) return sign;
  int e = std::ilogb(ax);
  if (e < f.emin()) e = f.emin();
  const double quantum = std::ldexp(1.0, e - f.mbits);
  const double r = std::nearbyint(ax / quantum) * quantum;  // exact division; default mode RNE
  if (r > f.maxfinite()) return sign | inf_bits;
  if (r < std::ldexp(1.0, f.emin())) {
    return sign | static_cast<uint16_t>(r / std::ldexp(1.0, f.emin() - f.mbits));
  }
  const int re = std::ilogb(r);
  const uint32_t mant = static_cast<uint32_t>(r / std::ldexp(1.0, re - f.mbits)) - (1u << f.mbits);
  return sign | static_cast<uint16_t>(((re + f.bias()) << f.mbits) | mant);
}

bool is_nan16(uint16_t b, Fmt16 f) {
  const uint16_t exp_mask = static_cast<uint16_t>(((1u << f.ebits) - 1) << f.mbits);
  return (b & exp_mask) == exp_mask && (b & ((1u << f.mbits) - 1)) != 0;
}

#if SVDQ_HAVE_CUDA_HEADERS
uint16_t cuda_half(float x) {
  const __half h = __float2half_rn(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
uint16_t cuda_bf16(float x) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
#endif

// Checks one float against every oracle; returns false (after recording a failure) on mismatch.
bool check_one(float x) {
  const uint16_t h = float_to_half_bits(x);
  const uint16_t b = float_to_bf16_bits(x);
  if (std::isnan(x)) {
    EXPECT_TRUE(is_nan16(h, kHalf)) << std::hex << "x bits " << u_of(x) << " -> half " << h;
    EXPECT_TRUE(is_nan16(b, kBf16)) << std::hex << "x bits " << u_of(x) << " -> bf16 " << b;
    return is_nan16(h, kHalf) && is_nan16(b, kBf16);
  }
  bool ok = true;
  const uint16_t oh = oracle_encode(x, kHalf);
  const uint16_t ob = oracle_encode(x, kBf16);
  if (h != oh) {
    ADD_FAILURE() << std::hex << "half: x bits 0x" << u_of(x) << " got 0x" << h << " oracle 0x"
                  << oh;
    ok = false;
  }
  if (b != ob) {
    ADD_FAILURE() << std::hex << "bf16: x bits 0x" << u_of(x) << " got 0x" << b << " oracle 0x"
                  << ob;
    ok = false;
  }
#if SVDQ_HAVE_CUDA_HEADERS
  const uint16_t ch = cuda_half(x);
  const uint16_t cb = cuda_bf16(x);
  if (h != ch) {
    ADD_FAILURE() << std::hex << "half vs CUDA: x bits 0x" << u_of(x) << " got 0x" << h
                  << " cuda 0x" << ch;
    ok = false;
  }
  if (b != cb) {
    ADD_FAILURE() << std::hex << "bf16 vs CUDA: x bits 0x" << u_of(x) << " got 0x" << b
                  << " cuda 0x" << cb;
    ok = false;
  }
#endif
  return ok;
}

// ------------------------------------------------------------------------------------------------
TEST(Half, ConstexprSpotValues) {
  static_assert(float_to_half_bits(1.0f) == 0x3c00);
  static_assert(float_to_half_bits(-2.0f) == 0xc000);
  static_assert(float_to_half_bits(65504.0f) == 0x7bff);
  static_assert(float_to_half_bits(65520.0f) == 0x7c00);  // the tie above max rounds to Inf
  static_assert(float_to_half_bits(5.9604644775390625e-08f) == 0x0001);
  static_assert(half_bits_to_float(0x3555) == 0.333251953125f);
  static_assert(float_to_bf16_bits(1.0f) == 0x3f80);
  static_assert(bf16_bits_to_float(0xc0a0) == -5.0f);
  EXPECT_EQ(float_to_half_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_half_bits(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(float_to_bf16_bits(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(float_to_half_bits(1e-8f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-1e-8f), 0x8000);
  EXPECT_EQ(float_to_half_bits(2.98023223876953125e-08f), 0x0000);  // 2^-25: tie to 0
  EXPECT_EQ(float_to_half_bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_bf16_bits(3.4028235e38f), 0x7f80);  // FLT_MAX rounds to Inf
}

TEST(Half, AllPatternsDecodeExactlyAndRoundTrip) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const float f = half_bits_to_float(h);
    const double want = oracle_decode(h, kHalf);
    if (is_nan16(h, kHalf)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(is_nan16(float_to_half_bits(f), kHalf)) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
    ASSERT_EQ(float_to_half_bits(f), h) << std::hex << h;
    ASSERT_EQ(svdq::half_t::from_bits(h).to_float(), f);
    ASSERT_EQ(svdq::half_t::from_float(f).bits, h);
#if SVDQ_HAVE_CUDA_HEADERS
    __half_raw raw;
    raw.x = h;
    ASSERT_EQ(__half2float(__half(raw)), f) << std::hex << h;
#endif
  }
}

TEST(Bf16, AllPatternsDecodeExactlyAndRoundTrip) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const float f = bf16_bits_to_float(h);
    const double want = oracle_decode(h, kBf16);
    if (is_nan16(h, kBf16)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(is_nan16(float_to_bf16_bits(f), kBf16)) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
    ASSERT_EQ(float_to_bf16_bits(f), h) << std::hex << h;
    ASSERT_EQ(svdq::bfloat16_t::from_bits(h).to_float(), f);
    ASSERT_EQ(svdq::bfloat16_t::from_float(f).bits, h);
    ASSERT_EQ(static_cast<float>(svdq::bfloat16_t::from_bits(h)), f);
  }
}

TEST(Conversions, SparseSweepOfAllFloatBits) {
  int failures = 0;
  for (uint64_t u = 0; u <= 0xffffffffull && failures < 10; u += 97) {
    if (!check_one(f_of(static_cast<uint32_t>(u)))) ++failures;
  }
  EXPECT_EQ(failures, 0);
}

TEST(Conversions, DenseSweepOfTheHalfRange) {
  // Every 29th float in [2^-26, 2^17] (both signs): subnormal halfs, normal halfs, overflow.
  int failures = 0;
  const uint32_t lo = u_of(std::ldexp(1.0f, -26));
  const uint32_t hi = u_of(std::ldexp(1.0f, 17));
  for (uint32_t u = lo; u <= hi && failures < 10; u += 29) {
    if (!check_one(f_of(u))) ++failures;
    if (!check_one(f_of(u | 0x80000000u))) ++failures;
  }
  EXPECT_EQ(failures, 0);
}

TEST(Conversions, FloatSubnormalsAndSpecials) {
  int failures = 0;
  for (uint32_t u = 0; u < (1u << 23) && failures < 10; u += 3) {  // float subnormals
    if (!check_one(f_of(u))) ++failures;
    if (!check_one(f_of(u | 0x80000000u))) ++failures;
  }
  for (uint32_t u : {0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffc00000u, 0x7fffffffu,
                     0xffffffffu, 0x7f7fffffu, 0xff7fffffu, 0x00800000u}) {
    check_one(f_of(u));
  }
  EXPECT_EQ(failures, 0);
}

// Every midpoint between adjacent representable values (an exact float) must round to the even
// neighbour; its float neighbours must round to the nearer one.
void check_ties(Fmt16 f, uint16_t (*enc)(float) noexcept) {
  const uint16_t max_bits = static_cast<uint16_t>((((1u << f.ebits) - 1) << f.mbits) - 1);
  int failures = 0;
  for (uint32_t b = 0; b <= max_bits && failures < 10; ++b) {
    const double lo = oracle_decode(static_cast<uint16_t>(b), f);
    const double hi = oracle_decode(static_cast<uint16_t>(b + 1), f);  // b+1 may be Inf
    const double hi_fin = std::isinf(hi) ? std::ldexp(1.0, (1 << f.ebits) - 1 - f.bias()) : hi;
    const double mid = 0.5 * (lo + hi_fin);
    const float m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid);  // the midpoint is exact in float
    const uint16_t even = (b & 1) ? static_cast<uint16_t>(b + 1) : static_cast<uint16_t>(b);
    const float below = std::nextafter(m, 0.0f);
    const float above = std::nextafter(m, std::numeric_limits<float>::infinity());
    for (int s = 0; s < 2; ++s) {
      const float sg = s ? -1.0f : 1.0f;
      const uint16_t sb = s ? 0x8000 : 0;
      const uint16_t got_m = enc(sg * m), got_b = enc(sg * below), got_a = enc(sg * above);
      if (got_m != (even | sb) || got_b != (b | sb) || got_a != ((b + 1) | sb)) {
        ADD_FAILURE() << std::hex << "tie between 0x" << b << " and 0x" << b + 1 << " sign " << s
                      << ": mid->0x" << got_m << " below->0x" << got_b << " above->0x" << got_a;
        ++failures;
      }
      check_one(sg * m);
    }
  }
}

TEST(Half, AllTiesRoundToEven) { check_ties(kHalf, &float_to_half_bits); }
TEST(Bf16, AllTiesRoundToEven) { check_ties(kBf16, &float_to_bf16_bits); }

TEST(Dtype, NamesAndSizes) {
  EXPECT_STREQ(svdq::dtype_name(svdq::DType::kF32), "f32");
  EXPECT_STREQ(svdq::dtype_name(svdq::DType::kF16), "f16");
  EXPECT_STREQ(svdq::dtype_name(svdq::DType::kBF16), "bf16");
  EXPECT_STREQ(svdq::dtype_name(svdq::DType::kF64), "f64");
  static_assert(svdq::dtype_size(svdq::DType::kF32) == 4);
  static_assert(svdq::dtype_size(svdq::DType::kF16) == 2);
  static_assert(svdq::dtype_size(svdq::DType::kBF16) == 2);
  static_assert(svdq::dtype_size(svdq::DType::kF64) == 8);
  static_assert(svdq::DTypeOf<float>::value == svdq::DType::kF32);
  static_assert(svdq::DTypeOf<svdq::half_t>::value == svdq::DType::kF16);
  static_assert(svdq::DTypeOf<svdq::bfloat16_t>::value == svdq::DType::kBF16);
  static_assert(svdq::DTypeOf<double>::value == svdq::DType::kF64);
  EXPECT_EQ(svdq::float_to_bits16(1.0f + std::ldexp(1.0f, -11), svdq::DType::kF16), 0x3c00);
  EXPECT_EQ(svdq::float_to_bits16(1.0f + std::ldexp(1.0f, -8), svdq::DType::kBF16), 0x3f80);
  EXPECT_EQ(svdq::bits16_to_float(0x3c01, svdq::DType::kF16), 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(svdq::bits16_to_float(0x3f81, svdq::DType::kBF16), 1.0f + std::ldexp(1.0f, -7));
}

TEST(MatrixView, IndexingAndLeadingDimension) {
  std::vector<float> buf(3 * 5);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  svdq::MatrixView<float> v(buf.data(), 3, 4, 5);
  EXPECT_EQ(v.ld, 5);
  EXPECT_EQ(v(2, 3), 13.0f);
  EXPECT_EQ(v.row(1), buf.data() + 5);
  v(1, 2) = -1.0f;
  EXPECT_EQ(buf[7], -1.0f);
  svdq::MatrixView<float> dense(buf.data(), 3, 5);
  EXPECT_EQ(dense.ld, 5);
  svdq::MatrixView<const float> c = v;  // non-const -> const
  EXPECT_EQ(c.data, buf.data());
  EXPECT_EQ(c.rows, 3);
  EXPECT_EQ(c.cols, 4);
  EXPECT_EQ(c.ld, 5);
  EXPECT_EQ(c(2, 0), 10.0f);
  const auto vec = svdq::vector_view(buf.data(), 7);
  EXPECT_EQ(vec.rows, 1);
  EXPECT_EQ(vec.cols, 7);
  EXPECT_EQ(vec.ld, 7);
}

TEST(MatrixRef, ConstRefAtAllDtypesWithPadding) {
  const int64_t rows = 3, cols = 4, ld = 6;
  std::vector<float> f32(rows * ld, std::nanf(""));
  std::vector<double> f64(rows * ld, std::nan(""));
  std::vector<svdq::half_t> f16(rows * ld, svdq::half_t::from_bits(0x7e00));
  std::vector<svdq::bfloat16_t> bf(rows * ld, svdq::bfloat16_t::from_bits(0x7fc0));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const float v = (i - 1.3f) * (j + 0.77f) * 1000.1f;
      f32[i * ld + j] = v;
      f64[i * ld + j] = v * (1.0 + 1e-12);
      f16[i * ld + j] = svdq::half_t::from_bits(static_cast<uint16_t>(0x3001 + 97 * (i * 7 + j)));
      bf[i * ld + j] = svdq::bfloat16_t::from_bits(static_cast<uint16_t>(0xbf01 + 31 * (i + j)));
    }
  }
  const svdq::ConstMatrixRef r32 = svdq::MatrixView<const float>(f32.data(), rows, cols, ld);
  const svdq::ConstMatrixRef r64 = svdq::MatrixView<double>(f64.data(), rows, cols, ld);
  const svdq::ConstMatrixRef r16 = svdq::MatrixView<svdq::half_t>(f16.data(), rows, cols, ld);
  const svdq::ConstMatrixRef rbf =
      svdq::MatrixView<const svdq::bfloat16_t>(bf.data(), rows, cols, ld);
  EXPECT_EQ(r32.dtype, svdq::DType::kF32);
  EXPECT_EQ(r64.dtype, svdq::DType::kF64);
  EXPECT_EQ(r16.dtype, svdq::DType::kF16);
  EXPECT_EQ(rbf.dtype, svdq::DType::kBF16);
  EXPECT_EQ(r16.ld, ld);
  EXPECT_FALSE(r16.empty());
  EXPECT_TRUE(svdq::ConstMatrixRef(nullptr, svdq::DType::kF32, 0, 5, 5).empty());
  EXPECT_TRUE(svdq::ConstMatrixRef(nullptr, svdq::DType::kF32, 5, 0, 0).empty());
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      EXPECT_EQ(r32.at(i, j), static_cast<double>(f32[i * ld + j]));
      EXPECT_EQ(r64.at(i, j), f64[i * ld + j]);
      EXPECT_EQ(r16.at(i, j), oracle_decode(f16[i * ld + j].bits, kHalf));
      EXPECT_EQ(rbf.at(i, j), oracle_decode(bf[i * ld + j].bits, kBf16));
    }
  }
}

TEST(MatrixRef, StoreRoundsToNearestEven) {
  const int64_t rows = 2, cols = 3, ld = 4;
  std::vector<float> f32(rows * ld, 7.0f);
  std::vector<double> f64(rows * ld, 7.0);
  std::vector<svdq::half_t> f16(rows * ld, svdq::half_t::from_bits(0x1234));
  std::vector<svdq::bfloat16_t> bf(rows * ld, svdq::bfloat16_t::from_bits(0x1234));
  const svdq::MatrixRef w32 = svdq::MatrixView<float>(f32.data(), rows, cols, ld);
  const svdq::MatrixRef w64 = svdq::MatrixView<double>(f64.data(), rows, cols, ld);
  const svdq::MatrixRef w16 = svdq::MatrixView<svdq::half_t>(f16.data(), rows, cols, ld);
  const svdq::MatrixRef wbf = svdq::MatrixView<svdq::bfloat16_t>(bf.data(), rows, cols, ld);
  const float vals[6] = {1.0f + std::ldexp(1.0f, -11),      // half tie -> 1.0
                         1.0f + 3 * std::ldexp(1.0f, -11),  // half tie -> 1 + 2^-9
                         -(1.0f + std::ldexp(1.0f, -8)),    // bf16 tie -> -1.0
                         1.0f + 3 * std::ldexp(1.0f, -8),   // bf16 tie -> 1 + 2^-6
                         70000.0f,                          // half overflow -> Inf
                         0.1f};
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const float v = vals[i * cols + j];
      w32.store(i, j, v);
      w64.store(i, j, v);
      w16.store(i, j, v);
      wbf.store(i, j, v);
      EXPECT_EQ(f32[i * ld + j], v);
      EXPECT_EQ(f64[i * ld + j], static_cast<double>(v));
      EXPECT_EQ(f16[i * ld + j].bits, oracle_encode(v, kHalf)) << v;
      EXPECT_EQ(bf[i * ld + j].bits, oracle_encode(v, kBf16)) << v;
      const svdq::ConstMatrixRef c16 = w16;
      EXPECT_EQ(c16.at(i, j), oracle_decode(oracle_encode(v, kHalf), kHalf));
    }
    // the padding column is untouched
    EXPECT_EQ(f32[i * ld + 3], 7.0f);
    EXPECT_EQ(f64[i * ld + 3], 7.0);
    EXPECT_EQ(f16[i * ld + 3].bits, 0x1234);
    EXPECT_EQ(bf[i * ld + 3].bits, 0x1234);
  }
  EXPECT_EQ(f16[0].bits, 0x3c00);
  EXPECT_EQ(f16[1].bits, 0x3c02);
  EXPECT_EQ(f16[4 + 1].bits, 0x7c00);
  EXPECT_EQ(bf[2].bits, 0xbf80);
  EXPECT_EQ(bf[4].bits, 0x3f82);
  const svdq::ConstMatrixRef c = wbf;
  EXPECT_EQ(c.data, bf.data());
  EXPECT_EQ(c.dtype, svdq::DType::kBF16);
  EXPECT_EQ(c.rows, rows);
  EXPECT_EQ(c.cols, cols);
  EXPECT_EQ(c.ld, ld);
}

}  // namespace
