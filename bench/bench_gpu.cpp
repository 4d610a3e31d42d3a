// GPU benchmarks of the W4A4 layer on the FLUX.1 shapes, with every baseline in the same run:
//
//   svdq_fused      GpuLinear::forward, rank 32: kernel 1 (quantize + lora_down) and kernel 2
//                   (4-bit GEMM + lora_up + bias epilogue)
//   svdq_fused_r0   the same layer with its branch removed (rank 0): what the branch costs
//   svdq_unfused    the rank-0 layer, then the branch through cuBLAS: lora = x lora_down (bf16),
//                   y += lora lora_up^T (two extra GEMMs, lora round-trips through memory)
//   cublas_bf16     cuBLAS GemmEx of the unquantized layer, bf16 operands, fp32 compute
//   cublaslt_fp8    cuBLASLt e4m3 x e4m3 -> bf16 with per-tensor scales (sm_89+), the GEMM alone
//                   (x is converted to e4m3 outside the timing: say so when quoting it)
//
// Method (docs/benchmarks.md): each timed sample is one replay of a CUDA graph holding `ops`
// launches of the operation, cycling over enough copies of its inputs, outputs and weights that
// they exceed twice the L2 (so weights and activations come from HBM, as in a model), timed with
// CUDA events; the per-op time of a sample is the graph's time / ops. Google Benchmark's manual
// time, repetitions, and the median across repetitions are reported (--benchmark_out=... for
// JSON). Counters: TFLOP/s (2 M N K / t), GB/s (the fewest bytes the op must move / t),
// x_bf16 (cuBLAS BF16 time / this time, same shape, same run), and rel_err, a sanity check of the
// output measured once per benchmark (svdq: vs cuBLAS BF16 of the unquantized layer; unfused:
// vs the fused output), so a timing of a wrong answer is visible.
//
//   bench_gpu [--shapes quick|full] [--formats int4,nvfp4] [google-benchmark flags]
#include <benchmark/benchmark.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

enum class Variant { kFused, kFusedRank0, kUnfused, kCublasBf16, kCublasLtFp8 };

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::kFused: return "svdq_fused";
    case Variant::kFusedRank0: return "svdq_fused_r0";
    case Variant::kUnfused: return "svdq_unfused";
    case Variant::kCublasBf16: return "cublas_bf16";
    case Variant::kCublasLtFp8: return "cublaslt_fp8";
  }
  return "?";
}

