// cuda/gpu_linear.cu — host side of the GPU layer: upload/repack once, validate, launch the two
// kernels on the caller's stream. forward() allocates nothing and never synchronises.
#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "linear_host.hpp"
#include "svdq/gpu.hpp"

namespace svdq {

namespace {

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status(StatusCode::kErrorCuda,
                std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// A device buffer owned by the layer.
struct DeviceBuffer {
  void* ptr = nullptr;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  Status upload(const void* host, size_t bytes) {
    if (bytes == 0) return Status::Ok();
    SVDQ_RETURN_IF_ERROR(cuda_status(cudaMalloc(&ptr, bytes), "cudaMalloc"));
    return cuda_status(cudaMemcpy(ptr, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
};

}  // namespace

struct GpuLinear::Impl {
  int device = 0;
  cuda::LinearPlan plan;  // scalars only after upload (the arrays live on the device)
  DeviceBuffer w_codes, w_scales, inv_s, down_t, up, bias, wcscales;
  cuda::DeviceWeights weights() const {
    return {static_cast<const uint8_t*>(w_codes.ptr), static_cast<const uint8_t*>(w_scales.ptr),
            static_cast<const float*>(inv_s.ptr),     static_cast<const uint16_t*>(down_t.ptr),
            static_cast<const float*>(up.ptr),        static_cast<const float*>(bias.ptr),
            static_cast<const float*>(wcscales.ptr)};
  }
};

namespace {

// Launches forward()'s kernels (two, or three with split-K's reduction) with cudaLaunchKernel,
// whose return value is each launch's own error. An error already pending on the thread (left by the caller's earlier work) is reported
// as such before anything is launched, instead of being blamed on svdq's kernels afterwards.
struct CudaLauncher {
  cudaStream_t stream;
  template <typename T, int kKind>
  Status operator()(const cuda::ForwardLaunch& fl) const {
    const cudaError_t prior = cudaGetLastError();
    if (prior != cudaSuccess)
      return Status(StatusCode::kErrorCuda, std::string("GpuLinear::forward: a CUDA error was already pending "
                                                        "before the launch (left by earlier work, not by svdq): ") +
                                                cudaGetErrorName(prior) + " (" + cudaGetErrorString(prior) + ")");
    cuda::QuantizeParams qp = fl.qp;
    cuda::GemmParams gp = fl.gp;
    void* qargs[] = {&qp};
    void* gargs[] = {&gp};
    SVDQ_RETURN_IF_ERROR(cuda_status(
        cudaLaunchKernel(reinterpret_cast<const void*>(&cuda::quantize_lora_down_kernel<T, cuda::quantize_kind(kKind)>),
                         dim3(fl.qgrid.x, fl.qgrid.y, fl.qgrid.z), dim3(fl.qblock.x, fl.qblock.y, fl.qblock.z),
                         qargs, 0, stream),
        "launching quantize_lora_down_kernel"));
    if (fl.reduce) {  // split-K's fixed-order sum of the partials (quantize_lora_down.cuh)
      cuda::LoraReduceParams rp = fl.rp;
      void* rargs[] = {&rp};
      SVDQ_RETURN_IF_ERROR(cuda_status(
          cudaLaunchKernel(reinterpret_cast<const void*>(&cuda::lora_reduce_kernel<0>), dim3(fl.rgrid.x, fl.rgrid.y, fl.rgrid.z),
                           dim3(fl.rblock.x, fl.rblock.y, fl.rblock.z), rargs, 0, stream),
          "launching lora_reduce_kernel"));
    }
    return cuda_status(cudaLaunchKernel(reinterpret_cast<const void*>(cuda::gemm_kernel<T, kKind>(fl.path)),
                                        dim3(fl.ggrid.x, fl.ggrid.y, fl.ggrid.z),
                                        dim3(fl.gblock.x, fl.gblock.y, fl.gblock.z), gargs, 0, stream),
                       ("launching " + cuda::gemm_kernel_name(fl.path, fl.bf16, kKind)).c_str());
  }
};

}  // namespace

bool gpu_compiled() noexcept { return true; }

int gpu_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

GpuLinear::GpuLinear(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuLinear::GpuLinear(GpuLinear&&) noexcept = default;
GpuLinear& GpuLinear::operator=(GpuLinear&&) noexcept = default;
GpuLinear::~GpuLinear() = default;

int64_t GpuLinear::in_features() const noexcept { return impl_ ? impl_->plan.k : 0; }
int64_t GpuLinear::out_features() const noexcept { return impl_ ? impl_->plan.n : 0; }
DType GpuLinear::act_dtype() const noexcept { return impl_ ? impl_->plan.act : DType::kBF16; }

Result<GpuLinear> GpuLinear::create(const QuantizedLinear& q, DType act_dtype, int device) {
  return create_impl(q, act_dtype, device, nullptr, "GpuLinear::create");
}

Result<GpuLinear> GpuLinear::create_impl(const QuantizedLinear& q, DType act_dtype, int device,
                                         const char* gemm_path, const char* fn) {
  // A forced path (test_support::create_on_gemm_path) must be one of dispatch.hpp's names.
  cuda::GemmPath forced{};
  if (gemm_path != nullptr) {
    auto named = cuda::gemm_path_named(gemm_path, fn);
    if (!named.ok()) return named.status();
    forced = *named;
  }
  auto plan = cuda::make_plan(q, act_dtype, fn);
  if (!plan.ok()) return plan.status();
  if (gpu_device_count() == 0)
    return Status(StatusCode::kErrorNotSupported, std::string(fn) + ": no CUDA device is visible");
  if (device < 0) SVDQ_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device), "cudaSetDevice"));
  cudaDeviceProp prop{};
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  if (prop.major < 8)
    return Status(StatusCode::kErrorArchMismatch,
                  std::string(fn) + ": device " + prop.name + " is sm_" + std::to_string(prop.major * 10 + prop.minor) +
                      "; svdq's kernels need sm_80 or newer");
  // Kernel 2's path for this architecture (cuda/dispatch.hpp); any other is kErrorArchMismatch.
  auto own = cuda::gemm_path_for(prop.major, prop.minor, fn);
  if (!own.ok()) return own.status();
  const cuda::GemmPath path = gemm_path != nullptr ? forced : *own;
  // The build must hold code this device can run (SASS for it or PTX it can JIT).
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(cuda::gemm_kernel<__nv_bfloat16, 0>(path))) !=
      cudaSuccess) {
    cudaGetLastError();
    return Status(StatusCode::kErrorArchMismatch,
                  std::string(fn) + ": this build has no kernel image for " + prop.name + " (sm_" +
                      std::to_string(prop.major * 10 + prop.minor) + "); rebuild with it in CMAKE_CUDA_ARCHITECTURES");
  }
  // A forced path must have a body in the image the device runs (gemm_w4a4_mma.cuh's
  // mma_path_compiled; the image's architecture is attr.binaryVersion, e.g. 80 for the sm_80 SASS
  // an sm_86 runs, the device's own for JIT-compiled PTX). Judged by that architecture's rule
  // alone: PTX below sm_90 that keeps path 2 (SVDQ_PTX_BELOW_SM90) is not credited with it.
  if (gemm_path != nullptr && !cuda::gemm_path_compiled(path, 10 * attr.binaryVersion))
    return Status(StatusCode::kErrorArchMismatch,
                  std::string(fn) + ": gemm_path " + cuda::gemm_path_name(path) + " has no device code in the sm_" +
                      std::to_string(attr.binaryVersion) + " kernel image that " + prop.name +
                      " runs (mma_s4: sm_80 and newer; mma_s8: sm_90; dp4a: the emulated device only)");
  cuda::use_gemm_path(&*plan, path);  // repacks the weights for this path

