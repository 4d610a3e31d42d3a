// Tests of cuda/arch/convert.cuh: exhaustive over the 4-bit and 8-bit codes, against independent
// references — svdq's CPU codecs (include/svdq/formats.hpp), exact float64 arithmetic, and, when
// the CUDA toolkit is present, its host conversions (cuda_fp8.h, cuda_fp4.h, cuda_bf16.h,
// cuda_fp16.h), which round like the device. The routines built from byte_perm run their device
// algorithm here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../cuda/arch/convert.cuh"
#include "svdq/formats.hpp"

#if SVDQ_HAVE_CUDA_HEADERS
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#endif

namespace {

namespace arch = svdq::arch;

float f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// Exact value of a bf16 / f16 bit pattern, computed here from the IEEE definitions.
double bf16_value(uint16_t h) { return f32(static_cast<uint32_t>(h) << 16); }
double f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
  double v = e == 0    ? std::ldexp(m, -24)
             : e == 31 ? (m ? NAN : INFINITY)
                       : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

TEST(ArchConvert, Dp4aMatchesInt64AndWraps) {
  std::mt19937 rng(20);
  for (int i = 0; i < 200000; ++i) {
    const int32_t a = static_cast<int32_t>(rng()), b = static_cast<int32_t>(rng());
    const int32_t c =
        i % 3 == 0 ? std::numeric_limits<int32_t>::max() - static_cast<int32_t>(rng() % 70000)
                   : static_cast<int32_t>(rng());
    int64_t s = c;
    for (int k = 0; k < 4; ++k)
      s += static_cast<int64_t>(static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * k))) *
           static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * k));
    ASSERT_EQ(arch::dp4a(a, b, c),
              static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(s))));
  }
}

TEST(ArchConvert, BytePermSelectsBytes) {
  std::mt19937 rng(21);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t x = rng(), y = rng(), s = rng() & 0x7777u;
    uint8_t bytes[8];
    std::memcpy(bytes, &x, 4);
    std::memcpy(bytes + 4, &y, 4);
    uint32_t want = 0;
    for (int k = 0; k < 4; ++k) want |= static_cast<uint32_t>(bytes[(s >> (4 * k)) & 7]) << (8 * k);
    ASSERT_EQ(arch::byte_perm(x, y, s), want);
  }
}

// Every nibble code at every position (and random words): byte e = decode_int4(nibble e).
TEST(ArchConvert, S4ToS8AllCodesAllPositions) {
  std::mt19937 rng(22);
  auto check = [](uint32_t w) {
    uint32_t lo, hi;
    arch::s4x8_to_s8x8(w, lo, hi);
    for (int e = 0; e < 8; ++e) {
      const int want = svdq::decode_int4(static_cast<uint8_t>((w >> (4 * e)) & 0xF));
      const int got = static_cast<int8_t>(((e < 4 ? lo : hi) >> (8 * (e % 4))) & 0xFF);
      ASSERT_EQ(got, want) << std::hex << "word 0x" << w << " element " << e;
    }
  };
  for (int pos = 0; pos < 8; ++pos)
    for (uint32_t code = 0; code < 16; ++code)
      for (uint32_t fill = 0; fill < 16; ++fill) {
        uint32_t w = 0;
        for (int e = 0; e < 8; ++e) w |= (e == pos ? code : fill) << (4 * e);
        check(w);
      }
  for (int i = 0; i < 100000; ++i) check(rng());
}

uint8_t reference_e4m3(int v) {
#if SVDQ_HAVE_CUDA_HEADERS
  const uint8_t cuda =
      static_cast<uint8_t>(__nv_cvt_float_to_fp8(static_cast<float>(v), __NV_SATFINITE, __NV_E4M3));
  EXPECT_EQ(cuda, svdq::encode_e4m3(static_cast<float>(v)));
#endif
  return svdq::encode_e4m3(static_cast<float>(v));
}

