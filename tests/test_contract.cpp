// Tier-1 exact test of svdq::quantize_activations against a second, independent scalar
// implementation of the activation contract of docs/formats.md §6 written here (its own E2M1 / E4M3 rounding
// in double, its own 16-bit decoding; nothing from svdq's codecs). Codes and scales compare
// byte for byte.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "svdq/formats.hpp"

#if SVDQ_HAVE_CUDA_HEADERS
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#endif

namespace {

using svdq::DType;
using svdq::Format;

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::nanf("");

// ---- the reference's own rounding: nearest of a magnitude table, ties to the even code ----------
std::vector<double> make_e4m3() {
  std::vector<double> v;
  for (int c = 0; c < 0x7F; ++c) {
    v.push_back((c >> 3) == 0 ? std::ldexp(c & 7, -9) : std::ldexp(8 + (c & 7), (c >> 3) - 10));
  }
  return v;
}
const std::vector<double> kE2m1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
const std::vector<double> kE4m3 = make_e4m3();

uint8_t ref_round(float x, const std::vector<double>& mags, uint8_t sign_bit, uint8_t nan_code) {
  if (std::isnan(x)) return nan_code;
  const uint8_t s = std::signbit(x) ? sign_bit : 0;
  const double ax = std::fabs(static_cast<double>(x));
  const int n = static_cast<int>(mags.size());
  if (ax >= mags[n - 1]) return s | static_cast<uint8_t>(n - 1);
  const int i = static_cast<int>(std::upper_bound(mags.begin(), mags.end(), ax) - mags.begin()) - 1;
  const double dlo = ax - mags[i], dhi = mags[i + 1] - ax;
  return s | static_cast<uint8_t>(dlo < dhi ? i : dhi < dlo ? i + 1 : ((i & 1) ? i + 1 : i));
}
uint8_t ref_e2m1(float x) { return ref_round(x, kE2m1, 0x8, 0x7); }
uint8_t ref_e4m3(float x) { return ref_round(x, kE4m3, 0x80, 0x7F); }
float ref_e4m3_value(uint8_t c) { return static_cast<float>(kE4m3[c & 0x7F]); }  // c < 0x7F here

float ref_half_to_float(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  float v = e == 31  ? (m ? kNaN : kInf)
            : e == 0 ? static_cast<float>(std::ldexp(m, -24))
                     : static_cast<float>(std::ldexp(1024 + m, e - 25));
  return (h & 0x8000) ? -v : v;
}
float ref_bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- an input matrix in a given dtype, with NaN garbage in the padding columns ------------------
struct Input {
  DType dtype;
  int64_t rows, cols, ld;
  std::vector<uint8_t> bytes;

  Input(DType t, int64_t m, int64_t k, int64_t pad, const std::vector<float>& v)
      : dtype(t), rows(m), cols(k), ld(k + pad) {
    const size_t es = t == DType::kF32 ? 4 : 2;
    bytes.assign(static_cast<size_t>(m * ld) * es, 0xFF);  // 0xFFFF.. is NaN in every dtype
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        uint8_t* p = bytes.data() + (i * ld + j) * es;
        const float f = v[i * k + j];
        if (t == DType::kF32) {
          std::memcpy(p, &f, 4);
        } else {  // input generation only: rounding here is not what is under test
          const uint16_t b = svdq::float_to_bits16(f, t);
          std::memcpy(p, &b, 2);
        }
      }
    }
  }
  svdq::ConstMatrixRef ref() const { return {bytes.data(), dtype, rows, cols, ld}; }
  float at(int64_t i, int64_t j) const {  // decoded by the reference's own code
    const uint8_t* p = bytes.data() + (i * ld + j) * (dtype == DType::kF32 ? 4 : 2);
    if (dtype == DType::kF32) {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    uint16_t b;
    std::memcpy(&b, p, 2);
    return dtype == DType::kF16 ? ref_half_to_float(b) : ref_bf16_to_float(b);
  }
};

