// cuda/arch/mma.cuh — warp-level tensor-core multiply-accumulate (mma.sync), one function per PTX
// instruction, each with a device body (inline PTX) and a host body (the emulated runtime,
// SVDQ_EMU) that follows the PTX ISA's semantics. The warp-level semantics live in pure functions
// on lane arrays (namespace ref) that compile with any C++20 compiler and are tested on their own.
//
// Source of every fact below: PTX ISA (docs.nvidia.com/cuda/parallel-thread-execution), §9.7.14.5
// "Matrix multiply-accumulate operation using mma instruction":
//   * "Matrix Fragments for mma.m16n8k16 with floating point type" (Figures 79, 81, 83),
//   * "Matrix Fragments for mma.m16n8k32" (.e4m3: Figures 88, 90, 91, 92),
//   * "Matrix Fragments for mma.m16n8k64" (.s4: Figures 93-96),
//   * "Matrix Fragments for mma.m16n8k8" (.tf32: the A and B register maps, m16n8k8_tf32_a/_b),
//   * "Multiply-and-Accumulate Instruction: mma" (semantics, precision, target ISA notes).
// Operand register counts agree with CUTLASS cute/arch/mma_sm80.hpp (SM80_16x8x64_S32S4S4S32_TN,
// SM80_16x8x16_F32BF16BF16F32_TN, SM80_16x8x16_F32F16F16F32_TN: A uint32_t[4], B uint32_t[2],
// C/D [4]) and cute/arch/mma_sm89.hpp (SM89_16x8x32_F32E4M3E4M3F32_TN: the same counts).
//
// Conventions (all shapes): A is M x K row-major ("row"), B is K x N column-major ("col"), C and D
// are M x N, M = 16, N = 8. With groupID = lane >> 2 and threadID_in_group = lane % 4, a register
// holds its elements "low to high": element e of a register sits in bits [e*w, (e+1)*w) for w-bit
// elements. The maps ref::*_a / *_b / m16n8_c below transcribe the ISA's formulas; the ISA numbers
// the elements of a lane a0, a1, ... across its registers, element i = reg * (32 / w) + e.
//
// Arithmetic (PTX ISA, "Precision and rounding"):
//   * .s4 -> .s32: exact integer products; "If .satfinite is not specified, the accumulated value
//     is wrapped" — D = C + sum(A*B) modulo 2^32 (two's complement). The host does exactly that.
//     (|A*B| <= 64 per product, so only a C near the int32 limits can wrap.)
//   * .bf16 / .f16 / .e4m3 -> .f32: "Element-wise multiplication ... with specified precision (at
//     least single precision for .f16). Accumulation ... with at least single precision. The
//     accumulation order, rounding, and handling of subnormal inputs are unspecified." The host
//     computes every product exactly in double (a product of two p-bit significands has <= 2p bits:
//     e4m3 8, bf16 16, f16 22 bits, all < 53), accumulates in double in a fixed order — C first,
//     then k = 0, 1, ..., K-1 — and rounds once to fp32 (round to nearest even).
//     For general inputs the host's rounding may differ from the hardware's. The host result is
//     exact, and equals what any accumulation of at least single precision gives, when every
//     partial sum is representable in fp32: if C and all products are integer multiples of 2^q and
//     |C| + sum |A*B| < 2^(24+q), every partial sum in any order is such a multiple below 2^(24+q),
//     hence an fp32 value, and no rounding happens anywhere. The project's uses satisfy it:
//       - int4 codes as e4m3 (integers |v| <= 8, q = 0): a group of 64 has |sum| <= 64 * 7 * 7 =
//         3136 < 2^24 (with codes in [-7, 7]; 64 * 8 * 8 = 4096 for the full int4 range);
//       - bf16/f16 operands holding E2M1 values (multiples of 1/2, |v| <= 6) with C = 0: one
//         m16n8k16 spans exactly one nvfp4 group (K = 16), products are multiples of 2^-2 and
//         |sum| <= 16 * 36 = 576 < 2^22, so the group sum is exact and the contract's per-group
//         order (scale applied in fp32 afterwards) can be kept;
//       - bf16 operands that are E2M1 x E4M3 products (multiples of 2^-10, |v| <= 2688): a product
//         of two is a multiple of 2^-20, so the sum is exact only while |C| + sum |A*B| < 2^4;
//         beyond that host and device may differ in the last bits of D.
//     Not verified on a GPU: the ISA promises only "at least single precision". The DeepSeek-V3
//     report (arXiv 2412.19437, §3.3.2) measured FP8 GEMM accumulation on H800 tensor cores
//     (wgmma) keeping about 14 bits after alignment; the int4-as-e4m3 sums above need 13 bits
//     (|values| <= 3136 < 2^12, integer spacing), so they are expected exact there too — to be
//     confirmed on the device.
//   * NaN: the host propagates NaN through double arithmetic (NaN * 0 is NaN, as in IEEE); the
//     hardware's NaN bit patterns are not reproduced bit for bit.
//   * .s8 (m16n8k32, the 8-bit layout of .e4m3): as .s4, exact and wrapping.
//   * .u4.s4 / .u8.s8 (A unsigned, B signed; the ISA's integer mma takes .atype and .btype
//     independently from {.u4, .s4} / {.u8, .s8}): the same fragments, A's elements zero-extended;
//     exact and wrapping. Used for the unsigned activations of act_unsigned layers.
//
// What ptxas makes of these (CUDA 13.0, cuobjdump -sass of cuda/arch_check.cu):
//   sm_80/86: IMMA.16864.S4.S4, IMMA.16832.S8.S8, HMMA.16816.F32(.BF16); e4m3 -> the trap below.
//             .u4.s4 -> IMMA.16864.U4.S4, .u8.s8 -> IMMA.16832.U8.S8 (sm_80, sm_89; CUDA 13.0,
//             cuobjdump of cuda/gpu_linear.cu); on sm_90a .u4.s4 is a subroutine like .s4 and
//             .u8.s8 native IMMA.16832.U8.S8.
//   sm_89:    the same plus QMMA.16832.F32.E4M3.E4M3 (native e4m3).
//   sm_90/90a: .s4 is lowered to a subroutine of shifts and 2 x IMMA.16832.S8.S8; .e4m3 to
//             12 x F2FP.F16.E4M3.UNPACK_B + 2 x HMMA.16816.F32 (exact e4m3 -> f16 conversions,
//             then f16 mma: its accumulation is HMMA's, as unspecified by the ISA as any; the
//             DeepSeek figure above concerns wgmma, not this path); .s8 stays native (IMMA).
//             On Hopper, mma.sync e4m3 is therefore no faster than f16 or s8 mma.sync, and the
//             exact integer path for int4 is s4x8_to_s8x8 (convert.cuh) + the s8 mma.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "config.cuh"
#include "guard.cuh"


