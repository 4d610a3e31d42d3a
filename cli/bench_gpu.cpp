// cli/bench_gpu.cpp — the device half of `svdq bench --gpu` (cli/bench_gpu.hpp, docs/cli.md).
//
// Built with the CUDA runtime when the build has CUDA (SVDQ_CLI_CUDA); otherwise every entry
// point says that the build has none. cuBLAS is not linked: it is loaded with dlopen() when
// `--gpu` runs, so the svdq command starts (and quantizes) on machines without cuBLAS, and
// `--gpu` names the library it could not load. Method as bench/bench_gpu.cpp: a CUDA graph of
// `ops` launches cycling over copies of inputs, outputs and weights that together exceed twice
// the L2 (weights and activations come from HBM, as in a model), timed with CUDA events.
#include "bench_gpu.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#if SVDQ_CLI_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <functional>
#endif

namespace svdq_cli {

using svdq::Status;
using svdq::StatusCode;

#if !SVDQ_CLI_CUDA

Status gpu_bench_probe(std::string*) {
  return Status(StatusCode::kErrorNotSupported,
                "--gpu: this svdq was built without CUDA (SVDQ_ENABLE_CUDA=OFF), so it has no GPU "
                "layer to time; rebuild with -DSVDQ_ENABLE_CUDA=ON (needs nvcc) and run on a machine "
                "with an NVIDIA GPU (sm_80 to sm_90)");
}

Status gpu_bench_run(const svdq::QuantizedLinear&, const std::vector<uint16_t>&, const std::vector<uint16_t>&,
                     int64_t, int, const std::vector<int64_t>&, std::vector<svdq::GpuLinear>*, GpuBenchRun*) {
  return gpu_bench_probe(nullptr);
}

#else

namespace {

Status cuda_error(const char* call, cudaError_t e) {
  (void)cudaGetLastError();  // clear a sticky-less error so that later calls start clean
  return Status(StatusCode::kErrorCuda,
                std::string(call) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

#define CLI_CUDA(call)                                         \
  do {                                                         \
    const cudaError_t e_ = (call);                             \
    if (e_ != cudaSuccess) return cuda_error(#call, e_);       \
  } while (0)

// cuBLAS, loaded at run time (the entry points the baseline needs; signatures from the headers
// this file was compiled with).
struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                    const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                                    int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                                    cublasGemmAlgo_t);
  GemmEx gemm_ex = nullptr;
  std::string loaded;  // the library name dlopen() took
  std::string error;   // why it could not be loaded; empty when loaded
};

const Cublas& cublas() {
  static const Cublas c = [] {
    Cublas r;
    const std::string versioned = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = nullptr;
    std::string tried;
    for (const std::string& name : {versioned, std::string("libcublas.so")}) {
      lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);  // kept open for the process
      if (lib) {
        r.loaded = name;
        break;
      }
      const char* why = dlerror();
      tried += (tried.empty() ? "" : "; ") + std::string(why ? why : name + ": not found");
    }
    if (!lib) {
      r.error = "cuBLAS (the BF16 baseline) could not be loaded: " + tried +
                "; put the CUDA toolkit's lib64 folder on LD_LIBRARY_PATH";
      return r;
    }
    const auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      if (!p && r.error.empty()) r.error = r.loaded + " has no symbol " + name + " (the cuBLAS baseline needs it)";
      return p;
    };
    r.create = reinterpret_cast<decltype(r.create)>(sym("cublasCreate_v2"));
    r.destroy = reinterpret_cast<decltype(r.destroy)>(sym("cublasDestroy_v2"));
    r.set_stream = reinterpret_cast<decltype(r.set_stream)>(sym("cublasSetStream_v2"));
    r.set_workspace = reinterpret_cast<decltype(r.set_workspace)>(sym("cublasSetWorkspace_v2"));
    r.gemm_ex = reinterpret_cast<Cublas::GemmEx>(sym("cublasGemmEx"));
    return r;
  }();
  return c;
}

Status cublas_error(const char* call, cublasStatus_t s) {
  return Status(StatusCode::kErrorCuda, std::string(call) + " failed: cuBLAS status " + std::to_string(static_cast<int>(s)));
}

// RAII holders: every path out of gpu_bench_run frees what it made.
struct Dev {
  void* p = nullptr;
  Dev() = default;
  Dev(Dev&& o) noexcept : p(o.p) { o.p = nullptr; }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() {
    if (p) cudaFree(p);
  }
};
cudaError_t dev_alloc(Dev* d, size_t bytes) { return cudaMalloc(&d->p, std::max<size_t>(bytes, 256)); }

struct Stream {
  cudaStream_t s = nullptr;
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};
struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  ~Events() {
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
  }
};
struct Graph {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t e = nullptr;
  ~Graph() {
    if (e) cudaGraphExecDestroy(e);
    if (g) cudaGraphDestroy(g);
  }
};
struct BlasHandle {
  cublasHandle_t h = nullptr;
  ~BlasHandle() {
    if (h) cublas().destroy(h);
  }
};

