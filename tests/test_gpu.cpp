// The GPU layer against the CPU reference, on two backends from this one source (docs/gpu.md):
//   * test_gpu (SVDQ_TEST_BACKEND_CUDA, ctest label "gpu"): svdq::GpuLinear on a CUDA device;
//     every test skips without one;
//   * test_gpu_emu (SVDQ_TEST_BACKEND_EMU, labels "emu" and "cpu"): the same kernels and host
//     logic on the emulated device (cuda/emu/), which runs everywhere, with smaller shapes.
// Byte-equal activation codes and scales; output within 1e-3 of the reference on the same
// quantized operands (bit-equal at rank 0 for finite outputs; NaN compares as NaN: the device
// writes 0x7FFF, the CPU 0x7E00 / 0x7FC0); the same quality budget as the CPU against a dense
// FP16 GEMM of the unquantized layer (cuBLAS on the device, float64 on the host for the emulation);
// streams, graphs, determinism, M limits, bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <utility>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

#include "gpu_check.hpp"  // the backend (memory, copies, skip) and the comparison with the reference

#if defined(SVDQ_TEST_BACKEND_EMU)
#include "linear_host.hpp"
#else
#include <cublas_v2.h>
#endif

namespace {

using namespace svdq_test;  // NOLINT: the shared test backend and checks (tests/gpu_check.hpp)

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { ptr = static_cast<T*>(dev_alloc(count * sizeof(T))); }
  ~DeviceArray() { dev_free(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void upload(const std::vector<T>& h) { to_dev(ptr, h.data(), h.size() * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    to_host(h.data(), ptr, n * sizeof(T));
    return h;
  }
};

struct Case {
  svdq::Format format;
  svdq::DType dtype;
  int rank;
  int64_t m;
  int sm = 0;  // emulated backend: the device's compute capability, which picks kernel 2 (0: dp4a)
};

// The emulated device runs kernel 2's every path (cuda/dispatch.hpp): 0 = dp4a (CUDA cores),
// 80 = mma.s4 (sm_80/86/89), 90 = s4 -> s8 + mma.s8 (sm_90). A CUDA device runs its own path (0)
// and the sm_80 kernel's s4 mma (80, forced through test_support::create_on_gemm_path: on an
// H200 that is issue 9's "sm_80 s4 kernel's correctness cases", the s4 mma emulated by Hopper;
// on sm_80/86/89 it is the device's own path again).
const std::vector<int>& arch_params() {
  static const std::vector<int> v = kEmu ? std::vector<int>{0, 80, 90} : std::vector<int>{0, 80};
  return v;
}

// On a CUDA device: the kernel-2 path (cuda/dispatch.hpp's name) that `sm` != 0 forces.
const char* forced_path_name(int sm) { return sm >= 90 ? "mma_s8" : "mma_s4"; }

svdq::Result<Linear> make_linear(const svdq::QuantizedLinear& q, svdq::DType dt, int sm) {
#if defined(SVDQ_TEST_BACKEND_EMU)
  return Linear::create(q, dt, -1, sm);
#else
  if (sm == 0) return Linear::create(q, dt);
  return svdq::test_support::create_on_gemm_path(q, dt, forced_path_name(sm), -1);
#endif
}

#if !defined(SVDQ_TEST_BACKEND_EMU)
// The current device's compute capability as 10 * major + minor (0 without a device), read once.
int device_sm() {
  static const int sm = [] {
    int dev = 0;
    cudaDeviceProp prop{};
    if (svdq::gpu_device_count() == 0 || cudaGetDevice(&dev) != cudaSuccess ||
        cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
      return 0;
    return 10 * prop.major + prop.minor;
  }();
  return sm;
}
#endif

// A case on a forced path that is the device's own path anyway (mma_s4 on sm_80/86/89) repeats
// its unforced twin: such cases are skipped.
bool forced_path_repeats_the_devices_own(int sm) {
#if defined(SVDQ_TEST_BACKEND_EMU)
  (void)sm;
  return false;
#else
  return sm == 80 && device_sm() < 90;
#endif
}

struct Fixture {
  // The emulated device runs every CTA's 256 threads as fibers with checked shared accesses:
  // smaller shapes keep the emu suite fast under ASan (N = 160 also gives a ragged N tile).
  int64_t k = kEmu ? 512 : 1024, n = kEmu ? 160 : 384;
  svdq::synth::Layer layer;
  svdq::ActivationStats stats;
  Fixture() : Fixture(kEmu ? 512 : 1024, kEmu ? 160 : 384) {}
  Fixture(int64_t k_, int64_t n_) : k(k_), n(n_) {
    svdq::synth::LayerSpec spec;
    spec.in_features = k;
    spec.out_features = n;
    layer = *svdq::synth::make_layer(spec);
    const auto calib = svdq::synth::make_activations(layer, 256, 1);
    EXPECT_TRUE(stats.observe(svdq::MatrixView<const float>(calib.data(), 256, k)).ok());
  }
  // Memoized: every (format, rank) is quantized once per process (cases share layers across
  // paths, dtypes and M). gtest runs the tests of one process on one thread.
  const svdq::QuantizedLinear& quantize(svdq::Format f, int rank) const {
    auto& slot = cache_[{static_cast<int>(f), rank}];
    if (!slot) slot = std::make_unique<svdq::QuantizedLinear>(quantize_uncached(f, rank));
    return *slot;
  }
  mutable std::map<std::pair<int, int>, std::unique_ptr<svdq::QuantizedLinear>> cache_;
  svdq::QuantizedLinear quantize_uncached(svdq::Format f, int rank) const {
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

// Runs the layer on x; returns y (bits) and the quantized activations.
void run_gpu(const Linear& g, const std::vector<uint16_t>& x, int64_t m, Stream s, std::vector<uint16_t>* y,
             svdq::QuantizedActivations* act) {
  DeviceArray<uint16_t> dx(x.size()), dy(static_cast<size_t>(m * g.out_features()));
  DeviceArray<uint8_t> ws(g.workspace_size(m));
  dx.upload(x);
  const svdq::Status st = g.forward(dx.ptr, dy.ptr, m, ws.ptr, ws.n, s);
  ASSERT_TRUE(st.ok()) << st.to_string();
#if defined(SVDQ_TEST_BACKEND_EMU)
  if (act) ASSERT_TRUE(g.read_activations(ws.ptr, m, s, act).ok());
#else
  if (act) ASSERT_TRUE(svdq::test_support::read_activations(g, ws.ptr, m, s, act).ok());
#endif
  sync(s);
  *y = dy.download();
}

// One run of layer q on path `sm` against the reference (tests/gpu_check.hpp): activation codes
// and scales byte-equal, their kind (signed / unsigned) the layer's, y bit-equal at rank 0 or within
// the budget, NaN as NaN. `nan_outputs` (optional): how many reference outputs are NaN.
void check_layer(const svdq::QuantizedLinear& q, svdq::DType dt, int sm, const std::vector<uint16_t>& x, int64_t m,
                 size_t* nan_outputs = nullptr) {
  auto g = make_linear(q, dt, sm);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  std::vector<uint16_t> y_gpu;
  svdq::QuantizedActivations act_gpu;
  ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, nullptr, &y_gpu, &act_gpu));
  Reference ref;
  ASSERT_NO_FATAL_FAILURE(expect_matches_reference(q, x, dt, m, act_gpu.codes, act_gpu.scales, y_gpu, &ref));
  EXPECT_EQ(act_gpu.unsigned_codes, q.act_unsigned);
  if (nan_outputs != nullptr)
    *nan_outputs = static_cast<size_t>(
        std::count_if(ref.y.begin(), ref.y.end(), [&](uint16_t v) { return std::isnan(svdq::bits16_to_float(v, dt)); }));
}

// The test-name suffix of path `sm` (emulated: every path by its sm; a device: its own path has
// none, a forced one its name). Names must be unique: gtest refuses the whole suite else.
std::string path_suffix(int sm) {
  if (kEmu) return "_sm" + std::to_string(sm);
  return sm == 0 ? std::string() : std::string("_") + forced_path_name(sm);
}

class GpuLayer : public ::testing::TestWithParam<Case> {};

TEST_P(GpuLayer, MatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  if (forced_path_repeats_the_devices_own(c.sm)) GTEST_SKIP() << "mma_s4 is this device's own path";
  const Fixture& f = fixture();
  check_layer(f.quantize(c.format, c.rank), c.dtype, c.sm, f.activations(c.m, c.dtype), c.m);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (int sm : arch_params())
    for (auto f : {svdq::Format::kInt4, svdq::Format::kNvfp4})
      for (auto dt : {svdq::DType::kBF16, svdq::DType::kF16}) {
        for (int64_t m : {1, 7, 44, 129}) v.push_back({f, dt, 32, m, sm});
        if (!kEmu && sm == 0)  // large M on the device's own path (the forced one: up to 129)
          for (int64_t m : {1000, 4096}) v.push_back({f, dt, 32, m, sm});
        for (int r : {0, 16, 64}) v.push_back({f, dt, r, 129, sm});
        v.push_back({f, dt, 128, kEmu ? 44 : 129, sm});  // kernel 1's emulated rank-128 down-projection is slow
        v.push_back({f, dt, 0, 7, sm});
      }
  return v;
}
std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(svdq::format_name(c.format)) + "_" + svdq::dtype_name(c.dtype) + "_r" + std::to_string(c.rank) +
         "_m" + std::to_string(c.m) + path_suffix(c.sm);
}
INSTANTIATE_TEST_SUITE_P(All, GpuLayer, ::testing::ValuesIn(cases()), case_name);

// The dense FP16 layer y = x W^T + b (fp16 x and W, fp32 accumulation and output): cuBLAS on the
// device; on the emulated backend a float64 host GEMM of the same fp16 operands.
std::vector<float> dense_fp16_layer(const Fixture& f, const std::vector<uint16_t>& xh, int64_t m) {
  std::vector<uint16_t> wh(f.layer.weight.size());
  for (size_t i = 0; i < wh.size(); ++i) wh[i] = svdq::float_to_half_bits(f.layer.weight[i]);
  std::vector<float> y(static_cast<size_t>(m * f.n));
#if defined(SVDQ_TEST_BACKEND_EMU)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < f.n; ++j) {
      double acc = 0;
      for (int64_t kk = 0; kk < f.k; ++kk)
        acc += static_cast<double>(svdq::half_bits_to_float(xh[i * f.k + kk])) *
               svdq::half_bits_to_float(wh[j * f.k + kk]);
      y[i * f.n + j] = static_cast<float>(acc);
    }
#else
  DeviceArray<uint16_t> dx(xh.size()), dw(wh.size());
  DeviceArray<float> dy(static_cast<size_t>(m * f.n));
  dx.upload(xh);
  dw.upload(wh);
  cublasHandle_t h;
  EXPECT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: Y^T (n x m) = W (n x k, i.e. W^T col-major) * X^T (k x m).
  EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, f.n, m, f.k, &one, dw.ptr, CUDA_R_16F, f.k, dx.ptr,
                         CUDA_R_16F, f.k, &zero, dy.ptr, CUDA_R_32F, f.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  cublasDestroy(h);
  y = dy.download();
#endif
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < f.n; ++j) y[i * f.n + j] += f.layer.bias[j];
  return y;
}

TEST(GpuLayerQuality, SameBudgetAsTheCpuAgainstADenseFp16Layer) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = kEmu ? 64 : 256;
  const auto xh = f.activations(m, svdq::DType::kF16);
  const std::vector<float> y_dense = dense_fp16_layer(f, xh, m);
  const svdq::MatrixView<const float> dense(y_dense.data(), m, f.n);
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    const auto q = f.quantize(fmt, 32);
    auto g = Linear::create(q, svdq::DType::kF16);
    ASSERT_TRUE(g.ok());
    std::vector<uint16_t> y_gpu, y_cpu(static_cast<size_t>(m * f.n));
    ASSERT_NO_FATAL_FAILURE(run_gpu(*g, xh, m, nullptr, &y_gpu, nullptr));
    ASSERT_TRUE(svdq::reference_forward(q, view16(xh, svdq::DType::kF16, m, f.k),
                                        svdq::MatrixRef(y_cpu.data(), svdq::DType::kF16, m, f.n, f.n)).ok());
    const double e_cpu = svdq::relative_error(view16(y_cpu, svdq::DType::kF16, m, f.n), dense);
    const double e_gpu = svdq::relative_error(view16(y_gpu, svdq::DType::kF16, m, f.n), dense);
    EXPECT_LE(e_gpu, e_cpu * 1.01 + 1e-4) << svdq::format_name(fmt);
    EXPECT_LT(e_cpu, 0.2);  // a W4A4 layer, not a broken one
  }
}

