// mlp_engine — a minimal "inference engine" that links svdq: a transformer MLP block
//   y = fc2(GELU(fc1(x)))
// loaded from a quantized checkpoint written by `svdq quantize`, run on the CPU reference
// forward, and compared with the unquantized block.
//
//   mlp_engine make-model --model M.safetensors --rows R.safetensors   (a synthetic block + rows)
//   mlp_engine run --model M.safetensors --quantized Q.safetensors [--budget 0.1]
//
// Lifetimes: a QuantizedLinear is plain data, loaded once and shared read-only by every thread;
// reference_forward keeps no state, so concurrent calls on different outputs are safe.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
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

int make_model(const std::string& model_path, const std::string& rows_path) {
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
  std::vector<float> h(64 * kInner);
  if (auto st = svdq::reference_forward(*q1, svdq::MatrixView<const svdq::bfloat16_t>(xb.data(), 64, kHidden),
                                        svdq::MatrixView<float>(h.data(), 64, kInner));
      !st.ok())
    return fail(st);
  gelu(&h);
  for (size_t i = 0; i < h.size(); ++i) hb[i] = svdq::bfloat16_t::from_float(h[i]);
  if (auto st = svdq::reference_forward(*q2, svdq::MatrixView<const svdq::bfloat16_t>(hb.data(), 64, kInner),
                                        svdq::MatrixView<svdq::bfloat16_t>(yb.data(), 64, kHidden));
      !st.ok())
    return fail(st);
  const double err = svdq::relative_error(svdq::MatrixView<const svdq::bfloat16_t>(yb.data(), 64, kHidden),
                                          svdq::MatrixView<const float>(y_ref.data(), 64, kHidden));
  std::printf("MLP block (fc1 %s rank %d, fc2 %s rank %d), 64 held-out tokens, bf16 activations:\n"
              "  relative error vs the unquantized block %.5f (SQNR %.2f dB), budget %.3f\n",
              svdq::format_name(q1->format), q1->rank, svdq::format_name(q2->format), q2->rank, err,
              -20 * std::log10(err), budget);
  return err <= budget ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mlp_engine: an MLP block from an svdq checkpoint, against the unquantized block"};
  app.require_subcommand(1);
  std::string model, rows, quant;
  double budget = 0.1;
  auto* mk = app.add_subcommand("make-model", "write a synthetic MLP block and its calibration rows");
  mk->add_option("--model", model, "model file to write")->required();
  mk->add_option("--rows", rows, "calibration rows file to write")->required();
  auto* rn = app.add_subcommand("run", "run the quantized block and compare");
  rn->add_option("--model", model, "the unquantized model")->required()->check(CLI::ExistingFile);
  rn->add_option("--quantized", quant, "the checkpoint from svdq quantize")->required()->check(CLI::ExistingFile);
  rn->add_option("--budget", budget, "largest relative error accepted (exit 1 above)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (*mk) return make_model(model, rows);
  return run(model, quant, budget);
}
