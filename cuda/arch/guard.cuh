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
