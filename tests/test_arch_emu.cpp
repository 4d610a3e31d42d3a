// The instruction wrappers of cuda/arch/ (mma.cuh, ldmatrix.cuh) executed the way a kernel executes
// them: inside an emulated launch (cuda/emu/), one warp of fibers, each lane passing its own
// registers. Results must equal the warp-level semantics (svdq::arch::ref, tested on their own from
// the PTX ISA's figures in test_arch_mma / test_arch_ldmatrix), under several interleavings; and
// each misuse the host bodies check must be reported naming the instruction, kernel and thread.
// ctest labels "emu" and "cpu".
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "arch/convert.cuh"
#include "arch/global.cuh"
#include "arch/ldmatrix.cuh"
#include "arch/mma.cuh"
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

struct Operands {
  uint32_t a[32][4], b[32][2];
  int32_t ci[32][4];
  float cf[32][4];
};

Operands random_operands(uint32_t seed, bool small_values) {
  std::mt19937 rng(seed);
  Operands o;
  for (int l = 0; l < 32; ++l) {
    for (auto& v : o.a[l]) v = rng();
    for (auto& v : o.b[l]) v = rng();
    for (auto& v : o.ci[l]) v = static_cast<int32_t>(rng());
    for (auto& v : o.cf[l]) v = static_cast<float>(static_cast<int>(rng() % 201) - 100);
    if (small_values) {  // e4m3 / bf16 / f16 bit patterns without NaN or Inf
      for (auto& v : o.a[l]) v &= 0x3E3E3E3Eu;
      for (auto& v : o.b[l]) v &= 0x3E3E3E3Eu;
    }
  }
  return o;
}

// Each lane accumulates in place (d aliases c), as kernels do.
enum class Op { kS4, kS8, kE4m3, kBf16, kF16, kU4S4, kU8S8 };
template <Op kOp>
__global__ void mma_kernel(const Operands* in, int32_t (*di)[4], float (*df)[4]) {
  const int lane = threadIdx.x % 32;
  uint32_t a[4], b[2];
  for (int r = 0; r < 4; ++r) a[r] = in->a[lane][r];
  for (int r = 0; r < 2; ++r) b[r] = in->b[lane][r];
  int32_t ci[4];
  float cf[4];
  for (int r = 0; r < 4; ++r) ci[r] = in->ci[lane][r], cf[r] = in->cf[lane][r];
  if constexpr (kOp == Op::kS4) arch::mma_m16n8k64_s4s4s32(ci, a, b, ci);
  if constexpr (kOp == Op::kS8) arch::mma_m16n8k32_s8s8s32(ci, a, b, ci);
  if constexpr (kOp == Op::kU4S4) arch::mma_m16n8k64_u4s4s32(ci, a, b, ci);
  if constexpr (kOp == Op::kU8S8) arch::mma_m16n8k32_u8s8s32(ci, a, b, ci);
  if constexpr (kOp == Op::kE4m3) arch::mma_m16n8k32_e4m3e4m3f32(cf, a, b, cf);
  if constexpr (kOp == Op::kBf16) arch::mma_m16n8k16_bf16bf16f32(cf, a, b, cf);
  if constexpr (kOp == Op::kF16) arch::mma_m16n8k16_f16f16f32(cf, a, b, cf);
  for (int r = 0; r < 4; ++r) di[lane][r] = ci[r], df[lane][r] = cf[r];
}

