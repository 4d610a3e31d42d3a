#include "svdq/types.hpp"

#include <cstring>

namespace svdq {

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF64: return "f64";
  }
  return "unknown dtype";
}

double ConstMatrixRef::at(int64_t i, int64_t j) const noexcept {
  const int64_t idx = i * ld + j;
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(data)[idx];
    case DType::kF16: return half_bits_to_float(static_cast<const uint16_t*>(data)[idx]);
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(data)[idx]);
    case DType::kF64: return static_cast<const double*>(data)[idx];
  }
  return 0.0;
}

void MatrixRef::store(int64_t i, int64_t j, float v) const noexcept {
  const int64_t idx = i * ld + j;
  switch (dtype) {
    case DType::kF32: static_cast<float*>(data)[idx] = v; break;
    case DType::kF16: static_cast<uint16_t*>(data)[idx] = float_to_half_bits(v); break;
    case DType::kBF16: static_cast<uint16_t*>(data)[idx] = float_to_bf16_bits(v); break;
    case DType::kF64: static_cast<double*>(data)[idx] = v; break;
  }
}

}  // namespace svdq
