// cuda/arch/global.cuh — vector loads and stores of global memory (LDG.E.64 / LDG.E.128 / STG)
// with the alignment rule the hardware enforces, the same source for nvcc and the host emulation.
//
//   const uint4 v = arch::ld_global<uint4>(p);      // 16 bytes; p 16-byte aligned
//   arch::st_global(q, make_uint2(lo, hi));         // 8 bytes; q 8-byte aligned
//
// CUDA C++ Programming Guide, "Device Memory Accesses" (paraphrased): global memory instructions
// move words of 1, 2, 4, 8 or 16 bytes; an access compiles to one such instruction when the type's
// size is one of these and the data is naturally aligned, and allocations are at least 256-byte
// aligned. A pointer cast to a wider type makes the compiler assume that alignment: a misaligned
// address then faults (cudaErrorMisalignedAddress) instead of running.
// On the host x86 reads any address, so the emulated device (SVDQ_ARCH_HOST) checks the rule here
// and reports a violation through emu::fail, naming the kernel, block and thread, as ldmatrix
// and cp.async do: a kernel whose fragment-order offsets break 16-byte alignment fails in CI,
// not on the GPU. Under nvcc both functions are the plain dereference (no cost).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "config.cuh"

namespace svdq::arch {

namespace detail {
template <typename T>
SVDQ_DEV void check_global_alignment(const void* p, const char* what) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16,
                "global memory words are 1, 2, 4, 8 or 16 bytes");
#if SVDQ_ARCH_HOST
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % sizeof(T) != 0) {
    char msg[112];
    std::snprintf(msg, sizeof msg, "a %zu-byte access at address 0x%llx is not %zu-byte aligned", sizeof(T),
                  static_cast<unsigned long long>(a), sizeof(T));
    emu::fail(what, msg);
  }
#else
  (void)p;
  (void)what;
#endif
}
}  // namespace detail

/// A sizeof(T)-byte load of global memory at p (p aligned to sizeof(T)).
template <typename T>
SVDQ_DEV T ld_global(const void* p) {
  detail::check_global_alignment<T>(p, "global load (ld.global)");
#if SVDQ_ARCH_HOST
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
#else
  return *static_cast<const T*>(p);
#endif
}

/// A sizeof(T)-byte store of v to global memory at p (p aligned to sizeof(T)).
template <typename T>
SVDQ_DEV void st_global(void* p, const T& v) {
  detail::check_global_alignment<T>(p, "global store (st.global)");
#if SVDQ_ARCH_HOST
  std::memcpy(p, &v, sizeof(T));
#else
  *static_cast<T*>(p) = v;
#endif
}

}  // namespace svdq::arch
