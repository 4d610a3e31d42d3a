// cuda/quantize_lora_down.cuh — kernel 1: activation quantization + low-rank down-projection in
// one pass over x, the down-projection on tensor cores (issue 9 item 4).
//
// One CTA per 16 token rows (one mma M tile), kQuantThreads = 256 threads (8 warps). x is read
// once: slice by slice (kSlice = 256 channels), the CTA stages its 16 rows of the slice in shared
// memory (16-byte global loads into registers one slice ahead, register double buffering; rows
// past M and channels past K are zero), then
//   * quantization (first rank pass only): thread t owns row t / 16, 16-channel chunk t % 16 of the
//     slice, so an nvfp4 group (16) is one thread's chunk and an int4 group (64) is four
//     consecutive lanes' chunks: the group absmax and finiteness flag are reduced over those 4
//     lanes with xor-shuffles (max is order-independent, so the result is exact). Each thread
//     applies the contract (codecs.cuh) to its 16 values and stores 8 packed bytes in the layout
//     the dispatched GEMM reads (QuantizeParams::layout, codecs.cuh ActLayout: canonical for dp4a,
//     the mma A-fragment order for full 16-row tiles on the mma paths); the group's first lane
//     stores the scale;
//   * the down-projection lora[m, :] = x[m, :] · lora_down on the RAW x: the slice's k16 steps
//     are dealt to the warps round-robin (warp w takes steps w, w + 8, ...: a fixed assignment,
//     ascending k within each warp); per step one ldmatrix.x4 of the A fragment (16 rows x 16 k)
//     from the staged slice and, per n8 tile of the rank chunk, one mma.m16n8k16 (bf16 or f16,
//     the activation dtype) with fp32 accumulation; B fragments are 32-bit loads from the
//     (rank_pad, K) transposed operand (two consecutive k of one column per register).
// After the last slice the 8 warps' partial sums are added in a fixed tree through shared memory,
// ((w0 + w4) + (w2 + w6)) + ((w1 + w5) + (w3 + w7)), and warp 0 stores lora (times lora_scale,
// a power of two). No atomics: same inputs, same bits, whatever the scheduling.
//
// Ranks: any. The operand is padded with zero columns to a multiple of 8 (rank_pad); columns go
// in passes of kRankChunk = 128 (16 n8 tiles, 64 fp32 accumulators per thread), so ranks up to
// 128 read x once and larger ranks re-stage it once per further pass (quantizing only in the first).
//
// The operand is in the activation dtype T (mma needs both operands in one type), built at upload
// by quantize_lora_down_plan.hpp from lora_down (storage dtype):
//   storage == act: the bits as stored (exact; has_lo = 0);
//   f16 storage, bf16 act: hi = bf16(d), lo = bf16(d - hi), both exact (11 significant bits fit in
//     8 + 8, and bf16 has f16's range): two mma per tile and step, exact operand;
//   bf16 storage, f16 act: d · 2^e with 2^14 <= max|d| 2^e < 2^15 (no f16 overflow), then hi/lo in
//     f16; exact except where |d| 2^e < 2^-14 (f16 subnormal): there |error| <= 2^-25 · 2^-e, i.e.
//     <= 2^-39 max|d|; lora_scale = 2^-e undoes the scaling (a power of two: exact).
// Order of summation vs the CPU reference (k ascending, fp32): different (tensor-core internal
// order, warps, tree), so lora differs from it in the last bits; docs/gpu.md states the bound.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "arch/convert.cuh"
#include "arch/fp.cuh"
#include "arch/global.cuh"
#include "arch/ldmatrix.cuh"
#include "arch/mma.cuh"
#include "arch/smem.cuh"
#include "arch/warp.cuh"
#include "codecs.cuh"

