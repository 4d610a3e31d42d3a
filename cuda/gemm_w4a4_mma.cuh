// cuda/gemm_w4a4_mma.cuh — kernel 2 on tensor cores (mma.sync): the W4A4 GEMM with the low-rank
// up-projection and bias in the epilogue. Same parameters, tile, grid and contract as the dp4a
// kernel (gemm_w4a4_dp4a.cuh); at rank 0 its output equals the CPU reference bit for bit.
//
// CTA tile (BLK_M, BLK_N) = (64, 64), 256 threads = 8 warps as 4 (M) x 2 (N); warp (wm, wn) owns
// rows 16 wm .. +16 and columns 32 wn .. +32 of the tile: one 16-row A fragment and four 8-column
// B fragments (m16n8 tiles) per k step. For each group g, in order:
//   * the CTA copies the group's packed codes of its 64 rows of x and of W (canonical layout,
//     32 bytes per row for int4, 8 for nvfp4) into shared memory, and the group's scales;
//   * each warp forms the exact group sum P_g of each of its outputs with C = 0:
//       int4, kPath 1 (sm_80/86/89): one mma.m16n8k64.s4 per m16n8 tile — every fragment register
//         of that shape is one canonical 32-bit word of codes (PTX ISA, m16n8k64 fragments), so
//         the codes go to the mma as stored;
//       int4, kPath 2 (sm_90): s4x8_to_s8x8 then two mma.m16n8k32.s8 (k 0-31, then k 32-63
//         accumulating on the first). ptxas lowers the .s4 mma on sm_90 to a subroutine and the
//         .e4m3 mma to f16 HMMA (cuda/arch/mma.cuh), so the s8 mma is Hopper's native exact path;
//         |P_g| <= 64 * 8 * 8 fits any int32 path;
//       nvfp4 (both paths): e2m1x2_to_bf16x2 (the E2M1 values, no scale) into mma.m16n8k16.bf16
//         with fp32 accumulation: one mma is one group of 16; products are multiples of 1/4 and
//         |P_g| <= 16 * 36 = 576, so every partial sum is an fp32 value and P_g is exact;
//   * acc = fmaf(float(P_g), sx * sw, acc)   — the contract's accumulation, in group order.
// The epilogue is the dp4a kernel's, element for element: (nvfp4) * t_prod, + the low-rank branch
// lora[m, :] . up[n, :] (fp32 fma in r order), + bias, one rounding to T.
//
// Pipelining: register double buffering (group g + 1 is loaded into registers while group g's mma
// run). Not yet: weights repacked at upload into fragment order with 16-byte loads, cp.async
// multi-stage pipelining, the tensor-core low-rank epilogue (issue 9 items 1, 5).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "arch/convert.cuh"
#include "arch/fp.cuh"
#include "arch/mma.cuh"
#include "arch/smem.cuh"
#include "arch/warp.cuh"
#include "codecs.cuh"
#include "gemm_w4a4_dp4a.cuh"  // GemmParams, store(), kBlkM, kBlkN, kGemmThreads

