// svdq_quality — the quality benchmark of the offline quantizer: for each layer and format, the
// relative output MSE and SQNR against the unquantized layer, on held-out rows, of the paper's
// recipes, each refinement alone on top of plain SVDQuant, and svdq-plus; plus the time per layer.
//
//   svdq_quality [--shape KxN ...] [--calib M] [--eval M] [--rank R] [--format int4|nvfp4|both]
//                [--csv FILE] [--methods a,b,...]
//
// Synthetic layers (svdq::synth) by default; --model DUMP.safetensors (tools/minilm.py dump) adds
// every linear layer of a real model (its .weight, .bias, .calib rows for calibration and .inputs
// rows, held out, for evaluation), and --save-dir writes each method's quantized model there for
// the end-to-end evaluation (tools/minilm.py eval).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <array>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

struct Method {
  std::string name;
  std::function<svdq::QuantConfig(svdq::QuantConfig)> make;  // from the plain SVDQuant config
};

std::vector<Method> all_methods() {
  using svdq::QuantConfig;
  using svdq::Recipe;
  return {
      {"data-free", [](QuantConfig c) { c.alpha = c.beta = 0.0f; return c; }},
      {"df+clip-unw", [](QuantConfig c) { c.alpha = c.beta = 0.0f; c.clip_search = true; c.clip_weighted = false; return c; }},
      {"+clip-unw", [](QuantConfig c) { c.clip_search = true; c.clip_weighted = false; return c; }},
      {"plus-nosel", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.selection.enabled = false; c.rotate = false; return c; }},
      {"naive", [](QuantConfig c) { return svdq::recipe_config(Recipe::kNaive, c); }},
      {"smooth", [](QuantConfig c) { return svdq::recipe_config(Recipe::kSmoothOnly, c); }},
      {"lowrank", [](QuantConfig c) { return svdq::recipe_config(Recipe::kLowRankOnly, c); }},
      {"svdquant", [](QuantConfig c) { return c; }},
      {"+search", [](QuantConfig c) { c.smooth_search.enabled = true; return c; }},
      {"+refine", [](QuantConfig c) { c.refine_iterations = 3; return c; }},
      {"+whiten", [](QuantConfig c) { c.whiten_lowrank = true; return c; }},
      {"+gptq", [](QuantConfig c) { c.gptq.enabled = true; return c; }},
      {"+clip", [](QuantConfig c) { c.clip_search = true; return c; }},
      {"+t_act", [](QuantConfig c) { c.calibrate_act_tensor_scale = true; return c; }},
      {"svdq-plus", [](QuantConfig c) { return svdq::svdq_plus_config(c); }},
      // svdq-plus without rotated recipes (the default before issue 13 turned them on for int4).
      {"plus-norot", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.rotate = false; return c; }},
      {"plus+gptq", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.gptq.enabled = true; c.rotate = false; return c; }},
      // Block-Hadamard rotation (qrot, issue 13 item 2): alone, with each start, and in svdq-plus.
      {"df+rotate", [](QuantConfig c) { c.alpha = c.beta = 0.0f; c.rotate = true; return c; }},
      {"+rotate", [](QuantConfig c) { c.rotate = true; return c; }},
      {"+rotate+refine", [](QuantConfig c) { c.rotate = true; c.refine_iterations = 3; return c; }},
      {"+rotate+clip-unw", [](QuantConfig c) { c.rotate = true; c.clip_search = true; c.clip_weighted = false; return c; }},
      {"plus-nosel+rot", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.selection.enabled = false; c.rotate = true; return c; }},
      {"plus+rotate", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.rotate = true; return c; }},
      // The alternating whitened branch: L_k = whitened SVD_r(W_hat - Q(W_hat - L_{k-1})).
      {"+whiten+refine", [](QuantConfig c) { c.whiten_lowrank = true; c.refine_iterations = 3; return c; }},
      {"plus+rot+whiten", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.rotate = true; c.whiten_lowrank = true; return c; }},
      {"+rotate+whiten+refine", [](QuantConfig c) { c.rotate = true; c.whiten_lowrank = true; c.refine_iterations = 3; return c; }},
  };
}

