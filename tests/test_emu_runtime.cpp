// The emulated device's runtime (cuda/emu/) and the synchronisation layer (cuda/arch/warp.cuh,
// smem.cuh, cp_async.cuh): tiny kernels that are right (their results against plain host loops)
// and tiny kernels that commit each violation class (the report must name it, the kernel, the
// block and the thread). ctest labels "emu" and "cpu".
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "arch/cp_async.cuh"
#include "arch/smem.cuh"
#include "arch/warp.cuh"
#include "emu/runtime.hpp"

namespace arch = svdq::arch;
namespace emu = svdq::emu;

namespace {

emu::LaunchOptions seeded(uint64_t seed) {
  emu::LaunchOptions o;
  o.seed = seed;
  return o;
}

// ---- a correct CTA reduction: shared-memory tree to 32 values, then a shuffle butterfly ----

struct ReduceSmem {
  arch::smem_array<int, 256> v;
};

template <bool kDropBarrier>
__global__ void reduce_kernel(const int* in, int* out) {
  ReduceSmem& sm = arch::shared<ReduceSmem>();
  const int t = threadIdx.x;
  sm.v[t] = in[blockIdx.x * 256 + t];
  arch::syncthreads();
  for (int s = 128; s >= 32; s >>= 1) {
    if (t < s) sm.v[t] = sm.v[t] + sm.v[t + s];
    if (!kDropBarrier || s != 64) arch::syncthreads();
  }
  if (t < 32) {
    int x = sm.v[t];
    for (int off = 16; off > 0; off >>= 1) x += arch::shfl_xor(arch::kFullMask, x, off);
    if (t == 0) out[blockIdx.x] = x;
  }
}

std::vector<int> reduce_input(int blocks) {
  std::vector<int> in(static_cast<size_t>(blocks) * 256);
  uint32_t s = 12345;
  for (int& x : in) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<int>(s >> 12) - (1 << 19);
  }
  return in;
}

TEST(EmuRuntime, CorrectReductionPassesUnderManySeeds) {
  const int blocks = 3;
  const auto in = reduce_input(blocks);
  for (uint64_t seed = 1; seed <= 25; ++seed) {
    std::vector<int> out(blocks, 0);
    const std::string err = emu::launch("reduce_kernel", dim3(blocks), dim3(256), 0, seeded(seed),
                                        [&] { reduce_kernel<false>(in.data(), out.data()); });
    ASSERT_EQ(err, "") << "seed " << seed;
    for (int b = 0; b < blocks; ++b) {
      int64_t want = 0;
      for (int i = 0; i < 256; ++i) want += in[b * 256 + i];
      EXPECT_EQ(out[b], static_cast<int>(want)) << "block " << b << " seed " << seed;
    }
  }
  const auto st = emu::last_launch_stats();
  EXPECT_EQ(st.ctas, 3u);
  EXPECT_EQ(st.barriers, 3u * 256 * 4);  // 1 + 3 barriers per thread (s = 128, 64, 32)
}

TEST(EmuRuntime, MissingBarrierIsReportedAsARace) {
  const auto in = reduce_input(1);
  std::vector<int> out(1, 0);
  const std::string err = emu::launch("reduce_kernel<true>", dim3(1), dim3(256), 0, seeded(7),
                                      [&] { reduce_kernel<true>(in.data(), out.data()); });
  EXPECT_NE(err.find("kernel reduce_kernel<true>: block (0,0,0) thread ("), std::string::npos) << err;
  EXPECT_NE(err.find("same barrier interval"), std::string::npos) << err;
}

// Without the race check, the seeded interleaving makes a missing barrier change the result.
__global__ void neighbour_kernel(int* out) {
  ReduceSmem& sm = arch::shared<ReduceSmem>();
  const int t = threadIdx.x;
  sm.v[t] = t + 1;
  // (missing arch::syncthreads())
  out[t] = sm.v[(t + 1) % 256];
}

