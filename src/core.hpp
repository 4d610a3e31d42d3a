// src/core.hpp — internal building blocks of the offline pipeline (Eigen inside; not installed).
// Tests include this header to check each step on its own.
#pragma once

#include <Eigen/Dense>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "svdq/formats.hpp"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq::detail {

/// Range validate() accepts for an nvfp4 tensor scale (wtscale, act_tensor_scale): a normal float
/// (so 1/t is finite) up to FLT_MAX / (6 * 448) (so the largest code times the largest group
/// scale times t is finite). The quantizer clamps what it computes into this range.
inline constexpr float kMinTensorScale = 1.17549435e-38f;  // FLT_MIN = 2^-126
inline constexpr float kMaxTensorScale = 3.40282347e+38f / (6.0f * 448.0f);

using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixRMd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Copies any view into a row-major float matrix.
MatrixRM to_eigen(ConstMatrixRef v);

/// Rows of a product computed together by one task of gemm_rows: a fixed number, so which rows
/// share a task (and so every sum's order) never depends on the thread count.
inline constexpr int64_t kGemmRowBlock = 64;

/// out = a * b (out resized to a.rows() x b.cols()), or out -= a * b with subtract. The rows of
/// out are split into fixed blocks of kGemmRowBlock, each a single-threaded Eigen GEMM (Eigen is
/// built with EIGEN_DONT_PARALLELIZE), run in parallel over the blocks: the same bits for any
/// thread count. a and b are any Eigen expressions with row access (matrices, transposes).
template <typename Out, typename A, typename B>
void gemm_rows(const A& a, const B& b, Out* out, bool subtract = false) {
  const int64_t rows = a.rows();
  if (!subtract) out->resize(rows, b.cols());
  const int64_t blocks = (rows + kGemmRowBlock - 1) / kGemmRowBlock;
#pragma omp parallel for schedule(static) if (blocks > 1 && rows * a.cols() * b.cols() > (1 << 18))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * kGemmRowBlock, rb = std::min(kGemmRowBlock, rows - r0);
    if (subtract)
      out->middleRows(r0, rb).noalias() -= a.middleRows(r0, rb) * b;
    else
      out->middleRows(r0, rb).noalias() = a.middleRows(r0, rb) * b;
  }
}

/// A double rounded once (to nearest even) to a 16-bit storage dtype's bits.
uint16_t double_to_bits16(double v, DType storage);

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
  /// Randomized path: the sketch's right singular vectors (cols x l, l = r + oversample), a warm
  /// start for a nearby matrix; empty on the exact path.
  MatrixRM basis;
};
/// With `right` (cols x c) the SVD is of the product a * right, which the randomized path never
/// forms (it multiplies by the factors in turn). With `start` (cols x l, e.g. a nearby matrix's
/// `basis`) the randomized range finder starts from it instead of a Gaussian test matrix (a warm
/// start: fewer power iterations reach the same accuracy); ignored when its shape does not fit.
LowRank truncated_svd(const MatrixRM& a, int rank, const SvdOptions& options,
                      const MatrixRM* right = nullptr, const MatrixRM* start = nullptr);

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

/// How the residual is rounded (the refinements of quantize_linear).
struct WeightQuantOptions {
  bool clip_search = false;
  const Eigen::VectorXd* h_diag = nullptr;  ///< (K) diag(Xh^T Xh): weights the clipping error
  const Eigen::MatrixXd* hessian = nullptr;  ///< (K, K) Xh^T Xh: GPTQ when gptq.enabled
  GptqOptions gptq;
};
/// The value codes are divided by for stored scale bytes (int4: the fp16; nvfp4: E4M3 * t).
float stored_scale_value(Format f, const uint8_t* bytes, float t);
/// The group scale of `amax` in a format: writes its stored bytes (int4: 2, fp16; nvfp4: 1, E4M3)
/// and returns stored_scale_value of them.
float group_scale(Format f, float amax, float t, uint8_t* bytes);
/// Code of w for a group scale value (0 for a zero scale).
inline uint8_t encode_with(Format f, float w, float scale) {
  if (scale == 0.0f) return 0;
  return f == Format::kInt4 ? encode_int4(w / scale) : encode_e2m1(w / scale);
}
/// One group (gs <= 64 values) rounded to nearest; with clip_search, the clipping ratio in
/// {1, .95, ..., .60} with the least (h-weighted, h may be null) squared error. Writes gs codes
/// (unpacked) and the scale bytes; returns the chosen scale's value (stored_scale_value).
float quantize_group(Format f, const float* w, int gs, float t, bool clip_search, const double* h,
                     uint8_t* codes, uint8_t* scale_bytes);
/// GPTQ with static groups on r (rows, K) and options.hessian (K, K); see GptqOptions.
Result<QuantizedWeight> gptq_quantize(const MatrixRM& r, Format format, float tensor_scale,
                                      const WeightQuantOptions& options);

/// nvfp4 weight tensor scale of a residual: amax / (6 * 448), or 1 for an all-zero residual.
float nvfp4_tensor_scale(const MatrixRM& r);
/// quantize_weight with the refinements; `tensor_scale` is the nvfp4 t (ignored for int4), so a
/// subset of rows can be quantized exactly as the whole matrix would be.
Result<QuantizedWeight> quantize_weight(const MatrixRM& r, Format format, float tensor_scale,
                                        const WeightQuantOptions& options);
/// Dequantized values (q * scale_g * t) of a QuantizedWeight of shape (rows, k).
MatrixRM dequantize(const QuantizedWeight& q, Format format, int64_t rows, int64_t k);

/// One activation group of `gs` smoothed values xh quantized by the contract (formats.hpp):
/// `gs` unpacked codes and the stored scale (int4: 4 bytes, the fp32; nvfp4: 1 byte, E4M3).
/// quantize_activations and CpuLinear both call these, so their codes and scales agree.
void quantize_act_group_int4(const float* xh, int gs, uint8_t* codes, uint8_t* scale_bytes);
void quantize_act_group_nvfp4(const float* xh, int gs, float t_act, uint8_t* codes,
                              uint8_t* scale_byte);
/// Unsigned int4 (act_unsigned layers): codes 0..15 of absmax / 15, the fp32 scale's 4 bytes.
void quantize_act_group_uint4(const float* xh, int gs, uint8_t* codes, uint8_t* scale_bytes);

/// Dequantizes codes and scales back to an N x K float matrix (q * scale_g * t, times c_n when
/// the layer has wcscales).
MatrixRM dequantize_weight(const QuantizedLinear& layer);

}  // namespace svdq::detail