// Shapes the main fixture does not reach: an nvfp4 K that is not a multiple of the 64-k stage
// (a tail stage of fewer than 4 groups), a ragged N tile, and ranks that are not multiples of 8.
// On both backends (a device: its own path and mma_s4).
TEST(GpuLayerRepack, KTailRaggedNAndOddRanksOnEveryPath) {
  SKIP_WITHOUT_GPU();
  const Fixture f(208, 72);
  const int64_t m = 21;
  for (int sm : arch_params())
    for (int rank : {0, 5, 24}) {
      SCOPED_TRACE("sm " + std::to_string(sm) + " rank " + std::to_string(rank));
      ASSERT_NO_FATAL_FAILURE(check_layer(f.quantize(svdq::Format::kNvfp4, rank), svdq::DType::kF16, sm,
                                          f.activations(m, svdq::DType::kF16), m));
    }
}

#if defined(SVDQ_TEST_BACKEND_EMU)
// The emulated device's counterpart of the stream / graph test: the result does not depend on
// the interleaving of the CTAs' threads nor on the order of the CTAs (seeds).
TEST(GpuLayerLaunch, DeterministicUnderEveryInterleaving) {
  const Fixture& f = fixture();
  const int64_t m = 70;
  for (int sm : arch_params())
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    SCOPED_TRACE("sm " + std::to_string(sm));
    auto g = make_linear(f.quantize(fmt, 16), svdq::DType::kBF16, sm);
    ASSERT_TRUE(g.ok());
    const auto x = f.activations(m, svdq::DType::kBF16);
    std::vector<uint16_t> y0, y1;
    ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, nullptr, &y0, nullptr));
    for (uint64_t seed : {2, 3}) {
      svdq::emu::LaunchOptions o;
      o.seed = seed;
      o.preempt_one_in = 61;  // also switch threads between shared accesses
      g->set_options(o);
      ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, nullptr, &y1, nullptr));
      EXPECT_EQ(y0, y1) << "seed " << seed;
    }
  }
}

