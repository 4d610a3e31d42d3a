// Tier-1 exact tests of svdq/formats.hpp element codecs and packing: every code, every tie,
// saturation and NaN, against a table-driven oracle written here and, when the CUDA toolkit is
// present, against its host conversions (cuda_fp4.h / cuda_fp8.h). Bytes must compare equal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "svdq/formats.hpp"

#if SVDQ_HAVE_CUDA_HEADERS
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#endif

namespace {

using svdq::decode_e2m1;
using svdq::decode_e4m3;
using svdq::decode_int4;
using svdq::encode_e2m1;
using svdq::encode_e4m3;
using svdq::encode_int4;

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::nanf("");

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

// ---- independent oracle: magnitudes of codes 0..n-1 in increasing order; code parity = mantissa
// LSB parity, so "ties to even" = "ties to the even code". Saturating (satfinite) like the spec.
std::vector<double> e2m1_mags() { return {0, 0.5, 1, 1.5, 2, 3, 4, 6}; }
std::vector<double> e4m3_mags() {
  std::vector<double> v;
  for (int c = 0; c < 0x7F; ++c) {
    const int e = c >> 3, m = c & 7;
    v.push_back(e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10));
  }
  return v;  // v.back() == 448
}
const std::vector<double> kE2m1 = e2m1_mags();
const std::vector<double> kE4m3 = e4m3_mags();

uint8_t oracle_round(float x, const std::vector<double>& mags, uint8_t sign_bit, uint8_t nan_code) {
  if (std::isnan(x)) return nan_code;
  const uint8_t s = std::signbit(x) ? sign_bit : 0;
  const double ax = std::fabs(static_cast<double>(x));
  const int n = static_cast<int>(mags.size());
  if (ax >= mags[n - 1]) return s | static_cast<uint8_t>(n - 1);
  const int i = static_cast<int>(std::upper_bound(mags.begin(), mags.end(), ax) - mags.begin()) - 1;
  const double dlo = ax - mags[i], dhi = mags[i + 1] - ax;  // both exact in double
  int c = dlo < dhi ? i : dhi < dlo ? i + 1 : ((i & 1) ? i + 1 : i);
  return s | static_cast<uint8_t>(c);
}
uint8_t oracle_e2m1(float x) { return oracle_round(x, kE2m1, 0x8, 0x7); }
uint8_t oracle_e4m3(float x) { return oracle_round(x, kE4m3, 0x80, 0x7F); }
uint8_t oracle_int4(float x) {
  if (std::isnan(x)) return 0;
  double r = std::nearbyint(static_cast<double>(x));
  r = std::min(7.0, std::max(-7.0, r));
  return static_cast<uint8_t>(static_cast<int>(r) & 0xF);
}

#if SVDQ_HAVE_CUDA_HEADERS
uint8_t cuda_e2m1(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest));
}
uint8_t cuda_e4m3(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}
#endif

// Checks one float through all three encoders against the oracles; false on any mismatch.
bool check_one(float x) {
  bool ok = true;
  const uint8_t a = encode_e2m1(x), b = encode_e4m3(x), c = encode_int4(x);
  auto report = [&](const char* what, unsigned got, unsigned want) {
    ADD_FAILURE() << what << ": x=" << x << " (bits 0x" << std::hex << u_of(x) << ") got 0x" << got
                  << " want 0x" << want;
    ok = false;
  };
  if (a != oracle_e2m1(x)) report("e2m1", a, oracle_e2m1(x));
  if (b != oracle_e4m3(x)) report("e4m3", b, oracle_e4m3(x));
  if (c != oracle_int4(x)) report("int4", c, oracle_int4(x));
#if SVDQ_HAVE_CUDA_HEADERS
  if (a != cuda_e2m1(x)) report("e2m1 vs cuda_fp4.h", a, cuda_e2m1(x));
  if (b != cuda_e4m3(x)) report("e4m3 vs cuda_fp8.h", b, cuda_e4m3(x));
#endif
  return ok;
}

