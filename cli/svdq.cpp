// svdq — the command-line tool: quantize a safetensors model, build calibration statistics,
// inspect a quantized file, benchmark a layer. `svdq --help` and `svdq <command> --help`.
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "eval.hpp"
#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

using svdq::Status;

int fail(const std::string& what) {
  std::fprintf(stderr, "svdq: error: %s\n", what.c_str());
  return 1;
}
int fail(const Status& st) { return fail(st.to_string()); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A one-line progress bar on stderr, only when stderr is a terminal.
void progress(int done, int total, const std::string& what) {
  if (!isatty(STDERR_FILENO)) return;
  constexpr int kWidth = 30;
  const int fill = total > 0 ? done * kWidth / total : kWidth;
  std::fprintf(stderr, "\r[%.*s%*s] %d/%d %-50.50s", fill, "==============================",
               kWidth - fill, "", done, total, what.c_str());
  if (done == total) std::fprintf(stderr, "\r%*s\r", kWidth + 70, "");
  std::fflush(stderr);
}

// Erases the progress bar's line (before a table row goes to stdout on the same terminal).
void progress_clear() {
  if (!isatty(STDERR_FILENO)) return;
  std::fprintf(stderr, "\r%*s\r", 100, "");
  std::fflush(stderr);
}

svdq::ConstMatrixRef float_view(const std::vector<float>& v, int64_t rows, int64_t cols) {
  return svdq::MatrixView<const float>(v.data(), rows, cols);
}

// ----------------------------------------------------------------------------------------------
// svdq quantize

struct QuantizeArgs {
  std::string model, output, calib, format = "int4", include = R"(.*\.weight$)", exclude;
  int rank = 32;
  int threads = 0;
  bool plus = false;
};

int cmd_quantize(const QuantizeArgs& a) {
  const auto t_all = std::chrono::steady_clock::now();
  if (a.threads > 0) omp_set_num_threads(a.threads);
  auto format = svdq::parse_format(a.format);
  if (!format.ok()) return fail(format.status());
  auto model = svdq::SafetensorsFile::open(a.model);
  if (!model.ok()) return fail(model.status());
  std::map<std::string, svdq::ActivationStats> calib;
  std::map<std::string, std::string> calib_rows;  // fingerprints of the calibration rows (svdq eval)
  if (!a.calib.empty()) {
    auto c = svdq::load_calibration(a.calib);
    if (!c.ok()) return fail(c.status());
    calib = std::move(*c);
    if (auto f = svdq::SafetensorsFile::open(a.calib); f.ok())
      for (const auto& [key, value] : f->metadata())
        if (key.rfind("svdq.calib_rows.", 0) == 0) calib_rows[key] = value;
  }
  std::regex include, exclude;
  try {
    include = std::regex(a.include);
    if (!a.exclude.empty()) exclude = std::regex(a.exclude);
  } catch (const std::regex_error& e) {
    return fail(std::string("--include/--exclude is not a valid regular expression: ") + e.what());
  }
  const int gs = svdq::group_size(*format);

  // Which tensors become quantized layers: matching 2-D float weights whose K fits the group.
  struct Job {
    std::string tensor, layer;
  };
  std::vector<Job> jobs;
  std::vector<std::string> skipped;
  for (const std::string& name : model->names()) {
    if (!std::regex_search(name, include) || (!a.exclude.empty() && std::regex_search(name, exclude)))
      continue;
    const auto info = model->info(name);
    const bool is_float = info->dtype == "F32" || info->dtype == "F16" || info->dtype == "BF16";
    if (!is_float || info->shape.size() != 2) {
      skipped.push_back(name + " (not a 2-D float tensor: " + info->dtype + ")");
      continue;
    }
    if (info->shape[1] % gs != 0) {
      skipped.push_back(name + " (in_features " + std::to_string(info->shape[1]) +
                        " is not a multiple of the " + a.format + " group " + std::to_string(gs) + ")");
      continue;
    }
    std::string layer = name;
    if (layer.size() > 7 && layer.compare(layer.size() - 7, 7, ".weight") == 0)
      layer.resize(layer.size() - 7);
    jobs.push_back({name, layer});
  }
  std::printf("svdq quantize: %zu layer(s) of %s -> %s, %s rank %d%s\n", jobs.size(),
              a.model.c_str(), a.output.c_str(), a.format.c_str(), a.rank, a.plus ? ", svdq-plus" : "");
  if (a.calib.empty())
    std::printf("  no --calib: data-free quantization (no activation smoothing, alpha = beta = 0)\n");
  for (const std::string& s : skipped) std::printf("  skipped %s\n", s.c_str());
  if (jobs.empty()) return fail("no tensor of " + a.model + " matches --include and can be quantized");

  svdq::SafetensorsWriter writer;
  std::map<std::string, bool> consumed;  // tensors replaced by a quantized layer
  std::printf("  %-40s %-13s %-10s %-12s %8s\n", "layer", "shape (NxK)", "method", "relMSE(cal)", "time s");
  std::printf("  (relMSE(cal) = ||y_q - y||^2 / ||y||^2 on the calibration rows: optimistic; "
              "`svdq eval` measures held-out rows)\n");
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    progress(static_cast<int>(i), static_cast<int>(jobs.size()), j.layer);
    const auto info = model->info(j.tensor);
    const int64_t n = info->shape[0], k = info->shape[1];
    auto w = model->read_float(j.tensor);
    if (!w.ok()) return fail(w.status());
    std::vector<float> bias;
    const std::string bias_name = j.layer + ".bias";
    if (model->contains(bias_name)) {
      auto b = model->read_float(bias_name);
      if (b.ok() && static_cast<int64_t>(b->size()) == n) {
        bias = std::move(*b);
        consumed[bias_name] = true;
      }
    }
    const auto it = calib.find(j.layer);
    const svdq::ActivationStats* stats = it != calib.end() ? &it->second : nullptr;
    if (stats != nullptr && stats->channels() != k)
      return fail("calibration of layer " + j.layer + " has " + std::to_string(stats->channels()) +
                  " channels, the weight has in_features " + std::to_string(k));
    svdq::QuantConfig cfg;
    cfg.format = *format;
    cfg.rank = static_cast<int>(std::min<int64_t>(a.rank, std::min(n, k)));
    std::string method = stats ? "svdquant" : "data-free";
    if (stats == nullptr) {
      cfg.alpha = cfg.beta = 0.0f;
    } else if (a.plus && stats->sampled_rows() > 0) {
      cfg = svdq::svdq_plus_config(cfg);
      method = "svdq-plus";
    }
    // Sub-progress of the search and refinements (svdq-plus): "<layer> <step>/<steps> <what>".
    cfg.progress = [&](int done, int total, const std::string& what) {
      progress(static_cast<int>(i), static_cast<int>(jobs.size()),
               j.layer + " " + std::to_string(done) + "/" + std::to_string(total) + " " + what);
    };
    const svdq::ConstMatrixRef wv = float_view(*w, n, k);
    const svdq::ConstMatrixRef bv = bias.empty() ? svdq::ConstMatrixRef() : float_view(bias, 1, n);
    auto q = svdq::quantize_linear(wv, bv, stats, cfg);
    if (!q.ok()) return fail("layer " + j.layer + ": " + q.status().to_string());
    // Output error on the calibration rows, when there are some.
    std::string err = "-";
    if (stats != nullptr && stats->sampled_rows() > 0) {
      const int64_t m = stats->sampled_rows();
      std::vector<float> y(static_cast<size_t>(m * n));
      std::vector<double> ref;
      const auto x = float_view(stats->samples(), m, k);
      if (svdq::reference_forward(*q, x, svdq::MatrixView<float>(y.data(), m, n)).ok() &&
          svdq::dense_forward(x, wv, bv, &ref).ok()) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.4e",
                      svdq::relative_mse(svdq::MatrixView<const float>(y.data(), m, n),
                                         svdq::MatrixView<const double>(ref.data(), m, n)));
        err = buf;
      }
    }
    if (Status st = svdq::add_quantized(writer, j.layer, *q); !st.ok()) return fail(st);
    consumed[j.tensor] = true;
    progress_clear();
    std::printf("  %-40s %-13s %-10s %-12s %8.2f\n", j.layer.c_str(),
                (std::to_string(n) + "x" + std::to_string(k)).c_str(), method.c_str(), err.c_str(),
                q->info.seconds);
  }
  progress(static_cast<int>(jobs.size()), static_cast<int>(jobs.size()), "done");
  // Every other tensor is copied unchanged.
  int copied = 0;
  for (const std::string& name : model->names()) {
    if (consumed.count(name)) continue;
    const auto info = model->info(name);
    if (Status st = writer.add(name, info->dtype, info->shape, info->data); !st.ok()) return fail(st);
    ++copied;
  }
  for (const auto& [key, value] : model->metadata()) (void)writer.set_metadata(key, value);
  for (const auto& [key, value] : calib_rows) (void)writer.set_metadata(key, value);
  (void)writer.set_metadata("svdq.version", svdq::version_string());
  if (Status st = writer.write(a.output); !st.ok()) return fail(st);
  std::printf("wrote %s: %zu quantized layer(s), %d tensor(s) copied unchanged, %.1f s\n",
              a.output.c_str(), jobs.size(), copied, seconds_since(t_all));
  return 0;
}

