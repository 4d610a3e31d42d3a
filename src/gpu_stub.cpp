// The GPU layer in a build without CUDA (SVDQ_ENABLE_CUDA=OFF): every entry point says so.
#include "svdq/gpu.hpp"

namespace svdq {

struct GpuLinear::Impl {};

namespace {
Status not_built(const char* fn) {
  return Status(StatusCode::kErrorNotSupported,
                std::string(fn) + ": this svdq was built without CUDA (SVDQ_ENABLE_CUDA=OFF)");
}
}  // namespace

bool gpu_compiled() noexcept { return false; }
int gpu_device_count() noexcept { return 0; }

GpuLinear::GpuLinear(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuLinear::GpuLinear(GpuLinear&&) noexcept = default;
GpuLinear& GpuLinear::operator=(GpuLinear&&) noexcept = default;
GpuLinear::~GpuLinear() = default;

Result<GpuLinear> GpuLinear::create(const QuantizedLinear&, DType, int) {
  return not_built("GpuLinear::create");
}
Result<GpuLinear> GpuLinear::create_impl(const QuantizedLinear&, DType, int, const char*, const char* fn) {
  return not_built(fn);
}
Status GpuLinear::can_implement(int64_t, DType) const { return not_built("GpuLinear::can_implement"); }
size_t GpuLinear::workspace_size(int64_t) const noexcept { return 0; }
Status GpuLinear::forward(const void*, void*, int64_t, void*, size_t, void*) const {
  return not_built("GpuLinear::forward");
}
Status GpuLinear::read_activations(const void*, int64_t, void*, QuantizedActivations*) const {
  return not_built("GpuLinear::read_activations");
}
int64_t GpuLinear::in_features() const noexcept { return 0; }
int64_t GpuLinear::out_features() const noexcept { return 0; }
DType GpuLinear::act_dtype() const noexcept { return DType::kBF16; }

}  // namespace svdq
