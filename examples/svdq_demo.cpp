// svdq_demo — quantizes the embedded default layers (svdq::synth) with the four recipes of the
// SVDQuant paper and prints, per format, each recipe's output error against the unquantized layer,
// its size against BF16 and its offline time.
//
//   svdq_demo [--shape KxN ...] [--tokens M] [--rank R] [--format int4|nvfp4|both] [--seed S]
//   svdq_demo --check   exits 1 unless SVDQuant < smoothing only < naive and low-rank < naive
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

struct Shape {
  int64_t k, n;
};

struct Row {
  svdq::Recipe recipe;
  double rel_mse, sqnr, bpw, seconds;
  int64_t bytes;
};

bool parse_shape(const std::string& s, Shape* out) {
  long long k = 0, n = 0;
  char x = 0;
  if (std::sscanf(s.c_str(), "%lld%c%lld", &k, &x, &n) != 3 || (x != 'x' && x != 'X')) return false;
  *out = {k, n};
  return k > 0 && n > 0;
}

// One layer, one format: the four recipes. Returns false (after printing why) on an error.
void print_row(const Shape& shape, const Row& r);

// Rows are printed (and flushed) as each recipe finishes; *step_seconds gets the wall time of
// each recipe (quantize + forward), for the estimate of the next table.
bool run_layer(const Shape& shape, svdq::Format format, int64_t tokens, int rank, uint64_t seed,
               std::vector<Row>* rows, double* step_seconds) {
  using namespace svdq;
  synth::LayerSpec spec;
  spec.in_features = shape.k;
  spec.out_features = shape.n;
  spec.seed = seed;
  Result<synth::Layer> layer = synth::make_layer(spec);
  if (!layer.ok()) {
    std::fprintf(stderr, "error: %s\n", layer.status().to_string().c_str());
    return false;
  }
  const MatrixView<const float> w(layer->weight.data(), shape.n, shape.k);
  const auto bias = vector_view<const float>(layer->bias.data(), shape.n);

  // Calibration rows and evaluation rows are different draws of the same activation model.
  const std::vector<float> calib = synth::make_activations(*layer, tokens, seed * 2 + 1);
  const std::vector<float> eval = synth::make_activations(*layer, tokens, seed * 2 + 2);
  ActivationStats stats;
  if (Status st = stats.observe(MatrixView<const float>(calib.data(), tokens, shape.k)); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return false;
  }
  const MatrixView<const float> x(eval.data(), tokens, shape.k);
  std::vector<double> y_ref;
  if (Status st = dense_forward(x, w, bias, &y_ref); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return false;
  }
  const MatrixView<const double> ref(y_ref.data(), tokens, shape.n);

  QuantConfig base;
  base.format = format;
  base.rank = rank;
  std::vector<float> y(static_cast<size_t>(tokens * shape.n));
  for (Recipe r : {Recipe::kNaive, Recipe::kSmoothOnly, Recipe::kLowRankOnly, Recipe::kSvdquant}) {
    const auto t0 = std::chrono::steady_clock::now();
    Result<QuantizedLinear> q = quantize_linear(w, bias, &stats, recipe_config(r, base));
    if (!q.ok()) {
      std::fprintf(stderr, "error: %s\n", q.status().to_string().c_str());
      return false;
    }
    const MatrixView<float> yv(y.data(), tokens, shape.n);
    if (Status st = reference_forward(*q, x, yv); !st.ok()) {
      std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
      return false;
    }
    rows->push_back({r, relative_mse(yv, ref), sqnr_db(yv, ref), q->bits_per_weight(),
                     q->info.seconds, q->size_bytes()});
    print_row(shape, rows->back());
    *step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return true;
}

// The table's title and header; `estimate` < 0: no estimate yet (the first table).
void print_header(svdq::Format format, const Shape& shape, int64_t tokens, int rank,
                  double estimate) {
  std::printf("\n%s  K=%lld N=%lld  tokens=%lld  rank=%d", svdq::format_name(format),
              static_cast<long long>(shape.k), static_cast<long long>(shape.n),
              static_cast<long long>(tokens), rank);
  if (estimate >= 0)
    std::printf("  (this table: about %.0f s on this machine)\n", estimate);
  else
    std::printf("  (first table: timing it to estimate the others)\n");
  std::printf("  %-10s %12s %10s %12s %10s %10s %11s\n", "method", "relMSE", "SQNR dB", "bytes",
              "bits/w", "vs BF16", "offline s");
  std::fflush(stdout);
}

void print_row(const Shape& shape, const Row& r) {
  const double bf16_bytes = 2.0 * static_cast<double>(shape.k) * static_cast<double>(shape.n);
  std::printf("  %-10s %12.4e %10.2f %12lld %10.3f %9.2fx %11.3f\n", svdq::recipe_name(r.recipe),
              r.rel_mse, r.sqnr, static_cast<long long>(r.bytes), r.bpw,
              bf16_bytes / static_cast<double>(r.bytes), r.seconds);
  std::fflush(stdout);
}

// The ablation order of the SVDQuant paper on outlier-heavy layers.
bool ablation_order_holds(const std::vector<Row>& rows) {
  const double naive = rows[0].rel_mse, smooth = rows[1].rel_mse, lowrank = rows[2].rel_mse,
               svdq = rows[3].rel_mse;
  return svdq < smooth && smooth < naive && lowrank < naive;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"svdq demo: the SVDQuant ablation on the embedded default (synthetic FLUX-like) layers"};
  std::vector<std::string> shape_args = {"3072x3072", "3072x12288"};
  int64_t tokens = 256;
  int rank = 32;
  std::string format_arg = "both";
  uint64_t seed = 1;
  bool check = false;
  app.add_option("--shape", shape_args, "layer shapes as KxN (in x out features)")->capture_default_str();
  app.add_option("--tokens", tokens, "token rows for calibration and for evaluation")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--rank", rank, "low-rank branch rank")->check(CLI::Range(0, 4096))->capture_default_str();
  app.add_option("--format", format_arg, "int4, nvfp4 or both")
      ->check(CLI::IsMember({"int4", "nvfp4", "both"}))->capture_default_str();
  app.add_option("--seed", seed, "seed of the synthetic layers and activations")->capture_default_str();
  app.add_flag("--check", check, "exit 1 unless the ablation order holds for every table");
  CLI11_PARSE(app, argc, argv);

  std::vector<Shape> shapes;
  for (const std::string& s : shape_args) {
    Shape sh;
    if (!parse_shape(s, &sh)) {
      std::fprintf(stderr, "error: --shape '%s' is not KxN with K, N > 0\n", s.c_str());
      return 2;
    }
    shapes.push_back(sh);
  }
  std::vector<svdq::Format> formats;
  if (format_arg != "nvfp4") formats.push_back(svdq::Format::kInt4);
  if (format_arg != "int4") formats.push_back(svdq::Format::kNvfp4);

  std::printf("svdq %s demo: output error against the unquantized layer (fp64) on held-out rows:\n"
              "relMSE = ||y_q - y||^2 / ||y||^2, SQNR dB = -10 log10 relMSE\n",
              svdq::version_string());
  std::fflush(stdout);
  bool all_ordered = true;
  double seconds_per_weight = -1;  // measured on the tables so far (time scales with K * N)
  for (svdq::Format f : formats)
    for (const Shape& sh : shapes) {
      std::vector<Row> rows;
      const double weights = static_cast<double>(sh.k) * static_cast<double>(sh.n);
      print_header(f, sh, tokens, rank, seconds_per_weight < 0 ? -1 : seconds_per_weight * weights);
      double secs = 0;
      if (!run_layer(sh, f, tokens, rank, seed, &rows, &secs)) return 1;
      seconds_per_weight = secs / weights;
      const bool ordered = ablation_order_holds(rows);
      all_ordered &= ordered;
      std::printf("  ablation order (svdquant < smooth < naive, lowrank < naive): %s\n",
                  ordered ? "holds" : "VIOLATED");
    }
  return (check && !all_ordered) ? 1 : 0;
}
