// cuda/emu/runtime.cpp — the emulated device: CTAs of fibers, barriers, warp collectives, the
// per-CTA shared-memory arena and its bounds / barrier-interval race / cp.async checks.
// See runtime.hpp and docs/gpu.md ("The emulated device").
#include "runtime.hpp"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <vector>

#include "api.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SVDQ_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SVDQ_EMU_ASAN 1
#endif
#endif
#if defined(SVDQ_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace svdq::emu {

namespace {

// Thrown inside a fiber to abandon the kernel (a violation, or another thread's violation).
struct Abort {};

struct AsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
};

enum class FiberState { kReady, kBlocked, kDone };

struct Fiber {
  ucontext_t ctx{};
  unsigned char* stack = nullptr;  // usable stack (above a guard page)
  size_t stack_size = 0;
  uint3 tid{};
  int linear = 0;
  FiberState state = FiberState::kReady;
  // What a blocked fiber waits for (for deadlock reports).
  const char* wait_what = nullptr;
  int wait_barrier = -1;
  // cp.async groups: the open one, then the committed ones (oldest first).
  std::vector<AsyncCopy> open_group;
  std::deque<std::vector<AsyncCopy>> committed;
};

// One pending warp collective (warp_gather or __syncwarp).
struct Collective {
  uint32_t mask = 0, arrived = 0;
  const char* what = nullptr;
  size_t bytes = 0;
  bool is_syncwarp = false;
  const void* mine[32] = {};
  void* all[32] = {};
};

struct BarrierState {
  int expected = 0;  // 0: idle
  const char* what = nullptr;
  std::vector<int> waiting;  // linear thread ids
};

// Shadow of one 4-byte shared word for the race check.
struct Shadow {
  uint32_t w_epoch, w_clk;
  int32_t w_tid;  // -1: no write recorded
  uint32_t r_epoch, r_clk;
  int32_t r_tid;  // -1: no read recorded
  int32_t async_tid;  // >= 0: a cp.async of this thread is pending on the word
};

constexpr size_t kArenaCapacity = 232448;  // 227 KiB: the largest per-CTA shared memory (sm_90)

struct Launch {
  std::string kernel;
  LaunchOptions opt;
  dim3 grid, block;
  uint3 block_idx{};
  int nthreads = 0, nwarps = 0;
  std::mt19937_64 rng;
  std::vector<Fiber> fibers;
  std::vector<unsigned char*> stacks;  // mmap bases
  size_t stack_map_bytes = 0;
  ucontext_t sched_ctx{};
  Fiber* current = nullptr;
  std::vector<int> ready;
  int done_count = 0;
  std::string error;
  bool aborting = false;
  const std::function<void()>* body = nullptr;
  // Shared memory.
  unsigned char* arena = nullptr;  // 128-byte aligned, in arena_storage
  std::vector<unsigned char> arena_storage;
  size_t dyn_bytes = 0, top = 0;
  struct StaticAlloc {
    const void* key;
    size_t offset, bytes;
  };
  std::vector<StaticAlloc> statics;
  std::vector<Shadow> shadow;
  uint32_t epoch = 1;          // full-CTA barrier intervals
  std::vector<uint32_t> clk;   // per-thread clocks (partial barriers / syncwarp)
  std::vector<uint32_t> vc;    // vc[u * n + t]: latest clock of t that u is ordered after
  bool have_vc = false;
  BarrierState barriers[16];
  std::vector<std::vector<Collective>> warps;
  LaunchStats stats;
  // ASan fiber bookkeeping.
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
};

thread_local Launch* g_launch = nullptr;
thread_local LaunchStats g_last_stats;

Launch& L() { return *g_launch; }

