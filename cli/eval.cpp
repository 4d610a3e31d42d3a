// `svdq eval MODEL QUANT ROWS`: the quantized layers of QUANT against the unquantized layers of
// MODEL on held-out input rows (ROWS: '<layer>.inputs' [M, K] tensors, as `svdq calibrate` reads).
//
// Metric (the one svdq uses everywhere, docs/quality.md): per layer, in double,
//   relMSE = ||y_q - y||_F^2 / ||y||_F^2,   SQNR dB = -10 log10(relMSE)
// with y_q the W4A4 layer (the prepared CPU layer, bit-identical to reference_forward) and y the
// unquantized layer in double, bias included; the total pools the sums over every layer.
// Verdict (documented in docs/cli.md): worst layer relMSE <= 0.01 (SQNR >= 20 dB) "good",
// <= 0.05 (>= 13 dB) "fair", else "poor"; exit code 0, 0, 2.
#include "eval.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "svdq/svdq.hpp"

namespace svdq_cli {

namespace {

struct EvalArgs {
  std::string model, quant, rows, suffix = ".inputs";
  int64_t max_rows = 4096;
  int threads = 2;
  bool allow_calib_rows = false;
};

int fail(const std::string& what) {
  std::fprintf(stderr, "svdq: error: %s\n", what.c_str());
  return 1;
}

const char* grade(double rel) {
  if (!(rel <= 0.05)) return "poor";
  return rel <= 0.01 ? "good" : "fair";
}

double sqnr(double rel) { return rel > 0 ? -10.0 * std::log10(rel) : INFINITY; }

std::vector<uint64_t> decode_fingerprints(const std::string& s) {
  std::vector<uint64_t> out;
  for (size_t i = 0; i + 16 <= s.size(); i += 16)
    out.push_back(std::strtoull(s.substr(i, 16).c_str(), nullptr, 16));
  return out;
}

int run_eval(const EvalArgs& a) {
  auto model = svdq::SafetensorsFile::open(a.model);
  if (!model.ok()) return fail(model.status().to_string());
  auto quant = svdq::SafetensorsFile::open(a.quant);
  if (!quant.ok()) return fail(quant.status().to_string());
  auto rows = svdq::SafetensorsFile::open(a.rows);
  if (!rows.ok()) return fail(rows.status().to_string());
  auto layers = svdq::quantized_layers(*quant);
  if (!layers.ok()) return fail(layers.status().to_string());
  if (layers->empty()) return fail(a.quant + " has no quantized layer");

  std::printf("svdq eval: %s vs %s on held-out rows %s\n", a.quant.c_str(), a.model.c_str(),
              a.rows.c_str());
  std::printf("  relMSE = ||y_q - y||^2 / ||y||^2 against the unquantized layer (double), "
              "SQNR dB = -10 log10 relMSE\n");
  std::printf("  %-40s %-13s %6s %11s %9s %7s  %s\n", "layer", "shape (NxK)", "rows", "relMSE",
              "SQNR dB", "bits/w", "verdict");
  double err_all = 0, ref_all = 0, worst = 0;
  int64_t q_bytes = 0, q_weights = 0;
  int evaluated = 0;
  std::vector<std::string> missing;
  for (const std::string& name : *layers) {
    const std::string rows_name = name + a.suffix;
    if (!rows->contains(rows_name)) {
      missing.push_back(name);
      continue;
    }
    auto q = svdq::load_quantized(*quant, name);
    if (!q.ok()) return fail("layer " + name + ": " + q.status().to_string());
    const int64_t n = q->out_features, k = q->in_features;
    const auto info = rows->info(rows_name);
    if (info->shape.size() != 2 || info->shape[1] != k)
      return fail(rows_name + " must be a [rows, " + std::to_string(k) + "] tensor");
    auto x = rows->read_float(rows_name);
    if (!x.ok()) return fail(rows_name + ": " + x.status().to_string());
    const int64_t m = std::min<int64_t>(info->shape[0], a.max_rows);
    if (m == 0) return fail(rows_name + " has no rows");

    // Refuse calibration rows (what can be told: a row identical, bit for bit after conversion to
    // fp32, to one that `svdq calibrate` read for this layer; see docs/cli.md).
    if (auto it = quant->metadata().find(calib_rows_key(name)); it != quant->metadata().end()) {
      std::vector<uint64_t> seen = decode_fingerprints(it->second);
      std::sort(seen.begin(), seen.end());
      int64_t dup = 0;
      for (int64_t i = 0; i < m; ++i)
        dup += std::binary_search(seen.begin(), seen.end(), row_fingerprint(x->data() + i * k, k));
      if (dup > 0 && !a.allow_calib_rows)
        return fail("layer " + name + ": " + std::to_string(dup) + " of the " + std::to_string(m) +
                    " rows in " + a.rows + " were used for calibration (" + a.quant +
                    " records their fingerprints); evaluate on held-out rows, or pass "
                    "--allow-calibration-rows to measure the calibration error on purpose");
    }
    auto w = model->read_float(name + ".weight");
    if (!w.ok()) return fail("the unquantized weight " + name + ".weight: " + w.status().to_string());
    if (static_cast<int64_t>(w->size()) != n * k)
      return fail(name + ".weight in " + a.model + " is not " + std::to_string(n) + " x " +
                  std::to_string(k));
    std::vector<float> bias;
    if (model->contains(name + ".bias")) {
      auto b = model->read_float(name + ".bias");
      if (b.ok() && static_cast<int64_t>(b->size()) == n) bias = std::move(*b);
    }
    auto layer = svdq::CpuLinear::create(*q);
    if (!layer.ok()) return fail("layer " + name + ": " + layer.status().to_string());
    const size_t bytes = layer->workspace_size(m);
    std::unique_ptr<void, decltype(&std::free)> ws(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64),
                                                  &std::free);
    std::vector<float> y(static_cast<size_t>(m * n));
    const svdq::MatrixView<const float> xv(x->data(), m, k);
    if (svdq::Status st = layer->forward(xv, svdq::MatrixView<float>(y.data(), m, n), m, ws.get(),
                                         bytes, a.threads);
        !st.ok())
      return fail("layer " + name + ": " + st.to_string());
    std::vector<double> ref;
    const svdq::ConstMatrixRef bv =
        bias.empty() ? svdq::ConstMatrixRef() : svdq::ConstMatrixRef(svdq::vector_view<const float>(bias.data(), n));
    if (svdq::Status st = svdq::dense_forward(xv, svdq::MatrixView<const float>(w->data(), n, k), bv, &ref);
        !st.ok())
      return fail("layer " + name + ": " + st.to_string());
    double e = 0, r = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double d = static_cast<double>(y[i]) - ref[i];
      e += d * d;
      r += ref[i] * ref[i];
    }
    const double rel = r > 0 ? e / r : (e == 0 ? 0.0 : INFINITY);
    err_all += e;
    ref_all += r;
    worst = std::isnan(rel) ? rel : std::max(worst, rel);
    q_bytes += q->size_bytes();
    q_weights += n * k;
    ++evaluated;
    std::printf("  %-40s %-13s %6lld %11.4e %9.2f %7.3f  %s\n", name.c_str(),
                (std::to_string(n) + "x" + std::to_string(k)).c_str(), static_cast<long long>(m), rel,
                sqnr(rel), q->bits_per_weight(), grade(rel));
  }
  for (const std::string& s : missing)
    std::printf("  %-40s (no '%s%s' rows in %s: not evaluated)\n", s.c_str(), s.c_str(),
                a.suffix.c_str(), a.rows.c_str());
  if (evaluated == 0) return fail("no quantized layer of " + a.quant + " has rows in " + a.rows);
  const double total = ref_all > 0 ? err_all / ref_all : 0.0;
  std::printf("total: %d layer(s), pooled relMSE %.4e (SQNR %.2f dB), worst layer relMSE %.4e, "
              "%.3f bits per weight\n",
              evaluated, total, sqnr(total), worst,
              8.0 * static_cast<double>(q_bytes) / static_cast<double>(q_weights));
  const char* g = grade(worst);
  std::printf("verdict: %s (worst layer relMSE %.4e; good <= 1e-2, fair <= 5e-2, poor above)%s\n", g,
              worst, missing.empty() ? "" : "; some layers were not evaluated");
  return std::string(g) == "poor" ? 2 : 0;
}

}  // namespace

