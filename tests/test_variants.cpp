// The Nunchaku-compatible layer variants (issue 11; docs/formats.md "Variants"): unsigned int4
// activations with a shift (QuantizedLinear::act_unsigned / act_shift) and nvfp4 per-channel
// weight scales (QuantizedLinear::wcscales). Checked against independent references: a float64
// re-derivation of the contract, the exhaustive 16 x 16 table of (unsigned activation code, int4
// weight code) products, CpuLinear bit for bit, and the checkpoint round trip and versioning.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/cpu_linear.hpp"
#include "svdq/formats.hpp"
#include "svdq/linear.hpp"
#include "svdq/testing.hpp"
#include "svdq/types.hpp"
#include "svdq/version.hpp"
#ifdef SVDQ_EMU
#include "emu/emu_linear.hpp"
#endif

namespace svdq {
namespace {

constexpr float kShift = 0.171875f;
// Budget of the float64 comparisons: only fp32 rounding of the accumulations differs.
constexpr double kFloat64Budget = 1e-5;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// A random layer with every field filled (codes uniform over all 16 nibbles).
QuantizedLinear random_layer(Format format, DType storage, int64_t n, int64_t k, int r, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> nib(0, 15);
  std::uniform_real_distribution<float> ex(-8.0f, -3.0f), sm(-1.0f, 1.0f);
  std::normal_distribution<float> g(0.0f, 1.0f);
  QuantizedLinear q;
  q.format = format;
  q.storage = storage;
  q.in_features = k;
  q.out_features = n;
  q.rank = r;
  q.group = group_size(format);
  q.qweight.resize(static_cast<size_t>(n * k / 2));
  for (auto& b : q.qweight) b = static_cast<uint8_t>(nib(rng) | nib(rng) << 4);
  const int64_t groups = k / q.group;
  if (format == Format::kInt4) {
    q.wscales.resize(static_cast<size_t>(n * groups * 2));
    for (int64_t i = 0; i < n * groups; ++i) {
      const uint16_t h = float_to_half_bits(std::exp2(ex(rng)));
      std::memcpy(q.wscales.data() + 2 * i, &h, 2);
    }
  } else {
    q.wscales.resize(static_cast<size_t>(n * groups));
    for (auto& b : q.wscales) b = encode_e4m3(std::exp2(ex(rng) + 5.0f));
    q.wtscale = 0.375f;
  }
  q.smooth.resize(static_cast<size_t>(k));
  for (auto& s : q.smooth) s = float_to_bits16(std::exp2(sm(rng)), storage);
  q.lora_down.resize(static_cast<size_t>(k * r));
  q.lora_up.resize(static_cast<size_t>(n * r));
  for (auto& v : q.lora_down) v = float_to_bits16(0.05f * g(rng), storage);
  for (auto& v : q.lora_up) v = float_to_bits16(0.05f * g(rng), storage);
  q.bias.resize(static_cast<size_t>(n));
  for (auto& v : q.bias) v = float_to_bits16(g(rng), storage);
  return q;
}

// GELU-like inputs: mostly >= -0.17, a few outlier channels, some exact -shift values.
std::vector<float> gelu_like(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m * k; ++i) {
    const float v = g(rng) * ((i % k) % 29 == 3 ? 20.0f : 1.0f);
    x[i] = 0.5f * v * (1.0f + std::erf(v / std::sqrt(2.0f)));  // GELU >= -0.17
    if (i % 97 == 5) x[i] = -kShift;                           // shifts to exactly 0
  }
  return x;
}

TEST(Variants, Uint4CodecAgainstFloat64Rounding) {
  // Dense sweep and every tie k + 0.5 against nearbyint in double (ties to even), clamped.
  for (int i = -4000; i <= 20000; ++i) {
    const float x = static_cast<float>(i) / 1000.0f;
    const double want = std::min(15.0, std::max(0.0, std::nearbyint(static_cast<double>(x))));
    ASSERT_EQ(encode_uint4(x), static_cast<uint8_t>(want)) << x;
  }
  for (int c = -1; c <= 16; ++c) {
    const float t = static_cast<float>(c) + 0.5f;
    const int even = (c % 2 == 0) ? c : c + 1;
    EXPECT_EQ(encode_uint4(t), static_cast<uint8_t>(std::min(15, std::max(0, even)))) << t;
  }
  EXPECT_EQ(encode_uint4(NAN), 0);
  EXPECT_EQ(encode_uint4(INFINITY), 15);
  EXPECT_EQ(encode_uint4(-INFINITY), 0);
}

TEST(Variants, UnsignedActivationsFollowTheContract) {
  const int64_t m = 9, k = 192;
  std::vector<float> x = gelu_like(m, k, 3);
  x[2 * k + 70] = NAN;  // row 2, group 1: NaN scale, zero codes
  for (int64_t j = 128; j < 192; ++j) x[4 * k + j] = -kShift;  // row 4, group 2: all zero
  std::vector<float> inv(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) inv[j] = 1.0f / std::exp2(static_cast<float>(j % 5) - 2.0f);
  QuantizedActivations qa;
  ASSERT_TRUE(quantize_activations_unsigned(MatrixView<const float>(x.data(), m, k), inv.data(),
                                            kShift, &qa).ok());
  EXPECT_TRUE(qa.unsigned_codes);
  EXPECT_EQ(qa.format, Format::kInt4);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t g = 0; g < k / 64; ++g) {
      SCOPED_TRACE(::testing::Message() << "row " << i << " group " << g);
      // The contract re-derived: fp32 add, fp32 multiply, then float64 for the rest.
      std::vector<float> xh(64);
      double a = 0;
      bool finite = true;
      for (int e = 0; e < 64; ++e) {
        const int64_t j = g * 64 + e;
        const float u = x[i * k + j] + kShift;
        xh[e] = u * inv[j];
        finite = finite && std::isfinite(xh[e]);
        a = std::max(a, std::fabs(static_cast<double>(xh[e])));
      }
      const float scale = qa.scale(i, g);
      if (!finite) {
        EXPECT_EQ(bits(scale), 0x7FC00000u);
        for (int e = 0; e < 64; ++e) EXPECT_EQ(qa.code_value(i, g * 64 + e), 0.0f);
        continue;
      }
      if (a == 0) {
        EXPECT_EQ(bits(scale), 0u);
        for (int e = 0; e < 64; ++e) EXPECT_EQ(qa.code_value(i, g * 64 + e), 0.0f);
        continue;
      }
      EXPECT_EQ(scale, static_cast<float>(a / 15.0));  // a / 15.0f is correctly rounded
      const float invq = static_cast<float>(15.0 / a);
      for (int e = 0; e < 64; ++e) {
        const double v = static_cast<double>(xh[e] * invq);
        const double want = std::min(15.0, std::max(0.0, std::nearbyint(v)));
        EXPECT_EQ(qa.code_value(i, g * 64 + e), want) << e;
      }
    }
  EXPECT_FALSE(quantize_activations_unsigned(MatrixView<const float>(x.data(), m, k), inv.data(),
                                             INFINITY, &qa).ok());
}