// The launch configuration of the host logic shared by both backends stays inside CUDA's grid
// limits for every M that can_implement accepts (M tiles on gridDim.x: once ceil(M/64) was on
// gridDim.y, whose limit 65535 made forward fail for M > 4,194,240 after kernel 1 had run).
TEST(GpuLayerLaunch, GridsFitTheDeviceLimitsForEveryAcceptedM) {
  const Fixture& f = fixture();
  auto plan = svdq::cuda::make_plan(f.quantize(svdq::Format::kInt4, 0), svdq::DType::kBF16, "test");
  ASSERT_TRUE(plan.ok());
  for (int64_t m : {int64_t{1}, int64_t{4194240}, int64_t{4194241}, int64_t{1} << 30, (int64_t{1} << 31) - 1}) {
    ASSERT_TRUE(svdq::cuda::can_implement(&*plan, m, svdq::DType::kBF16, "test").ok()) << m;
    svdq::cuda::Dim q, g;
    svdq::cuda::grids(*plan, m, &q, &g);
    EXPECT_EQ(static_cast<int64_t>(q.x), (m + svdq::cuda::kQuantRows - 1) / svdq::cuda::kQuantRows);  // kernel 1: 16 rows per CTA
    EXPECT_EQ(static_cast<int64_t>(g.x) * svdq::cuda::kBlkM, (m + 63) / 64 * 64) << m;
    EXPECT_LE(g.y, 65535u);
    EXPECT_LE(static_cast<int64_t>(g.x), svdq::cuda::kMaxGridX);
    // The emulated runtime applies the device's limits: such a grid is accepted.
    svdq::emu::LaunchOptions check;
    check.configuration_only = true;
    EXPECT_EQ(svdq::emu::launch("gemm", dim3(g.x, g.y, g.z), dim3(svdq::cuda::kGemmThreads), 0, check, [] {}), "") << m;
    EXPECT_EQ(svdq::emu::launch("quantize", dim3(q.x, q.y, q.z), dim3(svdq::cuda::kQuantThreads), 0, check, [] {}), "") << m;
  }
  EXPECT_FALSE(svdq::cuda::can_implement(&*plan, int64_t{1} << 31, svdq::DType::kBF16, "test").ok());
  // The old mapping's grid is refused by the runtime, as by the device.
  EXPECT_NE(svdq::emu::launch("old", dim3(3, 65536), dim3(1), 0, {}, [] {}).find("invalid launch configuration"),
            std::string::npos);
  // And out_features whose N tiles would not fit gridDim.y are refused at create (a layer that
  // large is not built here: the rule is checked on the plan's limit).
  EXPECT_EQ(svdq::cuda::kMaxGridYZ * svdq::cuda::kBlkN, 4194240);
}

// Kernel 2's path comes from one table (cuda/dispatch.hpp); an architecture without a kernel is
// refused at create with kErrorArchMismatch naming it, never run with a wrong kernel.
TEST(GpuLayerLaunch, ArchitectureTableAndMismatch) {
  const Fixture& f = fixture();
  const auto q = f.quantize(svdq::Format::kInt4, 0);
  for (int sm : {70, 75, 88, 100, 120}) {
    auto g = Linear::create(q, svdq::DType::kBF16, -1, sm);
    ASSERT_FALSE(g.ok()) << sm;
    EXPECT_EQ(g.status().code(), svdq::StatusCode::kErrorArchMismatch) << sm;
    EXPECT_NE(g.status().to_string().find("sm_" + std::to_string(sm)), std::string::npos) << g.status().to_string();
  }
  for (int sm : {80, 86, 87, 89, 90}) EXPECT_TRUE(Linear::create(q, svdq::DType::kBF16, -1, sm).ok()) << sm;
  using svdq::cuda::GemmPath;
  EXPECT_EQ(*svdq::cuda::gemm_path_for(8, 6, "t"), GemmPath::kMmaS4);
  EXPECT_EQ(*svdq::cuda::gemm_path_for(9, 0, "t"), GemmPath::kMmaS8);
}

