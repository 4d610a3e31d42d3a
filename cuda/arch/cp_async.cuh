// cuda/arch/cp_async.cuh — cp.async (sm_80+): 16-byte global -> shared copies in commit groups.
// Device: the PTX instructions (cp.async.cg.shared.global with src-size for zero fill,
// cp.async.commit_group, cp.async.wait_group), which CUDA exposes only as inline PTX (or
// cuda::memcpy_async, whose pipeline object we do not want in the kernels).
// Host (SVDQ_EMU): the runtime reads the source at issue and writes shared memory when a
// wait_group retires the group — the latest moment the device may — and reports any access to
// the destination in between (a result read before its wait).
#pragma once

#include "config.cuh"

namespace svdq::arch {

/// Copies 16 bytes from global `src` to shared `dst` (both 16-byte aligned); with `pred` false,
/// zero-fills dst and reads nothing (src-size 0).
SVDQ_DEV void cp_async_16(void* dst, const void* src, bool pred = true) {
#if SVDQ_ARCH_HOST
  emu::cp_async(dst, src, pred ? 16 : 0);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(pred ? 16 : 0) : "memory");
#endif
}

/// cp.async.commit_group.
SVDQ_DEV void cp_async_commit() {
#if SVDQ_ARCH_HOST
  emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

/// cp.async.wait_group N: all but the newest N committed groups have landed (N a constant).
template <int N>
SVDQ_DEV void cp_async_wait() {
#if SVDQ_ARCH_HOST
  emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

}  // namespace svdq::arch