// All 16 unsigned activation codes against all 16 int4 weight codes: one group, unit scales, so
// y[m, n] must be exactly (15 + 63 * m) * w_n.
TEST(Variants, ExhaustiveUnsignedTimesInt4Codes) {
  const int64_t k = 64, n = 16, m = 16;
  QuantizedLinear q;
  q.format = Format::kInt4;
  q.storage = DType::kF16;
  q.in_features = k;
  q.out_features = n;
  q.rank = 0;
  q.act_unsigned = true;
  q.act_shift = kShift;
  q.smooth.assign(k, float_to_half_bits(1.0f));
  q.qweight.resize(n * k / 2);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k / 2; ++j) q.qweight[i * k / 2 + j] = static_cast<uint8_t>(i | i << 4);
  q.wscales.resize(n * 2);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t one = float_to_half_bits(1.0f);
    std::memcpy(q.wscales.data() + 2 * i, &one, 2);
  }
  ASSERT_TRUE(validate(q).ok());
  // Row r: element 0 = 15 (so the group scale is 1), the others r; x = code - shift exactly.
  std::vector<float> x(m * k);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < k; ++j) x[r * k + j] = static_cast<float>(j == 0 ? 15 : r) - kShift;
  std::vector<float> y(m * n), y2(m * n);
  QuantizedActivations qa;
  ASSERT_TRUE(test_support::reference_forward_with_activations(
                  q, MatrixView<const float>(x.data(), m, k), MatrixView<float>(y.data(), m, n), &qa)
                  .ok());
  for (int64_t r = 0; r < m; ++r) {
    EXPECT_EQ(qa.scale(r, 0), 1.0f);
    for (int64_t j = 1; j < k; ++j) ASSERT_EQ(qa.code_value(r, j), static_cast<float>(r));
    for (int64_t i = 0; i < n; ++i) {
      const int w = i < 8 ? static_cast<int>(i) : static_cast<int>(i) - 16;  // two's complement
      EXPECT_EQ(y[r * n + i], static_cast<float>((15 + 63 * r) * w)) << r << " " << i;
    }
  }
  auto cl = CpuLinear::create(q);
  ASSERT_TRUE(cl.ok());
  std::vector<unsigned char> ws(cl->workspace_size(m) + 64);
  void* p = ws.data() + (64 - reinterpret_cast<uintptr_t>(ws.data()) % 64) % 64;
  ASSERT_TRUE(cl->forward(MatrixView<const float>(x.data(), m, k), MatrixView<float>(y2.data(), m, n),
                          m, p, cl->workspace_size(m), 1)
                  .ok());
  EXPECT_EQ(y, y2);
}

