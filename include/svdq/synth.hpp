// svdq/synth.hpp — deterministic DiT-like layers: the embedded default of the demo, the tests and
// the benchmarks when no real checkpoint is given. docs/synthetic.md says exactly how they are drawn.
#pragma once
#define SVDQ_SYNTH_HPP_INCLUDED 1

#include <cstdint>
#include <vector>

#include "svdq/status.hpp"

namespace svdq::synth {

/// Parameters of a synthetic layer. Defaults: FLUX.1's hidden width.
struct LayerSpec {
  int64_t in_features = 3072;   ///< K
  int64_t out_features = 3072;  ///< N
  uint64_t seed = 1;
  int spectrum_rank = 64;          ///< rank of the structured (decaying) part of W
  double spectrum_decay = 0.9;     ///< sigma_i = 0.5 sqrt(min(N, K)) noise decay^i (docs/synthetic.md)
  double noise = 1.0;              ///< std of the full-rank Gaussian part of W (before 1/sqrt(K))
  int weight_outlier_columns = 8;  ///< input-channel columns of W scaled up
  int act_outlier_channels = 16;   ///< input channels with activation outliers (x20 .. x100)
};

/// A synthetic layer: W (N x K, row-major fp32), bias (N) and the activation model of its input.
struct Layer {
  LayerSpec spec;
  std::vector<float> weight;          ///< [N][K]
  std::vector<float> bias;            ///< [N]
  std::vector<float> channel_scale;   ///< [K] per-channel activation scale (outliers included)
  std::vector<int64_t> act_outliers;  ///< the outlier channels, ascending
};

/// Draws a layer; same spec, same bits (own PRNG, no <random> distributions; see the docs for the
/// libm functions it relies on).
/// Errors: non-positive sizes, counts larger than K.
Result<Layer> make_layer(const LayerSpec& spec);

/// Draws `tokens` input rows (tokens x K, row-major fp32) for the layer: Student-t (nu = 4) heavy
/// tails times the per-channel scale, plus a shared low-rank token component. `seed` picks the
/// batch (use different seeds for calibration and evaluation rows). Empty when tokens <= 0, the
/// layer is inconsistent, tokens * K overflows or the memory cannot be allocated.
std::vector<float> make_activations(const Layer& layer, int64_t tokens, uint64_t seed);

}  // namespace svdq::synth
