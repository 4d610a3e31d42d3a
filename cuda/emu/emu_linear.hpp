// cuda/emu/emu_linear.hpp — the GPU layer on the emulated device: the same host logic
// (cuda/linear_host.hpp) and the same kernel source as svdq::GpuLinear, with "device memory" in
// host memory and each launch run by the emulated runtime (cuda/emu/runtime.hpp). For tests and
// tools only, not a product API: it is not installed and not part of libsvdq.
//
// The interface mirrors GpuLinear's; pointers are host pointers, `stream` is ignored (every
// forward completes before it returns). A violation found by the runtime (a race, a deadlock,
// an out-of-bounds shared access, ...) is returned as kErrorInternal with the runtime's report.
#pragma once

#include <memory>

#include "runtime.hpp"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"

namespace svdq::emu {

class EmuLinear {
 public:
  /// `sm`: the emulated device's compute capability (major * 10 + minor), which selects kernel 2
  /// through cuda/dispatch.hpp's table as on a GPU (80, 86, 87, 89: mma_s4; 90: mma_s8; others:
  /// kErrorArchMismatch); 0 runs the CUDA-core dp4a kernel, which no architecture selects.
  static Result<EmuLinear> create(const QuantizedLinear& q, DType act_dtype, int device = -1, int sm = 0);

  EmuLinear(EmuLinear&&) noexcept;
  EmuLinear& operator=(EmuLinear&&) noexcept;
  ~EmuLinear();

  Status can_implement(int64_t m, DType dtype) const;
  size_t workspace_size(int64_t max_m) const noexcept;
  Status forward(const void* x, void* y, int64_t m, void* workspace, size_t workspace_bytes, void* stream) const;
  Status read_activations(const void* workspace, int64_t m, void* stream, QuantizedActivations* out) const;
  int64_t in_features() const noexcept;
  int64_t out_features() const noexcept;
  DType act_dtype() const noexcept;

  /// false: kernel 1 runs unsplit whatever M (k_split's S = 1), to compare with split-K in tests.
  void set_split_k(bool on);
  /// Launch options (interleaving seed, ...) of the following forward() calls.
  void set_options(const LaunchOptions& o);

  struct Impl;

 private:
  explicit EmuLinear(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq::emu
