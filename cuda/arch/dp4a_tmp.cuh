// cuda/arch/dp4a_tmp.cuh — TEMPORARY home of svdq::arch::dp4a until cuda/arch/convert.cuh (the
// instruction layer's conversions, written in parallel) lands with the final one of the same name
// and signature; then this file goes and gemm_w4a4_dp4a.cuh includes convert.cuh instead.
#pragma once

#include "config.cuh"

namespace svdq::arch {

/// dp4a.s32.s32: c + sum of the four signed byte products of a and b (32-bit wrap-around).
SVDQ_HD int dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(a, b, c);
#else
  int64_t s = c;
  for (int i = 0; i < 4; ++i)
    s += static_cast<int64_t>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int8_t>(b >> (8 * i));
  return static_cast<int>(static_cast<uint32_t>(s));
#endif
}

}  // namespace svdq::arch
