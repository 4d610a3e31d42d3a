// cuda/quantize_lora_down.cuh — kernel 1: activation quantization + low-rank down-projection.
//
// One CTA per token row, kThreads threads. Each thread owns chunks of 16 consecutive channels
// (chunk c = threadIdx.x + i * kThreads), so an nvfp4 group (16) is one thread's chunk and an
// int4 group (64) is four consecutive lanes' chunks: the group absmax and the finiteness flag are
// reduced over those 4 lanes with xor-shuffles (max is order-independent, so the result is exact).
// Each lane then applies the contract (codecs.cuh) to its 16 values and stores 8 packed bytes;
// the group's first lane stores the scale. Then the low-rank branch lora[m, :] = x[m, :] lora_down
// on the RAW x: each warp owns columns j = warp, warp + 8, ..., lanes stride over k, partial sums
// are reduced with a fixed butterfly, so the result is deterministic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "arch/fp.cuh"
#include "arch/warp.cuh"
#include "codecs.cuh"

namespace svdq::cuda {

constexpr int kQuantThreads = 256;
constexpr int kChunk = 16;  // channels per thread chunk: one nvfp4 group, a quarter int4 group

SVDQ_HD float to_float(__half v) { return __half2float(v); }
SVDQ_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

struct QuantizeParams {
  const void* x;           // (M, K) activations, row-major, T
  int64_t m, k;
  const float* inv_smooth;  // (K) 1 / s
  float t_act;              // nvfp4 activation tensor scale (1 for int4)
  uint8_t* codes;           // (M, K/2) packed, canonical layout
  uint8_t* scales;          // (M, K/group) fp32 (int4) or E4M3 (nvfp4)
  const float* down_t;      // (r, K) lora_down transposed, fp32
  int rank;
  float* lora;              // (M, r) fp32
};

// kKind: 0 = int4 (group 64), 1 = nvfp4 (group 16).
template <typename T, int kKind>
__global__ void __launch_bounds__(kQuantThreads) quantize_lora_down_kernel(QuantizeParams p) {
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.k;
  const int64_t chunks = p.k / kChunk;
  uint8_t* codes_row = p.codes + row * (p.k / 2);
  constexpr int kGroup = kKind == 0 ? 64 : 16;
  constexpr int kScaleBytes = kKind == 0 ? 4 : 1;
  uint8_t* scales_row = p.scales + row * (p.k / kGroup) * kScaleBytes;

  // Every thread runs the same number of iterations so that the shuffles below see full warps;
  // chunks past the end are empty (a = 0, finite), and never share a group with a real chunk
  // because K is a multiple of the group.
  for (int64_t base = 0; base < chunks; base += kQuantThreads) {
    const int64_t c = base + threadIdx.x;
    const bool active = c < chunks;
    float xh[kChunk];
    float a = 0.0f;
    bool finite = true;
    if (active) {
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int64_t kk = c * kChunk + i;
        xh[i] = to_float(x[kk]) * p.inv_smooth[kk];  // IEEE multiply, as the contract
        finite &= is_finite(xh[i]);
        a = fmaxf(a, fabsf(xh[i]));
      }
    }
    if (kKind == 0) {  // int4: the 4 lanes of a group agree on a and the flag
      int fin = finite ? 1 : 0;
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        a = fmaxf(a, arch::shfl_xor(arch::kFullMask, a, off));
        fin &= arch::shfl_xor(arch::kFullMask, fin, off);
      }
      finite = fin != 0;
    }
    if (!active) continue;
    uint8_t q[kChunk];
    uint8_t sb[4];
    quantize_group(kKind, xh, kChunk, a, finite, p.t_act, q, sb);
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo |= static_cast<uint32_t>(q[i] & 0xF) << (4 * i);
      hi |= static_cast<uint32_t>(q[8 + i] & 0xF) << (4 * i);
    }
    *reinterpret_cast<uint2*>(codes_row + c * (kChunk / 2)) = make_uint2(lo, hi);
    if (kKind == 0) {
      if ((c & 3) == 0) *reinterpret_cast<uint32_t*>(scales_row + (c >> 2) * 4) =
          static_cast<uint32_t>(sb[0]) | (static_cast<uint32_t>(sb[1]) << 8) |
          (static_cast<uint32_t>(sb[2]) << 16) | (static_cast<uint32_t>(sb[3]) << 24);
    } else {
      scales_row[c] = sb[0];
    }
  }

  // Low-rank down on the raw x: lora[row, j] = sum_k x[k] * down_t[j, k], fp32.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kWarps = kQuantThreads / 32;
  for (int j = warp; j < p.rank; j += kWarps) {
    const float* d = p.down_t + static_cast<int64_t>(j) * p.k;
    float acc = 0.0f;
    for (int64_t kk = lane; kk < p.k; kk += 32) acc = arch::fma_rn(to_float(x[kk]), d[kk], acc);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc = arch::fadd_rn(acc, arch::shfl_xor(arch::kFullMask, acc, off));
    if (lane == 0) p.lora[row * p.rank + j] = acc;
  }
}

}  // namespace svdq::cuda