// y in float64 from the layer's fields and the (contract-checked) quantized activations.
std::vector<double> float64_forward(const QuantizedLinear& q, const std::vector<float>& x, int64_t m,
                                    const QuantizedActivations& qa) {
  const int64_t n = q.out_features, k = q.in_features, r = q.rank, gs = q.group;
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    std::vector<double> lora(static_cast<size_t>(r), 0.0);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t t = 0; t < r; ++t)
        lora[t] += static_cast<double>(x[i * k + j]) * bits16_to_float(q.lora_down[j * r + t], q.storage);
    for (int64_t c = 0; c < n; ++c) {
      double acc = 0;
      for (int64_t g = 0; g < k / gs; ++g) {
        double p = 0;
        for (int64_t e = 0; e < gs; ++e) {
          const int64_t j = g * gs + e;
          p += static_cast<double>(qa.code_value(i, j)) *
               decode_code(q.format, packed_nibble(q.qweight.data() + c * (k / 2), j));
        }
        acc += p * qa.scale(i, g) * q.wscale(c, g);
      }
      if (q.format == Format::kNvfp4) acc *= static_cast<double>(q.act_tensor_scale) * q.wtscale;
      if (!q.wcscales.empty()) acc *= bits16_to_float(q.wcscales[c], q.storage);
      double b = q.bias.empty() ? 0.0 : bits16_to_float(q.bias[c], q.storage);
      for (int64_t t = 0; t < r; ++t) b += lora[t] * bits16_to_float(q.lora_up[c * r + t], q.storage);
      y[i * n + c] = acc + b;
    }
  }
  return y;
}

double rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

