// cuda/emu/runtime.hpp — the host side of the emulated device: launching a kernel.
//
// A launch runs the grid's CTAs one after another (in a seeded shuffled order) on the calling OS
// thread. Each CTA's threads are fibers (ucontext) that run until they block at a barrier or a warp
// collective, so those are real rendezvous; which ready fiber runs next is drawn from a seeded
// generator, so a missing barrier changes the result with the seed (and is reported by the
// barrier-interval race check regardless). Shared memory is a per-CTA arena: dynamic shared
// memory at offset 0, then the static allocations (svdq::arch::shared<S>()).
//
// The first violation ends the launch; launch() returns its message, naming the kernel, the block
// and the thread: "kernel K: block (x,y,z) thread (x,y,z): ...". An empty string means success.
// Test and tool code only; never part of the product library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "cuda_host.hpp"

namespace svdq::emu {

struct LaunchOptions {
  uint64_t seed = 1;                 // interleaving of the CTA's fibers and order of the CTAs
  size_t shared_limit = 48 * 1024;   // static + dynamic shared bytes per CTA (sm_90 opt-in: 227 KiB)
  unsigned preempt_one_in = 0;       // also switch fibers at 1 in n shared accesses (0: never)
  size_t stack_bytes = 0;            // per fiber; 0: 256 KiB (512 KiB under ASan)
  bool configuration_only = false;   // check the launch configuration, run nothing
  bool check_races = true;           // the barrier-interval race check (tests of the interleaving
                                     // itself turn it off to watch a race change the result)
};

/// Runs `body` (which calls the kernel function with its arguments) for every thread of every CTA
/// of grid x block, with `dynamic_shared` bytes of dynamic shared memory. Returns "" on success,
/// else the first violation's report. Checks the launch configuration as the CUDA runtime does
/// (grid.x <= 2^31-1, grid.y/z <= 65535, <= 1024 threads per block, ...).
std::string launch(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared,
                   const LaunchOptions& options, const std::function<void()>& body);

/// Launch-wide counters of the last launch on this OS thread (for tests and docs).
struct LaunchStats {
  uint64_t ctas = 0, fiber_switches = 0, shared_accesses = 0, barriers = 0, warp_collectives = 0;
};
LaunchStats last_launch_stats();

}  // namespace svdq::emu

/// SVDQ_EMU_LAUNCH(kernel, grid, block, dyn_smem, options, args...) — launch() named after the
/// kernel expression.
#define SVDQ_EMU_LAUNCH(kernel, grid, block, smem, options, ...) \
  ::svdq::emu::launch(#kernel, grid, block, smem, options, [&] { kernel(__VA_ARGS__); })
