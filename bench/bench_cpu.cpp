// CPU benchmarks: the offline quantizer and the reference forward on the FLUX.1 layer shapes.
//
//   ./build/bench/bench_cpu --benchmark_out=cpu.json --benchmark_out_format=json
//
// Wall time (UseRealTime): the quantizer and the forward are multi-threaded (OpenMP).
#include <benchmark/benchmark.h>

#include <Eigen/Dense>
#include <cstdlib>
#include <map>
#include <memory>
#include <tuple>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

struct Fixture {
  svdq::synth::Layer layer;
  std::vector<float> calib;
  svdq::ActivationStats stats;
};

// One synthetic layer per (K, N), drawn once and shared by every benchmark of that shape.
const Fixture& fixture(int64_t k, int64_t n) {
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Fixture>> cache;
  auto& slot = cache[{k, n}];
  if (!slot) {
    slot = std::make_unique<Fixture>();
    svdq::synth::LayerSpec spec;
    spec.in_features = k;
    spec.out_features = n;
    slot->layer = std::move(*svdq::synth::make_layer(spec));
    slot->calib = svdq::synth::make_activations(slot->layer, 256, 1);
    (void)slot->stats.observe(svdq::MatrixView<const float>(slot->calib.data(), 256, k));
  }
  return *slot;
}

// Args: K, N, format (0 int4, 1 nvfp4), rank, svd method (0 randomized, 1 exact).
void BM_QuantizeLinear(benchmark::State& state) {
  const int64_t k = state.range(0), n = state.range(1);
  const Fixture& f = fixture(k, n);
  svdq::QuantConfig cfg;
  cfg.format = static_cast<svdq::Format>(state.range(2));
  cfg.rank = static_cast<int>(state.range(3));
  cfg.svd.method = static_cast<svdq::SvdMethod>(state.range(4));
  const svdq::MatrixView<const float> w(f.layer.weight.data(), n, k);
  const auto bias = svdq::vector_view<const float>(f.layer.bias.data(), n);
  for (auto _ : state) {
    auto q = svdq::quantize_linear(w, bias, &f.stats, cfg);
    if (!q.ok()) {
      state.SkipWithError(q.status().to_string().c_str());
      return;
    }
    benchmark::DoNotOptimize(q->qweight.data());
  }
  state.SetLabel(std::string(svdq::format_name(cfg.format)) +
                 (cfg.svd.method == svdq::SvdMethod::kExact ? " exact-svd" : " randomized-svd"));
  state.counters["weights/s"] = benchmark::Counter(static_cast<double>(k * n),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

// Args: K, N, format, M tokens. Rank 32 layer; fp32 input and output.
void BM_ReferenceForward(benchmark::State& state) {
  const int64_t k = state.range(0), n = state.range(1), m = state.range(3);
  const Fixture& f = fixture(k, n);
  svdq::QuantConfig cfg;
  cfg.format = static_cast<svdq::Format>(state.range(2));
  const svdq::MatrixView<const float> w(f.layer.weight.data(), n, k);
  auto q = svdq::quantize_linear(w, svdq::vector_view<const float>(f.layer.bias.data(), n),
                                 &f.stats, cfg);
  if (!q.ok()) {
    state.SkipWithError(q.status().to_string().c_str());
    return;
  }
  const auto x = svdq::synth::make_activations(f.layer, m, 2);
  std::vector<float> y(static_cast<size_t>(m * n));
  for (auto _ : state) {
    auto st = svdq::reference_forward(*q, svdq::MatrixView<const float>(x.data(), m, k),
                                      svdq::MatrixView<float>(y.data(), m, n));
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      return;
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(svdq::format_name(cfg.format));
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// Args: K, N, format, M tokens, threads. The prepared layer (CpuLinear): decoded once, caller-owned
// workspace; same bits as reference_forward.
void BM_CpuLinearForward(benchmark::State& state) {
  const int64_t k = state.range(0), n = state.range(1), m = state.range(3);
  const int threads = static_cast<int>(state.range(4));
  const Fixture& f = fixture(k, n);
  svdq::QuantConfig cfg;
  cfg.format = static_cast<svdq::Format>(state.range(2));
  auto q = svdq::quantize_linear(svdq::MatrixView<const float>(f.layer.weight.data(), n, k),
                                 svdq::vector_view<const float>(f.layer.bias.data(), n), &f.stats,
                                 cfg);
  if (!q.ok()) {
    state.SkipWithError(q.status().to_string().c_str());
    return;
  }
  auto layer = svdq::CpuLinear::create(*q);
  if (!layer.ok()) {
    state.SkipWithError(layer.status().to_string().c_str());
    return;
  }
  const size_t bytes = layer->workspace_size(m);
  void* ws = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  const auto x = svdq::synth::make_activations(f.layer, m, 2);
  std::vector<float> y(static_cast<size_t>(m * n));
  for (auto _ : state) {
    auto st = layer->forward(svdq::MatrixView<const float>(x.data(), m, k),
                             svdq::MatrixView<float>(y.data(), m, n), m, ws, bytes, threads);
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(y.data());
  }
  std::free(ws);
  state.SetLabel(svdq::format_name(cfg.format));
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// Args: K, N, M. The unquantized layer as an Eigen fp32 GEMM, y = x W^T + b (Eigen's own
// threading: OpenMP, OMP_NUM_THREADS).
void BM_EigenDenseF32(benchmark::State& state) {
  const int64_t k = state.range(0), n = state.range(1), m = state.range(2);
  const Fixture& f = fixture(k, n);
  using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RM> w(f.layer.weight.data(), n, k);
  const auto xv = svdq::synth::make_activations(f.layer, m, 2);
  const Eigen::Map<const RM> x(xv.data(), m, k);
  const Eigen::Map<const Eigen::RowVectorXf> b(f.layer.bias.data(), n);
  RM y(m, n);
  for (auto _ : state) {
    y.noalias() = x * w.transpose();
    y.rowwise() += b;
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void quantize_args(benchmark::internal::Benchmark* b) {
  for (auto [k, n] : {std::pair{3072, 3072}, {3072, 12288}, {12288, 3072}})
    for (int fmt : {0, 1}) b->Args({k, n, fmt, 32, 0});
  b->Args({3072, 3072, 0, 32, 1});  // the exact path, on the square shape only (BDCSVD is O(n^3))
}

void forward_args(benchmark::internal::Benchmark* b) {
  for (int fmt : {0, 1})
    for (int m : {1, 16, 256}) b->Args({3072, 3072, fmt, m});
}

void cpu_linear_args(benchmark::internal::Benchmark* b) {
  for (int fmt : {0, 1})
    for (int m : {1, 16, 256})
      for (int t : {1, 2}) b->Args({3072, 3072, fmt, m, t});
}

}  // namespace

BENCHMARK(BM_QuantizeLinear)->Apply(quantize_args)->ArgNames({"K", "N", "fmt", "rank", "svd"})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_ReferenceForward)->Apply(forward_args)->ArgNames({"K", "N", "fmt", "M"})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_CpuLinearForward)->Apply(cpu_linear_args)->ArgNames({"K", "N", "fmt", "M", "threads"})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EigenDenseF32)->ArgsProduct({{3072}, {3072}, {1, 16, 256}})->ArgNames({"K", "N", "M"})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