namespace svdq::arch {

// ---------------------------------------------------------------------------------------------
// Fragment index maps and the warp-level semantics on lane arrays (pure; host code).
// ---------------------------------------------------------------------------------------------
namespace ref {

/// A (row, column) position in a matrix: for A (row = m, col = k), for B (row = k, col = n), for
/// C/D (row = m, col = n).
struct Coord {
  int row;
  int col;
};

/// m16n8k64 .s4 A (16 x 64): register `reg` (0..3) of `lane`, nibble `elem` (0..7).
SVDQ_HD constexpr Coord m16n8k64_a(int lane, int reg, int elem) {
  const int i = reg * 8 + elem, group = lane >> 2, tig = lane % 4;
  const int row = (i < 8 || (i >= 16 && i < 24)) ? group : group + 8;
  const int col = tig * 8 + (i & 0x7) + (i >= 16 ? 32 : 0);
  return {row, col};
}
/// m16n8k64 .s4 B (64 x 8): register `reg` (0..1), nibble `elem` (0..7).
SVDQ_HD constexpr Coord m16n8k64_b(int lane, int reg, int elem) {
  const int i = reg * 8 + elem, group = lane >> 2, tig = lane % 4;
  return {tig * 8 + (i & 0x7) + (i >= 8 ? 32 : 0), group};
}
/// m16n8k32 .e4m3 (and .s8) A (16 x 32): register `reg` (0..3), byte `elem` (0..3).
SVDQ_HD constexpr Coord m16n8k32_a(int lane, int reg, int elem) {
  const int i = reg * 4 + elem, group = lane >> 2, tig = lane % 4;
  const int row = (i < 4 || (i >= 8 && i < 12)) ? group : group + 8;
  const int col = tig * 4 + (i & 0x3) + (i >= 8 ? 16 : 0);
  return {row, col};
}
/// m16n8k32 .e4m3 (and .s8) B (32 x 8): register `reg` (0..1), byte `elem` (0..3).
SVDQ_HD constexpr Coord m16n8k32_b(int lane, int reg, int elem) {
  const int i = reg * 4 + elem, group = lane >> 2, tig = lane % 4;
  return {tig * 4 + (i & 0x3) + (i >= 4 ? 16 : 0), group};
}
/// m16n8k16 .bf16/.f16 A (16 x 16): register `reg` (0..3), half `elem` (0 = low 16 bits, 1 = high).
SVDQ_HD constexpr Coord m16n8k16_a(int lane, int reg, int elem) {
  const int i = reg * 2 + elem, group = lane >> 2, tig = lane % 4;
  const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
  const int col = tig * 2 + (i & 0x1) + (i >= 4 ? 8 : 0);
  return {row, col};
}
/// m16n8k16 .bf16/.f16 B (16 x 8): register `reg` (0..1), half `elem` (0..1).
SVDQ_HD constexpr Coord m16n8k16_b(int lane, int reg, int elem) {
  const int i = reg * 2 + elem, group = lane >> 2, tig = lane % 4;
  return {tig * 2 + (i & 0x1) + (i >= 2 ? 8 : 0), group};
}
/// m16n8k8 .tf32 A (16 x 8): register `reg` (0..3), one element each (PTX ISA, "Matrix Fragments
/// for mma.m16n8k8", .tf32: row = groupID for a0/a2, + 8 for a1/a3; col = threadID_in_group for
/// a0/a1, + 4 for a2/a3).
SVDQ_HD constexpr Coord m16n8k8_tf32_a(int lane, int reg, int /*elem*/ = 0) {
  const int group = lane >> 2, tig = lane % 4;
  return {(reg & 1) ? group + 8 : group, (reg & 2) ? tig + 4 : tig};
}
/// m16n8k8 .tf32 B (8 x 8): register `reg` (0..1): row (k) = threadID_in_group (+ 4 for b1),
/// col = groupID.
SVDQ_HD constexpr Coord m16n8k8_tf32_b(int lane, int reg, int /*elem*/ = 0) {
  return {(lane % 4) + 4 * reg, lane >> 2};
}
/// C/D (16 x 8, .s32 or .f32, every m16n8kK shape here): register `reg` (0..3).
SVDQ_HD constexpr Coord m16n8_c(int lane, int reg) {
  const int group = lane >> 2, tig = lane % 4;
  return {reg < 2 ? group : group + 8, tig * 2 + (reg & 0x1)};
}

#if !defined(__CUDA_ARCH__)
// Element decoders, exact (host only).
inline int s4_element(uint32_t reg, int elem) {
  const int v = static_cast<int>((reg >> (4 * elem)) & 0xFu);
  return v >= 8 ? v - 16 : v;
}
inline int u4_element(uint32_t reg, int elem) { return static_cast<int>((reg >> (4 * elem)) & 0xFu); }
inline int u8_element(uint32_t reg, int elem) { return static_cast<int>((reg >> (8 * elem)) & 0xFFu); }
inline int s8_element(uint32_t reg, int elem) {
  return static_cast<int8_t>(static_cast<uint8_t>(reg >> (8 * elem)));
}
/// E4M3 ("fn": bias 7, no infinities, S.1111.111 = NaN) as a double, exactly.
inline double e4m3_element(uint32_t reg, int elem) {
  const uint32_t b = (reg >> (8 * elem)) & 0xFFu;
  const int exp = static_cast<int>((b >> 3) & 0xFu), man = static_cast<int>(b & 0x7u);
  double mag;
  if (exp == 0xF && man == 0x7) return std::nan("");
  if (exp == 0)
    mag = std::ldexp(static_cast<double>(man), -9);
  else
    mag = std::ldexp(static_cast<double>(8 + man), exp - 10);
  return (b & 0x80u) ? -mag : mag;
}
inline double bf16_element(uint32_t reg, int elem) {
  const uint32_t bits = ((reg >> (16 * elem)) & 0xFFFFu) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline double f16_element(uint32_t reg, int elem) {
  const uint32_t h = (reg >> (16 * elem)) & 0xFFFFu;
  const int exp = static_cast<int>((h >> 10) & 0x1Fu), man = static_cast<int>(h & 0x3FFu);
  double mag;
  if (exp == 0x1F)
    mag = man ? std::nan("") : HUGE_VAL;
  else if (exp == 0)
    mag = std::ldexp(static_cast<double>(man), -24);
  else
    mag = std::ldexp(static_cast<double>(1024 + man), exp - 25);
  return (h & 0x8000u) ? -mag : mag;
}

namespace detail {
// Lays the warp's fragments out as matrices A (16 x K) and B (K x 8) through the index maps.
template <int K, int kElemsPerReg, class Map, class Decode, class T>
void gather_a(const uint32_t a[32][4], Map map, Decode decode, T (&A)[16][K]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r)
      for (int e = 0; e < kElemsPerReg; ++e) {
        const Coord p = map(lane, r, e);
        A[p.row][p.col] = decode(a[lane][r], e);
      }
}
template <int K, int kElemsPerReg, class Map, class Decode, class T>
void gather_b(const uint32_t b[32][2], Map map, Decode decode, T (&B)[K][8]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 2; ++r)
      for (int e = 0; e < kElemsPerReg; ++e) {
        const Coord p = map(lane, r, e);
        B[p.row][p.col] = decode(b[lane][r], e);
      }
}
// One lane's D fragment in floating point: C first, then k ascending, in double; one rounding.
template <int K>
void lane_d_float(const double (&A)[16][K], const double (&B)[K][8], const float c[4], int lane,
                  float d[4]) {
  for (int r = 0; r < 4; ++r) {
    const Coord p = m16n8_c(lane, r);
    double acc = c[r];
    for (int k = 0; k < K; ++k) acc += A[p.row][k] * B[k][p.col];
    d[r] = static_cast<float>(acc);
  }
}
// One lane's D of an integer mma.sync m16n8kK with .s32 accumulators: A (16 x K) and B (K x 8)
// laid out from every lane's registers through the fragment maps (kElemsPerReg elements per
// register) and the element decoders (signed or unsigned, 4 or 8 bits), then C + sum over k of
// A*B, wrapping modulo 2^32 like .s32 without .satfinite. The four integer instructions below are
// this template with their K, maps and decoders.
template <int K, int kElemsPerReg, class MapA, class MapB, class DecodeA, class DecodeB>
void mma_int_lane(MapA map_a, MapB map_b, DecodeA decode_a, DecodeB decode_b,
                  const uint32_t a[32][4], const uint32_t b[32][2], const int32_t c[4], int lane,
                  int32_t d[4]) {
  int A[16][K], B[K][8];
  gather_a<K, kElemsPerReg>(a, map_a, decode_a, A);
  gather_b<K, kElemsPerReg>(b, map_b, decode_b, B);
  for (int r = 0; r < 4; ++r) {
    const Coord p = m16n8_c(lane, r);
    uint32_t acc = static_cast<uint32_t>(c[r]);  // unsigned: wraps modulo 2^32 like .s32 in PTX
    for (int k = 0; k < K; ++k) acc += static_cast<uint32_t>(A[p.row][k] * B[k][p.col]);
    d[r] = static_cast<int32_t>(acc);
  }
}
// The whole warp from a one-lane function: d[lane][reg] for every lane (any accumulator type).
template <class LaneFn, class Acc>
void mma_warp(LaneFn lane_fn, const uint32_t a[32][4], const uint32_t b[32][2], const Acc c[32][4],
              Acc d[32][4]) {
  for (int lane = 0; lane < 32; ++lane) lane_fn(a, b, c[lane], lane, d[lane]);
}
}  // namespace detail

/// One lane's D = A*B + C of mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 (wrapping), given
/// every lane's A and B registers and this lane's C.
inline void mma_m16n8k64_s4s4s32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                      const int32_t c[4], int lane, int32_t d[4]) {
  detail::mma_int_lane<64, 8>(m16n8k64_a, m16n8k64_b, s4_element, s4_element, a, b, c, lane, d);
}
/// The whole warp: d[lane][reg] for every lane.
inline void mma_m16n8k64_s4s4s32(const uint32_t a[32][4], const uint32_t b[32][2],
                                 const int32_t c[32][4], int32_t d[32][4]) {
  detail::mma_warp(mma_m16n8k64_s4s4s32_lane, a, b, c, d);
}

