// The linear layer end to end (docs/design.md, docs/formats.md): smoothing, the low-rank split, the stored
// conventions, the reference forward against an independent float64 recomputation, and quality
// budgets against the unquantized layer. References are written here in double, independently
// of src/ (own decoders for the 4-bit codes and scales, own 16-bit rounding).
#include <gtest/gtest.h>

#include <Eigen/SVD>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core.hpp"
#include "svdq/linear.hpp"
#include "svdq/metrics.hpp"
#include "svdq/synth.hpp"
#include "svdq/testing.hpp"

namespace {

using namespace svdq;
using MatD = Eigen::MatrixXd;

// ---- Budgets (relative Frobenius error in double). Measured values in the comments. ----------
// W4A4 svdquant rank 32 vs the float64 dense layer, small synth layer K=1024, N=512, 128 tokens.
constexpr double kSmallBudgetInt4 = 0.035;  // measured 0.0268 (seeds 1, 2, 12345: 0.0266 .. 0.0267)
constexpr double kSmallBudgetNvfp4 = 0.018;  // measured 0.0135
// Same, FLUX-sized synth default 3072 x 3072, 128 tokens.
constexpr double kFluxBudgetInt4 = 0.055;   // measured 0.0421
constexpr double kFluxBudgetNvfp4 = 0.033;  // measured 0.0249
// Reconstruction W_rec = lora_up lora_down^T + deq(R) diag(1/s) vs W (K=512, N=256, rank 16).
constexpr double kReconBudgetInt4 = 0.11;   // measured 0.0894
constexpr double kReconBudgetNvfp4 = 0.08;  // measured 0.0606
// Stored branch lora_up (diag(s) lora_down)^T vs the exact rank-16 optimum of W diag(s): only
// the 16-bit rounding of the factors separates them.
constexpr double kBranchVsOptimumBudget = 0.004;  // measured 0.00253 (bf16 factors)
// reference_forward vs the contract recomputed in double from the same quantized operands.
constexpr double kContractBudget = 1e-5;  // measured 4.3e-7 (fp32 sums; K = 1024)
// The smoothing identity x̂ Ŵ^T = x W^T in double.
constexpr double kIdentityBudget = 1e-12;

// ---- Independent decoders and rounding -------------------------------------------------------
double e2m1_value(uint8_t c) {
  static constexpr double kMag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return (c & 8) ? -kMag[c & 7] : kMag[c & 7];
}
double int4_value(uint8_t c) { return (c & 8) ? static_cast<int>(c & 15) - 16 : (c & 15); }
double e4m3_value(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (b & 0x80) ? -mag : mag;
}
double half_value(uint16_t h) { return static_cast<double>(std::bit_cast<_Float16>(h)); }
double bf16_value(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
double value16(uint16_t b, DType t) { return t == DType::kF16 ? half_value(b) : bf16_value(b); }
uint8_t nibble(const std::vector<uint8_t>& packed, int64_t row_bytes, int64_t i, int64_t k) {
  const uint8_t b = packed[i * row_bytes + k / 2];
  return (k & 1) ? (b >> 4) : (b & 15);
}
// Correct rounding of a double to fp16 (the compiler's conversion, independent of svdq).
uint16_t round_half(double d) { return std::bit_cast<uint16_t>(static_cast<_Float16>(d)); }
// Correct rounding of a finite double to bf16: nearest of the candidates, ties to even.
uint16_t round_bf16(double d) {
  const uint16_t c = static_cast<uint16_t>(std::bit_cast<uint32_t>(static_cast<float>(d)) >> 16);
  uint16_t best = c;
  for (int delta = -1; delta <= 1; ++delta) {
    const uint16_t cand = static_cast<uint16_t>(c + delta);
    const double dc = std::fabs(bf16_value(cand) - d), db = std::fabs(bf16_value(best) - d);
    if (std::isfinite(bf16_value(cand)) && (dc < db || (dc == db && (cand & 1) == 0))) best = cand;
  }
  return best;
}
uint16_t round16(double d, DType t) { return t == DType::kF16 ? round_half(d) : round_bf16(d); }

// ---- Problems ----------------------------------------------------------------------------------
struct Problem {
  int64_t k = 0, n = 0, cal = 0, eval = 0;
  synth::Layer layer;
  std::vector<float> xcal, xeval;
  ActivationStats stats;
  std::vector<double> yref;  // dense float64 layer on xeval
  MatrixView<const float> w() const { return {layer.weight.data(), n, k}; }
  MatrixView<const float> bias() const { return vector_view<const float>(layer.bias.data(), n); }
  MatrixView<const float> x(int64_t rows) const { return {xeval.data(), rows, k}; }
};

Problem make_problem(int64_t k, int64_t n, int64_t cal, int64_t eval, uint64_t seed = 1) {
  Problem p;
  p.k = k, p.n = n, p.cal = cal, p.eval = eval;
  synth::LayerSpec spec;
  spec.in_features = k, spec.out_features = n, spec.seed = seed;
  auto layer = synth::make_layer(spec);
  EXPECT_TRUE(layer.ok()) << layer.status().to_string();
  if (!layer.ok()) return p;
  p.layer = std::move(*layer);
  p.xcal = synth::make_activations(p.layer, cal, 1000 + seed);
  p.xeval = synth::make_activations(p.layer, eval, 2000 + seed);
  EXPECT_TRUE(p.stats.observe(MatrixView<const float>(p.xcal.data(), cal, k)).ok());
  EXPECT_TRUE(dense_forward(p.x(eval), p.w(), p.bias(), &p.yref).ok());
  return p;
}

QuantizedLinear quantize(const Problem& p, const QuantConfig& c, bool with_bias = true) {
  auto q =
      quantize_linear(p.w(), with_bias ? ConstMatrixRef(p.bias()) : ConstMatrixRef(), &p.stats, c);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return q.ok() ? std::move(q).value() : QuantizedLinear{};
}

std::vector<float> forward(const QuantizedLinear& l, ConstMatrixRef x,
                           QuantizedActivations* act = nullptr) {
  std::vector<float> y(static_cast<size_t>(x.rows * l.out_features), -1.0f);
  const Status st =
      test_support::reference_forward_with_activations(l, x, MatrixView<float>(y.data(), x.rows, l.out_features), act);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return y;
}

template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b, size_t count) {
  double e = 0, r = 0;
  for (size_t i = 0; i < count; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    e += d * d;
    r += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(e / r);
}
template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  EXPECT_EQ(a.size(), b.size());
  return rel_err(a, b, std::min(a.size(), b.size()));
}

QuantConfig config(Format f, int rank = 32) {
  QuantConfig c;
  c.format = f, c.rank = rank;
  return c;
}

// Dequantized codes (rows x k) in double: value(code) * group scale * t, from the stored bytes.
// int4 scales are fp16 (weights, 2 bytes) or fp32 (activations, 4 bytes); nvfp4 scales are E4M3.
MatD dequant(Format f, const std::vector<uint8_t>& codes, const std::vector<uint8_t>& scales,
             int64_t rows, int64_t k, int int4_scale_bytes, double t) {
  const int64_t gs = group_size(f), groups = k / gs;
  MatD r(rows, k);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const uint8_t c = nibble(codes, k / 2, i, j);
      const int64_t g = i * groups + j / gs;
      if (f == Format::kNvfp4) {
        r(i, j) = e2m1_value(c) * e4m3_value(scales[g]) * t;
      } else if (int4_scale_bytes == 2) {
        r(i, j) = int4_value(c) *
                  half_value(static_cast<uint16_t>(scales[2 * g] | scales[2 * g + 1] << 8));
      } else {
        uint32_t u = 0;
        for (int b = 0; b < 4; ++b)
          u |= static_cast<uint32_t>(scales[4 * g + b]) << (8 * b);  // little-endian
        r(i, j) = int4_value(c) * std::bit_cast<float>(u);
      }
    }
  return r;
}
MatD dequant_residual(const QuantizedLinear& l) {  // deq(R), N x K, smoothed space, t_w included
  return dequant(l.format, l.qweight, l.wscales, l.out_features, l.in_features, 2, l.wtscale);
}
MatD field_matrix(const std::vector<uint16_t>& v, int64_t rows, int64_t cols, DType t) {
  MatD m(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m(i, j) = value16(v[i * cols + j], t);
  return m;
}

// The runtime contract recomputed in double from the layer and the activations it handed back:
// y = sum_g P_g sx sw (x t_act t_w) + (x lora_down) lora_up^T + b.
std::vector<double> contract_double(const QuantizedLinear& l, const QuantizedActivations& qa,
                                    const std::vector<float>& x) {
  const int64_t m = qa.rows, k = l.in_features, n = l.out_features;
  const MatD xq = dequant(l.format, qa.codes, qa.scales, m, k, 4, 1.0);
  MatD y = xq * dequant_residual(l).transpose();
  if (l.format == Format::kNvfp4) y *= static_cast<double>(l.act_tensor_scale);  // t_w is in deq(R)
  if (l.rank > 0) {
    MatD xd(m, k);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < k; ++j) xd(i, j) = x[i * k + j];
    y += (xd * field_matrix(l.lora_down, k, l.rank, l.storage)) *
         field_matrix(l.lora_up, n, l.rank, l.storage).transpose();
  }
  std::vector<double> out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      out[i * n + j] = y(i, j) + (l.bias.empty() ? 0.0 : value16(l.bias[j], l.storage));
  return out;
}