TEST(EmuRuntime, SeededInterleavingChangesARacyResult) {
  std::set<std::vector<int>> results;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    emu::LaunchOptions o = seeded(seed);
    o.check_races = false;
    std::vector<int> out(256, 0);
    ASSERT_EQ(emu::launch("neighbour_kernel", dim3(1), dim3(256), 0, o, [&] { neighbour_kernel(out.data()); }), "");
    results.insert(out);
  }
  EXPECT_GT(results.size(), 1u) << "the interleaving never changed the racy result";
  // And with the check on, the race is reported.
  std::vector<int> out(256, 0);
  const std::string err =
      emu::launch("neighbour_kernel", dim3(1), dim3(256), 0, seeded(1), [&] { neighbour_kernel(out.data()); });
  EXPECT_NE(err.find("same barrier interval"), std::string::npos) << err;
}

// ---- barriers ----

__global__ void early_exit_kernel() {
  if (threadIdx.x == 37) return;
  arch::syncthreads();
}

TEST(EmuRuntime, BarrierNotReachedByEveryThread) {
  const std::string err = emu::launch("early_exit_kernel", dim3(2), dim3(64), 0, seeded(3), [] { early_exit_kernel(); });
  EXPECT_NE(err.find("kernel early_exit_kernel: block ("), std::string::npos) << err;
  EXPECT_NE(err.find("thread (37,0,0)"), std::string::npos) << err;
  EXPECT_NE(err.find("not reached by every thread"), std::string::npos) << err;
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 32) arch::syncthreads();
  else arch::named_barrier(1, 64);
}

TEST(EmuRuntime, DivergentBarriersDeadlock) {
  const std::string err = emu::launch("divergent_barrier_kernel", dim3(1), dim3(64), 0, seeded(3),
                                      [] { divergent_barrier_kernel(); });
  EXPECT_NE(err.find("deadlock"), std::string::npos) << err;
  EXPECT_NE(err.find("reached by 32 of 64"), std::string::npos) << err;
}

// Two pairs of warps exchange data through shared memory, each pair through its own named barrier.
struct PairSmem {
  arch::smem_array<int, 128> v;
};
template <bool kSync>
__global__ void named_barrier_kernel(int* out) {
  PairSmem& sm = arch::shared<PairSmem>();
  const int t = threadIdx.x, pair = t / 64;
  sm.v[t] = 1000 * pair + t;
  if (kSync) arch::named_barrier(1 + pair, 64);
  out[t] = sm.v[pair * 64 + (t + 32) % 64];
}

TEST(EmuRuntime, NamedBarriersOrderTheirParticipantsOnly) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    std::vector<int> out(128, 0);
    ASSERT_EQ(emu::launch("named_barrier_kernel<true>", dim3(1), dim3(128), 0, seeded(seed),
                          [&] { named_barrier_kernel<true>(out.data()); }),
              "");
    for (int t = 0; t < 128; ++t) {
      const int pair = t / 64, src = pair * 64 + (t + 32) % 64;
      EXPECT_EQ(out[t], 1000 * pair + src);
    }
  }
  std::vector<int> out(128, 0);
  const std::string err = emu::launch("named_barrier_kernel<false>", dim3(1), dim3(128), 0, seeded(1),
                                      [&] { named_barrier_kernel<false>(out.data()); });
  EXPECT_NE(err.find("same barrier interval"), std::string::npos) << err;
}

__global__ void bad_count_kernel() { arch::named_barrier(2, 48); }

TEST(EmuRuntime, NamedBarrierCountMustBeAWarpMultiple) {
  const std::string err = emu::launch("bad_count_kernel", dim3(1), dim3(64), 0, seeded(1), [] { bad_count_kernel(); });
  EXPECT_NE(err.find("multiple of 32"), std::string::npos) << err;
}

// ---- warp collectives ----

