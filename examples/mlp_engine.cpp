// mlp_engine — a minimal "inference engine" that links svdq: a transformer MLP block
//   y = fc2(GELU(fc1(x)))
// loaded from a quantized checkpoint written by `svdq quantize`, run through the prepared GPU
// layer (svdq::GpuLinear) when a GPU is present, else the prepared CPU layer (svdq::CpuLinear),
// and compared with the unquantized block.
//
//   mlp_engine make-model --model M.safetensors --rows R.safetensors [--heldout H.safetensors]
//   mlp_engine run --model M.safetensors --quantized Q.safetensors [--budget 0.01] [--device auto]
//
// --device auto (default) runs on the GPU when this build has CUDA and a usable device, else on
// the CPU with a one-line note; gpu refuses to fall back; cpu never tries. On the GPU the two
// layers run as GpuLinear::forward in bf16 (GELU on the host: this example has no kernel of its
// own), and each layer's output is also compared with the CPU layer on the same input: within
// docs/gpu.md's bound (1e-3 relative), else exit 1.
//
// Lifetimes: a QuantizedLinear is plain data, loaded once; a CpuLinear or GpuLinear is prepared
// from it once, is immutable and can be shared by threads (streams), each with its own workspace
// and outputs.
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

#if SVDQ_EXAMPLE_CUDA
#include <cuda_runtime.h>  // the engine owns its device memory and stream
#endif

namespace {

constexpr int64_t kHidden = 384, kInner = 1536, kTokens = 256;

int fail(const svdq::Status& st) {
  std::fprintf(stderr, "mlp_engine: error: %s\n", st.to_string().c_str());
  return 1;
}

float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678f)); }
void gelu(std::vector<float>* v) {
  for (float& x : *v) x = gelu(x);
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

// The GPU side: whether a device can run the block, and the block on it.
constexpr double kGpuVsCpuBound = 1e-3;  // docs/gpu.md: GPU layer vs reference_forward, relative

/// "" when this build has CUDA and a device is visible, else why not (one line).
std::string gpu_unavailable(std::string* device) {
#if SVDQ_EXAMPLE_CUDA
  int count = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(e) + ", " +
           cudaGetErrorString(e) + ")";
  }
  if (count == 0) return "no CUDA device is visible";
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return "the CUDA device's properties cannot be read";
  }
  *device = std::string(prop.name) + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
  return "";
#else
  (void)device;
  return "this svdq was built without CUDA (SVDQ_ENABLE_CUDA=OFF)";
#endif
}