// Quantized layers per (format, method), for --save-dir.
using Saved = std::map<std::string, std::vector<std::pair<std::string, svdq::QuantizedLinear>>>;

struct Result {
  std::string layer, format, method;
  double rel_mse, sqnr, seconds;
  float alpha, beta;
  std::string notes, recipe;
};

// Quantizes one layer with every method and evaluates on held-out rows.
bool run_layer(const std::string& name, const std::vector<float>& w, const std::vector<float>& bias,
               int64_t n, int64_t k, const std::vector<float>& calib, int64_t m_calib,
               const std::vector<float>& eval, int64_t m_eval, svdq::Format format, int rank,
               const std::vector<Method>& methods, std::vector<Result>* out, Saved* saved) {
  using namespace svdq;
  CalibrationOptions copt;
  copt.max_rows = 512;
  ActivationStats stats(k, copt);
  if (Status st = stats.observe(MatrixView<const float>(calib.data(), m_calib, k)); !st.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), st.to_string().c_str());
    return false;
  }
  const MatrixView<const float> wv(w.data(), n, k), x(eval.data(), m_eval, k);
  const ConstMatrixRef bv = bias.empty() ? ConstMatrixRef() : ConstMatrixRef(vector_view(bias.data(), n));
  std::vector<double> ref;
  if (!dense_forward(x, wv, bv, &ref).ok()) return false;
  const MatrixView<const double> refv(ref.data(), m_eval, n);
  double ref2 = 0;
  for (double v : ref) ref2 += v * v;
  std::vector<float> y(static_cast<size_t>(m_eval * n));
  QuantConfig base;
  base.format = format;
  base.rank = static_cast<int>(std::min<int64_t>(rank, std::min(n, k)));
  for (const Method& m : methods) {
    if (m.name == "+t_act" && format != Format::kNvfp4) continue;
    auto q = quantize_linear(wv, bv, &stats, m.make(base));
    if (!q.ok()) {
      std::fprintf(stderr, "%s %s: %s\n", name.c_str(), m.name.c_str(), q.status().to_string().c_str());
      return false;
    }
    const MatrixView<float> yv(y.data(), m_eval, n);
    if (!reference_forward(*q, x, yv).ok()) return false;
    const double mse = mean_squared_error(yv, refv);
    if (saved != nullptr)
      (*saved)[std::string(format_name(format)) + "-" + m.name].emplace_back(name, *q);
    out->push_back({name, format_name(format), m.name,
                    mse * static_cast<double>(ref.size()) / ref2, sqnr_db(yv, refv), q->info.seconds,
                    q->info.alpha, q->info.beta, q->info.notes, q->info.recipe});
    std::fprintf(stderr, "  %-22s %-6s %-10s rel.MSE %.4e  SQNR %6.2f dB  %7.2f s  (a=%.2f b=%.2f) %s %s\n",
                 name.c_str(), format_name(format), m.name.c_str(), out->back().rel_mse,
                 out->back().sqnr, q->info.seconds, q->info.alpha, q->info.beta,
                 q->info.recipe.c_str(), q->info.notes.c_str());
  }
  return true;
}

