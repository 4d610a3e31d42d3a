// Determinism (issue 10, item 17): a quantizer's output depends only on its inputs and options,
// never on the number of OpenMP threads. The same layer is quantized with 1, 2 and 3 threads for
// the plain recipe and svdq-plus, int4 and nvfp4, and the serialized checkpoints must be
// byte-identical. The layer is large enough (K = 1024) that Eigen's own parallel GEMM, whose
// blocking depends on the thread count, would change the summation order if it were used.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <string>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/linear.hpp"
#include "svdq/stats.hpp"
#include "svdq/synth.hpp"

namespace {

using namespace svdq;

struct Case {
  Format format;
  bool plus;
};

std::vector<uint8_t> quantize_and_serialize(const synth::Layer& layer, const ActivationStats& stats,
                                            const Case& c, int threads) {
  omp_set_num_threads(threads);
  const int64_t n = layer.spec.out_features, k = layer.spec.in_features;
  QuantConfig cfg;
  cfg.format = c.format;
  cfg.rank = 32;
  if (c.plus) {
    cfg = svdq_plus_config(cfg);
    cfg.smooth_search.candidates = {{0.0f, 0.0f}, {0.5f, 0.5f}, {0.3f, 0.7f}};  // keeps it short
  }
  auto q = quantize_linear(MatrixView<const float>(layer.weight.data(), n, k),
                           MatrixView<const float>(layer.bias.data(), 1, n), &stats, cfg);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  if (!q.ok()) return {};
  q->info.seconds = 0;  // wall time is the one field allowed to differ; the CLI never stores it
  SafetensorsWriter w;
  EXPECT_TRUE(add_quantized(w, "layer", *q).ok());
  auto bytes = w.serialize();
  EXPECT_TRUE(bytes.ok());
  return bytes.ok() ? *bytes : std::vector<uint8_t>{};
}

TEST(Determinism, SameBytesForOneTwoAndThreeThreads) {
  synth::LayerSpec spec;
  spec.in_features = 1024;
  spec.out_features = 256;
  auto layer = synth::make_layer(spec);
  ASSERT_TRUE(layer.ok());
  const auto rows = synth::make_activations(*layer, 64, 1);
  CalibrationOptions opt;
  opt.max_rows = 64;
  ActivationStats stats(spec.in_features, opt);
  ASSERT_TRUE(stats.observe(MatrixView<const float>(rows.data(), 64, spec.in_features)).ok());

  const int saved = omp_get_max_threads();
  for (const Case c : {Case{Format::kInt4, false}, Case{Format::kInt4, true},
                       Case{Format::kNvfp4, false}, Case{Format::kNvfp4, true}}) {
    const auto one = quantize_and_serialize(*layer, stats, c, 1);
    ASSERT_FALSE(one.empty());
    for (int threads : {2, 3}) {
      const auto other = quantize_and_serialize(*layer, stats, c, threads);
      ASSERT_EQ(one.size(), other.size());
      size_t differ = 0;
      for (size_t i = 0; i < one.size(); ++i) differ += one[i] != other[i];
      EXPECT_EQ(differ, 0u) << format_name(c.format) << (c.plus ? " svdq-plus" : " plain")
                            << ": " << threads << " threads vs 1 differ in " << differ << " bytes";
    }
  }
  omp_set_num_threads(saved);
}

}  // namespace
