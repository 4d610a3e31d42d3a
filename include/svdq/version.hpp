// svdq/version.hpp — the library version.
#pragma once

#define SVDQ_VERSION_MAJOR 0
#define SVDQ_VERSION_MINOR 1
#define SVDQ_VERSION_PATCH 0
#define SVDQ_VERSION_STRING "0.1.0"

namespace svdq {
/// "0.1.0"
const char* version_string() noexcept;
}  // namespace svdq
