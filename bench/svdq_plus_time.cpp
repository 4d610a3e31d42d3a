// svdq_plus_time — offline time of `svdq quantize --plus` (svdq_plus_config) on one synthetic
// layer: wall and CPU seconds (getrusage user + sys of the process), the load average, and the
// wall time of each step the quantizer reports through QuantConfig::progress.
//
//   svdq_plus_time [--shape KxN] [--calib M] [--format int4|nvfp4] [--rank R] [--steps] [--rotate|--no-rotate]
//                  [--save FILE]
//
// --steps also prints the process's resident set after each step (VmRSS, and VmHWM: the peak so
// far), to find where the peak is; --save writes the quantized layer (save_quantized), to compare
// two builds' bytes with cmp (info.seconds is stored as 0).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

namespace {
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
double peak_rss_gb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}
// Current and peak resident set (VmRSS, VmHWM of /proc/self/status) in GB; -1 where unreadable.
void rss_now_gb(double* now, double* peak) {
  *now = *peak = -1;
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return;
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    long long kb = 0;
    if (std::sscanf(line, "VmRSS: %lld kB", &kb) == 1) *now = static_cast<double>(kb) / (1024.0 * 1024.0);
    if (std::sscanf(line, "VmHWM: %lld kB", &kb) == 1) *peak = static_cast<double>(kb) / (1024.0 * 1024.0);
  }
  std::fclose(f);
}
double load_average() {
  double l[1] = {0};
  return getloadavg(l, 1) == 1 ? l[0] : -1;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"offline time of svdq-plus on one synthetic layer"};
  std::string shape = "3072x12288", format = "int4";
  int64_t m_calib = 512;
  int rank = 32;
  bool steps = false, plain = false, rotate = false, no_rotate = false;
  app.add_option("--shape", shape, "KxN")->capture_default_str();
  app.add_option("--calib", m_calib, "calibration rows")->capture_default_str();
  app.add_option("--format", format, "int4 or nvfp4")->check(CLI::IsMember({"int4", "nvfp4"}));
  app.add_option("--rank", rank, "rank")->capture_default_str();
  app.add_flag("--steps", steps, "print the wall time of every progress step");
  app.add_flag("--plain", plain, "time the plain recipe instead");
  auto* rot = app.add_flag("--rotate", rotate,
                           "compare block-Hadamard rotated recipes too (QuantConfig::rotate; the "
                           "svdq-plus default for int4)");
  app.add_flag("--no-rotate", no_rotate, "no rotated recipes (svdq-plus before issue 13's default)")
      ->excludes(rot);
  std::string save;
  app.add_option("--save", save, "write the quantized layer to this checkpoint file");
  CLI11_PARSE(app, argc, argv);
  long long k = 0, n = 0;
  if (std::sscanf(shape.c_str(), "%lldx%lld", &k, &n) != 2 || k <= 0 || n <= 0) return 2;
  svdq::synth::LayerSpec spec;
  spec.in_features = k;
  spec.out_features = n;
  auto layer = svdq::synth::make_layer(spec);
  if (!layer.ok()) return 1;
  const auto calib = svdq::synth::make_activations(*layer, m_calib, 11);
  svdq::CalibrationOptions copt;
  copt.max_rows = m_calib;
  svdq::ActivationStats stats(k, copt);
  if (!stats.observe(svdq::MatrixView<const float>(calib.data(), m_calib, k)).ok()) return 1;
  svdq::QuantConfig cfg;
  cfg.format = format == "nvfp4" ? svdq::Format::kNvfp4 : svdq::Format::kInt4;
  cfg.rank = rank;
  if (!plain) cfg = svdq::svdq_plus_config(cfg);
  if (rotate) cfg.rotate = true;
  if (no_rotate) cfg.rotate = false;
  auto t_prev = std::chrono::steady_clock::now();
  if (steps)
    cfg.progress = [&](int done, int total, const std::string& what) {
      const auto now = std::chrono::steady_clock::now();
      double rss = 0, hwm = 0;
      rss_now_gb(&rss, &hwm);
      std::fprintf(stderr, "  step %3d/%-3d %8.3f s  RSS %.3f GB (peak %.3f)  %s\n", done, total,
                   std::chrono::duration<double>(now - t_prev).count(), rss, hwm, what.c_str());
      t_prev = now;
    };
  const double load0 = load_average(), c0 = cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  auto q = svdq::quantize_linear(svdq::MatrixView<const float>(layer->weight.data(), n, k),
                                 svdq::ConstMatrixRef(), &stats, cfg);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = cpu_seconds() - c0, load1 = load_average();
  if (!q.ok()) {
    std::fprintf(stderr, "%s\n", q.status().to_string().c_str());
    return 1;
  }
  std::printf("%s %s %s: wall %.2f s, cpu %.2f s (user+sys), load average %.2f -> %.2f, peak RSS "
              "%.2f GB (whole process), recipe %s, score %.4e\n",
              shape.c_str(), format.c_str(),
              plain ? (cfg.rotate ? "plain rotated" : "plain") : (cfg.rotate ? "svdq-plus (rotated recipes compared)" : "svdq-plus (no rotation)"), wall, cpu, load0, load1,
              peak_rss_gb(), q->info.recipe.c_str(), q->info.score);
  if (!save.empty()) {
    svdq::QuantizedLinear layer_q = *q;
    layer_q.info.seconds = 0;  // the only field that differs between two runs of the same build
    if (svdq::Status st = svdq::save_quantized(save, {{"layer", &layer_q}}); !st.ok()) {
      std::fprintf(stderr, "%s: %s\n", save.c_str(), st.to_string().c_str());
      return 1;
    }
  }
  return 0;
}
