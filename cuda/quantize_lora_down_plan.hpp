// cuda/quantize_lora_down_plan.hpp — kernel 1's operand, built once at upload (host code): the
// low-rank down matrix lora_down (K, r, storage dtype) as the tensor-core B operand of
// quantize_lora_down_kernel, in the activation dtype, transposed to (rank_pad, K), rank padded with
// zero columns to a multiple of 8. See quantize_lora_down.cuh for the three dtype cases.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "svdq/linear.hpp"
#include "svdq/types.hpp"

namespace svdq::cuda {

struct DownOperand {
  std::vector<uint16_t> bits;  // (rank_pad, K) hi, then (rank_pad, K) lo when has_lo
  int rank_pad = 0;
  bool has_lo = false;
  float lora_scale = 1.0f;     // 2^-e
};

/// The exponent e of the power-of-two pre-scale for an f16 operand from bf16 values of absolute
/// maximum `amax`: 2^14 <= amax 2^e < 2^15 (no f16 overflow, hi stays normal for the large
/// values), clamped to [-120, 120] so that 2^-e is a normal float.
inline int f16_prescale_exponent(float amax) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 0;
  int ex = 0;
  std::frexp(amax, &ex);  // amax in [2^(ex-1), 2^ex)
  int e = 15 - ex;
  return e < -120 ? -120 : (e > 120 ? 120 : e);
}

inline DownOperand make_down_operand(const QuantizedLinear& q, DType act) {
  DownOperand d;
  const int64_t k = q.in_features, r = q.rank;
  d.rank_pad = static_cast<int>((r + 7) / 8 * 8);
  if (r == 0) return d;
  const size_t plane = static_cast<size_t>(d.rank_pad) * static_cast<size_t>(k);
  if (q.storage == act) {
    d.bits.assign(plane, 0);
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t j = 0; j < r; ++j) d.bits[j * k + kk] = q.lora_down[kk * r + j];
    return d;
  }
  d.has_lo = true;
  d.bits.assign(2 * plane, 0);
  int e = 0;
  if (act == DType::kF16) {
    float amax = 0.0f;
    for (uint16_t b : q.lora_down) amax = std::fmax(amax, std::fabs(bits16_to_float(b, q.storage)));
    e = f16_prescale_exponent(amax);
  }
  d.lora_scale = std::ldexp(1.0f, -e);
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t j = 0; j < r; ++j) {
      const float v = std::ldexp(bits16_to_float(q.lora_down[kk * r + j], q.storage), e);
      const uint16_t hi = float_to_bits16(v, act);
      const float rest = v - bits16_to_float(hi, act);  // exact: hi is v rounded to fewer bits
      d.bits[j * k + kk] = hi;
      d.bits[plane + j * k + kk] = float_to_bits16(rest, act);
    }
  return d;
}

}  // namespace svdq::cuda
