#include "svdq/status.hpp"

#include "svdq/version.hpp"

namespace svdq {

const char* status_code_name(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kSuccess: return "success";
    case StatusCode::kErrorInvalidArgument: return "invalid argument";
    case StatusCode::kErrorNullPointer: return "null pointer";
    case StatusCode::kErrorShape: return "shape";
    case StatusCode::kErrorNonFinite: return "non-finite value";
    case StatusCode::kErrorNotSupported: return "not supported";
    case StatusCode::kErrorArchMismatch: return "architecture mismatch";
    case StatusCode::kErrorWorkspace: return "workspace";
    case StatusCode::kErrorIo: return "i/o";
    case StatusCode::kErrorCuda: return "cuda";
    case StatusCode::kErrorInternal: return "internal error";
    case StatusCode::kErrorOutOfMemory: return "out of memory";
  }
  return "unknown status code";
}

std::string Status::to_string() const {
  if (ok()) return "success";
  return std::string(status_code_name(code_)) + ": " + message_;
}

const char* version_string() noexcept { return SVDQ_VERSION_STRING; }

}  // namespace svdq