/// One lane's D of mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (wrapping, as .s4 above).
inline void mma_m16n8k32_s8s8s32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                      const int32_t c[4], int lane, int32_t d[4]) {
  detail::mma_int_lane<32, 4>(m16n8k32_a, m16n8k32_b, s8_element, s8_element, a, b, c, lane, d);
}
inline void mma_m16n8k32_s8s8s32(const uint32_t a[32][4], const uint32_t b[32][2],
                                 const int32_t c[32][4], int32_t d[32][4]) {
  detail::mma_warp(mma_m16n8k32_s8s8s32_lane, a, b, c, d);
}

/// One lane's D of mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32: A's nibbles unsigned (0..15),
/// B's signed (-8..7), the .s4 fragment maps (the ISA gives one layout per element width), wrapping.
inline void mma_m16n8k64_u4s4s32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                      const int32_t c[4], int lane, int32_t d[4]) {
  detail::mma_int_lane<64, 8>(m16n8k64_a, m16n8k64_b, u4_element, s4_element, a, b, c, lane, d);
}
inline void mma_m16n8k64_u4s4s32(const uint32_t a[32][4], const uint32_t b[32][2],
                                 const int32_t c[32][4], int32_t d[32][4]) {
  detail::mma_warp(mma_m16n8k64_u4s4s32_lane, a, b, c, d);
}