// ---- the reference contract -------------------------------------------------------------------
struct RefOut {
  std::vector<uint8_t> codes;   // packed [M][K/2]
  std::vector<uint8_t> scales;  // int4: fp32 LE [M][K/64]; nvfp4: E4M3 [M][K/16]
  std::vector<bool> nan_group;  // [M][G]
};

RefOut reference(Format f, const Input& x, const float* inv_s, float t) {
  const int64_t M = x.rows, K = x.cols, gs = f == Format::kInt4 ? 64 : 16, G = K / gs;
  RefOut r;
  r.codes.assign(M * K / 2, 0);
  r.scales.assign(M * G * (f == Format::kInt4 ? 4 : 1), 0);
  r.nan_group.assign(M * G, false);
  std::vector<float> xh(gs);
  std::vector<uint8_t> q(gs);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t g = 0; g < G; ++g) {
      bool finite = true;
      float a = 0.0f;
      for (int64_t j = 0; j < gs; ++j) {
        const int64_t k = g * gs + j;
        xh[j] = inv_s ? x.at(m, k) * inv_s[k] : x.at(m, k);
        if (!std::isfinite(xh[j]))
          finite = false;
        else
          a = std::max(a, std::fabs(xh[j]));
      }
      std::fill(q.begin(), q.end(), 0);
      if (f == Format::kInt4) {
        float scale = 0.0f;
        if (!finite) {
          scale = kNaN;
          r.nan_group[m * G + g] = true;
        } else if (a != 0.0f) {
          scale = a / 7.0f;
          const float inv = 7.0f / a;
          for (int64_t j = 0; j < gs; ++j) {
            const float p = xh[j] * inv;
            const float v = std::min(7.0f, std::max(-7.0f, std::nearbyint(p)));
            q[j] = static_cast<uint8_t>(static_cast<int>(v) & 0xF);
          }
        }
        uint32_t u;
        std::memcpy(&u, &scale, 4);
        for (int b = 0; b < 4; ++b)
          r.scales[(m * G + g) * 4 + b] = static_cast<uint8_t>(u >> 8 * b);
      } else {
        uint8_t sb = 0;
        if (!finite) {
          sb = 0x7F;
          r.nan_group[m * G + g] = true;
        } else if (a != 0.0f) {
          const uint8_t e = ref_e4m3(a / 6.0f / t);
          const float d = ref_e4m3_value(e) * t;
          if (d != 0.0f) {
            sb = e;
            const float inv = 1.0f / d;
            for (int64_t j = 0; j < gs; ++j) q[j] = ref_e2m1(xh[j] * inv);
          }
        }
        r.scales[m * G + g] = sb;
      }
      for (int64_t j = 0; j < gs; j += 2) {
        r.codes[(m * K + g * gs + j) / 2] = static_cast<uint8_t>(q[j] | (q[j + 1] << 4));
      }
    }
  }
  return r;
}

