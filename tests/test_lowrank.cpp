// Truncated SVD: the randomized range finder against the exact optimum (Eckart-Young).
#include <gtest/gtest.h>

#include <Eigen/SVD>
#include <cmath>
#include <cstdio>

#include "core.hpp"
#include "svdq/stats.hpp"
#include "svdq/synth.hpp"

namespace {

using svdq::detail::MatrixRM;

// The promise: the randomized residual is within 1% of the exact optimum at rank 32.
constexpr double kRandomizedExcessBudget = 0.01;

double residual_norm(const MatrixRM& a, const svdq::detail::LowRank& lr) {
  const Eigen::MatrixXd d = a.cast<double>() - lr.up.cast<double>() * lr.down.cast<double>();
  return d.norm();
}

// sqrt(sum_{i >= r} sigma_i^2) from an independent full SVD (values only) in double.
double optimal_residual(const MatrixRM& a, int r) {
  Eigen::BDCSVD<Eigen::MatrixXd> svd(a.cast<double>());
  const Eigen::VectorXd s = svd.singularValues();
  return std::sqrt(s.tail(s.size() - r).squaredNorm());
}

// The smoothed default FLUX-sized layer, as quantize_linear forms it.
MatrixRM smoothed_flux_layer() {
  svdq::synth::LayerSpec spec;  // 3072 x 3072
  auto layer = svdq::synth::make_layer(spec);
  EXPECT_TRUE(layer.ok());
  const auto x = svdq::synth::make_activations(*layer, 256, 7);
  svdq::ActivationStats stats;
  EXPECT_TRUE(stats.observe(svdq::MatrixView<const float>(x.data(), 256, spec.in_features)).ok());
  MatrixRM w = Eigen::Map<const MatrixRM>(layer->weight.data(), spec.out_features, spec.in_features);
  const auto amax_w = svdq::detail::column_absmax(w);
  const auto s = svdq::detail::smoothing_factors(stats.absmax().data(), amax_w.data(),
                                                 spec.in_features, 0.5f, 0.5f, svdq::DType::kBF16);
  for (int64_t j = 0; j < spec.in_features; ++j) w.col(j) *= svdq::bf16_bits_to_float(s[j]);
  return w;
}

TEST(TruncatedSvd, RandomizedWithinOnePercentOfOptimumOnFluxLayer) {
  const MatrixRM w = smoothed_flux_layer();
  const double opt = optimal_residual(w, 32);
  const auto lr = svdq::detail::truncated_svd(w, 32, svdq::SvdOptions{});
  ASSERT_EQ(lr.up.rows(), w.rows());
  ASSERT_EQ(lr.up.cols(), 32);
  ASSERT_EQ(lr.down.rows(), 32);
  ASSERT_EQ(lr.down.cols(), w.cols());
  const double res = residual_norm(w, lr);
  EXPECT_GE(res, opt * (1 - 1e-5));  // nothing beats Eckart-Young (float factors: 1e-5 slack)
  EXPECT_LE(res, opt * (1 + kRandomizedExcessBudget)) << "excess " << res / opt - 1;
  RecordProperty("excess_over_optimum", std::to_string(res / opt - 1));
  std::printf("randomized residual %.6g, optimum %.6g, excess %.4f%%\n", res, opt, 100 * (res / opt - 1));
}

TEST(TruncatedSvd, ExactPathMeetsEckartYoung) {
  MatrixRM a = MatrixRM::Random(96, 160);
  for (int j = 0; j < 4; ++j) a.col(j * 7) *= 30.0f;  // a few dominant columns
  for (int r : {1, 8, 32}) {
    svdq::SvdOptions opt;
    opt.method = svdq::SvdMethod::kExact;
    const auto lr = svdq::detail::truncated_svd(a, r, opt);
    EXPECT_NEAR(residual_norm(a, lr) / optimal_residual(a, r), 1.0, 1e-5) << "rank " << r;
    ASSERT_EQ(static_cast<int>(lr.singular_values.size()), r);
  }
}

TEST(TruncatedSvd, RandomizedIsNeverBetterThanOptimumAndImprovesWithPowerIterations) {
  MatrixRM a = MatrixRM::Random(300, 512);
  for (int j = 0; j < 8; ++j) a.col(j * 31) *= 10.0f;
  const double opt = optimal_residual(a, 16);
  double prev = INFINITY;
  for (int q : {0, 1, 3}) {
    svdq::SvdOptions opt_q;
    opt_q.power_iterations = q;
    const double res = residual_norm(a, svdq::detail::truncated_svd(a, 16, opt_q));
    EXPECT_GE(res, opt * (1 - 1e-5));
    EXPECT_LE(res, prev * (1 + 1e-4)) << "power iterations " << q;
    prev = res;
  }
  EXPECT_LE(prev, opt * (1 + kRandomizedExcessBudget));
}

TEST(TruncatedSvd, SeedDeterminesTheBits) {
  const MatrixRM a = MatrixRM::Random(200, 256);
  svdq::SvdOptions o1, o2;
  o2.seed = o1.seed + 1;
  const auto a1 = svdq::detail::truncated_svd(a, 8, o1);
  const auto a2 = svdq::detail::truncated_svd(a, 8, o1);
  const auto b = svdq::detail::truncated_svd(a, 8, o2);
  EXPECT_TRUE(a1.up == a2.up && a1.down == a2.down);
  EXPECT_FALSE(a1.up == b.up);
}

TEST(TruncatedSvd, RankZeroAndFullRank) {
  const MatrixRM a = MatrixRM::Random(40, 64);
  const auto zero = svdq::detail::truncated_svd(a, 0, {});
  EXPECT_EQ(zero.up.cols(), 0);
  EXPECT_EQ(zero.down.rows(), 0);
  const auto full = svdq::detail::truncated_svd(a, 40, {});
  EXPECT_LT(residual_norm(a, full), 1e-5 * a.cast<double>().norm());
}

}  // namespace