// Errors inside a benchmark become SkipWithError with the call named; never an abort.
#define BENCH_CUDA(call)                                                                     \
  do {                                                                                       \
    const cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) {                                                                 \
      state.SkipWithError((std::string(#call) + ": " + cudaGetErrorString(e_)).c_str());     \
      return;                                                                                \
    }                                                                                        \
  } while (0)
#define BENCH_CUBLAS(call)                                                                   \
  do {                                                                                       \
    const cublasStatus_t s_ = (call);                                                        \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      state.SkipWithError((std::string(#call) + ": cublas status " + std::to_string(s_)).c_str()); \
      return;                                                                                \
    }                                                                                        \
  } while (0)
#define BENCH_STATUS(expr)                                                                   \
  do {                                                                                       \
    const svdq::Status st_ = (expr);                                                         \
    if (!st_.ok()) {                                                                         \
      state.SkipWithError(st_.to_string().c_str());                                          \
      return;                                                                                \
    }                                                                                        \
  } while (0)

// A device allocation that frees itself.
struct Dev {
  void* p = nullptr;
  Dev() = default;
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() {
    if (p) cudaFree(p);
  }
  cudaError_t alloc(size_t bytes) { return cudaMalloc(&p, std::max<size_t>(bytes, 256)); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// One synthetic layer per (K, N), quantized once per format: fp32 W, bf16 W, and the rank-32
// layer with its rank-0 twin (the same Q(R) and smoothing, branch removed).
struct Layer {
  int64_t k = 0, n = 0;
  std::vector<float> w;              // (N, K)
  std::vector<uint16_t> w_bf16;      // (N, K)
  std::vector<uint16_t> x_bf16;      // (max M, K), drawn from the layer's activation model
  std::map<int, svdq::QuantizedLinear> q32, q0;  // by format
};

constexpr int64_t kMaxM = 4608;

Layer& layer(int64_t k, int64_t n) {
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Layer>> cache;
  auto& slot = cache[{k, n}];
  if (slot) return *slot;
  slot = std::make_unique<Layer>();
  Layer& L = *slot;
  L.k = k;
  L.n = n;
  svdq::synth::LayerSpec spec;
  spec.in_features = k;
  spec.out_features = n;
  auto made = svdq::synth::make_layer(spec);
  L.w = made->weight;
  L.w_bf16.resize(L.w.size());
  for (size_t i = 0; i < L.w.size(); ++i) L.w_bf16[i] = svdq::float_to_bits16(L.w[i], svdq::DType::kBF16);
  const auto x = svdq::synth::make_activations(*made, kMaxM, 7);
  L.x_bf16.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) L.x_bf16[i] = svdq::float_to_bits16(x[i], svdq::DType::kBF16);
  svdq::ActivationStats stats;
  const auto calib = svdq::synth::make_activations(*made, 256, 1);
  (void)stats.observe(svdq::MatrixView<const float>(calib.data(), 256, k));
  for (int fmt : {0, 1}) {
    svdq::QuantConfig cfg;
    cfg.format = static_cast<svdq::Format>(fmt);
    auto q = svdq::quantize_linear(svdq::MatrixView<const float>(L.w.data(), n, k),
                                   svdq::vector_view<const float>(made->bias.data(), n), &stats, cfg);
    if (!q.ok()) continue;  // reported by the benchmark that needs it
    svdq::QuantizedLinear r0 = *q;
    r0.rank = 0;
    r0.lora_down.clear();
    r0.lora_up.clear();
    L.q32.emplace(fmt, std::move(*q));
    L.q0.emplace(fmt, std::move(r0));
  }
  return L;
}

// Relative Frobenius error of a against b (bf16 bits), in double; NaN if b is all zero.
double rel_err_bf16(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = svdq::bits16_to_float(a[i], svdq::DType::kBF16);
    const double y = svdq::bits16_to_float(b[i], svdq::DType::kBF16);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return den > 0 ? std::sqrt(num / den) : NAN;
}

// cuBLAS BF16 output of the unquantized layer for the first M rows, kept per shape to check
// every svdq variant against (computed by the cuBLAS benchmark, which runs first per shape).
std::map<std::tuple<int64_t, int64_t, int64_t>, std::vector<uint16_t>>& bf16_outputs() {
  static std::map<std::tuple<int64_t, int64_t, int64_t>, std::vector<uint16_t>> m;
  return m;
}
std::map<std::tuple<int64_t, int64_t, int64_t>, double>& bf16_times() {
  static std::map<std::tuple<int64_t, int64_t, int64_t>, double> m;
  return m;
}
std::map<std::tuple<int64_t, int64_t, int64_t, int>, std::vector<uint16_t>>& fused_outputs() {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int>, std::vector<uint16_t>> m;
  return m;
}

struct Handles {
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  cudaStream_t stream = nullptr;
  Dev blas_ws;  // cuBLAS needs a user workspace under graph capture
  static constexpr size_t kWs = 64u << 20;
  bool ok = false;
  Handles() {
    ok = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess &&
         cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS && cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS &&
         blas_ws.alloc(kWs) == cudaSuccess && cublasSetStream(blas, stream) == CUBLAS_STATUS_SUCCESS &&
         cublasSetWorkspace(blas, blas_ws.p, kWs) == CUBLAS_STATUS_SUCCESS;
  }
};
Handles& handles() {
  static Handles h;
  return h;
}

// Minimal bytes each variant must move per op (each input read once, the output written once).
double min_bytes(Variant v, const svdq::QuantizedLinear* q, int64_t m, int64_t n, int64_t k) {
  const double x = 2.0 * m * k, y = 2.0 * m * n;
  switch (v) {
    case Variant::kCublasBf16: return x + y + 2.0 * n * k;
    case Variant::kCublasLtFp8: return 1.0 * m * k + y + 1.0 * n * k;
    default:
      return x + y + static_cast<double>(q->qweight.size() + q->wscales.size()) +
             2.0 * static_cast<double>(q->lora_down.size() + q->lora_up.size() + q->bias.size());
  }
}

// Args: variant, K, N, M, format (0 int4, 1 nvfp4; baselines ignore it).
void BM_Gpu(benchmark::State& state) {
  const auto variant = static_cast<Variant>(state.range(0));
  const int64_t k = state.range(1), n = state.range(2), m = state.range(3);
  const int fmt = static_cast<int>(state.range(4));
  Handles& H = handles();
  if (!H.ok) {
    state.SkipWithError("CUDA stream / cuBLAS handle creation failed (no GPU?)");
    return;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDevice(&dev));
  BENCH_CUDA(cudaGetDeviceProperties(&prop, dev));
  if (variant == Variant::kCublasLtFp8 && prop.major * 10 + prop.minor < 89) {
    state.SkipWithError("cuBLASLt FP8 needs sm_89 or newer");
    return;
  }
  Layer& L = layer(k, n);
  const bool svdq_variant = variant == Variant::kFused || variant == Variant::kFusedRank0 ||
                            variant == Variant::kUnfused;
  const svdq::QuantizedLinear* q = nullptr;
  if (svdq_variant) {
    auto& src = variant == Variant::kFused ? L.q32 : L.q0;
    if (!src.count(fmt)) {
      state.SkipWithError("quantize_linear failed for this shape");
      return;
    }
    q = &src.at(fmt);
  }
  const svdq::QuantizedLinear& q32 = L.q32.at(fmt == 1 && L.q32.count(1) ? 1 : 0);
  const int rank = q32.rank;

  // Copies of everything an op touches, enough to exceed 2x L2.
  const double per_set = min_bytes(variant, svdq_variant ? q : &q32, m, n, k);
  const int sets = static_cast<int>(std::clamp(std::ceil(2.0 * prop.l2CacheSize / per_set), 1.0, 16.0));
  const int ops = sets * std::max(1, 16 / sets);
  cudaStream_t s = H.stream;

  std::vector<Dev> x(sets), y(sets), ws(sets), wt(sets), aux(sets), aux2(sets);
  std::vector<svdq::GpuLinear> layers;
  size_t ws_bytes = 0;
  const size_t x_bytes = static_cast<size_t>(m * k) * 2, y_bytes = static_cast<size_t>(m * n) * 2;
  for (int i = 0; i < sets; ++i) {
    BENCH_CUDA(x[i].alloc(x_bytes));
    BENCH_CUDA(y[i].alloc(y_bytes));
    BENCH_CUDA(cudaMemcpy(x[i].p, L.x_bf16.data(), x_bytes, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemset(y[i].p, 0xFF, y_bytes));  // poison: NaN bf16 until written
  }
  // Per-tensor e4m3 scales for the FP8 baseline (x and W converted on the host, outside timing).
  Dev a_scale, b_scale;
  if (svdq_variant) {
    for (int i = 0; i < sets; ++i) {
      auto made = svdq::GpuLinear::create(*q, svdq::DType::kBF16);
      if (!made.ok()) {
        state.SkipWithError(made.status().to_string().c_str());
        return;
      }
      layers.push_back(std::move(*made));
    }
    ws_bytes = layers[0].workspace_size(m);
    for (int i = 0; i < sets; ++i) BENCH_CUDA(ws[i].alloc(ws_bytes));
    if (variant == Variant::kUnfused && rank > 0) {
      // lora_down (K, r) and lora_up (N, r) as bf16, and the (M, r) bf16 intermediate.
      std::vector<uint16_t> down(q32.lora_down), up(q32.lora_up);
      if (q32.storage != svdq::DType::kBF16) {
        for (auto& b : down) b = svdq::float_to_bits16(svdq::bits16_to_float(b, q32.storage), svdq::DType::kBF16);
        for (auto& b : up) b = svdq::float_to_bits16(svdq::bits16_to_float(b, q32.storage), svdq::DType::kBF16);
      }
      for (int i = 0; i < sets; ++i) {
        BENCH_CUDA(wt[i].alloc(down.size() * 2 + up.size() * 2));
        BENCH_CUDA(cudaMemcpy(wt[i].p, down.data(), down.size() * 2, cudaMemcpyHostToDevice));
        BENCH_CUDA(cudaMemcpy(wt[i].as<uint16_t>() + down.size(), up.data(), up.size() * 2, cudaMemcpyHostToDevice));
        BENCH_CUDA(aux[i].alloc(static_cast<size_t>(m * rank) * 2));
      }
    }
  } else if (variant == Variant::kCublasBf16) {
    for (int i = 0; i < sets; ++i) {
      BENCH_CUDA(wt[i].alloc(L.w_bf16.size() * 2));
      BENCH_CUDA(cudaMemcpy(wt[i].p, L.w_bf16.data(), L.w_bf16.size() * 2, cudaMemcpyHostToDevice));
    }
  } else {  // FP8: e4m3 copies with per-tensor scales amax / 448
    auto to_e4m3 = [](const std::vector<float>& v, size_t count, float* scale) {
      float amax = 0;
      for (size_t i = 0; i < count; ++i) amax = std::max(amax, std::fabs(v[i]));
      *scale = amax > 0 ? amax / 448.0f : 1.0f;
      std::vector<uint8_t> out(count);
      for (size_t i = 0; i < count; ++i) out[i] = svdq::encode_e4m3(v[i] / *scale);
      return out;
    };
    std::vector<float> xf(static_cast<size_t>(m * k));
    for (size_t i = 0; i < xf.size(); ++i) xf[i] = svdq::bits16_to_float(L.x_bf16[i], svdq::DType::kBF16);
    float sa = 1, sb = 1;
    const auto w8 = to_e4m3(L.w, L.w.size(), &sa);
    const auto x8 = to_e4m3(xf, xf.size(), &sb);
    BENCH_CUDA(a_scale.alloc(4));
    BENCH_CUDA(b_scale.alloc(4));
    BENCH_CUDA(cudaMemcpy(a_scale.p, &sa, 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(b_scale.p, &sb, 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < sets; ++i) {
      BENCH_CUDA(wt[i].alloc(w8.size()));
      BENCH_CUDA(cudaMemcpy(wt[i].p, w8.data(), w8.size(), cudaMemcpyHostToDevice));
      BENCH_CUDA(aux[i].alloc(x8.size()));
      BENCH_CUDA(cudaMemcpy(aux[i].p, x8.data(), x8.size(), cudaMemcpyHostToDevice));
    }
    BENCH_CUDA(aux2[0].alloc(Handles::kWs));
  }

  // cuBLASLt FP8 descriptors: D (N x M col-major = y row-major) = scale_a scale_b W8^T x8.
  cublasLtMatmulDesc_t op_desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulHeuristicResult_t heur{};
  struct LtCleanup {
    cublasLtMatmulDesc_t* d;
    cublasLtMatrixLayout_t *a, *b, *c;
    ~LtCleanup() {
      if (*d) cublasLtMatmulDescDestroy(*d);
      if (*a) cublasLtMatrixLayoutDestroy(*a);
      if (*b) cublasLtMatrixLayoutDestroy(*b);
      if (*c) cublasLtMatrixLayoutDestroy(*c);
    }
  } lt_cleanup{&op_desc, &la, &lb, &lc};
  if (variant == Variant::kCublasLtFp8) {
    BENCH_CUBLAS(cublasLtMatmulDescCreate(&op_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
    BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof(nt)));
    const void* pa = a_scale.p;
    const void* pb = b_scale.p;
    BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pa, sizeof(pa)));
    BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op_desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pb, sizeof(pb)));
    BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, k, n, k));
    BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, k, m, k));
    BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, m, n));
    cublasLtMatmulPreference_t pref = nullptr;
    BENCH_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws_max = Handles::kWs;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_max, sizeof(ws_max));
    int found = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(H.lt, op_desc, la, lb, lc, lc, pref, 1, &heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
      state.SkipWithError("cuBLASLt found no FP8 algorithm for this shape");
      return;
    }
  }

  const float one = 1.0f, zero = 0.0f;
  // One op on buffer set i, enqueued on s.
  auto enqueue = [&](int i) -> std::string {
    switch (variant) {
      case Variant::kFused:
      case Variant::kFusedRank0:
      case Variant::kUnfused: {
        const svdq::Status st = layers[i].forward(x[i].p, y[i].p, m, ws[i].p, ws_bytes, s);
        if (!st.ok()) return st.to_string();
        if (variant == Variant::kUnfused && rank > 0) {
          const uint16_t* down = wt[i].as<uint16_t>();
          const uint16_t* up = down + static_cast<size_t>(k) * rank;
          // lora (M, r) row-major = x (M, K) down (K, r): column-major lora^T = down^T-view x^T-view.
          if (cublasGemmEx(H.blas, CUBLAS_OP_N, CUBLAS_OP_N, rank, static_cast<int>(m), static_cast<int>(k), &one,
                           down, CUDA_R_16BF, rank, x[i].p, CUDA_R_16BF, static_cast<int>(k), &zero, aux[i].p,
                           CUDA_R_16BF, rank, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
            return "cublasGemmEx (lora_down)";
          // y (M, N) += lora (M, r) up^T: column-major y^T = up-view^T lora^T, beta = 1.
          if (cublasGemmEx(H.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), rank, &one,
                           up, CUDA_R_16BF, rank, aux[i].p, CUDA_R_16BF, rank, &one, y[i].p, CUDA_R_16BF,
                           static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
            return "cublasGemmEx (lora_up)";
        }
        return {};
      }
      case Variant::kCublasBf16:
        // y (M, N) row-major = x W^T: column-major y^T (N, M) = W-view^T (N, K) x-view (K, M).
        if (cublasGemmEx(H.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                         &one, wt[i].p, CUDA_R_16BF, static_cast<int>(k), x[i].p, CUDA_R_16BF, static_cast<int>(k),
                         &zero, y[i].p, CUDA_R_16BF, static_cast<int>(n), CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
          return "cublasGemmEx (bf16)";
        return {};
      case Variant::kCublasLtFp8:
        if (cublasLtMatmul(H.lt, op_desc, &one, wt[i].p, la, aux[i].p, lb, &zero, y[i].p, lc, y[i].p, lc,
                           &heur.algo, aux2[0].p, Handles::kWs, s) != CUBLAS_STATUS_SUCCESS)
          return "cublasLtMatmul (fp8)";
        return {};
    }
    return "unknown variant";
  };

  // First run outside any graph: errors surface here, and the output is checked.
  if (auto e = enqueue(0); !e.empty()) {
    state.SkipWithError(e.c_str());
    return;
  }
  BENCH_CUDA(cudaStreamSynchronize(s));
  BENCH_CUDA(cudaGetLastError());
  std::vector<uint16_t> out(static_cast<size_t>(m * n));
  BENCH_CUDA(cudaMemcpy(out.data(), y[0].p, y_bytes, cudaMemcpyDeviceToHost));
  const auto key = std::make_tuple(k, n, m);
  double err = NAN;
  if (variant == Variant::kCublasBf16) {
    bf16_outputs()[key] = out;
  } else if (variant == Variant::kUnfused && fused_outputs().count({k, n, m, fmt})) {
    err = rel_err_bf16(out, fused_outputs()[{k, n, m, fmt}]);
  } else if (bf16_outputs().count(key)) {
    err = rel_err_bf16(out, bf16_outputs()[key]);
  }
  if (variant == Variant::kFused) fused_outputs()[{k, n, m, fmt}] = out;

  // The graph: `ops` launches cycling over the sets.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  BENCH_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  std::string capture_error;
  for (int i = 0; i < ops && capture_error.empty(); ++i) capture_error = enqueue(i % sets);
  const cudaError_t end = cudaStreamEndCapture(s, &graph);
  if (!capture_error.empty()) {
    if (graph) cudaGraphDestroy(graph);
    state.SkipWithError(("during graph capture: " + capture_error).c_str());
    return;
  }
  BENCH_CUDA(end);
  struct GraphCleanup {
    cudaGraph_t g;
    cudaGraphExec_t* e;
    ~GraphCleanup() {
      if (*e) cudaGraphExecDestroy(*e);
      if (g) cudaGraphDestroy(g);
    }
  } graph_cleanup{graph, &exec};
  BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  for (int w = 0; w < 3; ++w) BENCH_CUDA(cudaGraphLaunch(exec, s));  // warm-up
  BENCH_CUDA(cudaStreamSynchronize(s));
  double total = 0;
  int64_t samples = 0;
  for (auto _ : state) {
    cudaEventRecord(e0, s);
    cudaGraphLaunch(exec, s);
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    const double t = ms * 1e-3 / ops;
    state.SetIterationTime(t);
    total += t;
    ++samples;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  BENCH_CUDA(cudaGetLastError());
  const double mean = samples ? total / samples : NAN;
  if (variant == Variant::kCublasBf16) bf16_times()[key] = mean;

  state.SetLabel(std::string(variant_name(variant)) + (svdq_variant ? (fmt ? "/nvfp4" : "/int4") : "") +
                 " " + prop.name);
  const double flops = 2.0 * m * n * k;
  state.counters["TFLOP/s"] = benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(min_bytes(variant, svdq_variant ? q : &q32, m, n, k) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  if (bf16_times().count(key)) state.counters["x_bf16"] = bf16_times()[key] / mean;
  state.counters["rel_err"] = err;
  state.counters["sets"] = sets;
}

struct Shape {
  int64_t k, n;
};

}  // namespace

int main(int argc, char** argv) {
  std::string shapes = "full", formats = "int4,nvfp4";
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shapes" && i + 1 < argc) shapes = argv[++i];
    else if (a == "--formats" && i + 1 < argc) formats = argv[++i];
    else rest.push_back(argv[i]);
  }
  if (shapes != "quick" && shapes != "full") {
    std::fprintf(stderr, "bench_gpu: --shapes must be quick or full, not '%s'\n", shapes.c_str());
    return 2;
  }
  // FLUX.1 layer shapes and token counts (docs/benchmarks.md); "quick" keeps one of each kind.
  std::vector<Shape> kn = {{3072, 3072}, {3072, 9216}, {3072, 12288}, {12288, 3072}};
  std::vector<int64_t> ms = {1, 16, 64, 256, 1024, 4096, 4608};
  if (shapes == "quick") {
    kn = {{3072, 3072}, {3072, 12288}};
    ms = {16, 4096};
  }
  const bool int4 = formats.find("int4") != std::string::npos;
  const bool nvfp4 = formats.find("nvfp4") != std::string::npos;
  for (const Shape& sh : kn)
    for (int64_t m : ms) {
      // The cuBLAS BF16 baseline first: the others report their speedup against it.
      for (Variant v : {Variant::kCublasBf16, Variant::kCublasLtFp8, Variant::kFused, Variant::kFusedRank0,
                        Variant::kUnfused})
        for (int fmt : {0, 1}) {
          const bool baseline = v == Variant::kCublasBf16 || v == Variant::kCublasLtFp8;
          if (baseline && fmt == 1) continue;
          if (!baseline && ((fmt == 0 && !int4) || (fmt == 1 && !nvfp4))) continue;
          // nvfp4: the fused layer only (the rank-0 and unfused comparisons are format-independent).
          if (fmt == 1 && v != Variant::kFused) continue;
          const std::string name = std::string("BM_Gpu/") + variant_name(v) + (baseline ? "" : fmt ? "/nvfp4" : "/int4");
          benchmark::RegisterBenchmark(name.c_str(), BM_Gpu)
              ->Args({static_cast<int64_t>(v), sh.k, sh.n, m, fmt})
              ->ArgNames({"v", "K", "N", "M", "fmt"})
              ->UseManualTime()
              ->Unit(benchmark::kMicrosecond)
              ->MinTime(0.05)
              ->Repetitions(3)
              ->ReportAggregatesOnly(true);  // mean, median, stddev, cv of the repetitions
        }
    }
  int bargc = static_cast<int>(rest.size());
  benchmark::Initialize(&bargc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, rest.data())) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