/// One lane's D of mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32: A's bytes unsigned (0..255),
/// B's signed, the 8-bit fragment maps, wrapping.
inline void mma_m16n8k32_u8s8s32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                      const int32_t c[4], int lane, int32_t d[4]) {
  detail::mma_int_lane<32, 4>(m16n8k32_a, m16n8k32_b, u8_element, s8_element, a, b, c, lane, d);
}
inline void mma_m16n8k32_u8s8s32(const uint32_t a[32][4], const uint32_t b[32][2],
                                 const int32_t c[32][4], int32_t d[32][4]) {
  detail::mma_warp(mma_m16n8k32_u8s8s32_lane, a, b, c, d);
}

/// One lane's D of mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 (order and rounding: see
/// the file comment).
inline void mma_m16n8k32_e4m3e4m3f32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                          const float c[4], int lane, float d[4]) {
  double A[16][32], B[32][8];
  detail::gather_a<32, 4>(a, m16n8k32_a, e4m3_element, A);
  detail::gather_b<32, 4>(b, m16n8k32_b, e4m3_element, B);
  detail::lane_d_float(A, B, c, lane, d);
}
inline void mma_m16n8k32_e4m3e4m3f32(const uint32_t a[32][4], const uint32_t b[32][2],
                                     const float c[32][4], float d[32][4]) {
  detail::mma_warp(mma_m16n8k32_e4m3e4m3f32_lane, a, b, c, d);
}

