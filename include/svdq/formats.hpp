// svdq/formats.hpp — the 4-bit formats, bit for bit (docs/formats.md states the same).
//
//   format  element                               group (along K)  group scale           tensor scale
//   int4    two's complement nibble, range [-7,7]  64               fp16 (W) / fp32 (act)  -
//   nvfp4   E2M1: sign bit 3, |v| in               16               E4M3 (finite, 448)     fp32
//           {0, .5, 1, 1.5, 2, 3, 4, 6}
//
// Packing: two elements per byte along K, element k even in the LOW nibble. A packed matrix of N
// rows and K columns is uint8[N][K/2] row-major; its group scales are [N][K/group] row-major.
//
// All rounding here is round-to-nearest, ties-to-even, in IEEE fp32 (no fast-math anywhere).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

/// The 4-bit weight/activation formats.
enum class Format : uint8_t {
  kInt4 = 0,   ///< signed int4 in [-7, 7], group 64, fp16 weight scales, fp32 activation scales
  kNvfp4 = 1,  ///< E2M1, group 16, E4M3 group scales, fp32 tensor scale
};

/// Elements per group along K: 64 for int4, 16 for nvfp4.
constexpr int group_size(Format f) noexcept { return f == Format::kInt4 ? 64 : 16; }
/// "int4" or "nvfp4".
const char* format_name(Format f) noexcept;
/// Parses "int4" / "nvfp4" (case-sensitive); anything else is kErrorInvalidArgument.
Result<Format> parse_format(std::string_view name);

// ---------------------------------------------------------------------------------------------
// Element codecs. A "code" is the 4-bit (or 8-bit for E4M3) pattern in the low bits of a uint8_t.

/// E2M1 round-to-nearest-even with saturation to +-6. NaN -> 0x7 (+6), +-Inf -> +-6, as the CUDA
/// toolkit's cvt.rn.satfinite.e2m1x2.f32. Negative values that round to zero keep the sign (0x8).
uint8_t encode_e2m1(float x) noexcept;
/// Exact value of a 4-bit E2M1 code (only the low 4 bits are read).
float decode_e2m1(uint8_t code) noexcept;

/// E4M3 (the "fn" variant: bias 7, no Inf, NaN = S.1111.111) round-to-nearest-even, saturating
/// finite values and +-Inf to +-448. NaN -> 0x7F.
uint8_t encode_e4m3(float x) noexcept;
/// Exact value of an E4M3 byte; 0x7F and 0xFF are NaN.
float decode_e4m3(uint8_t code) noexcept;

/// INT4: clamp(rint(x), -7, 7) as a two's complement nibble (e.g. -7 -> 0x9). NaN -> 0.
uint8_t encode_int4(float x) noexcept;
/// Value of a two's complement nibble, in [-8, 7] (only the low 4 bits are read).
int decode_int4(uint8_t code) noexcept;
/// Unsigned INT4 (activations of QuantizedLinear::act_unsigned layers): clamp(rint(x), 0, 15) as
/// a nibble whose value is the nibble itself (no sign). NaN -> 0.
uint8_t encode_uint4(float x) noexcept;

/// Value of a nibble in the given format (int4 as an integer-valued float).
inline float decode_code(Format f, uint8_t code) noexcept {
  return f == Format::kInt4 ? static_cast<float>(decode_int4(code)) : decode_e2m1(code);
}

/// Packs n nibble codes (n even) into n/2 bytes: codes[2i] -> low nibble of out[i].
void pack_nibbles(const uint8_t* codes, int64_t n, uint8_t* out) noexcept;
/// Unpacks n/2 bytes into n codes, the inverse of pack_nibbles.
void unpack_nibbles(const uint8_t* packed, int64_t n, uint8_t* codes) noexcept;
/// Code of element k of a packed row.
inline uint8_t packed_nibble(const uint8_t* packed_row, int64_t k) noexcept {
  const uint8_t b = packed_row[k >> 1];
  return (k & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 0xF);
}

// ---------------------------------------------------------------------------------------------
// The activation-quantization contract (docs/formats.md §6). Per token row, per group, in IEEE fp32:
//
//   xh_k  = float(x_k) * inv_s_k            (inv_s_k = 1.0f / s_k, computed once at load)
//   a     = max_k |xh_k|                     over the group
//   int4:  scale = a / 7.0f ; inv = 7.0f / a ; q_k = clamp(rint(xh_k * inv), -7, 7)
//   nvfp4: d = float(E4M3_rn_sat(a / 6.0f / t_act)) * t_act ; inv = 1.0f / d ; q_k = E2M1_rn(xh_k*inv)
//          (the stored scale is the E4M3 byte)
//   a == 0, d == 0, or inv not finite (a or d below ~1/FLT_MAX): scale = 0, every q = 0.
//   any element of the group not finite (checked element-wise, not through max, which may drop
//   NaN): scale = NaN, every q = 0 — the NaN then reaches the output row. The NaN's bits are
//   fixed for byte-equality: int4 0x7FC00000 (the canonical quiet NaN), nvfp4 the E4M3 byte 0x7F.
//
// GPU kernels must produce the same codes and scales byte for byte.