#if SVDQ_EXAMPLE_CUDA
svdq::Status cuda_status(const char* call, cudaError_t e) {
  (void)cudaGetLastError();
  return svdq::Status(svdq::StatusCode::kErrorCuda, std::string(call) + ": " + cudaGetErrorName(e));
}
#define ENGINE_CUDA(call)                                        \
  do {                                                           \
    const cudaError_t e_ = (call);                               \
    if (e_ != cudaSuccess) return cuda_status(#call, e_);        \
  } while (0)

struct DeviceBuffer {
  void* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

/// fc1 -> GELU -> fc2 for m rows of bf16 x. h: fc1's output as it left the GPU; hg: GELU(h), the
/// input of fc2; y: the block's output. GELU runs on the host (two copies over PCIe).
svdq::Status block_on_gpu(const svdq::GpuLinear& fc1, const svdq::GpuLinear& fc2,
                          const std::vector<svdq::bfloat16_t>& x, int64_t m,
                          std::vector<svdq::bfloat16_t>* h, std::vector<svdq::bfloat16_t>* hg,
                          std::vector<svdq::bfloat16_t>* y) {
  static_assert(sizeof(svdq::bfloat16_t) == 2);
  const int64_t k = fc1.in_features(), inner = fc1.out_features(), n = fc2.out_features();
  const size_t ws_bytes = std::max(fc1.workspace_size(m), fc2.workspace_size(m));
  DeviceBuffer dx, dh, dy, ws;
  cudaStream_t s = nullptr;
  ENGINE_CUDA(cudaMalloc(&dx.p, m * k * 2));
  ENGINE_CUDA(cudaMalloc(&dh.p, m * inner * 2));
  ENGINE_CUDA(cudaMalloc(&dy.p, m * n * 2));
  ENGINE_CUDA(cudaMalloc(&ws.p, ws_bytes));
  ENGINE_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const auto run = [&]() -> svdq::Status {
    h->resize(m * inner), hg->resize(m * inner), y->resize(m * n);
    ENGINE_CUDA(cudaMemcpyAsync(dx.p, x.data(), m * k * 2, cudaMemcpyHostToDevice, s));
    SVDQ_RETURN_IF_ERROR(fc1.forward(dx.p, dh.p, m, ws.p, ws_bytes, s));
    ENGINE_CUDA(cudaMemcpyAsync(h->data(), dh.p, m * inner * 2, cudaMemcpyDeviceToHost, s));
    ENGINE_CUDA(cudaStreamSynchronize(s));
    for (size_t i = 0; i < h->size(); ++i) (*hg)[i] = svdq::bfloat16_t::from_float(gelu((*h)[i].to_float()));
    ENGINE_CUDA(cudaMemcpyAsync(dh.p, hg->data(), m * inner * 2, cudaMemcpyHostToDevice, s));
    SVDQ_RETURN_IF_ERROR(fc2.forward(dh.p, dy.p, m, ws.p, ws_bytes, s));
    ENGINE_CUDA(cudaMemcpyAsync(y->data(), dy.p, m * n * 2, cudaMemcpyDeviceToHost, s));
    ENGINE_CUDA(cudaStreamSynchronize(s));
    return svdq::Status::Ok();
  };
  svdq::Status st = run();
  cudaStreamDestroy(s);
  return st;
}
#endif  // SVDQ_EXAMPLE_CUDA

/// The block on the GPU, each layer also checked against the CPU layer on the same input.
/// Returns the exit code, or -1 when the GPU cannot take these layers and `required` is false
/// (the caller falls back to the CPU; the reason was printed).
int run_on_gpu(const svdq::QuantizedLinear& q1, const svdq::QuantizedLinear& q2, const svdq::CpuLinear& c1,
               const svdq::CpuLinear& c2, const std::vector<svdq::bfloat16_t>& xb, int64_t m,
               const std::vector<float>& y_ref, double budget, const std::string& device, bool required) {
#if SVDQ_EXAMPLE_CUDA
  auto g1 = svdq::GpuLinear::create(q1, svdq::DType::kBF16);
  auto g2 = g1.ok() ? svdq::GpuLinear::create(q2, svdq::DType::kBF16) : svdq::Result<svdq::GpuLinear>(g1.status());
  if (!g2.ok()) {
    if (g2.status().code() != svdq::StatusCode::kErrorArchMismatch || required) return fail(g2.status());
    std::fprintf(stderr, "mlp_engine: the GPU (%s) has no svdq kernel (%s): running the block on the CPU\n",
                 device.c_str(), g2.status().message().c_str());
    return -1;
  }
  std::vector<svdq::bfloat16_t> h, hg, y;
  if (auto st = block_on_gpu(*g1, *g2, xb, m, &h, &hg, &y); !st.ok()) return fail(st);
  // The CPU layers on the same inputs: fc1 on x, fc2 on the GPU's GELU(h), both to bf16.
  std::vector<svdq::bfloat16_t> h_cpu(h.size()), y_cpu(y.size());
  const size_t bytes = std::max(c1.workspace_size(m), c2.workspace_size(m));
  std::unique_ptr<void, decltype(&std::free)> ws(std::aligned_alloc(64, (bytes + 63) / 64 * 64), &std::free);
  const int64_t k = q1.in_features, inner = q1.out_features, n = q2.out_features;
  if (auto st = c1.forward(svdq::MatrixView<const svdq::bfloat16_t>(xb.data(), m, k),
                           svdq::MatrixView<svdq::bfloat16_t>(h_cpu.data(), m, inner), m, ws.get(), bytes, 2);
      !st.ok())
    return fail(st);
  if (auto st = c2.forward(svdq::MatrixView<const svdq::bfloat16_t>(hg.data(), m, inner),
                           svdq::MatrixView<svdq::bfloat16_t>(y_cpu.data(), m, n), m, ws.get(), bytes, 2);
      !st.ok())
    return fail(st);
  using V = svdq::MatrixView<const svdq::bfloat16_t>;
  const double e1 = svdq::relative_error(V(h.data(), m, inner), V(h_cpu.data(), m, inner));
  const double e2 = svdq::relative_error(V(y.data(), m, n), V(y_cpu.data(), m, n));
  const svdq::MatrixView<const float> rv(y_ref.data(), m, n);
  const double rel = svdq::relative_mse(V(y.data(), m, n), rv);
  std::printf("MLP block (fc1 %s rank %d, fc2 %s rank %d), %lld held-out tokens, bf16 activations,\n"
              "on the GPU (%s; GpuLinear, GELU on the host): relMSE vs the unquantized block %.4e "
              "(SQNR %.2f dB), budget %.4g\n"
              "GPU vs CPU layers on the same inputs: fc1 rel. error %.3e, fc2 rel. error %.3e (bound %.0e)\n",
              svdq::format_name(q1.format), q1.rank, svdq::format_name(q2.format), q2.rank,
              static_cast<long long>(m), device.c_str(), rel, svdq::sqnr_db(V(y.data(), m, n), rv), budget, e1, e2,
              kGpuVsCpuBound);
  if (!(e1 <= kGpuVsCpuBound && e2 <= kGpuVsCpuBound)) {
    std::fprintf(stderr, "mlp_engine: error: the GPU layers depart from the CPU layers by more than %.0e\n",
                 kGpuVsCpuBound);
    return 1;
  }
  return rel <= budget ? 0 : 1;
#else
  (void)q1, (void)q2, (void)c1, (void)c2, (void)xb, (void)m, (void)y_ref, (void)budget, (void)device, (void)required;
  return -1;
#endif
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

int run(const std::string& model_path, const std::string& quant_path, double budget, const std::string& mode) {
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
  if (mode != "cpu") {  // the GPU when there is one (--device auto), or only the GPU (--device gpu)
    std::string device;
    const std::string why = gpu_unavailable(&device);
    if (why.empty()) {
      const int rc = run_on_gpu(*q1, *q2, *fc1, *fc2, xb, 64, y_ref, budget, device, mode == "gpu");
      if (rc >= 0) return rc;
    } else if (mode == "gpu") {
      return fail(svdq::Status(svdq::StatusCode::kErrorNotSupported, "--device gpu: " + why));
    } else {
      std::fprintf(stderr, "mlp_engine: %s: running the block on the CPU\n", why.c_str());
    }
  }
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
  std::string device = "auto";
  rn->add_option("--device", device, "auto: the GPU when present, else the CPU; gpu: the GPU or an error; cpu")
      ->check(CLI::IsMember({"auto", "gpu", "cpu"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (*mk) return make_model(model, rows, heldout);
  return run(model, quant, budget, device);
}