// Runs svdq and compares with the reference byte for byte; reports the first few mismatches.
void run_and_compare(Format f, const Input& x, const float* inv_s, float t,
                     svdq::QuantizedActivations* reuse = nullptr) {
  svdq::QuantizedActivations local;
  svdq::QuantizedActivations* out = reuse ? reuse : &local;
  const svdq::Status st = svdq::quantize_activations(f, x.ref(), inv_s, t, out);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const RefOut r = reference(f, x, inv_s, t);
  const int64_t M = x.rows, K = x.cols, gs = svdq::group_size(f), G = K / gs;
  ASSERT_EQ(out->format, f);
  ASSERT_EQ(out->rows, M);
  ASSERT_EQ(out->cols, K);
  ASSERT_EQ(out->tensor_scale, f == Format::kNvfp4 ? t : 1.0f);
  ASSERT_EQ(out->groups_per_row(), G);
  ASSERT_EQ(out->codes.size(), r.codes.size());
  ASSERT_EQ(out->scales.size(), r.scales.size());
  int bad = 0;
  const int64_t sw = f == Format::kInt4 ? 4 : 1;
  for (int64_t m = 0; m < M && bad < 5; ++m) {
    for (int64_t g = 0; g < G && bad < 5; ++g) {
      const uint8_t* got = out->scales.data() + (m * G + g) * sw;
      const uint8_t* want = r.scales.data() + (m * G + g) * sw;
      bool same = std::equal(got, got + sw, want);
      if (f == Format::kInt4 && r.nan_group[m * G + g]) {  // the contract fixes 0x7FC00000
        uint32_t bits;
        std::memcpy(&bits, got, 4);
        same = bits == 0x7FC00000u;
      }
      std::ostringstream os;
      if (!same) {
        os << "scale bytes differ:";
        for (int b = 0; b < sw; ++b)
          os << std::hex << " got 0x" << +got[b] << "/want 0x" << +want[b];
      }
      for (int64_t j = 0; j < gs; ++j) {
        const int64_t k = g * gs + j;
        const uint8_t cg = svdq::packed_nibble(out->codes.data() + m * K / 2, k);
        const uint8_t cw = svdq::packed_nibble(r.codes.data() + m * K / 2, k);
        if (cg != cw) {
          same = false;
          os << " | k=" << k << " x=" << x.at(m, k) << " inv_s=" << (inv_s ? inv_s[k] : 1.0f)
             << std::hex << " code got 0x" << +cg << " want 0x" << +cw << std::dec;
        }
      }
      if (!same) {
        ++bad;
        ADD_FAILURE() << svdq::format_name(f) << " dtype " << svdq::dtype_name(x.dtype)
                      << " t=" << t << " M=" << M << " K=" << K << " row " << m << " group " << g
                      << ": " << os.str();
      }
      if (same && !r.nan_group[m * G + g]) {  // the typed accessors agree with the bytes
        float sv = ref_e4m3_value(*want);
        if (f == Format::kInt4) std::memcpy(&sv, want, 4);
        EXPECT_EQ(out->scale(m, g), sv);
      }
    }
  }
  EXPECT_EQ(out->codes, r.codes);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; k += 37) {
      const uint8_t c = svdq::packed_nibble(r.codes.data() + m * K / 2, k);
      const float want = f == Format::kInt4
                             ? static_cast<float>((c & 8) ? int(c) - 16 : int(c))
                             : static_cast<float>((c & 8) ? -kE2m1[c & 7] : kE2m1[c & 7]);
      EXPECT_EQ(out->code_value(m, k), want);
    }
  }
}

// Heavy-tailed activations: Student-t-like rows, a few outlier channels x20..100.
std::vector<float> heavy_rows(int64_t M, int64_t K, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.02f, 1.0f);
  std::vector<float> gain(K, 1.0f);
  for (int64_t k = 0; k < K; ++k) {
    if (rng() % 23 == 0) gain[k] = 20.0f + 80.0f * ud(rng);
  }
  std::vector<float> v(M * K);
  for (int64_t i = 0; i < M * K; ++i) v[i] = gain[i % K] * nd(rng) / std::sqrt(ud(rng));
  return v;
}
std::vector<float> random_inv_smooth(int64_t K, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> ud(-3.0f, 3.0f);
  std::vector<float> s(K);
  for (auto& x : s) x = 1.0f / std::exp(ud(rng));  // inv_s = 1.0f / s, as computed at load
  return s;
}