/// One lane's D of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32.
inline void mma_m16n8k16_bf16bf16f32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                          const float c[4], int lane, float d[4]) {
  double A[16][16], B[16][8];
  detail::gather_a<16, 2>(a, m16n8k16_a, bf16_element, A);
  detail::gather_b<16, 2>(b, m16n8k16_b, bf16_element, B);
  detail::lane_d_float(A, B, c, lane, d);
}
inline void mma_m16n8k16_bf16bf16f32(const uint32_t a[32][4], const uint32_t b[32][2],
                                     const float c[32][4], float d[32][4]) {
  detail::mma_warp(mma_m16n8k16_bf16bf16f32_lane, a, b, c, d);
}

/// One lane's D of mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32.
inline void mma_m16n8k16_f16f16f32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                        const float c[4], int lane, float d[4]) {
  double A[16][16], B[16][8];
  detail::gather_a<16, 2>(a, m16n8k16_a, f16_element, A);
  detail::gather_b<16, 2>(b, m16n8k16_b, f16_element, B);
  detail::lane_d_float(A, B, c, lane, d);
}
inline void mma_m16n8k16_f16f16f32(const uint32_t a[32][4], const uint32_t b[32][2],
                                   const float c[32][4], float d[32][4]) {
  detail::mma_warp(mma_m16n8k16_f16f16f32_lane, a, b, c, d);
}
/// A .tf32 operand register as a double: the fp32 value with its low 13 bits ignored (the ISA
/// gives the operand as .b32 holding tf32 data; the kernels pass cvt.rna.tf32.f32 results or
/// exact 16-bit values, whose low 13 bits are zero).
inline double tf32_element(uint32_t reg, int /*elem*/) {
  const uint32_t bits = reg & 0xFFFFE000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// One lane's D of mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (products of two 11-bit
/// significands are exact in double; order and rounding: see the file comment).
inline void mma_m16n8k8_tf32tf32f32_lane(const uint32_t a[32][4], const uint32_t b[32][2],
                                         const float c[4], int lane, float d[4]) {
  double A[16][8], B[8][8];
  detail::gather_a<8, 1>(a, m16n8k8_tf32_a, tf32_element, A);
  detail::gather_b<8, 1>(b, m16n8k8_tf32_b, tf32_element, B);
  detail::lane_d_float(A, B, c, lane, d);
}
inline void mma_m16n8k8_tf32tf32f32(const uint32_t a[32][4], const uint32_t b[32][2],
                                    const float c[32][4], float d[32][4]) {
  detail::mma_warp(mma_m16n8k8_tf32tf32f32_lane, a, b, c, d);
}
#endif  // !__CUDA_ARCH__

}  // namespace ref

