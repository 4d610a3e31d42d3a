// cuda/arch/warp.cuh — warp and CTA synchronisation: shuffles, votes, __syncwarp, __syncthreads,
// named barriers, lane / warp indices. Device: the CUDA intrinsics (each a single PTX shfl.sync /
// vote.sync / bar.sync). Host (SVDQ_EMU): the PTX ISA's semantics on top of the emulated runtime's
// warp rendezvous (cuda/emu/api.hpp), which also checks the member mask and the partial warp.
#pragma once

#include <cstring>

#include "config.cuh"

namespace svdq::arch {

constexpr uint32_t kFullMask = 0xffffffffu;

/// Lane of the calling thread in its warp (threadIdx linearised x-fastest).
SVDQ_DEV int lane_id() {
#if SVDQ_ARCH_HOST
  return emu::lane_id();
#else
  return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u);
#endif
}
/// Linear thread index in the CTA (x fastest).
SVDQ_DEV int thread_rank() {
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}
/// Warp index in the CTA.
SVDQ_DEV int warp_id() { return thread_rank() / 32; }

#if SVDQ_ARCH_HOST
namespace detail {
// All lanes' values of `v` (slot i = lane i; lanes outside `mask` keep `v`).
template <typename T>
inline void gather(const char* what, uint32_t mask, const T& v, T (&all)[32]) {
  for (auto& a : all) a = v;
  emu::warp_gather(what, mask, &v, all, sizeof(T));
}
// Source lane outside the member mask: undefined on the device; reported here.
inline void check_source(const char* what, uint32_t mask, int src) {
  if (!((mask >> src) & 1u)) emu::fail(what, "the source lane is not in the member mask");
}
}  // namespace detail
#endif

// Shuffles: T of 4 or 8 bytes (int, unsigned, float, long long, double, ...). `width` a power of
// two <= 32; lanes are split into segments of `width` as in the CUDA programming guide.

/// __shfl_sync: value of lane (src % width) of the caller's segment.
template <typename T>
SVDQ_DEV T shfl_idx(uint32_t mask, T v, int src, int width = 32) {
#if SVDQ_ARCH_HOST
  T all[32];
  detail::gather("shfl.sync.idx", mask, v, all);
  const int lane = emu::lane_id(), s = (lane & ~(width - 1)) + (src & (width - 1));
  detail::check_source("shfl.sync.idx", mask, s);
  return all[s];
#else
  return __shfl_sync(mask, v, src, width);
#endif
}

/// __shfl_xor_sync: value of lane (lane ^ lane_mask), own value if that is in a later segment.
template <typename T>
SVDQ_DEV T shfl_xor(uint32_t mask, T v, int lane_mask, int width = 32) {
#if SVDQ_ARCH_HOST
  T all[32];
  detail::gather("shfl.sync.bfly", mask, v, all);
  const int lane = emu::lane_id(), s = lane ^ lane_mask;
  if (s >= (lane & ~(width - 1)) + width) return v;
  detail::check_source("shfl.sync.bfly", mask, s);
  return all[s];
#else
  return __shfl_xor_sync(mask, v, lane_mask, width);
#endif
}

/// __shfl_up_sync: value of lane - delta, own value below the segment's first lane.
template <typename T>
SVDQ_DEV T shfl_up(uint32_t mask, T v, unsigned delta, int width = 32) {
#if SVDQ_ARCH_HOST
  T all[32];
  detail::gather("shfl.sync.up", mask, v, all);
  const int lane = emu::lane_id(), s = lane - static_cast<int>(delta);
  if (s < (lane & ~(width - 1))) return v;
  detail::check_source("shfl.sync.up", mask, s);
  return all[s];
#else
  return __shfl_up_sync(mask, v, delta, width);
#endif
}

/// __shfl_down_sync: value of lane + delta, own value past the segment's last lane.
template <typename T>
SVDQ_DEV T shfl_down(uint32_t mask, T v, unsigned delta, int width = 32) {
#if SVDQ_ARCH_HOST
  T all[32];
  detail::gather("shfl.sync.down", mask, v, all);
  const int lane = emu::lane_id(), s = lane + static_cast<int>(delta);
  if (s >= (lane & ~(width - 1)) + width) return v;
  detail::check_source("shfl.sync.down", mask, s);
  return all[s];
#else
  return __shfl_down_sync(mask, v, delta, width);
#endif
}

/// __ballot_sync: bit i set iff lane i (in mask) passes a true predicate.
SVDQ_DEV uint32_t ballot(uint32_t mask, bool pred) {
#if SVDQ_ARCH_HOST
  int all[32];
  detail::gather("vote.sync.ballot", mask, static_cast<int>(pred), all);
  uint32_t r = 0;
  for (int i = 0; i < 32; ++i)
    if (((mask >> i) & 1u) && all[i]) r |= 1u << i;
  return r;
#else
  return __ballot_sync(mask, pred);
#endif
}

/// __any_sync / __all_sync over the lanes of mask.
SVDQ_DEV bool any(uint32_t mask, bool pred) {
#if SVDQ_ARCH_HOST
  return ballot(mask, pred) != 0;
#else
  return __any_sync(mask, pred);
#endif
}
SVDQ_DEV bool all(uint32_t mask, bool pred) {
#if SVDQ_ARCH_HOST
  return ballot(mask, pred) == mask;
#else
  return __all_sync(mask, pred);
#endif
}

/// __syncwarp: the lanes of mask meet; their memory accesses are ordered.
SVDQ_DEV void syncwarp(uint32_t mask = kFullMask) {
#if SVDQ_ARCH_HOST
  emu::syncwarp(mask);
#else
  __syncwarp(mask);
#endif
}

/// __syncthreads (bar.sync 0): every thread of the CTA.
SVDQ_DEV void syncthreads() {
#if SVDQ_ARCH_HOST
  emu::barrier(0, 0, "__syncthreads");
#else
  __syncthreads();
#endif
}

/// bar.sync id, count: `count` threads (a multiple of 32) meet at named barrier `id` (1..15;
/// 0 is __syncthreads's). Device: the PTX instruction, which has no CUDA C++ intrinsic other than
/// inline asm; this is the one place it is written.
SVDQ_DEV void named_barrier(int id, int count) {
#if SVDQ_ARCH_HOST
  emu::barrier(id, count, "bar.sync");
#else
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
#endif
}

}  // namespace svdq::arch