std::string dim_str(const uint3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
uint3 tid_of(const Launch& l, int linear) {
  const unsigned bx = l.block.x, by = l.block.y;
  return make_uint3(linear % bx, (linear / bx) % by, linear / (bx * by));
}
std::string where(const Launch& l, int linear) {
  return "kernel " + l.kernel + ": block " + dim_str(l.block_idx) + " thread " +
         dim_str(tid_of(l, linear));
}

// ---- fiber switching (with ASan's fiber annotations) ----

void switch_to_fiber(Launch& l, Fiber& f) {
  l.current = &f;
  ++l.stats.fiber_switches;
#if defined(SVDQ_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
  swapcontext(&l.sched_ctx, &f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&l.sched_ctx, &f.ctx);
#endif
  l.current = nullptr;
}

// From a fiber back to the scheduler. `dying`: the fiber never resumes.
void switch_to_scheduler(Launch& l, Fiber& f, bool dying) {
#if defined(SVDQ_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, l.sched_stack_bottom, l.sched_stack_size);
  swapcontext(&f.ctx, &l.sched_ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)dying;
  swapcontext(&f.ctx, &l.sched_ctx);
#endif
}

// The calling fiber waits until someone marks it ready; throws Abort if the launch is aborting.
void block_current(const char* what, int barrier_id) {
  Launch& l = L();
  Fiber& f = *l.current;
  f.state = FiberState::kBlocked;
  f.wait_what = what;
  f.wait_barrier = barrier_id;
  switch_to_scheduler(l, f, false);
  f.wait_what = nullptr;
  f.wait_barrier = -1;
  if (l.aborting) throw Abort{};
}

// The calling fiber lets the scheduler pick again (it stays ready).
void yield_current() {
  Launch& l = L();
  Fiber& f = *l.current;
  l.ready.push_back(f.linear);
  switch_to_scheduler(l, f, false);
  if (l.aborting) throw Abort{};
}

void make_ready(Launch& l, int linear) {
  Fiber& f = l.fibers[linear];
  f.state = FiberState::kReady;
  l.ready.push_back(linear);
}

[[noreturn]] void violation(const std::string& message) {
  Launch& l = L();
  if (l.error.empty()) l.error = where(l, l.current->linear) + ": " + message;
  l.aborting = true;
  throw Abort{};
}

void complete_async_groups(Fiber& f, size_t keep);

void fiber_entry(unsigned lo, unsigned hi) {
  Launch& l = *reinterpret_cast<Launch*>((static_cast<uintptr_t>(hi) << 32) | lo);
#if defined(SVDQ_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &l.sched_stack_bottom, &l.sched_stack_size);
#endif
  Fiber& f = *l.current;
  if (!l.aborting) {
    try {
      (*l.body)();
      if (!f.open_group.empty()) cp_async_commit();
      complete_async_groups(f, 0);  // copies still in flight land at exit
    } catch (const Abort&) {
    } catch (const std::exception& e) {
      if (l.error.empty()) l.error = where(l, f.linear) + ": exception: " + e.what();
      l.aborting = true;
    }
  }
  f.state = FiberState::kDone;
  ++l.done_count;
  switch_to_scheduler(l, f, true);
  // never resumed
}

// ---- shared memory checks ----

bool ordered_before(const Launch& l, int32_t t, uint32_t ep, uint32_t c, int u) {
  if (t == u || ep < l.epoch) return true;
  return l.have_vc && l.vc[static_cast<size_t>(u) * l.nthreads + t] >= c;
}

std::string offset_str(const Launch& l, const void* p) {
  return "shared byte " + std::to_string(static_cast<const unsigned char*>(p) - l.arena);
}

void check_word(Launch& l, size_t w, bool write, const char* what) {
  Shadow& s = l.shadow[w];
  const int u = l.current->linear;
  const void* addr = l.arena + w * 4;
  if (s.async_tid >= 0)
    violation(std::string(what) + (write ? " writes " : " reads ") + offset_str(l, addr) +
              ", the target of a cp.async of thread " + dim_str(tid_of(l, s.async_tid)) +
              " before its cp.async.wait_group (a cp.async result read before its wait)");
  if (!l.opt.check_races) return;
  if (s.w_tid >= 0 && !ordered_before(l, s.w_tid, s.w_epoch, s.w_clk, u))
    violation(std::string(what) + (write ? " writes " : " reads ") + offset_str(l, addr) +
              " written by thread " + dim_str(tid_of(l, s.w_tid)) +
              " in the same barrier interval (a shared-memory race: missing __syncthreads?)");
  if (write && s.r_tid >= 0 && !ordered_before(l, s.r_tid, s.r_epoch, s.r_clk, u))
    violation(std::string(what) + " writes " + offset_str(l, addr) + " read by thread " +
              dim_str(tid_of(l, s.r_tid)) +
              " in the same barrier interval (a shared-memory race: missing __syncthreads?)");
  const uint32_t c = l.clk.empty() ? 0 : l.clk[u];
  if (write) {
    s.w_tid = u;
    s.w_epoch = l.epoch;
    s.w_clk = c;
    s.r_tid = -1;
  } else {
    s.r_tid = u;
    s.r_epoch = l.epoch;
    s.r_clk = c;
  }
}

// [p, p + bytes) must lie in the CTA's allocated shared memory; returns false if p is not in
// the arena at all.
bool check_bounds(Launch& l, const void* p, size_t bytes, const char* what) {
  const auto* b = static_cast<const unsigned char*>(p);
  if (b < l.arena || b >= l.arena + kArenaCapacity) return false;
  const size_t off = static_cast<size_t>(b - l.arena);
  if (off + bytes > l.top)
    violation(std::string(what) + ": shared-memory access [" + std::to_string(off) + ", " +
              std::to_string(off + bytes) + ") out of bounds (the CTA has " + std::to_string(l.top) +
              " bytes of shared memory)");
  return true;
}

void note_access(const void* p, size_t bytes, bool write, const char* what, bool must_be_shared) {
  Launch& l = L();
  if (!check_bounds(l, p, bytes, what)) {
    if (must_be_shared)
      violation(std::string(what) + ": address is not in the CTA's shared memory");
    return;
  }
  ++l.stats.shared_accesses;
  const size_t off = static_cast<size_t>(static_cast<const unsigned char*>(p) - l.arena);
  for (size_t w = off / 4; w < (off + bytes + 3) / 4; ++w) check_word(l, w, write, what);
  if (l.opt.preempt_one_in != 0 && l.rng() % l.opt.preempt_one_in == 0) yield_current();
}

void complete_async_groups(Fiber& f, size_t keep) {
  Launch& l = L();
  while (f.committed.size() > keep) {
    for (const AsyncCopy& c : f.committed.front()) {
      const size_t off = static_cast<size_t>(c.dst - l.arena);
      for (size_t w = off / 4; w < (off + 16) / 4; ++w) l.shadow[w].async_tid = -1;
      std::memcpy(c.dst, c.data, 16);
      for (size_t w = off / 4; w < (off + 16) / 4; ++w) check_word(l, w, true, "cp.async (landing)");
    }
    f.committed.pop_front();
  }
}

// A barrier (or __syncwarp) completed for the threads in `members`: order their accesses.
void join_clocks(Launch& l, const std::vector<int>& members) {
  const int n = l.nthreads;
  if (static_cast<int>(members.size()) == n) {
    ++l.epoch;  // everything before is ordered before everything after
    return;
  }
  if (!l.have_vc) {
    l.have_vc = true;
    l.clk.assign(n, 1);
    l.vc.assign(static_cast<size_t>(n) * n, 0);
  }
  std::vector<uint32_t> joined(n, 0);
  for (int v : members) {
    for (int x = 0; x < n; ++x) joined[x] = std::max(joined[x], l.vc[static_cast<size_t>(v) * n + x]);
    joined[v] = std::max(joined[v], l.clk[v]);
  }
  for (int u : members) std::copy(joined.begin(), joined.end(), l.vc.begin() + static_cast<size_t>(u) * n);
  for (int u : members) ++l.clk[u];
}

std::string mask_str(uint32_t m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

uint32_t warp_lanes_present(const Launch& l, int warp) {
  const int first = warp * 32, count = std::min(32, l.nthreads - first);
  return count == 32 ? 0xffffffffu : ((1u << count) - 1u);
}

// The common part of warp_gather and syncwarp.
void warp_rendezvous(const char* what, uint32_t mask, const void* mine, void* all, size_t bytes,
                     bool is_syncwarp) {
  Launch& l = L();
  Fiber& f = *l.current;
  const int lane = f.linear % 32, warp = f.linear / 32;
  ++l.stats.warp_collectives;
  if (!((mask >> lane) & 1u))
    violation(std::string(what) + ": the calling lane " + std::to_string(lane) +
              " is not in the member mask " + mask_str(mask));
  const uint32_t present = warp_lanes_present(l, warp);
  if (mask & ~present)
    violation(std::string(what) + ": member mask " + mask_str(mask) +
              " names lanes that the CTA does not have (a partial warp: lanes " + mask_str(present) + ")");
  for (uint32_t m = mask; m; m &= m - 1) {
    const int j = __builtin_ctz(m);
    if (l.fibers[warp * 32 + j].state == FiberState::kDone)
      violation(std::string(what) + " with member mask " + mask_str(mask) + ": lane " +
                std::to_string(j) + " has exited (a warp collective issued by a partial warp)");
  }
  auto& pending = l.warps[warp];
  Collective* c = nullptr;
  for (Collective& p : pending) {
    // Relevant: it counts on this lane, or this call counts on a lane waiting in it.
    if (!((p.mask >> lane) & 1u) && !(mask & p.arrived)) continue;
    if (p.mask != mask)
      violation(std::string(what) + ": member mask " + mask_str(mask) + " but lanes " + mask_str(p.arrived) +
                " are waiting in " + p.what + " with mask " + mask_str(p.mask) + " (a wrong mask)");
    if (std::strcmp(p.what, what) != 0 || p.bytes != bytes || p.is_syncwarp != is_syncwarp)
      violation(std::string(what) + ": lanes " + mask_str(p.arrived) + " of mask " + mask_str(mask) +
                " are waiting in a different collective (" + p.what + ")");
    c = &p;
    break;
  }
  if (c == nullptr) {
    pending.push_back(Collective{});
    c = &pending.back();
    c->mask = mask;
    c->what = what;
    c->bytes = bytes;
    c->is_syncwarp = is_syncwarp;
  }
  c->arrived |= 1u << lane;
  c->mine[lane] = mine;
  c->all[lane] = all;
  if (c->arrived != c->mask) {
    block_current(what, -1);
    return;
  }
  // Everyone is here: exchange, order (syncwarp), release.
  const Collective done = *c;
  pending.erase(pending.begin() + (c - pending.data()));
  std::vector<int> members;
  for (uint32_t m = done.mask; m; m &= m - 1) members.push_back(warp * 32 + __builtin_ctz(m));
  if (!done.is_syncwarp && bytes != 0)
    for (uint32_t a = done.mask; a; a &= a - 1)
      for (uint32_t b = done.mask; b; b &= b - 1) {
        const int i = __builtin_ctz(b), j = __builtin_ctz(a);
        std::memcpy(static_cast<unsigned char*>(done.all[j]) + i * bytes, done.mine[i], bytes);
      }
  if (done.is_syncwarp) join_clocks(l, members);
  for (int m : members)
    if (m != f.linear) make_ready(l, m);
  yield_current();
}

void report_deadlock(Launch& l) {
  // Name the first blocked thread and what it waits for.
  for (const Fiber& f : l.fibers) {
    if (f.state != FiberState::kBlocked) continue;
    std::string msg = where(l, f.linear) + ": deadlock: waits in " + (f.wait_what ? f.wait_what : "?");
    if (f.wait_barrier >= 0) {
      const BarrierState& b = l.barriers[f.wait_barrier];
      msg += " (barrier " + std::to_string(f.wait_barrier) + "): reached by " + std::to_string(b.waiting.size()) +
             " of " + std::to_string(b.expected) + " threads";
    } else {
      const int warp = f.linear / 32;
      for (const Collective& c : l.warps[warp])
        if ((c.arrived >> (f.linear % 32)) & 1u)
          msg += " with member mask " + mask_str(c.mask) + ": lanes " + mask_str(c.mask & ~c.arrived) +
                 " never arrived";
    }
    int exited = -1;
    for (const Fiber& g : l.fibers)
      if (g.state == FiberState::kDone) {
        exited = g.linear;
        break;
      }
    if (exited >= 0) msg += "; thread " + dim_str(tid_of(l, exited)) + " (among others?) has exited";
    msg += " (a barrier or collective not reached by every thread)";
    l.error = msg;
    return;
  }
}

void run_cta(Launch& l) {
  const int n = l.nthreads;
  // Fresh shared memory, shadow, barriers and fibers.
  // (only the part the previous CTA used needs resetting: the rest was never touched)
  const size_t used = std::max(l.top, l.dyn_bytes);
  std::fill(l.arena, l.arena + used, static_cast<unsigned char>(0xA5));
  std::fill(l.shadow.begin(), l.shadow.begin() + static_cast<std::ptrdiff_t>((used + 3) / 4),
            Shadow{0, 0, -1, 0, 0, -1, -1});
  l.top = l.dyn_bytes;
  l.statics.clear();
  l.epoch = 1;
  l.have_vc = false;
  l.clk.clear();
  l.vc.clear();
  for (auto& b : l.barriers) b = BarrierState{};
  for (auto& w : l.warps) w.clear();
  l.ready.clear();
  l.done_count = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = l.fibers[i];
    f.state = FiberState::kReady;
    f.linear = i;
    f.tid = tid_of(l, i);
    f.open_group.clear();
    f.committed.clear();
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = f.stack_size;
    f.ctx.uc_link = nullptr;
    const auto p = reinterpret_cast<uintptr_t>(&l);
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_entry), 2, static_cast<unsigned>(p & 0xffffffffu),
                static_cast<unsigned>(p >> 32));
    l.ready.push_back(i);
  }
  while (l.done_count < n) {
    if (l.ready.empty()) {
      if (!l.aborting) {
        report_deadlock(l);
        l.aborting = true;
      }
      // Wake every blocked fiber so that it unwinds (it throws Abort).
      for (Fiber& f : l.fibers)
        if (f.state == FiberState::kBlocked) make_ready(l, f.linear);
      continue;
    }
    const size_t k = l.aborting ? 0 : static_cast<size_t>(l.rng() % l.ready.size());
    const int next = l.ready[k];
    l.ready[k] = l.ready.back();
    l.ready.pop_back();
    if (l.fibers[next].state == FiberState::kDone) continue;
    l.fibers[next].state = FiberState::kReady;
    switch_to_fiber(l, l.fibers[next]);
    // A thread exited while others wait at a barrier that counts it: report now, naming it.
    if (!l.aborting && l.fibers[next].state == FiberState::kDone) {
      for (int id = 0; id < 16; ++id) {
        const BarrierState& b = l.barriers[id];
        if (b.expected != 0 && !b.waiting.empty() && b.expected == n) {
          l.error = where(l, next) + ": exited while " + std::to_string(b.waiting.size()) + " threads wait in " +
                    b.what + " (barrier " + std::to_string(id) + ") for all " + std::to_string(n) +
                    " threads (a barrier not reached by every thread)";
          l.aborting = true;
          break;
        }
      }
    }
  }
}

}  // namespace

