// cuda/arch/convert.cuh — per-thread integer and 4-bit conversions the kernels use: dp4a, byte
// permutes, int4 nibbles -> s8 / e4m3, E2M1 (x E4M3 scale) -> bf16 / f16, fp32 -> bf16 / f16 with
// round-to-nearest-even, and packed x2 forms. Not warp-collective: every function is
// __host__ __device__; where a body differs between device and host the host body is bit-exact to
// the PTX ISA's definition. Where a routine is built from other arch functions (byte_perm), its one
// body runs on both sides, so the host tests exercise the device algorithm itself.
//
// Sources: PTX ISA §9.7.1.23 dp4a, §9.7.8.7 prmt, §9.7.9.21 cvt ("cvt.rn.bf16x2.f32 d, a, b: a is
// converted into the upper half of d, b into the lower half"); CUDA Math API __byte_perm (3-bit
// byte selectors); E2M1 / E4M3 bit layouts as in include/svdq/formats.hpp and docs/formats.md.
#pragma once

#include <cstdint>
#include <cstring>

#include "config.cuh"
#include "guard.cuh"

namespace svdq::arch {

namespace detail {
SVDQ_HD uint32_t float_as_u32(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
SVDQ_HD float u32_as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
}  // namespace detail

/// dp4a.s32.s32: c + sum_{i<4} a.s8[i] * b.s8[i], wrapping modulo 2^32 (PTX: 32-bit result).
SVDQ_HD int32_t dp4a(int32_t a, int32_t b, int32_t c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(a, b, c);  // dp4a.s32.s32 (sm_61+)
#else
  uint32_t acc = static_cast<uint32_t>(c);
  for (int i = 0; i < 4; ++i) {
    const int32_t x = static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i));
    const int32_t y = static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    acc += static_cast<uint32_t>(x * y);
  }
  return static_cast<int32_t>(acc);
#endif
}

/// dp4a.u32.s32: c + sum_{i<4} a.u8[i] * b.s8[i] (a's bytes zero-extended, b's sign-extended),
/// wrapping modulo 2^32 (PTX ISA §9.7.1.23 dp4a: ".atype = .btype = { .u32, .s32 }", chosen
/// independently; the result is .s32 when either is signed). The unsigned int4 activations
/// (codes 0..15, zero-extended to u8) times signed int4 weights.
SVDQ_HD int32_t dp4a_us(uint32_t a, int32_t b, int32_t c) {
#if defined(__CUDA_ARCH__)
  int32_t d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  uint32_t acc = static_cast<uint32_t>(c);
  for (int i = 0; i < 4; ++i) {
    const int32_t x = static_cast<int32_t>((a >> (8 * i)) & 0xFFu);
    const int32_t y = static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    acc += static_cast<uint32_t>(x * y);
  }
  return static_cast<int32_t>(acc);
#endif
}

/// __byte_perm(x, y, s): byte i of the result is byte ((s >> 4i) & 7) of the 8-byte value
/// {y:x} (x = bytes 0-3, y = bytes 4-7). Only the low 3 bits of each of the 4 low selector nibbles
/// are used; callers keep bit 3 of each nibble clear (prmt's sign-replicate mode is not used).
SVDQ_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);  // prmt.b32
#else
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t sel = (s >> (4 * i)) & 0x7u;
    r |= static_cast<uint32_t>((v >> (8 * sel)) & 0xFFu) << (8 * i);
  }
  return r;
#endif
}

// ---------------------------------------------------------------------------------------------
// int4 (two's complement nibbles; element e of a 32-bit word is bits [4e, 4e+4), the low nibble of
// each byte is the even element) -> s8 and e4m3.
// ---------------------------------------------------------------------------------------------

