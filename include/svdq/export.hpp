// svdq/export.hpp — SVDQ_API marks the public declarations that a shared libsvdq exports.
//
// The library is compiled with -fvisibility=hidden (and hidden inline functions), so only what
// carries SVDQ_API — the svdq:: API — appears in libsvdq.so's dynamic symbol table.
#pragma once

#if defined(_WIN32)
#define SVDQ_API
#elif defined(__GNUC__) || defined(__clang__)
#define SVDQ_API [[gnu::visibility("default")]]
#else
#define SVDQ_API
#endif
