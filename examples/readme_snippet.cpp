// Quantize a linear layer to W4A4 and run it with the prepared CPU layer (the README's program).
#include <svdq/svdq.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

int main() {
  // Your layer: W is N x K (out x in, PyTorch layout), bias N; calib: rows of its input.
  const int64_t N = 256, K = 512, calib_rows = 128, M = 16;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> W(N * K), bias(N), calib(calib_rows * K), x(M * K), y(M * N);
  for (float& v : W) v = normal(rng) * 0.05f;
  for (float& v : bias) v = normal(rng) * 0.1f;
  for (float& v : calib) v = normal(rng);
  for (float& v : x) v = normal(rng);

  svdq::ActivationStats stats;
  if (svdq::Status st = stats.observe(svdq::MatrixView<const float>(calib.data(), calib_rows, K));
      !st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());  // names the argument and the rule
    return 1;
  }
  svdq::QuantConfig cfg;  // defaults: int4, rank 32, alpha = beta = 0.5, bf16 branch
  cfg.format = svdq::Format::kNvfp4;
  svdq::Result<svdq::QuantizedLinear> q =
      svdq::quantize_linear(svdq::MatrixView<const float>(W.data(), N, K),
                            svdq::vector_view<const float>(bias.data(), N), &stats, cfg);
  if (!q.ok()) return std::fprintf(stderr, "%s\n", q.status().to_string().c_str()), 1;
  // (svdq::save_quantized / load_quantized write and read it as safetensors.)

  // Prepare once (weights decoded once), allocate the workspace once, run many times.
  svdq::Result<svdq::CpuLinear> layer = svdq::CpuLinear::create(*q);
  if (!layer.ok()) return std::fprintf(stderr, "%s\n", layer.status().to_string().c_str()), 1;
  const size_t bytes = layer->workspace_size(M);
  std::unique_ptr<void, decltype(&std::free)> workspace(std::aligned_alloc(64, (bytes + 63) / 64 * 64),
                                                        &std::free);
  // x and y are views (pointer, rows, cols[, ld]) of f32, f16 or bf16; here f32; 2 threads.
  if (svdq::Status st = layer->forward(svdq::MatrixView<const float>(x.data(), M, K),
                                       svdq::MatrixView<float>(y.data(), M, N), M,
                                       workspace.get(), bytes, /*threads=*/2);
      !st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
    return 1;
  }

  // Against the unquantized layer (in double): relMSE = ||y - y_ref||^2 / ||y_ref||^2.
  std::vector<double> y_ref;
  if (!svdq::dense_forward(svdq::MatrixView<const float>(x.data(), M, K),
                           svdq::MatrixView<const float>(W.data(), N, K),
                           svdq::vector_view<const float>(bias.data(), N), &y_ref).ok())
    return 1;
  const svdq::MatrixView<const float> yv(y.data(), M, N);
  const svdq::MatrixView<const double> rv(y_ref.data(), M, N);
  const double rel = svdq::relative_mse(yv, rv);
  std::printf("nvfp4 rank %d: relMSE %.4f, SQNR %.1f dB, %.2f bits per weight\n", q->rank, rel,
              svdq::sqnr_db(yv, rv), q->bits_per_weight());
  return rel < 0.05 ? 0 : 1;
}
