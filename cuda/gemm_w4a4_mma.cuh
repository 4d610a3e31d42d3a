// cuda/gemm_w4a4_mma.cuh — kernel 2 on tensor cores (mma.sync): the W4A4 GEMM, then the low-rank
// up-projection on tensor cores into the same fp32 accumulators, then bias and one rounding. Same
// tile, grid and contract as the dp4a kernel (gemm_w4a4_dp4a.cuh); at rank 0 its output equals the
// CPU reference bit for bit.
//
// CTA tile (BLK_M, BLK_N) = (64, 64), 256 threads = 8 warps as 4 (M) x 2 (N); warp (wm, wn) owns
// rows 16 wm .. +16 and columns 32 wn .. +32 of the tile: one 16-row A fragment and four m16n8
// tiles j = 0..3 (columns 32 wn + 8 j ..). gid = lane / 4 (groupID), tig = lane % 4.
//
// Main loop: one pipeline stage = one k tile of 64 (32 packed bytes per row) = one int4 group or
// four nvfp4 groups. Each thread loads its own operands straight from global memory into
// registers, with no shared memory and no barrier:
//   * B (weights, repacked at upload into fragment order, layouts below): 32 bytes per thread and
//     stage = two 16-byte loads, a warp's 1 KiB contiguous;
//   * A (activations, written by kernel 1 in fragment order: codecs.cuh, kActFragment): rows gid
//     and gid + 8 of the warp's 16-row tile, int4 words 2 tig, 2 tig + 1 of the group, nvfp4 bytes
//     2 tig, 2 tig + 1 of each group's 8: one 16-byte load per lane for a full tile (a warp's 512
//     bytes contiguous; 2-byte pieces in an nvfp4 K-tail k tile); the rows of a partial last tile
//     (M % 16) are canonical: int4 one 8-byte load per row, nvfp4 one 2-byte load per row and group;
//   * the scales: weights in fragment order (one or two 16-byte loads), activations in fragment
//     order for full tiles (one 8-byte load: rows gid, gid + 8), canonical in the partial tile.
// The k order inside a group is permuted identically for A and B (thread tig holds a contiguous
// slice of each row, not the ISA's canonical k columns), which leaves every dot product, hence the
// exact group sum, unchanged:
//   int4, kPath 1 (sm_80/86/89), mma.m16n8k64.s4: slot k 8 tig + e <- nibble e of word 2 tig,
//     slot 32 + 8 tig + e <- nibble e of word 2 tig + 1; one mma per m16n8 tile and group;
//   int4, kPath 2 (sm_90), s4x8_to_s8x8 + two mma.m16n8k32.s8 (h = 0, 1; the second accumulates on
//     the first): slot 4 tig + e <- nibble e of word 2 tig + h (low half of the s8 conversion),
//     slot 16 + 4 tig + e <- nibble 4 + e (high half). ptxas lowers the .s4 mma on sm_90 to a
//     subroutine and the .e4m3 mma to f16 HMMA (cuda/arch/mma.cuh), so s8 IMMA is Hopper's native
//     exact path; |P_g| <= 64 * 8 * 8 fits any int32 path;
//   nvfp4 (both paths), e2m1x2_to_bf16x2 (E2M1 values, no scale) into mma.m16n8k16.bf16 with fp32
//     accumulation, one mma per group of 16: slot 2 tig + e <- nibble e of byte 2 tig, slot
//     8 + 2 tig + e <- nibble e of byte 2 tig + 1. Products are multiples of 1/4 and
//     |P_g| <= 16 * 36 = 576, so every partial sum is an fp32 value and P_g is exact.
//   unsigned int4 activations (kKind 2, act_unsigned layers, docs/formats.md §6.1): the same
//     slots and loads; kPath 1 runs mma.m16n8k64.u4.s4 (A's nibbles are the codes 0..15), kPath 2
//     zero-extends A with u4x8_to_u8x8 (B still s4x8_to_s8x8) into mma.m16n8k32.u8.s8;
//     |P_g| <= 64 * 15 * 8 = 7680, exact.
// Then acc = fmaf(float(P_g), sx * sw, acc), the contract's promotion, group by group in order.
//
// Pipelining: kStages register buffers (Nunchaku's gemm_w4a4 main loop, nunchaku
// src/kernels/zgemm/gemm_w4a4.cuh: fragment-packed operands loaded global -> registers with 16-byte
// loads, NUM_STAGES = 2, loads of stage k + 1 issued before the mma of stage k). Why this rather
// than CUTLASS's cp.async multistage (sm80 MmaMultistage, 3-5 shared-memory stages):
//   * every B byte is consumed by the thread that loads it (fragment order), so a shared-memory
//     stage would only add a store, a load and a barrier per stage; the A slice is read by the two
//     N-warps of a row block, which L1 serves;
//   * A is in fragment order too (kernel 1 writes it so), so its bytes are also consumed by the
//     thread that loads them; the partial last tile and nvfp4 K tails are not 16-byte addressable
//     and cp.async here has 16-byte copies only (cuda/arch/cp_async.cuh);
//   * the per-stage state is small (int4: 18 registers; nvfp4: 22), so two buffers fit well inside
//     the register budget of 256 threads per CTA (docs/gpu.md: registers, no spills).
// Not measured (no GPU in the sessions that wrote this): a deeper pipeline (kStages 3) or a
// cp.async variant may win on a device; kStages is the one constant to change.
//
// Epilogue: (nvfp4) acc *= t_prod, then (per-channel wcscales, §6.2) acc *= c_n; the low-rank branch as a tensor-core GEMM into the same
// accumulators (lowrank_up_tf32 below); + bias; one rounding (gemm_w4a4_epilogue.cuh).
//
// Fragment-order layouts (built once at upload by linear_host.hpp, repack_*_mma; N is padded to
// whole 64-row tiles and K to whole 64-k tiles with zeros; nt = N tile, kt = k tile, g = group):
//   codes  [nt][kt][wn 2][lane 32][32 B]: int4: [j 4][h 2] words = word 2 tig + h (of the group's
//          8) of row 64 nt + 32 wn + 8 j + gid; nvfp4: [gg 4][j 4] 2-byte pairs = bytes 2 tig,
//          2 tig + 1 of group 4 kt + gg of that row;
//   scales int4:  [nt][g][wn][tig 4][j 4][c 2] fp16 bits = scale of column 32 wn + 8 j + 2 tig + c;
//          nvfp4: [nt][kt][wn][tig][gg 4][j 4][c 2] E4M3 codes (group 4 kt + gg);
//   up     [nt][s][wn][lane][j 4][e 2] fp32 = up[64 nt + 32 wn + 8 j + gid][8 s + 2 tig + e] (0
//          past the rank), s = rank step of 8.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "arch/convert.cuh"
#include "arch/fp.cuh"
#include "arch/global.cuh"
#include "arch/mma.cuh"
#include "codecs.cuh"
#include "gemm_w4a4_epilogue.cuh"

