// cuda/gemm_w4a4_epilogue.cuh — what kernel 2's implementations share: the CTA tile, the launch
// parameters, and the epilogue pieces (tensor scale, the CUDA-core low-rank branch, bias and the
// one rounding to the output dtype). The dp4a kernel (gemm_w4a4_dp4a.cuh) runs them per output
// element; the mma kernel (gemm_w4a4_mma.cuh) runs the tensor scale and the bias/rounding here and
// its low-rank branch on tensor cores (lowrank_up_tf32 in gemm_w4a4_mma.cuh).
//
// The contract's epilogue (../shared/DESIGN.md §2), per output (m, n):
//   v = acc                                (int4)  |  v = acc * (t_act * t_w)   (nvfp4, one fmul)
//   v = v * c[n]                           (nvfp4 with per-channel wcscales, docs/formats.md §6.2)
//   v = v + sum_r lora[m, r] * up[n, r]    the low-rank branch (fp32)
//   v = v + b[n]                           (if the layer has a bias)
//   y[m, n] = T(v)                         one rounding, to nearest even
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "arch/fp.cuh"

namespace svdq::cuda {

constexpr int kGemmThreads = 256;
constexpr int kBlkM = 64, kBlkN = 64;  // (BLK_M, BLK_N): one CTA's output tile

/// Kernel 2's parameters. The weight arrays are in the layout of the kernel that reads them:
/// the dp4a kernel reads the canonical layout, the mma kernel the fragment order built at upload
/// (linear_host.hpp, repack_*_mma; the layouts are documented in gemm_w4a4_mma.cuh).
struct GemmParams {
  int64_t m, n, k;
  const uint8_t* a_codes;   // (M, K/2) activation codes: dp4a canonical, mma fragment order (codecs.cuh ActLayout)
  const uint8_t* a_scales;  // (M, G) fp32 (int4) or E4M3 (nvfp4), in the same layout as a_codes
  const uint8_t* w_codes;   // dp4a: (N, K/2) canonical; mma: fragment order
  const uint8_t* w_scales;  // dp4a: (N, G) fp32 (exact decode); mma: fragment order, fp16 / E4M3
  float t_prod;             // nvfp4: t_act * t_w, rounded once in fp32 (as the CPU)
  const float* lora;        // (M, r) fp32, kernel 1's x . lora_down
  const float* up;          // dp4a: (N, r) fp32; mma: fragment order, ranks padded to 8
  int rank;
  const float* bias;        // (N) or null
  void* y;                  // (M, N) output, T
  const float* wcscales = nullptr;  // nvfp4: (N) per-channel c_n, fp32 (exact decode at upload); null: none
};

__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

/// The first step of the epilogue for output column n: nvfp4 applies the product of the tensor
/// scales (one fmul), then, with wcscales, c_n: (acc * (t_act * t_w)) * c_n, two fp32 multiplies in
/// this order (§6.2). Columns past N (padding of the last tile, never stored) are left as they are.
template <int kKind>
__device__ __forceinline__ float epilogue_tensor_scale(float acc, const GemmParams& p, int64_t n) {
  if (kKind != 1) return acc;
  acc = arch::fmul_rn(acc, p.t_prod);
  if (p.wcscales != nullptr && n < p.n) acc = arch::fmul_rn(acc, p.wcscales[n]);
  return acc;
}

/// The low-rank branch of output (m, n) on CUDA cores: sum_r lora[m, r] * up[n, r], fp32 fma in r
/// order, from 0 (canonical (N, r) `up`: the dp4a kernel).
__device__ __forceinline__ float lowrank_up_fp32(const GemmParams& p, int64_t m, int64_t n) {
  float branch = 0.0f;
  for (int q = 0; q < p.rank; ++q) branch = arch::fma_rn(p.lora[m * p.rank + q], p.up[n * p.rank + q], branch);
  return branch;
}

/// The last steps: + bias, one rounding to T, store. Outputs outside (M, N) are not stored.
template <typename T>
__device__ __forceinline__ void epilogue_store(const GemmParams& p, int64_t m, int64_t n, float v) {
  if (m >= p.m || n >= p.n) return;
  if (p.bias != nullptr) v = arch::fadd_rn(v, p.bias[n]);
  store(static_cast<T*>(p.y) + m * p.n + n, v);
}

}  // namespace svdq::cuda
