// cuda/arch/config.cuh — what every file of the instruction layer (cuda/arch/) and every kernel
// includes first. One kernel source is compiled two ways (docs/gpu.md):
//   * by nvcc: __CUDACC__ defined; in the device pass __CUDA_ARCH__ is defined and the arch
//     functions use inline PTX or CUDA intrinsics;
//   * by g++ for the host emulation: SVDQ_EMU defined, __CUDA_ARCH__ not; the arch functions use
//     host bodies that follow the PTX ISA, with warp collectives and shared-memory bookkeeping
//     provided by the emulated runtime (cuda/emu/api.hpp).
// The `#if` between those bodies lives in cuda/arch/ only; kernels contain none.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SVDQ_HD __host__ __device__ __forceinline__
#define SVDQ_DEV __device__ __forceinline__
#else
#define SVDQ_HD inline
#define SVDQ_DEV inline
#endif

// True in the body of an arch function that must use its host (emulated) implementation.
#if defined(SVDQ_EMU) && !defined(__CUDA_ARCH__)
#define SVDQ_ARCH_HOST 1
#include "../emu/api.hpp"
#include "../emu/cuda_host.hpp"  // __global__, threadIdx, ... for g++
#else
#define SVDQ_ARCH_HOST 0
#endif