void check_forward(const QuantizedLinear& q, uint32_t seed) {
  const int64_t m = 13, n = q.out_features, k = q.in_features;
  std::vector<float> x = gelu_like(m, k, seed);
  std::vector<float> y(m * n), y1(m * n), y2(m * n);
  QuantizedActivations qa;
  ASSERT_TRUE(test_support::reference_forward_with_activations(
                  q, MatrixView<const float>(x.data(), m, k), MatrixView<float>(y.data(), m, n), &qa)
                  .ok());
  EXPECT_EQ(qa.unsigned_codes, q.act_unsigned);
  const double e = rel_err(y, float64_forward(q, x, m, qa));
  EXPECT_LT(e, kFloat64Budget);
  auto cl = CpuLinear::create(q);
  ASSERT_TRUE(cl.ok()) << cl.status().to_string();
  std::vector<unsigned char> ws(cl->workspace_size(m) + 64);
  void* p = ws.data() + (64 - reinterpret_cast<uintptr_t>(ws.data()) % 64) % 64;
  for (int threads : {1, 2}) {
    std::vector<float>& out = threads == 1 ? y1 : y2;
    ASSERT_TRUE(cl->forward(MatrixView<const float>(x.data(), m, k), MatrixView<float>(out.data(), m, n),
                            m, p, cl->workspace_size(m), threads)
                    .ok());
    EXPECT_EQ(0, std::memcmp(out.data(), y.data(), y.size() * 4)) << "CpuLinear, threads " << threads;
  }
}

TEST(Variants, UnsignedForwardAgainstFloat64AndCpuLinear) {
  for (DType st : {DType::kF16, DType::kBF16}) {
    QuantizedLinear q = random_layer(Format::kInt4, st, 70, 192, 16, 11);
    q.act_unsigned = true;
    q.act_shift = kShift;
    check_forward(q, 5);
    // The activation codes really are unsigned: the same layer signed quantizes differently.
    QuantizedLinear s = q;
    s.act_unsigned = false;
    s.act_shift = 0;
    std::vector<float> x = gelu_like(4, 192, 5), ya(4 * 70), yb(4 * 70);
    ASSERT_TRUE(reference_forward(q, MatrixView<const float>(x.data(), 4, 192), MatrixView<float>(ya.data(), 4, 70)).ok());
    ASSERT_TRUE(reference_forward(s, MatrixView<const float>(x.data(), 4, 192), MatrixView<float>(yb.data(), 4, 70)).ok());
    EXPECT_NE(ya, yb);
  }
}

TEST(Variants, WcscalesForwardAgainstFloat64AndOrder) {
  QuantizedLinear q = random_layer(Format::kNvfp4, DType::kBF16, 80, 128, 16, 21);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(0.25f, 3.0f);
  q.wcscales.resize(80);
  for (auto& c : q.wcscales) c = float_to_bf16_bits(u(rng));
  q.wcscales[7] = 0;  // a zero channel scale is allowed (>= 0)
  check_forward(q, 9);
  // The exact order: main path (acc * (t_act * t_w)) * c_n, before the branch and bias. With
  // rank 0 and no bias, y equals that product of the layer without wcscales (plus +0), exactly.
  QuantizedLinear p = q;
  p.rank = 0;
  p.lora_down.clear();
  p.lora_up.clear();
  p.bias.clear();
  QuantizedLinear plain = p;
  plain.wcscales.clear();
  const int64_t m = 5;
  std::vector<float> x = gelu_like(m, 128, 2), yw(m * 80), y0(m * 80);
  ASSERT_TRUE(reference_forward(p, MatrixView<const float>(x.data(), m, 128), MatrixView<float>(yw.data(), m, 80)).ok());
  ASSERT_TRUE(reference_forward(plain, MatrixView<const float>(x.data(), m, 128), MatrixView<float>(y0.data(), m, 80)).ok());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < 80; ++c)
      ASSERT_EQ(bits(yw[i * 80 + c]),  // + the (zero) branch and bias: -0 becomes +0
                bits((y0[i * 80 + c] * bf16_bits_to_float(q.wcscales[c]) + 0.0f) + 0.0f))
          << i << " " << c;
}