// ---------------------------------------------------------------------------------------------
// The instructions. Per-thread calls; every lane of the warp must call the same function at the
// same program point (mma.sync is .aligned). d may be the same array as c.
// Declared only where they have a body: nvcc, or g++ with the emulated runtime (SVDQ_EMU).
// ---------------------------------------------------------------------------------------------
#if defined(__CUDACC__) || SVDQ_ARCH_HOST

#if SVDQ_ARCH_HOST
namespace detail {
template <class C>
struct MmaOperands {
  uint32_t a[4];
  uint32_t b[2];
  C c[4];
};
// The rendezvous of one mma.sync: every lane of the full warp contributes its fragments; the
// calling lane gets every lane's A and B, and its own C back.
template <class C>
inline void mma_gather(const char* what, const uint32_t (&a)[4], const uint32_t (&b)[2],
                       const C (&c)[4], uint32_t A[32][4], uint32_t B[32][2], C (&own_c)[4]) {
  MmaOperands<C> mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  std::memcpy(mine.c, c, sizeof mine.c);
  MmaOperands<C> all[32];
  emu::warp_gather(what, 0xFFFFFFFFu, &mine, all, sizeof(MmaOperands<C>));
  for (int l = 0; l < 32; ++l) {
    std::memcpy(A[l], all[l].a, sizeof all[l].a);
    std::memcpy(B[l], all[l].b, sizeof all[l].b);
  }
  std::memcpy(own_c, mine.c, sizeof mine.c);
}
}  // namespace detail
#endif

