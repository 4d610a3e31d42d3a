#include "svdq/status.hpp"

#include <algorithm>

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

std::string printable(std::string_view s, size_t max_bytes) {
  std::string out;
  const size_t n = std::min(s.size(), max_bytes);
  out.reserve(n + 8);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (s.size() > n) out += "...";
  return out;
}

}  // namespace svdq
