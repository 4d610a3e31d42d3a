// The CPU reference W4A4 forward (docs/formats.md, "GEMM and epilogue").
//
// The group sums P_g = sum_{k in g} qx[m,k] qw[n,k] are computed with a float GEMM on the decoded
// codes. That is exact, whatever order the GEMM sums in: int4 products are integers and every
// partial sum is an integer of magnitude <= 64 * 49 < 2^24; nvfp4 products are multiples of 1/4
// and every partial sum is a multiple of 1/4 of magnitude <= 16 * 36 = 576, i.e. < 2^24 quarters;
// unsigned int4 activations (0..15) times int4 weights (-8..7) stay integers <= 64 * 120 < 2^24.
// The cross-group accumulation then follows the contract literally: fmaf in group order.
#include <algorithm>
#include <cmath>

#include "check.hpp"
#include "core.hpp"
#include "svdq/testing.hpp"

namespace svdq {

namespace {

using detail::MatrixRM;
using MatrixCM = Eigen::MatrixXf;

constexpr int64_t kRowBlock = 32;  // rows of x per task: acc (kRowBlock, N) stays in cache

// Decoded weight codes, one (group, N) column-major block per group: wg[g](e, n) = q[n, g*gs + e].
std::vector<MatrixCM> decode_weight_groups(const QuantizedLinear& l) {
  const int64_t n = l.out_features, k = l.in_features;
  const int gs = l.group;
  std::vector<MatrixCM> wg(static_cast<size_t>(k / gs), MatrixCM(gs, n));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* row = l.qweight.data() + i * (k / 2);
    for (int64_t j = 0; j < k; ++j)
      wg[j / gs](j % gs, i) = decode_code(l.format, packed_nibble(row, j));
  }
  return wg;
}

Status check_forward_args(const QuantizedLinear& layer, ConstMatrixRef x, MatrixRef y) {
  constexpr const char* kFn = "reference_forward";
  SVDQ_RETURN_IF_ERROR(validate(layer));
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "x", x));
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "y", y));
  if (x.cols != layer.in_features)
    return detail::error(StatusCode::kErrorShape, kFn, ": x.cols (", x.cols,
                         ") must equal in_features (", layer.in_features, ")");
  if (y.rows != x.rows || y.cols != layer.out_features)
    return detail::error(StatusCode::kErrorShape, kFn, ": y must be ", x.rows, " x ",
                         layer.out_features, " (x.rows x out_features), got ", y.rows, " x ",
                         y.cols);
  if (x.rows > 0 && x.cols > 0 && y.cols > 0) {  // byte ranges [first, last] must not overlap
    // check_matrix bounded both extents (no overflow, no wrap-around), so these sums are exact.
    int64_t xb = 0, yb = 0;
    detail::view_extent_bytes(x.rows, x.cols, x.ld, x.dtype, &xb);
    detail::view_extent_bytes(y.rows, y.cols, y.ld, y.dtype, &yb);
    const auto x0 = reinterpret_cast<uintptr_t>(x.data), y0 = reinterpret_cast<uintptr_t>(y.data);
    const uintptr_t x1 = x0 + static_cast<uintptr_t>(xb) - 1, y1 = y0 + static_cast<uintptr_t>(yb) - 1;
    if (x0 <= y1 && y0 <= x1)
      return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": y must not alias (overlap) x");
  }
  return Status::Ok();
}