// ------------------------------------------------------------------------------------------------
TEST(Contract, RandomHeavyTailedAllDtypesRaggedM) {
  const int64_t K = 320;  // 5 int4 groups, 20 nvfp4 groups
  const auto inv = random_inv_smooth(K, 7);
  uint64_t seed = 100;
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (int64_t M : {1, 7, 44, 129}) {
        for (bool smooth : {false, true}) {
          for (float t : {1.0f, 0.37f}) {
            if (f == Format::kInt4 && t != 1.0f) continue;
            SCOPED_TRACE(testing::Message() << svdq::format_name(f) << " " << svdq::dtype_name(dt)
                                            << " M=" << M << " smooth=" << smooth << " t=" << t);
            const Input x(dt, M, K, M % 2 ? 24 : 0, heavy_rows(M, K, ++seed));
            run_and_compare(f, x, smooth ? inv.data() : nullptr, t);
          }
        }
      }
    }
  }
}

TEST(Contract, TensorScalesAndWideRows) {
  const int64_t K = 1024;
  const auto inv = random_inv_smooth(K, 9);
  for (float t : {1.0f, 0.37f, 1e-3f, 3.0f, 1.0f / 448.0f, 17.25f}) {
    const Input x(DType::kF32, 9, K, 0, heavy_rows(9, K, 55));
    run_and_compare(Format::kNvfp4, x, inv.data(), t);
    run_and_compare(Format::kNvfp4, x, nullptr, t);
  }
  const Input x(DType::kBF16, 5, K, 64, heavy_rows(5, K, 56));
  run_and_compare(Format::kInt4, x, inv.data(), 0.37f);  // t ignored for int4
}

// Fills a group with a named pattern.
std::vector<float> pattern(int which, int64_t gs, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> v(gs);
  for (auto& x : v) x = nd(rng);
  const float tie4[] = {0.5f, 1.5f,  2.5f,  3.5f,  4.5f,  5.5f,
                        6.5f, -0.5f, -1.5f, -2.5f, -3.5f, -6.5f};
  const float tief[] = {0.25f,  0.75f,  1.25f,  1.75f, 2.5f,  3.5f,  5.0f, -0.25f,
                        -0.75f, -1.25f, -1.75f, -2.5f, -3.5f, -5.0f, 0.5f};
  switch (which) {
    case 0:
      std::fill(v.begin(), v.end(), 0.0f);
      break;  // all zero
    case 1:
      v[gs / 3] = kNaN;
      break;  // a NaN
    case 2:
      v[gs - 1] = kInf;
      break;  // +Inf
    case 3:
      v[1] = -kInf;
      break;  // -Inf
    case 4:   // int4 ties: a = 7, inv = 1
      for (int64_t j = 0; j < gs; ++j) v[j] = tie4[j % 12];
      v[5] = -7.0f;
      break;
    case 5:  // e2m1 ties: a = 6, d = 1
      for (int64_t j = 0; j < gs; ++j) v[j] = tief[j % 15];
      v[gs - 2] = 6.0f;
      break;
    case 6:  // ties after scaling by 2
      for (int64_t j = 0; j < gs; ++j) v[j] = 2.0f * tief[j % 15];
      v[0] = -12.0f;
      break;
    case 7:  // a/6 = 2^-10: E4M3 -> 0
      for (auto& x : v) x *= 1e-4f;
      v[3] = 0.005859375f;
      break;
    case 8:
      for (auto& x : v) x *= 1e-4f;
      v[2] = 1e-3f;
      break;  // a/6 far below 2^-10
    case 9:   // just above: E4M3 0x01
      for (auto& x : v) x *= 1e-4f;
      v[7] = -std::nextafter(0.005859375f, 1.0f);
      break;
    case 10:
      for (auto& x : v) x = std::fmod(x, 6.375f);
      v[4] = 6.375f;
      break;  // E4M3 tie 1.0625
    case 11:
      v[0] = 3e38f;
      v[1] = -1e38f;
      break;  // huge
    case 12:  // float subnormals, no FTZ
      for (int64_t j = 0; j < gs; ++j) v[j] = (j % 3 - 1) * 1e-38f * (1 + j % 5) / 5.0f;
      v[gs / 2] = 4e-38f;
      break;
    case 13:
      for (auto& x : v) x = -std::fabs(x) * 1e-3f;
      v[0] = 2.0f;
      break;  // -> -0 codes
    default:
      break;  // plain random (control)
  }
  return v;
}

