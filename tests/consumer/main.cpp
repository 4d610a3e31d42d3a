// A consumer of the installed (or add_subdirectory'd) svdq: only public headers, no Eigen.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <svdq/svdq.hpp>
#include <svdq/testing.hpp>  // synth: the test layer

int main() {
  svdq::synth::LayerSpec spec;
  spec.in_features = 256;
  spec.out_features = 128;
  auto layer = svdq::synth::make_layer(spec);
  if (!layer.ok()) return std::puts(layer.status().to_string().c_str()), 1;
  const auto calib = svdq::synth::make_activations(*layer, 64, 1);
  const auto x = svdq::synth::make_activations(*layer, 16, 2);
  svdq::ActivationStats stats;
  if (!stats.observe(svdq::MatrixView<const float>(calib.data(), 64, 256)).ok()) return 1;
  const svdq::MatrixView<const float> w(layer->weight.data(), 128, 256);
  const auto bias = svdq::vector_view<const float>(layer->bias.data(), 128);
  svdq::QuantConfig cfg;
  cfg.rank = 16;
  auto q = svdq::quantize_linear(w, bias, &stats, cfg);
  if (!q.ok()) return std::puts(q.status().to_string().c_str()), 1;
  std::vector<float> y(16 * 128);
  std::vector<double> ref;
  const svdq::MatrixView<const float> xv(x.data(), 16, 256);
  // The prepared layer with a caller-owned workspace (same bits as reference_forward).
  auto prepared = svdq::CpuLinear::create(*q);
  if (!prepared.ok()) return std::puts(prepared.status().to_string().c_str()), 1;
  const size_t bytes = prepared->workspace_size(16);
  std::unique_ptr<void, decltype(&std::free)> ws(std::aligned_alloc(64, (bytes + 63) / 64 * 64), &std::free);
  if (!prepared->forward(xv, svdq::MatrixView<float>(y.data(), 16, 128), 16, ws.get(), bytes, 2).ok()) return 1;
  if (!svdq::dense_forward(xv, w, bias, &ref).ok()) return 1;
  const double err = svdq::relative_mse(svdq::MatrixView<const float>(y.data(), 16, 128),
                                          svdq::MatrixView<const double>(ref.data(), 16, 128));
  std::printf("svdq %s consumer: relMSE %.4e\n", svdq::version_string(), err);
  return err < 0.04 ? 0 : 1;  // a W4A4 layer, not a broken one
}
