// The GPU layer against the CPU reference and cuBLAS (ctest label "gpu"; every test skips without
// a CUDA device). Byte-equal activation codes and scales; output within 1e-3 of the reference on
// the same quantized operands (bit-equal at rank 0); the same quality budget as the CPU against
// a cuBLAS FP16 GEMM of the unquantized layer; streams, graphs, determinism, bad input.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

namespace {

// The contract's budget for kernel vs reference on the same quantized operands.
constexpr double kKernelVsReference = 1e-3;

#define SKIP_WITHOUT_GPU() \
  if (svdq::gpu_device_count() == 0) GTEST_SKIP() << "no CUDA device"

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&ptr, count * sizeof(T) + 256), cudaSuccess); }
  ~DeviceArray() { cudaFree(ptr); }
  void upload(const std::vector<T>& h) { ASSERT_EQ(cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

struct Case {
  svdq::Format format;
  svdq::DType dtype;
  int rank;
  int64_t m;
};

struct Fixture {
  int64_t k = 1024, n = 384;
  svdq::synth::Layer layer;
  svdq::ActivationStats stats;
  Fixture() {
    svdq::synth::LayerSpec spec;
    spec.in_features = k;
    spec.out_features = n;
    layer = *svdq::synth::make_layer(spec);
    const auto calib = svdq::synth::make_activations(layer, 256, 1);
    EXPECT_TRUE(stats.observe(svdq::MatrixView<const float>(calib.data(), 256, k)).ok());
  }
  svdq::QuantizedLinear quantize(svdq::Format f, int rank) const {
    svdq::QuantConfig c;
    c.format = f;
    c.rank = rank;
    return *svdq::quantize_linear(svdq::MatrixView<const float>(layer.weight.data(), n, k),
                                  svdq::vector_view<const float>(layer.bias.data(), n), &stats, c);
  }
  // 16-bit activations (bits) of M rows.
  std::vector<uint16_t> activations(int64_t m, svdq::DType dt, uint64_t seed = 2) const {
    const auto x = svdq::synth::make_activations(layer, m, seed);
    std::vector<uint16_t> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b[i] = svdq::float_to_bits16(x[i], dt);
    return b;
  }
};

const Fixture& fixture() {
  static Fixture f;
  return f;
}

svdq::ConstMatrixRef view16(const std::vector<uint16_t>& v, svdq::DType dt, int64_t rows, int64_t cols) {
  return svdq::ConstMatrixRef(v.data(), dt, rows, cols, cols);
}

// Runs the GPU layer on x; returns y (bits) and the quantized activations.
void run_gpu(const svdq::GpuLinear& g, const std::vector<uint16_t>& x, int64_t m, cudaStream_t s,
             std::vector<uint16_t>* y, svdq::QuantizedActivations* act) {
  DeviceArray<uint16_t> dx(x.size()), dy(static_cast<size_t>(m * g.out_features()));
  DeviceArray<uint8_t> ws(g.workspace_size(m));
  dx.upload(x);
  ASSERT_TRUE(g.forward(dx.ptr, dy.ptr, m, ws.ptr, ws.n, s).ok());
  if (act) ASSERT_TRUE(svdq::test_support::read_activations(g, ws.ptr, m, s, act).ok());
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  *y = dy.download();
}

double rel_err(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, svdq::DType dt, int64_t m, int64_t n) {
  return svdq::relative_error(view16(a, dt, m, n), view16(b, dt, m, n));
}

class GpuLayer : public ::testing::TestWithParam<Case> {};

TEST_P(GpuLayer, MatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const Fixture& f = fixture();
  const svdq::QuantizedLinear q = f.quantize(c.format, c.rank);
  auto g = svdq::GpuLinear::create(q, c.dtype);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  const auto x = f.activations(c.m, c.dtype);
  std::vector<uint16_t> y_gpu;
  svdq::QuantizedActivations act_gpu;
  run_gpu(*g, x, c.m, nullptr, &y_gpu, &act_gpu);

  std::vector<uint16_t> y_ref(static_cast<size_t>(c.m * f.n));
  svdq::QuantizedActivations act_ref;
  ASSERT_TRUE(svdq::test_support::reference_forward_with_activations(q, view16(x, c.dtype, c.m, f.k),
                                      svdq::MatrixRef(y_ref.data(), c.dtype, c.m, f.n, f.n), &act_ref).ok());
  EXPECT_EQ(act_gpu.codes, act_ref.codes) << "activation codes differ";
  EXPECT_EQ(act_gpu.scales, act_ref.scales) << "activation scales differ";
  if (c.rank == 0) {
    EXPECT_EQ(y_gpu, y_ref) << "rank 0 must match the reference bit for bit";
  } else {
    EXPECT_LE(rel_err(y_gpu, y_ref, c.dtype, c.m, f.n), kKernelVsReference);
  }
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (auto f : {svdq::Format::kInt4, svdq::Format::kNvfp4})
    for (auto dt : {svdq::DType::kBF16, svdq::DType::kF16}) {
      for (int64_t m : {1, 7, 44, 129, 1000, 4096}) v.push_back({f, dt, 32, m});
      for (int r : {0, 16, 64}) v.push_back({f, dt, r, 129});
    }
  return v;
}
INSTANTIATE_TEST_SUITE_P(All, GpuLayer, ::testing::ValuesIn(cases()));

TEST(GpuLayerQuality, SameBudgetAsTheCpuAgainstCublasFp16) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 256;
  const auto xh = f.activations(m, svdq::DType::kF16);
  // Unquantized layer with cuBLAS: y = x W^T + b, fp16 in, fp32 accumulate/out.
  std::vector<uint16_t> wh(f.layer.weight.size());
  for (size_t i = 0; i < wh.size(); ++i) wh[i] = svdq::float_to_half_bits(f.layer.weight[i]);
  DeviceArray<uint16_t> dx(xh.size()), dw(wh.size());
  DeviceArray<float> dy(static_cast<size_t>(m * f.n));
  dx.upload(xh);
  dw.upload(wh);
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: Y^T (n x m) = W (n x k, i.e. W^T col-major) * X^T (k x m).
  ASSERT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, f.n, m, f.k, &one, dw.ptr, CUDA_R_16F, f.k, dx.ptr,
                         CUDA_R_16F, f.k, &zero, dy.ptr, CUDA_R_32F, f.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  cublasDestroy(h);
  std::vector<float> y_dense = dy.download();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < f.n; ++j) y_dense[i * f.n + j] += f.layer.bias[j];
  const svdq::MatrixView<const float> dense(y_dense.data(), m, f.n);
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    const auto q = f.quantize(fmt, 32);
    auto g = svdq::GpuLinear::create(q, svdq::DType::kF16);
    ASSERT_TRUE(g.ok());
    std::vector<uint16_t> y_gpu, y_cpu(static_cast<size_t>(m * f.n));
    run_gpu(*g, xh, m, nullptr, &y_gpu, nullptr);
    ASSERT_TRUE(svdq::reference_forward(q, view16(xh, svdq::DType::kF16, m, f.k),
                                        svdq::MatrixRef(y_cpu.data(), svdq::DType::kF16, m, f.n, f.n)).ok());
    const double e_cpu = svdq::relative_error(view16(y_cpu, svdq::DType::kF16, m, f.n), dense);
    const double e_gpu = svdq::relative_error(view16(y_gpu, svdq::DType::kF16, m, f.n), dense);
    EXPECT_LE(e_gpu, e_cpu * 1.01 + 1e-4) << svdq::format_name(fmt);
    EXPECT_LT(e_cpu, 0.2);  // a W4A4 layer, not a broken one
  }
}