template <Op kOp>
void check_mma(uint32_t seed) {
  constexpr bool kInt = kOp == Op::kS4 || kOp == Op::kS8 || kOp == Op::kU4S4 || kOp == Op::kU8S8;
  const Operands in = random_operands(seed, !kInt);
  int32_t wi[32][4], di[32][4];
  float wf[32][4], df[32][4];
  if constexpr (kOp == Op::kS4) svdq::arch::ref::mma_m16n8k64_s4s4s32(in.a, in.b, in.ci, wi);
  if constexpr (kOp == Op::kS8) svdq::arch::ref::mma_m16n8k32_s8s8s32(in.a, in.b, in.ci, wi);
  if constexpr (kOp == Op::kU4S4) svdq::arch::ref::mma_m16n8k64_u4s4s32(in.a, in.b, in.ci, wi);
  if constexpr (kOp == Op::kU8S8) svdq::arch::ref::mma_m16n8k32_u8s8s32(in.a, in.b, in.ci, wi);
  if constexpr (kOp == Op::kE4m3) svdq::arch::ref::mma_m16n8k32_e4m3e4m3f32(in.a, in.b, in.cf, wf);
  if constexpr (kOp == Op::kBf16) svdq::arch::ref::mma_m16n8k16_bf16bf16f32(in.a, in.b, in.cf, wf);
  if constexpr (kOp == Op::kF16) svdq::arch::ref::mma_m16n8k16_f16f16f32(in.a, in.b, in.cf, wf);
  for (uint64_t s = 1; s <= 3; ++s) {
    const std::string err = emu::launch("mma_kernel", dim3(1), dim3(32), 0, seeded(s),
                                        [&] { mma_kernel<kOp>(&in, di, df); });
    ASSERT_EQ(err, "");
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 4; ++r) {
        if (kInt)
          ASSERT_EQ(di[l][r], wi[l][r]) << "lane " << l;
        else
          ASSERT_EQ(std::memcmp(&df[l][r], &wf[l][r], 4), 0) << "lane " << l << " reg " << r;
      }
  }
}

TEST(ArchEmu, MmaS4InAWarpEqualsWarpSemantics) { check_mma<Op::kS4>(31); }
TEST(ArchEmu, MmaS8InAWarpEqualsWarpSemantics) { check_mma<Op::kS8>(32); }
TEST(ArchEmu, MmaU4S4InAWarpEqualsWarpSemantics) { check_mma<Op::kU4S4>(36); }
TEST(ArchEmu, MmaU8S8InAWarpEqualsWarpSemantics) { check_mma<Op::kU8S8>(37); }
TEST(ArchEmu, MmaE4m3InAWarpEqualsWarpSemantics) { check_mma<Op::kE4m3>(33); }
TEST(ArchEmu, MmaBf16InAWarpEqualsWarpSemantics) { check_mma<Op::kBf16>(34); }
TEST(ArchEmu, MmaF16InAWarpEqualsWarpSemantics) { check_mma<Op::kF16>(35); }

// Two warps, each its own mma: lanes of different warps must not be mixed.
__global__ void two_warp_mma_kernel(const Operands* in, int32_t (*d)[32][4]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t a[4], b[2];
  int32_t c[4];
  for (int r = 0; r < 4; ++r) a[r] = in[warp].a[lane][r], c[r] = in[warp].ci[lane][r];
  for (int r = 0; r < 2; ++r) b[r] = in[warp].b[lane][r];
  arch::mma_m16n8k64_s4s4s32(c, a, b, c);
  for (int r = 0; r < 4; ++r) d[warp][lane][r] = c[r];
}

TEST(ArchEmu, MmaWarpsAreIndependent) {
  const Operands in[2] = {random_operands(40, false), random_operands(41, false)};
  int32_t d[2][32][4], want[2][32][4];
  for (int w = 0; w < 2; ++w)
    svdq::arch::ref::mma_m16n8k64_s4s4s32(in[w].a, in[w].b, in[w].ci, want[w]);
  ASSERT_EQ(emu::launch("two_warp_mma_kernel", dim3(1), dim3(64), 0, seeded(5),
                        [&] { two_warp_mma_kernel(in, d); }),
            "");
  EXPECT_EQ(std::memcmp(d, want, sizeof d), 0);
}

// ---- ldmatrix from shared memory ----
struct TileSmem {
  arch::smem_array<uint16_t, 33 * 8> rows;  // 32 rows of 8 + one spare (for misaligned starts)
};