  auto impl = std::make_unique<Impl>();
  impl->device = device;
  cuda::LinearPlan& p = *plan;
  SVDQ_RETURN_IF_ERROR(impl->w_codes.upload(p.w_codes.data(), p.w_codes.size()));
  SVDQ_RETURN_IF_ERROR(impl->w_scales.upload(p.w_scales.data(), p.w_scales.size()));
  SVDQ_RETURN_IF_ERROR(impl->inv_s.upload(p.inv_s.data(), p.inv_s.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->down_t.upload(p.down.bits.data(), p.down.bits.size() * 2));
  SVDQ_RETURN_IF_ERROR(impl->up.upload(p.up.data(), p.up.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->bias.upload(p.bias.data(), p.bias.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->wcscales.upload(p.wcscales.data(), p.wcscales.size() * 4));
  for (auto* v : {&p.inv_s, &p.up, &p.bias, &p.wcscales}) std::vector<float>().swap(*v);
  std::vector<uint16_t>().swap(p.down.bits);
  for (auto* v : {&p.w_codes, &p.w_scales}) std::vector<uint8_t>().swap(*v);
  impl->plan = std::move(p);
  return GpuLinear(std::move(impl));
}

Status GpuLinear::can_implement(int64_t m, DType dtype) const {
  return cuda::can_implement(impl_ ? &impl_->plan : nullptr, m, dtype, "GpuLinear::can_implement");
}

size_t GpuLinear::workspace_size(int64_t max_m) const noexcept {
  return impl_ ? impl_->plan.workspace_size(max_m) : 0;
}

Status GpuLinear::forward(const void* d_x, void* d_y, int64_t m, void* d_workspace,
                          size_t workspace_bytes, void* stream) const {
  cuda::ForwardLaunch fl;
  SVDQ_RETURN_IF_ERROR(cuda::plan_forward(impl_ ? &impl_->plan : nullptr, impl_ ? impl_->weights() : cuda::DeviceWeights{},
                                          d_x, d_y, m, d_workspace, workspace_bytes, &fl));
  return cuda::dispatch(fl, CudaLauncher{static_cast<cudaStream_t>(stream)});
}

Status GpuLinear::read_activations(const void* d_workspace, int64_t m, void* stream,
                                   QuantizedActivations* out) const {
  if (!impl_ || out == nullptr || d_workspace == nullptr || m < 1)
    return Status(StatusCode::kErrorInvalidArgument, "GpuLinear::read_activations: bad arguments");
  const cuda::LinearPlan& L = impl_->plan;
  size_t codes = 0, scales = 0;
  cuda::activations_meta(L, m, out, &codes, &scales);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint8_t* ws = static_cast<const uint8_t*>(d_workspace);
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(out->codes.data(), ws, codes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync"));
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(out->scales.data(), ws + L.codes_bytes(m), scales,
                                                   cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync"));
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(s), "cudaStreamSynchronize"));
  cuda::activations_to_canonical(L, m, out);  // the mma paths' fragment order -> canonical bytes
  return Status::Ok();
}

}  // namespace svdq