// All 65536 groups of 4 nibbles: byte e = E4M3 encoding of the integer, and it decodes exactly.
TEST(ArchConvert, S4ToE4m3Exhaustive) {
  for (uint32_t w = 0; w < 65536; ++w) {
    const uint32_t got = arch::s4x4_to_e4m3x4(w);
    for (int e = 0; e < 4; ++e) {
      const int v = svdq::decode_int4(static_cast<uint8_t>((w >> (4 * e)) & 0xF));
      const uint8_t byte = static_cast<uint8_t>(got >> (8 * e));
      ASSERT_EQ(byte, reference_e4m3(v)) << "word " << w << " element " << e;
      ASSERT_EQ(svdq::decode_e4m3(byte), static_cast<float>(v));
    }
  }
  std::mt19937 rng(23);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t w = rng();
    uint32_t lo, hi;
    arch::s4x8_to_e4m3x8(w, lo, hi);
    ASSERT_EQ(lo, arch::s4x4_to_e4m3x4(w & 0xFFFF));
    ASSERT_EQ(hi, arch::s4x4_to_e4m3x4(w >> 16));
    ASSERT_EQ(arch::s4x4_to_e4m3x4(w), arch::s4x4_to_e4m3x4(w & 0xFFFF));  // bits 16-31 ignored
  }
}

TEST(ArchConvert, E4m3ToFloatAll256) {
  for (uint32_t code = 0; code < 256; ++code) {
    const float got = arch::e4m3_to_float(code);
    const float want = svdq::decode_e4m3(static_cast<uint8_t>(code));
#if SVDQ_HAVE_CUDA_HEADERS
    const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
    const float cuda = __half2float(__half(h));
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(cuda));
    else
      EXPECT_EQ(bits(cuda), bits(want)) << "code " << code;
#endif
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << code;
    } else {
      EXPECT_EQ(bits(got), bits(want)) << "code " << code;  // bits: also the sign of zero
    }
  }
}

TEST(ArchConvert, E2m1ToBf16F16FloatAll16) {
  for (uint32_t code = 0; code < 16; ++code) {
    const float want = svdq::decode_e2m1(static_cast<uint8_t>(code));
    EXPECT_EQ(bits(arch::e2m1_to_float(code)), bits(want)) << "code " << code;
    EXPECT_EQ(bf16_value(arch::e2m1_to_bf16(code)), want) << "code " << code;
    EXPECT_EQ(f16_value(arch::e2m1_to_f16(code)), want) << "code " << code;
    EXPECT_EQ(std::signbit(bf16_value(arch::e2m1_to_bf16(code))), std::signbit(want));
    EXPECT_EQ(std::signbit(f16_value(arch::e2m1_to_f16(code))), std::signbit(want));
    EXPECT_EQ(arch::e2m1_to_bf16(code | 0xF0u), arch::e2m1_to_bf16(code));  // low 4 bits only
#if SVDQ_HAVE_CUDA_HEADERS
    const __half_raw h = __nv_cvt_fp4_to_halfraw(static_cast<__nv_fp4_storage_t>(code), __NV_E2M1);
    EXPECT_EQ(arch::e2m1_to_f16(code), h.x) << "code " << code;
    const __nv_bfloat16_raw b = __nv_bfloat16(__float2bfloat16_rn(want));
    EXPECT_EQ(arch::e2m1_to_bf16(code), b.x) << "code " << code;
#endif
  }
}

TEST(ArchConvert, E2m1PairsToBf16x2AndF16x2) {
  for (uint32_t codes = 0; codes < 256; ++codes) {
    const uint32_t b = arch::e2m1x2_to_bf16x2(codes | 0xFFFFFF00u),
                   h = arch::e2m1x2_to_f16x2(codes);
    for (int e = 0; e < 2; ++e) {
      const float want = svdq::decode_e2m1(static_cast<uint8_t>((codes >> (4 * e)) & 0xF));
      EXPECT_EQ(bits(static_cast<float>(bf16_value(static_cast<uint16_t>(b >> (16 * e))))),
                bits(want));
      EXPECT_EQ(bits(static_cast<float>(f16_value(static_cast<uint16_t>(h >> (16 * e))))),
                bits(want));
    }
  }
}

