// svdq/status.hpp — the error model of every public entry point.
//
// Nothing in svdq throws across the API and nothing aborts: a function that can fail returns a
// Status (or a Result<T>, a value or a Status). A failed Status carries a code and a message that
// names the argument and the rule it broke, e.g.
//   "quantize_linear: W.cols (3000) must be a multiple of the int4 group size 64".
#pragma once

#include <optional>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace svdq {

/// What went wrong, coarsely; the message says exactly what.
enum class StatusCode : int {
  kSuccess = 0,
  kErrorInvalidArgument,  ///< a scalar argument or option out of its range
  kErrorNullPointer,      ///< a required pointer is null
  kErrorShape,            ///< rows/cols/leading dimension inconsistent or not divisible
  kErrorNonFinite,        ///< NaN or Inf where only finite values are allowed (weights)
  kErrorNotSupported,     ///< a valid request this build or this function does not implement
  kErrorArchMismatch,     ///< the GPU's architecture has no kernel for this request
  kErrorWorkspace,        ///< workspace null, misaligned or too small
  kErrorIo,               ///< a file could not be read or written
  kErrorCuda,             ///< the CUDA runtime reported an error (the message has its name)
  kErrorInternal,         ///< an invariant of svdq itself failed (a bug: please report)
  kErrorOutOfMemory,      ///< an allocation failed (std::bad_alloc caught at the API boundary)
};

/// Short name of a code ("success", "invalid argument", ...). Never null.
const char* status_code_name(StatusCode code) noexcept;

/// A name from a file made safe to print (what svdq's messages do with names): bytes outside
/// printable ASCII, the backslash and the single quote become \xNN; cut after max_bytes input
/// bytes with "..." appended. E.g. "a\nb" -> "a\x0ab".
std::string printable(std::string_view s, size_t max_bytes = 120);

/// A code plus a human-readable message. Cheap to return when ok (no allocation).
class [[nodiscard]] Status {
 public:
  Status() = default;  ///< success
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const noexcept { return code_ == StatusCode::kSuccess; }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  /// "<code name>: <message>", or "success".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kSuccess;
  std::string message_;
};

/// A value of type T or the Status that explains why there is none.
/// Accessing value() of a failed Result is a precondition violation (check ok() first).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const noexcept { return value_.has_value(); }
  const Status& status() const noexcept { return status_; }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace svdq

/// Propagate a failed Status out of the enclosing function (which returns Status or Result<T>).
#define SVDQ_RETURN_IF_ERROR(expr)            \
  do {                                        \
    ::svdq::Status svdq_status_ = (expr);     \
    if (!svdq_status_.ok()) return svdq_status_; \
  } while (0)
