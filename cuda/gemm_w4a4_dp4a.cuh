// cuda/gemm_w4a4_dp4a.cuh — kernel 2: the W4A4 GEMM with the low-rank up-projection and bias in
// the epilogue, on integer dot products (dp4a, every GPU from sm_61; used here for sm_80+).
//
// Tile (BLK_M, BLK_N) = (64, 64) per CTA (M tiles on gridDim.x, which allows 2^31-1 of them; N
// tiles on gridDim.y, at most 65535, checked at create), 256 threads, each thread a 4x4 sub-tile at rows
// ty + 16 i and columns tx + 16 j. For each group g, in order: the CTA unpacks the group's codes
// of its 64 rows of x and 64 rows of W into int8 in shared memory — int4 nibbles sign-extended,
// E2M1 codes as twice their value (an integer in [-12, 12]) — and each thread forms
//   P_g = sum dp4a(...)        exact int32 (|P| <= 64*49 int4; 4 * 576 for nvfp4)
//   acc = fmaf(float(P_g), sx * sw, acc)         (nvfp4: float(P_g) = p / 4, exact)
// which is the contract's accumulation, operation for operation: with rank 0 the output equals
// the CPU reference bit for bit. The epilogue adds lora[m, :] . lora_up[n, :] (fp32, in r order)
// and the bias, and rounds once to the activation dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "arch/convert.cuh"  // svdq::arch::dp4a
#include "arch/fp.cuh"
#include "arch/global.cuh"
#include "arch/smem.cuh"
#include "arch/warp.cuh"
#include "codecs.cuh"
#include "gemm_w4a4_epilogue.cuh"  // GemmParams, the tile, the epilogue

namespace svdq::cuda {

// Unpacks one 32-bit word of 8 packed codes into two words of 4 int8 each (out[0]: codes 0-3).
template <int kKind>
__device__ __forceinline__ void unpack8(uint32_t w, int32_t (&res)[2]) {
  uint32_t out[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint8_t code = (w >> (4 * i)) & 0xF;
    const int v = kKind == 0 ? int4_value(code) : (kKind == 2 ? static_cast<int>(code) : e2m1_twice(code));
    out[i / 4] |= (static_cast<uint32_t>(v) & 0xFFu) << (8 * (i % 4));
  }
  res[0] = static_cast<int32_t>(out[0]);
  res[1] = static_cast<int32_t>(out[1]);
}

// The CTA's shared memory (one instance per CTA: arch::shared<GemmSmem<...>>()).
template <int kWords>
struct GemmSmem {
  arch::smem_array<int32_t, kBlkM, kWords + 1> a_s;  // (BLK_M, group/4), +1 against bank conflicts
  arch::smem_array<int32_t, kBlkN, kWords + 1> w_s;  // (BLK_N, group/4)
  arch::smem_array<float, kBlkM> sx_s;
  arch::smem_array<float, kBlkN> sw_s;
};

/// kKind: 0 int4, 1 nvfp4, 2 int4 with unsigned activation codes (act_unsigned layers: A bytes
/// 0..15 zero-extended, dp4a.u32.s32; the weights stay signed).
template <typename T, int kKind>
__global__ void __launch_bounds__(kGemmThreads) gemm_w4a4_dp4a_kernel(GemmParams p) {
  // No architecture dispatches it on a GPU (cuda/dispatch.hpp): its body exists for the emulated
  // device only (arch::kDeviceArch 0); on a GPU it is a trap (nvcc time).
  if constexpr (arch::kDeviceArch != 0) {
    arch::no_device_code("gemm_w4a4_dp4a_kernel (emulated device only, cuda/dispatch.hpp)");
    return;
  }
  constexpr int kGroup = kKind == 1 ? 16 : 64;
  constexpr int kWords = kGroup / 4;         // int8x4 words per row per group: 16 or 4
  constexpr int kPackedWords = kGroup / 8;   // packed 32-bit words per row per group: 8 or 2
  GemmSmem<kWords>& sm = arch::shared<GemmSmem<kWords>>();

  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlkM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBlkN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t groups = p.k / kGroup;
  const int64_t row_bytes = p.k / 2;

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int64_t g = 0; g < groups; ++g) {
    // Stage the group: (64 rows x kPackedWords) packed words of x and of W; rows past M or N
    // are zero (their results are never stored).
    for (int idx = threadIdx.x; idx < kBlkM * kPackedWords; idx += kGemmThreads) {
      const int r = idx / kPackedWords, wd = idx % kPackedWords;
      uint32_t wa = 0, ww = 0;
      if (m0 + r < p.m)
        wa = arch::ld_global<uint32_t>(p.a_codes + (m0 + r) * row_bytes + g * (kGroup / 2) + wd * 4);
      if (n0 + r < p.n)
        ww = arch::ld_global<uint32_t>(p.w_codes + (n0 + r) * row_bytes + g * (kGroup / 2) + wd * 4);
      int32_t ua[2], uw[2];
      unpack8<kKind>(wa, ua);                      // kind 2: unsigned activation codes, zero-extended
      unpack8<kKind == 2 ? 0 : kKind>(ww, uw);     // the weights are signed int4 in kinds 0 and 2
      sm.a_s[r][2 * wd] = ua[0];
      sm.a_s[r][2 * wd + 1] = ua[1];
      sm.w_s[r][2 * wd] = uw[0];
      sm.w_s[r][2 * wd + 1] = uw[1];
    }
    if (threadIdx.x < kBlkM) {
      const int64_t mm = m0 + threadIdx.x;
      float s = 0.0f;
      if (mm < p.m) {
        if (kKind != 1) {
          s = arch::ld_global<float>(p.a_scales + (mm * groups + g) * 4);
        } else {
          s = decode_e4m3(p.a_scales[mm * groups + g]);
        }
      }
      sm.sx_s[threadIdx.x] = s;
    } else if (threadIdx.x < kBlkM + kBlkN) {
      const int64_t nn = n0 + (threadIdx.x - kBlkM);
      sm.sw_s[threadIdx.x - kBlkM] = nn < p.n ? arch::ld_global<float>(p.w_scales + (nn * groups + g) * 4) : 0.0f;
    }
    arch::syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ty + 16 * i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = tx + 16 * j;
        int32_t dot = 0;
#pragma unroll
        for (int w = 0; w < kWords; ++w) {
          if constexpr (kKind == 2)  // unsigned activation bytes (0..15) x signed weight bytes
            dot = arch::dp4a_us(static_cast<uint32_t>(sm.a_s[r][w]), sm.w_s[c][w], dot);
          else
            dot = arch::dp4a(sm.a_s[r][w], sm.w_s[c][w], dot);
        }
        const float pg = kKind != 1 ? static_cast<float>(dot) : static_cast<float>(dot) * 0.25f;
        acc[i][j] = arch::fma_rn(pg, arch::fmul_rn(sm.sx_s[r], sm.sw_s[c]), acc[i][j]);
      }
    }
    arch::syncthreads();
  }

  // Epilogue (gemm_w4a4_epilogue.cuh): (nvfp4) tensor scales, low-rank up on CUDA cores, bias,
  // one rounding to T.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t mm = m0 + ty + 16 * i;
    if (mm >= p.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t nn = n0 + tx + 16 * j;
      if (nn >= p.n) continue;
      const float v = epilogue_tensor_scale<kKind>(acc[i][j], p, nn);
      epilogue_store<T>(p, mm, nn, arch::fadd_rn(v, lowrank_up_fp32(p, mm, nn)));
    }
  }
}

}  // namespace svdq::cuda