// ----------------------------------------------------------------------------------------------
// svdq calibrate: rows of each layer's input (tensors "<layer><suffix>", [M, K]) -> statistics

int cmd_calibrate(const std::vector<std::string>& inputs, const std::string& output,
                  const std::string& suffix, int64_t max_rows, bool gram) {
  std::map<std::string, svdq::ActivationStats> layers;
  std::map<std::string, std::vector<uint64_t>> fingerprints;  // per layer, for `svdq eval`
  svdq::CalibrationOptions opt;
  opt.max_rows = max_rows;
  opt.accumulate_gram = gram;
  for (const std::string& path : inputs) {
    auto file = svdq::SafetensorsFile::open(path);
    if (!file.ok()) return fail(file.status());
    for (const std::string& name : file->names()) {
      if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const auto info = file->info(name);
      if (info->shape.size() != 2) return fail(name + " must be a 2-D [rows, in_features] tensor");
      auto rows = file->read_float(name);
      if (!rows.ok()) return fail(rows.status());
      const std::string layer = name.substr(0, name.size() - suffix.size());
      auto [it, fresh] = layers.try_emplace(layer, info->shape[1], opt);
      if (Status st = it->second.observe(float_view(*rows, info->shape[0], info->shape[1])); !st.ok())
        return fail(layer + ": " + st.to_string());
      svdq_cli::add_row_fingerprints(*rows, info->shape[0], info->shape[1], &fingerprints[layer]);
    }
  }
  if (layers.empty()) return fail("no tensor named '<layer>" + suffix + "' in the input file(s)");
  std::map<std::string, std::string> meta;
  for (auto& [layer, h] : fingerprints) meta[svdq_cli::calib_rows_key(layer)] = svdq_cli::encode_fingerprints(h);
  if (Status st = svdq::save_calibration(output, layers, meta); !st.ok()) return fail(st);
  for (const auto& [name, st] : layers)
    std::printf("  %-40s K=%-6lld rows=%-8lld sampled=%lld\n", name.c_str(),
                static_cast<long long>(st.channels()), static_cast<long long>(st.rows_observed()),
                static_cast<long long>(st.sampled_rows()));
  std::printf("wrote %s: statistics of %zu layer(s)\n", output.c_str(), layers.size());
  return 0;
}

