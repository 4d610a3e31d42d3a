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

}  // namespace svdq::emu
