// svdq/metrics.hpp — error metrics, computed in double, and a double-precision dense layer.
#pragma once

#include <vector>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

/// ||a - b||_F / ||b||_F over all elements (b is the reference). 0/0 -> 0, x/0 -> Inf.
/// Any non-finite element makes the result NaN. Shapes must match (else NaN).
double relative_error(ConstMatrixRef a, ConstMatrixRef b) noexcept;
/// svdq's one error metric ("relMSE" in the demo, the CLI and docs/quality.md), in double:
///   relMSE = ||a - b||_F^2 / ||b||_F^2   (b: the unquantized layer's output; 0/0 -> 0, x/0 -> Inf)
/// = relative_error^2; SQNR dB = -10 log10(relMSE). Non-finite elements or shapes that differ: NaN.
SVDQ_API double relative_mse(ConstMatrixRef a, ConstMatrixRef b) noexcept;
/// Mean squared error sum((a-b)^2) / count.
double mean_squared_error(ConstMatrixRef a, ConstMatrixRef b) noexcept;
/// Signal-to-quantization-noise ratio of `a` against reference `b`, in dB: -20 log10(rel error).
double sqnr_db(ConstMatrixRef a, ConstMatrixRef b) noexcept;

/// The unquantized layer in double: y = x W^T + b, x M x K, W N x K, bias 1 x N or empty.
/// y is written as row-major M x N doubles (resized).
Status dense_forward(ConstMatrixRef x, ConstMatrixRef W, ConstMatrixRef bias, std::vector<double>* y);

}  // namespace svdq