namespace svdq::cuda {

/// The mma kernel's fixed shapes (the host repack builds its layouts from the same constants).
struct MmaLayout {
  static constexpr int kKTile = 64;            // k per pipeline stage
  static constexpr int kTileBytes = 32;        // packed code bytes per row per stage
  static constexpr int kThreadCodeBytes = 32;  // B code bytes per thread per stage
  static constexpr int kWarpsN = 2;            // warps along N (wn)
  static constexpr int kRankStep = 8;          // ranks per tf32 mma (k of m16n8k8)
  /// Weight-scale bytes per thread per stage: int4 8 x fp16, nvfp4 4 groups x 8 x E4M3.
  SVDQ_HD static constexpr int scale_bytes(int kind) { return kind == 1 ? 32 : 16; }
};

/// Register pipeline depth (see the file comment).
constexpr int kStages = 2;

/// One pipeline stage of one thread's operands, in registers.
struct MmaStage {
  uint4 b[2];       // B codes: 32 bytes, fragment order
  uint32_t a[2][2]; // A codes: [row gid / gid + 8][h]; int4 words 2 tig + h; nvfp4 byte pairs of groups 2 h, 2 h + 1
  uint4 sw[2];      // weight scales: int4 sw[0] = 8 x fp16; nvfp4 sw[0..1] = 32 x E4M3
  uint32_t sx[2];   // activation scales of rows gid, gid + 8: int4 fp32 bits; nvfp4 4 E4M3 bytes (groups 4 kt + 0..3)
};

/// Loads stage kt (nothing and zeros when !pred or past M / K: their results are never stored and
/// padded groups are never promoted).
template <int kKind>
__device__ __forceinline__ void load_stage(const GemmParams& p, int64_t kt, bool pred, int64_t row0,
                                           const uint8_t* w_tile, const uint8_t* ws_tile, int lane, MmaStage& s) {
  const int tig = lane & 3;
  const int64_t groups = p.k / (kKind == 1 ? 16 : 64);
  const int64_t row_bytes = p.k / 2;
  s.b[0] = s.b[1] = make_uint4(0, 0, 0, 0);
  s.sw[0] = s.sw[1] = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) s.a[rh][0] = s.a[rh][1] = s.sx[rh] = 0;
  if (!pred) return;
  // B: this thread's 32 bytes of the (nt, kt, wn) block.
  const uint8_t* wb = w_tile + kt * (MmaLayout::kWarpsN * 32 * MmaLayout::kThreadCodeBytes);
  s.b[0] = arch::ld_global<uint4>(wb);
  s.b[1] = arch::ld_global<uint4>(wb + 16);
  constexpr int kScaleBytes = MmaLayout::scale_bytes(kKind);
  const uint8_t* sb = ws_tile + kt * (MmaLayout::kWarpsN * 4 * kScaleBytes);
  s.sw[0] = arch::ld_global<uint4>(sb);
  if (kKind == 1) s.sw[1] = arch::ld_global<uint4>(sb + 16);
  // A in fragment order (codecs.cuh, kActFragment) when the warp's 16 rows are a full tile:
  // one 16-byte code load per lane (512 contiguous bytes per warp) and one 8-byte scale load.
  const int64_t tile0 = row0 - (lane >> 2);  // the warp's first row (16-row aligned)
  if (tile0 + 16 <= p.m) {
    const int gk = kKind != 1 || 4 * kt + 4 <= groups ? 4 : static_cast<int>(groups - 4 * kt);  // nvfp4 K tail
    const uint8_t* a_tile = p.a_codes + tile0 * row_bytes + kt * 512;
    if (gk == 4) {
      const uint4 v = arch::ld_global<uint4>(a_tile + 16 * lane);  // [rh][h] words
      s.a[0][0] = v.x;
      s.a[0][1] = v.y;
      s.a[1][0] = v.z;
      s.a[1][1] = v.w;
    } else {  // nvfp4, the last k tile of a K tail (1-3 groups): [rh][gg < gk] byte pairs
      const uint8_t* v = a_tile + 4 * gk * lane;
#pragma unroll
      for (int rh = 0; rh < 2; ++rh)
#pragma unroll
        for (int gg = 0; gg < 3; ++gg)
          if (gg < gk)
            s.a[rh][gg >> 1] |= static_cast<uint32_t>(arch::ld_global<uint16_t>(v + 2 * (rh * gk + gg))) << (16 * (gg & 1));
    }
    const int gid = lane >> 2;
    if (kKind != 1) {
      const uint2 sv = arch::ld_global<uint2>(p.a_scales + (tile0 * groups + 16 * kt + 2 * gid) * 4);
      s.sx[0] = sv.x;
      s.sx[1] = sv.y;
    } else if (gk == 4) {
      const uint2 sv = arch::ld_global<uint2>(p.a_scales + tile0 * groups + 64 * kt + 8 * gid);
      s.sx[0] = sv.x;
      s.sx[1] = sv.y;
    } else {
      const uint8_t* sv = p.a_scales + tile0 * groups + 64 * kt + 2 * gk * gid;
#pragma unroll
      for (int rh = 0; rh < 2; ++rh)
#pragma unroll
        for (int gg = 0; gg < 3; ++gg)
          if (gg < gk) s.sx[rh] |= static_cast<uint32_t>(sv[rh * gk + gg]) << (8 * gg);
    }
    return;
  }
  // The rows of a last partial tile (M % 16 of them): canonical, as kernel 1 leaves them.
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int64_t row = row0 + 8 * rh;
    if (row >= p.m) continue;
    const uint8_t* a_row = p.a_codes + row * row_bytes + kt * MmaLayout::kTileBytes;
    if (kKind != 1) {
      const uint2 w = arch::ld_global<uint2>(a_row + 8 * tig);  // words 2 tig, 2 tig + 1
      s.a[rh][0] = w.x;
      s.a[rh][1] = w.y;
      s.sx[rh] = arch::ld_global<uint32_t>(p.a_scales + (row * groups + kt) * 4);
    } else {
      uint32_t sx = 0;
#pragma unroll
      for (int gg = 0; gg < 4; ++gg) {
        const int64_t g = 4 * kt + gg;
        if (g >= groups) continue;
        const uint32_t pair = arch::ld_global<uint16_t>(a_row + 8 * gg + 2 * tig);
        s.a[rh][gg >> 1] |= pair << (16 * (gg & 1));
        sx |= static_cast<uint32_t>(p.a_scales[row * groups + g]) << (8 * gg);
      }
      s.sx[rh] = sx;
    }
  }
}