// to_unsigned_activations keeps the layer's unquantized-activation output (float64) up to the
// rounding of the new bias, and with GELU-like inputs the unsigned codes quantize more finely.
TEST(Variants, ToUnsignedActivationsFoldsTheShiftIntoTheBias) {
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    QuantizedLinear q = random_layer(Format::kInt4, DType::kBF16, 48, 192, 16, 51);
    if (!with_bias) q.bias.clear();
    auto u = to_unsigned_activations(q, kShift);
    ASSERT_TRUE(u.ok()) << u.status().to_string();
    EXPECT_TRUE(u->act_unsigned);
    EXPECT_EQ(u->act_shift, kShift);
    EXPECT_EQ(u->qweight, q.qweight);
    EXPECT_EQ(u->lora_down, q.lora_down);
    ASSERT_EQ(u->bias.size(), 48u);
    const int64_t m = 6, n = 48, k = 192;
    std::vector<float> x = gelu_like(m, k, 8);
    // Unquantized activations, float64: sum_k (x_k [+ shift]) / s_k * Wq[n,k] + bias.
    auto exact = [&](const QuantizedLinear& l, int64_t i, int64_t c) {
      double acc = 0;
      for (int64_t j = 0; j < k; ++j)
        acc += (static_cast<double>(x[i * k + j]) + l.act_shift) / bf16_bits_to_float(l.smooth[j]) *
               decode_int4(packed_nibble(l.qweight.data() + c * (k / 2), j)) * l.wscale(c, j / 64);
      return acc + (l.bias.empty() ? 0.0 : bf16_bits_to_float(l.bias[c]));
    };
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c) {
        const double b = bf16_bits_to_float(u->bias[c]);
        const double ulp = std::ldexp(1.0, std::ilogb(b) - 7);  // bf16: 8 significant bits
        EXPECT_NEAR(exact(*u, i, c), exact(q, i, c), 0.5 * ulp + 1e-9) << i << " " << c;
      }
    // W4A4 against float64 (branch and bias included on both sides): unsigned vs signed codes.
    std::vector<float> yq(m * n), yu(m * n);
    ASSERT_TRUE(reference_forward(q, MatrixView<const float>(x.data(), m, k), MatrixView<float>(yq.data(), m, n)).ok());
    ASSERT_TRUE(reference_forward(*u, MatrixView<const float>(x.data(), m, k), MatrixView<float>(yu.data(), m, n)).ok());
    QuantizedActivations qa;
    ASSERT_TRUE(test_support::reference_forward_with_activations(
                    q, MatrixView<const float>(x.data(), m, k), MatrixView<float>(yq.data(), m, n), &qa).ok());
    std::vector<double> ref(m * n);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c) {
        double br = 0;
        for (int t = 0; t < q.rank; ++t) {
          double l = 0;
          for (int64_t j = 0; j < k; ++j) l += static_cast<double>(x[i * k + j]) * bf16_bits_to_float(q.lora_down[j * q.rank + t]);
          br += l * bf16_bits_to_float(q.lora_up[c * q.rank + t]);
        }
        ref[i * n + c] = exact(q, i, c) + br;
      }
    const double eq = rel_err(yq, ref), eu = rel_err(yu, ref);
    std::printf("[ unsigned ] W4A4 error vs float64: signed %.3e, unsigned %.3e\n", eq, eu);
    EXPECT_LT(eu, eq);
  }
  QuantizedLinear f = random_layer(Format::kNvfp4, DType::kF16, 16, 64, 0, 1);
  EXPECT_FALSE(to_unsigned_activations(f, kShift).ok());
  QuantizedLinear i4 = random_layer(Format::kInt4, DType::kF16, 16, 64, 0, 1);
  EXPECT_FALSE(to_unsigned_activations(i4, 0.0f).ok());
  EXPECT_FALSE(to_unsigned_activations(i4, NAN).ok());
  auto once = to_unsigned_activations(i4, kShift);
  ASSERT_TRUE(once.ok());
  EXPECT_FALSE(to_unsigned_activations(*once, kShift).ok());
}

