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

#include "svdq/export.hpp"

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
SVDQ_API std::string printable(std::string_view s, size_t max_bytes = 120);

class OkStatus;

/// A code plus a human-readable message. Cheap to return when ok (no allocation).
class [[nodiscard]] SVDQ_API Status {
 public:
  Status() = default;  ///< success
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  /// Success. Its type, OkStatus, is a Status that a Result<T> refuses at compile time:
  /// `Result<T> r = Status::Ok();` does not compile (a Result without a value must be an error).
  static OkStatus Ok();

  bool ok() const noexcept { return code_ == StatusCode::kSuccess; }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  /// "<code name>: <message>", or "success".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kSuccess;
  std::string message_;
};

/// The success Status as its own type (what Status::Ok() returns), so that Result<T> can delete
/// the constructor from it. Everything else treats it as a Status.
class [[nodiscard]] OkStatus : public Status {};
inline OkStatus Status::Ok() { return OkStatus(); }

/// A value of type T or the Status that explains why there is none.
/// Accessing value() of a failed Result is a precondition violation (check ok() first).
/// A Result built from a Status is never ok(): Status::Ok() is refused at compile time, and any
/// other success Status becomes kErrorInternal ("... a success Status without a value").
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status)  // NOLINT: implicit by design
      : status_(status.ok() ? Status(StatusCode::kErrorInternal,
                                     "Result<T> was constructed from a success Status without a value")
                            : std::move(status)) {}
  Result(OkStatus) = delete;  ///< `Result<T> r = Status::Ok();` is a bug: no value, no error

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