/// kPath 2's 8-bit integer mma: .s8.s8 (kKind 0) or .u8.s8 (kKind 2: zero-extended unsigned codes).
template <int kKind>
__device__ __forceinline__ void mma_k32_int(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                            const int32_t (&c)[4]) {
  if constexpr (kKind == 2) arch::mma_m16n8k32_u8s8s32(d, a, b, c);
  else arch::mma_m16n8k32_s8s8s32(d, a, b, c);
}

/// The exact group sums of one stage, promoted into acc in group order.
template <int kKind, int kPath>
__device__ __forceinline__ void compute_stage(const MmaStage& s, int64_t kt, int64_t groups, float (&acc)[4][4]) {
  const uint32_t* bw = reinterpret_cast<const uint32_t*>(&s.b[0]);  // 8 words
  if constexpr (kKind != 1) {  // int4; kKind 2: unsigned activation codes (0..15), signed weights
    int32_t d[4][4];
    const int32_t zero[4] = {0, 0, 0, 0};
    if constexpr (kPath == 1) {
      const uint32_t a[4] = {s.a[0][0], s.a[1][0], s.a[0][1], s.a[1][1]};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t b[2] = {bw[2 * j], bw[2 * j + 1]};
        if constexpr (kKind == 2) arch::mma_m16n8k64_u4s4s32(d[j], a, b, zero);
        else arch::mma_m16n8k64_s4s4s32(d[j], a, b, zero);
      }
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t lo0, hi0, lo1, hi1;
        if constexpr (kKind == 2) {  // zero-extend the unsigned codes to u8
          arch::u4x8_to_u8x8(s.a[0][h], lo0, hi0);
          arch::u4x8_to_u8x8(s.a[1][h], lo1, hi1);
        } else {
          arch::s4x8_to_s8x8(s.a[0][h], lo0, hi0);
          arch::s4x8_to_s8x8(s.a[1][h], lo1, hi1);
        }
        const uint32_t a[4] = {lo0, lo1, hi0, hi1};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t b[2];
          arch::s4x8_to_s8x8(bw[2 * j + h], b[0], b[1]);
          if (h == 0) {
            mma_k32_int<kKind>(d[j], a, b, zero);
          } else {
            const int32_t c[4] = {d[j][0], d[j][1], d[j][2], d[j][3]};
            mma_k32_int<kKind>(d[j], a, b, c);
          }
        }
      }
    }
    const float sx[2] = {arch::detail::u32_as_float(s.sx[0]), arch::detail::u32_as_float(s.sx[1])};
    const uint32_t* sw = reinterpret_cast<const uint32_t*>(&s.sw[0]);  // [j][c] fp16 pairs
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float w = arch::f16_to_float(static_cast<uint16_t>(sw[j] >> (16 * (r & 1))));
        acc[j][r] = arch::fma_rn(static_cast<float>(d[j][r]), arch::fmul_rn(sx[r >> 1], w), acc[j][r]);
      }
  } else {
    const uint32_t* sw = reinterpret_cast<const uint32_t*>(&s.sw[0]);  // [gg][j][c] E4M3 bytes: word 2 gg + j / 2
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int gg = 0; gg < 4; ++gg) {
      if (4 * kt + gg >= groups) break;  // warp-uniform: a K tail of fewer than 4 groups
      uint32_t a[4];
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const uint32_t pair = s.a[rh][gg >> 1] >> (16 * (gg & 1));  // bytes 2 tig, 2 tig + 1
        a[rh] = arch::e2m1x2_to_bf16x2(pair & 0xFFu);
        a[2 + rh] = arch::e2m1x2_to_bf16x2((pair >> 8) & 0xFFu);
      }
      const float sx[2] = {arch::e4m3_to_float((s.sx[0] >> (8 * gg)) & 0xFFu),
                           arch::e4m3_to_float((s.sx[1] >> (8 * gg)) & 0xFFu)};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t pair = bw[2 * gg + (j >> 1)] >> (16 * (j & 1));
        const uint32_t b[2] = {arch::e2m1x2_to_bf16x2(pair & 0xFFu), arch::e2m1x2_to_bf16x2((pair >> 8) & 0xFFu)};
        float pg[4];
        arch::mma_m16n8k16_bf16bf16f32(pg, a, b, zero);
        const uint32_t swj = sw[2 * gg + (j >> 1)] >> (16 * (j & 1));
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float w = arch::e4m3_to_float((swj >> (8 * (r & 1))) & 0xFFu);
          acc[j][r] = arch::fma_rn(pg[r], arch::fmul_rn(sx[r >> 1], w), acc[j][r]);
        }
      }
    }
  }
}

