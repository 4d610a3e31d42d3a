// cuda/arch/fp.cuh — the fp32 arithmetic the kernels' bit-exact contract names, one rounding each.
// Device: the CUDA intrinsics (__fmul_rn / __fadd_rn are never contracted into an FMA by nvcc;
// fmaf is fma.rn.f32). Host (SVDQ_EMU, compiled with -ffp-contract=off, no fast-math): IEEE
// binary32 operations with round-to-nearest-even — the same results bit for bit (no flush to zero
// on either side: the kernels are built without --use_fast_math / -ftz).
#pragma once

#include <cmath>

#include "config.cuh"

namespace svdq::arch {

SVDQ_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

SVDQ_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

/// a * b + c with one rounding.
SVDQ_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

}  // namespace svdq::arch