TEST(Contract, SpecialGroups) {
  constexpr int kPatterns = 15;
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    const int64_t gs = svdq::group_size(f);
    const int64_t G = 2 * kPatterns, K = G * gs, M = 3;
    std::mt19937_64 rng(77);
    std::vector<float> v(M * K);
    std::vector<int> which(M * G);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < G; ++g) {  // specials interleaved with control groups
        which[m * G + g] = (g % 2) ? 99 : static_cast<int>((g / 2 + m * 5) % kPatterns);
        const auto p = pattern(which[m * G + g], gs, rng);
        std::copy(p.begin(), p.end(), v.begin() + m * K + g * gs);
      }
    }
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (float t : {1.0f, 0.37f}) {
        SCOPED_TRACE(testing::Message()
                     << svdq::format_name(f) << " " << svdq::dtype_name(dt) << " t=" << t);
        const Input x(dt, M, K, 8, v);
        run_and_compare(f, x, nullptr, t);
        if (dt != DType::kF32 || t != 1.0f) continue;
        // Hand-checked expectations, independent of the reference above.
        svdq::QuantizedActivations q;
        ASSERT_TRUE(svdq::quantize_activations(f, x.ref(), nullptr, t, &q).ok());
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t g = 0; g < G; ++g) {
            const int w = which[m * G + g];
            const float s = q.scale(m, g);
            auto code = [&](int64_t j) {
              return svdq::packed_nibble(q.codes.data() + m * K / 2, g * gs + j);
            };
            if (w == 0 || (f == Format::kNvfp4 && (w == 7 || w == 8))) {
              EXPECT_EQ(s, 0.0f) << "pattern " << w;
              if (f == Format::kNvfp4) {
                EXPECT_EQ(q.scales[m * G + g], 0x00);
              }
              for (int64_t j = 0; j < gs; ++j) EXPECT_EQ(code(j), 0) << "pattern " << w;
            } else if (w >= 1 && w <= 3) {
              EXPECT_TRUE(std::isnan(s)) << "pattern " << w;
              if (f == Format::kNvfp4) {
                EXPECT_EQ(q.scales[m * G + g], 0x7F);
              }
              for (int64_t j = 0; j < gs; ++j) EXPECT_EQ(code(j), 0) << "pattern " << w;
            } else if (w == 4 && f == Format::kInt4) {
              EXPECT_EQ(s, 1.0f);
              const uint8_t want[12] = {0x0, 0x2, 0x2, 0x4, 0x4, 0x6, 0x6, 0x0, 0xE, 0xE, 0xC, 0xA};
              for (int64_t j = 0; j < gs; ++j) {
                EXPECT_EQ(code(j), j == 5 ? 0x9 : want[j % 12]) << "int4 tie j=" << j;
              }
            } else if ((w == 5 || w == 6) && f == Format::kNvfp4) {
              EXPECT_EQ(q.scales[m * G + g], w == 5 ? 0x38 : 0x40);  // 1.0 / 2.0
              const uint8_t want[15] = {0x0, 0x2, 0x2, 0x4, 0x4, 0x6, 0x6, 0x8,
                                        0xA, 0xA, 0xC, 0xC, 0xE, 0xE, 0x1};
              for (int64_t j = 0; j < gs; ++j) {
                const uint8_t e = (w == 5 && j == gs - 2) ? 0x7
                                  : (w == 6 && j == 0)    ? 0xF
                                                          : want[j % 15];
                EXPECT_EQ(code(j), e) << "e2m1 tie pattern " << w << " j=" << j;
              }
            } else if (w == 9 && f == Format::kNvfp4) {
              EXPECT_EQ(q.scales[m * G + g], 0x01);
            } else if (w == 10 && f == Format::kNvfp4) {
              EXPECT_EQ(q.scales[m * G + g], 0x38);  // 6.375/6 = 1.0625 ties to 1.0
              EXPECT_EQ(code(4), 0x7);
            } else if (w == 11 && f == Format::kNvfp4) {
              EXPECT_EQ(q.scales[m * G + g], 0x7E);
              EXPECT_EQ(code(0), 0x7);
              EXPECT_EQ(code(1), 0xF);
            } else if (w == 12 && f == Format::kInt4) {
              EXPECT_EQ(code(gs / 2), 0x7);
              EXPECT_EQ(code(14), 0x2) << "subnormal inputs were flushed to zero";
            }
          }
        }
      }
    }
  }
}