/// The low-rank branch on tensor cores, into the warp's accumulators: acc += lora[rows, :] .
/// up[cols, :]^T with mma.m16n8k8.tf32 (fp32 accumulation). The contract keeps lora in fp32
/// (DESIGN.md §2), and tf32 has 11 significant bits, so each lora value x is split as
/// hi = tf32_rna(x), lo = tf32_rna(x - hi) (x - hi is exact in fp32): |x - hi - lo| <= 2^-22 |x|
/// (+ 2^-137 when x - hi is an fp32 subnormal, |x| < 2^-114)
/// (CUTLASS's 3xTF32 "big + small" split, cutlass/gemm/warp/mma_tensor_op_fast_f32.h, whose
/// small x small term is not needed here). `up` holds 16-bit values (fp16 or bf16: <= 11
/// significant bits, fp32's exponent range), which are tf32 values exactly, so two mma per rank
/// step (lo first, then hi) carry the fp32 branch to within 2^-22 sum_r |lora up| plus the tensor
/// core's fp32 accumulation (docs/gpu.md bounds the difference to the reference).
/// Slots: A slot k tig <- rank 8 s + 2 tig, slot tig + 4 <- rank 8 s + 2 tig + 1 (B likewise, in
/// the repacked `up`), so each thread reads two adjacent ranks of a lora row.
__device__ __forceinline__ void lowrank_up_tf32(const GemmParams& p, int64_t row0, const float* up_tile, int lane,
                                                float (&acc)[4][4]) {
  const int tig = lane & 3;
  const int steps = (p.rank + MmaLayout::kRankStep - 1) / MmaLayout::kRankStep;
  for (int s = 0; s < steps; ++s) {
    float x[2][2];  // [row gid / gid + 8][e]: lora[row][8 s + 2 tig + e]
#pragma unroll
    for (int rh = 0; rh < 2; ++rh)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int q = MmaLayout::kRankStep * s + 2 * tig + e;
        const int64_t row = row0 + 8 * rh;
        x[rh][e] = (row < p.m && q < p.rank) ? p.lora[row * p.rank + q] : 0.0f;
      }
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {  // A register r: row gid + 8 (r & 1), slot tig + 4 (r >> 1)
      const float v = x[r & 1][r >> 1];
      hi[r] = arch::float_to_tf32_rna(v);
      lo[r] = arch::float_to_tf32_rna(arch::fadd_rn(v, -arch::detail::u32_as_float(hi[r])));
    }
    const float* ub = up_tile + static_cast<int64_t>(s) * (MmaLayout::kWarpsN * 32 * 8);
    const uint4 u0 = arch::ld_global<uint4>(ub), u1 = arch::ld_global<uint4>(ub + 4);  // [j][e]: j 0-1, then j 2-3
    const uint32_t uw[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t b[2] = {uw[2 * j], uw[2 * j + 1]};
      arch::mma_m16n8k8_tf32tf32f32(acc[j], lo, b, acc[j]);
      arch::mma_m16n8k8_tf32tf32f32(acc[j], hi, b, acc[j]);
    }
  }
}

