#include "svdq/stats.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <bit>
#include <new>
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

// Bounds of docs/api.md ("ActivationStats limits"), checked before anything is allocated.
Status check_bounds(const char* fn, int64_t channels, const CalibrationOptions& options) {
  if (options.max_rows < 0 || options.max_rows > kMaxStatsSampleRows)
    return detail::error(StatusCode::kErrorInvalidArgument, fn, ": options.max_rows (",
                         options.max_rows, ") must be in [0, ", kMaxStatsSampleRows, "]");
  if (channels > kMaxStatsChannels)
    return detail::error(StatusCode::kErrorInvalidArgument, fn, ": channels (", channels,
                         ") exceeds the limit of ", kMaxStatsChannels);
  if (options.accumulate_gram && channels > kMaxGramChannels)
    return detail::error(StatusCode::kErrorInvalidArgument, fn, ": channels (", channels,
                         ") exceeds the limit of ", kMaxGramChannels,
                         " for the Gram matrix (8 K^2 bytes: ",
                         static_cast<double>(channels) * static_cast<double>(channels) * 8.0 / (1 << 30),
                         " GiB)");
  return Status::Ok();
}

Status out_of_memory(const char* fn) {
  return detail::error(StatusCode::kErrorOutOfMemory, fn, ": out of memory");
}

// A row's contribution to the fingerprint: a multiplicative hash of its float bits, finished
// with SplitMix64's mixer.
uint64_t row_hash(const float* v, int64_t k) {
  uint64_t h = 0x243f6a8885a308d3ULL ^ static_cast<uint64_t>(k);
  for (int64_t j = 0; j < k; ++j) {
    h ^= std::bit_cast<uint32_t>(v[j]);
    h *= 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
  }
  return detail::splitmix64(h);
}

// The fingerprint of statistics restored without one: a hash of their whole content.
uint64_t content_hash(int64_t rows, const std::vector<float>& absmax,
                      const std::vector<float>& samples, const std::vector<double>& gram) {
  uint64_t h = static_cast<uint64_t>(rows) ^ 0x5bd1e995ULL;
  h = detail::splitmix64(h) ^ row_hash(absmax.data(), static_cast<int64_t>(absmax.size()));
  h = detail::splitmix64(h) ^ row_hash(samples.data(), static_cast<int64_t>(samples.size()));
  for (double g : gram) {
    h ^= std::bit_cast<uint64_t>(g);
    h *= 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
  }
  const uint64_t out = detail::splitmix64(h);
  return out != 0 ? out : 1;
}

}  // namespace

ActivationStats::ActivationStats(int64_t channels, CalibrationOptions options)
    : options_(options), rng_state_(options.seed) {
  error_ = check_bounds("ActivationStats", channels, options_);
  if (!error_.ok() || channels <= 0) return;
  try {
    absmax_.assign(static_cast<size_t>(channels), 0.0f);
    if (options_.accumulate_gram) gram_.assign(static_cast<size_t>(channels * channels), 0.0);
    channels_ = channels;
  } catch (const std::bad_alloc&) {
    absmax_ = {};
    gram_ = {};
    error_ = out_of_memory("ActivationStats");
  }
}

ActivationStats::ActivationStats(ActivationStats&& other) noexcept { *this = std::move(other); }

ActivationStats& ActivationStats::operator=(ActivationStats&& other) noexcept {
  if (this == &other) return *this;
  options_ = other.options_;
  channels_ = other.channels_;
  rows_ = other.rows_;
  absmax_ = std::move(other.absmax_);
  samples_ = std::move(other.samples_);
  gram_ = std::move(other.gram_);
  rng_state_ = other.rng_state_;
  fingerprint_ = other.fingerprint_;
  error_ = std::move(other.error_);
  // The source becomes empty, as default-constructed with its options (the default move would
  // keep channels_ beside empty vectors).
  other.channels_ = 0;
  other.rows_ = 0;
  other.absmax_ = {};
  other.samples_ = {};
  other.gram_ = {};
  other.rng_state_ = other.options_.seed;
  other.fingerprint_ = 0;
  other.error_ = Status::Ok();
  return *this;
}

Status ActivationStats::valid() const {
  if (!error_.ok()) return error_;
  return check_bounds("ActivationStats", channels_, options_);
}

int64_t ActivationStats::memory_bytes() const noexcept {
  return static_cast<int64_t>(absmax_.size() * sizeof(float) + samples_.capacity() * sizeof(float) +
                              gram_.size() * sizeof(double));
}