namespace svdq::cuda {

// Shared memory of the mma kernel: one group of packed codes per row. Row strides of 12 words
// (int4) and 3 words (nvfp4) make a warp's fragment reads (rows groupID, words threadID_in_group
// + c) hit 32 distinct banks.
template <int kWords, int kStride>
struct MmaSmem {
  arch::smem_array<uint32_t, kBlkM, kStride> a_s;
  arch::smem_array<uint32_t, kBlkN, kStride> w_s;
  arch::smem_array<float, kBlkM> sx_s;
  arch::smem_array<float, kBlkN> sw_s;
};

/// kKind: 0 int4, 1 nvfp4. kPath: 1 = s4 mma (sm_80/86/89), 2 = s8 mma (sm_90); nvfp4 uses the
/// bf16 mma on both.
template <typename T, int kKind, int kPath>
__global__ void __launch_bounds__(kGemmThreads) gemm_w4a4_mma_kernel(GemmParams p) {
  static_assert(kGemmThreads == 256, "8 warps: 4 (M) x 2 (N)");
  constexpr int kGroup = kKind == 0 ? 64 : 16;
  constexpr int kWords = kGroup / 8;  // packed 32-bit words per row per group: 8 or 2
  constexpr int kStride = kKind == 0 ? 12 : 3;
  MmaSmem<kWords, kStride>& sm = arch::shared<MmaSmem<kWords, kStride>>();

  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlkM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBlkN;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int wm = warp % 4, wn = warp / 4;
  const int gid = lane >> 2, tig = lane & 3;  // groupID, threadID_in_group
  const int rm = 16 * wm, cn = 32 * wn;       // the warp's first row and column in the tile
  const int64_t groups = p.k / kGroup;
  const int64_t row_bytes = p.k / 2;

  float acc[4][4];  // [n tile j][C register]: row rm + gid + 8 (r / 2), column cn + 8 j + 2 tig + r % 2
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0.0f;

  // Register double buffering: group g + 1's codes and scales are loaded from global memory into
  // registers while group g's mma run (global latency overlaps the tensor-core work).
  constexpr int kLoads = (kBlkM * kWords + kGemmThreads - 1) / kGemmThreads;  // per thread: 2 or 1
  uint32_t next_a[kLoads], next_w[kLoads];
  float next_s = 0.0f;
  auto load = [&](int64_t g) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int idx = static_cast<int>(threadIdx.x) + l * kGemmThreads;
      const int r = idx / kWords, wd = idx % kWords;
      next_a[l] = 0;
      next_w[l] = 0;
      if (idx >= kBlkM * kWords) continue;
      // Rows past M or N are zero (their results are never stored).
      if (m0 + r < p.m)
        next_a[l] = *reinterpret_cast<const uint32_t*>(p.a_codes + (m0 + r) * row_bytes + g * (kGroup / 2) + wd * 4);
      if (n0 + r < p.n)
        next_w[l] = *reinterpret_cast<const uint32_t*>(p.w_codes + (n0 + r) * row_bytes + g * (kGroup / 2) + wd * 4);
    }
    next_s = 0.0f;
    if (threadIdx.x < kBlkM) {
      const int64_t mm = m0 + threadIdx.x;
      if (mm < p.m) {
        if (kKind == 0) {
          next_s = *reinterpret_cast<const float*>(p.a_scales + (mm * groups + g) * 4);
        } else {
          next_s = decode_e4m3(p.a_scales[mm * groups + g]);
        }
      }
    } else if (threadIdx.x < kBlkM + kBlkN) {
      const int64_t nn = n0 + (threadIdx.x - kBlkM);
      if (nn < p.n) next_s = p.w_scales[nn * groups + g];
    }
  };
  if (groups > 0) load(0);

  for (int64_t g = 0; g < groups; ++g) {
    // Stage group g from the registers, then start loading group g + 1.
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int idx = static_cast<int>(threadIdx.x) + l * kGemmThreads;
      if (idx < kBlkM * kWords) {
        sm.a_s[idx / kWords][idx % kWords] = next_a[l];
        sm.w_s[idx / kWords][idx % kWords] = next_w[l];
      }
    }
    if (threadIdx.x < kBlkM) {
      sm.sx_s[threadIdx.x] = next_s;
    } else if (threadIdx.x < kBlkM + kBlkN) {
      sm.sw_s[threadIdx.x - kBlkM] = next_s;
    }
    arch::syncthreads();
    if (g + 1 < groups) load(g + 1);

    float pg[4][4];  // the exact group sums, as fp32
    if constexpr (kKind == 0) {
      const int32_t zero[4] = {0, 0, 0, 0};
      int32_t d[4][4];
      if constexpr (kPath == 1) {
        // m16n8k64 .s4: A register reg = row gid + 8 (reg % 2), word tig + 4 (reg / 2);
        // B register reg = row (n) gid, word tig + 4 reg.
        uint32_t a[4];
#pragma unroll
        for (int reg = 0; reg < 4; ++reg) a[reg] = sm.a_s[rm + gid + 8 * (reg & 1)][tig + 4 * (reg >> 1)];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t b[2] = {sm.w_s[cn + 8 * j + gid][tig], sm.w_s[cn + 8 * j + gid][tig + 4]};
          arch::mma_m16n8k64_s4s4s32(d[j], a, b, zero);
        }
      } else {
        // m16n8k32 .s8 on k half h: A register reg = row gid + 8 (reg % 2), k 32 h + 4 tig +
        // 16 (reg / 2) .. +4 = word 4 h + tig / 2 + 2 (reg / 2), its low (tig even) or high half;
        // B register reg = row (n) gid, word 4 h + tig / 2 + 2 reg, the same half.
        const bool high = (tig & 1) != 0;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t a[4];
#pragma unroll
          for (int reg = 0; reg < 4; ++reg) {
            uint32_t lo, hi;
            arch::s4x8_to_s8x8(sm.a_s[rm + gid + 8 * (reg & 1)][4 * h + tig / 2 + 2 * (reg >> 1)], lo, hi);
            a[reg] = high ? hi : lo;
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t b[2];
#pragma unroll
            for (int reg = 0; reg < 2; ++reg) {
              uint32_t lo, hi;
              arch::s4x8_to_s8x8(sm.w_s[cn + 8 * j + gid][4 * h + tig / 2 + 2 * reg], lo, hi);
              b[reg] = high ? hi : lo;
            }
            if (h == 0) {
              arch::mma_m16n8k32_s8s8s32(d[j], a, b, zero);
            } else {
              const int32_t c[4] = {d[j][0], d[j][1], d[j][2], d[j][3]};
              arch::mma_m16n8k32_s8s8s32(d[j], a, b, c);
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) pg[j][r] = static_cast<float>(d[j][r]);
    } else {
      // m16n8k16 .bf16, one group of 16: A register reg = row gid + 8 (reg % 2), k 2 tig + 8 (reg / 2)
      // and +1 = byte tig of word reg / 2; B register reg = row (n) gid, byte tig of word reg.
      const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      uint32_t a[4];
#pragma unroll
      for (int reg = 0; reg < 4; ++reg)
        a[reg] = arch::e2m1x2_to_bf16x2((sm.a_s[rm + gid + 8 * (reg & 1)][reg >> 1] >> (8 * tig)) & 0xFFu);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t b[2];
#pragma unroll
        for (int reg = 0; reg < 2; ++reg)
          b[reg] = arch::e2m1x2_to_bf16x2((sm.w_s[cn + 8 * j + gid][reg] >> (8 * tig)) & 0xFFu);
        arch::mma_m16n8k16_bf16bf16f32(pg[j], a, b, zero);
      }
    }
    // The contract's promotion, in group order.
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float sx = sm.sx_s[rm + gid + 8 * (r >> 1)];
        const float sw = sm.sw_s[cn + 8 * j + 2 * tig + (r & 1)];
        acc[j][r] = arch::fma_rn(pg[j][r], arch::fmul_rn(sx, sw), acc[j][r]);
      }
    arch::syncthreads();
  }

  // Epilogue: (nvfp4) tensor scales, low-rank up, bias, one rounding to T.
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t mm = m0 + rm + gid + 8 * (r >> 1);
      const int64_t nn = n0 + cn + 8 * j + 2 * tig + (r & 1);
      if (mm >= p.m || nn >= p.n) continue;
      float v = kKind == 1 ? arch::fmul_rn(acc[j][r], p.t_prod) : acc[j][r];
      float branch = 0.0f;
      for (int q = 0; q < p.rank; ++q)
        branch = arch::fma_rn(p.lora[mm * p.rank + q], p.up[nn * p.rank + q], branch);
      v = arch::fadd_rn(v, branch);
      if (p.bias != nullptr) v = arch::fadd_rn(v, p.bias[nn]);
      store(y + mm * p.n + nn, v);
    }
}

}  // namespace svdq::cuda