void expect_same_fields(const QuantizedLinear& a, const QuantizedLinear& b) {
  EXPECT_TRUE(a.format == b.format && a.storage == b.storage && a.in_features == b.in_features &&
              a.out_features == b.out_features && a.rank == b.rank && a.group == b.group);
  EXPECT_EQ(a.smooth, b.smooth);
  EXPECT_EQ(a.lora_down, b.lora_down);
  EXPECT_EQ(a.lora_up, b.lora_up);
  EXPECT_EQ(a.qweight, b.qweight);
  EXPECT_EQ(a.wscales, b.wscales);
  EXPECT_EQ(std::bit_cast<uint32_t>(a.wtscale), std::bit_cast<uint32_t>(b.wtscale));
  EXPECT_EQ(std::bit_cast<uint32_t>(a.act_tensor_scale),
            std::bit_cast<uint32_t>(b.act_tensor_scale));
  EXPECT_EQ(a.bias, b.bias);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

const Problem& small_problem() {  // K=1024, N=512, 256 calibration + 128 evaluation tokens
  static const Problem p = make_problem(1024, 512, 256, 128);
  return p;
}
const Problem& tiny_problem() {  // K=256, N=128
  static const Problem p = make_problem(256, 128, 128, 129, 3);
  return p;
}

// ================================================================================================
// 1. Smoothing
class Smoothing : public ::testing::TestWithParam<DType> {};

TEST_P(Smoothing, IdentityAndExactRounding) {
  const DType t = GetParam();
  const Problem p = make_problem(512, 256, 64, 32);
  const detail::MatrixRM w = detail::to_eigen(p.w());
  const std::vector<float> amax_w = detail::column_absmax(w);
  const std::vector<float>& amax_x = p.stats.absmax();
  for (int64_t j = 0; j < p.k; ++j) {  // column_absmax against a direct loop
    double m = 0;
    for (int64_t i = 0; i < p.n; ++i)
      m = std::max(m, std::fabs(double(p.layer.weight[i * p.k + j])));
    ASSERT_EQ(amax_w[j], m) << j;
  }
  const auto s_bits = detail::smoothing_factors(amax_x.data(), amax_w.data(), p.k, 0.5f, 0.5f, t);
  ASSERT_EQ(static_cast<int64_t>(s_bits.size()), p.k);
  std::vector<double> s(p.k);
  int non_trivial = 0;
  for (int64_t j = 0; j < p.k; ++j) {
    const double want = std::pow(double(amax_x[j]), 0.5) / std::pow(double(amax_w[j]), 0.5);
    EXPECT_EQ(s_bits[j], round16(want, t)) << "channel " << j << " want " << want;
    s[j] = value16(s_bits[j], t);
    non_trivial += s[j] != 1.0;
  }
  EXPECT_GT(non_trivial, p.k / 2);
  // x̂ = x ⊘ s, Ŵ = W diag(s): x̂ Ŵ^T == x W^T in double.
  const int64_t m = 32;
  MatD x(m, p.k), xh(m, p.k), wd(p.n, p.k), wh(p.n, p.k);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < p.k; ++j) x(i, j) = p.xeval[i * p.k + j], xh(i, j) = x(i, j) / s[j];
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.k; ++j)
      wd(i, j) = p.layer.weight[i * p.k + j], wh(i, j) = wd(i, j) * s[j];
  const MatD y = x * wd.transpose(), yh = xh * wh.transpose();
  EXPECT_LE((yh - y).norm() / y.norm(), kIdentityBudget);
}

