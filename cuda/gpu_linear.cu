// cuda/gpu_linear.cu — host side of the GPU layer: upload/repack once, validate, launch the two
// kernels on the caller's stream. forward() allocates nothing and never synchronises.
#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "gemm_w4a4_dp4a.cuh"
#include "quantize_lora_down.cuh"
#include "svdq/gpu.hpp"

namespace svdq {

namespace {

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status(StatusCode::kErrorCuda,
                std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

constexpr size_t kAlign = 256;
size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

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
  Format format = Format::kInt4;
  DType act = DType::kBF16;
  int64_t n = 0, k = 0;
  int rank = 0, group = 64;
  float t_act = 1.0f, t_prod = 1.0f;
  bool has_bias = false;
  // Device copies, repacked for the kernels (the checkpoint layout is never changed):
  DeviceBuffer w_codes;   // (N, K/2) canonical packed codes (the dp4a kernel reads them as is)
  DeviceBuffer w_scales;  // (N, G) fp32, exact decode of the fp16 / E4M3 group scales
  DeviceBuffer inv_s;     // (K) fp32, 1 / s
  DeviceBuffer down_t;    // (r, K) fp32, lora_down transposed
  DeviceBuffer up;        // (N, r) fp32
  DeviceBuffer bias;      // (N) fp32

  size_t codes_bytes(int64_t m) const { return align_up(static_cast<size_t>(m * (k / 2))); }
  size_t scales_bytes(int64_t m) const {
    return align_up(static_cast<size_t>(m * (k / group) * (format == Format::kInt4 ? 4 : 1)));
  }
  size_t lora_bytes(int64_t m) const { return align_up(static_cast<size_t>(m * rank) * 4); }
};

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

int64_t GpuLinear::in_features() const noexcept { return impl_ ? impl_->k : 0; }
int64_t GpuLinear::out_features() const noexcept { return impl_ ? impl_->n : 0; }
DType GpuLinear::act_dtype() const noexcept { return impl_ ? impl_->act : DType::kBF16; }

Result<GpuLinear> GpuLinear::create(const QuantizedLinear& q, DType act_dtype, int device) {
  constexpr const char* kFn = "GpuLinear::create";
  SVDQ_RETURN_IF_ERROR(validate(q));
  if (act_dtype != DType::kF16 && act_dtype != DType::kBF16)
    return Status(StatusCode::kErrorInvalidArgument,
                  std::string(kFn) + ": act_dtype (" + dtype_name(act_dtype) + ") must be f16 or bf16");
  if (gpu_device_count() == 0)
    return Status(StatusCode::kErrorNotSupported, std::string(kFn) + ": no CUDA device is visible");
  if (device < 0) SVDQ_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device), "cudaSetDevice"));
  cudaDeviceProp prop{};
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  if (prop.major < 8)
    return Status(StatusCode::kErrorArchMismatch,
                  std::string(kFn) + ": device " + prop.name + " is sm_" + std::to_string(prop.major * 10 + prop.minor) +
                      "; svdq's kernels need sm_80 or newer");
  // The build must hold code this device can run (SASS for it or PTX it can JIT).
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, cuda::gemm_w4a4_dp4a_kernel<__nv_bfloat16, 0>) != cudaSuccess) {
    cudaGetLastError();
    return Status(StatusCode::kErrorArchMismatch,
                  std::string(kFn) + ": this build has no kernel image for " + prop.name + " (sm_" +
                      std::to_string(prop.major * 10 + prop.minor) + "); rebuild with it in CMAKE_CUDA_ARCHITECTURES");
  }

  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->format = q.format;
  impl->act = act_dtype;
  impl->n = q.out_features;
  impl->k = q.in_features;
  impl->rank = q.rank;
  impl->group = q.group;
  impl->t_act = q.format == Format::kNvfp4 ? q.act_tensor_scale : 1.0f;
  impl->t_prod = q.act_tensor_scale * q.wtscale;
  impl->has_bias = !q.bias.empty();
  const int64_t n = q.out_features, k = q.in_features, r = q.rank, groups = k / q.group;

  std::vector<float> ws(static_cast<size_t>(n * groups)), inv = q.inverse_smooth();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < groups; ++g) ws[i * groups + g] = q.wscale(i, g);
  std::vector<float> down_t(static_cast<size_t>(r * k)), up(static_cast<size_t>(n * r)), b(q.bias.size());
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t j = 0; j < r; ++j) down_t[j * k + kk] = bits16_to_float(q.lora_down[kk * r + j], q.storage);
  for (int64_t i = 0; i < n * r; ++i) up[i] = bits16_to_float(q.lora_up[i], q.storage);
  for (size_t i = 0; i < b.size(); ++i) b[i] = bits16_to_float(q.bias[i], q.storage);

  SVDQ_RETURN_IF_ERROR(impl->w_codes.upload(q.qweight.data(), q.qweight.size()));
  SVDQ_RETURN_IF_ERROR(impl->w_scales.upload(ws.data(), ws.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->inv_s.upload(inv.data(), inv.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->down_t.upload(down_t.data(), down_t.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->up.upload(up.data(), up.size() * 4));
  SVDQ_RETURN_IF_ERROR(impl->bias.upload(b.data(), b.size() * 4));
  return GpuLinear(std::move(impl));
}

Status GpuLinear::can_implement(int64_t m, DType dtype) const {
  constexpr const char* kFn = "GpuLinear::can_implement";
  if (!impl_) return Status(StatusCode::kErrorInvalidArgument, std::string(kFn) + ": empty (moved-from) layer");
  if (m < 1 || m > (int64_t{1} << 31) - 1)
    return Status(StatusCode::kErrorShape, std::string(kFn) + ": M (" + std::to_string(m) + ") must be in [1, 2^31)");
  if (dtype != impl_->act)
    return Status(StatusCode::kErrorInvalidArgument, std::string(kFn) + ": dtype (" + dtype_name(dtype) +
                                                         ") must be the layer's act dtype (" + dtype_name(impl_->act) + ")");
  return Status::Ok();
}

size_t GpuLinear::workspace_size(int64_t max_m) const noexcept {
  if (!impl_ || max_m < 1) return 0;
  return impl_->codes_bytes(max_m) + impl_->scales_bytes(max_m) + impl_->lora_bytes(max_m);
}

Status GpuLinear::forward(const void* d_x, void* d_y, int64_t m, void* d_workspace,
                          size_t workspace_bytes, void* stream) const {
  constexpr const char* kFn = "GpuLinear::forward";
  SVDQ_RETURN_IF_ERROR(can_implement(m, impl_ ? impl_->act : DType::kF32));
  const Impl& L = *impl_;
  if (d_x == nullptr || d_y == nullptr)
    return Status(StatusCode::kErrorNullPointer, std::string(kFn) + ": x and y must be device pointers, not null");
  if ((reinterpret_cast<uintptr_t>(d_x) | reinterpret_cast<uintptr_t>(d_y)) % 16 != 0)
    return Status(StatusCode::kErrorInvalidArgument, std::string(kFn) + ": x and y must be 16-byte aligned");
  if (d_workspace == nullptr || reinterpret_cast<uintptr_t>(d_workspace) % kAlign != 0)
    return Status(StatusCode::kErrorWorkspace, std::string(kFn) + ": workspace must be non-null and 256-byte aligned");
  if (workspace_bytes < workspace_size(m))
    return Status(StatusCode::kErrorWorkspace, std::string(kFn) + ": workspace_bytes (" + std::to_string(workspace_bytes) +
                                                   ") < workspace_size(M) (" + std::to_string(workspace_size(m)) + ")");
  uint8_t* ws = static_cast<uint8_t*>(d_workspace);
  uint8_t* codes = ws;
  uint8_t* scales = codes + L.codes_bytes(m);
  float* lora = reinterpret_cast<float*>(scales + L.scales_bytes(m));
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  cuda::QuantizeParams qp{d_x, m, L.k, static_cast<const float*>(L.inv_s.ptr), L.t_act, codes, scales,
                          static_cast<const float*>(L.down_t.ptr), L.rank, lora};
  cuda::GemmParams gp{m, L.n, L.k, codes, scales, static_cast<const uint8_t*>(L.w_codes.ptr),
                      static_cast<const float*>(L.w_scales.ptr), L.t_prod, lora,
                      static_cast<const float*>(L.up.ptr), L.rank,
                      L.has_bias ? static_cast<const float*>(L.bias.ptr) : nullptr, d_y};
  const dim3 qgrid(static_cast<unsigned>(m));
  const dim3 ggrid(static_cast<unsigned>((L.n + cuda::kBlkN - 1) / cuda::kBlkN),
                   static_cast<unsigned>((m + cuda::kBlkM - 1) / cuda::kBlkM));
  const bool bf16 = L.act == DType::kBF16, int4 = L.format == Format::kInt4;
  if (bf16 && int4) {
    cuda::quantize_lora_down_kernel<__nv_bfloat16, 0><<<qgrid, cuda::kQuantThreads, 0, s>>>(qp);
    cuda::gemm_w4a4_dp4a_kernel<__nv_bfloat16, 0><<<ggrid, cuda::kGemmThreads, 0, s>>>(gp);
  } else if (bf16) {
    cuda::quantize_lora_down_kernel<__nv_bfloat16, 1><<<qgrid, cuda::kQuantThreads, 0, s>>>(qp);
    cuda::gemm_w4a4_dp4a_kernel<__nv_bfloat16, 1><<<ggrid, cuda::kGemmThreads, 0, s>>>(gp);
  } else if (int4) {
    cuda::quantize_lora_down_kernel<__half, 0><<<qgrid, cuda::kQuantThreads, 0, s>>>(qp);
    cuda::gemm_w4a4_dp4a_kernel<__half, 0><<<ggrid, cuda::kGemmThreads, 0, s>>>(gp);
  } else {
    cuda::quantize_lora_down_kernel<__half, 1><<<qgrid, cuda::kQuantThreads, 0, s>>>(qp);
    cuda::gemm_w4a4_dp4a_kernel<__half, 1><<<ggrid, cuda::kGemmThreads, 0, s>>>(gp);
  }
  return cuda_status(cudaGetLastError(), "kernel launch");
}

Status GpuLinear::read_activations(const void* d_workspace, int64_t m, void* stream,
                                   QuantizedActivations* out) const {
  if (!impl_ || out == nullptr || d_workspace == nullptr || m < 1)
    return Status(StatusCode::kErrorInvalidArgument, "GpuLinear::read_activations: bad arguments");
  const Impl& L = *impl_;
  out->format = L.format;
  out->rows = m;
  out->cols = L.k;
  out->tensor_scale = L.t_act;
  const size_t codes = static_cast<size_t>(m * (L.k / 2));
  const size_t scales = static_cast<size_t>(m * (L.k / L.group) * (L.format == Format::kInt4 ? 4 : 1));
  out->codes.resize(codes);
  out->scales.resize(scales);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint8_t* ws = static_cast<const uint8_t*>(d_workspace);
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(out->codes.data(), ws, codes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync"));
  SVDQ_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(out->scales.data(), ws + L.codes_bytes(m), scales,
                                                   cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync"));
  return cuda_status(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

}  // namespace svdq
