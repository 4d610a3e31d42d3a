// svdq/stats.hpp — calibration statistics of a linear layer's input.
#pragma once

#include <cstdint>
#include <vector>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

/// Streaming per-input-channel absolute maximum over any number of observe() calls.
///
/// An engine feeds it the input rows (M x K, any dtype) of a layer during a few calibration
/// forward passes; quantize_linear() reads absmax() for smoothing. The channel count K is fixed by
/// the constructor or by the first observe(). Not thread-safe: one object per layer per thread,
/// combined with merge().
class ActivationStats {
 public:
  ActivationStats() = default;
  /// Fixes the channel count up front (K > 0).
  explicit ActivationStats(int64_t channels);

  /// Folds rows (M x K) into the running absmax. Rows containing NaN or Inf are rejected whole
  /// (kErrorNonFinite, naming the first bad row and column); nothing is updated then.
  Status observe(ConstMatrixRef rows);
  /// Combines another object's observations into this one (same K).
  Status merge(const ActivationStats& other);
  /// Forgets every observation (keeps K).
  void reset();

  int64_t channels() const noexcept { return channels_; }
  int64_t rows_observed() const noexcept { return rows_; }
  /// Per-channel absmax, K floats (all zero before any observation).
  const std::vector<float>& absmax() const noexcept { return absmax_; }

 private:
  int64_t channels_ = 0;
  int64_t rows_ = 0;
  std::vector<float> absmax_;
};

}  // namespace svdq