TEST_P(Smoothing, DegenerateChannelsGiveOne) {
  const DType t = GetParam();
  const uint16_t one = round16(1.0, t);
  const float inf = std::numeric_limits<float>::infinity();
  // amax_x = 0 -> s = 0; amax_w = 0 -> s = Inf; both 0 -> NaN; Inf; underflow; fp16 overflow.
  const std::vector<float> ax = {0.0f, 4.0f, 0.0f, inf, 1e-30f, 1e12f, 9.0f, 2.0f};
  const std::vector<float> aw = {1.0f, 0.0f, 0.0f, 1.0f, 1.0f, 1.0f, 4.0f, 0.5f};
  const auto s = detail::smoothing_factors(ax.data(), aw.data(), 8, 1.0f, 1.0f, t);
  for (int j : {0, 1, 2, 3}) EXPECT_EQ(s[j], one) << j;
  EXPECT_EQ(s[4], t == DType::kF16 ? one : round16(1e-30f, t));  // 1e-30 is 0 in fp16
  EXPECT_EQ(s[5], t == DType::kF16 ? one : round16(1e12f, t));   // 1e12 is Inf in fp16
  EXPECT_EQ(s[6], round16(2.25, t));
  EXPECT_EQ(s[7], round16(4.0, t));
  // alpha = beta = 0: all ones, whatever the statistics.
  for (uint16_t b : detail::smoothing_factors(ax.data(), aw.data(), 8, 0.0f, 0.0f, t))
    EXPECT_EQ(b, one);
  // alpha = 0, beta = 0.5: amax_x may be null; s = amax_w^-0.5.
  const auto sw = detail::smoothing_factors(nullptr, aw.data(), 8, 0.0f, 0.5f, t);
  EXPECT_EQ(sw[0], one);
  EXPECT_EQ(sw[1], one);
  EXPECT_EQ(sw[6], round16(0.5, t));
  EXPECT_EQ(sw[7], round16(std::sqrt(2.0), t));
}