// ---- api.hpp ----

int lane_id() { return L().current->linear % 32; }

void warp_gather(const char* what, uint32_t mask, const void* mine, void* all, size_t bytes) {
  warp_rendezvous(what, mask, mine, all, bytes, false);
}

void syncwarp(uint32_t mask) { warp_rendezvous("__syncwarp", mask, nullptr, nullptr, 0, true); }

void note_shared_access(const void* p, size_t bytes, bool write, const char* what, bool must_be_shared) {
  note_access(p, bytes, write, what, must_be_shared);
}

void fail(const char* what, const char* message) { violation(std::string(what) + ": " + message); }

void barrier(int id, int count, const char* what) {
  Launch& l = L();
  Fiber& f = *l.current;
  if (id < 0 || id > 15) violation(std::string(what) + ": barrier id " + std::to_string(id) + " is not in [0, 16)");
  const int expected = count == 0 ? l.nthreads : count;
  if (count < 0 || count % 32 != 0 || expected > l.nthreads)
    violation(std::string(what) + ": thread count " + std::to_string(count) +
              " must be a multiple of 32 and at most the CTA's " + std::to_string(l.nthreads));
  BarrierState& b = l.barriers[id];
  if (b.expected == 0) {
    b.expected = expected;
    b.what = what;
  } else if (b.expected != expected) {
    violation(std::string(what) + ": barrier " + std::to_string(id) + " expects " + std::to_string(expected) +
              " threads but threads waiting there expect " + std::to_string(b.expected));
  }
  ++l.stats.barriers;
  b.waiting.push_back(f.linear);
  if (static_cast<int>(b.waiting.size()) < b.expected) {
    block_current(what, id);
    return;
  }
  std::vector<int> members = std::move(b.waiting);
  b = BarrierState{};
  join_clocks(l, members);
  for (int m : members)
    if (m != f.linear) make_ready(l, m);
  yield_current();
}

