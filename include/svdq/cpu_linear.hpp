// svdq/cpu_linear.hpp — a prepared W4A4 linear layer for CPU engines (and for tests).
//
// The same call sequence as the GPU layer, without a stream:
//   auto layer = CpuLinear::create(q);                        // decodes and repacks once
//   size_t bytes = layer->workspace_size(max_M);              // caller allocates once
//   layer->forward(x, y, M, workspace, bytes, threads);       // no allocation inside
//
// forward() gives the same bits as reference_forward() on the same layer and x, for every thread
// count: the activation codes and scales follow the contract byte for byte, the group sums P_g
// are exact, the groups are accumulated with fmaf in order, and the low-rank branch is summed in
// the contract's fixed order (docs/formats.md, "GEMM and epilogue"). Each output element is
// computed by one thread with the same instructions, so the thread count never changes a bit.
//
// Threads: `threads` OpenMP threads for this call only (a num_threads clause; the process's
// OpenMP settings are neither read nor changed). A CpuLinear is immutable after create():
// concurrent forward() calls with different workspaces and outputs are safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "svdq/export.hpp"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

class SVDQ_API CpuLinear {
 public:
  /// Validates `q` and prepares it: weight codes decoded to int8 in a K-major layout, scales,
  /// 1/s, the low-rank factors and the bias decoded to fp32. `q` is not referenced afterwards.
  static Result<CpuLinear> create(const QuantizedLinear& q);

  CpuLinear(CpuLinear&&) noexcept;
  CpuLinear& operator=(CpuLinear&&) noexcept;
  CpuLinear(const CpuLinear&) = delete;
  CpuLinear& operator=(const CpuLinear&) = delete;
  ~CpuLinear();

  /// Workspace bytes forward() needs for up to max_m rows (64-byte aligned pieces); 0 for max_m <= 0.
  size_t workspace_size(int64_t max_m) const noexcept;

  /// y[0:m, :] = the W4A4 layer applied to x[0:m, :].
  ///   x: at least m rows of in_features columns (f32/f16/bf16), any leading dimension >= cols.
  ///   y: at least m rows of out_features columns (f32/f16/bf16), ld >= cols; must not overlap x.
  ///   workspace: at least workspace_size(m) bytes, 64-byte aligned (null only when m == 0).
  ///   threads: >= 1 (1 runs on the calling thread).
  /// Errors (Status, nothing written to y): shapes, a null pointer, a misaligned or short
  /// workspace, threads < 1, x and y overlapping. A NaN/Inf in row i of x makes row i of y NaN.
  Status forward(ConstMatrixRef x, MatrixRef y, int64_t m, void* workspace, size_t workspace_bytes,
                 int threads) const;

  int64_t in_features() const noexcept;
  int64_t out_features() const noexcept;
  int rank() const noexcept;
  Format format() const noexcept;

  struct Impl;

 private:
  explicit CpuLinear(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq
