// The offline pipeline: smoothing -> truncated SVD -> residual quantization.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <bit>
#include <cstring>

#include "check.hpp"
#include "core.hpp"

namespace svdq {

namespace detail {

MatrixRM to_eigen(ConstMatrixRef v) {
  MatrixRM out(v.rows, v.cols);
  for (int64_t i = 0; i < v.rows; ++i) load_row(v, i, out.row(i).data());
  return out;
}

std::vector<float> column_absmax(const MatrixRM& w) {
  std::vector<float> amax(static_cast<size_t>(w.cols()), 0.0f);
  for (int64_t i = 0; i < w.rows(); ++i)
    for (int64_t j = 0; j < w.cols(); ++j) amax[j] = std::max(amax[j], std::fabs(w(i, j)));
  return amax;
}

uint16_t double_to_bits16(double v, DType storage) {
  // Round to float with round-to-odd (sticky last bit), then to nearest even in 16 bits: with
  // float's 13+ extra bits this is the correctly rounded double -> 16-bit conversion.
  float f = static_cast<float>(v);
  if (std::isfinite(f) && static_cast<double>(f) != v) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 1u) == 0) {
      const float toward = std::nextafter(f, static_cast<float>(v > static_cast<double>(f) ? INFINITY : -INFINITY));
      f = std::isfinite(toward) ? toward : f;
    }
  }
  return float_to_bits16(f, storage);
}

std::vector<uint16_t> smoothing_factors(const float* amax_x, const float* amax_w, int64_t k,
                                        float alpha, float beta, DType storage) {
  const uint16_t one = float_to_bits16(1.0f, storage);
  std::vector<uint16_t> s(static_cast<size_t>(k), one);
  if (alpha == 0.0f && beta == 0.0f) return s;
  for (int64_t j = 0; j < k; ++j) {
    const double num = alpha == 0.0f ? 1.0 : std::pow(static_cast<double>(amax_x[j]), alpha);
    const double den = beta == 0.0f ? 1.0 : std::pow(static_cast<double>(amax_w[j]), beta);
    const uint16_t bits = double_to_bits16(num / den, storage);
    const float stored = bits16_to_float(bits, storage);
    // validate()'s rule: finite, > 0 and 1/s finite (a bf16 subnormal s has 1/s = Inf).
    s[j] = (std::isfinite(stored) && stored > 0.0f && std::isfinite(1.0f / stored)) ? bits : one;
  }
  return s;
}

float stored_scale_value(Format f, const uint8_t* bytes, float t) {
  if (f == Format::kInt4) {
    uint16_t b;
    std::memcpy(&b, bytes, 2);
    return half_bits_to_float(b);
  }
  return decode_e4m3(bytes[0]) * t;
}

float group_scale(Format f, float amax, float t, uint8_t* bytes) {
  if (f == Format::kInt4) {
    const uint16_t sb = float_to_half_bits(amax / 7.0f);
    std::memcpy(bytes, &sb, 2);
  } else {
    bytes[0] = encode_e4m3(amax / 6.0f / t);
  }
  return stored_scale_value(f, bytes, t);
}

namespace {
// clamp(rint(v), -7, 7) as a float, exactly encode_int4's value for a finite or infinite v (the
// clipping search's inner loop, without the two calls per element): after the clamp to [-8, 8]
// adding and subtracting 1.5 * 2^23 rounds to the nearest integer, ties to even, as rint does.
inline float int4_value(float v) {
  v = std::clamp(v, -8.0f, 8.0f);
  v = (v + 12582912.0f) - 12582912.0f;
  return std::clamp(v, -7.0f, 7.0f);
}
}  // namespace

float quantize_group(Format f, const float* w, int gs, float t, bool clip_search, const double* h,
                     uint8_t* codes, uint8_t* scale_bytes) {
  float amax = 0.0f;
  for (int e = 0; e < gs; ++e) amax = std::max(amax, std::fabs(w[e]));
  float scale = group_scale(f, amax, t, scale_bytes);
  for (int e = 0; e < gs; ++e) codes[e] = encode_with(f, w[e], scale);
  if (!clip_search || scale == 0.0f) return scale;

  auto error_of = [&](const uint8_t* c, float sc) {
    double err = 0;
    for (int e = 0; e < gs; ++e) {
      const double d = static_cast<double>(w[e]) - decode_code(f, c[e]) * static_cast<double>(sc);
      err += (h ? h[e] : 1.0) * d * d;
    }
    return err;
  };
  // int4: codes and error in one pass, the same arithmetic as encode_with + error_of.
  auto encode_int4_error = [&](float sc, uint8_t* c) {
    double err = 0;
    for (int e = 0; e < gs; ++e) {
      const float q = int4_value(w[e] / sc);
      c[e] = static_cast<uint8_t>(static_cast<int>(q) & 0xF);
      const double d = static_cast<double>(w[e]) - static_cast<double>(q) * static_cast<double>(sc);
      err += (h ? h[e] : 1.0) * d * d;
    }
    return err;
  };
  double best = error_of(codes, scale);
  uint8_t trial[64], trial_bytes[2];
  for (int step = 1; step <= 8; ++step) {  // clip ratios .95, .90, ..., .60
    const float c = 1.0f - 0.05f * static_cast<float>(step);
    const float sc = group_scale(f, amax * c, t, trial_bytes);
    if (sc == 0.0f) break;
    double err;
    if (f == Format::kInt4) {
      err = encode_int4_error(sc, trial);
    } else {
      for (int e = 0; e < gs; ++e) trial[e] = encode_with(f, w[e], sc);
      err = error_of(trial, sc);
    }
    if (err < best) {
      best = err;
      scale = sc;
      std::memcpy(codes, trial, static_cast<size_t>(gs));
      std::memcpy(scale_bytes, trial_bytes, f == Format::kInt4 ? 2 : 1);
    }
  }
  return scale;
}

float nvfp4_tensor_scale(const MatrixRM& r) {
  const float amax = r.size() > 0 ? r.cwiseAbs().maxCoeff() : 0.0f;
  // Clamped to validate()'s range: a residual below ~3e-35 would give a subnormal t.
  return amax > 0.0f ? std::max(amax / (6.0f * 448.0f), kMinTensorScale) : 1.0f;
}

Result<QuantizedWeight> quantize_weight(const MatrixRM& r, Format format) {
  return quantize_weight(r, format, format == Format::kNvfp4 ? nvfp4_tensor_scale(r) : 1.0f, {});
}

Result<QuantizedWeight> quantize_weight(const MatrixRM& r, Format format, float tensor_scale,
                                        const WeightQuantOptions& options) {
  const int64_t n = r.rows(), k = r.cols();
  const int gs = group_size(format);
  const int64_t groups = k / gs;
  const int sbytes = format == Format::kInt4 ? 2 : 1;
  if (format == Format::kInt4) {
    // Overflow check first (serially), so the parallel loop below cannot fail.
    const float amax = n * k > 0 ? r.cwiseAbs().maxCoeff() : 0.0f;
    if (!std::isfinite(half_bits_to_float(float_to_half_bits(amax / 7.0f))))
      return error(StatusCode::kErrorInvalidArgument, "quantize_linear: a weight group's absmax (",
                   amax, ") / 7 overflows the fp16 int4 group scale (max 65504)");
  }
  if (options.gptq.enabled && options.hessian != nullptr)
    return gptq_quantize(r, format, tensor_scale, options);

  QuantizedWeight out;
  out.tensor_scale = format == Format::kNvfp4 ? tensor_scale : 1.0f;
  out.packed.assign(static_cast<size_t>(n * k / 2), 0);
  out.scales.assign(static_cast<size_t>(n * groups * sbytes), 0);
  const float t = out.tensor_scale;
  const double* h = options.h_diag ? options.h_diag->data() : nullptr;

  ParallelGuard guard;  // no exception may leave the region: rethrown below, a Status upstream
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) guard.run([&] {
    std::vector<uint8_t> codes(static_cast<size_t>(k), 0);
    const float* row = r.row(i).data();
    for (int64_t g = 0; g < groups; ++g)
      quantize_group(format, row + g * gs, gs, t, options.clip_search, h ? h + g * gs : nullptr,
                     codes.data() + g * gs, out.scales.data() + (i * groups + g) * sbytes);
    pack_nibbles(codes.data(), k, out.packed.data() + i * (k / 2));
  });
  guard.rethrow();
  return out;
}

MatrixRM dequantize(const QuantizedWeight& q, Format format, int64_t rows, int64_t k) {
  const int gs = group_size(format);
  const int64_t groups = k / gs;
  const int sbytes = format == Format::kInt4 ? 2 : 1;
  MatrixRM out(rows, k);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const uint8_t* row = q.packed.data() + i * (k / 2);
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = stored_scale_value(format, q.scales.data() + (i * groups + g) * sbytes,
                                             q.tensor_scale);
      for (int e = 0; e < gs; ++e)
        out(i, g * gs + e) = decode_code(format, packed_nibble(row, g * gs + e)) * scale;
    }
  }
  return out;
}

MatrixRM dequantize_weight(const QuantizedLinear& layer) {
  const int64_t n = layer.out_features, k = layer.in_features;
  const int gs = layer.group;
  MatrixRM out(n, k);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const float q = decode_code(layer.format, packed_nibble(layer.qweight.data() + i * (k / 2), j));
      out(i, j) = q * layer.wscale(i, j / gs) * layer.wtscale;
      if (!layer.wcscales.empty()) out(i, j) *= bits16_to_float(layer.wcscales[i], layer.storage);
    }
  return out;
}

}  // namespace detail

// -------------------------------------------------------------------------------------------------

const char* recipe_name(Recipe r) noexcept {
  switch (r) {
    case Recipe::kNaive: return "naive";
    case Recipe::kSmoothOnly: return "smooth";
    case Recipe::kLowRankOnly: return "lowrank";
    case Recipe::kSvdquant: return "svdquant";
  }
  return "unknown recipe";
}

QuantConfig recipe_config(Recipe r, QuantConfig base) noexcept {
  if (r == Recipe::kNaive || r == Recipe::kLowRankOnly) base.alpha = base.beta = 0.0f;
  if (r == Recipe::kNaive || r == Recipe::kSmoothOnly) base.rank = 0;
  return base;
}

int64_t QuantizedLinear::size_bytes() const noexcept {
  return static_cast<int64_t>(2 * (smooth.size() + lora_down.size() + lora_up.size() + bias.size() +
                                   wcscales.size()) +
                              qweight.size() + wscales.size()) +
         (format == Format::kNvfp4 ? 8 : 0);  // wtscale + act_tensor_scale
}

double QuantizedLinear::bits_per_weight() const noexcept {
  const double weights = static_cast<double>(in_features) * static_cast<double>(out_features);
  return weights > 0 ? 8.0 * static_cast<double>(size_bytes()) / weights : 0.0;
}

float QuantizedLinear::wscale(int64_t n, int64_t g) const noexcept {
  const int64_t idx = n * (in_features / group) + g;
  return detail::stored_scale_value(format, wscales.data() + idx * (format == Format::kInt4 ? 2 : 1),
                                    1.0f);
}

std::vector<float> QuantizedLinear::inverse_smooth() const {
  std::vector<float> inv(smooth.size());
  for (size_t j = 0; j < smooth.size(); ++j) inv[j] = 1.0f / bits16_to_float(smooth[j], storage);
  return inv;
}

Status validate(const QuantizedLinear& l) {
  constexpr const char* kFn = "validate(QuantizedLinear)";
  using detail::error;
  const int64_t n = l.out_features, k = l.in_features, r = l.rank;
  if (l.format != Format::kInt4 && l.format != Format::kNvfp4)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": format is not int4 or nvfp4");
  if (l.storage != DType::kF16 && l.storage != DType::kBF16)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": storage (", dtype_name(l.storage),
                 ") must be f16 or bf16");
  if (l.rotation != Rotation::kNone && l.rotation != Rotation::kBlockHadamard)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": rotation (", static_cast<int>(l.rotation),
                 ") is not none or block-hadamard");
  if (n <= 0 || k <= 0)
    return error(StatusCode::kErrorShape, kFn, ": in_features (", k, ") and out_features (", n,
                 ") must be > 0");
  if (l.group != group_size(l.format))
    return error(StatusCode::kErrorShape, kFn, ": group (", l.group, ") must be ",
                 group_size(l.format), " for ", format_name(l.format));
  if (k % l.group != 0)
    return error(StatusCode::kErrorShape, kFn, ": in_features (", k,
                 ") must be a multiple of the group size ", l.group);
  if (r < 0 || r > std::min(n, k))
    return error(StatusCode::kErrorShape, kFn, ": rank (", r, ") must be in [0, min(N, K) = ",
                 std::min(n, k), "]");
  const int64_t scale_bytes = l.format == Format::kInt4 ? 2 : 1;
  // Expected sizes with checked arithmetic: in_features and out_features are caller-set.
  int64_t nk = 0, kr = 0, nr = 0, ns = 0;
  if (__builtin_mul_overflow(n, k, &nk) || __builtin_mul_overflow(k, r, &kr) ||
      __builtin_mul_overflow(n, r, &nr) || __builtin_mul_overflow(n, (k / l.group) * scale_bytes, &ns))
    return error(StatusCode::kErrorShape, kFn, ": in_features (", k, ") x out_features (", n,
                 ") overflows 64-bit sizes");
  struct Expect {
    const char* name;
    size_t have;
    int64_t want;
  } const expect[] = {
      {"smooth", l.smooth.size(), k},
      {"lora_down", l.lora_down.size(), kr},
      {"lora_up", l.lora_up.size(), nr},
      {"qweight", l.qweight.size(), nk / 2},
      {"wscales", l.wscales.size(), ns},
  };
  for (const auto& e : expect)
    if (static_cast<int64_t>(e.have) != e.want)
      return error(StatusCode::kErrorShape, kFn, ": ", e.name, " has ", e.have,
                   " elements, expected ", e.want);
  if (!l.bias.empty() && static_cast<int64_t>(l.bias.size()) != n)
    return error(StatusCode::kErrorShape, kFn, ": bias has ", l.bias.size(),
                 " elements, expected 0 or out_features (", n, ")");

  // Values: only what a correct quantizer produces (docs/checkpoint.md, "Values").
  for (const auto* t : {&l.wtscale, &l.act_tensor_scale}) {
    const char* name = t == &l.wtscale ? "wtscale" : "act_tensor_scale";
    if (!(*t >= detail::kMinTensorScale && *t <= detail::kMaxTensorScale))
      return error(StatusCode::kErrorInvalidArgument, kFn, ": ", name, " (", *t,
                   ") must be finite and in [2^-126, FLT_MAX / (6 * 448)] (a normal float whose "
                   "reciprocal and whose product with 6 * 448 are finite)");
  }
  for (size_t j = 0; j < l.smooth.size(); ++j) {
    const float s = bits16_to_float(l.smooth[j], l.storage);
    if (!std::isfinite(s))
      return error(StatusCode::kErrorNonFinite, kFn, ": smooth[", j, "] (", s, ") must be finite");
    if (!(s > 0.0f && std::isfinite(1.0f / s)))
      return error(StatusCode::kErrorInvalidArgument, kFn, ": smooth[", j, "] (", s,
                   ") must be > 0 with a finite reciprocal (smoothing factors divide x)");
  }
  const int64_t n_scales = ns / scale_bytes;
  for (int64_t i = 0; i < n_scales; ++i) {
    const float v = detail::stored_scale_value(l.format, l.wscales.data() + i * scale_bytes, 1.0f);
    if (!std::isfinite(v))
      return error(StatusCode::kErrorNonFinite, kFn, ": wscales[", i, "] (", v, ", ",
                   l.format == Format::kInt4 ? "fp16" : "E4M3", ") must be finite");
    if (!(v >= 0.0f))
      return error(StatusCode::kErrorInvalidArgument, kFn, ": wscales[", i, "] (", v,
                   ") must be >= 0 (a group scale is absmax / qmax)");
  }
  // The Nunchaku-compatible variants (docs/formats.md, "Variants").
  if (l.act_unsigned && l.format != Format::kInt4)
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": act_unsigned is defined for int4 only (unsigned activation codes 0..15)");
  if (l.act_unsigned && l.rotation != Rotation::kNone)
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": act_unsigned cannot be combined with a rotation (a rotated group is signed)");
  if (!std::isfinite(l.act_shift))
    return error(StatusCode::kErrorNonFinite, kFn, ": act_shift (", l.act_shift, ") must be finite");
  if (l.act_shift != 0.0f && !l.act_unsigned)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": act_shift (", l.act_shift,
                 ") must be 0 unless act_unsigned");
  if (!l.wcscales.empty()) {
    if (l.format != Format::kNvfp4)
      return error(StatusCode::kErrorInvalidArgument, kFn,
                   ": wcscales (per-channel weight scales) are defined for nvfp4 only");
    if (static_cast<int64_t>(l.wcscales.size()) != n)
      return error(StatusCode::kErrorShape, kFn, ": wcscales has ", l.wcscales.size(),
                   " elements, expected 0 or out_features (", n, ")");
    for (size_t i = 0; i < l.wcscales.size(); ++i) {
      const float c = bits16_to_float(l.wcscales[i], l.storage);
      if (!std::isfinite(c))
        return error(StatusCode::kErrorNonFinite, kFn, ": wcscales[", i, "] (", c, ") must be finite");
      if (!(c >= 0.0f))
        return error(StatusCode::kErrorInvalidArgument, kFn, ": wcscales[", i, "] (", c,
                     ") must be >= 0 (a weight scale)");
    }
  }
  const struct {
    const char* name;
    const std::vector<uint16_t>* v;
  } branch[] = {{"lora_down", &l.lora_down}, {"lora_up", &l.lora_up}, {"bias", &l.bias}};
  for (const auto& b : branch)
    for (size_t i = 0; i < b.v->size(); ++i) {
      const float v = bits16_to_float((*b.v)[i], l.storage);
      if (!std::isfinite(v))
        return error(StatusCode::kErrorNonFinite, kFn, ": ", b.name, "[", i, "] (", v,
                     ") must be finite");
    }
  return Status::Ok();
}

