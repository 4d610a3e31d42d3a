// mlp_engine — a minimal "inference engine" that links svdq: a transformer MLP block
//   y = fc2(GELU(fc1(x)))
// loaded from a quantized checkpoint written by `svdq quantize`, run through the prepared CPU
// layer (svdq::CpuLinear), and compared with the unquantized block.
//
//   mlp_engine make-model --model M.safetensors --rows R.safetensors [--heldout H.safetensors]
//   mlp_engine run --model M.safetensors --quantized Q.safetensors [--budget 0.01]
//
// Lifetimes: a QuantizedLinear is plain data, loaded once; a CpuLinear is prepared from it once,
// is immutable and can be shared by threads, each with its own workspace and outputs.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

constexpr int64_t kHidden = 384, kInner = 1536, kTokens = 256;

int fail(const svdq::Status& st) {
  std::fprintf(stderr, "mlp_engine: error: %s\n", st.to_string().c_str());
  return 1;
}

void gelu(std::vector<float>* v) {
  for (float& x : *v) x = 0.5f * x * (1.0f + std::erf(x * 0.70710678f));
}

template <typename T>
svdq::ByteSpan bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// Unquantized dense layer y = x W^T + b in fp32 via svdq's double reference.
std::vector<float> dense(const std::vector<float>& x, int64_t m, const std::vector<float>& w,
                         const std::vector<float>& b, int64_t n, int64_t k) {
  std::vector<double> y;
  (void)svdq::dense_forward(svdq::MatrixView<const float>(x.data(), m, k),
                            svdq::MatrixView<const float>(w.data(), n, k),
                            svdq::MatrixView<const float>(b.data(), 1, n), &y);
  return std::vector<float>(y.begin(), y.end());
}

int make_model(const std::string& model_path, const std::string& rows_path,
               const std::string& heldout_path) {
  // fc1: 384 -> 1536 and fc2: 1536 -> 384 drawn as DiT-like layers; an embedding and a norm
  // weight ride along so that `svdq quantize` has tensors to copy unchanged.
  svdq::synth::LayerSpec s1, s2;
  s1.in_features = kHidden, s1.out_features = kInner, s1.seed = 7;
  s2.in_features = kInner, s2.out_features = kHidden, s2.seed = 8;
  auto fc1 = svdq::synth::make_layer(s1);
  auto fc2 = svdq::synth::make_layer(s2);
  if (!fc1.ok()) return fail(fc1.status());
  if (!fc2.ok()) return fail(fc2.status());
  std::vector<float> embed(1000 * kHidden), norm(kHidden, 1.0f);
  for (size_t i = 0; i < embed.size(); ++i) embed[i] = std::sin(0.001f * static_cast<float>(i));
  svdq::SafetensorsWriter model;
  for (auto st : {model.add("mlp.fc1.weight", "F32", {kInner, kHidden}, bytes_of(fc1->weight)),
                  model.add("mlp.fc1.bias", "F32", {kInner}, bytes_of(fc1->bias)),
                  model.add("mlp.fc2.weight", "F32", {kHidden, kInner}, bytes_of(fc2->weight)),
                  model.add("mlp.fc2.bias", "F32", {kHidden}, bytes_of(fc2->bias)),
                  model.add("embed.weight", "F32", {1000, kHidden}, bytes_of(embed)),
                  model.add("norm.weight", "F32", {kHidden}, bytes_of(norm)), model.write(model_path)})
    if (!st.ok()) return fail(st);

  // Calibration rows: each layer's input in the unquantized block.
  const auto x = svdq::synth::make_activations(*fc1, kTokens, 100);
  auto h = dense(x, kTokens, fc1->weight, fc1->bias, kInner, kHidden);
  gelu(&h);
  svdq::SafetensorsWriter rows;
  for (auto st : {rows.add("mlp.fc1.inputs", "F32", {kTokens, kHidden}, bytes_of(x)),
                  rows.add("mlp.fc2.inputs", "F32", {kTokens, kInner}, bytes_of(h)),
                  rows.write(rows_path)})
    if (!st.ok()) return fail(st);
  if (!heldout_path.empty()) {  // other tokens of the same distribution, for `svdq eval`
    const auto xh = svdq::synth::make_activations(*fc1, 128, 300);
    auto hh = dense(xh, 128, fc1->weight, fc1->bias, kInner, kHidden);
    gelu(&hh);
    svdq::SafetensorsWriter held;
    for (auto st : {held.add("mlp.fc1.inputs", "F32", {128, kHidden}, bytes_of(xh)),
                    held.add("mlp.fc2.inputs", "F32", {128, kInner}, bytes_of(hh)),
                    held.write(heldout_path)})
      if (!st.ok()) return fail(st);
  }
  std::printf("wrote %s (fc1 %lldx%lld, fc2 %lldx%lld) and %s (%lld rows per layer)\n",
              model_path.c_str(), static_cast<long long>(kInner), static_cast<long long>(kHidden),
              static_cast<long long>(kHidden), static_cast<long long>(kInner), rows_path.c_str(),
              static_cast<long long>(kTokens));
  return 0;
}