uint64_t row_fingerprint(const float* row, int64_t k) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int64_t j = 0; j < k; ++j) {
    uint32_t u;
    std::memcpy(&u, row + j, 4);
    for (int b = 0; b < 4; ++b) {
      h ^= (u >> (8 * b)) & 0xFFu;
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

void add_row_fingerprints(const std::vector<float>& rows, int64_t m, int64_t k,
                          std::vector<uint64_t>* hashes) {
  for (int64_t i = 0; i < m; ++i) hashes->push_back(row_fingerprint(rows.data() + i * k, k));
}

std::string encode_fingerprints(std::vector<uint64_t> hashes) {
  std::sort(hashes.begin(), hashes.end());
  hashes.erase(std::unique(hashes.begin(), hashes.end()), hashes.end());
  std::string s;
  s.reserve(hashes.size() * 16);
  char buf[17];
  for (uint64_t h : hashes) {
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    s += buf;
  }
  return s;
}

std::function<int()> add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand(
      "eval", "error of each quantized layer on held-out rows vs the unquantized layer, and a verdict");
  cmd->add_option("model", a->model, "the unquantized model (.safetensors)")->required()->check(CLI::ExistingFile);
  cmd->add_option("quant", a->quant, "the file `svdq quantize` wrote")->required()->check(CLI::ExistingFile);
  cmd->add_option("rows", a->rows, "held-out input rows ('<layer>.inputs' [M, K] tensors)")
      ->required()->check(CLI::ExistingFile);
  cmd->add_option("--suffix", a->suffix, "tensor name suffix of the row tensors")->capture_default_str();
  cmd->add_option("--max-rows", a->max_rows, "rows used per layer (the first ones)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24))->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of the layer forward")->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_flag("--allow-calibration-rows", a->allow_calib_rows,
                "evaluate even on rows used for calibration (the error is then optimistic)");
  return [a, cmd]() { return *cmd ? run_eval(*a) : -1; };
}

}  // namespace svdq_cli