// 16 x 16 code pairs x all 256 E4M3 scales: each element is exactly e2m1 * e4m3 (float64), in bf16
// and f16; NaN scales give NaN.
TEST(ArchConvert, E2m1TimesE4m3ScaleExhaustive) {
  for (uint32_t sc = 0; sc < 256; ++sc) {
    const float scale = svdq::decode_e4m3(static_cast<uint8_t>(sc));
    for (uint32_t codes = 0; codes < 256; ++codes) {
      const uint32_t pb = arch::e2m1x2_scaled_to_bf16x2(codes, arch::e4m3_to_float(sc));
      const uint32_t ph = arch::e2m1x2_scaled_to_f16x2(codes, arch::e4m3_to_float(sc));
      for (int e = 0; e < 2; ++e) {
        const uint8_t code = static_cast<uint8_t>((codes >> (4 * e)) & 0xF);
        const double want = static_cast<double>(svdq::decode_e2m1(code)) * scale;
        const uint16_t b = static_cast<uint16_t>(pb >> (16 * e)),
                       h = static_cast<uint16_t>(ph >> (16 * e));
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(bf16_value(b)) && std::isnan(f16_value(h))) << sc << " " << codes;
          continue;
        }
        ASSERT_EQ(bf16_value(b), want) << "scale " << sc << " code " << int(code);
        ASSERT_EQ(f16_value(h), want) << "scale " << sc << " code " << int(code);
#if SVDQ_HAVE_CUDA_HEADERS
        ASSERT_EQ(b, __nv_bfloat16_raw(__float2bfloat16_rn(static_cast<float>(want))).x);
        ASSERT_EQ(h, __half_raw(__float2half_rn(static_cast<float>(want))).x);
#endif
      }
    }
  }
}

// fp32 -> bf16 / f16 round to nearest even: random bit patterns and edge cases, against exact
// float64 rounding written here, and the toolkit's host conversions.
double round_to_grid(double x, int sig_bits, int min_exp, double max_finite) {
  // RNE of x to `sig_bits` significant bits with exponent >= min_exp (subnormal grid below).
  if (x == 0 || std::isinf(x)) return x;
  int e;
  std::frexp(std::fabs(x), &e);
  const int q = std::max(e - sig_bits, min_exp - sig_bits);  // ulp exponent
  const double r = std::nearbyint(std::ldexp(x, -q));        // FE_TONEAREST: ties to even
  const double y = std::ldexp(r, q);
  const double overflow =
      max_finite + std::ldexp(1.0, static_cast<int>(std::log2(max_finite)) - sig_bits);
  if (std::fabs(x) >= overflow) return std::copysign(INFINITY, x);
  return y;
}

TEST(ArchConvert, FloatToBf16AndF16RoundToNearestEven) {
  std::mt19937 rng(24);
  std::vector<uint32_t> inputs = {0u,          0x80000000u, 0x7F800000u, 0xFF800000u, 0x7F7FFFFFu,
                                  0x00000001u, 0x3F808000u, 0x3F818000u, 0x477FEFFFu, 0x477FF000u,
                                  0x33000000u, 0x33000001u, 0x387FC000u, 0x38800000u, 0x3F7FFFFFu};
  for (int i = 0; i < 1000000; ++i) inputs.push_back(rng());
  for (int i = 0; i < 200000; ++i)
    inputs.push_back((rng() & 0x87FFFFFFu) | 0x30000000u);  // f16 range
  for (uint32_t u : inputs) {
    const float x = f32(u);
    const uint16_t b = arch::float_to_bf16_rn(x), h = arch::float_to_f16_rn(x);
    if (std::isnan(x)) {
      EXPECT_EQ(b, 0x7FFF);
      EXPECT_EQ(h, 0x7FFF);
      continue;
    }
    const double wb = round_to_grid(x, 8, -125, 0x1.FEp127);
    const double wh = round_to_grid(x, 11, -13, 65504.0);
    ASSERT_EQ(bf16_value(b), wb) << std::hex << "bf16 of 0x" << u;
    ASSERT_EQ(f16_value(h), wh) << std::hex << "f16 of 0x" << u;
    ASSERT_EQ(std::signbit(bf16_value(b)), std::signbit(x));
    ASSERT_EQ(std::signbit(f16_value(h)), std::signbit(x));
#if SVDQ_HAVE_CUDA_HEADERS
    ASSERT_EQ(b, __nv_bfloat16_raw(__float2bfloat16_rn(x)).x) << std::hex << u;
    ASSERT_EQ(h, __half_raw(__float2half_rn(x)).x) << std::hex << u;
#endif
    ASSERT_EQ(arch::pack_bf16x2_rn(x, -x),
              static_cast<uint32_t>(b) | (static_cast<uint32_t>(arch::float_to_bf16_rn(-x)) << 16));
    ASSERT_EQ(
        arch::pack_f16x2_rn(x, 2 * x),
        static_cast<uint32_t>(h) | (static_cast<uint32_t>(arch::float_to_f16_rn(2 * x)) << 16));
  }
}

