// cuda/emu/cuda_host.hpp — the CUDA C++ surface a kernel source needs when g++ compiles it for the
// host emulation (SVDQ_EMU, no nvcc): the execution-space keywords, and threadIdx / blockIdx /
// blockDim / gridDim of the calling emulated thread. Included by cuda/arch/config.cuh only.
//
// Deliberately NOT provided: `__shared__` (g++ cannot place a static variable per CTA; kernels
// declare shared memory through svdq::arch::shared<S>() / dynamic_shared<T>() in cuda/arch/smem.cuh,
// backed by the runtime's per-CTA arena), `asm`, and the device intrinsics (__shfl_*, __dp4a,
// __fmul_rn, ...): a kernel reaches every instruction through cuda/arch/.
#pragma once

#if defined(__CUDACC__)
#error "cuda/emu/cuda_host.hpp is for the g++ (SVDQ_EMU) build only"
#endif

#include <cuda_bf16.h>  // host paths of the toolkit's 16-bit types; they round like the device
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>

#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __restrict__
#define __restrict__ __restrict
#endif

namespace svdq::emu {
const uint3& current_thread_idx();
const uint3& current_block_idx();
const dim3& current_block_dim();
const dim3& current_grid_dim();
}  // namespace svdq::emu

#define threadIdx (::svdq::emu::current_thread_idx())
#define blockIdx (::svdq::emu::current_block_idx())
#define blockDim (::svdq::emu::current_block_dim())
#define gridDim (::svdq::emu::current_grid_dim())