// Buffer sets whose sum exceeds twice the L2 (at most 16), and launches per replay: a multiple of
// the sets, so that consecutive uses of one set are always `sets` launches apart.
void rotation(double bytes_per_set, int l2_bytes, int* sets, int* ops) {
  *sets = static_cast<int>(std::clamp(std::ceil(2.0 * l2_bytes / std::max(bytes_per_set, 1.0)), 1.0, 16.0));
  *ops = *sets * std::max(1, 16 / *sets);
}

// Captures `ops` launches of enqueue(i % sets) into a graph, replays it 3 times (warm-up), then
// `repeats` times, each timed with CUDA events; per-launch times.
Status time_graph(cudaStream_t s, const std::function<Status(int)>& enqueue, int sets, int ops, int repeats,
                  GpuTime* t) {
  Graph graph;
  CLI_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  Status captured = Status::Ok();
  for (int i = 0; i < ops && captured.ok(); ++i) captured = enqueue(i % sets);
  const cudaError_t end = cudaStreamEndCapture(s, &graph.g);
  if (!captured.ok()) return Status(captured.code(), "during graph capture: " + captured.message());
  CLI_CUDA(end);
  CLI_CUDA(cudaGraphInstantiate(&graph.e, graph.g, 0));
  Events ev;
  CLI_CUDA(cudaEventCreate(&ev.a));
  CLI_CUDA(cudaEventCreate(&ev.b));
  for (int w = 0; w < 3; ++w) CLI_CUDA(cudaGraphLaunch(graph.e, s));
  CLI_CUDA(cudaStreamSynchronize(s));
  std::vector<double> per_op;
  for (int r = 0; r < repeats; ++r) {
    CLI_CUDA(cudaEventRecord(ev.a, s));
    CLI_CUDA(cudaGraphLaunch(graph.e, s));
    CLI_CUDA(cudaEventRecord(ev.b, s));
    CLI_CUDA(cudaEventSynchronize(ev.b));
    float ms = 0;
    CLI_CUDA(cudaEventElapsedTime(&ms, ev.a, ev.b));
    per_op.push_back(ms * 1e-3 / ops);
  }
  CLI_CUDA(cudaGetLastError());
  std::sort(per_op.begin(), per_op.end());
  t->samples = repeats;
  t->min_s = per_op.front();
  t->max_s = per_op.back();
  t->median_s = per_op.size() % 2 ? per_op[per_op.size() / 2]
                                  : 0.5 * (per_op[per_op.size() / 2 - 1] + per_op[per_op.size() / 2]);
  return Status::Ok();
}

Status download_rows(const void* d_y, int64_t n, const std::vector<int64_t>& rows, std::vector<uint16_t>* out) {
  out->assign(rows.size() * static_cast<size_t>(n), 0);
  for (size_t i = 0; i < rows.size(); ++i)
    CLI_CUDA(cudaMemcpy(out->data() + i * n, static_cast<const uint16_t*>(d_y) + rows[i] * n,
                        static_cast<size_t>(n) * 2, cudaMemcpyDeviceToHost));
  return Status::Ok();
}

}  // namespace