// Group maxima a within a few ulps of 6 * t * (E4M3 midpoint): the order a / 6.0f / t matters.
// Elements within a few ulps of (code midpoint) * scale: inv = 7.0f / a, 1.0f / d matter.
TEST(Contract, NearTiesStressTheOrderOfOperations) {
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    const int64_t gs = svdq::group_size(f);
    for (float t : {1.0f, 0.37f, 3.3f}) {
      std::vector<float> maxima;
      int order_sensitive = 0;
      if (f == Format::kNvfp4) {
        for (size_t i = 0; i + 1 < kE4m3.size(); i += 3) {
          float a = static_cast<float>(6.0 * t * 0.5 * (kE4m3[i] + kE4m3[i + 1]));
          for (int s = 0; s < 12; ++s) a = std::nextafter(a, 0.0f);
          for (int s = 0; s < 24; ++s, a = std::nextafter(a, kInf)) {
            if (ref_e4m3(a / 6.0f / t) != ref_e4m3(a / (6.0f * t))) ++order_sensitive;
            if (s % 3 == 0 || ref_e4m3(a / 6.0f / t) != ref_e4m3(a / (6.0f * t))) {
              maxima.push_back(a);
            }
          }
        }
        if (t != 1.0f) EXPECT_GT(order_sensitive, 0) << "no order-sensitive maxima at t=" << t;
      } else {
        for (float a = 0.013f; a < 5e4f; a *= 1.37f) maxima.push_back(a);
      }
      const int64_t M = static_cast<int64_t>(maxima.size()), K = 4 * gs;
      std::vector<float> v(M * K);
      for (int64_t m = 0; m < M; ++m) {
        const float a = maxima[m];
        // The reference's own scale step, to aim the elements at code midpoints.
        float inv;
        if (f == Format::kInt4) {
          inv = 7.0f / a;
        } else {
          const float d = ref_e4m3_value(ref_e4m3(a / 6.0f / t)) * t;
          inv = d == 0.0f ? 1.0f : 1.0f / d;
        }
        const std::vector<double> mids =
            f == Format::kInt4 ? std::vector<double>{0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5}
                               : std::vector<double>{0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0};
        for (int64_t g = 0; g < 4; ++g) {
          float* grp = v.data() + m * K + g * gs;
          grp[0] = (g & 1) ? -a : a;
          for (int64_t j = 1; j < gs; ++j) {
            float x = static_cast<float>(mids[(j + g) % mids.size()] / inv);
            for (int64_t s = (j + m + g) % 7; s > 0; --s) x = std::nextafter(x, 0.0f);
            for (int64_t s = (j * 3 + g) % 5; s > 0; --s) x = std::nextafter(x, kInf);
            grp[j] = std::min(std::fabs(x), a) * ((j % 3 == 1) ? -1.0f : 1.0f);
          }
        }
      }
      SCOPED_TRACE(testing::Message() << svdq::format_name(f) << " t=" << t);
      run_and_compare(f, Input(DType::kF32, M, K, 0, v), nullptr, t);
    }
  }
}