// s = amax_x / amax_w is a double; rounding it to bf16 through float (double rounding) differs
// from the correctly rounded value when the float lands exactly on a bf16 midpoint.
TEST_P(Smoothing, SingleRoundingOfTheDoubleQuotient) {
  const DType t = GetParam();
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(1.0f, 2.0f);
  std::vector<float> ax, aw;
  for (int trial = 0; trial < 4000000 && ax.size() < 8; ++trial) {
    const float a = u(rng), b = u(rng);
    const double q = double(a) / double(b);
    const float f = static_cast<float>(q);
    const uint32_t bits = std::bit_cast<uint32_t>(f);
    const uint32_t low = t == DType::kF16 ? (bits & 0x1fff) : (bits & 0xffff);  // fp16: 13 low bits
    if (low == (t == DType::kF16 ? 0x1000u : 0x8000u) && q != double(f))
      ax.push_back(a), aw.push_back(b);
  }
  ASSERT_FALSE(ax.empty());
  const auto s = detail::smoothing_factors(ax.data(), aw.data(), ax.size(), 1.0f, 1.0f, t);
  for (size_t j = 0; j < ax.size(); ++j) {
    const double q = double(ax[j]) / double(aw[j]);
    EXPECT_EQ(s[j], round16(q, t)) << "amax_x " << ax[j] << " amax_w " << aw[j] << " q " << q;
  }
}
INSTANTIATE_TEST_SUITE_P(Storage, Smoothing, ::testing::Values(DType::kF16, DType::kBF16),
                         [](const auto& i) { return std::string(dtype_name(i.param)); });

// ================================================================================================
// 2. Eckart–Young
TEST(LowRankSplit, ExactSvdIsTheBestRankR) {
  const int64_t rows = 60, cols = 90;
  const int r = 10;
  std::mt19937_64 rng(42);
  std::normal_distribution<double> nd;
  MatD a(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) a(i, j) = nd(rng) * (1.0 + 3.0 * std::exp(-0.2 * j));
  const detail::MatrixRM af = a.cast<float>();
  const MatD ad = af.cast<double>();
  Eigen::JacobiSVD<MatD> svd(ad, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd sv = svd.singularValues();
  const double optimum = std::sqrt(sv.tail(sv.size() - r).squaredNorm());
  auto residual = [&](const MatD& up, const MatD& down) { return (ad - up * down).norm(); };

  SvdOptions exact;
  exact.method = SvdMethod::kExact;
  const auto lr = detail::truncated_svd(af, r, exact);
  ASSERT_TRUE(lr.up.rows() == rows && lr.up.cols() == r && lr.down.rows() == r &&
              lr.down.cols() == cols);
  ASSERT_EQ(lr.singular_values.size(), static_cast<size_t>(r));
  for (int i = 0; i < r; ++i) EXPECT_NEAR(lr.singular_values[i], sv[i], 1e-9 * sv[0]) << i;
  const MatD up = lr.up.cast<double>(), down = lr.down.cast<double>();
  const double exact_res = residual(up, down);
  EXPECT_NEAR(exact_res / optimum, 1.0, 1e-6) << exact_res << " vs " << optimum;
  // down = V_r^T has orthonormal rows; up = U_r Sigma_r.
  EXPECT_LE((down * down.transpose() - MatD::Identity(r, r)).norm(), 1e-5);

  // No other rank-r matrix does better: randomized, perturbed factors, a wrong singular triple.
  SvdOptions rnd;
  rnd.oversample = 2, rnd.power_iterations = 0;
  const auto lr2 = detail::truncated_svd(af, r, rnd);
  EXPECT_GE(residual(lr2.up.cast<double>(), lr2.down.cast<double>()), optimum * (1 - 1e-6));
  for (double eps : {1e-4, 1e-2}) {
    MatD up2 = up, down2 = down;
    for (int64_t i = 0; i < up2.size(); ++i) up2.data()[i] += eps * nd(rng);
    for (int64_t i = 0; i < down2.size(); ++i) down2.data()[i] += eps * nd(rng);
    EXPECT_GT(residual(up2, down2), optimum) << eps;
  }
  MatD up3 = svd.matrixU().leftCols(r + 1) * sv.head(r + 1).asDiagonal();
  MatD down3 = svd.matrixV().leftCols(r + 1).transpose();
  EXPECT_GT(residual(MatD(up3.rightCols(r)), MatD(down3.bottomRows(r))), optimum * 1.01);
}

// ================================================================================================
// 3. The stored conventions: lora_down = diag(1/s) V_r reads the raw x; R is in smoothed space.
class Stored : public ::testing::TestWithParam<Format> {};

TEST_P(Stored, BranchReadsRawXAndReconstructsW) {
  const Format f = GetParam();
  const Problem p = make_problem(512, 256, 256, 16, 5);
  QuantConfig c = config(f, 16);
  c.svd.method = SvdMethod::kExact;
  const QuantizedLinear l = quantize(p, c);
  ASSERT_TRUE(validate(l).ok());
  std::vector<double> s(p.k);
  for (int64_t j = 0; j < p.k; ++j) {  // s_j = sqrt(amax_x / amax_w), rounded once to bf16
    double aw = 0;
    for (int64_t i = 0; i < p.n; ++i)
      aw = std::max(aw, std::fabs(double(p.layer.weight[i * p.k + j])));
    EXPECT_EQ(l.smooth[j], round16(std::sqrt(p.stats.absmax()[j] / aw), l.storage)) << j;
    s[j] = value16(l.smooth[j], l.storage);
  }
  const MatD up = field_matrix(l.lora_up, p.n, 16, l.storage);
  const MatD down = field_matrix(l.lora_down, p.k, 16, l.storage);  // K x r
  const MatD deq = dequant_residual(l);
  // dequantize_weight agrees with the independent decoder, element for element.
  const detail::MatrixRM deq_lib = detail::dequantize_weight(l);
  EXPECT_LE(((deq_lib.cast<double>() - deq).cwiseAbs().array() / (deq.cwiseAbs().array() + 1e-30))
                .maxCoeff(),
            2.5e-7);  // two fp32 roundings of q * scale * t

  MatD w(p.n, p.k), wh(p.n, p.k), w_rec(p.n, p.k);
  const MatD branch_raw = up * down.transpose();  // acts on the raw x
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.k; ++j) {
      w(i, j) = p.layer.weight[i * p.k + j];
      wh(i, j) = w(i, j) * s[j];
      w_rec(i, j) = branch_raw(i, j) + deq(i, j) / s[j];
    }
  EXPECT_NEAR(l.info.weight_norm / wh.norm(), 1.0, 1e-6);
  const double recon = (w_rec - w).norm() / w.norm();
  std::printf("[measure] %s reconstruction rel err %.5f\n", format_name(f), recon);
  EXPECT_LE(recon, f == Format::kInt4 ? kReconBudgetInt4 : kReconBudgetNvfp4);

  // In smoothed space the branch is up (diag(s) down)^T = U_r Sigma_r V_r^T of Ŵ (independent SVD).
  MatD branch_hat = branch_raw;
  for (int64_t j = 0; j < p.k; ++j) branch_hat.col(j) *= s[j];
  Eigen::JacobiSVD<MatD> svd(wh, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const MatD opt = svd.matrixU().leftCols(16) * svd.singularValues().head(16).asDiagonal() *
                   svd.matrixV().leftCols(16).transpose();
  const double bv = (branch_hat - opt).norm() / opt.norm();
  std::printf("[measure] %s branch vs optimum %.5g; raw-x branch vs optimum %.3g\n", format_name(f),
              bv, (branch_raw - opt).norm() / opt.norm());
  EXPECT_LE(bv, kBranchVsOptimumBudget);
  EXPECT_NEAR(l.info.residual_norm / (wh - branch_hat).norm(), 1.0, 1e-5);  // ||R||, R as stored
  EXPECT_GT((branch_raw - opt).norm() / opt.norm(), 10 * kBranchVsOptimumBudget);  // s matters here
  // R is quantized against the branch as stored: deq(R) ≈ Ŵ - branch within half a step per group.
  if (f == Format::kInt4) {
    const MatD rr = wh - branch_hat;
    for (int64_t i = 0; i < p.n; ++i)
      for (int64_t g = 0; g < p.k / 64; ++g) {
        const double amax = rr.block(i, g * 64, 1, 64).cwiseAbs().maxCoeff();
        const double step = half_value(round_half(amax / 7.0));
        const double err =
            (deq.block(i, g * 64, 1, 64) - rr.block(i, g * 64, 1, 64)).cwiseAbs().maxCoeff();
        ASSERT_LE(err, 0.5 * step * 1.01 + std::max(0.0, amax - 7 * step) + 1e-6 * amax)
            << i << "," << g;
      }
  }
}

TEST_P(Stored, ForwardEqualsContractInDouble) {
  const Format f = GetParam();
  const Problem& p = small_problem();
  const QuantizedLinear l = quantize(p, config(f, 16));
  QuantizedActivations act;
  const std::vector<float> y = forward(l, p.x(p.eval), &act);
  ASSERT_EQ(act.rows, p.eval);
  ASSERT_EQ(act.cols, p.k);
  // The activations handed back are the contract's, for this layer's 1/s and t_act.
  QuantizedActivations own;
  const std::vector<float> inv_s = l.inverse_smooth();
  ASSERT_TRUE(quantize_activations(f, p.x(p.eval), inv_s.data(), l.act_tensor_scale, &own).ok());
  EXPECT_EQ(act.codes, own.codes);
  EXPECT_EQ(act.scales, own.scales);
  const std::vector<double> want = contract_double(l, act, p.xeval);
  const double err = rel_err(y, want);
  std::printf("[measure] %s forward vs double contract %.3g\n", format_name(f), err);
  EXPECT_LE(err, kContractBudget);
}
INSTANTIATE_TEST_SUITE_P(Formats, Stored, ::testing::Values(Format::kInt4, Format::kNvfp4),
                         [](const auto& i) { return std::string(format_name(i.param)); });

// nvfp4 with a static activation tensor scale: the contract's t_act enters codes and output.
TEST(Stored, Nvfp4StaticActTensorScale) {
  const Problem& p = tiny_problem();
  QuantConfig c = config(Format::kNvfp4, 16);
  c.act_tensor_scale = 0.01f;
  const QuantizedLinear l = quantize(p, c);
  EXPECT_EQ(l.act_tensor_scale, 0.01f);
  QuantizedActivations act;
  const std::vector<float> y = forward(l, p.x(p.eval), &act);
  EXPECT_EQ(act.tensor_scale, 0.01f);
  EXPECT_LE(rel_err(y, contract_double(l, act, p.xeval)), kContractBudget);
  const double err = rel_err(y, p.yref),
               err1 =
                   rel_err(forward(quantize(p, config(Format::kNvfp4, 16)), p.x(p.eval)), p.yref);
  std::printf("[measure] nvfp4 t_act 0.01: %.5f, dynamic: %.5f\n", err, err1);
  EXPECT_LE(err, 1.5 * err1);
}

// ================================================================================================
// 4. Quality budgets and the ablation order (the paper's claim on outlier-heavy layers)
TEST(Budget, SmallLayerBothFormats) {
  const Problem& p = small_problem();
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    const double err = rel_err(forward(quantize(p, config(f)), p.x(p.eval)), p.yref);
    std::printf("[measure] small %s svdquant r32 rel err %.5f\n", format_name(f), err);
    EXPECT_LE(err, f == Format::kInt4 ? kSmallBudgetInt4 : kSmallBudgetNvfp4);
  }
}

