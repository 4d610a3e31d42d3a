// The embedded default layers: deterministic, shaped and outlier-heavy as docs/synthetic.md says.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "svdq/synth.hpp"

namespace {

svdq::synth::LayerSpec small_spec(uint64_t seed) {
  svdq::synth::LayerSpec s;
  s.in_features = 512;
  s.out_features = 256;
  s.seed = seed;
  return s;
}

TEST(Synth, SameSeedSameBitsOtherSeedOtherBits) {
  auto a = svdq::synth::make_layer(small_spec(3));
  auto b = svdq::synth::make_layer(small_spec(3));
  auto c = svdq::synth::make_layer(small_spec(4));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->weight, b->weight);
  EXPECT_EQ(a->bias, b->bias);
  EXPECT_EQ(a->channel_scale, b->channel_scale);
  EXPECT_NE(a->weight, c->weight);
  EXPECT_EQ(svdq::synth::make_activations(*a, 9, 1), svdq::synth::make_activations(*b, 9, 1));
  EXPECT_NE(svdq::synth::make_activations(*a, 9, 1), svdq::synth::make_activations(*a, 9, 2));
}

TEST(Synth, ShapesAndOutliers) {
  const auto spec = small_spec(5);
  auto layer = svdq::synth::make_layer(spec);
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->weight.size(), 512u * 256u);
  EXPECT_EQ(layer->bias.size(), 256u);
  ASSERT_EQ(layer->act_outliers.size(), static_cast<size_t>(spec.act_outlier_channels));
  EXPECT_TRUE(std::is_sorted(layer->act_outliers.begin(), layer->act_outliers.end()));
  for (int64_t j : layer->act_outliers) EXPECT_GE(layer->channel_scale[j], 20.0f * 0.3f);

  // Outlier channels dominate the per-channel absmax of the activations.
  const int64_t m = 512;
  const auto x = svdq::synth::make_activations(*layer, m, 11);
  ASSERT_EQ(x.size(), static_cast<size_t>(m * spec.in_features));
  std::vector<float> amax(spec.in_features, 0.0f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < spec.in_features; ++j)
      amax[j] = std::max(amax[j], std::fabs(x[i * spec.in_features + j]));
  std::vector<float> sorted = amax;
  std::sort(sorted.begin(), sorted.end());
  const float median = sorted[sorted.size() / 2];
  for (int64_t j : layer->act_outliers) EXPECT_GT(amax[j], 5.0f * median) << "channel " << j;
  for (float v : x) ASSERT_TRUE(std::isfinite(v));
}

TEST(Synth, BadSpecIsAStatus) {
  auto spec = small_spec(1);
  spec.in_features = 0;
  EXPECT_EQ(svdq::synth::make_layer(spec).status().code(), svdq::StatusCode::kErrorShape);
  spec = small_spec(1);
  spec.act_outlier_channels = 100000;
  EXPECT_EQ(svdq::synth::make_layer(spec).status().code(), svdq::StatusCode::kErrorInvalidArgument);
  spec = small_spec(1);
  spec.spectrum_decay = 1.5;
  EXPECT_FALSE(svdq::synth::make_layer(spec).ok());
}

}  // namespace