TEST(Contract, OutputIsReusedAcrossCalls) {
  svdq::QuantizedActivations out;
  const Input big(DType::kF32, 44, 512, 0, heavy_rows(44, 512, 3));
  const Input small(DType::kF16, 7, 128, 0, heavy_rows(7, 128, 4));
  run_and_compare(Format::kNvfp4, big, nullptr, 0.37f, &out);
  run_and_compare(Format::kInt4, small, nullptr, 1.0f, &out);
  run_and_compare(Format::kNvfp4, small, nullptr, 1.0f, &out);
}

#if SVDQ_HAVE_CUDA_HEADERS
TEST(Contract, ReferenceRoundingAgreesWithCuda) {
  // The reference's own E2M1/E4M3 rounding vs the CUDA toolkit's host conversions.
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4099) {
    float x;
    const uint32_t b = static_cast<uint32_t>(u);
    std::memcpy(&x, &b, 4);
    ASSERT_EQ(ref_e2m1(x), __nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest)) << x;
    ASSERT_EQ(ref_e4m3(x), __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)) << x;
  }
}
#endif

TEST(Contract, BadInputIsRejected) {
  std::vector<float> buf(4 * 128, 1.0f);
  svdq::QuantizedActivations out;
  auto q = [&](Format f, svdq::ConstMatrixRef x, float t, svdq::QuantizedActivations* o) {
    return svdq::quantize_activations(f, x, nullptr, t, o);
  };
  const svdq::ConstMatrixRef good(buf.data(), DType::kF32, 4, 128, 128);
  ASSERT_TRUE(q(Format::kInt4, good, 1.0f, &out).ok());
  ASSERT_TRUE(q(Format::kNvfp4, good, 1.0f, &out).ok());
  ASSERT_TRUE(q(Format::kInt4, good, 0.0f, &out).ok()) << "tensor_scale is ignored for int4";
  ASSERT_TRUE(q(Format::kInt4, good, kNaN, &out).ok()) << "tensor_scale is ignored for int4";
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    SCOPED_TRACE(svdq::format_name(f));
    const svdq::Status s0 = q(f, good, 1.0f, nullptr);
    EXPECT_FALSE(s0.ok());
    EXPECT_FALSE(s0.message().empty());
    EXPECT_FALSE(q(f, {nullptr, DType::kF32, 4, 128, 128}, 1.0f, &out).ok()) << "null data";
    EXPECT_FALSE(q(f, {buf.data(), DType::kF32, 4, 128, 100}, 1.0f, &out).ok()) << "ld < cols";
    EXPECT_FALSE(q(f, {buf.data(), DType::kF32, 4, 24, 24}, 1.0f, &out).ok()) << "K=24";
    EXPECT_FALSE(q(f, {buf.data(), DType::kF32, 4, 40, 40}, 1.0f, &out).ok()) << "K=40";
    EXPECT_FALSE(q(f, {buf.data(), DType::kF64, 2, 128, 128}, 1.0f, &out).ok()) << "f64 input";
    EXPECT_FALSE(q(f, {buf.data(), DType::kF32, -1, 128, 128}, 1.0f, &out).ok()) << "rows < 0";
  }
  EXPECT_FALSE(q(Format::kInt4, {buf.data(), DType::kF32, 4, 96, 96}, 1.0f, &out).ok());
  EXPECT_FALSE(q(Format::kInt4, {buf.data(), DType::kF32, 4, 32, 32}, 1.0f, &out).ok());
  EXPECT_TRUE(q(Format::kNvfp4, {buf.data(), DType::kF32, 4, 96, 96}, 1.0f, &out).ok());
  for (float t : {0.0f, -0.0f, -1.0f, -0.37f, kNaN, kInf, -kInf}) {
    EXPECT_FALSE(q(Format::kNvfp4, good, t, &out).ok()) << "tensor_scale " << t;
  }
}

}  // namespace