namespace svdq::cuda {

constexpr int kQuantThreads = 256;
constexpr int kChunk = 16;       // channels per thread chunk: one nvfp4 group, a quarter int4 group
constexpr int kQuantRows = 16;   // token rows per CTA: one mma M tile
constexpr int kSlice = 256;      // channels staged per step: 16 rows x 16 chunks = one chunk per thread
constexpr int kSliceWords = kSlice / 2;
constexpr int kSliceStride = kSliceWords + 4;  // 132 words = 528 B: 16-byte aligned rows, ldmatrix conflict-free
constexpr int kRankChunk = 128;  // operand columns per pass
constexpr int kRankTiles = kRankChunk / 8;
constexpr int kQuantWarps = kQuantThreads / 32;
static_assert(kQuantRows * (kSlice / kChunk) == kQuantThreads, "one chunk per thread per slice");

// ---- Split-K for small M (docs/gpu.md, kernel 1 "Split-K") --------------------------------------
// One CTA per 16 rows leaves most of a GPU idle for small M, each CTA streaming all of K. The K
// slices are therefore dealt to S CTAs per 16-row tile (gridDim.y = S), each a contiguous range of
// whole 256-channel slices: S depends on (M, K) only (never on the device), so the bits do not
// depend on the GPU: with T = ceil(M/16) tiles and L = ceil(K/256) slices,
//   want = clamp(floor(kSplitTargetCtas / T), 1, L), per = ceil(L / want), S = ceil(L / per)
// (about kSplitTargetCtas CTAs in all; S = 1 from T > 64, i.e. M > 1024, or K <= 256). Each split
// quantizes its own channels (disjoint codes and scales: the same bytes as unsplit) and, with a
// branch (r > 0) and S > 1, writes its unscaled partial x·lora_down (M, r) to the workspace; then
// lora_reduce_kernel adds the S partials in split order, ((p0 + p1) + p2) + ..., and applies
// lora_scale: a fixed order, no atomics. S = 1 (or r = 0) is the unsplit kernel, bit for bit.
constexpr int kSplitTargetCtas = 128;
constexpr int64_t kSplitMaxRows = int64_t{kSplitTargetCtas} * kQuantRows;  // S * M <= 2048 when S > 1

struct KSplit {
  int splits = 1;         // S: CTAs per 16-row tile (gridDim.y)
  int64_t channels = 0;   // channels per split (a multiple of kSlice; the last split may be shorter)
};

/// The split of K for M rows (above). `allow` = false: S = 1 (the unsplit kernel, for tests).
inline KSplit k_split(int64_t m, int64_t k, bool allow = true) {
  const int64_t tiles = (m + kQuantRows - 1) / kQuantRows, slices = (k + kSlice - 1) / kSlice;
  int64_t want = allow && tiles > 0 ? kSplitTargetCtas / tiles : 1;
  want = want > slices ? slices : want;
  if (want < 1) want = 1;  // also when K has no slice (never: validate needs K >= one group)
  const int64_t per = (slices + want - 1) / want;
  KSplit s;
  s.splits = static_cast<int>(per > 0 ? (slices + per - 1) / per : 1);
  s.channels = per * kSlice;
  return s;
}

/// fp32 elements of the partial sums' workspace for up to M rows: S M r <= min(M L, 2048) r when
/// S > 1 (S <= L, and S M <= floor(128 / T) 16 T); nondecreasing in M, so workspace_size(max_M)
/// covers every M <= max_M. 0 without a branch or with a single slice.
inline int64_t k_split_partial_floats(int64_t m, int64_t k, int rank) {
  const int64_t slices = (k + kSlice - 1) / kSlice;
  if (rank <= 0 || slices <= 1 || m < 1) return 0;
  const int64_t rows = m * slices < kSplitMaxRows ? m * slices : kSplitMaxRows;
  return rows * rank;
}

SVDQ_HD float to_float(__half v) { return __half2float(v); }
SVDQ_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

struct QuantizeParams {
  const void* x;            // (M, K) activations, row-major, T
  int64_t m, k;
  const float* inv_smooth;  // (K) 1 / s
  float t_act;              // nvfp4 activation tensor scale (1 for int4)
  uint8_t* codes;           // (M, K/2) packed, in `layout`
  uint8_t* scales;          // (M, K/group) fp32 (int4) or E4M3 (nvfp4), in `layout`
  const uint16_t* down;     // (rank_pad, K) T bits, lora_down transposed (hi); then lo if has_lo
  int rank;                 // r: lora's row stride
  int rank_pad;             // r rounded up to a multiple of 8 (zero columns)
  int has_lo;               // 1: a second (lo) operand follows the first
  float lora_scale;         // a power of two, applied to each lora element once
  float* lora;              // (M, r) fp32
  int rotate = 0;           // 1: block-Hadamard layer, rotate each smoothed group (hadamard_group)
  int64_t split_channels = 0;  // K channels per split (blockIdx.y); 0: all of K (unsplit)
  float* partial = nullptr;    // (S, M, r) fp32 unscaled partial sums when split (then lora is not
                               // written here: lora_reduce_kernel does); null: write lora
  // act_unsigned layers (int4, docs/formats.md §6.1): x + act_shift (one fp32 add, before the
  // smoothing) is quantized unsigned (codecs.cuh kind 2); the low-rank branch reads the raw x.
  int act_unsigned = 0;
  float act_shift = 0.0f;
  // Where codes and scales go (codecs.cuh, ActLayout): kActCanonical for the dp4a kernel 2,
  // kActFragment (kernel 2's mma A-fragment order) for the mma paths; dispatch.hpp chooses.
  int layout = kActCanonical;
};

struct LoraReduceParams {
  const float* partial;  // (S, M, r)
  int splits;            // S
  int64_t count;         // M r
  float lora_scale;
  float* lora;           // (M, r)
};
constexpr int kReduceThreads = 256;

// The second pass of split-K: lora[i] = (((p_0[i] + p_1[i]) + p_2[i]) + ...) * lora_scale.
// (A template only so that this header's definition can be in several g++ translation units.)
template <int kUnused = 0>
__global__ void __launch_bounds__(kReduceThreads) lora_reduce_kernel(LoraReduceParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kReduceThreads + static_cast<int64_t>(threadIdx.x);
  if (i >= p.count) return;
  float acc = p.partial[i];
  for (int s = 1; s < p.splits; ++s) acc = arch::fadd_rn(acc, p.partial[static_cast<int64_t>(s) * p.count + i]);
  p.lora[i] = arch::fmul_rn(acc, p.lora_scale);
}

struct QuantSmem {
  arch::smem_array<uint32_t, kQuantRows, kSliceStride> x;             // the staged slice, T pairs
  arch::smem_array<float, kQuantWarps / 2, kQuantRows, kRankChunk + 4> red;  // the reduction tree
};

template <typename T>
SVDQ_DEV float bits_to_float(uint32_t h) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return arch::bf16_to_float(static_cast<uint16_t>(h));
  else return arch::f16_to_float(static_cast<uint16_t>(h));
}

