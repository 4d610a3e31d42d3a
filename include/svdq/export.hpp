// svdq/export.hpp — SVDQ_API marks the public declarations that a shared libsvdq exports.
//
// A shared libsvdq exports only svdq:: symbols (the linker version script cmake/svdq.map; check
// with `nm -D --defined-only -C libsvdq.so`). SVDQ_API marks public declarations with default
// visibility so that a -fvisibility=hidden build can follow once every public header carries it.
#pragma once

#if defined(_WIN32)
#define SVDQ_API
#elif defined(__GNUC__) || defined(__clang__)
#define SVDQ_API [[gnu::visibility("default")]]
#else
#define SVDQ_API
#endif