/// The mma path that device code for __CUDA_ARCH__ = arch runs (cuda/dispatch.hpp's kArchTable,
/// which static_asserts the same): 1 on sm_80/86/87/89, 2 on sm_90.
SVDQ_HD constexpr int mma_path_of_arch(int arch) { return arch >= 900 ? 2 : 1; }
/// Whether this compilation holds the body of path kPath: always on the host and the emulated
/// device (arch 0); on a GPU the architecture's own path, path 2 in PTX that may be JIT-compiled
/// for sm_90 (arch::kDevicePtxMayRunNewer), and path 1 on sm_90 as well: issue 9 asks for the
/// sm_80 s4 kernel's correctness cases to run on an H200 (ptxas emulates the s4 mma there: exact,
/// slow), so sm_90 code keeps it for that test even though kArchTable dispatches path 2 there.
/// Every instantiation exists on every architecture (a __global__ template's instantiations must
/// not depend on __CUDA_ARCH__); the others are a trap, which saves nvcc's time on code no device
/// of that architecture runs (path 2 on sm_80/86/89, the dp4a kernel on every GPU).
SVDQ_HD constexpr bool mma_path_compiled(int path, int arch, bool ptx_may_run_newer) {
  return arch == 0 || path == mma_path_of_arch(arch) || (path == 2 && ptx_may_run_newer) ||
         (path == 1 && arch >= 900);
}