template <typename T>
SVDQ_DEV void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) arch::mma_m16n8k16_bf16bf16f32(d, a, b, d);
  else arch::mma_m16n8k16_f16f16f32(d, a, b, d);
}

// Block-Hadamard rotation of the smoothed group (docs/formats.md §6.3), in registers, for a layer
// with rotation = block-hadamard: stages h = 1, 2, 4, ..., G/2 in this order, each pair
// (v[i], v[i + h]) with (i & h) == 0 becoming (v[i] + v[i + h], v[i] - v[i + h]), then every
// value times c = 1/sqrt(G) (0.125 int4, 0.25 nvfp4); one IEEE fp32 operation each (fadd_rn /
// fmul_rn: nvcc never contracts them into an FMA with the smoothing multiply before them).
// nvfp4: the group (16) is this thread's chunk, all 4 stages in the thread. int4: the group (64)
// is the chunks of lanes 4j .. 4j + 3 (chunk qc = lane % 16, group element 16 (lane & 3) + i), so
// stages 1..8 are in the thread and stage 16 (32) pairs lane bit 0 (bit 1): the lane whose bit is
// clear holds v[i] and keeps mine + other, the other holds v[i + h] and keeps other - mine (the
// same operands as the CPU's a + b and a - b). Called by all 32 lanes (inactive ones hold zeros).
// Then recomputes the rotated values' absmax and finiteness flag (a finite group whose butterfly
// overflows becomes non-finite, as on the CPU); the int4 lanes reduce them afterwards as before.
template <int kKind>
SVDQ_DEV void hadamard_group(float (&v)[kChunk], int lane, float* a, bool* finite) {
#pragma unroll
  for (int h = 1; h < kChunk; h <<= 1)
#pragma unroll
    for (int i = 0; i < kChunk; ++i)
      if ((i & h) == 0) {
        const float x0 = v[i], x1 = v[i + h];
        v[i] = arch::fadd_rn(x0, x1);
        v[i + h] = arch::fadd_rn(x0, -x1);
      }
  if constexpr (kKind == 0) {
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {  // h = 16: lane ^ 1; h = 32: lane ^ 2
      const bool upper = (lane & off) != 0;
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const float other = arch::shfl_xor(arch::kFullMask, v[i], off);
        v[i] = upper ? arch::fadd_rn(other, -v[i]) : arch::fadd_rn(v[i], other);
      }
    }
  }
  constexpr float c = kKind == 0 ? 0.125f : 0.25f;
  float m = 0.0f;
  bool fin = true;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    v[i] = arch::fmul_rn(v[i], c);
    fin &= is_finite(v[i]);
    m = fmaxf(m, fabsf(v[i]));
  }
  *a = m;
  *finite = fin;
}