// The names test_support::create_on_gemm_path accepts, and which kernel image holds which path
// (the rule a forced path is checked against on a device, where this test cannot run: a GPU
// image of sm_80 SASS holds mma_s4 only, sm_90's both mma paths, none holds dp4a).
TEST(GpuLayerLaunch, ForcedPathNamesAndKernelImages) {
  using svdq::cuda::GemmPath;
  for (GemmPath p : {GemmPath::kDp4a, GemmPath::kMmaS4, GemmPath::kMmaS8}) {
    auto r = svdq::cuda::gemm_path_named(svdq::cuda::gemm_path_name(p), "t");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, p);
  }
  for (const char* bad : {"", "mma", "MMA_S4", "mma_s4 ", "s8"}) {
    auto r = svdq::cuda::gemm_path_named(bad, "t");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), svdq::StatusCode::kErrorInvalidArgument);
    EXPECT_NE(r.status().to_string().find("dp4a, mma_s4, mma_s8"), std::string::npos) << r.status().to_string();
  }
  struct Image {
    int arch;
    bool dp4a, s4, s8;
  };
  for (const Image& i : {Image{0, false, false, false}, Image{800, false, true, false}, Image{860, false, true, false},
                         Image{890, false, true, false}, Image{900, false, true, true}}) {
    EXPECT_EQ(svdq::cuda::gemm_path_compiled(GemmPath::kDp4a, i.arch), i.dp4a) << i.arch;
    EXPECT_EQ(svdq::cuda::gemm_path_compiled(GemmPath::kMmaS4, i.arch), i.s4) << i.arch;
    EXPECT_EQ(svdq::cuda::gemm_path_compiled(GemmPath::kMmaS8, i.arch), i.s8) << i.arch;
  }
}

// The mma kernel's fragment order (linear_host.hpp, repack_*_mma) against an independent formula:
// the library maps each repacked position back to its canonical element; the test maps each
// canonical element forward to the position the kernel's thread reads it from (the warp's tile,
// the lane that owns the element's row and k slice, the byte within its 32), and checks that
// everything else is zero padding.
TEST(GpuLayerRepack, FragmentOrderMatchesAnIndependentFormula) {
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    SCOPED_TRACE(svdq::format_name(fmt));
    const bool int4 = fmt == svdq::Format::kInt4;
    const int64_t n = 72, k = int4 ? 192 : 208;  // ragged N tile; nvfp4: a K tail of 1 group (13 groups)
    const int64_t groups = k / (int4 ? 64 : 16), kts = (k + 63) / 64, nts = (n + 63) / 64;
    std::vector<uint8_t> codes(static_cast<size_t>(n * k / 2));
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
    const auto rep = svdq::cuda::repack_codes_mma(codes.data(), n, k, fmt);
    ASSERT_EQ(rep.size(), static_cast<size_t>(nts * kts * 2 * 32 * 32));
    std::vector<int> hit(rep.size(), 0);
    for (int64_t row = 0; row < n; ++row)
      for (int64_t kb = 0; kb < k / 2; ++kb) {  // canonical byte (row, kb): k elements 2 kb, 2 kb + 1
        const int64_t nt = row / 64, wn = (row % 64) / 32, j = (row % 32) / 8, gid = row % 8;
        int64_t kt, lane, byte;
        if (int4) {  // group kb / 32; word w = (kb % 32) / 4 belongs to tig = w / 2 as its half h = w % 2
          kt = kb / 32;
          const int64_t w = (kb % 32) / 4;
          lane = 4 * gid + w / 2;
          byte = 8 * j + 4 * (w % 2) + kb % 4;
        } else {  // group kb / 8 = 4 kt + gg; byte bg = kb % 8 belongs to tig = bg / 2
          kt = kb / 32;
          const int64_t gg = (kb / 8) % 4, bg = kb % 8;
          lane = 4 * gid + bg / 2;
          byte = 8 * gg + 2 * j + bg % 2;
        }
        const size_t pos = static_cast<size_t>((((nt * kts + kt) * 2 + wn) * 32 + lane) * 32 + byte);
        ASSERT_LT(pos, rep.size());
        EXPECT_EQ(rep[pos], codes[row * (k / 2) + kb]) << "row " << row << " byte " << kb;
        ++hit[pos];
      }
    for (size_t i = 0; i < rep.size(); ++i)
      if (hit[i] == 0) EXPECT_EQ(rep[i], 0) << "padding at " << i;
      else EXPECT_EQ(hit[i], 1) << i;

    // Group scales: int4 fp16 (2 bytes), nvfp4 E4M3 (1 byte).
    const int sbytes = int4 ? 2 : 1;
    std::vector<uint8_t> raw(static_cast<size_t>(n * groups * sbytes));
    for (size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<uint8_t>(1 + (i * 40503u) % 251);
    const auto srep = svdq::cuda::repack_scales_mma(raw.data(), n, k, fmt);
    std::vector<int> shit(srep.size(), 0);
    for (int64_t col = 0; col < n; ++col)
      for (int64_t g = 0; g < groups; ++g)
        for (int b = 0; b < sbytes; ++b) {
          const int64_t nt = col / 64, wn = (col % 64) / 32, j = (col % 32) / 8, tig = (col % 8) / 2, c = col % 2;
          const size_t pos = int4 ? static_cast<size_t>((((nt * groups + g) * 2 + wn) * 4 + tig) * 16 + (2 * j + c) * 2 + b)
                                  : static_cast<size_t>((((nt * kts + g / 4) * 2 + wn) * 4 + tig) * 32 + 8 * (g % 4) + 2 * j + c);
          ASSERT_LT(pos, srep.size());
          EXPECT_EQ(srep[pos], raw[(col * groups + g) * sbytes + b]) << "col " << col << " group " << g;
          ++shit[pos];
        }
    for (size_t i = 0; i < srep.size(); ++i)
      if (shit[i] == 0) EXPECT_EQ(srep[i], 0) << "scale padding at " << i;
  }
  // lora_up, with a rank that is not a multiple of the tf32 step (8).
  const int64_t n = 72;
  for (int rank : {5, 16, 24}) {
    std::vector<float> up(static_cast<size_t>(n * rank));
    for (size_t i = 0; i < up.size(); ++i) up[i] = 1.0f + static_cast<float>(i);
    const auto urep = svdq::cuda::repack_up_mma(up.data(), n, rank);
    const int64_t steps = (rank + 7) / 8;
    std::vector<int> uhit(urep.size(), 0);
    for (int64_t row = 0; row < n; ++row)
      for (int q = 0; q < rank; ++q) {
        const int64_t nt = row / 64, wn = (row % 64) / 32, j = (row % 32) / 8, gid = row % 8;
        const int64_t lane = 4 * gid + (q % 8) / 2;
        const size_t pos = static_cast<size_t>((((nt * steps + q / 8) * 2 + wn) * 32 + lane) * 8 + 2 * j + q % 2);
        ASSERT_LT(pos, urep.size());
        EXPECT_EQ(urep[pos], up[row * rank + q]);
        ++uhit[pos];
      }
    for (size_t i = 0; i < urep.size(); ++i)
      if (uhit[i] == 0) EXPECT_EQ(urep[i], 0.0f) << "up padding at " << i;
  }
}

