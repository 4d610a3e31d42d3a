// src/core.hpp — internal building blocks of the offline pipeline (Eigen inside; not installed).
// Tests include this header to check each step on its own.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

#include "svdq/formats.hpp"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq::detail {

using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixRMd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Copies any view into a row-major float matrix.
MatrixRM to_eigen(ConstMatrixRef v);

/// Smoothing factors s_j = amax_x[j]^alpha / amax_w[j]^beta, computed in double, rounded to the
/// 16-bit `storage` dtype; zero, subnormal-to-zero or non-finite results become 1. Returns the
/// 16-bit bits. amax_x may be null when alpha == 0.
std::vector<uint16_t> smoothing_factors(const float* amax_x, const float* amax_w, int64_t k,
                                        float alpha, float beta, DType storage);

/// Per-column absmax of W (N x K): amax_w[j] = max_n |W[n, j]|.
std::vector<float> column_absmax(const MatrixRM& w);

/// Truncated SVD: A ~= up * down with up = U_r Sigma_r (rows x r), down = V_r^T (r x cols).
struct LowRank {
  MatrixRM up;    ///< (rows, r)
  MatrixRM down;  ///< (r, cols)
  std::vector<double> singular_values;  ///< the r leading singular values found
};
LowRank truncated_svd(const MatrixRM& a, int rank, const SvdOptions& options);

/// Weight groups quantized in place of a residual R (N x K): codes packed [N][K/2], scales as in
/// QuantizedLinear::wscales, and the tensor scale (nvfp4).
struct QuantizedWeight {
  std::vector<uint8_t> packed;
  std::vector<uint8_t> scales;
  float tensor_scale = 1.0f;
};
/// int4:  scale_g = fp16(amax_g / 7), q = clamp(rint(w / scale_g), -7, 7)
/// nvfp4: t = amax / (6 * 448), scale_g = E4M3(amax_g / 6 / t), q = E2M1_rn(w / (scale_g * t))
/// A group whose scale is 0 gets codes 0. Errors: an int4 group scale that overflows fp16.
Result<QuantizedWeight> quantize_weight(const MatrixRM& r, Format format);

/// Dequantizes codes and scales back to an N x K float matrix (q * scale_g * t).
MatrixRM dequantize_weight(const QuantizedLinear& layer);

}  // namespace svdq::detail