/// 8 int4 nibbles -> 8 s8 bytes: lo = elements 0-3, hi = elements 4-7 (byte e = element e), ready
/// for dp4a or the s8 mma. 6 integer ops + 2 byte permutes, the same on host and device.
SVDQ_HD void s4x8_to_s8x8(uint32_t packed, uint32_t& lo, uint32_t& hi) {
  // Even elements (0, 2, 4, 6) in bytes 0-3, odd ones (1, 3, 5, 7) likewise, as 0..15.
  const uint32_t even = packed & 0x0F0F0F0Fu, odd = (packed >> 4) & 0x0F0F0F0Fu;
  // Sign-extend 4 -> 8 bits in every byte without borrows between bytes: with t = v ^ 8 in 0..15,
  // (t + 0x78) never carries out of the byte and ^ 0x80 turns it into t - 8 = the signed value.
  const uint32_t se = ((even ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
  const uint32_t so = ((odd ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
  lo = byte_perm(se, so, 0x5140u);  // {e0, o0, e1, o1} = elements 0, 1, 2, 3
  hi = byte_perm(se, so, 0x7362u);  // {e2, o2, e3, o3} = elements 4, 5, 6, 7
}

/// 8 unsigned 4-bit codes (element e in bits [4e, 4e+4)) -> 8 u8 bytes, zero-extended: lo holds
/// elements 0-3 (byte e = element e), hi elements 4-7: the u8 operand of dp4a.u32 or the u8 mma
/// (the unsigned activations of act_unsigned layers). 2 ANDs, a shift, 2 byte permutes.
SVDQ_HD void u4x8_to_u8x8(uint32_t packed, uint32_t& lo, uint32_t& hi) {
  const uint32_t even = packed & 0x0F0F0F0Fu, odd = (packed >> 4) & 0x0F0F0F0Fu;
  lo = byte_perm(even, odd, 0x5140u);  // {e0, o0, e1, o1} = elements 0, 1, 2, 3
  hi = byte_perm(even, odd, 0x7362u);  // {e2, o2, e3, o3} = elements 4, 5, 6, 7
}

/// 4 int4 nibbles (bits 0-15 of `packed16`, element e in bits [4e, 4e+4)) -> 4 E4M3 bytes
/// (byte e = element e; bits 16-31 are ignored). Exact: every integer with |v| <= 8 has at most 4
/// significant bits and is an E4M3 value (1 = 0x38, 2 = 0x40, 3 = 0x44, ...). Two table lookups by
/// byte permute (the 16-entry table is two 8-entry halves selected by the code's low 3 bits) and a
/// per-byte select on the code's bit 3.
SVDQ_HD uint32_t s4x4_to_e4m3x4(uint32_t packed16) {
  // Table halves: codes 0-7 (values 0..7) and codes 8-15 (values -8..-1), 8 bytes each.
  constexpr uint32_t kPos0 = 0x44403800u;  // codes 3 2 1 0 : 3 = 0x44, 2 = 0x40, 1 = 0x38, 0 = 0
  constexpr uint32_t kPos1 = 0x4E4C4A48u;  // codes 7 6 5 4 : 7 = 0x4E, 6 = 0x4C, 5 = 0x4A, 4 = 0x48
  constexpr uint32_t kNeg0 = 0xCACCCED0u;  // codes 11..8: -5 = 0xCA, -6, -7, -8 = 0xD0
  constexpr uint32_t kNeg1 = 0xB8C0C4C8u;  // codes 15..12: -1 = 0xB8, -2 = 0xC0, -3, -4 = 0xC8
  const uint32_t sel = packed16 & 0x7777u;  // low 3 bits of each code select within a half
  const uint32_t pos = byte_perm(kPos0, kPos1, sel);
  const uint32_t neg = byte_perm(kNeg0, kNeg1, sel);
  // Byte mask 0xFF where the code's bit 3 is set (negative): selector 1 picks byte 1 (0xFF).
  const uint32_t neg_mask = byte_perm(0x0000FF00u, 0u, (packed16 >> 3) & 0x1111u);
  return (pos & ~neg_mask) | (neg & neg_mask);
}

/// 8 int4 nibbles -> 8 E4M3 bytes: lo = elements 0-3, hi = elements 4-7. Exact.
SVDQ_HD void s4x8_to_e4m3x8(uint32_t packed, uint32_t& lo, uint32_t& hi) {
  lo = s4x4_to_e4m3x4(packed & 0xFFFFu);
  hi = s4x4_to_e4m3x4(packed >> 16);
}

// ---------------------------------------------------------------------------------------------
// E4M3 / E2M1 -> fp32 / bf16 / f16, exact.
// ---------------------------------------------------------------------------------------------

/// Exact value of an E4M3 byte (low 8 bits of `code`); NaN for 0x7F / 0xFF. No subnormal fp32
/// intermediate (so correct under -ftz as well): normals by moving the fields into fp32 position
/// and rebiasing the exponent (7 -> 127), subnormals as mantissa * 2^-9.
SVDQ_HD float e4m3_to_float(uint32_t code) {
  const uint32_t sign = (code & 0x80u) << 24, mag = code & 0x7Fu;
  float v;
  if (mag == 0x7Fu) {
    v = detail::u32_as_float(0x7FC00000u);
  } else if (mag < 0x08u) {  // exponent field 0: subnormal, mantissa * 2^-9 (exact product)
    v = static_cast<float>(static_cast<int>(mag)) * 0.001953125f;
  } else {
    v = detail::u32_as_float((mag << 20) + (120u << 23));  // (e + 120) = e - 7 + 127
  }
  return detail::u32_as_float(detail::float_as_u32(v) | sign);
}

/// bf16 bits of an E2M1 code (low 4 bits): sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0.
/// Normals (exponent >= 1): fields moved into bf16 position, exponent rebiased (1 -> 127);
/// exponent 0: 0 or the subnormal 0.5 (= 0x3F00).
SVDQ_HD uint16_t e2m1_to_bf16(uint32_t code) {
  const uint32_t mag = code & 0x7u;
  const uint32_t bits = mag >= 2u ? (mag << 6) + 0x3F00u : mag * 0x3F00u;
  return static_cast<uint16_t>(bits | ((code & 0x8u) << 12));
}
/// f16 bits of an E2M1 code (exponent rebiased 1 -> 15; 0.5 = 0x3800).
SVDQ_HD uint16_t e2m1_to_f16(uint32_t code) {
  const uint32_t mag = code & 0x7u;
  const uint32_t bits = mag >= 2u ? (mag << 9) + 0x3800u : mag * 0x3800u;
  return static_cast<uint16_t>(bits | ((code & 0x8u) << 12));
}
/// Two E2M1 codes (bits 0-3 = element 0, bits 4-7 = element 1) as bf16x2 / f16x2 (element 0 in the
/// low half), exact: the operands of the nvfp4 group sum (one m16n8k16 = one group of 16, C = 0,
/// exact; the scales are applied in fp32 afterwards, as the contract orders it).
SVDQ_HD uint32_t e2m1x2_to_bf16x2(uint32_t codes) {
  return static_cast<uint32_t>(e2m1_to_bf16(codes)) |
         (static_cast<uint32_t>(e2m1_to_bf16(codes >> 4)) << 16);
}
SVDQ_HD uint32_t e2m1x2_to_f16x2(uint32_t codes) {
  return static_cast<uint32_t>(e2m1_to_f16(codes)) |
         (static_cast<uint32_t>(e2m1_to_f16(codes >> 4)) << 16);
}
/// Exact value of an E2M1 code as fp32.
SVDQ_HD float e2m1_to_float(uint32_t code) {
  return detail::u32_as_float(static_cast<uint32_t>(e2m1_to_bf16(code)) << 16);
}

// ---------------------------------------------------------------------------------------------
// fp32 -> bf16 / f16, round to nearest even (cvt.rn). NaN -> 0x7FFF (the canonical NaN cvt gives;
// docs/gpu.md: outputs are bit-equal for finite values only).
// ---------------------------------------------------------------------------------------------

SVDQ_HD uint16_t float_to_bf16_rn(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint16_t r;
  asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(x));  // one RN rounding, as the contract says
  return r;
#else
  const uint32_t u = detail::float_as_u32(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFFu;
  // Round to nearest even on the 16 dropped bits; a carry into the exponent is the correct result
  // (up to infinity).
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
#endif
}

SVDQ_HD uint16_t float_to_f16_rn(float x) {
#if defined(__CUDA_ARCH__)
  uint16_t r;
  asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(r) : "f"(x));  // one RN rounding
  return r;
#else
  const uint32_t u = detail::float_as_u32(x);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7FFFu;
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520: rounds to inf
  const int e = static_cast<int>(a >> 23) - 127;                       // unbiased exponent
  uint32_t mant = (a & 0x7FFFFFu) | (a >= 0x00800000u ? 0x800000u : 0u);
  // Result significand in units of the f16 ulp at this exponent: 2^(e-10) for normals (e >= -14),
  // 2^-24 for subnormals. shift = bits of the 24-bit significand below that ulp.
  const int shift = e >= -14 ? 13 : 13 + (-14 - e);
  if (shift > 24) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
  const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
  const uint32_t qr = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
  // Normals: exponent field (e + 15) above the 10-bit fraction; q includes the hidden bit, so the
  // sum carries correctly into the exponent. Subnormals: qr is the field itself.
  const uint32_t bits = e >= -14 ? (static_cast<uint32_t>(e + 14) << 10) + qr : qr;
  return static_cast<uint16_t>(sign | bits);
#endif
}

SVDQ_HD float bf16_to_float(uint16_t h) {
  return detail::u32_as_float(static_cast<uint32_t>(h) << 16);
}

SVDQ_HD float f16_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(h));  // exact widening
  return f;
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  float mag;
  if (exp == 0x1Fu)
    mag = detail::u32_as_float(man ? 0x7FC00000u | (man << 13) : 0x7F800000u);
  else if (exp == 0)
    mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24
  else
    mag = detail::u32_as_float(((exp + 112u) << 23) | (man << 13));
  return detail::u32_as_float(detail::float_as_u32(mag) | sign);
#endif
}

/// Packs two floats as bf16x2 (lo in bits 0-15, hi in 16-31), each rounded to nearest even: the
/// register layout of an mma fragment (lower-numbered element in the low half).
SVDQ_HD uint32_t pack_bf16x2_rn(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  // cvt.rn.bf16x2.f32 d, a, b puts a in the upper half: pass hi first.
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return static_cast<uint32_t>(float_to_bf16_rn(lo)) |
         (static_cast<uint32_t>(float_to_bf16_rn(hi)) << 16);
#endif
}
/// Packs two floats as f16x2 (lo in bits 0-15), each rounded to nearest even.
SVDQ_HD uint32_t pack_f16x2_rn(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  // cvt.rn.f16x2.f32 d, a, b puts a in the upper half: pass hi first.
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return static_cast<uint32_t>(float_to_f16_rn(lo)) |
         (static_cast<uint32_t>(float_to_f16_rn(hi)) << 16);
#endif
}

/// Two E2M1 codes (bits 0-3 = element 0, bits 4-7 = element 1) times an fp32 scale, as bf16x2
/// (element 0 in the low half). Exact when `scale` is an E4M3 value (e4m3_to_float): E2M1 values
/// have <= 2 significant bits and E4M3 values <= 4, so the fp32 product has <= 6 significant bits,
/// and its magnitude lies in [2^-10, 6 * 448 = 2688] (or is 0): a bf16 value (8 significant bits,
/// normal range down to 2^-126), so neither the fp32 multiply nor the bf16 rounding rounds.
/// A NaN scale gives NaN elements (0x7FFF).
SVDQ_HD uint32_t e2m1x2_scaled_to_bf16x2(uint32_t codes, float scale) {
  return pack_bf16x2_rn(e2m1_to_float(codes) * scale, e2m1_to_float(codes >> 4) * scale);
}
/// The same as f16x2. Also exact for E4M3 scales: 6 significant bits <= 11, and [2^-10, 2688] lies
/// inside f16's normal range [2^-14, 65504].
SVDQ_HD uint32_t e2m1x2_scaled_to_f16x2(uint32_t codes, float scale) {
  return pack_f16x2_rn(e2m1_to_float(codes) * scale, e2m1_to_float(codes >> 4) * scale);
}

/// fp32 -> tf32 (cvt.rna.tf32.f32, sm_80+): rounded to nearest, ties away from zero, to 10
/// fraction bits (11 significant bits, fp32's exponent range). The result is an fp32 bit pattern
/// whose low 13 bits are zero: an fp32 value, the operand format of the .tf32 mma. Infinity and NaN
/// pass through (NaN stays NaN; its payload bits are not specified here); a finite x whose rounding
/// carries past the largest exponent becomes infinity.
SVDQ_HD uint32_t float_to_tf32_rna(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));  // one RNA rounding to tf32
  return r;
#else
  const uint32_t u = detail::float_as_u32(x);
  if ((u & 0x7F800000u) == 0x7F800000u) return (u & 0x007FFFFFu) ? (u | 0x00400000u) & 0xFFFFE000u : u;
  // Half an ulp of the 10-bit fraction is bit 12: adding it then truncating rounds ties away from
  // zero in magnitude (sign-magnitude format); a carry moves correctly into the exponent.
  return (u + 0x1000u) & 0xFFFFE000u;
#endif
}

}  // namespace svdq::arch