TEST(ArchConvert, WideningIsExactForAll16BitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double wh = f16_value(static_cast<uint16_t>(h)),
                 wb = bf16_value(static_cast<uint16_t>(h));
    const float gh = arch::f16_to_float(static_cast<uint16_t>(h)),
                gb = arch::bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(wh))
      EXPECT_TRUE(std::isnan(gh));
    else
      ASSERT_EQ(static_cast<double>(gh), wh) << h;
    if (std::isnan(wb))
      EXPECT_TRUE(std::isnan(gb));
    else
      ASSERT_EQ(static_cast<double>(gb), wb) << h;
#if SVDQ_HAVE_CUDA_HEADERS
    __half_raw r;
    r.x = static_cast<unsigned short>(h);
    const float cuda = __half2float(__half(r));
    if (std::isnan(cuda)) {
      EXPECT_TRUE(std::isnan(gh)) << h;
    } else {
      ASSERT_EQ(bits(gh), bits(cuda)) << h;
    }
#endif
  }
}

// fp32 -> tf32 (cvt.rna.tf32.f32): against an independent rounding in double (11 significant bits,
// ties away from zero, via frexp / round) on random normal floats, every tie, and the specials.
TEST(ArchConvert, FloatToTf32RoundsToNearestTiesAway) {
  auto tf32_of = [](float x) {
    const uint32_t u = arch::float_to_tf32_rna(x);
    float f;
    std::memcpy(&f, &u, 4);
    EXPECT_EQ(u & 0x1FFFu, 0u) << x;
    return f;
  };
  auto expected = [](float x) {
    int e;
    const double m = std::frexp(static_cast<double>(x), &e);  // |m| in [0.5, 1)
    return static_cast<float>(std::ldexp(std::round(std::ldexp(m, 11)), e - 11));  // round(): half away
  };
  std::mt19937 rng(21);
  for (int i = 0; i < 1000000; ++i) {
    uint32_t u = rng();
    const uint32_t exp = (u >> 23) & 0xFFu;
    if (exp == 0 || exp >= 0xFEu) continue;  // normals below the top binade (no overflow to inf here)
    if (i % 4 == 0) u = (u & 0xFFFFE000u) | 0x1000u;  // an exact tie
    float x;
    std::memcpy(&x, &u, 4);
    ASSERT_EQ(tf32_of(x), expected(x)) << std::hex << u;
    // x - hi is exact, and the two-term split leaves at most 2^-22 |x| (plus half the tf32 quantum
    // 2^-136 of fp32's subnormal range, reached only for |x| < 2^-114).
    const float hi = tf32_of(x), lo = tf32_of(x - hi);
    ASSERT_LE(std::fabs(static_cast<double>(x) - hi - lo),
              std::ldexp(std::fabs(static_cast<double>(x)), -22) + std::ldexp(1.0, -137));
  }
  EXPECT_EQ(tf32_of(0.0f), 0.0f);
  EXPECT_TRUE(std::signbit(tf32_of(-0.0f)));
  EXPECT_EQ(tf32_of(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(tf32_of(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(tf32_of(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(tf32_of(1.0f + std::ldexp(1.0f, -11)), 1.0f + std::ldexp(1.0f, -10));  // tie away from 1
}

}  // namespace
