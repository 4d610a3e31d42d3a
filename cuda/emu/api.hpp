// cuda/emu/api.hpp — the part of the emulated runtime that the host bodies of the instruction
// layer (cuda/arch/) call. Only compiled when SVDQ_EMU is defined (g++ builds of the kernels for
// tests and tools); never part of the product library.
//
// Every function here is called by one emulated GPU thread (a fiber of the current CTA) from
// inside a kernel launched by the emulated runtime. Violations (a partial warp, a wrong mask,
// an out-of-bounds or racing shared-memory access) are reported by the runtime as a test failure
// naming the kernel, the block and the thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace svdq::emu {

/// Lane of the calling thread in its warp (threadIdx linearised x-fastest, % 32).
int lane_id();

/// Warp-synchronous all-gather: every lane named in `mask` must call this from the same program
/// point (the runtime checks that the calling lane is in `mask`, that all lanes of `mask` arrive,
/// and that they all pass the same mask and `what`). Lane i's `bytes` bytes at `mine` are copied
/// to `all + i * bytes` for every i in `mask` (other slots are left untouched), in every caller.
/// Returns once all lanes of `mask` have arrived. `what` names the instruction for messages.
/// Shuffles, votes, mma.sync and ldmatrix are built on this.
void warp_gather(const char* what, uint32_t mask, const void* mine, void* all, size_t bytes);

/// Bookkeeping of a shared-memory access made by an instruction's host body (ldmatrix, cp.async):
/// the runtime checks that [p, p + bytes) lies inside the current CTA's shared memory (else
/// reports), and records it for the barrier-interval race check. Accesses to memory that is not
/// the CTA's shared memory (global memory) are ignored when `must_be_shared` is false.
void note_shared_access(const void* p, size_t bytes, bool write, const char* what,
                        bool must_be_shared = true);

/// Reports a violation found by an instruction's host body (e.g. a misaligned ldmatrix row) as a
/// failure naming the kernel, block and thread; the calling kernel is abandoned.
[[noreturn]] void fail(const char* what, const char* message);


// ---- Added for cuda/arch/warp.cuh, smem.cuh and cp_async.cuh (same calling rules as above) ----

/// bar.sync id, count: blocks until `count` threads of the CTA (0: all of them) have arrived at
/// barrier `id` (0..15); `__syncthreads()` is barrier(0, 0). All arrivals must agree on count.
/// A completed barrier that all threads of the CTA took part in starts a new barrier interval
/// for the race check; a partial one orders the participants' accesses only.
void barrier(int id, int count, const char* what);

/// __syncwarp(mask): a warp rendezvous that also orders the shared accesses of the lanes in mask.
void syncwarp(uint32_t mask);

/// Per-CTA static shared memory: every call with the same `key` in one CTA returns the same
/// `bytes` bytes of the CTA's arena (allocated at the first call, filled with 0xA5).
void* static_shared(const void* key, size_t bytes, size_t align);
/// The CTA's dynamic shared memory (the launch's dynamic_shared bytes, 16-byte aligned).
void* dynamic_shared(size_t* bytes);

/// cp.async.cg.shared.global (16 B) of the calling thread: `src_bytes` (0..16) bytes are read
/// from src now, the rest of the 16 zero-filled; they land in shared memory at dst only when a
/// cp_async_wait retires their group. Reading or writing dst before then is reported.
void cp_async(void* dst, const void* src, size_t src_bytes);
/// cp.async.commit_group: closes the calling thread's current group of copies.
void cp_async_commit();
/// cp.async.wait_group n: retires all but the newest n committed groups of the calling thread.
void cp_async_wait(int n);

}  // namespace svdq::emu