// Lane l fills row l with `src` row l, then (after the barrier) supplies the address of row
// `perm[l]`; x1/x2/x4, plain and .trans. `mode` 1: no barrier (a race); 2: misaligned address;
// 3: an address in global memory.
template <int N, bool kTrans>
__global__ void ldmatrix_kernel(const uint16_t (*src)[8], const int* perm, uint32_t (*d)[4],
                                int mode, const uint16_t* global_row) {
  TileSmem& sm = arch::shared<TileSmem>();
  const int lane = threadIdx.x % 32;
  for (int c = 0; c < 8; ++c) sm.rows[8 * lane + c] = src[lane][c];
  if (mode != 1) arch::syncthreads();
  const uint16_t* row = sm.rows.ptr() + 8 * perm[lane] + (mode == 2 && lane == 5 ? 1 : 0);
  if (mode == 3 && lane == 2) row = global_row;
  uint32_t r[N];
  arch::ldmatrix_m8n8_b16<N, kTrans>(r, row);
  for (int j = 0; j < N; ++j) d[lane][j] = r[j];
}

template <int N, bool kTrans>
void check_ldmatrix() {
  std::mt19937 rng(50 + N + (kTrans ? 10 : 0));
  uint16_t src[32][8];
  for (auto& row : src)
    for (auto& v : row) v = static_cast<uint16_t>(rng());
  std::vector<int> perm(32);
  for (int i = 0; i < 32; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);  // rows need not be contiguous
  // Lanes beyond 8N supply addresses ldmatrix must ignore: point them somewhere bogus-but-aligned.
  uint16_t rows[32][8] = {};
  for (int i = 0; i < 8 * N; ++i) std::memcpy(rows[i], src[perm[i]], 16);
  uint32_t want[32][4] = {}, d[32][4] = {};
  svdq::arch::ref::ldmatrix_m8n8_b16(N, kTrans, rows, want);
  for (uint64_t s = 1; s <= 3; ++s) {
    const std::string err = emu::launch("ldmatrix_kernel", dim3(1), dim3(32), 0, seeded(s), [&] {
      ldmatrix_kernel<N, kTrans>(src, perm.data(), d, 0, nullptr);
    });
    ASSERT_EQ(err, "");
    for (int l = 0; l < 32; ++l)
      for (int j = 0; j < N; ++j) ASSERT_EQ(d[l][j], want[l][j]) << "lane " << l << " matrix " << j;
  }
}
TEST(ArchEmu, LdmatrixX1) { check_ldmatrix<1, false>(); }
TEST(ArchEmu, LdmatrixX2) { check_ldmatrix<2, false>(); }
TEST(ArchEmu, LdmatrixX4) { check_ldmatrix<4, false>(); }
TEST(ArchEmu, LdmatrixX1Trans) { check_ldmatrix<1, true>(); }
TEST(ArchEmu, LdmatrixX2Trans) { check_ldmatrix<2, true>(); }
TEST(ArchEmu, LdmatrixX4Trans) { check_ldmatrix<4, true>(); }

std::string ldmatrix_violation(int mode) {
  uint16_t src[32][8] = {};
  std::vector<int> perm(32);
  for (int i = 0; i < 32; ++i) perm[i] = i;
  uint32_t d[32][4];
  static const uint16_t global_row[8] alignas(16) = {};
  return emu::launch("ldmatrix_kernel", dim3(1), dim3(32), 0, seeded(1),
                     [&] { ldmatrix_kernel<4, false>(src, perm.data(), d, mode, global_row); });
}

