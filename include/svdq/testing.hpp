// svdq/testing.hpp — helpers for tests, the demo and benchmarks; not part of an engine's hot path
// and not included by svdq/svdq.hpp.
//
//   synth::          deterministic DiT-like layers and activations (svdq/synth.hpp)
//   reference_forward_with_activations   reference_forward that also returns the quantized
//                    activations (codes and scales), for byte-equality checks of GPU kernels
//   read_activations the quantized activations a GpuLinear left in its workspace (synchronises)
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

}  // namespace svdq::test_support
