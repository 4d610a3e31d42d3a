// Deterministic DiT-like layers (docs/synthetic.md describes the same draw in words).
#include "svdq/synth.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "check.hpp"
#include "core.hpp"
#include "random.hpp"

namespace svdq::synth {

namespace {

// Independent streams of one seed, so that changing one part's size never shifts another's draw.
enum Stream : uint64_t {
  kLeft = 1,
  kRight,
  kNoise,
  kWeightCols,
  kBias,
  kChannelScale,
  kActOutliers,
  kLoadings,
  kTokens,
};

constexpr int kTokenLatent = 8;        // rank of the shared token component
constexpr double kSpectrumScale = 0.5;  // sigma_0 = 0.5 * sqrt(min(N, K)) * noise
constexpr double kWeightOutlierGain = 8.0;

// k distinct indices out of [0, n), ascending (partial Fisher-Yates).
std::vector<int64_t> pick(detail::Rng& rng, int64_t n, int count) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  for (int i = 0; i < count; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(n - i));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(static_cast<size_t>(count));
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace

namespace {

Result<Layer> make_layer_impl(const LayerSpec& spec) {
  constexpr const char* kFn = "synth::make_layer";
  const int64_t n = spec.out_features, k = spec.in_features;
  if (n <= 0 || k <= 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": in_features (", k,
                         ") and out_features (", n, ") must be > 0");
  if (spec.spectrum_rank < 0 || spec.weight_outlier_columns < 0 || spec.act_outlier_channels < 0 ||
      spec.weight_outlier_columns > k || spec.act_outlier_channels > k)
    return detail::error(StatusCode::kErrorInvalidArgument, kFn,
                         ": spectrum_rank, weight_outlier_columns and act_outlier_channels must be "
                         "in [0, in_features]");
  if (!(spec.spectrum_decay > 0 && spec.spectrum_decay <= 1) || !(spec.noise >= 0))
    return detail::error(StatusCode::kErrorInvalidArgument, kFn,
                         ": spectrum_decay must be in (0, 1] and noise >= 0");

  Layer layer;
  layer.spec = spec;
  const int q = spec.spectrum_rank;
  const double inv_sqrt_k = 1.0 / std::sqrt(static_cast<double>(k));

  // Structured part: left (N, q) and right (q, K) Gaussian factors scaled to unit-norm columns
  // (in expectation), times a geometric spectrum sigma_i = sigma_0 * decay^i.
  detail::MatrixRM left(n, q), right(q, k);
  {
    detail::Rng rl(spec.seed, kLeft), rr(spec.seed, kRight);
    const double sigma0 = kSpectrumScale * std::sqrt(static_cast<double>(std::min(n, k))) * spec.noise;
    const double inv_sqrt_n = 1.0 / std::sqrt(static_cast<double>(n));
    for (int64_t i = 0; i < n; ++i)
      for (int c = 0; c < q; ++c)
        left(i, c) = static_cast<float>(rl.normal() * inv_sqrt_n * sigma0 * std::pow(spec.spectrum_decay, c));
    for (int c = 0; c < q; ++c)
      for (int64_t j = 0; j < k; ++j) right(c, j) = static_cast<float>(rr.normal() * inv_sqrt_k);
  }
  detail::MatrixRM w = left * right;  // (N, K)

  // Full-rank Gaussian part with std noise / sqrt(K), row by row from one stream.
  {
    detail::Rng rn(spec.seed, kNoise);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j)
        w(i, j) += static_cast<float>(rn.normal() * spec.noise * inv_sqrt_k);
  }
  // A few input-channel columns of W are large.
  {
    detail::Rng rc(spec.seed, kWeightCols);
    for (int64_t j : pick(rc, k, spec.weight_outlier_columns))
      w.col(j) *= static_cast<float>(kWeightOutlierGain);
  }
  layer.weight.assign(w.data(), w.data() + w.size());

  detail::Rng rb(spec.seed, kBias);
  layer.bias.resize(static_cast<size_t>(n));
  for (auto& b : layer.bias) b = static_cast<float>(0.1 * rb.normal());

  // Activation model: per-channel log-normal scale, outlier channels x20 .. x100.
  detail::Rng rs(spec.seed, kChannelScale), ro(spec.seed, kActOutliers);
  layer.channel_scale.resize(static_cast<size_t>(k));
  for (auto& c : layer.channel_scale) c = static_cast<float>(std::exp(0.3 * rs.normal()));
  layer.act_outliers = pick(ro, k, spec.act_outlier_channels);
  for (int64_t j : layer.act_outliers)
    layer.channel_scale[j] *= static_cast<float>(20.0 + 80.0 * ro.uniform());
  return layer;
}

}  // namespace

Result<Layer> make_layer(const LayerSpec& spec) {
  return detail::guard_allocation<Result<Layer>>("synth::make_layer",
                                                 [&] { return make_layer_impl(spec); });
}

std::vector<float> make_activations(const Layer& layer, int64_t tokens, uint64_t seed) try {
  const int64_t k = layer.spec.in_features;
  int64_t count = 0;
  if (tokens <= 0 || k <= 0 || static_cast<int64_t>(layer.channel_scale.size()) != k ||
      __builtin_mul_overflow(tokens, k, &count))
    return {};
  // Shared token component: x_m += z_m P with z_m ~ N(0, I_8) per token and fixed loadings P
  // (8, K) ~ N(0, 0.5^2 / 8) drawn from the layer's seed.
  detail::Rng rp(layer.spec.seed, kLoadings);
  std::vector<double> loadings(static_cast<size_t>(kTokenLatent * k));
  for (auto& p : loadings) p = 0.5 * rp.normal() / std::sqrt(static_cast<double>(kTokenLatent));

  detail::Rng rt(seed ^ (layer.spec.seed * 0x9E3779B97F4A7C15ULL), kTokens);
  std::vector<float> x(static_cast<size_t>(tokens * k));
  double z[kTokenLatent];
  for (int64_t m = 0; m < tokens; ++m) {
    for (double& v : z) v = rt.normal();
    for (int64_t j = 0; j < k; ++j) {
      double shared = 0;
      for (int c = 0; c < kTokenLatent; ++c) shared += z[c] * loadings[c * k + j];
      // Student-t with nu = 4 has variance 2; scale to unit variance.
      const double v = rt.student_t(4) * 0.70710678118654752 + shared;
      x[m * k + j] = static_cast<float>(v * layer.channel_scale[j]);
    }
  }
  return x;
} catch (const std::bad_alloc&) {
  return {};
} catch (const std::length_error&) {
  return {};
}

}  // namespace svdq::synth
