// The offline pipeline: smoothing -> truncated SVD -> residual quantization.
#include <algorithm>
#include <chrono>
#include <cmath>
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

std::vector<uint16_t> smoothing_factors(const float* amax_x, const float* amax_w, int64_t k,
                                        float alpha, float beta, DType storage) {
  const uint16_t one = float_to_bits16(1.0f, storage);
  std::vector<uint16_t> s(static_cast<size_t>(k), one);
  if (alpha == 0.0f && beta == 0.0f) return s;
  for (int64_t j = 0; j < k; ++j) {
    const double num = alpha == 0.0f ? 1.0 : std::pow(static_cast<double>(amax_x[j]), alpha);
    const double den = beta == 0.0f ? 1.0 : std::pow(static_cast<double>(amax_w[j]), beta);
    const uint16_t bits = float_to_bits16(static_cast<float>(num / den), storage);
    const float stored = bits16_to_float(bits, storage);
    s[j] = (std::isfinite(stored) && stored > 0.0f) ? bits : one;
  }
  return s;
}

Result<QuantizedWeight> quantize_weight(const MatrixRM& r, Format format) {
  const int64_t n = r.rows(), k = r.cols();
  const int gs = group_size(format);
  const int64_t groups = k / gs;
  QuantizedWeight out;
  out.packed.assign(static_cast<size_t>(n * k / 2), 0);
  if (format == Format::kInt4) {
    out.scales.assign(static_cast<size_t>(n * groups * 2), 0);
    // Overflow check first (serially), so the parallel loop below cannot fail.
    const float amax = n * k > 0 ? r.cwiseAbs().maxCoeff() : 0.0f;
    if (!std::isfinite(half_bits_to_float(float_to_half_bits(amax / 7.0f))))
      return error(StatusCode::kErrorInvalidArgument, "quantize_linear: a weight group's absmax (",
                   amax, ") / 7 overflows the fp16 int4 group scale (max 65504)");
  } else {
    out.scales.assign(static_cast<size_t>(n * groups), 0);
    const float amax = n * k > 0 ? r.cwiseAbs().maxCoeff() : 0.0f;
    out.tensor_scale = amax > 0.0f ? amax / (6.0f * 448.0f) : 1.0f;
  }
  const float t = out.tensor_scale;

#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    std::vector<uint8_t> codes(static_cast<size_t>(k), 0);
    const float* row = r.row(i).data();
    for (int64_t g = 0; g < groups; ++g) {
      const float* w = row + g * gs;
      uint8_t* c = codes.data() + g * gs;
      float amax = 0.0f;
      for (int e = 0; e < gs; ++e) amax = std::max(amax, std::fabs(w[e]));
      if (format == Format::kInt4) {
        const uint16_t sb = float_to_half_bits(amax / 7.0f);
        const float scale = half_bits_to_float(sb);
        std::memcpy(out.scales.data() + (i * groups + g) * 2, &sb, 2);
        if (scale != 0.0f)
          for (int e = 0; e < gs; ++e) c[e] = encode_int4(w[e] / scale);
      } else {
        const uint8_t sb = encode_e4m3(amax / 6.0f / t);
        const float scale = decode_e4m3(sb);
        out.scales[i * groups + g] = sb;
        if (scale != 0.0f) {
          const float denom = scale * t;
          for (int e = 0; e < gs; ++e) c[e] = encode_e2m1(w[e] / denom);
        }
      }
    }
    pack_nibbles(codes.data(), k, out.packed.data() + i * (k / 2));
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
  return static_cast<int64_t>(2 * (smooth.size() + lora_down.size() + lora_up.size() + bias.size()) +
                              qweight.size() + wscales.size()) +
         (format == Format::kNvfp4 ? 8 : 0);  // wtscale + act_tensor_scale
}

double QuantizedLinear::bits_per_weight() const noexcept {
  const double weights = static_cast<double>(in_features) * static_cast<double>(out_features);
  return weights > 0 ? 8.0 * static_cast<double>(size_bytes()) / weights : 0.0;
}

float QuantizedLinear::wscale(int64_t n, int64_t g) const noexcept {
  const int64_t idx = n * (in_features / group) + g;
  if (format == Format::kNvfp4) return decode_e4m3(wscales[idx]);
  uint16_t bits;
  std::memcpy(&bits, wscales.data() + idx * 2, 2);
  return half_bits_to_float(bits);
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
  struct Expect {
    const char* name;
    size_t have;
    int64_t want;
  } const expect[] = {
      {"smooth", l.smooth.size(), k},
      {"lora_down", l.lora_down.size(), k * r},
      {"lora_up", l.lora_up.size(), n * r},
      {"qweight", l.qweight.size(), n * k / 2},
      {"wscales", l.wscales.size(), n * (k / l.group) * scale_bytes},
  };
  for (const auto& e : expect)
    if (static_cast<int64_t>(e.have) != e.want)
      return error(StatusCode::kErrorShape, kFn, ": ", e.name, " has ", e.have,
                   " elements, expected ", e.want);
  if (!l.bias.empty() && static_cast<int64_t>(l.bias.size()) != n)
    return error(StatusCode::kErrorShape, kFn, ": bias has ", l.bias.size(),
                 " elements, expected 0 or out_features (", n, ")");
  if (!(std::isfinite(l.wtscale) && l.wtscale > 0) ||
      !(std::isfinite(l.act_tensor_scale) && l.act_tensor_scale > 0))
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": wtscale and act_tensor_scale must be finite and > 0");
  return Status::Ok();
}

namespace {

Status check_config(const QuantConfig& c, int64_t n, int64_t k) {
  constexpr const char* kFn = "quantize_linear";
  using detail::error;
  if (c.format != Format::kInt4 && c.format != Format::kNvfp4)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.format is not int4 or nvfp4");
  const int gs = group_size(c.format);
  if (k % gs != 0)
    return error(StatusCode::kErrorShape, kFn, ": W.cols (", k, ") must be a multiple of the ",
                 format_name(c.format), " group size ", gs);
  if (c.rank < 0 || c.rank > std::min(n, k))
    return error(StatusCode::kErrorShape, kFn, ": config.rank (", c.rank,
                 ") must be in [0, min(N, K) = ", std::min(n, k), "]");
  if (!(c.alpha >= 0.0f && c.alpha <= 1.0f) || !(c.beta >= 0.0f && c.beta <= 1.0f))
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.alpha (", c.alpha,
                 ") and config.beta (", c.beta, ") must be in [0, 1]");
  if (c.storage != DType::kF16 && c.storage != DType::kBF16)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.storage (",
                 dtype_name(c.storage), ") must be f16 or bf16");
  if (c.svd.oversample < 0 || c.svd.power_iterations < 0 || c.svd.power_iterations > 64)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.svd.oversample (",
                 c.svd.oversample, ") must be >= 0 and config.svd.power_iterations (",
                 c.svd.power_iterations, ") in [0, 64]");
  if (c.svd.method != SvdMethod::kRandomized && c.svd.method != SvdMethod::kExact)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.svd.method is unknown");
  if (!(std::isfinite(c.act_tensor_scale) && c.act_tensor_scale > 0.0f))
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.act_tensor_scale (",
                 c.act_tensor_scale, ") must be finite and > 0");
  return Status::Ok();
}

// First non-finite element of a matrix, as an error naming it; Ok when all are finite.
Status check_finite(const char* name, const detail::MatrixRM& m) {
  if (m.allFinite()) return Status::Ok();
  for (int64_t i = 0; i < m.rows(); ++i)
    for (int64_t j = 0; j < m.cols(); ++j)
      if (!std::isfinite(m(i, j)))
        return detail::error(StatusCode::kErrorNonFinite, "quantize_linear: ", name, "(", i, ", ",
                             j, ") is ", m(i, j), "; weights and bias must be finite");
  return Status::Ok();
}

}  // namespace

Result<QuantizedLinear> quantize_linear(ConstMatrixRef W, ConstMatrixRef bias,
                                        const ActivationStats* stats, const QuantConfig& config) {
  constexpr const char* kFn = "quantize_linear";
  using detail::error;
  using detail::MatrixRM;
  const auto t0 = std::chrono::steady_clock::now();

  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "W", W));
  const int64_t n = W.rows, k = W.cols;
  if (n <= 0 || k <= 0)
    return error(StatusCode::kErrorShape, kFn, ": W must be non-empty (got ", n, " x ", k, ")");
  SVDQ_RETURN_IF_ERROR(check_config(config, n, k));
  const bool has_bias = bias.data != nullptr && !bias.empty();
  if (has_bias) {
    SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "bias", bias));
    if (!(bias.rows == 1 && bias.cols == n) && !(bias.cols == 1 && bias.rows == n))
      return error(StatusCode::kErrorShape, kFn, ": bias must be 1 x N or N x 1 with N = W.rows (",
                   n, "), got ", bias.rows, " x ", bias.cols);
  }
  const bool smoothing = config.alpha != 0.0f || config.beta != 0.0f;
  if (config.alpha != 0.0f) {
    if (stats == nullptr || stats->rows_observed() == 0)
      return error(StatusCode::kErrorInvalidArgument, kFn, ": stats is ",
                   stats == nullptr ? "null" : "empty", " but config.alpha (", config.alpha,
                   ") != 0 needs activation statistics; use alpha = beta = 0 for data-free");
    if (stats->channels() != k)
      return error(StatusCode::kErrorShape, kFn, ": stats.channels() (", stats->channels(),
                   ") must equal W.cols (", k, ")");
  }

  MatrixRM w = detail::to_eigen(W);
  SVDQ_RETURN_IF_ERROR(check_finite("W", w));
  MatrixRM b;
  if (has_bias) {
    b = detail::to_eigen(bias).reshaped<Eigen::RowMajor>(1, n);
    SVDQ_RETURN_IF_ERROR(check_finite("bias", b));
  }

  QuantizedLinear out;
  out.format = config.format;
  out.storage = config.storage;
  out.in_features = k;
  out.out_features = n;
  out.rank = config.rank;
  out.group = group_size(config.format);
  out.act_tensor_scale = config.format == Format::kNvfp4 ? config.act_tensor_scale : 1.0f;

  // 1. Smoothing with exactly the stored s: W_hat = W diag(s).
  const std::vector<float> amax_w = detail::column_absmax(w);
  out.smooth = detail::smoothing_factors(config.alpha != 0.0f ? stats->absmax().data() : nullptr,
                                         amax_w.data(), k, config.alpha, config.beta,
                                         config.storage);
  Eigen::VectorXf s(k);
  for (int64_t j = 0; j < k; ++j) s[j] = bits16_to_float(out.smooth[j], config.storage);
  if (smoothing) w = w * s.asDiagonal();
  const double weight_norm = w.cast<double>().norm();

  // 2. Low-rank split of W_hat; the branch is stored in 16 bits, and the residual is taken
  //    against the stored (rounded) factors so that it absorbs their rounding:
  //    R = W_hat - lora_up * (diag(s) lora_down)^T.
  const int r = config.rank;
  if (r > 0) {
    const detail::LowRank lr = detail::truncated_svd(w, r, config.svd);
    out.lora_up.resize(static_cast<size_t>(n * r));
    out.lora_down.resize(static_cast<size_t>(k * r));
    MatrixRM up(n, r), down_eff(r, k);
    for (int64_t i = 0; i < n; ++i)
      for (int c = 0; c < r; ++c) {
        const uint16_t bits = float_to_bits16(lr.up(i, c), config.storage);
        out.lora_up[i * r + c] = bits;
        up(i, c) = bits16_to_float(bits, config.storage);
      }
    for (int64_t j = 0; j < k; ++j)
      for (int c = 0; c < r; ++c) {
        const uint16_t bits = float_to_bits16(lr.down(c, j) / s[j], config.storage);
        out.lora_down[j * r + c] = bits;
        down_eff(c, j) = bits16_to_float(bits, config.storage) * s[j];
      }
    w.noalias() -= up * down_eff;
  }

  // 3. Residual quantization.
  Result<detail::QuantizedWeight> qw = detail::quantize_weight(w, config.format);
  if (!qw.ok()) return qw.status();
  out.qweight = std::move(qw->packed);
  out.wscales = std::move(qw->scales);
  out.wtscale = qw->tensor_scale;
  if (has_bias) {
    out.bias.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.bias[i] = float_to_bits16(b(0, i), config.storage);
  }

  out.info.alpha = config.alpha;
  out.info.beta = config.beta;
  out.info.svd = config.svd.method;
  out.info.weight_norm = weight_norm;
  out.info.residual_norm = w.cast<double>().norm();
  out.info.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace svdq