TEST(Variants, ValidateRules) {
  const QuantizedLinear i4 = random_layer(Format::kInt4, DType::kF16, 16, 64, 0, 1);
  const QuantizedLinear f4 = random_layer(Format::kNvfp4, DType::kF16, 16, 64, 0, 1);
  struct Bad {
    const char* what;
    QuantizedLinear q;
    StatusCode code;
    const char* needle;
  };
  std::vector<Bad> bads;
  auto add = [&](const char* what, QuantizedLinear q, StatusCode code, const char* needle) {
    bads.push_back({what, std::move(q), code, needle});
  };
  QuantizedLinear q = f4;
  q.act_unsigned = true;
  add("unsigned nvfp4", q, StatusCode::kErrorInvalidArgument, "act_unsigned");
  q = i4;
  q.act_shift = 0.5f;
  add("shift without unsigned", q, StatusCode::kErrorInvalidArgument, "act_shift");
  q.act_unsigned = true;
  q.act_shift = NAN;
  add("NaN shift", q, StatusCode::kErrorNonFinite, "act_shift");
  q = i4;
  q.wcscales.assign(16, float_to_half_bits(1.0f));
  add("wcscales on int4", q, StatusCode::kErrorInvalidArgument, "wcscales");
  q = f4;
  q.wcscales.assign(15, float_to_half_bits(1.0f));
  add("wcscales size", q, StatusCode::kErrorShape, "wcscales");
  q.wcscales.assign(16, float_to_half_bits(1.0f));
  q.wcscales[3] = float_to_half_bits(NAN);
  add("NaN wcscales", q, StatusCode::kErrorNonFinite, "wcscales[3]");
  q.wcscales[3] = float_to_half_bits(-1.0f);
  add("negative wcscales", q, StatusCode::kErrorInvalidArgument, "wcscales[3]");
  for (const Bad& b : bads) {
    SCOPED_TRACE(b.what);
    const Status s = validate(b.q);
    EXPECT_EQ(s.code(), b.code) << s.message();
    EXPECT_NE(s.message().find(b.needle), std::string::npos) << s.message();
    EXPECT_FALSE(CpuLinear::create(b.q).ok());
  }
  q = i4;
  q.act_unsigned = true;  // shift 0 is allowed
  EXPECT_TRUE(validate(q).ok());
}

std::string layer_meta(const SafetensorsFile& f, const std::string& layer) {
  return f.metadata().at("svdq.layer." + layer);
}

// Rewrites one layer's metadata (and optionally drops a tensor) of a serialized checkpoint.
Result<SafetensorsFile> rewrite(const SafetensorsFile& f, const std::string& layer,
                                const std::string& from, const std::string& to) {
  SafetensorsWriter w;
  for (const auto& name : f.names()) {
    auto info = f.info(name);
    EXPECT_TRUE(w.add(name, info->dtype, info->shape, info->data).ok());
  }
  for (const auto& [k, v] : f.metadata()) {
    std::string s = v;
    if (k == "svdq.layer." + layer) {
      const size_t at = s.find(from);
      EXPECT_NE(at, std::string::npos) << s;
      s.replace(at, from.size(), to);
    }
    EXPECT_TRUE(w.set_metadata(k, s).ok());
  }
  auto b = w.serialize();
  if (!b.ok()) return b.status();
  return SafetensorsFile::from_bytes(std::move(*b));
}

