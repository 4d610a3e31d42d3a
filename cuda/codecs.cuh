// cuda/codecs.cuh — the 4-bit codecs and the per-group activation contract, as __host__ __device__
// code: the kernels use it on the GPU, and tests/test_device_codecs.cpp compiles the very same
// text with g++ and checks it against the CPU reference (svdq::quantize_activations) on every
// code, tie and special group — the part of the GPU's byte-equality that can be proven without
// a GPU. Pure IEEE fp32 arithmetic, no intrinsics that differ between host and device.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "arch/config.cuh"

namespace svdq::cuda {

SVDQ_HD uint32_t float_bits(float f) {
  uint32_t u;  // memcpy: one register move on the device (nvcc), no aliasing UB on the host
  memcpy(&u, &f, 4);
  return u;
}

SVDQ_HD bool is_finite(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }

/// E2M1 round-to-nearest-even, saturating; NaN -> 0x7 (as cvt.rn.satfinite.e2m1x2.f32).
SVDQ_HD uint8_t encode_e2m1(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7;
  const uint8_t sign = (u >> 31) ? 0x8 : 0x0;
  const float a = fabsf(x);
  uint8_t mag;
  if (a <= 0.25f) mag = 0;
  else if (a < 0.75f) mag = 1;
  else if (a <= 1.25f) mag = 2;
  else if (a < 1.75f) mag = 3;
  else if (a <= 2.5f) mag = 4;
  else if (a < 3.5f) mag = 5;
  else if (a <= 5.0f) mag = 6;
  else mag = 7;
  return static_cast<uint8_t>(sign | mag);
}

/// 2 x the E2M1 value of a code, as an integer in [-12, 12] (exact: E2M1 values are halves).
SVDQ_HD int e2m1_twice(uint8_t code) {
  const int mag[8] = {0, 1, 2, 3, 4, 6, 8, 12};
  const int m = mag[code & 0x7];
  return (code & 0x8) ? -m : m;
}

/// E4M3 (fn) round-to-nearest-even, satfinite (|x| >= 448 and Inf -> +-448), NaN -> 0x7F.
SVDQ_HD uint8_t encode_e4m3(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7F;
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const float a = fabsf(x);
  if (a >= 448.0f) return static_cast<uint8_t>(sign | 0x7E);
  if (a < 0.015625f) return static_cast<uint8_t>(sign | static_cast<uint8_t>(rintf(a * 512.0f)));
  const int e = static_cast<int>((u >> 23) & 0xFFu) - 127 + 7;
  uint32_t mant = (u & 0x7FFFFFu) >> 20;
  const uint32_t rest = u & 0xFFFFFu;
  int ee = e;
  if (rest > 0x80000u || (rest == 0x80000u && (mant & 1u))) {
    if (++mant == 8) {
      mant = 0;
      ++ee;
    }
  }
  uint32_t code = (static_cast<uint32_t>(ee) << 3) | mant;
  if (code > 0x7Eu) code = 0x7Eu;
  return static_cast<uint8_t>(sign | code);
}

/// Exact value of an E4M3 byte (NaN for 0x7F / 0xFF).
SVDQ_HD float decode_e4m3(uint8_t code) {
  const int exp = (code >> 3) & 0xF, mant = code & 0x7;
  float mag;
  if (exp == 0xF && mant == 0x7) mag = NAN;
  else if (exp == 0) mag = static_cast<float>(mant) * 0.001953125f;  // 2^-9
  else mag = ldexpf(static_cast<float>(8 + mant), exp - 10);
  return (code & 0x80) ? -mag : mag;
}

/// INT4: clamp(rint(x), -7, 7) as a two's complement nibble; NaN -> 0.
SVDQ_HD uint8_t encode_int4(float x) {
  if (x != x) return 0;
  float r = rintf(x);
  r = r < -7.0f ? -7.0f : (r > 7.0f ? 7.0f : r);
  return static_cast<uint8_t>(static_cast<int>(r) & 0xF);
}

/// Unsigned INT4 (act_unsigned activations): clamp(x, 0, 15) rounded to nearest even; NaN -> 0
/// (as svdq::encode_uint4).
SVDQ_HD uint8_t encode_uint4(float x) {
  if (x != x) return 0;
  const float c = x < 0.0f ? 0.0f : (x > 15.0f ? 15.0f : x);
  return static_cast<uint8_t>(rintf(c));
}

/// Sign-extended value of an int4 nibble.
SVDQ_HD int int4_value(uint8_t code) {
  const int v = code & 0xF;
  return v >= 8 ? v - 16 : v;
}

/// The contract for one group of `gs` smoothed values xh (docs/formats.md §6, svdq/formats.hpp):
/// writes gs unpacked codes and the scale bytes (int4: 4, fp32 LE; nvfp4: 1, E4M3). `a` and the
/// finiteness flag are passed in, so a kernel can reduce them across threads first.
/// kind 0 = int4, 1 = nvfp4, 2 = unsigned int4 (act_unsigned: qmax 15, codes 0..15, fp32 scale;
/// the caller has added the shift before smoothing, docs/formats.md §6.1).
SVDQ_HD void quantize_group(int kind, const float* xh, int gs, float a, bool finite, float t_act,
                            uint8_t* codes, uint8_t* scale_bytes) {
  for (int i = 0; i < gs; ++i) codes[i] = 0;
  if (kind != 1) {
    const float qmax = kind == 2 ? 15.0f : 7.0f;
    float scale;
    if (!finite) {
      const uint32_t qnan = 0x7FC00000u;
      memcpy(scale_bytes, &qnan, 4);
      return;
    }
    const float inv = qmax / a;
    if (a == 0.0f || !is_finite(inv)) {
      scale = 0.0f;
    } else {
      scale = a / qmax;
      for (int i = 0; i < gs; ++i) codes[i] = kind == 2 ? encode_uint4(xh[i] * inv) : encode_int4(xh[i] * inv);
    }
    memcpy(scale_bytes, &scale, 4);
    return;
  }
  if (!finite) {
    scale_bytes[0] = 0x7F;
    return;
  }
  const uint8_t sb = encode_e4m3(a / 6.0f / t_act);
  const float d = decode_e4m3(sb) * t_act;
  const float inv = 1.0f / d;
  if (a == 0.0f || d == 0.0f || !is_finite(inv)) {
    scale_bytes[0] = 0;
    return;
  }
  scale_bytes[0] = sb;
  for (int i = 0; i < gs; ++i) codes[i] = encode_e2m1(xh[i] * inv);
}

// ---- The activations' layout in the workspace (kernel 1 writes it, kernel 2 reads it) -----------
// kActCanonical: codes (M, K/2) row-major, scales (M, G) row-major (fp32 int4 / E4M3 nvfp4), the
// CPU reference's layout; the dp4a kernel reads it. kActFragment: the mma kernel's A-fragment
// order (gemm_w4a4_mma.cuh), chosen by cuda/dispatch.hpp (act_layout_for). Rows are taken in tiles
// of 16 (one mma M tile); every full tile (16 t .. 16 t + 15, all < M) is permuted inside its own
// 16 K/2 code bytes and 16 G scales, and the rows of a last partial tile (M % 16 of them) keep
// their canonical place, so the buffers have the canonical sizes and offsets. Inside a full tile,
// row 16 t + gid + 8 rh (gid 0..7, rh 0..1), for lane = 4 gid + tig of the consuming warp:
//   int4 codes: [g][lane 32][rh 2][h 2][4 B]: word 2 tig + h (bytes 8 tig + 4 h .. +4, channels
//     64 g + 16 tig + 8 h .. +8) of group g of the row; lane's 16 bytes are its A registers for
//     both mma paths (one 16-byte load; 512 contiguous bytes per warp and group);
//   int4 scales: [g][gid 8][rh 2] fp32 (one 8-byte load per lane: rows gid and gid + 8);
//   nvfp4 codes: [kt][lane][rh][gg Gk][2 B] with kt = g / 4, gg = g % 4, Gk = min(4, G - 4 kt)
//     groups in this k tile (4 but in a K tail): bytes 2 tig, 2 tig + 1 of group 4 kt + gg (16-byte
//     loads for whole k tiles);
//   nvfp4 scales: [kt][gid][rh][gg Gk] E4M3 (8-byte loads for whole k tiles).
// Bytes are never split (a byte is two channels 2c, 2c + 1 in both layouts). The functions below
// give the position of the canonical byte / scale (row, i): the host un-permutes with them for the
// test and debug accessor read_activations (which therefore always returns canonical bytes).
enum ActLayout : int { kActCanonical = 0, kActFragment = 1 };

/// Offset in the codes buffer (M rows, K channels; kind 0 int4 / 1 nvfp4) of the canonical code
/// byte (row, b), b in [0, K/2).
SVDQ_HD int64_t act_code_offset(int layout, int kind, int64_t m, int64_t k, int64_t row, int64_t b) {
  const int64_t row_bytes = k / 2;
  if (layout == kActCanonical || row >= m / 16 * 16) return row * row_bytes + b;
  const int64_t base = row / 16 * 16 * row_bytes;
  const int rr = static_cast<int>(row % 16), gid = rr % 8, rh = rr / 8;
  if (kind == 0) {
    const int64_t g = b / 32;
    const int bt = static_cast<int>(b % 32), w = bt / 4, tig = w / 2, h = w % 2;
    return base + g * 512 + (4 * gid + tig) * 16 + rh * 8 + h * 4 + bt % 4;
  }
  const int64_t groups = k / 16, g = b / 8, kt = g / 4;
  const int gg = static_cast<int>(g % 4), gk = static_cast<int>(groups - 4 * kt < 4 ? groups - 4 * kt : 4);
  const int bg = static_cast<int>(b % 8), tig = bg / 2;
  return base + kt * 512 + (4 * gid + tig) * 4 * gk + rh * 2 * gk + 2 * gg + bg % 2;
}

/// Offset, in scale elements (fp32 for int4, bytes for nvfp4), of the scale of (row, group g).
SVDQ_HD int64_t act_scale_offset(int layout, int kind, int64_t m, int64_t k, int64_t row, int64_t g) {
  const int64_t groups = k / (kind == 0 ? 64 : 16);
  if (layout == kActCanonical || row >= m / 16 * 16) return row * groups + g;
  const int64_t base = row / 16 * 16 * groups;
  const int rr = static_cast<int>(row % 16), gid = rr % 8, rh = rr / 8;
  if (kind == 0) return base + g * 16 + 2 * gid + rh;
  const int64_t kt = g / 4;
  const int gg = static_cast<int>(g % 4), gk = static_cast<int>(groups - 4 * kt < 4 ? groups - 4 * kt : 4);
  return base + kt * 64 + gid * 2 * gk + rh * gk + gg;
}

}  // namespace svdq::cuda