Status reference_forward_impl(const QuantizedLinear& layer, ConstMatrixRef x, MatrixRef y,
                              QuantizedActivations* act) {
  SVDQ_RETURN_IF_ERROR(check_forward_args(layer, x, y));
  const int64_t m_rows = x.rows, n = layer.out_features, k = layer.in_features;
  const int gs = layer.group, r = layer.rank;
  const int64_t groups = k / gs;

  QuantizedActivations local;
  QuantizedActivations& qa = act != nullptr ? *act : local;
  const std::vector<float> inv_s = layer.inverse_smooth();
  if (layer.act_unsigned)  // validate() refuses unsigned activations with a rotation
    SVDQ_RETURN_IF_ERROR(quantize_activations_unsigned(x, inv_s.data(), layer.act_shift, &qa));
  else
    SVDQ_RETURN_IF_ERROR(quantize_activations(layer.format, x, inv_s.data(), layer.act_tensor_scale,
                                              &qa, layer.rotation));
  if (m_rows == 0) return Status::Ok();

  const std::vector<MatrixCM> wg = decode_weight_groups(layer);
  std::vector<float> sw(static_cast<size_t>(n * groups));  // (N, groups) weight scales
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < groups; ++g) sw[i * groups + g] = layer.wscale(i, g);
  const float t_prod = layer.act_tensor_scale * layer.wtscale;
  std::vector<float> wc(layer.wcscales.size());  // nvfp4 per-channel c_n (empty: none)
  for (size_t i = 0; i < wc.size(); ++i) wc[i] = bits16_to_float(layer.wcscales[i], layer.storage);

  // Low-rank branch operands as floats: lora_down (K, r), lora_up (N, r).
  MatrixRM down(k, r), up(n, r);
  for (int64_t i = 0; i < k * r; ++i) down.data()[i] = bits16_to_float(layer.lora_down[i], layer.storage);
  for (int64_t i = 0; i < n * r; ++i) up.data()[i] = bits16_to_float(layer.lora_up[i], layer.storage);
  std::vector<float> bias(static_cast<size_t>(n), 0.0f);
  for (size_t i = 0; i < layer.bias.size(); ++i) bias[i] = bits16_to_float(layer.bias[i], layer.storage);

  const int64_t blocks = (m_rows + kRowBlock - 1) / kRowBlock;
  detail::ParallelGuard guard;
#pragma omp parallel for schedule(dynamic)
  for (int64_t blk = 0; blk < blocks; ++blk) guard.run([&] {
    const int64_t m0 = blk * kRowBlock, mb = std::min(kRowBlock, m_rows - m0);
    // Decoded activation codes of this block, (mb, K) row-major.
    MatrixRM xq(mb, k);
    for (int64_t i = 0; i < mb; ++i)
      for (int64_t j = 0; j < k; ++j) xq(i, j) = qa.code_value(m0 + i, j);

    MatrixRM acc = MatrixRM::Zero(mb, n), p(mb, n);
    for (int64_t g = 0; g < groups; ++g) {
      p.noalias() = xq.middleCols(g * gs, gs) * wg[g];  // exact group sums P_g, (mb, N)
      for (int64_t i = 0; i < mb; ++i) {
        const float sx = qa.scale(m0 + i, g);
        float* a = acc.row(i).data();
        const float* pr = p.row(i).data();
        for (int64_t c = 0; c < n; ++c) a[c] = std::fma(pr[c], sx * sw[c * groups + g], a[c]);
      }
    }
    if (layer.format == Format::kNvfp4) acc *= t_prod;
    if (!wc.empty())  // (acc * t_prod) * c_n: two fp32 multiplies, in this order
      for (int64_t i = 0; i < mb; ++i)
        for (int64_t c = 0; c < n; ++c) acc(i, c) = acc(i, c) * wc[c];

    // Low-rank branch from the RAW x, in the contract's fixed order (docs/formats.md, "GEMM and
    // epilogue"): lora[j] = sum over k ascending of x[k] * down[k][j], then
    // branch = sum over j ascending of lora[j] * up[n][j]; fp32 multiply then add, no FMA.
    // A fixed order makes the result independent of BLAS blocking and thread count, so a
    // prepared layer (CpuLinear) can reproduce it bit for bit.
    std::vector<float> xr(static_cast<size_t>(k)), lora(static_cast<size_t>(r));
    for (int64_t i = 0; i < mb; ++i) {
      detail::load_row(x, m0 + i, xr.data());
      std::fill(lora.begin(), lora.end(), 0.0f);
      for (int64_t kk = 0; kk < k; ++kk) {
        const float xv = xr[kk];
        const float* d = down.row(kk).data();
        for (int j = 0; j < r; ++j) lora[j] = lora[j] + xv * d[j];
      }
      for (int64_t c = 0; c < n; ++c) {
        float b = 0.0f;
        const float* u = up.row(c).data();
        for (int j = 0; j < r; ++j) b = b + lora[j] * u[j];
        y.store(m0 + i, c, (acc(i, c) + b) + bias[c]);
      }
    }
  });
  guard.rethrow();
  return Status::Ok();
}

}  // namespace

Status reference_forward(const QuantizedLinear& layer, ConstMatrixRef x, MatrixRef y) {
  return detail::guard_allocation<Status>(
      "reference_forward", [&] { return reference_forward_impl(layer, x, y, nullptr); });
}

Status test_support::reference_forward_with_activations(const QuantizedLinear& layer, ConstMatrixRef x,
                                                        MatrixRef y, QuantizedActivations* act) {
  return detail::guard_allocation<Status>(
      "reference_forward", [&] { return reference_forward_impl(layer, x, y, act); });
}

}  // namespace svdq