void* static_shared(const void* key, size_t bytes, size_t align) {
  Launch& l = L();
  for (const auto& s : l.statics)
    if (s.key == key) return l.arena + s.offset;
  const size_t off = (l.top + align - 1) / align * align;
  if (off + bytes > l.opt.shared_limit || off + bytes > kArenaCapacity)
    violation("static shared memory: " + std::to_string(off + bytes) + " bytes (with " +
              std::to_string(l.dyn_bytes) + " dynamic) exceed the launch's limit of " +
              std::to_string(l.opt.shared_limit));
  l.statics.push_back({key, off, bytes});
  l.top = off + bytes;
  return l.arena + off;
}

void* dynamic_shared(size_t* bytes) {
  if (bytes) *bytes = L().dyn_bytes;
  return L().arena;
}

void cp_async(void* dst, const void* src, size_t src_bytes) {
  Launch& l = L();
  Fiber& f = *l.current;
  if (src_bytes > 16) violation("cp.async: src-size " + std::to_string(src_bytes) + " > 16");
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (src_bytes != 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0))
    violation("cp.async: the 16-byte copy needs 16-byte aligned shared and global addresses");
  if (!check_bounds(l, dst, 16, "cp.async")) violation("cp.async: destination is not in the CTA's shared memory");
  auto* d = static_cast<unsigned char*>(dst);
  const size_t off = static_cast<size_t>(d - l.arena);
  for (size_t w = off / 4; w < (off + 16) / 4; ++w) {
    if (l.shadow[w].async_tid >= 0)
      violation("cp.async: destination " + offset_str(l, l.arena + w * 4) + " already has a pending cp.async");
    check_word(l, w, true, "cp.async");
    l.shadow[w].async_tid = f.linear;
  }
  AsyncCopy c{d, {}};
  if (src_bytes) std::memcpy(c.data, src, src_bytes);
  f.open_group.push_back(c);
}