// The synth default (3072 x 3072, outlier-heavy), 256 calibration and 256 other evaluation tokens:
// the svdquant budget on the first 128 tokens, and the paper's ablation order on all 256.
TEST(Budget, FluxLayerBudgetAndAblationOrder) {
  const Problem p = make_problem(3072, 3072, 256, 256);
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    double e[4];
    for (Recipe r :
         {Recipe::kNaive, Recipe::kSmoothOnly, Recipe::kLowRankOnly, Recipe::kSvdquant}) {
      const QuantizedLinear l = quantize(p, recipe_config(r, config(f)));
      EXPECT_EQ(l.rank, (r == Recipe::kNaive || r == Recipe::kSmoothOnly) ? 0 : 32);
      const std::vector<float> y = forward(l, p.x(p.eval));
      e[static_cast<int>(r)] = rel_err(y, p.yref);
      std::printf("[measure] flux %s %-8s %.5f\n", format_name(f), recipe_name(r),
                  e[static_cast<int>(r)]);
      if (r != Recipe::kSvdquant) continue;
      const double e128 = rel_err(y, p.yref, static_cast<size_t>(128 * p.n));
      std::printf("[measure] flux %s svdquant r32, 128 tokens: %.5f\n", format_name(f), e128);
      EXPECT_LE(e128, f == Format::kInt4 ? kFluxBudgetInt4 : kFluxBudgetNvfp4);
    }
    EXPECT_LT(e[3], e[1]) << format_name(f);
    EXPECT_LT(e[1], e[0]) << format_name(f);
    EXPECT_LT(e[2], e[0]) << format_name(f);
  }
}

// ================================================================================================
// 5. Determinism
TEST(Determinism, SameConfigSameBitsOtherSeedsWithinBudget) {
  const Problem& p = small_problem();
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    const QuantizedLinear a = quantize(p, config(f)), b = quantize(p, config(f));
    expect_same_fields(a, b);
    const std::vector<float> ya = forward(a, p.x(p.eval)), yb = forward(a, p.x(p.eval));
    EXPECT_TRUE(same_bits(ya, yb)) << format_name(f);
  }
  QuantConfig c = config(Format::kInt4);
  const QuantizedLinear base = quantize(p, c);
  for (uint64_t seed : {1ull, 2ull, 12345ull}) {
    c.svd.seed = seed;
    const QuantizedLinear l = quantize(p, c);
    EXPECT_NE(l.lora_up, base.lora_up) << "seed " << seed << " changed nothing";
    EXPECT_LE(rel_err(forward(l, p.x(p.eval)), p.yref), kSmallBudgetInt4) << seed;
  }
}