TEST(GpuLayerLaunch, SecondStreamGraphCaptureAndDeterminism) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 129;
  const auto q = f.quantize(svdq::Format::kInt4, 32);
  auto g = svdq::GpuLinear::create(q, svdq::DType::kBF16);
  ASSERT_TRUE(g.ok());
  const auto x = f.activations(m, svdq::DType::kBF16);
  std::vector<uint16_t> y0, y1;
  run_gpu(*g, x, m, nullptr, &y0, nullptr);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  run_gpu(*g, x, m, s, &y1, nullptr);
  EXPECT_EQ(y0, y1) << "default stream and a second stream differ";

  DeviceArray<uint16_t> dx(x.size()), dy(static_cast<size_t>(m * f.n));
  DeviceArray<uint8_t> ws(g->workspace_size(m));
  dx.upload(x);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_TRUE(g->forward(dx.ptr, dy.ptr, m, ws.ptr, ws.n, s).ok());
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int rep = 0; rep < 3; ++rep) {
    ASSERT_EQ(cudaMemsetAsync(dy.ptr, 0, dy.n * 2, s), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(dy.download(), y0) << "graph replay " << rep;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST(GpuLayerLaunch, NanRowStaysInItsRow) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 7;
  auto g = svdq::GpuLinear::create(f.quantize(svdq::Format::kNvfp4, 16), svdq::DType::kBF16);
  ASSERT_TRUE(g.ok());
  auto x = f.activations(m, svdq::DType::kBF16);
  std::vector<uint16_t> clean, dirty;
  run_gpu(*g, x, m, nullptr, &clean, nullptr);
  x[3 * f.k + 10] = 0x7FC0;  // bf16 NaN in row 3
  run_gpu(*g, x, m, nullptr, &dirty, nullptr);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < f.n; ++j) {
      const float v = svdq::bf16_bits_to_float(dirty[i * f.n + j]);
      if (i == 3) EXPECT_TRUE(std::isnan(v));
      else EXPECT_EQ(dirty[i * f.n + j], clean[i * f.n + j]);
    }
}

TEST(GpuLayerLaunch, BadInputIsAStatus) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  auto g = svdq::GpuLinear::create(f.quantize(svdq::Format::kInt4, 16), svdq::DType::kBF16);
  ASSERT_TRUE(g.ok());
  DeviceArray<uint16_t> dx(16 * f.k), dy(16 * f.n);
  DeviceArray<uint8_t> ws(g->workspace_size(16));
  EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 0, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorShape);
  EXPECT_EQ(g->forward(nullptr, dy.ptr, 16, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorNullPointer);
  EXPECT_EQ(g->forward(dx.ptr + 1, dy.ptr, 16, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorInvalidArgument);
  EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 16, ws.ptr, ws.n - 1, nullptr).code(), svdq::StatusCode::kErrorWorkspace);
  EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 16, nullptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorWorkspace);
  EXPECT_EQ(g->can_implement(16, svdq::DType::kF16).code(), svdq::StatusCode::kErrorInvalidArgument);
  EXPECT_FALSE(svdq::GpuLinear::create(f.quantize(svdq::Format::kInt4, 16), svdq::DType::kF32).ok());
}

TEST(GpuBuild, WithoutADeviceCreateSaysSo) {
  if (svdq::gpu_device_count() != 0) GTEST_SKIP() << "a device is present";
  auto g = svdq::GpuLinear::create(fixture().quantize(svdq::Format::kInt4, 0), svdq::DType::kBF16);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), svdq::StatusCode::kErrorNotSupported);
}

}  // namespace