void cp_async_commit() {
  Fiber& f = *L().current;
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int n) {
  if (n < 0) violation("cp.async.wait_group: n must be >= 0");
  complete_async_groups(*L().current, static_cast<size_t>(n));
}

const uint3& current_thread_idx() { return L().current->tid; }
const uint3& current_block_idx() { return L().block_idx; }
const dim3& current_block_dim() { return L().block; }
const dim3& current_grid_dim() { return L().grid; }

LaunchStats last_launch_stats() { return g_last_stats; }

std::string launch(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                   const LaunchOptions& options, const std::function<void()>& body) {
  const std::string name = kernel ? kernel : "?";
  auto bad = [&](const std::string& m) { return "kernel " + name + ": invalid launch configuration: " + m; };
  if (g_launch != nullptr) return bad("a kernel cannot launch a kernel (no dynamic parallelism)");
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return bad("grid " + dim_str(make_uint3(grid.x, grid.y, grid.z)) +
               " must be in [1, 2^31-1] x [1, 65535] x [1, 65535]");
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (block.x < 1 || block.y < 1 || block.z < 1 || block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
    return bad("block " + dim_str(make_uint3(block.x, block.y, block.z)) + " must have 1..1024 threads");
  const size_t limit = std::min(options.shared_limit, kArenaCapacity);
  if (dynamic_shared_bytes > limit)
    return bad(std::to_string(dynamic_shared_bytes) + " bytes of dynamic shared memory exceed " + std::to_string(limit));
  if (options.configuration_only) return "";

  auto l = std::make_unique<Launch>();
  l->kernel = name;
  l->opt = options;
  l->opt.shared_limit = limit;
  l->grid = grid;
  l->block = block;
  l->nthreads = static_cast<int>(threads);
  l->nwarps = (l->nthreads + 31) / 32;
  l->rng.seed(options.seed * 0x9E3779B97F4A7C15ull + 1);
  l->body = &body;
  l->dyn_bytes = dynamic_shared_bytes;
  l->arena_storage.resize(kArenaCapacity + 128);
  l->arena = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(l->arena_storage.data()) + 127) & ~uintptr_t{127});
  std::fill(l->arena, l->arena + kArenaCapacity, static_cast<unsigned char>(0xA5));
  l->shadow.assign(kArenaCapacity / 4, Shadow{0, 0, -1, 0, 0, -1, -1});
  l->warps.resize(l->nwarps);
  l->fibers.resize(l->nthreads);