// ================================================================================================
// 6. Operand dtypes, shapes, ranks, bias
std::vector<uint16_t> to16(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = round16(v[i], t);
  return out;
}
std::vector<float> values_of(const std::vector<uint16_t>& v, DType t) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(value16(v[i], t));
  return out;
}

// A 16-bit W (or x) gives exactly what the fp32 operand holding the same values gives.
TEST(Dtypes, SixteenBitInputsEqualTheirFloatValues) {
  const Problem& p = tiny_problem();
  for (DType t : {DType::kF16, DType::kBF16}) {
    const std::vector<uint16_t> w16 = to16(p.layer.weight, t);
    const std::vector<float> w32 = values_of(w16, t);
    const QuantConfig c = config(Format::kInt4, 16);
    auto a = quantize_linear(ConstMatrixRef(w16.data(), t, p.n, p.k, p.k), p.bias(), &p.stats, c);
    auto b = quantize_linear(MatrixView<const float>(w32.data(), p.n, p.k), p.bias(), &p.stats, c);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status().to_string();
    expect_same_fields(*a, *b);
    const std::vector<uint16_t> x16 = to16(p.xeval, t);
    const std::vector<float> x32 = values_of(x16, t);
    const std::vector<float> y16 = forward(*a, ConstMatrixRef(x16.data(), t, p.eval, p.k, p.k));
    const std::vector<float> y32 = forward(*a, MatrixView<const float>(x32.data(), p.eval, p.k));
    EXPECT_TRUE(same_bits(y16, y32)) << dtype_name(t);
    EXPECT_LE(rel_err(y16, p.yref), 0.1) << dtype_name(t);  // sanity: still the same layer
  }
}

// A 16-bit y is the fp32 y rounded to nearest even; strided views read and write the same values.
TEST(Dtypes, SixteenBitOutputIsRoundedFloatOutput) {
  const Problem& p = tiny_problem();
  const QuantizedLinear l = quantize(p, config(Format::kNvfp4, 16));
  const std::vector<float> y32 = forward(l, p.x(p.eval));
  for (DType t : {DType::kF16, DType::kBF16}) {
    const int64_t ld = p.n + 3;
    std::vector<uint16_t> y(static_cast<size_t>(p.eval * ld), 0xABCD);
    ASSERT_TRUE(reference_forward(l, p.x(p.eval), MatrixRef(y.data(), t, p.eval, p.n, ld)).ok());
    for (int64_t i = 0; i < p.eval; ++i) {
      for (int64_t j = 0; j < p.n; ++j)
        ASSERT_EQ(y[i * ld + j], round16(y32[i * p.n + j], t))
            << dtype_name(t) << " " << i << "," << j;
      for (int64_t j = p.n; j < ld; ++j) ASSERT_EQ(y[i * ld + j], 0xABCD) << "padding written";
    }
  }
  const int64_t ldx = p.k + 8;
  std::vector<float> xs(static_cast<size_t>(p.eval * ldx), std::nanf(""));
  for (int64_t i = 0; i < p.eval; ++i)
    std::memcpy(xs.data() + i * ldx, p.xeval.data() + i * p.k, p.k * sizeof(float));
  EXPECT_TRUE(same_bits(forward(l, MatrixView<const float>(xs.data(), p.eval, p.k, ldx)), y32));
}

TEST(Shapes, RaggedRowsAndRanks) {
  const Problem& p = tiny_problem();  // 129 evaluation rows
  for (Format f : {Format::kInt4, Format::kNvfp4}) {
    double err_r0 = 0;
    for (int rank : {0, 16, 32, 64}) {
      const QuantizedLinear l = quantize(p, config(f, rank));
      ASSERT_EQ(l.rank, rank);
      ASSERT_EQ(l.lora_down.size(), static_cast<size_t>(p.k * rank));
      ASSERT_EQ(l.lora_up.size(), static_cast<size_t>(p.n * rank));
      for (int64_t m : {1, 7, 44, 129}) {
        QuantizedActivations act;
        const std::vector<float> y = forward(l, p.x(m), &act);
        const std::vector<float> x(p.xeval.begin(), p.xeval.begin() + m * p.k);
        EXPECT_LE(rel_err(y, contract_double(l, act, x)), kContractBudget)
            << format_name(f) << " rank " << rank << " M " << m;
        const double err = rel_err(y, p.yref, static_cast<size_t>(m * p.n));
        EXPECT_LE(err, 0.15) << format_name(f) << " rank " << rank << " M " << m;  // sanity
        if (m == 129 && rank == 0) err_r0 = err;
        if (m == 129 && rank == 64)
          EXPECT_LT(err, err_r0) << format_name(f) << ": rank 64 not better";
      }
    }
  }
}

TEST(Shapes, BiasPresentAndAbsent) {
  const Problem& p = tiny_problem();
  for (DType t : {DType::kF16, DType::kBF16}) {
    QuantConfig c = config(Format::kInt4, 16);
    c.storage = t;
    const QuantizedLinear with = quantize(p, c), without = quantize(p, c, false);
    ASSERT_EQ(with.bias.size(), static_cast<size_t>(p.n));
    EXPECT_TRUE(without.bias.empty());
    for (int64_t j = 0; j < p.n; ++j) EXPECT_EQ(with.bias[j], round16(p.layer.bias[j], t));
    QuantizedLinear stripped = with;
    stripped.bias.clear();
    expect_same_fields(stripped, without);
    const std::vector<float> yb = forward(with, p.x(p.eval)), yn = forward(without, p.x(p.eval));
    for (int64_t i = 0; i < p.eval; ++i)
      for (int64_t j = 0; j < p.n; ++j) {
        const float want = yn[i * p.n + j] + static_cast<float>(value16(with.bias[j], t));
        ASSERT_NEAR(yb[i * p.n + j], want,
                    4 * std::numeric_limits<float>::epsilon() * std::fabs(want) + 1e-30);
      }
  }
}

TEST(Shapes, ZeroRowsIsANoOp) {
  const Problem& p = tiny_problem();
  const QuantizedLinear l = quantize(p, config(Format::kInt4, 16));
  float sentinel = 42.0f;
  QuantizedActivations act;
  act.rows = 99;
  EXPECT_TRUE(test_support::reference_forward_with_activations(
                  l, MatrixView<const float>(p.xeval.data(), 0, p.k),
                  MatrixView<float>(&sentinel, 0, p.n), &act)
                  .ok());
  EXPECT_EQ(sentinel, 42.0f);
  EXPECT_EQ(act.rows, 0);
  EXPECT_TRUE(act.codes.empty());
}

// ================================================================================================
// 7. Non-finite activations poison exactly their row
TEST(NonFinite, NanOrInfRowPoisonsOnlyThatRow) {
  const Problem& p = tiny_problem();
  const int64_t m = 40, bad = 33;
  for (Format f : {Format::kInt4, Format::kNvfp4})
    for (int rank : {0, 16}) {
      const QuantizedLinear l = quantize(p, config(f, rank));
      const std::vector<float> clean = forward(l, p.x(m));
      for (float v :
           {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        std::vector<float> x(p.xeval.begin(), p.xeval.begin() + m * p.k);
        x[bad * p.k + 77] = v;
        const std::vector<float> y = forward(l, MatrixView<const float>(x.data(), m, p.k));
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < p.n; ++j) {
            const float a = y[i * p.n + j], b = clean[i * p.n + j];
            if (i == bad)
              ASSERT_TRUE(std::isnan(a))
                  << format_name(f) << " rank " << rank << " v " << v << " col " << j;
            else
              ASSERT_EQ(std::bit_cast<uint32_t>(a), std::bit_cast<uint32_t>(b)) << i << "," << j;
          }
      }
    }
}

// ================================================================================================
// 8. Size accounting
TEST(Size, BytesMatchTheFieldFormula) {
  const Problem& p = tiny_problem();
  const double nk = double(p.n) * double(p.k);
  for (Format f : {Format::kInt4, Format::kNvfp4})
    for (int rank : {0, 32})
      for (bool bias : {false, true}) {
        const QuantizedLinear l = quantize(p, config(f, rank), bias);
        const int64_t scale_bytes = f == Format::kInt4 ? p.n * (p.k / 64) * 2 : p.n * (p.k / 16);
        const int64_t want = p.n * p.k / 2 + scale_bytes + 2 * (p.k + (bias ? p.n : 0)) +
                             2 * rank * (p.k + p.n) + (f == Format::kNvfp4 ? 8 : 0);  // t_w, t_act
        EXPECT_EQ(l.size_bytes(), want) << format_name(f) << " rank " << rank << " bias " << bias;
        EXPECT_DOUBLE_EQ(l.bits_per_weight(), 8.0 * double(want) / nk);
      }
  // int4 rank 0: 4.25 bits per weight plus the 16-bit smooth (K) and bias (N) vectors.
  const QuantizedLinear l = quantize(p, config(Format::kInt4, 0));
  EXPECT_DOUBLE_EQ(l.bits_per_weight(), 4.25 + 16.0 * double(p.k + p.n) / nk);
  const QuantizedLinear l4 = quantize(p, config(Format::kNvfp4, 0));
  EXPECT_DOUBLE_EQ(l4.bits_per_weight(), 4.5 + (16.0 * double(p.k + p.n) + 64.0) / nk);
}

}  // namespace