// Pure low-rank compression (no 4-bit residual) at a parameter budget: rank r with
// r (N + K) = fraction * N * K; plain SVD vs the activation-aware split, output MSE on held-out rows.
void lowrank_only(const std::string& name, const std::vector<float>& w, int64_t n, int64_t k,
                  const std::vector<float>& calib, int64_t m_calib, const std::vector<float>& eval,
                  int64_t m_eval, double fraction, std::vector<std::array<double, 2>>* out) {
  using namespace svdq;
  const int r = std::max(1, static_cast<int>(fraction * static_cast<double>(n * k) / static_cast<double>(n + k)));
  ActivationStats stats(k);
  if (!stats.observe(MatrixView<const float>(calib.data(), m_calib, k)).ok()) return;
  const MatrixView<const float> wv(w.data(), n, k), x(eval.data(), m_eval, k);
  std::vector<double> ref;
  if (!dense_forward(x, wv, ConstMatrixRef(), &ref).ok()) return;
  std::array<double, 2> errs{};
  for (int white = 0; white < 2; ++white) {
    auto f = factorize_low_rank(wv, &stats, r, white == 1);
    if (!f.ok()) return;
    std::vector<float> wl(static_cast<size_t>(n * k), 0.0f);  // up * down
    for (int64_t i = 0; i < n; ++i)
      for (int c = 0; c < r; ++c) {
        const float u = f->up[i * r + c];
        for (int64_t j = 0; j < k; ++j) wl[i * k + j] += u * f->down[c * k + j];
      }
    std::vector<double> y;
    if (!dense_forward(x, MatrixView<const float>(wl.data(), n, k), ConstMatrixRef(), &y).ok()) return;
    errs[white] = mean_squared_error(MatrixView<const double>(y.data(), m_eval, n),
                                     MatrixView<const double>(ref.data(), m_eval, n));
    double ref2 = 0;
    for (double v : ref) ref2 += v * v;
    errs[white] *= static_cast<double>(ref.size()) / ref2;
  }
  std::fprintf(stderr, "  %-40s low-rank only r=%-4d plain %.4e  activation-aware %.4e\n", name.c_str(), r,
               errs[0], errs[1]);
  out->push_back(errs);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"svdq quality benchmark: output error of each quantization method"};
  std::vector<std::string> shapes = {"3072x3072", "3072x12288"};
  int64_t m_calib = 512, m_eval = 256;
  int rank = 32;
  std::string format_arg = "both", csv, methods_arg, model, save_dir;
  bool no_synth = false;
  double lowrank_fraction = 0;
  app.add_option("--shape", shapes, "synthetic layer shapes KxN")->capture_default_str();
  app.add_option("--calib", m_calib, "calibration rows")->capture_default_str();
  app.add_option("--eval", m_eval, "held-out evaluation rows")->capture_default_str();
  app.add_option("--rank", rank, "low-rank branch rank")->capture_default_str();
  app.add_option("--format", format_arg, "int4, nvfp4 or both")
      ->check(CLI::IsMember({"int4", "nvfp4", "both"}));
  app.add_option("--csv", csv, "write every result as CSV here");
  app.add_option("--methods", methods_arg, "comma-separated subset of methods (default: all)");
  app.add_option("--model", model, "a real model's dump from tools/minilm.py (skipped if absent)");
  app.add_option("--save-dir", save_dir, "write <format>-<method>.safetensors per method of --model");
  app.add_flag("--no-synth", no_synth, "skip the synthetic layers");
  std::vector<std::string> families = {"default"};
  app.add_option("--family", families,
                 "synthetic layer families: default, down (K = 4N, spiky weight columns), huge (a few "
                 "huge activation channels), gelu (one-sided activations with rare per-row spikes)")
      ->capture_default_str();
  app.add_option("--lowrank-only", lowrank_fraction,
                 "instead: pure low-rank compression keeping this fraction of the parameters (e.g. 0.15), "
                 "plain SVD vs activation-aware, on the model's layers");
  CLI11_PARSE(app, argc, argv);

  std::vector<Method> methods;
  for (const Method& m : all_methods())
    if (methods_arg.empty() || ("," + methods_arg + ",").find("," + m.name + ",") != std::string::npos)
      methods.push_back(m);
  std::vector<svdq::Format> formats;
  if (format_arg != "nvfp4") formats.push_back(svdq::Format::kInt4);
  if (format_arg != "int4") formats.push_back(svdq::Format::kNvfp4);

  std::vector<Result> results;
  if (no_synth) shapes.clear();
  for (const std::string& fam : families)
  for (const std::string& s : shapes) {
    long long k = 0, n = 0;
    if (std::sscanf(s.c_str(), "%lldx%lld", &k, &n) != 2 || k <= 0 || n <= 0) {
      std::fprintf(stderr, "error: --shape '%s' is not KxN\n", s.c_str());
      return 2;
    }
    if (fam != "default" && fam != "down" && fam != "huge" && fam != "gelu") {
      std::fprintf(stderr, "error: --family '%s' is not default, down, huge or gelu\n", fam.c_str());
      return 2;
    }
    svdq::synth::LayerSpec spec;
    spec.in_features = k;
    spec.out_features = n;
    if (fam == "down") spec.weight_outlier_columns = static_cast<int>(std::min<long long>(k / 32, 256));
    if (fam == "huge") spec.act_outlier_channels = 4;
    auto layer = svdq::synth::make_layer(spec);
    if (!layer.ok()) return 1;
    auto calib = svdq::synth::make_activations(*layer, m_calib, 11);
    auto eval = svdq::synth::make_activations(*layer, m_eval, 12);
    // Family transforms of the activations, seeded per row set (documented in docs/quality.md).
    auto transform = [&](std::vector<float>& x, uint64_t seed) {
      uint64_t st = seed * 0x9e3779b97f4a7c15ULL + 1;
      auto next = [&] {
        uint64_t z = (st += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return ((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
      };
      for (size_t i = 0; i < x.size(); ++i) {
        const int64_t j = static_cast<int64_t>(i % static_cast<size_t>(k));
        if (fam == "huge") {
          for (size_t o = 0; o < layer->act_outliers.size(); ++o)
            if (layer->act_outliers[o] == j) x[i] *= 50.0f;  // 4 channels x1000..x5000 in all
        } else if (fam == "gelu" || fam == "down") {
          if (x[i] < 0) x[i] *= 0.05f;               // one-sided, GELU-like
          if (next() < 0.002) x[i] *= 30.0f;         // rare spikes, row by row
        }
      }
    };
    if (fam != "default") {
      transform(calib, 11);
      transform(eval, 12);
    }
    const std::string name = (fam == "default" ? "synth-" : "synth-" + fam + "-") + s;
    for (svdq::Format f : formats)
      if (!run_layer(name, layer->weight, layer->bias, n, k, calib, m_calib, eval, m_eval,
                     f, rank, methods, &results, nullptr))
        return 1;
  }

  if (!model.empty()) {
    auto file = svdq::SafetensorsFile::open(model);
    if (!file.ok()) {
      std::fprintf(stderr, "skipping the real model: %s\n(make the dump with: python3 tools/minilm.py dump %s)\n",
                   file.status().to_string().c_str(), model.c_str());
    } else {
      Saved saved;
      auto layers = file->metadata().find("layers");
      std::vector<std::string> names;
      if (layers != file->metadata().end()) {
        std::string list = layers->second;
        for (size_t pos = 0; pos <= list.size();) {
          const size_t comma = std::min(list.find(',', pos), list.size());
          if (comma > pos) names.push_back(list.substr(pos, comma - pos));
          pos = comma + 1;
        }
      }
      std::vector<std::array<double, 2>> lr_errs;
      for (const std::string& name : names) {
        auto w = file->read_float(name + ".weight");
        auto b = file->read_float(name + ".bias");
        auto xc = file->read_float(name + ".calib");
        auto xe = file->read_float(name + ".inputs");
        auto wi = file->info(name + ".weight");
        auto ci = file->info(name + ".calib");
        auto ei = file->info(name + ".inputs");
        if (!w.ok() || !b.ok() || !xc.ok() || !xe.ok() || !wi.ok() || !ci.ok() || !ei.ok()) {
          std::fprintf(stderr, "%s: missing .weight/.bias/.calib/.inputs in the dump\n", name.c_str());
          return 1;
        }
        const int64_t n = wi->shape[0], k = wi->shape[1];
        if (lowrank_fraction > 0) {
          lowrank_only(name, *w, n, k, *xc, ci->shape[0], *xe, ei->shape[0], lowrank_fraction, &lr_errs);
          continue;
        }
        for (svdq::Format f : formats)
          if (!run_layer(name, *w, *b, n, k, *xc, ci->shape[0], *xe, ei->shape[0], f, rank, methods,
                         &results, save_dir.empty() ? nullptr : &saved))
            return 1;
      }
      if (!lr_errs.empty()) {
        double a = 0, b = 0;
        for (const auto& e : lr_errs) a += e[0], b += e[1];
        std::printf("| low-rank only, %.0f%% of parameters (%zu layers) | plain SVD | activation-aware |\n"
                    "|---|---|---|\n| mean rel. output MSE | %.4e | %.4e |\n",
                    100 * lowrank_fraction, lr_errs.size(), a / lr_errs.size(), b / lr_errs.size());
      }
      for (const auto& [key, list] : saved) {
        std::vector<std::pair<std::string, const svdq::QuantizedLinear*>> ptrs;
        for (const auto& [name, q] : list) ptrs.emplace_back(name, &q);
        const std::string path = save_dir + "/" + key + ".safetensors";
        if (svdq::Status st = svdq::save_quantized(path, ptrs); !st.ok()) {
          std::fprintf(stderr, "%s: %s\n", path.c_str(), st.to_string().c_str());
          return 1;
        }
      }
    }
  }

  // Summary: mean relative MSE per (format, method) over layers, and the reduction vs svdquant.
  struct Acc {
    double mse = 0, seconds = 0;
    int count = 0;
  };
  std::map<std::tuple<std::string, std::string, std::string>, Acc> mean;
  for (const Result& r : results) {
    const std::string source = r.layer.rfind("synth-", 0) == 0 ? "synthetic" : "real";
    auto& acc = mean[{source, r.format, r.method}];
    acc.mse += r.rel_mse;
    acc.seconds += r.seconds;
    acc.count += 1;
  }
  if (!results.empty())
    std::printf("| layers | format | method | mean rel. MSE | vs svdquant | mean time s |\n|---|---|---|---|---|---|\n");
  for (const char* source : {"synthetic", "real"})
    for (svdq::Format f : formats)
      for (const Method& m : methods) {
        auto it = mean.find({source, svdq::format_name(f), m.name});
        if (it == mean.end()) continue;
        const double v = it->second.mse / it->second.count;
        auto base = mean.find({source, svdq::format_name(f), "svdquant"});
        const double b = base != mean.end() ? base->second.mse / base->second.count : v;
        std::printf("| %s (%d) | %s | %s | %.4e | %+.1f%% | %.2f |\n", source, it->second.count,
                    svdq::format_name(f), m.name.c_str(), v, 100.0 * (v / b - 1.0),
                    it->second.seconds / it->second.count);
      }
  // Per layer: relative MSE on held-out rows, and the change against plain SVDQuant.
  if (!results.empty())
    std::printf("\n| layer | format | method | rel. MSE | SQNR dB | vs svdquant | time s | recipe |\n|---|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    double plain = r.rel_mse;
    for (const Result& o : results)
      if (o.layer == r.layer && o.format == r.format && o.method == "svdquant") plain = o.rel_mse;
    std::printf("| %s | %s | %s | %.4e | %.2f | %+.1f%% | %.2f | %s |\n", r.layer.c_str(), r.format.c_str(),
                r.method.c_str(), r.rel_mse, r.sqnr, 100.0 * (r.rel_mse / plain - 1.0), r.seconds,
                r.recipe.c_str());
  }
  if (!csv.empty()) {
    std::ofstream os(csv);
    os << "layer,format,method,rel_mse,sqnr_db,seconds,alpha,beta,notes,recipe\n";
    for (const Result& r : results)
      os << r.layer << ',' << r.format << ',' << r.method << ',' << r.rel_mse << ',' << r.sqnr << ','
         << r.seconds << ',' << r.alpha << ',' << r.beta << ",\"" << r.notes << "\"," << r.recipe << "\n";
  }
  return 0;
}
