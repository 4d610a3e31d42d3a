// cuda/emu/emu_linear.cpp — svdq::emu::EmuLinear: linear_host.hpp's plan and dispatch, the kernels
// compiled by g++ (SVDQ_EMU) and launched on the emulated device.
#include "emu_linear.hpp"

#include <cstring>
#include <string>

#include "../linear_host.hpp"

namespace svdq::emu {

struct EmuLinear::Impl {
  cuda::LinearPlan plan;  // its arrays are the "device" copies
  LaunchOptions options;
  cuda::DeviceWeights weights() const {
    return {plan.w_codes.data(), plan.w_scales.data(), plan.inv_s.data(), plan.down.bits.data(), plan.up.data(),
            plan.bias.empty() ? nullptr : plan.bias.data(), plan.wcscales.empty() ? nullptr : plan.wcscales.data()};
  }
};

namespace {

struct EmuLauncher {
  const LaunchOptions* options;
  template <typename T, int kKind>
  Status operator()(const cuda::ForwardLaunch& fl) const {
    const char* names[2][2] = {{"quantize_lora_down_kernel<__half, 0>", "quantize_lora_down_kernel<__half, 1>"},
                               {"quantize_lora_down_kernel<__nv_bfloat16, 0>", "quantize_lora_down_kernel<__nv_bfloat16, 1>"}};
    const std::string gname = cuda::gemm_kernel_name(fl.path, fl.bf16, kKind);
    const cuda::GemmKernel gemm = cuda::gemm_kernel<T, kKind>(fl.path);
    const int b = fl.bf16 ? 1 : 0;
    const cuda::QuantizeParams qp = fl.qp;
    const cuda::GemmParams gp = fl.gp;
    constexpr int kQKind = cuda::quantize_kind(kKind);  // kind 2 runs kernel 1's int4 instance
    std::string err = launch(names[b][kQKind], dim3(fl.qgrid.x, fl.qgrid.y, fl.qgrid.z),
                             dim3(fl.qblock.x, fl.qblock.y, fl.qblock.z), 0, *options,
                             [&] { cuda::quantize_lora_down_kernel<T, kQKind>(qp); });
    if (err.empty() && fl.reduce) {
      const cuda::LoraReduceParams rp = fl.rp;
      err = launch("lora_reduce_kernel", dim3(fl.rgrid.x, fl.rgrid.y, fl.rgrid.z),
                   dim3(fl.rblock.x, fl.rblock.y, fl.rblock.z), 0, *options, [&] { cuda::lora_reduce_kernel<0>(rp); });
    }
    if (err.empty())
      err = launch(gname.c_str(), dim3(fl.ggrid.x, fl.ggrid.y, fl.ggrid.z),
                   dim3(fl.gblock.x, fl.gblock.y, fl.gblock.z), 0, *options, [&] { gemm(gp); });
    if (!err.empty()) return Status(StatusCode::kErrorInternal, "emulated device: " + err);
    return Status::Ok();
  }
};

}  // namespace

EmuLinear::EmuLinear(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EmuLinear::EmuLinear(EmuLinear&&) noexcept = default;
EmuLinear& EmuLinear::operator=(EmuLinear&&) noexcept = default;
EmuLinear::~EmuLinear() = default;

Result<EmuLinear> EmuLinear::create(const QuantizedLinear& q, DType act_dtype, int, int sm) {
  auto plan = cuda::make_plan(q, act_dtype, "GpuLinear::create");
  if (!plan.ok()) return plan.status();
  if (sm != 0) {
    auto path = cuda::gemm_path_for(sm / 10, sm % 10, "GpuLinear::create");
    if (!path.ok()) return path.status();
    cuda::use_gemm_path(&*plan, *path);  // repacks the weights for this path
  }
  auto impl = std::make_unique<Impl>();
  impl->plan = std::move(*plan);
  return EmuLinear(std::move(impl));
}

void EmuLinear::set_options(const LaunchOptions& o) {
  if (impl_) impl_->options = o;
}

void EmuLinear::set_split_k(bool on) {
  if (impl_) impl_->plan.split_k = on;
}

Status EmuLinear::can_implement(int64_t m, DType dtype) const {
  return cuda::can_implement(impl_ ? &impl_->plan : nullptr, m, dtype, "GpuLinear::can_implement");
}

size_t EmuLinear::workspace_size(int64_t max_m) const noexcept { return impl_ ? impl_->plan.workspace_size(max_m) : 0; }

Status EmuLinear::forward(const void* x, void* y, int64_t m, void* workspace, size_t workspace_bytes, void*) const {
  cuda::ForwardLaunch fl;
  SVDQ_RETURN_IF_ERROR(cuda::plan_forward(impl_ ? &impl_->plan : nullptr, impl_ ? impl_->weights() : cuda::DeviceWeights{},
                                          x, y, m, workspace, workspace_bytes, &fl));
  return cuda::dispatch(fl, EmuLauncher{&impl_->options});
}

Status EmuLinear::read_activations(const void* workspace, int64_t m, void*, QuantizedActivations* out) const {
  if (!impl_ || out == nullptr || workspace == nullptr || m < 1)
    return Status(StatusCode::kErrorInvalidArgument, "GpuLinear::read_activations: bad arguments");
  size_t codes = 0, scales = 0;
  cuda::activations_meta(impl_->plan, m, out, &codes, &scales);
  const auto* ws = static_cast<const uint8_t*>(workspace);
  std::memcpy(out->codes.data(), ws, codes);
  std::memcpy(out->scales.data(), ws + impl_->plan.codes_bytes(m), scales);
  cuda::activations_to_canonical(impl_->plan, m, out);  // fragment order on the mma paths
  return Status::Ok();
}

int64_t EmuLinear::in_features() const noexcept { return impl_ ? impl_->plan.k : 0; }
int64_t EmuLinear::out_features() const noexcept { return impl_ ? impl_->plan.n : 0; }
DType EmuLinear::act_dtype() const noexcept { return impl_ ? impl_->plan.act : DType::kBF16; }

}  // namespace svdq::emu
