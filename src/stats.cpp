#include "svdq/stats.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "check.hpp"
#include "random.hpp"

namespace svdq {

namespace {

// Uniform integer in [0, n) from a SplitMix64 stream (Lemire's multiply-shift; bias < n / 2^64).
uint64_t uniform_below(uint64_t& state, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(detail::splitmix64(state)) * n) >> 64);
}

using GramMap = Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

}  // namespace

ActivationStats::ActivationStats(int64_t channels, CalibrationOptions options)
    : options_(options),
      channels_(channels > 0 ? channels : 0),
      absmax_(static_cast<size_t>(channels_), 0.0f),
      rng_state_(options.seed) {
  if (options_.accumulate_gram) gram_.assign(static_cast<size_t>(channels_ * channels_), 0.0);
}

int64_t ActivationStats::memory_bytes() const noexcept {
  return static_cast<int64_t>(absmax_.size() * sizeof(float) + samples_.capacity() * sizeof(float) +
                              gram_.size() * sizeof(double));
}

Status ActivationStats::observe(ConstMatrixRef rows) {
  constexpr const char* kFn = "ActivationStats::observe";
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "rows", rows));
  if (rows.cols == 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": rows.cols must be > 0");
  if (channels_ != 0 && rows.cols != channels_)
    return detail::error(StatusCode::kErrorShape, kFn, ": rows.cols (", rows.cols,
                         ") must equal the channel count (", channels_, ")");
  // Validate and fold into a copy first: a rejected call leaves the object as it was.
  std::vector<float> next = channels_ != 0 ? absmax_ : std::vector<float>(static_cast<size_t>(rows.cols), 0.0f);
  std::vector<float> row(static_cast<size_t>(rows.cols));
  for (int64_t i = 0; i < rows.rows; ++i) {
    detail::load_row(rows, i, row.data());
    for (int64_t j = 0; j < rows.cols; ++j) {
      if (!std::isfinite(row[j]))
        return detail::error(StatusCode::kErrorNonFinite, kFn, ": rows(", i, ", ", j, ") is ",
                             row[j], "; calibration rows must be finite");
      next[j] = std::max(next[j], std::fabs(row[j]));
    }
  }
  if (channels_ == 0) {
    channels_ = rows.cols;
    if (options_.accumulate_gram) gram_.assign(static_cast<size_t>(channels_ * channels_), 0.0);
    rng_state_ = options_.seed;
  }
  absmax_.swap(next);

  // Reservoir sampling (algorithm R): row t of the stream replaces a random slot with
  // probability cap / (t + 1) once the reservoir is full.
  const int64_t cap = std::max<int64_t>(options_.max_rows, 0);
  if (cap > 0 && samples_.capacity() < static_cast<size_t>(cap * channels_))
    samples_.reserve(static_cast<size_t>(cap * channels_));  // exactly the bound, once
  for (int64_t i = 0; i < rows.rows && cap > 0; ++i) {
    const int64_t t = rows_ + i;
    int64_t slot = -1;
    if (t < cap) {
      slot = t;
      samples_.resize(static_cast<size_t>((t + 1) * channels_));
    } else {
      const uint64_t j = uniform_below(rng_state_, static_cast<uint64_t>(t + 1));
      if (j < static_cast<uint64_t>(cap)) slot = static_cast<int64_t>(j);
    }
    if (slot >= 0) detail::load_row(rows, i, samples_.data() + slot * channels_);
  }
  if (options_.accumulate_gram && rows.rows > 0) {
    Eigen::MatrixXd x(rows.rows, channels_);
    std::vector<float> buf(static_cast<size_t>(channels_));
    for (int64_t i = 0; i < rows.rows; ++i) {
      detail::load_row(rows, i, buf.data());
      for (int64_t j = 0; j < channels_; ++j) x(i, j) = buf[j];
    }
    GramMap g(gram_.data(), channels_, channels_);
    g.noalias() += x.transpose() * x;
  }
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
  if (options_.accumulate_gram != other.options_.accumulate_gram)
    return detail::error(StatusCode::kErrorInvalidArgument,
                         "ActivationStats::merge: both sides must agree on accumulate_gram");
  for (int64_t j = 0; j < channels_; ++j) absmax_[j] = std::max(absmax_[j], other.absmax_[j]);
  for (size_t i = 0; i < gram_.size(); ++i) gram_[i] += other.gram_[i];

  // The merged sample: each side's rows in proportion to the rows it observed, drawn at random
  // from its sample (partial Fisher-Yates), capped at max_rows.
  const int64_t cap = std::max<int64_t>(options_.max_rows, 0);
  const int64_t s1 = sampled_rows(), s2 = other.sampled_rows();
  int64_t k1 = s1, k2 = s2;
  if (s1 + s2 > cap) {
    const double share = static_cast<double>(rows_) / static_cast<double>(rows_ + other.rows_);
    k1 = std::min<int64_t>(s1, std::llround(share * static_cast<double>(cap)));
    k2 = std::min<int64_t>(s2, cap - k1);
    k1 = std::min<int64_t>(s1, cap - k2);
  }
  auto draw = [&](const std::vector<float>& from, int64_t have, int64_t take, std::vector<float>* to) {
    std::vector<int64_t> idx(static_cast<size_t>(have));
    std::iota(idx.begin(), idx.end(), 0);
    for (int64_t i = 0; i < take; ++i) {
      const int64_t j = i + static_cast<int64_t>(uniform_below(rng_state_, static_cast<uint64_t>(have - i)));
      std::swap(idx[i], idx[j]);
      to->insert(to->end(), from.begin() + idx[i] * channels_, from.begin() + (idx[i] + 1) * channels_);
    }
  };
  std::vector<float> merged;
  merged.reserve(static_cast<size_t>((k1 + k2) * channels_));
  draw(samples_, s1, k1, &merged);
  draw(other.samples_, s2, k2, &merged);
  samples_.swap(merged);
  rows_ += other.rows_;
  return Status::Ok();
}