// The tensor-core low-rank branch (lowrank_up_tf32: lora split into two tf32 terms, 16-bit up
// exact in tf32) on one emulated warp's 16 x 32 tile, rank 128, against float64: the error is
// within kTf32Branch * sum_r |lora up| per output (about 2.1e-6, below the worst case 7.6e-6 of
// the reference's own fp32 chain); lora rounded to one tf32 term (2^-12) would not meet it.
TEST(GpuLayerRepack, Tf32BranchIsWithinItsBoundOfFloat64) {
  const int rank = 128, rows = 16, cols = 32;
  // The split leaves |x - hi - lo| <= 2^-22 |x|; each of the 2 * rank / 8 mma rounds its fp32 result
  // once (<= 2^-24 of a partial sum, itself <= sum |lora up|). The reference's sequential fp32 fma
  // chain has the worst case rank * 2^-24.
  const double kTf32Branch = std::ldexp(1.0, -22) + 2.0 * (rank / 8) * std::ldexp(1.0, -24);
  std::vector<float> lora(rows * rank), up(cols * rank);
  uint64_t st = 12345;
  auto uni = [&] {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(st >> 11) / 9007199254740992.0 * 2.0 - 1.0;
  };
  for (auto& v : lora) v = static_cast<float>(uni() * 100.0);
  for (auto& v : up) v = svdq::bits16_to_float(svdq::float_to_bits16(static_cast<float>(uni()), svdq::DType::kBF16), svdq::DType::kBF16);
  const auto urep = svdq::cuda::repack_up_mma(up.data(), cols, rank);
  float out[rows][cols] = {};
  svdq::cuda::GemmParams p{};
  p.m = rows;
  p.rank = rank;
  p.lora = lora.data();
  const std::string err = svdq::emu::launch("lowrank_up_tf32", dim3(1), dim3(32), 0, {}, [&] {
    const int lane = static_cast<int>(threadIdx.x);
    float acc[4][4] = {};
    svdq::cuda::lowrank_up_tf32(p, lane >> 2, urep.data() + lane * 8, lane, acc);
    for (int j = 0; j < 4; ++j)
      for (int r = 0; r < 4; ++r) out[(lane >> 2) + 8 * (r >> 1)][8 * j + 2 * (lane & 3) + (r & 1)] = acc[j][r];
  });
  ASSERT_EQ(err, "");
  double worst = 0, worst_seq = 0;
  for (int i = 0; i < rows; ++i)
    for (int c = 0; c < cols; ++c) {
      double exact = 0, mag = 0;
      float seq = 0.0f;
      for (int q = 0; q < rank; ++q) {
        exact += static_cast<double>(lora[i * rank + q]) * up[c * rank + q];
        mag += std::fabs(static_cast<double>(lora[i * rank + q]) * up[c * rank + q]);
        seq = std::fma(lora[i * rank + q], up[c * rank + q], seq);
      }
      worst = std::max(worst, std::fabs(out[i][c] - exact) / mag);
      worst_seq = std::max(worst_seq, std::fabs(seq - exact) / mag);
    }
  EXPECT_LE(worst, kTf32Branch) << "fp32 sequential (the reference's order): " << worst_seq;
  RecordProperty("tf32_branch_rel", std::to_string(worst));
  RecordProperty("fp32_sequential_rel", std::to_string(worst_seq));
  std::printf("tensor-core branch: max |err| / sum|lora up| = %.3g (fp32 sequential: %.3g)\n", worst, worst_seq);
}

#else
TEST(GpuLayerLaunch, SecondStreamGraphCaptureAndDeterminism) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 129;
  const auto q = f.quantize(svdq::Format::kInt4, 32);
  auto g = Linear::create(q, svdq::DType::kBF16);
  ASSERT_TRUE(g.ok());
  const auto x = f.activations(m, svdq::DType::kBF16);
  std::vector<uint16_t> y0, y1;
  ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, nullptr, &y0, nullptr));
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, s, &y1, nullptr));
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

// An error left pending by the caller's earlier work is reported as such, before any launch, and
// is not blamed on svdq's kernels (a failed allocation leaves a non-sticky pending error).
TEST(GpuLayerLaunch, EarlierPendingErrorIsAttributedToTheCaller) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  auto g = Linear::create(f.quantize(svdq::Format::kInt4, 16), svdq::DType::kBF16);
  ASSERT_TRUE(g.ok());
  DeviceArray<uint16_t> dx(16 * f.k), dy(16 * f.n);
  DeviceArray<uint8_t> ws(g->workspace_size(16));
  void* huge = nullptr;
  ASSERT_NE(cudaMalloc(&huge, size_t{1} << 62), cudaSuccess);  // leaves cudaErrorMemoryAllocation pending
  const svdq::Status st = g->forward(dx.ptr, dy.ptr, 16, ws.ptr, ws.n, nullptr);
  EXPECT_EQ(st.code(), svdq::StatusCode::kErrorCuda);
  EXPECT_NE(st.to_string().find("already pending"), std::string::npos) << st.to_string();
  EXPECT_TRUE(g->forward(dx.ptr, dy.ptr, 16, ws.ptr, ws.n, nullptr).ok()) << "the pending error was consumed";
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(GpuBuild, WithoutADeviceCreateSaysSo) {
  if (svdq::gpu_device_count() != 0) GTEST_SKIP() << "a device is present";
  const auto& q = fixture().quantize(svdq::Format::kInt4, 0);
  auto g = svdq::GpuLinear::create(q, svdq::DType::kBF16);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), svdq::StatusCode::kErrorNotSupported);
  auto forced = svdq::test_support::create_on_gemm_path(q, svdq::DType::kBF16, "mma_s4", -1);
  ASSERT_FALSE(forced.ok());
  EXPECT_EQ(forced.status().code(), svdq::StatusCode::kErrorNotSupported);
  EXPECT_NE(forced.status().to_string().find("create_on_gemm_path"), std::string::npos) << forced.status().to_string();
  // The name is checked first, with or without a device.
  auto bad = svdq::test_support::create_on_gemm_path(q, svdq::DType::kBF16, "mma_s16", -1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), svdq::StatusCode::kErrorInvalidArgument);
}