// kKind: 0 = int4 (group 64), 1 = nvfp4 (group 16).
template <typename T, int kKind>
__global__ void __launch_bounds__(kQuantThreads) quantize_lora_down_kernel(QuantizeParams p) {
  QuantSmem& sm = arch::shared<QuantSmem>();
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int gid = lane >> 2, tig = lane & 3;  // mma groupID, threadID_in_group
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kQuantRows;
  const int64_t k = p.k;
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
  // This CTA's channels [kb, ke): split blockIdx.y of K (split-K, above); all of K unsplit.
  const int64_t kb = p.split_channels > 0 ? static_cast<int64_t>(blockIdx.y) * p.split_channels : 0;
  const int64_t ke = p.split_channels > 0 && kb + p.split_channels < k ? kb + p.split_channels : k;

  // This thread's quantization chunk: row qr of the tile, chunk qc of each slice.
  const int qr = tid / (kSlice / kChunk), qc = tid % (kSlice / kChunk);
  const int64_t qrow = m0 + qr;

  const int passes = p.rank_pad > 0 ? (p.rank_pad + kRankChunk - 1) / kRankChunk : 1;
  for (int pass = 0; pass < passes; ++pass) {
    const int c0 = pass * kRankChunk;
    const int left = p.rank_pad > c0 ? (p.rank_pad - c0) / 8 : 0;
    const int ntiles = left < kRankTiles ? left : kRankTiles;  // CTA-uniform
    float acc[kRankTiles][4];
#pragma unroll
    for (int j = 0; j < kRankTiles; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[j][r] = 0.0f;

    // Register double buffering: slice s + 1 is loaded from global memory while slice s is used.
    // Rows m0 .. m0 + 15, channels s0 .. s0 + len: 16-byte loads, zeros past M and K.
    constexpr int kLoads = (kQuantRows * kSlice / 8) / kQuantThreads;  // uint4 per thread: 2
    uint4 next[kLoads];
    auto load = [&](int64_t s0) {
      const int64_t len = k - s0 < kSlice ? k - s0 : kSlice;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int idx = tid + i * kQuantThreads;
        const int r = idx / (kSlice / 8), q = idx % (kSlice / 8);
        next[i] = make_uint4(0, 0, 0, 0);
        if (m0 + r < p.m && 8 * q < len) next[i] = arch::ld_global<uint4>(x + (m0 + r) * k + s0 + 8 * q);
      }
    };
    load(kb);
    for (int64_t s0 = kb; s0 < ke; s0 += kSlice) {
      const int len = static_cast<int>(k - s0 < kSlice ? k - s0 : kSlice);  // a multiple of 16 (of 64: int4)
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int idx = tid + i * kQuantThreads;
        const int r = idx / (kSlice / 8), q = idx % (kSlice / 8);
        sm.x[r][4 * q + 0] = next[i].x;
        sm.x[r][4 * q + 1] = next[i].y;
        sm.x[r][4 * q + 2] = next[i].z;
        sm.x[r][4 * q + 3] = next[i].w;
      }
      arch::syncthreads();
      if (s0 + kSlice < ke) load(s0 + kSlice);

      if (pass == 0) {
        const bool active = qrow < p.m && kChunk * qc < len;
        float xh[kChunk] = {};  // zeros in inactive lanes (they still take part in the shuffles)
        float a = 0.0f;
        bool finite = true;
        if (active) {
          const int64_t kk0 = s0 + kChunk * qc;
#pragma unroll
          for (int w = 0; w < kChunk / 2; ++w) {
            const uint32_t pair = sm.x[qr][(kChunk / 2) * qc + w];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int i = 2 * w + h;
              float v = bits_to_float<T>(pair >> (16 * h) & 0xFFFFu);
              if (kKind == 0 && p.act_unsigned) v = arch::fadd_rn(v, p.act_shift);  // §6.1: shift first
              xh[i] = v * p.inv_smooth[kk0 + i];  // IEEE multiply
              finite &= is_finite(xh[i]);
              a = fmaxf(a, fabsf(xh[i]));
            }
          }
        }
        if (p.rotate) hadamard_group<kKind>(xh, lane, &a, &finite);  // CTA-uniform: all lanes shuffle
        if (kKind == 0) {  // int4: the 4 lanes of a group agree on a and the flag (all lanes shuffle)
          int fin = finite ? 1 : 0;
#pragma unroll
          for (int off = 1; off < 4; off <<= 1) {
            a = fmaxf(a, arch::shfl_xor(arch::kFullMask, a, off));
            fin &= arch::shfl_xor(arch::kFullMask, fin, off);
          }
          finite = fin != 0;
        }
        const int64_t c = s0 / kChunk + qc;  // the chunk's index in the row
        uint32_t lo = 0, hi = 0;                // its 16 codes, packed (zeros in inactive lanes)
        uint8_t sb[4] = {0, 0, 0, 0};
        if (active) {
          uint8_t q[kChunk];
          quantize_group(kKind == 0 && p.act_unsigned ? 2 : kKind, xh, kChunk, a, finite, p.t_act, q, sb);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            lo |= static_cast<uint32_t>(q[i] & 0xF) << (4 * i);
            hi |= static_cast<uint32_t>(q[8 + i] & 0xF) << (4 * i);
          }
        }
        // The chunk's 8 code bytes (canonical bytes 8 c .. 8 c + 7 of the row) and its scale, at
        // their places in p.layout (codecs.cuh: act_code_offset / act_scale_offset). int4: the 8
        // bytes are words 2 tig, 2 tig + 1 of group c / 4 (tig = c % 4), contiguous in both
        // layouts: one 8-byte store. nvfp4 fragment order (full 16-row tile): byte pair t of the
        // group goes to lane 4 gid + t of the consumer, whose 8 bytes per row are the pairs of the
        // k tile's 4 groups, i.e. of the 4 lanes (lane & ~3) + gg here: a 4 x 4 transpose of 16-bit
        // pairs by shuffles (all lanes: the condition is CTA-uniform), then one 8-byte store for a
        // whole k tile, 2-byte stores in a K-tail one.
        const bool frag_tile = p.layout == kActFragment && m0 + kQuantRows <= p.m;  // CTA-uniform
        uint32_t tlo = 0, thi = 0;  // nvfp4, frag_tile: pair t = lane & 3 of groups gg = 0..3
        if (kKind == 1 && frag_tile) {
          const int t = lane & 3;
#pragma unroll
          for (int gg = 0; gg < 4; ++gg) {
            const uint32_t l = arch::shfl_idx(arch::kFullMask, lo, (lane & ~3) | gg);
            const uint32_t h = arch::shfl_idx(arch::kFullMask, hi, (lane & ~3) | gg);
            const uint32_t pair = ((t < 2 ? l : h) >> (16 * (t & 1))) & 0xFFFFu;
            if (gg < 2) tlo |= pair << (16 * gg);
            else thi |= pair << (16 * (gg - 2));
          }
        }
        if (active) {
          const int64_t b0 = c * (kChunk / 2);
          if (kKind == 0 || !frag_tile) {
            arch::st_global(p.codes + act_code_offset(p.layout, kKind, p.m, k, qrow, b0), make_uint2(lo, hi));
          } else if (4 * (c / 4) + 4 <= k / kChunk) {  // a whole k tile: pairs t of groups 4 (c / 4) + 0..3
            arch::st_global(p.codes + act_code_offset(p.layout, kKind, p.m, k, qrow, 8 * (c & ~int64_t{3}) + 2 * (lane & 3)),
                            make_uint2(tlo, thi));
          } else {
#pragma unroll
            for (int t = 0; t < 4; ++t)
              arch::st_global(p.codes + act_code_offset(p.layout, kKind, p.m, k, qrow, b0 + 2 * t),
                              static_cast<uint16_t>((t < 2 ? lo : hi) >> (16 * (t & 1))));
          }
          if (kKind == 0) {
            if ((c & 3) == 0)
              arch::st_global(p.scales + act_scale_offset(p.layout, kKind, p.m, k, qrow, c >> 2) * 4,
                              static_cast<uint32_t>(sb[0]) | (static_cast<uint32_t>(sb[1]) << 8) |
                                  (static_cast<uint32_t>(sb[2]) << 16) | (static_cast<uint32_t>(sb[3]) << 24));
          } else {
            p.scales[act_scale_offset(p.layout, kKind, p.m, k, qrow, c)] = sb[0];
          }
        }
      }

      if (ntiles > 0) {
        for (int s = warp; 16 * s < len; s += kQuantWarps) {
          // A: ldmatrix.x4, matrix j = lane / 8 is rows 8 (j & 1) .. +8, k 8 (j >> 1) .. +8 of the step.
          const int j = lane >> 3;
          uint32_t afrag[4];
          arch::ldmatrix_x4(afrag, sm.x[(lane & 7) + 8 * (j & 1)].ptr() + 8 * s + 4 * (j >> 1));
          const int64_t kk = s0 + 16 * s + 2 * tig;
#pragma unroll
          for (int nt = 0; nt < kRankTiles; ++nt) {
            if (nt < ntiles) {
              // B (16 x 8, col): b0 = k 2 tig, +1 of column gid; b1 = k 2 tig + 8, +9.
              const uint16_t* col = p.down + static_cast<int64_t>(c0 + 8 * nt + gid) * k + kk;
              uint32_t b[2] = {arch::ld_global<uint32_t>(col), arch::ld_global<uint32_t>(col + 8)};
              mma16816<T>(acc[nt], afrag, b);
              if (p.has_lo) {
                const uint16_t* col_lo = col + static_cast<int64_t>(p.rank_pad) * k;
                uint32_t bl[2] = {arch::ld_global<uint32_t>(col_lo), arch::ld_global<uint32_t>(col_lo + 8)};
                mma16816<T>(acc[nt], afrag, bl);
              }
            }
          }
        }
      }
      arch::syncthreads();  // the slice is consumed before the next one is staged
    }

    if (ntiles == 0) continue;
    // Fixed-order tree over the 8 warps: half = 4, 2, 1; warp w < half adds warp w + half's sums.
    for (int half = kQuantWarps / 2; half >= 1; half /= 2) {
      if (warp >= half && warp < 2 * half) {
#pragma unroll
        for (int nt = 0; nt < kRankTiles; ++nt)
          if (nt < ntiles)
#pragma unroll
            for (int r = 0; r < 4; ++r)
              sm.red[warp - half][gid + 8 * (r >> 1)][8 * nt + 2 * tig + (r & 1)] = acc[nt][r];
      }
      arch::syncthreads();
      if (warp < half) {
#pragma unroll
        for (int nt = 0; nt < kRankTiles; ++nt)
          if (nt < ntiles)
#pragma unroll
            for (int r = 0; r < 4; ++r)
              acc[nt][r] = arch::fadd_rn(acc[nt][r], sm.red[warp][gid + 8 * (r >> 1)][8 * nt + 2 * tig + (r & 1)]);
      }
      arch::syncthreads();
    }
    if (warp == 0) {
#pragma unroll
      for (int nt = 0; nt < kRankTiles; ++nt)
        if (nt < ntiles)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int64_t row = m0 + gid + 8 * (r >> 1);
            const int col = c0 + 8 * nt + 2 * tig + (r & 1);
            if (row < p.m && col < p.rank) {
              if (p.partial != nullptr)
                p.partial[(static_cast<int64_t>(blockIdx.y) * p.m + row) * p.rank + col] = acc[nt][r];
              else
                p.lora[row * p.rank + col] = arch::fmul_rn(acc[nt][r], p.lora_scale);
            }
          }
    }
  }
}

}  // namespace svdq::cuda
