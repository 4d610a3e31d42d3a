// svdq/stats.hpp — calibration statistics of a linear layer's input.
#pragma once

#include <cstdint>
#include <vector>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

/// Bounds on what ActivationStats accepts, checked before anything is allocated (kErrorInvalidArgument
/// naming the value and the bound):
///   channels K            <= kMaxStatsChannels (2^24): absmax alone is then 64 MiB
///   K with the Gram       <= kMaxGramChannels (2^16): the Gram is 8 K^2 bytes, 32 GiB at the bound
///   options.max_rows      in [0, kMaxStatsSampleRows] (2^31 - 1)
/// The row sample grows with the rows observed (never more than max_rows * K * 4 bytes), so a
/// large max_rows costs nothing until that many rows arrive.
inline constexpr int64_t kMaxStatsChannels = int64_t{1} << 24;
inline constexpr int64_t kMaxGramChannels = int64_t{1} << 16;
inline constexpr int64_t kMaxStatsSampleRows = (int64_t{1} << 31) - 1;

/// What ActivationStats keeps besides the per-channel absmax.
struct CalibrationOptions {
  /// Cap of the uniform row sample (reservoir sampling, Vitter's algorithm R) kept for scoring
  /// quantization candidates; 0 keeps no rows. Memory: up to min(max_rows, rows observed) * K * 4
  /// bytes, growing with the data. In [0, kMaxStatsSampleRows].
  int64_t max_rows = 512;
  uint64_t seed = 0x5a3b1e;  ///< the reservoir's replacement draws: same rows in, same sample out
  /// Accumulate the Gram matrix X^T X (K x K, double, raw x) for GPTQ and whitening.
  /// Memory: K * K * 8 bytes (75 MB for K = 3072).
  bool accumulate_gram = false;
};

/// Calibration statistics of one linear layer's input, streamed over any number of observe()
/// calls: per-channel absmax (always), a bounded seeded sample of rows, and optionally X^T X.
///
/// An engine feeds it the input rows (M x K, any dtype) of a layer during a few calibration
/// forward passes; quantize_linear() reads absmax() for smoothing and the sample for scoring. The
/// channel count K is fixed by the constructor or by the first observe(). Not thread-safe: one
/// object per layer per thread, combined with merge().
///
/// Errors: every method returns a Status (never throws); an allocation that fails is
/// kErrorOutOfMemory. Copyable and movable: a moved-from object is empty, as if default-constructed
/// with the same options (K = 0, no rows), and every method works on it.
class ActivationStats {
 public:
  ActivationStats() = default;
  /// Fixes the channel count up front (K > 0) and the options. A constructor cannot return a
  /// Status: K or options out of the bounds above (or no memory for absmax and the Gram) leave an
  /// empty object whose valid() says why, and whose observe() and merge() return that error.
  explicit ActivationStats(int64_t channels, CalibrationOptions options = {});
  /// Options only; K is fixed by the first observe().
  explicit ActivationStats(CalibrationOptions options) : options_(options), rng_state_(options.seed) {}
  ActivationStats(const ActivationStats&) = default;
  ActivationStats& operator=(const ActivationStats&) = default;
  ActivationStats(ActivationStats&& other) noexcept;
  ActivationStats& operator=(ActivationStats&& other) noexcept;

  /// Folds rows (M x K) into the running absmax. Rows containing NaN or Inf are rejected whole
  /// (kErrorNonFinite, naming the first bad row and column); nothing is updated then. The first
  /// call fixes K (bounded as above: kErrorInvalidArgument, nothing updated).
  Status observe(ConstMatrixRef rows);
  /// Combines another object's absmax and Gram into this one (same K). The row sample becomes a
  /// uniform sample of the union (each side's rows kept in proportion to the rows it observed).
  /// Refused (kErrorInvalidArgument, nothing changed): other is this object (self-merge would
  /// count every row twice), or both sides hold rows and the same fingerprint() (identical
  /// observations, e.g. the same calibration file loaded twice). Merging an empty side is a no-op.
  Status merge(const ActivationStats& other);
  /// Forgets every observation (keeps K).
  void reset();
  /// Rebuilds statistics saved earlier (svdq/calibration.hpp): absmax (K), samples (S x K
  /// row-major, S <= options.max_rows), gram (K x K or empty), rows_observed >= S. Further
  /// observe() calls continue the stream (the reservoir restarts its draws from options.seed).
  /// Checks: the bounds above; absmax finite and >= 0; samples finite with |samples(i, j)| <=
  /// absmax[j]; gram finite with a diagonal >= 0. fingerprint: the value recorded with the
  /// statistics, or 0 for none (then one is computed from the content: identical content, same
  /// fingerprint).
  static Result<ActivationStats> restore(int64_t channels, int64_t rows_observed,
                                         std::vector<float> absmax, std::vector<float> samples,
                                         std::vector<double> gram, CalibrationOptions options,
                                         uint64_t fingerprint = 0);

  /// Ok, or why this object cannot be used (a constructor argument out of bounds).
  Status valid() const;
  /// A 64-bit summary of the rows observed: the sum (mod 2^64) of a hash of each row's float
  /// values, so it does not depend on how the rows were split between observe() and merge()
  /// calls or their order; 0 before any row. Equal fingerprints of non-empty statistics mean
  /// (up to a 2^-64 chance) the same rows: merge() refuses them, and a caller holding several
  /// loaded files can compare them up front.
  uint64_t fingerprint() const noexcept { return fingerprint_; }

  int64_t channels() const noexcept { return channels_; }
  int64_t rows_observed() const noexcept { return rows_; }
  /// Per-channel absmax, K floats (all zero before any observation).
  const std::vector<float>& absmax() const noexcept { return absmax_; }
  /// The sampled rows, sampled_rows() x K row-major fp32 (raw x, not smoothed).
  const std::vector<float>& samples() const noexcept { return samples_; }
  int64_t sampled_rows() const noexcept { return channels_ ? static_cast<int64_t>(samples_.size()) / channels_ : 0; }
  /// X^T X over every observed row, K x K row-major double; empty unless accumulate_gram.
  const std::vector<double>& gram() const noexcept { return gram_; }
  const CalibrationOptions& options() const noexcept { return options_; }
  /// Bytes held (absmax, sample, Gram): bounded by 4K + 4 K max_rows + 8 K^2.
  int64_t memory_bytes() const noexcept;

 private:
  CalibrationOptions options_;
  int64_t channels_ = 0;
  int64_t rows_ = 0;
  std::vector<float> absmax_;
  std::vector<float> samples_;
  std::vector<double> gram_;
  uint64_t rng_state_ = options_.seed;
  uint64_t fingerprint_ = 0;
  Status error_;  ///< set by a constructor whose arguments were out of bounds
};

}  // namespace svdq
