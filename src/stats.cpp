#include "svdq/stats.hpp"

#include <algorithm>
#include <cmath>

#include "check.hpp"

namespace svdq {

ActivationStats::ActivationStats(int64_t channels)
    : channels_(channels > 0 ? channels : 0), absmax_(static_cast<size_t>(channels_), 0.0f) {}

Status ActivationStats::observe(ConstMatrixRef rows) {
  constexpr const char* kFn = "ActivationStats::observe";
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "rows", rows));
  if (rows.cols == 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": rows.cols must be > 0");
  if (channels_ == 0) {
    channels_ = rows.cols;
    absmax_.assign(static_cast<size_t>(channels_), 0.0f);
  }
  if (rows.cols != channels_)
    return detail::error(StatusCode::kErrorShape, kFn, ": rows.cols (", rows.cols,
                         ") must equal the channel count (", channels_, ")");
  std::vector<float> next = absmax_;
  std::vector<float> row(static_cast<size_t>(channels_));
  for (int64_t i = 0; i < rows.rows; ++i) {
    detail::load_row(rows, i, row.data());
    for (int64_t j = 0; j < channels_; ++j) {
      if (!std::isfinite(row[j]))
        return detail::error(StatusCode::kErrorNonFinite, kFn, ": rows(", i, ", ", j, ") is ",
                             row[j], "; calibration rows must be finite");
      next[j] = std::max(next[j], std::fabs(row[j]));
    }
  }
  absmax_.swap(next);
  rows_ += rows.rows;
  return Status::Ok();
}

Status ActivationStats::merge(const ActivationStats& other) {
  if (other.channels_ == 0) return Status::Ok();
  if (channels_ == 0) {
    *this = other;
    return Status::Ok();
  }
  if (other.channels_ != channels_)
    return detail::error(StatusCode::kErrorShape, "ActivationStats::merge: other.channels() (",
                         other.channels_, ") must equal channels() (", channels_, ")");
  for (int64_t j = 0; j < channels_; ++j) absmax_[j] = std::max(absmax_[j], other.absmax_[j]);
  rows_ += other.rows_;
  return Status::Ok();
}

void ActivationStats::reset() {
  std::fill(absmax_.begin(), absmax_.end(), 0.0f);
  rows_ = 0;
}

}  // namespace svdq