TEST(ArchEmu, LdmatrixWithoutBarrierIsARace) {
  const std::string err = ldmatrix_violation(1);
  EXPECT_NE(err.find("kernel ldmatrix_kernel"), std::string::npos) << err;
  EXPECT_NE(err.find("same barrier interval"), std::string::npos) << err;
}
TEST(ArchEmu, LdmatrixMisalignedRowIsReported) {
  const std::string err = ldmatrix_violation(2);
  EXPECT_NE(err.find("ldmatrix.sync.aligned.m8n8.x4.shared.b16"), std::string::npos) << err;
  EXPECT_NE(err.find("row address of lane 5 is not 16-byte aligned"), std::string::npos) << err;
}
TEST(ArchEmu, LdmatrixFromGlobalMemoryIsReported) {
  const std::string err = ldmatrix_violation(3);
  EXPECT_NE(err.find("kernel ldmatrix_kernel"), std::string::npos) << err;
  EXPECT_NE(err.find("ldmatrix.sync.aligned.m8n8.x4.shared.b16"), std::string::npos) << err;
  EXPECT_NE(err.find("not in the CTA's shared memory"), std::string::npos) << err;
}

// ---- global memory words (arch/global.cuh): aligned 2/4/8/16-byte loads and stores move the
// bytes; a misaligned one is reported (the GPU faults with cudaErrorMisalignedAddress) ----
__global__ void global_words_kernel(const uint8_t* in, uint8_t* out, int offset) {
  const int t = threadIdx.x;  // thread t moves bytes [32 t, 32 t + 32) (+ offset in thread 5)
  const int o = t == 5 ? offset : 0;
  arch::st_global(out + 32 * t + o, arch::ld_global<uint4>(in + 32 * t + o));
  arch::st_global(out + 32 * t + 16, arch::ld_global<uint2>(in + 32 * t + 16));
  arch::st_global(out + 32 * t + 24, arch::ld_global<uint32_t>(in + 32 * t + 24));
  arch::st_global(out + 32 * t + 28, arch::ld_global<uint16_t>(in + 32 * t + 28));
  arch::st_global(out + 32 * t + 30, arch::ld_global<uint16_t>(in + 32 * t + 30));
}
std::string global_words(int offset) {
  alignas(16) static uint8_t in[32 * 32 + 16];
  alignas(16) static uint8_t dst[32 * 32 + 16];
  for (size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<uint8_t>(i * 37 + 11);
  std::memset(dst, 0, sizeof dst);
  const std::string err = emu::launch("global_words_kernel", dim3(1), dim3(32), 0, seeded(2),
                                      [&] { global_words_kernel(in, dst, offset); });
  for (int i = 0; i < 32 * 32; ++i)
    if (err.empty() && dst[i] != in[i]) return "byte " + std::to_string(i) + " not moved";
  return err;
}
TEST(ArchEmu, GlobalWordsMoveTheirBytes) {
  EXPECT_EQ(global_words(0), "");
}
TEST(ArchEmu, MisalignedGlobalWordIsReported) {
  for (int offset : {4, 8}) {
    const std::string err = global_words(offset);
    EXPECT_NE(err.find("kernel global_words_kernel"), std::string::npos) << err;
    EXPECT_NE(err.find("global load (ld.global)"), std::string::npos) << err;
    EXPECT_NE(err.find("16-byte access"), std::string::npos) << err;
    EXPECT_NE(err.find("not 16-byte aligned"), std::string::npos) << err;
  }
}

// ---- an mma issued by part of a warp ----
__global__ void half_warp_mma_kernel(int32_t* out) {
  uint32_t a[4] = {}, b[2] = {};
  int32_t c[4] = {};
  if (threadIdx.x < 16) arch::mma_m16n8k64_s4s4s32(c, a, b, c);
  out[threadIdx.x] = c[0];
}
TEST(ArchEmu, MmaByPartOfAWarpIsReported) {
  int32_t out[32];
  const std::string err = emu::launch("half_warp_mma_kernel", dim3(1), dim3(32), 0, seeded(1),
                                      [&] { half_warp_mma_kernel(out); });
  EXPECT_NE(err.find("kernel half_warp_mma_kernel"), std::string::npos) << err;
  EXPECT_NE(err.find("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32"), std::string::npos) << err;
  EXPECT_NE(err.find("partial warp"), std::string::npos) << err;
}

// ---- int4 codes on the 8-bit tensor-core paths (issue 9): the kernel holds int4 codes in the
// 8-bit fragment order (register r of the k32 layout = 4 nibbles), converts them in registers with
// s4x4_to_e4m3x4 / s4x8_to_s8x8 and runs the k32 mma; the result must be the int64 GEMM. Fragment
// positions come from ref::m16n8k32_a/_b (checked against the ISA figures in test_arch_mma). ----
__global__ void int4_k32_kernel(const uint32_t (*a16)[4], const uint32_t (*b16)[2],
                                float (*d_e4m3)[4], int32_t (*d_s8)[4]) {
  const int lane = threadIdx.x % 32;
  uint32_t ae[4], be[2], as[4], bs[2];
  for (int r = 0; r < 4; ++r) ae[r] = arch::s4x4_to_e4m3x4(a16[lane][r]);
  for (int r = 0; r < 2; ++r) be[r] = arch::s4x4_to_e4m3x4(b16[lane][r]);
  // s8: one packed word of 8 nibbles gives two registers (elements 0-3, 4-7).
  arch::s4x8_to_s8x8(a16[lane][0] | (a16[lane][1] << 16), as[0], as[1]);
  arch::s4x8_to_s8x8(a16[lane][2] | (a16[lane][3] << 16), as[2], as[3]);
  arch::s4x8_to_s8x8(b16[lane][0] | (b16[lane][1] << 16), bs[0], bs[1]);
  float cf[4] = {0.f, 0.f, 0.f, 0.f};
  int32_t ci[4] = {0, 0, 0, 0};
  arch::mma_m16n8k32_e4m3e4m3f32(cf, ae, be, cf);
  arch::mma_m16n8k32_s8s8s32(ci, as, bs, ci);
  for (int r = 0; r < 4; ++r) d_e4m3[lane][r] = cf[r], d_s8[lane][r] = ci[r];
}

TEST(ArchEmu, Int4CodesOnE4m3AndS8MmaMatchInt64Gemm) {
  namespace ref = svdq::arch::ref;
  std::mt19937 rng(60);
  for (int trial = 0; trial < 5; ++trial) {
    int A[16][32], B[32][8];
    for (auto& row : A)
      for (auto& v : row) v = static_cast<int>(rng() % 16) - 8;
    for (auto& row : B)
      for (auto& v : row) v = static_cast<int>(rng() % 16) - 8;
    uint32_t a16[32][4] = {}, b16[32][2] = {};
    for (int l = 0; l < 32; ++l)
      for (int e = 0; e < 4; ++e) {
        for (int r = 0; r < 4; ++r) {
          const ref::Coord p = ref::m16n8k32_a(l, r, e);
          a16[l][r] |= (static_cast<uint32_t>(A[p.row][p.col]) & 0xFu) << (4 * e);
        }
        for (int r = 0; r < 2; ++r) {
          const ref::Coord p = ref::m16n8k32_b(l, r, e);
          b16[l][r] |= (static_cast<uint32_t>(B[p.row][p.col]) & 0xFu) << (4 * e);
        }
      }
    float de[32][4];
    int32_t ds[32][4];
    ASSERT_EQ(emu::launch("int4_k32_kernel", dim3(1), dim3(32), 0, seeded(trial + 1),
                          [&] { int4_k32_kernel(a16, b16, de, ds); }),
              "");
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 4; ++r) {
        const ref::Coord p = ref::m16n8_c(l, r);
        int64_t s = 0;
        for (int k = 0; k < 32; ++k) s += A[p.row][k] * B[k][p.col];
        ASSERT_EQ(ds[l][r], s);
        ASSERT_EQ(de[l][r], static_cast<float>(s));
      }
  }
}

}  // namespace