__global__ void shuffle_kernel(int* out) {
  const int lane = arch::lane_id(), w = arch::warp_id();
  const int v = 100 * w + lane;
  int* o = out + (w * 32 + lane) * 10;
  o[0] = arch::shfl_xor(arch::kFullMask, v, 5);
  o[1] = arch::shfl_xor(arch::kFullMask, v, 12, 8);  // lane ^ 12 leaves an 8-lane segment upward
  o[2] = arch::shfl_up(arch::kFullMask, v, 3);
  o[3] = arch::shfl_up(arch::kFullMask, v, 3, 8);
  o[4] = arch::shfl_down(arch::kFullMask, v, 7);
  o[5] = arch::shfl_down(arch::kFullMask, v, 2, 16);
  o[6] = arch::shfl_idx(arch::kFullMask, v, 9);
  o[7] = arch::shfl_idx(arch::kFullMask, v, 13, 4);
  o[8] = static_cast<int>(arch::ballot(arch::kFullMask, lane % 3 == 0));
  o[9] = (arch::any(arch::kFullMask, lane == 31) ? 1 : 0) + (arch::all(arch::kFullMask, lane < 31) ? 2 : 0);
}

TEST(EmuRuntime, ShufflesAndVotesFollowTheProgrammingGuide) {
  std::vector<int> out(64 * 10, -1);
  ASSERT_EQ(emu::launch("shuffle_kernel", dim3(1), dim3(64), 0, seeded(2), [&] { shuffle_kernel(out.data()); }), "");
  uint32_t ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int w = 0; w < 2; ++w)
    for (int l = 0; l < 32; ++l) {
      const int* o = &out[(w * 32 + l) * 10];
      auto val = [&](int src) { return 100 * w + src; };
      EXPECT_EQ(o[0], val(l ^ 5));
      const int x12 = l ^ 12;
      EXPECT_EQ(o[1], x12 >= (l & ~7) + 8 ? val(l) : val(x12)) << l;
      EXPECT_EQ(o[2], l >= 3 ? val(l - 3) : val(l));
      EXPECT_EQ(o[3], (l % 8) >= 3 ? val(l - 3) : val(l));
      EXPECT_EQ(o[4], l + 7 < 32 ? val(l + 7) : val(l));
      EXPECT_EQ(o[5], (l % 16) + 2 < 16 ? val(l + 2) : val(l));
      EXPECT_EQ(o[6], val(9));
      EXPECT_EQ(o[7], val((l & ~3) + (13 & 3)));
      EXPECT_EQ(static_cast<uint32_t>(o[8]), ballot);
      EXPECT_EQ(o[9], 1);
    }
}

__global__ void half_warp_kernel(int* out) {
  // Only lanes 0..15 take part, but they name the full warp.
  if (arch::lane_id() < 16) out[threadIdx.x] = arch::shfl_xor(arch::kFullMask, 1, 1);
}

TEST(EmuRuntime, CollectiveByAPartialWarpIsReported) {
  std::vector<int> out(32, 0);
  const std::string err =
      emu::launch("half_warp_kernel", dim3(1), dim3(32), 0, seeded(4), [&] { half_warp_kernel(out.data()); });
  EXPECT_NE(err.find("kernel half_warp_kernel: block (0,0,0) thread ("), std::string::npos) << err;
  EXPECT_TRUE(err.find("partial warp") != std::string::npos || err.find("never arrived") != std::string::npos) << err;
}

__global__ void wrong_mask_kernel(int* out) {
  const int lane = arch::lane_id();
  const uint32_t mask = lane < 16 ? 0x0000ffffu : arch::kFullMask;  // lanes disagree
  out[lane] = arch::shfl_xor(mask, lane, 1);
}

TEST(EmuRuntime, CollectiveWithAWrongMaskIsReported) {
  std::vector<int> out(32, 0);
  const std::string err =
      emu::launch("wrong_mask_kernel", dim3(1), dim3(32), 0, seeded(5), [&] { wrong_mask_kernel(out.data()); });
  EXPECT_NE(err.find("kernel wrong_mask_kernel"), std::string::npos) << err;
  EXPECT_NE(err.find("mask"), std::string::npos) << err;
}

__global__ void lane_not_in_mask_kernel(int* out) { out[threadIdx.x] = arch::shfl_xor(0xfffffffeu, 1, 1); }

TEST(EmuRuntime, CallerOutsideItsMaskIsReported) {
  std::vector<int> out(32, 0);
  const std::string err = emu::launch("lane_not_in_mask_kernel", dim3(1), dim3(32), 0, seeded(5),
                                      [&] { lane_not_in_mask_kernel(out.data()); });
  EXPECT_NE(err.find("thread (0,0,0)"), std::string::npos) << err;
  EXPECT_NE(err.find("not in the member mask"), std::string::npos) << err;
}

