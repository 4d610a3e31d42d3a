#include "svdq/metrics.hpp"

#include <Eigen/Dense>
#include <cmath>
#include <limits>

#include "check.hpp"

namespace svdq {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool same_shape(ConstMatrixRef a, ConstMatrixRef b) {
  // check_matrix also refuses an extent that overflows or exceeds kMaxViewBytes.
  return a.rows == b.rows && a.cols == b.cols && detail::check_matrix("", "a", a, true).ok() &&
         detail::check_matrix("", "b", b, true).ok();
}

// Sums of (a-b)^2 and b^2 in double; false when a value is not finite.
bool error_sums(ConstMatrixRef a, ConstMatrixRef b, double* err2, double* ref2) {
  double e = 0, r = 0;
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) {
      const double x = a.at(i, j), y = b.at(i, j);
      if (!std::isfinite(x) || !std::isfinite(y)) return false;
      e += (x - y) * (x - y);
      r += y * y;
    }
  *err2 = e;
  *ref2 = r;
  return true;
}

}  // namespace

double relative_mse(ConstMatrixRef a, ConstMatrixRef b) noexcept {
  double e, r;
  if (!same_shape(a, b) || !error_sums(a, b, &e, &r)) return kNaN;
  if (r == 0) return e == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return e / r;
}

double relative_error(ConstMatrixRef a, ConstMatrixRef b) noexcept {
  double e, r;
  if (!same_shape(a, b) || !error_sums(a, b, &e, &r)) return kNaN;
  if (r == 0) return e == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(e / r);
}

double mean_squared_error(ConstMatrixRef a, ConstMatrixRef b) noexcept {
  double e, r;
  if (!same_shape(a, b) || !error_sums(a, b, &e, &r)) return kNaN;
  const double n = static_cast<double>(a.rows) * static_cast<double>(a.cols);
  return n > 0 ? e / n : 0.0;
}

double sqnr_db(ConstMatrixRef a, ConstMatrixRef b) noexcept {
  return -20.0 * std::log10(relative_error(a, b));
}

namespace {

Status dense_forward_impl(ConstMatrixRef x, ConstMatrixRef W, ConstMatrixRef bias,
                          std::vector<double>* y) {
  constexpr const char* kFn = "dense_forward";
  if (y == nullptr) return detail::error(StatusCode::kErrorNullPointer, kFn, ": y is null");
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "x", x, true));
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "W", W, true));
  if (x.cols != W.cols)
    return detail::error(StatusCode::kErrorShape, kFn, ": x.cols (", x.cols, ") must equal W.cols (",
                         W.cols, ")");
  const bool has_bias = bias.data != nullptr && !bias.empty();
  if (has_bias) {
    SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "bias", bias, true));
    if (bias.rows * bias.cols != W.rows)
      return detail::error(StatusCode::kErrorShape, kFn, ": bias has ", bias.rows * bias.cols,
                           " elements, must have W.rows (", W.rows, ")");
  }
  using Md = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Md xd(x.rows, x.cols), wd(W.rows, W.cols);
  for (int64_t i = 0; i < x.rows; ++i)
    for (int64_t j = 0; j < x.cols; ++j) xd(i, j) = x.at(i, j);
  for (int64_t i = 0; i < W.rows; ++i)
    for (int64_t j = 0; j < W.cols; ++j) wd(i, j) = W.at(i, j);
  Md out = xd * wd.transpose();
  if (has_bias)
    for (int64_t n = 0; n < W.rows; ++n) {
      const double b = bias.rows == 1 ? bias.at(0, n) : bias.at(n, 0);
      out.col(n).array() += b;
    }
  y->assign(out.data(), out.data() + out.size());
  return Status::Ok();
}

}  // namespace

Status dense_forward(ConstMatrixRef x, ConstMatrixRef W, ConstMatrixRef bias,
                     std::vector<double>* y) {
  return detail::guard_allocation<Status>("dense_forward",
                                          [&] { return dense_forward_impl(x, W, bias, y); });
}

}  // namespace svdq