/// kKind: 0 int4, 1 nvfp4, 2 int4 with unsigned activation codes (act_unsigned layers). kPath:
/// 1 = s4 mma (sm_80/86/89; kKind 2: .u4.s4), 2 = s8 mma (sm_90; kKind 2: codes zero-extended to
/// u8, .u8.s8); nvfp4 uses the bf16 mma on both.
template <typename T, int kKind, int kPath>
__global__ void __launch_bounds__(kGemmThreads) gemm_w4a4_mma_kernel(GemmParams p) {
  if constexpr (!mma_path_compiled(kPath, arch::kDeviceArch, arch::kDevicePtxMayRunNewer)) {
    arch::no_device_code("gemm_w4a4_mma_kernel: this path (cuda/dispatch.hpp)");
    return;
  }
  static_assert(kGemmThreads == 256, "8 warps: 4 (M) x 2 (N)");
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlkM;
  const int64_t nt = blockIdx.y;
  const int64_t n0 = nt * kBlkN;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int wm = warp % 4, wn = warp / 4;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t row0 = m0 + 16 * wm + gid;  // the thread's first row; the second is row0 + 8
  const int64_t groups = p.k / (kKind == 1 ? 16 : 64);
  const int64_t kts = (p.k + MmaLayout::kKTile - 1) / MmaLayout::kKTile;
  constexpr int kScaleBytes = MmaLayout::scale_bytes(kKind);
  // This thread's slices of the fragment-order arrays at kt = 0 (stage kt adds kt * block).
  const uint8_t* w_tile = p.w_codes + ((nt * kts) * MmaLayout::kWarpsN + wn) * 32 * MmaLayout::kThreadCodeBytes +
                          lane * MmaLayout::kThreadCodeBytes;
  const int64_t scale_tiles = kKind != 1 ? groups : kts;  // int4: one stage per group
  const uint8_t* ws_tile =
      p.w_scales + ((nt * scale_tiles) * MmaLayout::kWarpsN + wn) * 4 * kScaleBytes + tig * kScaleBytes;

  float acc[4][4];  // [n tile j][C register r]: row row0 + 8 (r / 2), column n0 + 32 wn + 8 j + 2 tig + r % 2
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0.0f;

  MmaStage st[kStages];
#pragma unroll
  for (int k = 0; k < kStages - 1; ++k) load_stage<kKind>(p, k, k < kts, row0, w_tile, ws_tile, lane, st[k]);
  for (int64_t k1 = 0; k1 < kts; k1 += kStages) {
#pragma unroll
    for (int k2 = 0; k2 < kStages; ++k2) {
      // Issue the loads of stage k1 + k2 + kStages - 1, then the mma of stage k1 + k2 (compile-
      // time buffer indices after unrolling: the stages stay in registers).
      const int64_t next = k1 + k2 + kStages - 1;
      load_stage<kKind>(p, next, next < kts, row0, w_tile, ws_tile, lane, st[(k2 + kStages - 1) % kStages]);
      if (k1 + k2 < kts) compute_stage<kKind, kPath>(st[k2], k1 + k2, groups, acc);
    }
  }

  // Epilogue: (nvfp4) tensor scales, the low-rank branch on tensor cores, bias, one rounding.
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = epilogue_tensor_scale<kKind>(acc[j][r], p, n0 + 32 * wn + 8 * j + 2 * tig + (r & 1));
  if (p.rank > 0) {
    const int64_t steps = (p.rank + MmaLayout::kRankStep - 1) / MmaLayout::kRankStep;
    const float* up_tile = p.up + ((nt * steps) * MmaLayout::kWarpsN + wn) * 32 * 8 + lane * 8;
    lowrank_up_tf32(p, row0, up_tile, lane, acc);
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      epilogue_store<T>(p, row0 + 8 * (r >> 1), n0 + 32 * wn + 8 * j + 2 * tig + (r & 1), acc[j][r]);
}

}  // namespace svdq::cuda
