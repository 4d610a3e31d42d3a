// svdq/testing.hpp — helpers for tests, the demo and benchmarks; not part of an engine's hot path
// and not included by svdq/svdq.hpp.
//
//   synth::          deterministic DiT-like layers and activations (svdq/synth.hpp)
//   reference_forward_with_activations   reference_forward that also returns the quantized
//                    activations (codes and scales), for byte-equality checks of GPU kernels
//   read_activations the quantized activations a GpuLinear left in its workspace (synchronises)
//   create_on_gemm_path  a GpuLinear whose GEMM runs another compiled path than the device's own
#pragma once

#include <cstdint>

#include "svdq/export.hpp"
#include "svdq/formats.hpp"
#include "svdq/gpu.hpp"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/synth.hpp"
#include "svdq/types.hpp"

namespace svdq::test_support {

/// reference_forward(layer, x, y); if act is not null it also receives the quantized activations
/// (the contract's codes and scales), exactly what quantize_activations returns for x.
SVDQ_API Status reference_forward_with_activations(const QuantizedLinear& layer, ConstMatrixRef x,
                                                   MatrixRef y, QuantizedActivations* act);

// read_activations(const GpuLinear&, d_workspace, m, stream, out) is declared in svdq/gpu.hpp
// (it needs the class's private state): the quantized activations of the last stage-1 output in
// `d_workspace`, copied to the host (codes M x K/2, scales M x groups). Synchronises the stream.

// create_on_gemm_path(q, act_dtype, gemm_path, device), declared in svdq/gpu.hpp (a friend of
// GpuLinear): GpuLinear::create, but kernel 2 runs `gemm_path` ("mma_s4" or "mma_s8", cuda/dispatch.hpp) instead of the
// path the device's architecture selects, e.g. the sm_80 kernel's s4 mma on an H200 (where the
// s4 mma is emulated by a subroutine: correct and slow) — issue 9's "the sm_80 s4 kernel's
// correctness cases on an H200". Errors in a CUDA build: an unknown name (kErrorInvalidArgument,
// naming the accepted ones); a path the kernel image this device runs does not hold
// (kErrorArchMismatch: mma_s8 below sm_90; dp4a, which only the emulated device compiles);
// otherwise as create(). Without CUDA: kErrorNotSupported whatever the name, as create().

}  // namespace svdq::test_support
