// Test-only entry points (svdq/testing.hpp) that forward to private members.
#include "svdq/testing.hpp"

#include <string>

namespace svdq::test_support {

Status read_activations(const GpuLinear& layer, const void* d_workspace, int64_t m, void* stream,
                        QuantizedActivations* out) {
  return layer.read_activations(d_workspace, m, stream, out);
}

Result<GpuLinear> create_on_gemm_path(const QuantizedLinear& q, DType act_dtype, const char* gemm_path,
                                      int device) {
  constexpr const char* kFn = "test_support::create_on_gemm_path";
  if (gemm_path == nullptr)
    return Status(StatusCode::kErrorInvalidArgument, std::string(kFn) + ": gemm_path is null");
  return GpuLinear::create_impl(q, act_dtype, device, gemm_path, kFn);
}

}  // namespace svdq::test_support