int run(const std::string& model_path, const std::string& quant_path, double budget) {
  auto model = svdq::SafetensorsFile::open(model_path);
  if (!model.ok()) return fail(model.status());
  auto qfile = svdq::SafetensorsFile::open(quant_path);
  if (!qfile.ok()) return fail(qfile.status());
  auto q1 = svdq::load_quantized(*qfile, "mlp.fc1");
  if (!q1.ok()) return fail(q1.status());
  auto q2 = svdq::load_quantized(*qfile, "mlp.fc2");
  if (!q2.ok()) return fail(q2.status());

  // Unquantized reference block from the original model.
  std::vector<std::vector<float>> t;
  for (const char* name : {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}) {
    auto v = model->read_float(name);
    if (!v.ok()) return fail(v.status());
    t.push_back(std::move(*v));
  }
  svdq::synth::LayerSpec s1;
  s1.in_features = kHidden, s1.out_features = kInner, s1.seed = 7;
  const auto x = svdq::synth::make_activations(*svdq::synth::make_layer(s1), 64, 200);  // held out
  auto h_ref = dense(x, 64, t[0], t[1], kInner, kHidden);
  gelu(&h_ref);
  const auto y_ref = dense(h_ref, 64, t[2], t[3], kHidden, kInner);

  // The quantized block, in bf16 activations as an engine would run it.
  std::vector<svdq::bfloat16_t> xb(x.size()), hb(64 * kInner), yb(64 * kHidden);
  for (size_t i = 0; i < x.size(); ++i) xb[i] = svdq::bfloat16_t::from_float(x[i]);
  // Prepared once (an engine does this at load), one workspace for the larger of the two layers.
  auto fc1 = svdq::CpuLinear::create(*q1);
  if (!fc1.ok()) return fail(fc1.status());
  auto fc2 = svdq::CpuLinear::create(*q2);
  if (!fc2.ok()) return fail(fc2.status());
  const size_t bytes = std::max(fc1->workspace_size(64), fc2->workspace_size(64));
  std::unique_ptr<void, decltype(&std::free)> ws(std::aligned_alloc(64, (bytes + 63) / 64 * 64),
                                                 &std::free);
  constexpr int kThreads = 2;
  std::vector<float> h(64 * kInner);
  if (auto st = fc1->forward(svdq::MatrixView<const svdq::bfloat16_t>(xb.data(), 64, kHidden),
                             svdq::MatrixView<float>(h.data(), 64, kInner), 64, ws.get(), bytes, kThreads);
      !st.ok())
    return fail(st);
  gelu(&h);
  for (size_t i = 0; i < h.size(); ++i) hb[i] = svdq::bfloat16_t::from_float(h[i]);
  if (auto st = fc2->forward(svdq::MatrixView<const svdq::bfloat16_t>(hb.data(), 64, kInner),
                             svdq::MatrixView<svdq::bfloat16_t>(yb.data(), 64, kHidden), 64, ws.get(),
                             bytes, kThreads);
      !st.ok())
    return fail(st);
  const svdq::MatrixView<const svdq::bfloat16_t> yv(yb.data(), 64, kHidden);
  const svdq::MatrixView<const float> rv(y_ref.data(), 64, kHidden);
  const double rel = svdq::relative_mse(yv, rv);
  std::printf("MLP block (fc1 %s rank %d, fc2 %s rank %d), 64 held-out tokens, bf16 activations,\n"
              "prepared CPU layers: relMSE vs the unquantized block %.4e (SQNR %.2f dB), budget %.4g\n",
              svdq::format_name(q1->format), q1->rank, svdq::format_name(q2->format), q2->rank, rel,
              svdq::sqnr_db(yv, rv), budget);
  return rel <= budget ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mlp_engine: an MLP block from an svdq checkpoint, against the unquantized block"};
  app.require_subcommand(1);
  std::string model, rows, quant;
  double budget = 0.01;
  auto* mk = app.add_subcommand("make-model", "write a synthetic MLP block and its calibration rows");
  mk->add_option("--model", model, "model file to write")->required();
  mk->add_option("--rows", rows, "calibration rows file to write")->required();
  std::string heldout;
  mk->add_option("--heldout", heldout, "held-out rows file to write (for svdq eval)");
  auto* rn = app.add_subcommand("run", "run the quantized block and compare");
  rn->add_option("--model", model, "the unquantized model")->required()->check(CLI::ExistingFile);
  rn->add_option("--quantized", quant, "the checkpoint from svdq quantize")->required()->check(CLI::ExistingFile);
  rn->add_option("--budget", budget, "largest relMSE (||y_q - y||^2 / ||y||^2) accepted (exit 1 above)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (*mk) return make_model(model, rows, heldout);
  return run(model, quant, budget);
}
