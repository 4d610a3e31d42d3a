// Test-only entry points (svdq/testing.hpp) that forward to private members.
#include "svdq/testing.hpp"

namespace svdq::test_support {

Status read_activations(const GpuLinear& layer, const void* d_workspace, int64_t m, void* stream,
                        QuantizedActivations* out) {
  return layer.read_activations(d_workspace, m, stream, out);
}

}  // namespace svdq::test_support