/// D = A*B + C, A 16x64 .s4 (row), B 64x8 .s4 (col), C/D 16x8 .s32, wrapping on overflow.
/// a: 4 x u32 (8 nibbles each), b: 2 x u32, c/d: 4 x s32 (fragments: ref::m16n8k64_a/_b, m16n8_c).
/// sm_80+ (on sm_90 the hardware emulates it: correct, slow).
SVDQ_DEV void mma_m16n8k64_s4s4s32(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                   const int32_t (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  int32_t own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32", a, b, c, A, B, own_c);
  ref::mma_m16n8k64_s4s4s32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // volatile: a warp-synchronous instruction must stay at its program point (not be moved into
  // divergent code or merged), as CUTLASS does for every mma.
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 (needs sm_80)");
#endif
}

/// D = A*B + C, A 16x32 .s8 (row), B 32x8 .s8 (col), C/D 16x8 .s32, wrapping on overflow.
/// a: 4 x u32 (4 s8 bytes each), b: 2 x u32, c/d: 4 x s32 (the 8-bit maps ref::m16n8k32_a/_b).
/// sm_80+; native on sm_90 (IMMA.16832.S8.S8), unlike the .s4 and .e4m3 forms there.
SVDQ_DEV void mma_m16n8k32_s8s8s32(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                   const int32_t (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  int32_t own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32", a, b, c, A, B, own_c);
  ref::mma_m16n8k32_s8s8s32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // volatile: keep the warp-synchronous instruction at its program point (see above).
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (needs sm_80)");
#endif
}

/// D = A*B + C, A 16x64 .u4 (row, unsigned nibbles 0..15), B 64x8 .s4 (col), C/D 16x8 .s32,
/// wrapping. The integer mma takes .atype and .btype independently from {.u4, .s4} (PTX ISA,
/// "Multiply-and-Accumulate Instruction: mma", Syntax, integer type: ".atype = {.u4, .s4};
/// .btype = {.u4, .s4};" for .m8n8k32/.m16n8k32/.m16n8k64). The fragments are the .s4 ones.
/// The unsigned int4 activations (act_unsigned layers) times signed int4 weights. sm_80+.
SVDQ_DEV void mma_m16n8k64_u4s4s32(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                   const int32_t (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  int32_t own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32", a, b, c, A, B, own_c);
  ref::mma_m16n8k64_u4s4s32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32 (needs sm_80)");
#endif
}

/// D = A*B + C, A 16x32 .u8 (row), B 32x8 .s8 (col), C/D 16x8 .s32, wrapping (".atype = {.u8,
/// .s8}; .btype = {.u8, .s8}" for .m8n8k16/.m16n8k16/.m16n8k32, same section). The 8-bit maps.
/// Hopper's route for unsigned int4 activations: u4x8_to_u8x8 (convert.cuh) then this. sm_80+.
SVDQ_DEV void mma_m16n8k32_u8s8s32(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                   const int32_t (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  int32_t own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32", a, b, c, A, B, own_c);
  ref::mma_m16n8k32_u8s8s32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 (needs sm_80)");
#endif
}

/// D = A*B + C, A 16x32 .e4m3 (row), B 32x8 .e4m3 (col), C/D 16x8 .f32.
/// a: 4 x u32 (4 e4m3 bytes each), b: 2 x u32, c/d: 4 x f32 (ref::m16n8k32_a/_b, m16n8_c).
/// sm_89+; compiled for an older arch it traps naming the arch.
SVDQ_DEV void mma_m16n8k32_e4m3e4m3f32(float (&d)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2], const float (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  float own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32", a, b, c, A, B, own_c);
  ref::mma_m16n8k32_e4m3e4m3f32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  // volatile: keep the warp-synchronous instruction at its program point (see above).
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 (needs sm_89)");
#endif
}

/// D = A*B + C, A 16x16 .bf16 (row), B 16x8 .bf16 (col), C/D 16x8 .f32.
/// a: 4 x bf16x2, b: 2 x bf16x2 (low half = lower-numbered element), c/d: 4 x f32. sm_80+.
SVDQ_DEV void mma_m16n8k16_bf16bf16f32(float (&d)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2], const float (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  float own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", a, b, c, A, B, own_c);
  ref::mma_m16n8k16_bf16bf16f32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // volatile: keep the warp-synchronous instruction at its program point (see above).
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (needs sm_80)");
#endif
}

/// D = A*B + C, A 16x16 .f16 (row), B 16x8 .f16 (col), C/D 16x8 .f32.
/// a: 4 x f16x2, b: 2 x f16x2, c/d: 4 x f32. sm_80+.
SVDQ_DEV void mma_m16n8k16_f16f16f32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                     const float (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  float own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", a, b, c, A, B, own_c);
  ref::mma_m16n8k16_f16f16f32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // volatile: keep the warp-synchronous instruction at its program point (see above).
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (needs sm_80)");
#endif
}

/// D = A*B + C, A 16x8 .tf32 (row), B 8x8 .tf32 (col), C/D 16x8 .f32.
/// a: 4 x tf32 (one element each, fp32 bit patterns, e.g. float_to_tf32_rna), b: 2 x tf32,
/// c/d: 4 x f32 (ref::m16n8k8_tf32_a/_b, m16n8_c). sm_80+.
SVDQ_DEV void mma_m16n8k8_tf32tf32f32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                      const float (&c)[4]) {
#if SVDQ_ARCH_HOST
  uint32_t A[32][4], B[32][2];
  float own_c[4];
  detail::mma_gather("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", a, b, c, A, B, own_c);
  ref::mma_m16n8k8_tf32tf32f32_lane(A, B, own_c, emu::lane_id(), d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // volatile: keep the warp-synchronous instruction at its program point (see above).
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (needs sm_80)");
#endif
}

#endif  // __CUDACC__ || SVDQ_ARCH_HOST

}  // namespace svdq::arch