__global__ void short_block_kernel(int* out) { out[threadIdx.x] = arch::shfl_down(arch::kFullMask, 1, 1); }

TEST(EmuRuntime, FullMaskInAShortLastWarpIsReported) {
  std::vector<int> out(48, 0);
  const std::string err =
      emu::launch("short_block_kernel", dim3(1), dim3(48), 0, seeded(5), [&] { short_block_kernel(out.data()); });
  EXPECT_NE(err.find("partial warp"), std::string::npos) << err;
}

__global__ void disjoint_halves_kernel(int* out) {
  // Legal: each half-warp shuffles among itself with its own mask.
  const int lane = arch::lane_id();
  const uint32_t mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[lane] = arch::shfl_xor(mask, lane, 1);
}

TEST(EmuRuntime, DisjointMasksInOneWarpAreFine) {
  std::vector<int> out(32, 0);
  ASSERT_EQ(emu::launch("disjoint_halves_kernel", dim3(1), dim3(32), 0, seeded(9),
                        [&] { disjoint_halves_kernel(out.data()); }),
            "");
  for (int l = 0; l < 32; ++l) EXPECT_EQ(out[l], l ^ 1);
}

// ---- shared memory ----

struct SmallSmem {
  arch::smem_array<int, 4, 16> a;
};
__global__ void oob_kernel(int col) {
  SmallSmem& sm = arch::shared<SmallSmem>();
  if (threadIdx.x == 3) sm.a[1][col] = 1;
}

TEST(EmuRuntime, SharedIndexOutOfItsExtentIsReported) {
  const std::string err = emu::launch("oob_kernel", dim3(1), dim3(32), 0, seeded(1), [] { oob_kernel(16); });
  EXPECT_NE(err.find("kernel oob_kernel: block (0,0,0) thread (3,0,0)"), std::string::npos) << err;
  EXPECT_NE(err.find("out of bounds"), std::string::npos) << err;
  EXPECT_EQ(emu::launch("oob_kernel", dim3(1), dim3(32), 0, seeded(1), [] { oob_kernel(15); }), "");
}

__global__ void dynamic_oob_kernel(int extra) {
  arch::smem_span<float> d = arch::dynamic_shared<float>();
  if (threadIdx.x == 0) d[d.size() - 1 + extra] = 1.0f;
}

TEST(EmuRuntime, DynamicSharedMemoryIsBounded) {
  EXPECT_EQ(emu::launch("dynamic_oob_kernel", dim3(1), dim3(32), 256, seeded(1), [] { dynamic_oob_kernel(0); }), "");
  const std::string err =
      emu::launch("dynamic_oob_kernel", dim3(1), dim3(32), 256, seeded(1), [] { dynamic_oob_kernel(1); });
  EXPECT_NE(err.find("out of bounds"), std::string::npos) << err;
}

struct BigSmem {
  arch::smem_array<float, 12 * 1024> a;  // 48 KiB
};
__global__ void too_much_shared_kernel() { (void)arch::shared<BigSmem>(); }

TEST(EmuRuntime, StaticPlusDynamicSharedOverTheLimitIsReported) {
  EXPECT_EQ(emu::launch("too_much_shared_kernel", dim3(1), dim3(32), 0, seeded(1), [] { too_much_shared_kernel(); }), "");
  const std::string err =
      emu::launch("too_much_shared_kernel", dim3(1), dim3(32), 16, seeded(1), [] { too_much_shared_kernel(); });
  EXPECT_NE(err.find("exceed"), std::string::npos) << err;
}

__global__ void write_write_kernel() {
  SmallSmem& sm = arch::shared<SmallSmem>();
  sm.a[0][threadIdx.x % 8] = static_cast<int>(threadIdx.x);  // threads t and t+8 write one word
}

TEST(EmuRuntime, TwoWritesToOneWordInAnIntervalAreARace) {
  const std::string err = emu::launch("write_write_kernel", dim3(1), dim3(16), 0, seeded(1), [] { write_write_kernel(); });
  EXPECT_NE(err.find("written by thread"), std::string::npos) << err;
}

