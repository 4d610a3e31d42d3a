// The GPU kernels' codecs and per-group contract (cuda/codecs.cuh, __host__ __device__) compiled
// for the host and checked against the CPU reference byte for byte. What the GPU must add on top
// (the cross-thread max, the memory layout) is checked by the gpu-labelled tests on a device.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>

#include "../cuda/codecs.cuh"
#include "svdq/formats.hpp"

namespace {

std::vector<float> sweep() {
  std::vector<float> v;
  for (uint32_t u = 0; u < 0xFFFFFFFFu - 4093; u += 4093) {  // every 4093rd bit pattern
    float f;
    std::memcpy(&f, &u, 4);
    v.push_back(f);
  }
  for (float f = -700.0f; f <= 700.0f; f += 0.0078125f) v.push_back(f);  // dense, all ties
  for (float f : {0.0f, -0.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 448.0f, 464.0f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min()})
    v.push_back(f);
  return v;
}

TEST(DeviceCodecs, ElementCodecsEqualTheCpuReference) {
  for (float f : sweep()) {
    ASSERT_EQ(svdq::cuda::encode_e2m1(f), svdq::encode_e2m1(f)) << f;
    ASSERT_EQ(svdq::cuda::encode_e4m3(f), svdq::encode_e4m3(f)) << f;
    ASSERT_EQ(svdq::cuda::encode_int4(f), svdq::encode_int4(f)) << f;
    ASSERT_EQ(svdq::cuda::encode_uint4(f), svdq::encode_uint4(f)) << f;
  }
  for (int c = 0; c < 256; ++c) {
    const float a = svdq::cuda::decode_e4m3(static_cast<uint8_t>(c)), b = svdq::decode_e4m3(static_cast<uint8_t>(c));
    ASSERT_TRUE((std::isnan(a) && std::isnan(b)) || a == b) << c;
  }
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(svdq::cuda::e2m1_twice(static_cast<uint8_t>(c)), static_cast<int>(2 * svdq::decode_e2m1(static_cast<uint8_t>(c))));
    EXPECT_EQ(svdq::cuda::int4_value(static_cast<uint8_t>(c)), svdq::decode_int4(static_cast<uint8_t>(c)));
  }
}

// Rows through cuda::quantize_group (with a and the finiteness flag reduced as a kernel does)
// against svdq::quantize_activations: codes and scale bytes equal.
void check_rows(svdq::Format f, const std::vector<float>& x, int64_t m, int64_t k,
                const std::vector<float>& inv_s, float t) {
  svdq::QuantizedActivations ref;
  ASSERT_TRUE(svdq::quantize_activations(f, svdq::MatrixView<const float>(x.data(), m, k),
                                         inv_s.data(), t, &ref).ok());
  const int gs = svdq::group_size(f), sb = f == svdq::Format::kInt4 ? 4 : 1;
  std::vector<uint8_t> codes(static_cast<size_t>(gs));
  uint8_t scale[4];
  float xh[64];
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g = 0; g < k / gs; ++g) {
      float a = 0;
      bool finite = true;
      for (int i = 0; i < gs; ++i) {
        xh[i] = x[r * k + g * gs + i] * inv_s[g * gs + i];
        finite &= svdq::cuda::is_finite(xh[i]);
        a = std::fmax(a, std::fabs(xh[i]));
      }
      svdq::cuda::quantize_group(f == svdq::Format::kInt4 ? 0 : 1, xh, gs, a, finite, t,
                                 codes.data(), scale);
      ASSERT_EQ(0, std::memcmp(scale, ref.scales.data() + (r * (k / gs) + g) * sb, sb))
          << "row " << r << " group " << g;
      for (int i = 0; i < gs; ++i)
        ASSERT_EQ(codes[i], svdq::packed_nibble(ref.codes.data() + r * (k / 2), g * gs + i))
            << "row " << r << " k " << g * gs + i;
    }
}

TEST(DeviceCodecs, GroupContractEqualsTheCpuReference) {
  const int64_t m = 64, k = 512;
  std::mt19937 rng(5);
  std::student_t_distribution<float> t4(4.0f);
  std::vector<float> x(static_cast<size_t>(m * k)), inv_s(static_cast<size_t>(k));
  for (auto& v : x) v = t4(rng);
  for (int64_t j = 0; j < k; ++j) inv_s[j] = 1.0f / (0.5f + static_cast<float>(j % 7));
  for (int64_t j = 0; j < k; j += 97) x[j] *= 80.0f;              // outliers
  for (int64_t j = 64; j < 128; ++j) x[1 * k + j] = 0.0f;          // a zero group
  x[2 * k + 5] = std::numeric_limits<float>::quiet_NaN();          // non-finite groups
  x[3 * k + 300] = std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < 16; ++j) x[4 * k + j] = 1e-40f;          // tiny: zero group for nvfp4
  for (svdq::Format f : {svdq::Format::kInt4, svdq::Format::kNvfp4})
    for (float t : {1.0f, 0.37f, 1e-3f}) check_rows(f, x, m, k, inv_s, t);
  // The unsigned variant (kind 2, docs/formats.md §6.1): (x + shift) * inv_s, shift first, one fp32
  // add, as kernel 1 does it; against quantize_activations_unsigned. GELU-like rows (>= -0.17) and
  // the raw rows above (values below -shift clamp to 0), zero / NaN / Inf groups included.
  std::vector<float> gx(x.size());
  for (size_t i = 0; i < x.size(); ++i) gx[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] / std::sqrt(2.0f)));
  for (const std::vector<float>* rows : {&x, &gx})
    for (float shift : {0.171875f, 0.0f, 3.5f}) {
      svdq::QuantizedActivations ref;
      ASSERT_TRUE(svdq::quantize_activations_unsigned(svdq::MatrixView<const float>(rows->data(), m, k), inv_s.data(),
                                                      shift, &ref).ok());
      uint8_t codes[64], scale[4];
      float xh[64];
      for (int64_t r = 0; r < m; ++r)
        for (int64_t g = 0; g < k / 64; ++g) {
          float a = 0;
          bool finite = true;
          for (int i = 0; i < 64; ++i) {
            const float u = (*rows)[r * k + g * 64 + i] + shift;
            xh[i] = u * inv_s[g * 64 + i];
            finite &= svdq::cuda::is_finite(xh[i]);
            a = std::fmax(a, std::fabs(xh[i]));
          }
          svdq::cuda::quantize_group(2, xh, 64, a, finite, 1.0f, codes, scale);
          ASSERT_EQ(0, std::memcmp(scale, ref.scales.data() + (r * (k / 64) + g) * 4, 4)) << "row " << r << " group " << g;
          for (int i = 0; i < 64; ++i)
            ASSERT_EQ(codes[i], svdq::packed_nibble(ref.codes.data() + r * (k / 2), g * 64 + i)) << "row " << r;
        }
    }
}

}  // namespace