// ------------------------------------------------------------------------------------------------
TEST(E2M1, AllCodesDecodeAndReencode) {
  const float mags[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (int c = 0; c < 16; ++c) {
    const float v = decode_e2m1(static_cast<uint8_t>(c));
    const float want = (c & 8) ? -mags[c & 7] : mags[c & 7];
    EXPECT_EQ(v, want) << c;
    EXPECT_EQ(std::signbit(v), (c & 8) != 0) << c;  // 0x8 is -0
    EXPECT_EQ(encode_e2m1(v), c) << c;
    EXPECT_EQ(decode_e2m1(static_cast<uint8_t>(0xA0 | c)), want) << "high bits must be ignored";
    EXPECT_EQ(svdq::decode_code(svdq::Format::kNvfp4, static_cast<uint8_t>(c)), want);
  }
}

TEST(E2M1, TiesToEvenSaturationNaN) {
  const struct {
    float x;
    uint8_t code;
  } cases[] = {{0.25f, 0x0}, {0.75f, 0x2}, {1.25f, 0x2}, {1.75f, 0x4},  {2.5f, 0x4}, {3.5f, 0x6},
               {5.0f, 0x6},  {7.0f, 0x7},  {1e30f, 0x7}, {kInf, 0x7},   {6.0f, 0x7}, {5.01f, 0x7},
               {4.99f, 0x6}, {0.26f, 0x1}, {0.24f, 0x0}, {1e-40f, 0x0}, {0.0f, 0x0}};
  for (const auto& t : cases) {
    EXPECT_EQ(encode_e2m1(t.x), t.code) << t.x;
    EXPECT_EQ(encode_e2m1(-t.x), t.code | 0x8) << -t.x;  // negatives alike, -0 kept
  }
  EXPECT_EQ(encode_e2m1(kNaN), 0x7);
  EXPECT_EQ(encode_e2m1(-kNaN), 0x7);
  EXPECT_EQ(encode_e2m1(f_of(0x7f800001u)), 0x7);  // signalling NaN
  EXPECT_EQ(encode_e2m1(f_of(0xffc00001u)), 0x7);
  EXPECT_EQ(encode_e2m1(-0.1f), 0x8);
}

TEST(E4M3, AllCodesDecodeAndReencode) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const float v = decode_e4m3(code);
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    const double mag = kE4m3[c & 0x7F];
    EXPECT_EQ(static_cast<double>(v), (c & 0x80) ? -mag : mag) << c;
    EXPECT_EQ(std::signbit(v), (c & 0x80) != 0) << c;
    EXPECT_EQ(encode_e4m3(v), code) << c;
  }
  EXPECT_EQ(decode_e4m3(0x7E), 448.0f);
  EXPECT_EQ(decode_e4m3(0xFE), -448.0f);
  EXPECT_EQ(decode_e4m3(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(decode_e4m3(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(decode_e4m3(0x38), 1.0f);
}

TEST(E4M3, SpotTiesSaturationNaN) {
  EXPECT_EQ(encode_e4m3(std::ldexp(1.0f, -10)), 0x00);  // half the min subnormal: tie to 0
  EXPECT_EQ(encode_e4m3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(encode_e4m3(3 * std::ldexp(1.0f, -10)), 0x02);  // tie 1 / 2 -> 2
  EXPECT_EQ(encode_e4m3(1.0625f), 0x38);                    // tie 1 / 1.125 -> 1
  EXPECT_EQ(encode_e4m3(1.1875f), 0x3A);                    // tie 1.125 / 1.25 -> 1.25
  EXPECT_EQ(encode_e4m3(464.0f), 0x7E);
  EXPECT_EQ(encode_e4m3(480.0f), 0x7E);
  EXPECT_EQ(encode_e4m3(1e30f), 0x7E);
  EXPECT_EQ(encode_e4m3(kInf), 0x7E);
  EXPECT_EQ(encode_e4m3(-kInf), 0xFE);
  EXPECT_EQ(encode_e4m3(-1e30f), 0xFE);
  EXPECT_EQ(encode_e4m3(kNaN), 0x7F);
  EXPECT_EQ(encode_e4m3(-kNaN), 0x7F);
  EXPECT_EQ(encode_e4m3(f_of(0x7f800001u)), 0x7F);
  EXPECT_EQ(encode_e4m3(0.0f), 0x00);
  EXPECT_EQ(encode_e4m3(-0.0f), 0x80);
  EXPECT_EQ(encode_e4m3(-1e-30f), 0x80);
}

TEST(Int4, RintHalfEvenAndClamp) {
  const struct {
    float x;
    int v;
  } cases[] = {{2.5f, 2},        {3.5f, 4},  {-2.5f, -2}, {-3.5f, -4},     {0.5f, 0},
               {-0.5f, 0},       {1.5f, 2},  {6.5f, 6},   {-6.5f, -6},     {7.6f, 7},
               {-100.f, -7},     {100.f, 7}, {7.5f, 7},   {-7.5f, -7},     {-8.f, -7},
               {0.49999997f, 0}, {kInf, 7},  {-kInf, -7}, {2.5000002f, 3}, {1e-40f, 0}};
  for (const auto& t : cases) {
    const uint8_t c = encode_int4(t.x);
    EXPECT_EQ(c, static_cast<uint8_t>(t.v & 0xF)) << t.x;
    EXPECT_EQ(decode_int4(c), t.v) << t.x;
  }
  EXPECT_EQ(encode_int4(-7.0f), 0x9);
  EXPECT_EQ(encode_int4(kNaN), 0x0);
  EXPECT_EQ(encode_int4(-kNaN), 0x0);
  for (int c = 0; c < 16; ++c) {
    const int want = c < 8 ? c : c - 16;
    EXPECT_EQ(decode_int4(static_cast<uint8_t>(c)), want);
    EXPECT_EQ(decode_int4(static_cast<uint8_t>(0x50 | c)), want) << "high bits must be ignored";
    EXPECT_EQ(svdq::decode_code(svdq::Format::kInt4, static_cast<uint8_t>(c)),
              static_cast<float>(want));
    if (c != 8) {
      EXPECT_EQ(encode_int4(static_cast<float>(want)), c);
    }
  }
}

// Every midpoint between adjacent magnitudes (exact in float), its float neighbours, both signs.
void check_ties(const std::vector<double>& mags, uint8_t (*enc)(float) noexcept, uint8_t sign_bit) {
  for (size_t i = 0; i + 1 < mags.size(); ++i) {
    const float m = static_cast<float>(0.5 * (mags[i] + mags[i + 1]));
    ASSERT_EQ(static_cast<double>(m), 0.5 * (mags[i] + mags[i + 1]));
    const uint8_t even = static_cast<uint8_t>((i & 1) ? i + 1 : i);
    for (int s = 0; s < 2; ++s) {
      const float sg = s ? -1.0f : 1.0f;
      const uint8_t sb = s ? sign_bit : 0;
      EXPECT_EQ(enc(sg * m), even | sb) << "tie " << sg * m;
      EXPECT_EQ(enc(sg * std::nextafter(m, 0.0f)), i | sb) << "below tie " << sg * m;
      EXPECT_EQ(enc(sg * std::nextafter(m, kInf)), (i + 1) | sb) << "above tie " << sg * m;
      check_one(sg * m);
      check_one(sg * std::nextafter(m, 0.0f));
      check_one(sg * std::nextafter(m, kInf));
    }
  }
  // Above the largest finite: saturate, including the (virtual) midpoint to the next binade.
  const float top = static_cast<float>(mags.back());
  for (float x : {top, std::nextafter(top, kInf), top * 1.0625f, top * 1.125f, top * 1.5f,
                  top * 2.0f, 3e38f, kInf}) {
    EXPECT_EQ(enc(x), mags.size() - 1) << x;
    EXPECT_EQ(enc(-x), (mags.size() - 1) | sign_bit) << -x;
    check_one(x);
    check_one(-x);
  }
}

TEST(E2M1, EveryTie) { check_ties(kE2m1, &encode_e2m1, 0x8); }
TEST(E4M3, EveryTie) { check_ties(kE4m3, &encode_e4m3, 0x80); }

TEST(Int4, EveryTie) {
  for (int k = -10; k < 10; ++k) {
    const float m = k + 0.5f;
    for (float x : {m, std::nextafter(m, -kInf), std::nextafter(m, kInf)}) {
      EXPECT_EQ(encode_int4(x), oracle_int4(x)) << x;
    }
  }
}

TEST(Codecs, SparseSweepOfAllFloatBits) {
  int failures = 0;
  for (uint64_t u = 0; u <= 0xffffffffull && failures < 10; u += 97) {
    if (!check_one(f_of(static_cast<uint32_t>(u)))) ++failures;
  }
  EXPECT_EQ(failures, 0);
}

TEST(Codecs, DenseSweepOfTheInterestingRange) {
  // Every 7th float in [2^-12, 2^10]: E4M3 subnormals through saturation, all of E2M1, int4.
  int failures = 0;
  const uint32_t lo = u_of(std::ldexp(1.0f, -12)), hi = u_of(std::ldexp(1.0f, 10));
  for (uint32_t u = lo; u <= hi && failures < 10; u += 7) {
    if (!check_one(f_of(u))) ++failures;
    if (!check_one(f_of(u | 0x80000000u))) ++failures;
  }
  // Float subnormals and specials.
  for (uint32_t u = 0; u < (1u << 23) && failures < 10; u += 4099) {
    if (!check_one(f_of(u))) ++failures;
    if (!check_one(f_of(u | 0x80000000u))) ++failures;
  }
  for (uint32_t u : {0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffc00000u, 0x7fffffffu,
                     0xffffffffu, 0x7f7fffffu, 0xff7fffffu}) {
    check_one(f_of(u));
  }
  EXPECT_EQ(failures, 0);
}

#if SVDQ_HAVE_CUDA_HEADERS
TEST(Oracle, OwnOracleAgreesWithCudaOnEveryTie) {
  // Guards the oracle itself, so a CPU-only run is still meaningful.
  for (const auto* mags : {&kE2m1, &kE4m3}) {
    for (size_t i = 0; i + 1 < mags->size(); ++i) {
      const float m = static_cast<float>(0.5 * ((*mags)[i] + (*mags)[i + 1]));
      for (float x : {m, -m, std::nextafter(m, 0.0f), std::nextafter(m, kInf)}) {
        EXPECT_EQ(oracle_e2m1(x), cuda_e2m1(x)) << x;
        EXPECT_EQ(oracle_e4m3(x), cuda_e4m3(x)) << x;
      }
    }
  }
}
#endif

TEST(Packing, RoundTripRandomCodes) {
  std::mt19937 rng(1234);
  for (int64_t n : {2, 4, 16, 30, 64, 1000, 4096}) {
    std::vector<uint8_t> codes(n), packed(n / 2 + 1, 0xCD), back(n + 1, 0xEE);
    for (auto& c : codes) c = static_cast<uint8_t>(rng() & 0xF);
    svdq::pack_nibbles(codes.data(), n, packed.data());
    EXPECT_EQ(packed[n / 2], 0xCD) << "wrote past n/2 bytes";
    for (int64_t i = 0; i < n / 2; ++i) {
      ASSERT_EQ(packed[i], static_cast<uint8_t>(codes[2 * i] | (codes[2 * i + 1] << 4))) << i;
    }
    for (int64_t k = 0; k < n; ++k) ASSERT_EQ(svdq::packed_nibble(packed.data(), k), codes[k]);
    svdq::unpack_nibbles(packed.data(), n, back.data());
    EXPECT_EQ(back[n], 0xEE) << "wrote past n codes";
    back.resize(n);
    EXPECT_EQ(back, codes);
  }
}

TEST(Packing, LowNibbleIsEvenK) {
  const uint8_t codes[4] = {0x1, 0xF, 0x9, 0x0};
  uint8_t packed[2] = {0, 0};
  svdq::pack_nibbles(codes, 4, packed);
  EXPECT_EQ(packed[0], 0xF1);
  EXPECT_EQ(packed[1], 0x09);
  uint8_t un[4] = {0xFF, 0xFF, 0xFF, 0xFF};
  const uint8_t src[2] = {0x7A, 0x83};
  svdq::unpack_nibbles(src, 4, un);
  EXPECT_EQ(un[0], 0xA);
  EXPECT_EQ(un[1], 0x7);
  EXPECT_EQ(un[2], 0x3);
  EXPECT_EQ(un[3], 0x8);
  EXPECT_EQ(svdq::packed_nibble(src, 0), 0xA);
  EXPECT_EQ(svdq::packed_nibble(src, 3), 0x8);
}

TEST(Format, NamesParseGroup) {
  static_assert(svdq::group_size(svdq::Format::kInt4) == 64);
  static_assert(svdq::group_size(svdq::Format::kNvfp4) == 16);
  EXPECT_STREQ(svdq::format_name(svdq::Format::kInt4), "int4");
  EXPECT_STREQ(svdq::format_name(svdq::Format::kNvfp4), "nvfp4");
  for (svdq::Format f : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    const auto r = svdq::parse_format(svdq::format_name(f));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r.value(), f);
  }
  for (const char* bad : {"", "INT4", "NVFP4", "int4 ", " nvfp4", "fp4", "int8", "nvfp", "int"}) {
    const auto r = svdq::parse_format(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), svdq::StatusCode::kErrorInvalidArgument) << bad;
    EXPECT_FALSE(r.status().message().empty()) << bad;
  }
  // A string_view that is not NUL-terminated right after the name.
  const char buf[] = "int4x";
  const auto r = svdq::parse_format(std::string_view(buf, 4));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value(), svdq::Format::kInt4);
}

}  // namespace
