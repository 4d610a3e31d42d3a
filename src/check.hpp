// src/check.hpp — argument validation shared by the entry points; messages name the argument.
#pragma once

#include <sstream>
#include <string>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq::detail {

/// Concatenates anything streamable into a message.
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
Status error(StatusCode code, const Args&... args) {
  return Status(code, cat(args...));
}

/// A matrix operand: data non-null (unless empty), rows/cols >= 0, ld >= cols, dtype one of
/// f32/f16/bf16 (and f64 when allow_f64).
inline Status check_matrix(const char* fn, const char* name, ConstMatrixRef v,
                           bool allow_f64 = false) {
  if (v.rows < 0 || v.cols < 0)
    return error(StatusCode::kErrorShape, fn, ": ", name, " has negative shape (", v.rows, " x ",
                 v.cols, ")");
  if (v.ld < v.cols)
    return error(StatusCode::kErrorShape, fn, ": ", name, ".ld (", v.ld, ") must be >= ", name,
                 ".cols (", v.cols, ")");
  if (v.data == nullptr && v.rows > 0 && v.cols > 0)
    return error(StatusCode::kErrorNullPointer, fn, ": ", name, ".data is null");
  const bool ok_dtype = v.dtype == DType::kF32 || v.dtype == DType::kF16 ||
                        v.dtype == DType::kBF16 || (allow_f64 && v.dtype == DType::kF64);
  if (!ok_dtype)
    return error(StatusCode::kErrorInvalidArgument, fn, ": ", name, ".dtype (",
                 dtype_name(v.dtype), ") is not supported here");
  return Status::Ok();
}

/// Reads row i of v (cols elements) into out as floats (exact for f32/f16/bf16).
inline void load_row(ConstMatrixRef v, int64_t i, float* out) {
  const int64_t n = v.cols;
  switch (v.dtype) {
    case DType::kF32: {
      const float* p = static_cast<const float*>(v.data) + i * v.ld;
      for (int64_t j = 0; j < n; ++j) out[j] = p[j];
      break;
    }
    case DType::kF16: {
      const uint16_t* p = static_cast<const uint16_t*>(v.data) + i * v.ld;
      for (int64_t j = 0; j < n; ++j) out[j] = half_bits_to_float(p[j]);
      break;
    }
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(v.data) + i * v.ld;
      for (int64_t j = 0; j < n; ++j) out[j] = bf16_bits_to_float(p[j]);
      break;
    }
    case DType::kF64: {
      const double* p = static_cast<const double*>(v.data) + i * v.ld;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(p[j]);
      break;
    }
  }
}

}  // namespace svdq::detail