/// Quantized activations in the canonical layout.
struct QuantizedActivations {
  Format format = Format::kInt4;
  int64_t rows = 0;        ///< M tokens
  int64_t cols = 0;        ///< K channels
  float tensor_scale = 1;  ///< t_act (nvfp4 only; 1 for int4)
  /// int4 only: the codes are unsigned (value = nibble, 0..15; quantize_activations_unsigned).
  bool unsigned_codes = false;
  std::vector<uint8_t> codes;  ///< uint8[M][K/2], packed nibbles
  /// int4: float[M][K/64] stored as little-endian fp32 bytes; nvfp4: E4M3 bytes [M][K/16].
  std::vector<uint8_t> scales;

  int64_t groups_per_row() const noexcept { return cols / group_size(format); }
  /// Group scale (m, g) as a float (int4: the fp32; nvfp4: the decoded E4M3, without t_act).
  float scale(int64_t m, int64_t g) const noexcept;
  /// Decoded value of code (m, k) (int4 integer or E2M1 value).
  float code_value(int64_t m, int64_t k) const noexcept {
    const uint8_t c = packed_nibble(codes.data() + m * (cols / 2), k);
    return unsigned_codes ? static_cast<float>(c) : decode_code(format, c);
  }
};

// Block-Hadamard rotation of the 4-bit path (docs/formats.md, "Block-Hadamard rotation"). With
// Rotation::kBlockHadamard each group of xh is rotated in place right after smoothing and before
// the group's absmax:
//
//   for h = 1, 2, 4, ..., G/2 (log2 G stages, in this order):
//     for every i in [0, G) with (i & h) == 0:  a = v[i]; b = v[i + h]; v[i] = a + b; v[i + h] = a - b
//   v[i] = v[i] * c for every i, c = 1/sqrt(G) = 0.125f (int4, G = 64) or 0.25f (nvfp4, G = 16)
//
// every add, subtract and multiply one IEEE fp32 operation (c is a power of two: the multiply is
// exact unless the result is subnormal). This is v <- v H_G with H_G the normalised Sylvester
// Walsh-Hadamard matrix, H_G[i][j] = (-1)^popcount(i & j) / sqrt(G): symmetric and orthogonal,
// so H_G^-1 = H_G. The stored weight residual is rotated the same way (R H per group), so
// Q(xh H) Q(R H)^T ~ xh R^T; the low-rank branch still reads the raw, unrotated x.

/// Rotation of the 4-bit path of a layer.
enum class Rotation : uint8_t {
  kNone = 0,           ///< no rotation (every layer before rotation existed)
  kBlockHadamard = 1,  ///< normalised Walsh-Hadamard inside each quantization group
};
/// "none" or "block-hadamard".
const char* rotation_name(Rotation r) noexcept;
/// The contract's butterfly above on n floats in place; n must be a power of 4 (16 and 64 are
/// the group sizes), else v is left unchanged.
void hadamard_transform(float* v, int n) noexcept;

/// Quantizes x (M x K, fp32/fp16/bf16) by the contract above. inv_smooth: K floats (1/s_k), or
/// null for no smoothing. tensor_scale: t_act for nvfp4 (must be finite and > 0; ignored for int4).
/// Errors: null out or x.data, K not a multiple of the group, ld < cols, bad tensor_scale.
/// rotation: kBlockHadamard rotates each smoothed group (above) before quantizing it; the codes
/// and scales are then those of the rotated values.
Status quantize_activations(Format format, ConstMatrixRef x, const float* inv_smooth,
                            float tensor_scale, QuantizedActivations* out,
                            Rotation rotation = Rotation::kNone);

/// The unsigned int4 variant (QuantizedLinear::act_unsigned, docs/formats.md "Variants"): per
/// token row, per group of 64, in IEEE fp32:
///   u_k   = float(x_k) + shift                 (one rounding; then)
///   xh_k  = u_k * inv_s_k                      (inv_s null: xh_k = u_k)
///   a     = max_k |xh_k| ; scale = a / 15.0f ; inv = 15.0f / a ; q_k = clamp(rint(xh_k * inv), 0, 15)
///   a == 0 or inv not finite: scale = 0, every q = 0; any element of the group not finite
///   (x_k, u_k or xh_k): scale = NaN (0x7FC00000), every q = 0.
/// out->format = kInt4, out->unsigned_codes = true, scales fp32 as for int4.
/// Errors: as quantize_activations, and a non-finite shift.
Status quantize_activations_unsigned(ConstMatrixRef x, const float* inv_smooth, float shift,
                                     QuantizedActivations* out);

}  // namespace svdq