Status ActivationStats::observe(ConstMatrixRef rows) {
  constexpr const char* kFn = "ActivationStats::observe";
  SVDQ_RETURN_IF_ERROR(valid());
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "rows", rows));
  if (rows.cols == 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": rows.cols must be > 0");
  if (channels_ != 0 && rows.cols != channels_)
    return detail::error(StatusCode::kErrorShape, kFn, ": rows.cols (", rows.cols,
                         ") must equal the channel count (", channels_, ")");
  const int64_t k = rows.cols;
  if (channels_ == 0) SVDQ_RETURN_IF_ERROR(check_bounds(kFn, k, options_));
  int64_t total_rows = 0;
  if (__builtin_add_overflow(rows_, rows.rows, &total_rows))
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": rows_observed (", rows_,
                         ") + rows.rows (", rows.rows, ") overflows int64");
  const int64_t cap = options_.max_rows;
  // Every allocation first, then the update (which allocates nothing but Eigen's GEMM blocks):
  // a rejected or failed call leaves the object as it was.
  std::vector<float> next, row;
  std::vector<double> new_gram;
  Eigen::MatrixXd x;
  constexpr int64_t kGramChunk = 256;  // rows converted to double per Gram update
  uint64_t fp = 0;
  try {
    next = channels_ != 0 ? absmax_ : std::vector<float>(static_cast<size_t>(k), 0.0f);
    row.resize(static_cast<size_t>(k));
    for (int64_t i = 0; i < rows.rows; ++i) {
      detail::load_row(rows, i, row.data());
      for (int64_t j = 0; j < k; ++j) {
        if (!std::isfinite(row[j]))
          return detail::error(StatusCode::kErrorNonFinite, kFn, ": rows(", i, ", ", j, ") is ",
                               row[j], "; calibration rows must be finite");
        next[j] = std::max(next[j], std::fabs(row[j]));
      }
      fp += row_hash(row.data(), k);
    }
    if (channels_ == 0 && options_.accumulate_gram) new_gram.assign(static_cast<size_t>(k * k), 0.0);
    if (options_.accumulate_gram && rows.rows > 0) x.resize(std::min(rows.rows, kGramChunk), k);
    // The sample grows with the data, geometrically, up to its bound cap * K.
    const int64_t want = std::min(cap, total_rows) * k;
    if (static_cast<int64_t>(samples_.capacity()) < want)
      samples_.reserve(static_cast<size_t>(
          std::min(std::max(want, 2 * static_cast<int64_t>(samples_.capacity())), cap * k)));
  } catch (const std::bad_alloc&) {
    return out_of_memory(kFn);
  }
  if (channels_ == 0) {
    channels_ = k;
    gram_.swap(new_gram);
    rng_state_ = options_.seed;
  }
  absmax_.swap(next);
  fingerprint_ += fp;

  // Reservoir sampling (algorithm R): row t of the stream replaces a random slot with
  // probability cap / (t + 1) once the reservoir is full.
  for (int64_t i = 0; i < rows.rows && cap > 0; ++i) {
    const int64_t t = rows_ + i;
    int64_t slot = -1;
    if (t < cap) {
      slot = t;
      samples_.resize(static_cast<size_t>((t + 1) * channels_));  // within the reserved capacity
    } else {
      const uint64_t j = uniform_below(rng_state_, static_cast<uint64_t>(t + 1));
      if (j < static_cast<uint64_t>(cap)) slot = static_cast<int64_t>(j);
    }
    if (slot >= 0) detail::load_row(rows, i, samples_.data() + slot * channels_);
  }
  if (options_.accumulate_gram && rows.rows > 0) {
    GramMap g(gram_.data(), channels_, channels_);
    try {
      for (int64_t r0 = 0; r0 < rows.rows; r0 += kGramChunk) {
        const int64_t mb = std::min(kGramChunk, rows.rows - r0);
        for (int64_t i = 0; i < mb; ++i) {
          detail::load_row(rows, r0 + i, row.data());
          for (int64_t j = 0; j < channels_; ++j) x(i, j) = row[j];
        }
        g.noalias() += x.topRows(mb).transpose() * x.topRows(mb);
      }
    } catch (const std::bad_alloc&) {  // Eigen's GEMM blocks: the Gram is now partial
      return detail::error(StatusCode::kErrorOutOfMemory, kFn,
                           ": out of memory while updating the Gram matrix (now partial: reset() "
                           "this object)");
    }
  }
  rows_ += rows.rows;
  return Status::Ok();
}