Status gpu_bench_probe(std::string* device) {
  // cuBLAS is loaded first, so that a refusal for want of a device also says whether cuBLAS
  // would have been there (both are needed; the device is named first).
  const Cublas& blas = cublas();
  const std::string blas_note = blas.error.empty() ? " [cuBLAS: " + blas.loaded + " loaded]" : " [and " + blas.error + "]";
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status(StatusCode::kErrorCuda,
                  std::string("--gpu: no usable CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(e) +
                      " (" + cudaGetErrorString(e) + ")" +
                      (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice
                           ? "; is there an NVIDIA GPU with its driver on this machine?"
                           : "") +
                      blas_note);
  }
  if (count == 0) {
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    return Status(StatusCode::kErrorCuda,
                  std::string("--gpu: no CUDA device is visible (cudaGetDeviceCount found 0") +
                      (visible ? std::string(", CUDA_VISIBLE_DEVICES='") + visible + "'" : std::string()) + ")" + blas_note);
  }
  int dev = 0;
  cudaDeviceProp prop{};
  CLI_CUDA(cudaGetDevice(&dev));
  CLI_CUDA(cudaGetDeviceProperties(&prop, dev));
  if (!blas.error.empty()) return Status(StatusCode::kErrorNotSupported, "--gpu: " + blas.error);
  if (device)
    *device = std::string(prop.name) + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
              std::to_string(prop.multiProcessorCount) + " SMs, " + std::to_string(prop.l2CacheSize >> 20) + " MiB L2";
  return Status::Ok();
}