__global__ void shared_per_cta_kernel(int* out) {
  SmallSmem& sm = arch::shared<SmallSmem>();
  if (threadIdx.x == 0) sm.a[0][0] = static_cast<int>(blockIdx.x);
  arch::syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = sm.a[0][0];
}

TEST(EmuRuntime, EachCtaHasItsOwnSharedMemory) {
  std::vector<int> out(4 * 32, -1);
  ASSERT_EQ(emu::launch("shared_per_cta_kernel", dim3(4), dim3(32), 0, seeded(8), [&] { shared_per_cta_kernel(out.data()); }), "");
  for (int i = 0; i < 4 * 32; ++i) EXPECT_EQ(out[i], i / 32);
}

// ---- cp.async ----

struct CopySmem {
  arch::smem_array<int, 32, 4> a;  // 32 rows of 16 bytes
};
template <int kMode>  // 0: correct; 1: read before the wait; 2: wait but no barrier
__global__ void cp_async_kernel(const int* src, int* out) {
  CopySmem& sm = arch::shared<CopySmem>();
  const int t = threadIdx.x;
  arch::cp_async_16(sm.a[t].ptr(), src + 4 * t, t % 5 != 0);  // every 5th row zero-filled
  arch::cp_async_commit();
  if (kMode == 1) out[t] = sm.a[t][0];
  arch::cp_async_wait<0>();
  if (kMode != 2) arch::syncthreads();
  out[t] = sm.a[(t + 1) % 32][1];
}

TEST(EmuRuntime, CpAsyncLandsAtItsWait) {
  std::vector<int> src(128);
  for (int i = 0; i < 128; ++i) src[i] = 7 * i + 1;
  std::vector<int> out(32, -1);
  ASSERT_EQ(emu::launch("cp_async_kernel<0>", dim3(1), dim3(32), 0, seeded(3),
                        [&] { cp_async_kernel<0>(src.data(), out.data()); }),
            "");
  for (int t = 0; t < 32; ++t) {
    const int r = (t + 1) % 32;
    EXPECT_EQ(out[t], r % 5 != 0 ? src[4 * r + 1] : 0) << t;
  }
}

TEST(EmuRuntime, CpAsyncResultReadBeforeItsWaitIsReported) {
  std::vector<int> src(128, 1), out(32, 0);
  const std::string err = emu::launch("cp_async_kernel<1>", dim3(1), dim3(32), 0, seeded(3),
                                      [&] { cp_async_kernel<1>(src.data(), out.data()); });
  EXPECT_NE(err.find("kernel cp_async_kernel<1>: block (0,0,0) thread ("), std::string::npos) << err;
  EXPECT_NE(err.find("before its wait"), std::string::npos) << err;
}

TEST(EmuRuntime, CpAsyncResultOfAnotherThreadNeedsABarrier) {
  std::vector<int> src(128, 1), out(32, 0);
  const std::string err = emu::launch("cp_async_kernel<2>", dim3(1), dim3(32), 0, seeded(3),
                                      [&] { cp_async_kernel<2>(src.data(), out.data()); });
  EXPECT_NE(err.find("same barrier interval"), std::string::npos) << err;
}

// ---- launch configuration ----

TEST(EmuRuntime, LaunchConfigurationLimitsAreTheDevicesOnes) {
  auto nop = [] {};
  EXPECT_NE(emu::launch("k", dim3(1, 65536), dim3(32), 0, seeded(1), nop).find("invalid launch configuration"),
            std::string::npos);
  EXPECT_NE(emu::launch("k", dim3(1), dim3(1025), 0, seeded(1), nop).find("invalid launch configuration"),
            std::string::npos);
  EXPECT_NE(emu::launch("k", dim3(0), dim3(32), 0, seeded(1), nop).find("invalid launch configuration"),
            std::string::npos);
  EXPECT_EQ(emu::launch("k", dim3(70000, 1), dim3(1), 0, seeded(1), nop), "");  // x may exceed 65535
}

}  // namespace
