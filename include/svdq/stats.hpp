// svdq/stats.hpp — calibration statistics of a linear layer's input.
#pragma once

#include <cstdint>
#include <vector>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

/// What ActivationStats keeps besides the per-channel absmax.
struct CalibrationOptions {
  /// Cap of the uniform row sample (reservoir sampling, Vitter's algorithm R) kept for scoring
  /// quantization candidates; 0 keeps no rows. Memory: max_rows * K * 4 bytes.
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
class ActivationStats {
 public:
  ActivationStats() = default;
  /// Fixes the channel count up front (K > 0) and the options.
  explicit ActivationStats(int64_t channels, CalibrationOptions options = {});
  /// Options only; K is fixed by the first observe().
  explicit ActivationStats(CalibrationOptions options) : options_(options) {}

  /// Folds rows (M x K) into the running absmax. Rows containing NaN or Inf are rejected whole
  /// (kErrorNonFinite, naming the first bad row and column); nothing is updated then.
  Status observe(ConstMatrixRef rows);
  /// Combines another object's absmax and Gram into this one (same K). The row sample becomes a
  /// uniform sample of the union (each side's rows kept in proportion to the rows it observed).
  Status merge(const ActivationStats& other);
  /// Forgets every observation (keeps K).
  void reset();
  /// Rebuilds statistics saved earlier (svdq/calibration.hpp): absmax (K), samples (S x K
  /// row-major, S <= options.max_rows), gram (K x K or empty), rows_observed >= S. Further
  /// observe() calls continue the stream (the reservoir restarts its draws from options.seed).
  static Result<ActivationStats> restore(int64_t channels, int64_t rows_observed,
                                         std::vector<float> absmax, std::vector<float> samples,
                                         std::vector<double> gram, CalibrationOptions options);

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
  uint64_t rng_state_ = 0;
};

}  // namespace svdq