Status gpu_bench_run(const svdq::QuantizedLinear& q, const std::vector<uint16_t>& w_bf16,
                     const std::vector<uint16_t>& x_bf16, int64_t m, int repeats,
                     const std::vector<int64_t>& check_rows, std::vector<svdq::GpuLinear>* pool,
                     GpuBenchRun* out) {
  const int64_t k = q.in_features, n = q.out_features;
  if (m < 1 || repeats < 1 || static_cast<int64_t>(x_bf16.size()) < m * k ||
      static_cast<int64_t>(w_bf16.size()) != n * k)
    return Status(StatusCode::kErrorInvalidArgument,
                  "gpu_bench_run: need m >= 1, repeats >= 1, x of at least m x K and w of N x K");
  for (int64_t r : check_rows)
    if (r < 0 || r >= m) return Status(StatusCode::kErrorInvalidArgument, "gpu_bench_run: check row out of range");
  if (Status st = gpu_bench_probe(nullptr); !st.ok()) return st;
  for (const svdq::GpuLinear& l : *pool)
    if (l.in_features() != k || l.out_features() != n)
      return Status(StatusCode::kErrorInvalidArgument, "gpu_bench_run: the layers pool holds another layer");
  const Cublas& blas = cublas();
  int dev = 0;
  cudaDeviceProp prop{};
  CLI_CUDA(cudaGetDevice(&dev));
  CLI_CUDA(cudaGetDeviceProperties(&prop, dev));
  Stream stream;
  CLI_CUDA(cudaStreamCreateWithFlags(&stream.s, cudaStreamNonBlocking));
  const cudaStream_t s = stream.s;
  const size_t x_bytes = static_cast<size_t>(m * k) * 2, y_bytes = static_cast<size_t>(m * n) * 2;

  {  // svdq: GpuLinear::forward, both kernels; one layer (weights) per buffer set.
    const double layer_bytes = static_cast<double>(q.qweight.size() + q.wscales.size()) +
                               2.0 * static_cast<double>(q.lora_down.size() + q.lora_up.size() + q.bias.size());
    rotation(static_cast<double>(x_bytes + y_bytes) + layer_bytes, prop.l2CacheSize, &out->sets, &out->ops);
    const int sets = out->sets;
    std::vector<svdq::GpuLinear>& layers = *pool;
    std::vector<Dev> x(sets), y(sets), ws(sets);
    while (static_cast<int>(layers.size()) < sets) {
      auto made = svdq::GpuLinear::create(q, svdq::DType::kBF16, dev);
      if (!made.ok()) return made.status();
      layers.push_back(std::move(*made));
    }
    if (Status st = layers[0].can_implement(m, svdq::DType::kBF16); !st.ok()) return st;
    const size_t ws_bytes = layers[0].workspace_size(m);
    for (int i = 0; i < sets; ++i) {
      CLI_CUDA(dev_alloc(&x[i], x_bytes));
      CLI_CUDA(dev_alloc(&y[i], y_bytes));
      CLI_CUDA(dev_alloc(&ws[i], ws_bytes));
      CLI_CUDA(cudaMemcpy(x[i].p, x_bf16.data(), x_bytes, cudaMemcpyHostToDevice));
      CLI_CUDA(cudaMemset(y[i].p, 0xFF, y_bytes));  // NaN until written
    }
    const auto enqueue = [&](int i) { return layers[i].forward(x[i].p, y[i].p, m, ws[i].p, ws_bytes, s); };
    // One run outside the graph: errors surface here, and its output is the one checked.
    if (Status st = enqueue(0); !st.ok()) return st;
    CLI_CUDA(cudaStreamSynchronize(s));
    if (Status st = download_rows(y[0].p, n, check_rows, &out->y_svdq); !st.ok()) return st;
    if (Status st = time_graph(s, enqueue, sets, out->ops, repeats, &out->svdq); !st.ok()) return st;
  }

  {  // cuBLAS BF16: y (M, N) row-major = x W^T, i.e. column-major y^T (N, M) = W-view^T x-view.
    int sets = 0, ops = 0;
    rotation(static_cast<double>(x_bytes + y_bytes) + 2.0 * static_cast<double>(n * k), prop.l2CacheSize, &sets, &ops);
    BlasHandle h;
    if (cublasStatus_t st = blas.create(&h.h); st != CUBLAS_STATUS_SUCCESS) return cublas_error("cublasCreate", st);
    Dev blas_ws;  // cuBLAS needs a workspace of its own under graph capture
    constexpr size_t kBlasWs = 32u << 20;
    CLI_CUDA(dev_alloc(&blas_ws, kBlasWs));
    if (cublasStatus_t st = blas.set_stream(h.h, s); st != CUBLAS_STATUS_SUCCESS) return cublas_error("cublasSetStream", st);
    if (cublasStatus_t st = blas.set_workspace(h.h, blas_ws.p, kBlasWs); st != CUBLAS_STATUS_SUCCESS)
      return cublas_error("cublasSetWorkspace", st);
    std::vector<Dev> x(sets), y(sets), w(sets);
    for (int i = 0; i < sets; ++i) {
      CLI_CUDA(dev_alloc(&x[i], x_bytes));
      CLI_CUDA(dev_alloc(&y[i], y_bytes));
      CLI_CUDA(dev_alloc(&w[i], w_bf16.size() * 2));
      CLI_CUDA(cudaMemcpy(x[i].p, x_bf16.data(), x_bytes, cudaMemcpyHostToDevice));
      CLI_CUDA(cudaMemcpy(w[i].p, w_bf16.data(), w_bf16.size() * 2, cudaMemcpyHostToDevice));
      CLI_CUDA(cudaMemset(y[i].p, 0xFF, y_bytes));
    }
    const float one = 1.0f, zero = 0.0f;
    const auto enqueue = [&](int i) -> Status {
      const cublasStatus_t st =
          blas.gemm_ex(h.h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                       &one, w[i].p, CUDA_R_16BF, static_cast<int>(k), x[i].p, CUDA_R_16BF, static_cast<int>(k),
                       &zero, y[i].p, CUDA_R_16BF, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      return st == CUBLAS_STATUS_SUCCESS ? Status::Ok() : cublas_error("cublasGemmEx (bf16)", st);
    };
    if (Status st = enqueue(0); !st.ok()) return st;
    CLI_CUDA(cudaStreamSynchronize(s));
    if (Status st = download_rows(y[0].p, n, check_rows, &out->y_cublas); !st.ok()) return st;
    if (Status st = time_graph(s, enqueue, sets, ops, repeats, &out->cublas); !st.ok()) return st;
  }
  return Status::Ok();
}

#endif  // SVDQ_CLI_CUDA

}  // namespace svdq_cli
