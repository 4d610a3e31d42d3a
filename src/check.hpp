// src/check.hpp — argument validation shared by the entry points; messages name the argument.
#pragma once

#include <atomic>
#include <new>
#include <sstream>
#include <string>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

#include <cstdint>

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

/// Bytes a non-empty view spans, ((rows - 1) * ld + cols) * dtype_size, or false when the
/// arithmetic overflows int64. Assumes rows, cols > 0 and ld >= cols.
inline bool view_extent_bytes(int64_t rows, int64_t cols, int64_t ld, DType dtype, int64_t* out) {
  int64_t elems = 0;
  return !__builtin_mul_overflow(rows - 1, ld, &elems) &&
         !__builtin_add_overflow(elems, cols, &elems) &&
         !__builtin_mul_overflow(elems, static_cast<int64_t>(dtype_size(dtype)), out);
}

/// A matrix operand: data non-null (unless empty), rows/cols >= 0, ld >= cols, dtype one of
/// f32/f16/bf16 (and f64 when allow_f64), and its byte extent ((rows - 1) * ld + cols elements)
/// computable in int64, at most kMaxViewBytes and not wrapping around the address space. After
/// this check every index i * ld + j of the view, and every product of its extents, fits in int64.
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
  if (v.rows > 0 && v.cols > 0) {
    int64_t bytes = 0;
    if (!view_extent_bytes(v.rows, v.cols, v.ld, v.dtype, &bytes))
      return error(StatusCode::kErrorShape, fn, ": ", name, " (rows ", v.rows, ", cols ", v.cols,
                   ", ld ", v.ld, ", ", dtype_name(v.dtype),
                   "): ((rows - 1) * ld + cols) * element size overflows 64-bit arithmetic");
    if (bytes > kMaxViewBytes)
      return error(StatusCode::kErrorShape, fn, ": ", name, " (rows ", v.rows, ", cols ", v.cols,
                   ", ld ", v.ld, ", ", dtype_name(v.dtype), ") spans ", bytes,
                   " bytes, more than the limit of ", kMaxViewBytes, " bytes (2^47) on one view");
    if (reinterpret_cast<uintptr_t>(v.data) > UINTPTR_MAX - static_cast<uintptr_t>(bytes))
      return error(StatusCode::kErrorShape, fn, ": ", name, " (", bytes,
                   " bytes from its data pointer) wraps around the address space");
  }
  return Status::Ok();
}

/// kErrorOutOfMemory naming the entry point.
inline Status out_of_memory(const char* fn) {
  return Status(StatusCode::kErrorOutOfMemory, std::string(fn) + ": out of memory");
}

/// Runs fn() and turns a std::bad_alloc (or std::length_error from an impossible size) escaping
/// it into kErrorOutOfMemory: the boundary of every public entry point that allocates.
template <typename R, typename F>
R guard_allocation(const char* name, F&& fn) noexcept {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return out_of_memory(name);
  } catch (const std::length_error&) {
    return out_of_memory(name);
  }
}

/// An exception must not leave an OpenMP region (the runtime terminates the process). Loop bodies
/// that allocate run through run(): the first exception is caught inside the region and the
/// remaining iterations are skipped; after the region, rethrow() throws std::bad_alloc, which the
/// entry point's guard_allocation turns into a Status.
class ParallelGuard {
 public:
  template <typename F>
  void run(F&& body) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      body();
    } catch (...) {
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() const {
    if (failed_.load()) throw std::bad_alloc();
  }

 private:
  std::atomic<bool> failed_{false};
};

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