// A forced path runs only where the device's kernel image holds it: mma_s4 everywhere (on an
// H200 the sm_80 kernel's s4 mma, emulated there), mma_s8 on sm_90 only, dp4a nowhere.
TEST(GpuLayerLaunch, ForcedPathRunsOnlyWhereItsImageHoldsIt) {
  SKIP_WITHOUT_GPU();
  const auto& q = fixture().quantize(svdq::Format::kInt4, 16);
  const int sm = device_sm();
  auto s4 = svdq::test_support::create_on_gemm_path(q, svdq::DType::kBF16, "mma_s4", -1);
  EXPECT_TRUE(s4.ok()) << s4.status().to_string();
  auto s8 = svdq::test_support::create_on_gemm_path(q, svdq::DType::kBF16, "mma_s8", -1);
  EXPECT_EQ(s8.ok(), sm >= 90) << "sm_" << sm << ": " << (s8.ok() ? "ok" : s8.status().to_string());
  if (!s8.ok()) EXPECT_EQ(s8.status().code(), svdq::StatusCode::kErrorArchMismatch);
  auto dp4a = svdq::test_support::create_on_gemm_path(q, svdq::DType::kBF16, "dp4a", -1);
  ASSERT_FALSE(dp4a.ok());
  EXPECT_EQ(dp4a.status().code(), svdq::StatusCode::kErrorArchMismatch);
  EXPECT_NE(dp4a.status().to_string().find("dp4a"), std::string::npos) << dp4a.status().to_string();
}
#endif

TEST(GpuLayerLaunch, NanRowStaysInItsRow) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 7;
  for (int sm : arch_params())
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    SCOPED_TRACE("sm " + std::to_string(sm));
    const auto q = f.quantize(fmt, 16);
    auto g = make_linear(q, svdq::DType::kBF16, sm);
    ASSERT_TRUE(g.ok());
    auto x = f.activations(m, svdq::DType::kBF16);
    std::vector<uint16_t> clean, dirty;
    ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, nullptr, &clean, nullptr));
    x[3 * f.k + 10] = 0x7FC0;  // bf16 NaN in row 3
    svdq::QuantizedActivations act;
    ASSERT_NO_FATAL_FAILURE(run_gpu(*g, x, m, nullptr, &dirty, &act));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < f.n; ++j) {
        const float v = svdq::bf16_bits_to_float(dirty[i * f.n + j]);
        if (i == 3) EXPECT_TRUE(std::isnan(v));
        else EXPECT_EQ(dirty[i * f.n + j], clean[i * f.n + j]);
      }
    // Against the reference too: codes and scales byte-equal, outputs within the budget with NaN
    // as NaN (row 3 NaN on both sides).
    expect_matches_reference(q, x, svdq::DType::kBF16, m, act.codes, act.scales, dirty);
  }
}

TEST(GpuLayerLaunch, BadInputIsAStatus) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  for (int sm : arch_params()) {
    SCOPED_TRACE("sm " + std::to_string(sm));
    auto g = make_linear(f.quantize(svdq::Format::kInt4, 16), svdq::DType::kBF16, sm);
    ASSERT_TRUE(g.ok());
    DeviceArray<uint16_t> dx(16 * f.k), dy(16 * f.n);
    DeviceArray<uint8_t> ws(g->workspace_size(16));
    EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 0, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorShape);
    EXPECT_EQ(g->forward(dx.ptr, dy.ptr, int64_t{1} << 31, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorShape);
    EXPECT_EQ(g->forward(nullptr, dy.ptr, 16, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorNullPointer);
    EXPECT_EQ(g->forward(dx.ptr + 1, dy.ptr, 16, ws.ptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorInvalidArgument);
    EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 16, ws.ptr, ws.n - 1, nullptr).code(), svdq::StatusCode::kErrorWorkspace);
    EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 16, nullptr, ws.n, nullptr).code(), svdq::StatusCode::kErrorWorkspace);
    EXPECT_EQ(g->forward(dx.ptr, dy.ptr, 16, ws.ptr + 16, ws.n, nullptr).code(), svdq::StatusCode::kErrorWorkspace);
    EXPECT_EQ(g->can_implement(16, svdq::DType::kF16).code(), svdq::StatusCode::kErrorInvalidArgument);
    EXPECT_FALSE(Linear::create(f.quantize(svdq::Format::kInt4, 16), svdq::DType::kF32).ok());
    Linear moved = std::move(*g);
    EXPECT_EQ(g->can_implement(16, svdq::DType::kBF16).code(), svdq::StatusCode::kErrorInvalidArgument);  // NOLINT
    EXPECT_TRUE(moved.can_implement(16, svdq::DType::kBF16).ok());
  }
}