#if defined(SVDQ_EMU_ASAN)
  const size_t default_stack = 512 * 1024;
#else
  const size_t default_stack = 256 * 1024;
#endif
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t stack = ((options.stack_bytes ? options.stack_bytes : default_stack) + page - 1) / page * page;
  l->stack_map_bytes = stack + page;
  for (Fiber& f : l->fibers) {
    void* m = mmap(nullptr, l->stack_map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      for (unsigned char* s : l->stacks) munmap(s, l->stack_map_bytes);
      return bad("cannot map fiber stacks");
    }
    mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    l->stacks.push_back(static_cast<unsigned char*>(m));
    f.stack = static_cast<unsigned char*>(m) + page;
    f.stack_size = stack;
  }

  // CTAs in a seeded shuffled order (no CTA may depend on another's progress).
  const uint64_t nctas = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> order;
  const bool shuffle = nctas <= (1u << 20);
  if (shuffle) {
    order.resize(nctas);
    for (uint64_t i = 0; i < nctas; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), l->rng);
  }
  g_launch = l.get();
  for (uint64_t i = 0; i < nctas && l->error.empty(); ++i) {
    const uint64_t c = shuffle ? order[i] : i;
    l->block_idx = make_uint3(static_cast<unsigned>(c % grid.x), static_cast<unsigned>((c / grid.x) % grid.y),
                              static_cast<unsigned>(c / (uint64_t{grid.x} * grid.y)));
    l->aborting = false;
    ++l->stats.ctas;
    run_cta(*l);
  }
  g_launch = nullptr;
  for (unsigned char* s : l->stacks) munmap(s, l->stack_map_bytes);
  g_last_stats = l->stats;
  return l->error;
}

}  // namespace svdq::emu
