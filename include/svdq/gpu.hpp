// svdq/gpu.hpp — the GPU W4A4 linear layer. Plain C++: no CUDA headers; a stream is passed as an
// opaque pointer (a cudaStream_t; nullptr is the legacy default stream).
//
// CUTLASS's call sequence:
//   auto layer = GpuLinear::create(q, DType::kBF16);        // uploads and repacks once
//   layer->can_implement(M);                                 // Status
//   size_t bytes = layer->workspace_size(max_M);             // caller allocates once
//   layer->forward(d_x, d_y, M, d_workspace, bytes, stream); // no allocation, no sync, no read-back
//
// forward() runs two fused kernels: (1) quantize + low-rank down: each activation is read once;
// the 4-bit codes and scales (byte-equal to svdq::quantize_activations, in the GEMM's fragment
// order) and x·lora_down (fp32) are written to the workspace (for small M, K is split over several CTAs and a small fixed-order
// pass adds their partial x·lora_down); (2) the 4-bit GEMM with the contract's group-ordered fp32
// accumulation, + lora·lora_upᵀ + bias in the epilogue, y in the activation dtype. Deterministic
// (no atomics): the same inputs give the same bits. Thread-safe: concurrent forward() calls on
// different streams with different workspaces. Capturable in a CUDA graph.
//
// Kernel paths (docs/gpu.md): kernel 2 runs on tensor cores, mma.sync s4·s4 on sm_80/86/87/89,
// s8·s8 (int4 codes widened) on sm_90, bf16 for nvfp4 on both; the int4 group sums P_g are exact
// integers either way. Kernel 1's down-projection runs on bf16/f16 mma. In the workspace the
// codes and scales are in the GEMM's fragment order (read_activations below returns the canonical
// bytes). None of this has run on a GPU yet: it is tested on the emulated device (docs/gpu.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

class GpuLinear;
namespace test_support {
SVDQ_API Status read_activations(const GpuLinear& layer, const void* d_workspace, int64_t m,
                                 void* stream, QuantizedActivations* out);
SVDQ_API Result<GpuLinear> create_on_gemm_path(const QuantizedLinear& q, DType act_dtype,
                                               const char* gemm_path, int device);
}  // namespace test_support

/// True when this build has the CUDA kernels (SVDQ_ENABLE_CUDA) — says nothing about a device.
bool gpu_compiled() noexcept;
/// Number of visible CUDA devices (0 without a driver, a device or CUDA in the build).
int gpu_device_count() noexcept;

/// A QuantizedLinear resident on one GPU, for activations of one 16-bit dtype.
class GpuLinear {
 public:
  /// Uploads `q` to the current device (or `device` >= 0) and repacks it for the kernels.
  /// act_dtype: kF16 or kBF16 (x and y). Errors: not a CUDA build (kErrorNotSupported), no device,
  /// an architecture without a kernel — anything but sm_80/86/87/89/90 (kErrorArchMismatch, see
  /// cuda/dispatch.hpp) —, an invalid layer, out of memory.
  static Result<GpuLinear> create(const QuantizedLinear& q, DType act_dtype, int device = -1);

  GpuLinear(GpuLinear&&) noexcept;
  GpuLinear& operator=(GpuLinear&&) noexcept;
  GpuLinear(const GpuLinear&) = delete;
  GpuLinear& operator=(const GpuLinear&) = delete;
  ~GpuLinear();

  /// Whether forward() can run M rows of `dtype` here: M >= 1, dtype equal to the layer's.
  Status can_implement(int64_t m, DType dtype) const;
  /// Workspace bytes forward() needs for up to max_m rows (256-byte aligned pieces).
  size_t workspace_size(int64_t max_m) const noexcept;
  /// y (M x N, row-major, act dtype) = the W4A4 layer applied to x (M x K, row-major, act dtype).
  /// d_x, d_y, d_workspace: device pointers, 16-byte aligned; workspace_bytes >= workspace_size(M).
  Status forward(const void* d_x, void* d_y, int64_t m, void* d_workspace, size_t workspace_bytes,
                 void* stream) const;

  int64_t in_features() const noexcept;
  int64_t out_features() const noexcept;
  DType act_dtype() const noexcept;

  struct Impl;

 private:
  // Test-only: reached through svdq::test_support::read_activations and create_on_gemm_path
  // (svdq/testing.hpp).
  friend Status test_support::read_activations(const GpuLinear&, const void*, int64_t, void*,
                                          QuantizedActivations*);
  friend Result<GpuLinear> test_support::create_on_gemm_path(const QuantizedLinear&, DType,
                                                             const char*, int);
  // create() with kernel 2's path forced (gemm_path: a cuda/dispatch.hpp name; nullptr: the
  // device's own); fn names the caller in errors.
  static Result<GpuLinear> create_impl(const QuantizedLinear& q, DType act_dtype, int device,
                                       const char* gemm_path, const char* fn);
  Status read_activations(const void* d_workspace, int64_t m, void* stream,
                          QuantizedActivations* out) const;

  explicit GpuLinear(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq
