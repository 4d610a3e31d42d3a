#include "svdq/formats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "check.hpp"

namespace svdq {

const char* format_name(Format f) noexcept {
  switch (f) {
    case Format::kInt4: return "int4";
    case Format::kNvfp4: return "nvfp4";
  }
  return "unknown format";
}

Result<Format> parse_format(std::string_view name) {
  if (name == "int4") return Format::kInt4;
  if (name == "nvfp4") return Format::kNvfp4;
  return detail::error(StatusCode::kErrorInvalidArgument, "parse_format: format '", name,
                       "' is not one of int4, nvfp4");
}

// ---------------------------------------------------------------------------------------------
// E2M1: exponent bias 1; codes 0..7 are 0, .5, 1, 1.5, 2, 3, 4, 6. Rounding to nearest with ties
// to the even code is a comparison against the midpoints between neighbours; at a midpoint the
// even code (the lower one for .25, 1.25, 2.5, 5; the upper one for .75, 1.75, 3.5) wins.

uint8_t encode_e2m1(float x) noexcept {
  if (std::isnan(x)) return 0x7;  // as cvt.rn.satfinite: NaN -> +max
  const uint8_t sign = std::signbit(x) ? 0x8 : 0x0;
  const float a = std::fabs(x);
  uint8_t mag;
  if (a <= 0.25f) mag = 0;        // tie .25 -> 0 (even)
  else if (a < 0.75f) mag = 1;    // .5
  else if (a <= 1.25f) mag = 2;   // tie .75 -> 1 (code 2), tie 1.25 -> 1
  else if (a < 1.75f) mag = 3;    // 1.5
  else if (a <= 2.5f) mag = 4;    // tie 1.75 -> 2, tie 2.5 -> 2
  else if (a < 3.5f) mag = 5;     // 3
  else if (a <= 5.0f) mag = 6;    // tie 3.5 -> 4, tie 5 -> 4
  else mag = 7;                   // 6, saturating (Inf included)
  return static_cast<uint8_t>(sign | mag);
}

float decode_e2m1(uint8_t code) noexcept {
  static constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float m = kMag[code & 0x7];
  return (code & 0x8) ? -m : m;
}

// ---------------------------------------------------------------------------------------------
// E4M3 (fn): bias 7, 3 mantissa bits, max 448 = 0x7E, NaN = 0x7F, subnormals m * 2^-9.

uint8_t encode_e4m3(float x) noexcept {
  if (std::isnan(x)) return 0x7F;
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const float a = std::fabs(x);
  if (a >= 448.0f) return static_cast<uint8_t>(sign | 0x7E);  // satfinite (Inf included)
  if (a < 0.015625f) {
    // Subnormal range (< 2^-6): the value is n * 2^-9. a * 512 is exact (a power-of-two scale of
    // a float >= the smallest E4M3 step), and rint rounds half to even. n == 8 is the smallest
    // normal, whose code happens to be 8 as well.
    const float n = std::rint(a * 512.0f);
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(n));
  }
  const int exp = static_cast<int>((u >> 23) & 0xFFu) - 127;  // in [-6, 8]
  uint32_t mant = (u & 0x7FFFFFu) >> 20;                       // top 3 mantissa bits
  const uint32_t rest = u & 0xFFFFFu;                          // 20 bits rounded off
  int e = exp + 7;
  if (rest > 0x80000u || (rest == 0x80000u && (mant & 1u))) {
    if (++mant == 8) {
      mant = 0;
      ++e;
    }
  }
  uint32_t code = (static_cast<uint32_t>(e) << 3) | mant;
  if (code > 0x7Eu) code = 0x7Eu;  // rounding up past 448 saturates
  return static_cast<uint8_t>(sign | code);
}

float decode_e4m3(uint8_t code) noexcept {
  const int exp = (code >> 3) & 0xF;
  const int mant = code & 0x7;
  float mag;
  if (exp == 0xF && mant == 0x7) {
    mag = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    mag = std::ldexp(static_cast<float>(mant), -9);
  } else {
    mag = std::ldexp(static_cast<float>(8 + mant), exp - 10);
  }
  return (code & 0x80) ? -mag : mag;
}

// ---------------------------------------------------------------------------------------------
// INT4

uint8_t encode_int4(float x) noexcept {
  if (std::isnan(x)) return 0;
  const float r = std::clamp(std::rint(x), -7.0f, 7.0f);
  return static_cast<uint8_t>(static_cast<int>(r) & 0xF);
}

int decode_int4(uint8_t code) noexcept {
  const int v = code & 0xF;
  return v >= 8 ? v - 16 : v;
}

uint8_t encode_uint4(float x) noexcept {
  if (std::isnan(x)) return 0;
  const float r = std::rint(std::clamp(x, 0.0f, 15.0f));
  return static_cast<uint8_t>(r);
}

void pack_nibbles(const uint8_t* codes, int64_t n, uint8_t* out) noexcept {
  for (int64_t i = 0; i < n / 2; ++i)
    out[i] = static_cast<uint8_t>((codes[2 * i] & 0xF) | ((codes[2 * i + 1] & 0xF) << 4));
}

void unpack_nibbles(const uint8_t* packed, int64_t n, uint8_t* codes) noexcept {
  for (int64_t i = 0; i < n / 2; ++i) {
    codes[2 * i] = packed[i] & 0xF;
    codes[2 * i + 1] = static_cast<uint8_t>(packed[i] >> 4);
  }
}

// ---------------------------------------------------------------------------------------------
// Block-Hadamard rotation (formats.hpp): the butterfly in the contract's fixed fp32 order.

const char* rotation_name(Rotation r) noexcept {
  switch (r) {
    case Rotation::kNone: return "none";
    case Rotation::kBlockHadamard: return "block-hadamard";
  }
  return "unknown rotation";
}

void hadamard_transform(float* v, int n) noexcept {
  int log2n = 0;
  while ((1 << log2n) < n) ++log2n;
  if (n < 1 || (1 << log2n) != n || (log2n & 1) != 0) return;  // not a power of 4
  for (int h = 1; h < n; h <<= 1)
    for (int i = 0; i < n; ++i)
      if ((i & h) == 0) {
        const float a = v[i], b = v[i + h];
        v[i] = a + b;
        v[i + h] = a - b;
      }
  const float c = 1.0f / static_cast<float>(1 << (log2n / 2));  // 1/sqrt(n), a power of two
  for (int i = 0; i < n; ++i) v[i] = v[i] * c;
}

// ---------------------------------------------------------------------------------------------
// The activation-quantization contract.

float QuantizedActivations::scale(int64_t m, int64_t g) const noexcept {
  const int64_t idx = m * groups_per_row() + g;
  if (format == Format::kNvfp4) return decode_e4m3(scales[idx]);
  float s;
  std::memcpy(&s, scales.data() + idx * 4, 4);
  return s;
}

namespace detail {

namespace {
// The integer activation contract for one group, with qmax 7 (signed) or 15 (unsigned): absmax,
// scale a / qmax, codes encode(x * (qmax / a)); a non-finite group gets a NaN scale, a zero group
// (or one whose inverse overflows, a < qmax / FLT_MAX) scale 0; codes 0 in both.
template <typename Encode>
void quantize_act_group_fixed(const float* xh, int gs, float qmax, Encode encode, uint8_t* codes,
                              uint8_t* scale_bytes) {
  float a = 0.0f;
  bool finite = true;
  for (int i = 0; i < gs; ++i) {
    finite &= std::isfinite(xh[i]);
    a = std::max(a, std::fabs(xh[i]));
  }
  float scale;
  if (!finite) {
    scale = std::numeric_limits<float>::quiet_NaN();
    std::fill(codes, codes + gs, uint8_t{0});
  } else if (a == 0.0f || !std::isfinite(qmax / a)) {
    scale = 0.0f;
    std::fill(codes, codes + gs, uint8_t{0});
  } else {
    scale = a / qmax;
    const float inv = qmax / a;
    for (int i = 0; i < gs; ++i) codes[i] = encode(xh[i] * inv);
  }
  std::memcpy(scale_bytes, &scale, 4);
}
}  // namespace

// One group of `gs` smoothed values -> codes (unpacked) and the stored scale bytes.
void quantize_act_group_int4(const float* xh, int gs, uint8_t* codes, uint8_t* scale_bytes) {
  quantize_act_group_fixed(xh, gs, 7.0f, [](float v) { return encode_int4(v); }, codes, scale_bytes);
}

void quantize_act_group_uint4(const float* xh, int gs, uint8_t* codes, uint8_t* scale_bytes) {
  quantize_act_group_fixed(xh, gs, 15.0f, [](float v) { return encode_uint4(v); }, codes, scale_bytes);
}

void quantize_act_group_nvfp4(const float* xh, int gs, float t_act, uint8_t* codes,
                          uint8_t* scale_byte) {
  float a = 0.0f;
  bool finite = true;
  for (int i = 0; i < gs; ++i) {
    finite &= std::isfinite(xh[i]);
    a = std::max(a, std::fabs(xh[i]));
  }
  std::fill(codes, codes + gs, uint8_t{0});
  if (!finite) {
    *scale_byte = 0x7F;  // E4M3 NaN
    return;
  }
  const uint8_t sb = encode_e4m3(a / 6.0f / t_act);
  const float d = decode_e4m3(sb) * t_act;
  const float inv = 1.0f / d;
  if (a == 0.0f || d == 0.0f || !std::isfinite(inv)) {  // a zero group (or 1/d overflows)
    *scale_byte = 0;
    return;
  }
  *scale_byte = sb;
  for (int i = 0; i < gs; ++i) codes[i] = encode_e2m1(xh[i] * inv);
}

}  // namespace detail

