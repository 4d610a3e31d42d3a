// svdq/types.hpp — element types and non-owning matrix views.
//
// 16-bit storage types (half_t = IEEE binary16, bfloat16_t = bfloat16) hold raw bits and convert
// exactly: to float without loss, from float with round-to-nearest-even (NaN stays NaN, overflow
// goes to Inf as in IEEE). They are layout-compatible with CUDA's __half / __nv_bfloat16.
//
// Views are (pointer, rows, cols, leading dimension), row-major: element (i, j) lives at
// data[i * ld + j], ld >= cols. A view never owns memory. Every entry point checks a view before
// touching it: ((rows - 1) * ld + cols) * element size must be computable in int64 (checked
// multiply and add) and at most kMaxViewBytes, else kErrorShape naming the argument.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace svdq {

/// Round a float to the nearest binary16 (ties to even); returns the 16 bits.
constexpr uint16_t float_to_half_bits(float f) noexcept {
  uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t out = 0;
  if (u >= (127u + 16u) << 23) {  // |f| >= 2^16 (or Inf/NaN): Inf, or a quiet NaN
    out = (u > 0x7f800000u) ? (0x7e00u | ((u >> 13) & 0x3ffu)) : 0x7c00u;
  } else if (u < (113u << 23)) {  // |f| < 2^-14: binary16 subnormal or zero
    // Adding 0.5 aligns the 10 subnormal mantissa bits at the bottom of the float; the FP add
    // itself rounds to nearest even, which is the rounding we want.
    constexpr uint32_t kMagic = 126u << 23;  // 0.5f
    const float tmp = std::bit_cast<float>(u) + std::bit_cast<float>(kMagic);
    out = std::bit_cast<uint32_t>(tmp) - kMagic;
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd;  // rebias, round half even
    out = u >> 13;  // a carry into the exponent (up to Inf) is the correct rounding
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

/// Exact binary16 -> float.
constexpr float half_bits_to_float(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    // subnormal (or zero): mant * 2^-24, exact in float
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -mag : mag;
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

/// Round a float to the nearest bfloat16 (ties to even); NaN stays a quiet NaN.
constexpr uint16_t float_to_bf16_bits(float f) noexcept {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

/// Exact bfloat16 -> float.
constexpr float bf16_bits_to_float(uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

/// IEEE binary16 storage (bits only; arithmetic goes through float).
struct half_t {
  uint16_t bits = 0;
  static constexpr half_t from_bits(uint16_t b) noexcept { return half_t{b}; }
  static constexpr half_t from_float(float f) noexcept { return half_t{float_to_half_bits(f)}; }
  constexpr float to_float() const noexcept { return half_bits_to_float(bits); }
  explicit constexpr operator float() const noexcept { return to_float(); }
};

/// bfloat16 storage (bits only; arithmetic goes through float).
struct bfloat16_t {
  uint16_t bits = 0;
  static constexpr bfloat16_t from_bits(uint16_t b) noexcept { return bfloat16_t{b}; }
  static constexpr bfloat16_t from_float(float f) noexcept { return bfloat16_t{float_to_bf16_bits(f)}; }
  constexpr float to_float() const noexcept { return bf16_bits_to_float(bits); }
  explicit constexpr operator float() const noexcept { return to_float(); }
};

static_assert(sizeof(half_t) == 2 && sizeof(bfloat16_t) == 2);

/// Largest byte extent of one view, 2^47 (128 TiB): more than the user address space of x86-64
/// and AArch64 with 48-bit virtual addresses, so no real buffer is refused, and small enough that
/// every product of a checked view's extents fits in int64.
inline constexpr int64_t kMaxViewBytes = int64_t{1} << 47;

/// Element type of a floating-point operand.
/// kF64 is accepted only where a function says so (metrics, reference math).
enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

/// "f32", "f16", "bf16", "f64".
const char* dtype_name(DType dtype) noexcept;
/// Bytes per element: 8, 4 or 2.
constexpr std::size_t dtype_size(DType dtype) noexcept {
  return dtype == DType::kF64 ? 8 : dtype == DType::kF32 ? 4 : 2;
}

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> { static constexpr DType value = DType::kF32; };
template <>
struct DTypeOf<double> { static constexpr DType value = DType::kF64; };
template <>
struct DTypeOf<half_t> { static constexpr DType value = DType::kF16; };
template <>
struct DTypeOf<bfloat16_t> { static constexpr DType value = DType::kBF16; };

/// Round a float to a 16-bit storage dtype's bits (kF16 or kBF16).
constexpr uint16_t float_to_bits16(float f, DType dtype) noexcept {
  return dtype == DType::kF16 ? float_to_half_bits(f) : float_to_bf16_bits(f);
}
/// Exact 16-bit bits of a storage dtype (kF16 or kBF16) -> float.
constexpr float bits16_to_float(uint16_t b, DType dtype) noexcept {
  return dtype == DType::kF16 ? half_bits_to_float(b) : bf16_bits_to_float(b);
}

/// Typed row-major view: element (i, j) at data[i * ld + j]. T may be const-qualified.
template <typename T>
struct MatrixView {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;  ///< elements between consecutive rows (>= cols)

  constexpr MatrixView() = default;
  constexpr MatrixView(T* d, int64_t r, int64_t c, int64_t l) : data(d), rows(r), cols(c), ld(l) {}
  constexpr MatrixView(T* d, int64_t r, int64_t c) : data(d), rows(r), cols(c), ld(c) {}
  /// A view of non-const T converts to a view of const T.
  template <typename U>
  constexpr MatrixView(const MatrixView<U>& o)  // NOLINT: implicit like T* -> const T*
      : data(o.data), rows(o.rows), cols(o.cols), ld(o.ld) {}

  constexpr T& operator()(int64_t i, int64_t j) const { return data[i * ld + j]; }
  constexpr T* row(int64_t i) const { return data + i * ld; }
};

/// Type-erased read-only view (the dtype travels with it). Public entry points take these, so
/// one function serves fp32, fp16 and bf16 operands. A vector of n elements is a 1 x n view.
struct ConstMatrixRef {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;

  constexpr ConstMatrixRef() = default;
  constexpr ConstMatrixRef(const void* d, DType t, int64_t r, int64_t c, int64_t l)
      : data(d), dtype(t), rows(r), cols(c), ld(l) {}
  template <typename T>
  constexpr ConstMatrixRef(const MatrixView<T>& v)  // NOLINT: implicit by design
      : data(v.data), dtype(DTypeOf<std::remove_const_t<T>>::value), rows(v.rows), cols(v.cols),
        ld(v.ld) {}

  bool empty() const noexcept { return rows == 0 || cols == 0; }
  /// Element (i, j) converted exactly to double.
  double at(int64_t i, int64_t j) const noexcept;
};

/// Type-erased writable view.
struct MatrixRef {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;

  constexpr MatrixRef() = default;
  constexpr MatrixRef(void* d, DType t, int64_t r, int64_t c, int64_t l)
      : data(d), dtype(t), rows(r), cols(c), ld(l) {}
  template <typename T>
  constexpr MatrixRef(const MatrixView<T>& v)  // NOLINT: implicit by design
      : data(v.data), dtype(DTypeOf<T>::value), rows(v.rows), cols(v.cols), ld(v.ld) {}

  operator ConstMatrixRef() const noexcept { return {data, dtype, rows, cols, ld}; }
  /// Store a float at (i, j), rounded to nearest even when the dtype is 16-bit.
  void store(int64_t i, int64_t j, float v) const noexcept;
};

/// Convenience: a 1 x n view of a contiguous vector.
template <typename T>
constexpr MatrixView<T> vector_view(T* data, int64_t n) {
  return MatrixView<T>(data, 1, n, n);
}

}  // namespace svdq
