// cuda/arch/guard.cuh — what an instruction wrapper does when it is compiled for a GPU that lacks
// the instruction (e.g. the e4m3 mma below sm_89): it traps with a message naming the instruction
// and the architecture the code was compiled for (ggml's NO_DEVICE_CODE pattern), never computes a
// silently wrong answer. The host side keeps such a kernel from being launched
// (kErrorArchMismatch); this is the second line of defence.
#pragma once

#include "config.cuh"

#if defined(__CUDA_ARCH__)
#include <cstdio>
// Prints once per thread (a trap ends the kernel anyway) and stops the kernel: the launch fails
// with cudaErrorLaunchFailure / illegal instruction, which the launcher reports.
#define SVDQ_NO_DEVICE_CODE(instruction)                                                  \
  do {                                                                                    \
    printf("svdq: %s is not available on sm_%d (compiled for __CUDA_ARCH__=%d): %s:%d\n", \
           instruction, __CUDA_ARCH__ / 10, __CUDA_ARCH__, __FILE__, __LINE__);           \
    __trap();                                                                             \
  } while (0)
#endif

namespace svdq::arch {

/// __CUDA_ARCH__ of the device code being compiled (800, 860, 890, 900, ...); 0 in host code and
/// on the emulated device. Lets kernels choose with `if constexpr` instead of `#if`.
#if defined(__CUDA_ARCH__)
inline constexpr int kDeviceArch = __CUDA_ARCH__;
#else
inline constexpr int kDeviceArch = 0;
#endif

/// True when the build may JIT this device code from PTX on a newer architecture: its
/// CMAKE_CUDA_ARCHITECTURES has a PTX (virtual) entry below 90 (cuda/CMakeLists.txt defines
/// SVDQ_PTX_BELOW_SM90), e.g. "80" run on an H100. Such code keeps the newer devices' paths too.
#if defined(SVDQ_PTX_BELOW_SM90) && SVDQ_PTX_BELOW_SM90
inline constexpr bool kDevicePtxMayRunNewer = true;
#else
inline constexpr bool kDevicePtxMayRunNewer = false;
#endif

/// SVDQ_NO_DEVICE_CODE as a function, for a kernel body that this architecture's code leaves out
/// (`if constexpr`): prints what is missing and traps. Never reached on the host or the emulated
/// device (kDeviceArch 0 keeps every body).
SVDQ_DEV void no_device_code(const char* what) {
#if defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE(what);
#else
  (void)what;
#endif
}

}  // namespace svdq::arch