// ---- Rotated layers (block-Hadamard, docs/formats.md §6.3; kernel 1 rotates each smoothed group,
// kernel 2 is unchanged) on every kernel-2 path: codes and scales byte-equal to the CPU reference,
// rank 0 bit-equal, a branch within the budget. tests/test_gpu_k1.cpp has the rest (K tails,
// non-finite and overflowing groups).
TEST(GpuLayerRotation, EveryPathMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  struct RotCase {
    svdq::Format format;
    svdq::DType dtype;
    int rank;
    int64_t m;
  };
  // Two cases per emulated path (kernel 2 does not see the rotation; the emulated device under
  // ASan is slow): int4 and nvfp4, rank 0 and 16, both dtypes over the three paths.
  const svdq::Format i4 = svdq::Format::kInt4, f4 = svdq::Format::kNvfp4;
  const svdq::DType bf = svdq::DType::kBF16, hf = svdq::DType::kF16;
  const RotCase per_path[3][2] = {{{i4, bf, 0, 7}, {f4, hf, 16, 7}},
                                  {{i4, hf, 16, 7}, {f4, bf, 0, 7}},
                                  {{i4, bf, 0, 7}, {f4, hf, 0, 7}}};
  // Row i on path arch_params()[i] (a device: its own path, mma_s4, its own path).
  for (int i = 0; i < 3; ++i)
    for (const RotCase& c : per_path[i]) {
      const int sm = arch_params()[static_cast<size_t>(i) % arch_params().size()];
      SCOPED_TRACE("sm " + std::to_string(sm) + " " + svdq::format_name(c.format) + " " + svdq::dtype_name(c.dtype) +
                   " r" + std::to_string(c.rank) + " m" + std::to_string(c.m));
      svdq::QuantizedLinear q = f.quantize(c.format, c.rank);
      q.rotation = svdq::Rotation::kBlockHadamard;  // same operands, rotated activation path
      ASSERT_NO_FATAL_FAILURE(check_layer(q, c.dtype, sm, f.activations(c.m, c.dtype), c.m));
    }
}

// ---- Nunchaku variants (issue 9 with issue 11's layers; docs/formats.md §6.1, §6.2) ----------
// Unsigned shifted int4 activations (act_unsigned: kernel 1 adds the shift before the smoothing
// and quantizes to 0..15; kernel 2 multiplies unsigned activation codes by signed weight codes:
// dp4a.u32.s32, mma .u4.s4 on sm_80, u4 -> u8 + mma .u8.s8 on sm_90) and nvfp4 per-channel
// wcscales ((acc * (t_act t_w)) * c_n), on every path, against reference_forward: activation
// codes and scales byte-equal, rank 0 bit-equal for finite outputs (NaN as NaN), a branch within
// 1e-3 on the finite rows; rows with a NaN or an Inf input are NaN on both sides.
#ifndef SVDQ_TEST_DATA
#define SVDQ_TEST_DATA "tests/data"
#endif

struct VariantCase {
  bool unsigned_act;  // true: int4 act_unsigned; false: nvfp4 with per-channel wcscales
  svdq::DType dtype;
  int rank;
  int sm;
};

// K = 320: one full 256-channel slice of kernel 1 and a 64-channel tail; N = 72: a ragged N tile.
const Fixture& variant_fixture() {
  static const Fixture f(320, 72);
  return f;
}

// Per-channel c_n in the storage dtype: powers of two times (1 + j/8), one channel 0 (allowed:
// finite and >= 0), so the multiply is not an exponent shift only.
svdq::QuantizedLinear with_wcscales(svdq::QuantizedLinear q) {
  q.wcscales.resize(static_cast<size_t>(q.out_features));
  for (int64_t n = 0; n < q.out_features; ++n) {
    const float v = n == 5 ? 0.0f : std::ldexp(1.0f + static_cast<float>(n % 8) / 8.0f, static_cast<int>(n % 5) - 2);
    q.wcscales[static_cast<size_t>(n)] = svdq::float_to_bits16(v, q.storage);
  }
  return q;
}

svdq::QuantizedLinear variant_layer(bool unsigned_act, int rank) {
  const Fixture& f = variant_fixture();
  if (unsigned_act) {
    auto u = svdq::to_unsigned_activations(f.quantize(svdq::Format::kInt4, rank), svdq::kNunchakuGeluShift);
    EXPECT_TRUE(u.ok()) << u.status().to_string();
    return *u;
  }
  return with_wcscales(f.quantize(svdq::Format::kNvfp4, rank));
}

// GELU-like inputs (what an unsigned layer is fed): gelu(x) = 0.5 x (1 + erf(x / sqrt 2)) of the
// fixture's activations, >= -0.17 (slightly negative values quantize to code 0 after the shift),
// plus row 2 with a NaN and row 4 with a -Inf (x + shift stays -Inf: a non-finite group).
std::vector<uint16_t> gelu_activations(int64_t k, int64_t m, svdq::DType dt, uint64_t seed, bool specials) {
  const auto x = svdq::synth::make_activations(variant_fixture().layer, m, seed);
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    b[i] = svdq::float_to_bits16(static_cast<float>(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))), dt);
  }
  if (specials && m > 4) {
    b[static_cast<size_t>(2 * k + 70)] = svdq::float_to_bits16(std::numeric_limits<float>::quiet_NaN(), dt);
    b[static_cast<size_t>(4 * k + 300)] = svdq::float_to_bits16(-std::numeric_limits<float>::infinity(), dt);
  }
  return b;
}

class GpuVariant : public ::testing::TestWithParam<VariantCase> {};

TEST_P(GpuVariant, MatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  const VariantCase c = GetParam();
  if (forced_path_repeats_the_devices_own(c.sm)) GTEST_SKIP() << "mma_s4 is this device's own path";
  const svdq::QuantizedLinear q = variant_layer(c.unsigned_act, c.rank);
  ASSERT_EQ(q.act_unsigned, c.unsigned_act);
  const int64_t k = q.in_features;
  // GELU-like rows with a NaN row and an -Inf row; then plain (signed) activations, whose values
  // below -shift clamp to code 0 (unsigned) — still the contract, byte for byte.
  const int64_t m = kEmu ? 21 : 333;
  {
    SCOPED_TRACE("gelu-like inputs with non-finite rows");
    size_t nans = 0;
    check_layer(q, c.dtype, c.sm, gelu_activations(k, m, c.dtype, 5, true), m, &nans);
    EXPECT_EQ(nans, static_cast<size_t>(2 * q.out_features)) << "rows 2 (NaN) and 4 (-Inf) are NaN, no other";
  }
  {
    SCOPED_TRACE("plain inputs");
    const int64_t m2 = kEmu ? 7 : 1000;
    check_layer(q, c.dtype, c.sm, variant_fixture().activations(m2, c.dtype, 9), m2);
  }
}

std::vector<VariantCase> variant_cases() {
  std::vector<VariantCase> v;
  for (int sm : arch_params())
    for (bool u : {true, false})
      for (auto dt : {svdq::DType::kBF16, svdq::DType::kF16})
        for (int r : {0, 16}) v.push_back({u, dt, r, sm});
  return v;
}
std::string variant_name(const ::testing::TestParamInfo<VariantCase>& info) {
  const VariantCase& c = info.param;
  return std::string(c.unsigned_act ? "int4_unsigned" : "nvfp4_wcscales") + "_" + svdq::dtype_name(c.dtype) + "_r" +
         std::to_string(c.rank) + path_suffix(c.sm);
}
INSTANTIATE_TEST_SUITE_P(Variants, GpuVariant, ::testing::ValuesIn(variant_cases()), variant_name);