// ----------------------------------------------------------------------------------------------
// svdq inspect

int cmd_inspect(const std::string& path) {
  auto file = svdq::SafetensorsFile::open(path);
  if (!file.ok()) return fail(file.status());
  auto layers = svdq::quantized_layers(*file);
  if (!layers.ok()) return fail(layers.status());
  std::printf("%s: %lld bytes, %zu tensors, %zu quantized layer(s)\n", path.c_str(),
              static_cast<long long>(file->file_size()), file->names().size(), layers->size());
  if (auto v = file->metadata().find("svdq.version"); v != file->metadata().end())
    std::printf("written by svdq %s\n", v->second.c_str());
  int64_t q_bytes = 0, q_weights = 0;
  if (!layers->empty())
    std::printf("  %-40s %-6s %-6s %-5s %-5s %-13s %12s %8s %8s\n", "layer", "format", "group", "rank",
                "dtype", "shape (NxK)", "bytes", "bits/w", "vs bf16");
  for (const std::string& name : *layers) {
    auto q = svdq::load_quantized(*file, name);
    if (!q.ok()) return fail("layer " + name + ": " + q.status().to_string());
    const int64_t weights = q->in_features * q->out_features;
    q_bytes += q->size_bytes();
    q_weights += weights;
    std::printf("  %-40s %-6s %-6d %-5d %-5s %-13s %12lld %8.3f %7.2fx\n", name.c_str(),
                svdq::format_name(q->format), q->group, q->rank, svdq::dtype_name(q->storage),
                (std::to_string(q->out_features) + "x" + std::to_string(q->in_features)).c_str(),
                static_cast<long long>(q->size_bytes()), q->bits_per_weight(),
                2.0 * static_cast<double>(weights) / static_cast<double>(q->size_bytes()));
  }
  if (q_weights > 0)
    std::printf("quantized layers: %lld weights in %lld bytes = %.3f bits per weight\n",
                static_cast<long long>(q_weights), static_cast<long long>(q_bytes),
                8.0 * static_cast<double>(q_bytes) / static_cast<double>(q_weights));
  return 0;
}