Result<ActivationStats> ActivationStats::restore(int64_t channels, int64_t rows_observed,
                                                 std::vector<float> absmax,
                                                 std::vector<float> samples,
                                                 std::vector<double> gram,
                                                 CalibrationOptions options) {
  constexpr const char* kFn = "ActivationStats::restore";
  if (channels <= 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": channels (", channels, ") must be > 0");
  if (static_cast<int64_t>(absmax.size()) != channels)
    return detail::error(StatusCode::kErrorShape, kFn, ": absmax has ", absmax.size(),
                         " values, expected channels (", channels, ")");
  const int64_t s = static_cast<int64_t>(samples.size()) / channels;
  if (static_cast<int64_t>(samples.size()) != s * channels || s > std::max<int64_t>(options.max_rows, 0) ||
      s > rows_observed)
    return detail::error(StatusCode::kErrorShape, kFn, ": samples (", samples.size(),
                         " values) must be S x channels with S <= options.max_rows (",
                         options.max_rows, ") and S <= rows_observed (", rows_observed, ")");
  if (!gram.empty() && static_cast<int64_t>(gram.size()) != channels * channels)
    return detail::error(StatusCode::kErrorShape, kFn, ": gram has ", gram.size(),
                         " values, expected channels^2 or none");
  for (float a : absmax)
    if (!(std::isfinite(a) && a >= 0.0f))
      return detail::error(StatusCode::kErrorNonFinite, kFn, ": absmax values must be finite and >= 0");
  options.accumulate_gram = !gram.empty();
  ActivationStats st(channels, options);
  st.rows_ = rows_observed;
  st.absmax_ = std::move(absmax);
  st.samples_ = std::move(samples);
  st.gram_ = std::move(gram);
  return st;
}

void ActivationStats::reset() {
  std::fill(absmax_.begin(), absmax_.end(), 0.0f);
  std::fill(gram_.begin(), gram_.end(), 0.0);
  samples_.clear();
  rows_ = 0;
  rng_state_ = options_.seed;
}

}  // namespace svdq