namespace {

Status quantize_activations_impl(Format format, ConstMatrixRef x, const float* inv_smooth,
                                 float tensor_scale, QuantizedActivations* out, Rotation rotation,
                                 bool uns = false, float shift = 0.0f) {
  const char* kFn = uns ? "quantize_activations_unsigned" : "quantize_activations";
  if (uns && !std::isfinite(shift))
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": shift (", shift,
                         ") must be finite");
  if (out == nullptr) return detail::error(StatusCode::kErrorNullPointer, kFn, ": out is null");
  if (format != Format::kInt4 && format != Format::kNvfp4)
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": format (",
                         static_cast<int>(format), ") is not int4 or nvfp4");
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "x", x));
  const int gs = group_size(format);
  if (x.cols % gs != 0)
    return detail::error(StatusCode::kErrorShape, kFn, ": x.cols (", x.cols,
                         ") must be a multiple of the ", format_name(format), " group size ", gs);
  if (rotation != Rotation::kNone && rotation != Rotation::kBlockHadamard)
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": rotation (",
                         static_cast<int>(rotation), ") is not none or block-hadamard");
  if (format == Format::kNvfp4 && !(std::isfinite(tensor_scale) && tensor_scale > 0.0f))
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": tensor_scale (",
                         tensor_scale, ") must be finite and > 0");
  const int64_t m_rows = x.rows, k = x.cols, groups = k / gs;
  const int scale_bytes = format == Format::kInt4 ? 4 : 1;
  out->format = format;
  out->rows = m_rows;
  out->cols = k;
  out->tensor_scale = format == Format::kNvfp4 ? tensor_scale : 1.0f;
  out->unsigned_codes = uns;
  out->codes.assign(static_cast<size_t>(m_rows * k / 2), 0);
  out->scales.assign(static_cast<size_t>(m_rows * groups * scale_bytes), 0);

  detail::ParallelGuard guard;
#pragma omp parallel for schedule(static) if (m_rows * k > (1 << 16))
  for (int64_t m = 0; m < m_rows; ++m) guard.run([&] {
    std::vector<float> xh(static_cast<size_t>(k));
    std::vector<uint8_t> codes(static_cast<size_t>(k));
    detail::load_row(x, m, xh.data());
    if (uns)
      for (int64_t j = 0; j < k; ++j) xh[j] = xh[j] + shift;
    if (inv_smooth != nullptr)
      for (int64_t j = 0; j < k; ++j) xh[j] = xh[j] * inv_smooth[j];
    if (rotation == Rotation::kBlockHadamard)
      for (int64_t g = 0; g < groups; ++g) hadamard_transform(xh.data() + g * gs, gs);
    uint8_t* srow = out->scales.data() + m * groups * scale_bytes;
    for (int64_t g = 0; g < groups; ++g) {
      if (uns)
        detail::quantize_act_group_uint4(xh.data() + g * gs, gs, codes.data() + g * gs, srow + g * 4);
      else if (format == Format::kInt4)
        detail::quantize_act_group_int4(xh.data() + g * gs, gs, codes.data() + g * gs, srow + g * 4);
      else
        detail::quantize_act_group_nvfp4(xh.data() + g * gs, gs, out->tensor_scale, codes.data() + g * gs,
                             srow + g);
    }
    pack_nibbles(codes.data(), k, out->codes.data() + m * (k / 2));
  });
  guard.rethrow();
  return Status::Ok();
}

}  // namespace

Status quantize_activations(Format format, ConstMatrixRef x, const float* inv_smooth,
                            float tensor_scale, QuantizedActivations* out, Rotation rotation) {
  return detail::guard_allocation<Status>("quantize_activations", [&] {
    return quantize_activations_impl(format, x, inv_smooth, tensor_scale, out, rotation);
  });
}

Status quantize_activations_unsigned(ConstMatrixRef x, const float* inv_smooth, float shift,
                                     QuantizedActivations* out) {
  return detail::guard_allocation<Status>("quantize_activations_unsigned", [&] {
    return quantize_activations_impl(Format::kInt4, x, inv_smooth, 1.0f, out, Rotation::kNone, true, shift);
  });
}

}  // namespace svdq