// ----------------------------------------------------------------------------------------------
// svdq bench: the CPU reference forward of a synthetic layer against the unquantized layer

int cmd_bench(int64_t k, int64_t n, int64_t m, const std::string& fmt, int rank, int repeats) {
  auto format = svdq::parse_format(fmt);
  if (!format.ok()) return fail(format.status());
  svdq::synth::LayerSpec spec;
  spec.in_features = k;
  spec.out_features = n;
  auto layer = svdq::synth::make_layer(spec);
  if (!layer.ok()) return fail(layer.status());
  const auto calib = svdq::synth::make_activations(*layer, 256, 1);
  const auto x = svdq::synth::make_activations(*layer, m, 2);
  svdq::ActivationStats stats;
  if (Status st = stats.observe(float_view(calib, 256, k)); !st.ok()) return fail(st);
  svdq::QuantConfig cfg;
  cfg.format = *format;
  cfg.rank = rank;
  const auto w = float_view(layer->weight, n, k);
  const auto b = float_view(layer->bias, 1, n);
  auto q = svdq::quantize_linear(w, b, &stats, cfg);
  if (!q.ok()) return fail(q.status());
  std::vector<float> y(static_cast<size_t>(m * n));
  std::vector<double> ref;
  if (Status st = svdq::dense_forward(float_view(x, m, k), w, b, &ref); !st.ok()) return fail(st);
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (Status st = svdq::reference_forward(*q, float_view(x, m, k), svdq::MatrixView<float>(y.data(), m, n)); !st.ok())
      return fail(st);
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  const auto yv = svdq::MatrixView<const float>(y.data(), m, n);
  const auto rv = svdq::MatrixView<const double>(ref.data(), m, n);
  std::printf("svdq bench (CPU reference; the GPU layer is not wired into bench yet): %s K=%lld N=%lld M=%lld rank %d\n",
              fmt.c_str(), static_cast<long long>(k), static_cast<long long>(n),
              static_cast<long long>(m), rank);
  std::printf("  quantize %.3f s | forward median %.4f s over %d run(s), %.2f GFLOP/s | rel. error %.5f, SQNR %.2f dB\n",
              q->info.seconds, med, repeats, 2.0 * m * n * k / med * 1e-9,
              svdq::relative_error(yv, rv), svdq::sqnr_db(yv, rv));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"svdq: SVDQuant-style W4A4 quantization of linear layers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(svdq::version_string()));

  QuantizeArgs qa;
  auto* quantize = app.add_subcommand("quantize", "quantize every matching 2-D weight of a safetensors model");
  quantize->add_option("model", qa.model, "input model (.safetensors)")->required()->check(CLI::ExistingFile);
  quantize->add_option("-o,--output", qa.output, "output file (.safetensors)")->required();
  quantize->add_option("--calib", qa.calib, "calibration statistics from `svdq calibrate` (else data-free)")
      ->check(CLI::ExistingFile);
  quantize->add_option("--format", qa.format, "int4 or nvfp4")->check(CLI::IsMember({"int4", "nvfp4"}))
      ->capture_default_str();
  quantize->add_option("--rank", qa.rank, "low-rank branch rank")->check(CLI::Range(0, 4096))->capture_default_str();
  quantize->add_option("--include", qa.include, "regex of weight tensors to quantize")->capture_default_str();
  quantize->add_option("--exclude", qa.exclude, "regex of weight tensors to leave unchanged");
  quantize->add_option("--threads", qa.threads, "CPU threads (default: all)")->check(CLI::Range(1, 1024));
  quantize->add_flag("--plus", qa.plus, "svdq-plus (search and refinements; needs sampled calibration rows)");

  std::vector<std::string> calib_inputs;
  std::string calib_out, calib_suffix = ".inputs";
  int64_t calib_rows = 512;
  bool calib_gram = false;
  auto* calibrate = app.add_subcommand(
      "calibrate", "build calibration statistics from recorded input rows ('<layer>.inputs' [M, K] tensors)");
  calibrate->add_option("rows", calib_inputs, "safetensors file(s) of input rows")->required()->check(CLI::ExistingFile);
  calibrate->add_option("-o,--output", calib_out, "statistics file to write")->required();
  calibrate->add_option("--suffix", calib_suffix, "tensor name suffix of the row tensors")->capture_default_str();
  calibrate->add_option("--max-rows", calib_rows, "rows kept per layer for scoring")->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  calibrate->add_flag("--gram", calib_gram, "also accumulate X^T X (K^2 doubles per layer)");

  std::string inspect_path;
  auto* inspect = app.add_subcommand("inspect", "describe a quantized file: layers, formats, ranks, sizes");
  inspect->add_option("file", inspect_path, "a .safetensors file written by svdq")->required()->check(CLI::ExistingFile);

  int64_t bk = 3072, bn = 3072, bm = 256;
  std::string bfmt = "int4";
  int brank = 32, breps = 3;
  auto* bench = app.add_subcommand("bench", "time the layer forward on a synthetic layer against the unquantized one");
  bench->add_option("-k,--in", bk, "in_features K")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  bench->add_option("-n,--out", bn, "out_features N")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  bench->add_option("-m,--tokens", bm, "tokens M")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  bench->add_option("--format", bfmt, "int4 or nvfp4")->check(CLI::IsMember({"int4", "nvfp4"}))->capture_default_str();
  bench->add_option("--rank", brank, "low-rank branch rank")->check(CLI::Range(0, 4096))->capture_default_str();
  bench->add_option("--repeats", breps, "timed runs (median reported)")->check(CLI::Range(1, 1000))->capture_default_str();

  const auto run_eval = svdq_cli::add_eval_command(app);

  CLI11_PARSE(app, argc, argv);
  if (const int rc = run_eval(); rc >= 0) return rc;
  if (*quantize) return cmd_quantize(qa);
  if (*calibrate) return cmd_calibrate(calib_inputs, calib_out, calib_suffix, calib_rows, calib_gram);
  if (*inspect) return cmd_inspect(inspect_path);
  if (*bench) return cmd_bench(bk, bn, bm, bfmt, brank, breps);
  return 0;
}