// The DeepCompressor fixtures (tests/data/nunchaku, made by DeepCompressor's own packer) of the two
// variants, loaded with load_nunchaku: two unsigned mlp_fc2 layers and a per-channel nvfp4 one.
// SVDQ_TEST_DATA_DIR (environment) overrides the source tree's folder (the packed GPU suite).
TEST(GpuVariantFixtures, DeepCompressorLayersMatchTheReference) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("SVDQ_TEST_DATA_DIR");
  const std::string dir = std::string(env != nullptr ? env : SVDQ_TEST_DATA) + "/nunchaku/";
  const char* const names[] = {"int4_n192_k256_r32_bf16_unsigned", "int4_n128_k320_r16_f16_unsigned_nobias",
                               "nvfp4_n160_k256_r16_f16_wcscales"};
  for (size_t f = 0; f < 3; ++f) {
    const char* name = names[f];
    std::vector<svdq::SafetensorsFile> files;
    auto imp = svdq::load_nunchaku(dir + name + ".nunchaku.safetensors", files);
    ASSERT_TRUE(imp.ok()) << name << ": " << imp.status().to_string();
    ASSERT_EQ(imp->layers.size(), 1u);
    const svdq::QuantizedLinear& q = imp->layers[0].second;
    const bool unsigned_act = std::string(name).find("unsigned") != std::string::npos;
    ASSERT_EQ(q.act_unsigned, unsigned_act) << name;
    if (!unsigned_act) {
      ASSERT_FALSE(q.wcscales.empty()) << name;
    }
    const int64_t m = kEmu ? 19 : 300;
    // Emulated: two of the three paths per fixture, rotated (each path runs two fixtures, the mma
    // paths an unsigned one each), to keep the ASan pass short; a device runs its own and mma_s4.
    const std::vector<int>& paths = arch_params();
    for (size_t pi = 0; pi < paths.size(); ++pi) {
      if (paths.size() == 3 && pi != f && pi != (f + 1) % 3) continue;
      const int sm = paths[pi];
      SCOPED_TRACE(std::string(name) + " sm " + std::to_string(sm));
      // Inputs: N(0, 4) values (LCG + Box-Muller), GELU'd for the unsigned layers.
      std::vector<uint16_t> x(static_cast<size_t>(m * q.in_features));
      uint64_t st = 777;
      auto uni = [&] {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        return (static_cast<double>(st >> 11) + 0.5) / 9007199254740992.0;
      };
      for (auto& e : x) {
        const double v = std::sqrt(-2.0 * std::log(uni())) * std::cos(6.283185307179586 * uni()) * 2.0;
        e = svdq::float_to_bits16(static_cast<float>(unsigned_act ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))) : v),
                                  q.storage);
      }
      ASSERT_NO_FATAL_FAILURE(check_layer(q, q.storage, sm, x, m));
    }
  }
}

#if defined(SVDQ_TEST_BACKEND_EMU)
// The epilogue's order (§6.2): (acc * (t_act t_w)) * c_n, two fp32 multiplies, checked on the very
// function both kernels call. The layer tests cannot see this order reliably (the two orders differ
// by one fp32 ulp at most, which the 16-bit output rounding hides), so here it is compared in fp32
// against the contract's order, and the test counts the inputs where the other order differs (it
// must be able to fail). Also: c_n only with wcscales and only for columns < N, int4 untouched.
TEST(GpuVariantEpilogue, WcscalesMultiplyAfterTheTensorScales) {
  uint64_t st = 4242;
  auto uni = [&] {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(st >> 11) / 9007199254740992.0;
  };
  const int64_t n = 37;
  std::vector<float> wc(static_cast<size_t>(n));
  for (auto& c : wc)  // storage-dtype values (bf16), as make_plan decodes them
    c = svdq::bf16_bits_to_float(svdq::float_to_bits16(static_cast<float>(std::ldexp(1.0 + uni(), static_cast<int>(uni() * 8) - 4)),
                                                       svdq::DType::kBF16));
  svdq::cuda::GemmParams p{};
  p.n = n;
  size_t other_order_differs = 0;
  for (float t : {0.37f, 1.0f / 3.0f, 2.5e-3f, 1.7f}) {
    p.t_prod = t;
    for (int i = 0; i < 2000; ++i) {
      const float acc = static_cast<float>((uni() * 2 - 1) * std::ldexp(1.0, static_cast<int>(uni() * 40) - 20));
      const int64_t col = i % (n + 3);  // columns past N: the padding of the last tile
      p.wcscales = wc.data();
      const float got = svdq::cuda::epilogue_tensor_scale<1>(acc, p, col);
      const volatile float at = acc * t;  // the contract's order, one rounding each
      const float want = col < n ? static_cast<float>(at * wc[static_cast<size_t>(col)]) : static_cast<float>(at);
      ASSERT_EQ(svdq::cuda::float_bits(got), svdq::cuda::float_bits(want)) << "acc " << acc << " t " << t << " col " << col;
      if (col < n) {
        const volatile float ac = acc * wc[static_cast<size_t>(col)];
        other_order_differs += static_cast<float>(ac * t) != want;
      }
      p.wcscales = nullptr;  // no wcscales: the tensor scale only
      ASSERT_EQ(svdq::cuda::float_bits(svdq::cuda::epilogue_tensor_scale<1>(acc, p, col)), svdq::cuda::float_bits(at));
      p.wcscales = wc.data();  // int4 kinds: no tensor scale, no c_n
      ASSERT_EQ(svdq::cuda::float_bits(svdq::cuda::epilogue_tensor_scale<0>(acc, p, col)), svdq::cuda::float_bits(acc));
      ASSERT_EQ(svdq::cuda::float_bits(svdq::cuda::epilogue_tensor_scale<2>(acc, p, col)), svdq::cuda::float_bits(acc));
    }
  }
  EXPECT_GT(other_order_differs, 100u) << "the inputs cannot tell the two orders apart";
  RecordProperty("other_order_differs", std::to_string(other_order_differs));
}
#endif

}  // namespace