Status ActivationStats::merge(const ActivationStats& other) {
  constexpr const char* kFn = "ActivationStats::merge";
  if (&other == this)
    return detail::error(StatusCode::kErrorInvalidArgument, kFn,
                         ": other is this object; merging statistics with itself would count "
                         "every row twice");
  SVDQ_RETURN_IF_ERROR(valid());
  SVDQ_RETURN_IF_ERROR(other.valid());
  if (other.channels_ == 0) return Status::Ok();
  try {
    if (channels_ == 0) {
      *this = other;
      return Status::Ok();
    }
    if (other.channels_ != channels_)
      return detail::error(StatusCode::kErrorShape, "ActivationStats::merge: other.channels() (",
                           other.channels_, ") must equal channels() (", channels_, ")");
    if (options_.accumulate_gram != other.options_.accumulate_gram || gram_.size() != other.gram_.size())
      return detail::error(StatusCode::kErrorInvalidArgument,
                           "ActivationStats::merge: both sides must agree on accumulate_gram");
    int64_t total_rows = 0;
    if (__builtin_add_overflow(rows_, other.rows_, &total_rows))
      return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": rows_observed (", rows_,
                           ") + other.rows_observed() (", other.rows_, ") overflows int64");
    if (rows_ > 0 && other.rows_ > 0 && fingerprint_ == other.fingerprint_)
      return detail::error(StatusCode::kErrorInvalidArgument, kFn,
                           ": other holds statistics identical to this object's (fingerprint 0x",
                           std::hex, fingerprint_, std::dec, ", ", rows_,
                           " rows): the same observations given twice (e.g. the same calibration "
                           "file) would count every row twice");

    // The merged sample: each side's rows in proportion to the rows it observed, drawn at random
    // from its sample (partial Fisher-Yates), capped at max_rows.
    const int64_t cap = options_.max_rows;
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
    // Allocation done: the update below cannot fail.
    for (int64_t j = 0; j < channels_; ++j) absmax_[j] = std::max(absmax_[j], other.absmax_[j]);
    for (size_t i = 0; i < gram_.size(); ++i) gram_[i] += other.gram_[i];
    samples_.swap(merged);
    rows_ = total_rows;
    fingerprint_ += other.fingerprint_;
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return out_of_memory(kFn);
  }
}

Result<ActivationStats> ActivationStats::restore(int64_t channels, int64_t rows_observed,
                                                 std::vector<float> absmax,
                                                 std::vector<float> samples,
                                                 std::vector<double> gram,
                                                 CalibrationOptions options, uint64_t fingerprint) {
  constexpr const char* kFn = "ActivationStats::restore";
  constexpr auto kArg = StatusCode::kErrorInvalidArgument;
  if (channels <= 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": channels (", channels, ") must be > 0");
  options.accumulate_gram = !gram.empty();
  SVDQ_RETURN_IF_ERROR(check_bounds(kFn, channels, options));
  if (rows_observed < 0)
    return detail::error(kArg, kFn, ": rows_observed (", rows_observed, ") must be >= 0");
  if (static_cast<int64_t>(absmax.size()) != channels)
    return detail::error(StatusCode::kErrorShape, kFn, ": absmax has ", absmax.size(),
                         " values, expected channels (", channels, ")");
  const int64_t s = static_cast<int64_t>(samples.size()) / channels;
  if (static_cast<int64_t>(samples.size()) != s * channels || s > options.max_rows ||
      s > rows_observed)
    return detail::error(StatusCode::kErrorShape, kFn, ": samples (", samples.size(),
                         " values) must be S x channels with S <= options.max_rows (",
                         options.max_rows, ") and S <= rows_observed (", rows_observed, ")");
  if (!gram.empty() && static_cast<int64_t>(gram.size()) != channels * channels)
    return detail::error(StatusCode::kErrorShape, kFn, ": gram has ", gram.size(),
                         " values, expected channels^2 or none");
  for (int64_t j = 0; j < channels; ++j)
    if (!(std::isfinite(absmax[j]) && absmax[j] >= 0.0f))
      return detail::error(std::isfinite(absmax[j]) ? kArg : StatusCode::kErrorNonFinite, kFn,
                           ": absmax[", j, "] (", absmax[j], ") must be finite and >= 0");
  for (int64_t i = 0; i < s; ++i)
    for (int64_t j = 0; j < channels; ++j) {
      const float v = samples[i * channels + j];
      if (!std::isfinite(v))
        return detail::error(StatusCode::kErrorNonFinite, kFn, ": samples(", i, ", ", j, ") is ",
                             v, "; sampled rows must be finite");
      if (std::fabs(v) > absmax[j])
        return detail::error(kArg, kFn, ": |samples(", i, ", ", j, ")| (", std::fabs(v),
                             ") exceeds absmax[", j, "] (", absmax[j],
                             "): the maximum covers every observed row");
    }
  for (size_t i = 0; i < gram.size(); ++i)
    if (!std::isfinite(gram[i]))
      return detail::error(StatusCode::kErrorNonFinite, kFn, ": gram(", i / channels, ", ",
                           i % channels, ") is ", gram[i], "; the Gram matrix must be finite");
  for (int64_t j = 0; !gram.empty() && j < channels; ++j)
    if (gram[j * channels + j] < 0.0)
      return detail::error(kArg, kFn, ": gram(", j, ", ", j, ") (", gram[j * channels + j],
                           ") is negative; the diagonal of X^T X is a sum of squares");
  ActivationStats st(options);
  st.channels_ = channels;
  st.rows_ = rows_observed;
  st.fingerprint_ = rows_observed == 0 ? 0
                    : fingerprint != 0 ? fingerprint
                                       : content_hash(rows_observed, absmax, samples, gram);
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
  fingerprint_ = 0;
  rng_state_ = options_.seed;
}

}  // namespace svdq