Result<QuantizedLinear> to_unsigned_activations(const QuantizedLinear& q, float shift) {
  constexpr const char* kFn = "to_unsigned_activations";
  using detail::error;
  SVDQ_RETURN_IF_ERROR(validate(q));
  if (q.format != Format::kInt4)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": the layer is ", format_name(q.format),
                 "; unsigned activations are defined for int4 only");
  if (q.act_unsigned)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": the layer is already act_unsigned");
  if (q.rotation != Rotation::kNone)
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": the layer is rotated; unsigned activations are defined for unrotated layers only");
  if (!(std::isfinite(shift) && shift > 0.0f))
    return error(StatusCode::kErrorInvalidArgument, kFn, ": shift (", shift,
                 ") must be finite and > 0");
  const int64_t n = q.out_features, k = q.in_features;
  QuantizedLinear out = q;
  out.act_unsigned = true;
  out.act_shift = shift;
  out.bias.resize(static_cast<size_t>(n), 0);  // +0 in both 16-bit dtypes when absent
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0;  // sum_k Wq[n,k] / s_k, exact products of exact decodes, in float64
    for (int64_t j = 0; j < k; ++j)
      sum += static_cast<double>(decode_int4(packed_nibble(q.qweight.data() + i * (k / 2), j))) *
             q.wscale(i, j / q.group) / bits16_to_float(q.smooth[j], q.storage);
    const double b = q.bias.empty() ? 0.0 : bits16_to_float(q.bias[i], q.storage);
    const double v = b - static_cast<double>(shift) * sum;
    out.bias[i] = detail::double_to_bits16(v, q.storage);
    if (!std::isfinite(bits16_to_float(out.bias[i], q.storage)))
      return error(StatusCode::kErrorInvalidArgument, kFn, ": bias[", i, "] (", v,
                   ") overflows ", dtype_name(q.storage));
  }
  out.info.notes += std::string(out.info.notes.empty() ? "" : "; ") +
                    "unsigned activations (shift " + detail::cat(shift) + ", bias folded)";
  return out;
}

}  // namespace svdq
