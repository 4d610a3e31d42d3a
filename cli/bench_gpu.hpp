// cli/bench_gpu.hpp — the device half of `svdq bench --gpu` (docs/cli.md): times svdq::GpuLinear
// against cuBLAS BF16 on the same shape. Plain C++ interface: no CUDA header here, so svdq.cpp
// compiles the same with and without CUDA. bench_gpu.cpp holds the CUDA code when the build has
// it (SVDQ_CLI_CUDA), else only the refusal.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"

namespace svdq_cli {

/// Whether `svdq bench --gpu` can run here. Ok: `device` names the GPU ("NVIDIA H200, sm_90,
/// 60 MiB L2"). Otherwise the reason, naming what is missing: a build without CUDA
/// (kErrorNotSupported), no driver or no visible device (kErrorCuda, with the runtime's error),
/// cuBLAS that cannot be loaded (kErrorNotSupported, with dlerror()). Cheap: call it before any
/// quantization work.
svdq::Status gpu_bench_probe(std::string* device);

/// One timed operation: per-launch seconds over `samples` timed graph replays.
struct GpuTime {
  double median_s = 0, min_s = 0, max_s = 0;
  int samples = 0;
};

struct GpuBenchRun {
  GpuTime svdq, cublas;
  int sets = 0;  ///< copies of inputs, outputs and weights cycled through (their sum > 2x L2)
  int ops = 0;   ///< launches per graph replay
  /// Outputs of the rows asked for (check_rows.size() x N, bf16 bits), from an untimed run.
  std::vector<uint16_t> y_svdq, y_cublas;
};

/// Times y = layer(x) on the GPU for the first m rows of x (bf16 bits, at least m x K): the svdq
/// layer (GpuLinear::forward, both kernels, bias included) and cuBLAS GemmEx of w_bf16 (N x K,
/// bf16 operands, fp32 compute, no bias), each as a CUDA graph of `ops` launches cycling over
/// `sets` buffer sets, 3 warm-up replays, then `repeats` replays timed with CUDA events.
/// `layers`: the uploaded copies of q (one per set), kept by the caller across calls with the same
/// q and grown here as needed (an upload repacks the whole layer: once per copy, not per M).
svdq::Status gpu_bench_run(const svdq::QuantizedLinear& q, const std::vector<uint16_t>& w_bf16,
                           const std::vector<uint16_t>& x_bf16, int64_t m, int repeats,
                           const std::vector<int64_t>& check_rows, std::vector<svdq::GpuLinear>* layers,
                           GpuBenchRun* out);

}  // namespace svdq_cli