TEST(Variants, CheckpointRoundTripAndVersion) {
  QuantizedLinear u = random_layer(Format::kInt4, DType::kBF16, 40, 128, 16, 31);
  u.act_unsigned = true;
  u.act_shift = kShift;
  QuantizedLinear c = random_layer(Format::kNvfp4, DType::kF16, 40, 64, 16, 32);
  c.wcscales.resize(40);
  for (int i = 0; i < 40; ++i) c.wcscales[i] = float_to_half_bits(0.5f + 0.03125f * i);
  const QuantizedLinear plain = random_layer(Format::kInt4, DType::kBF16, 40, 64, 16, 33);
  SafetensorsWriter w;
  ASSERT_TRUE(add_quantized(w, "u", u).ok());
  ASSERT_TRUE(add_quantized(w, "c", c).ok());
  ASSERT_TRUE(add_quantized(w, "p", plain).ok());
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes.ok());
  auto f = SafetensorsFile::from_bytes(std::move(*bytes));
  ASSERT_TRUE(f.ok());
  // The variants are written as format 2.0, which a 1.x reader refuses (kErrorNotSupported,
  // "newer than this svdq reads"); a plain layer stays 1.0, readable by older svdq.
  EXPECT_NE(layer_meta(*f, "u").find("\"format_version\":\"2.0\""), std::string::npos);
  EXPECT_NE(layer_meta(*f, "c").find("\"format_version\":\"2.0\""), std::string::npos);
  EXPECT_NE(layer_meta(*f, "p").find("\"format_version\":\"1.0\""), std::string::npos);
  EXPECT_EQ(layer_meta(*f, "p").find("act_"), std::string::npos);
  EXPECT_TRUE(f->contains("c.wcscales"));
  const std::pair<const char*, const QuantizedLinear*> layers[] = {{"u", &u}, {"c", &c}, {"p", &plain}};
  for (const auto& [name, want] : layers) {
    SCOPED_TRACE(name);
    auto back = load_quantized(*f, name);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->act_unsigned, want->act_unsigned);
    EXPECT_EQ(bits(back->act_shift), bits(want->act_shift));
    EXPECT_EQ(back->wcscales, want->wcscales);
    EXPECT_EQ(back->qweight, want->qweight);
    EXPECT_EQ(back->bias, want->bias);
  }
  // A file that claims 1.0 but carries a 2.0 feature is refused, naming the rule.
  auto g = rewrite(*f, "u", "\"format_version\":\"2.0\"", "\"format_version\":\"1.0\"");
  ASSERT_TRUE(g.ok());
  auto r = load_quantized(*g, "u");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("format_version 2.0"), std::string::npos) << r.status().message();
  g = rewrite(*f, "c", "\"format_version\":\"2.0\"", "\"format_version\":\"1.0\"");
  ASSERT_TRUE(g.ok());
  r = load_quantized(*g, "c");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("c.wcscales"), std::string::npos) << r.status().message();
  // A reader of the next major version's files is what this one is to 1.x readers.
  g = rewrite(*f, "u", "\"format_version\":\"2.0\"",
              "\"format_version\":\"" + std::to_string(SVDQ_CHECKPOINT_FORMAT_MAJOR + 1) + ".0\"");
  ASSERT_TRUE(g.ok());
  r = load_quantized(*g, "u");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kErrorNotSupported);
  // act_shift must be an fp32 value.
  g = rewrite(*f, "u", "\"act_shift\":0.171875", "\"act_shift\":0.1");
  ASSERT_TRUE(g.ok());
  EXPECT_FALSE(load_quantized(*g, "u").ok());
}

#ifdef SVDQ_EMU
// The GPU layer runs both variants (tests/test_gpu.cpp's "Nunchaku variants" block checks the
// results); here only that the emulated GpuLinear accepts them on every path.
TEST(Variants, GpuLayerAcceptsTheVariants) {
  QuantizedLinear u = random_layer(Format::kInt4, DType::kBF16, 64, 128, 16, 41);
  u.act_unsigned = true;
  u.act_shift = kShift;
  QuantizedLinear c = random_layer(Format::kNvfp4, DType::kBF16, 64, 128, 16, 42);
  c.wcscales.assign(64, float_to_bf16_bits(2.0f));
  for (const QuantizedLinear* q : {&u, &c})
    for (int sm : {0, 80, 90}) {
      auto g = emu::EmuLinear::create(*q, DType::kBF16, 0, sm);
      ASSERT_TRUE(g.ok()) << g.status().to_string();
      EXPECT_TRUE(g->can_implement(16, DType::kBF16).ok());
    }
  QuantizedLinear plain = u;
  plain.act_unsigned = false;
  plain.act_shift = 0;
  EXPECT_TRUE(emu::EmuLinear::create(plain, DType::kBF16, 0, 90).ok());
}
#endif

}  // namespace
}  // namespace svdq
