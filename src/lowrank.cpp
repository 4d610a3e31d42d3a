// Truncated SVD: a randomized range finder (Halko, Martinsson, Tropp 2011, Alg. 4.4 with
// re-orthonormalised subspace iterations) and an exact path through Eigen's BDCSVD.
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>

#include "core.hpp"
#include "random.hpp"

namespace svdq::detail {

namespace {

using MatrixCMd = Eigen::MatrixXd;

// Orthonormal basis (thin Q) of the columns of y, computed in double for a clean basis.
MatrixRM orthonormalize(const MatrixRM& y) {
  const MatrixCMd yd = y.cast<double>();
  Eigen::HouseholderQR<MatrixCMd> qr(yd);
  const MatrixCMd q = qr.householderQ() * MatrixCMd::Identity(y.rows(), y.cols());
  return q.cast<float>();
}

// Turns a (U, sigma, V) triple into the (up, down) factors of rank r.
LowRank from_svd(const MatrixCMd& u, const Eigen::VectorXd& sigma, const MatrixCMd& v, int r) {
  LowRank out;
  out.up = (u.leftCols(r) * sigma.head(r).asDiagonal()).cast<float>();
  out.down = v.leftCols(r).transpose().cast<float>();
  out.singular_values.assign(sigma.data(), sigma.data() + r);
  return out;
}

LowRank exact_svd(const MatrixRM& a, int r) {
  const MatrixCMd ad = a.cast<double>();
  Eigen::BDCSVD<MatrixCMd> svd(ad, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return from_svd(svd.matrixU(), svd.singularValues(), svd.matrixV(), r);
}

}  // namespace

LowRank truncated_svd(const MatrixRM& a, int rank, const SvdOptions& options,
                      const MatrixRM* right, const MatrixRM* start) {
  if (right != nullptr && (options.method == SvdMethod::kExact ||
                           rank + std::max(options.oversample, 0) >= std::min(a.rows(), right->cols()))) {
    MatrixRM prod;
    gemm_rows(a, *right, &prod);
    return truncated_svd(prod, rank, options);
  }
  const int64_t n = a.rows(), k = right ? right->cols() : a.cols();
  if (rank <= 0) {
    LowRank out;
    out.up = MatrixRM::Zero(n, 0);
    out.down = MatrixRM::Zero(0, k);
    return out;
  }
  const int64_t l = std::min<int64_t>(rank + std::max(options.oversample, 0), std::min(n, k));
  // When the sketch would be as wide as the matrix, the randomized path saves nothing.
  if (options.method == SvdMethod::kExact || l >= std::min(n, k)) return exact_svd(a, rank);

  // Gaussian test matrix (k, l), drawn column by column from the seed: same seed, same bits;
  // or the caller's warm start.
  MatrixRM omega;
  if (start != nullptr && start->rows() == k && start->cols() == l) {
    omega = *start;
  } else {
    Rng rng(options.seed);
    omega.resize(k, l);
    for (int64_t j = 0; j < l; ++j)
      for (int64_t i = 0; i < k; ++i) omega(i, j) = static_cast<float>(rng.normal());
  }

  // A = a (* right): products with A and A^T, applied factor by factor.
  // Every product goes through gemm_rows: fixed row blocks, the same bits for any thread count.
  auto apply = [&](const MatrixRM& v) -> MatrixRM {  // A v, v (k, l)
    MatrixRM av;
    if (right == nullptr) {
      gemm_rows(a, v, &av);
      return av;
    }
    MatrixRM rv;
    gemm_rows(*right, v, &rv);
    gemm_rows(a, rv, &av);
    return av;
  };
  auto apply_t = [&](const MatrixRM& v) -> MatrixRM {  // A^T v, v (n, l)
    MatrixRM atv;
    gemm_rows(a.transpose(), v, &atv);
    if (right == nullptr) return atv;
    MatrixRM ratv;
    gemm_rows(right->transpose(), atv, &ratv);
    return ratv;
  };
  MatrixRM q = orthonormalize(apply(omega));  // (n, l): basis of the range sketch
  for (int it = 0; it < options.power_iterations; ++it) {
    const MatrixRM z = orthonormalize(apply_t(q));  // (k, l)
    q = orthonormalize(apply(z));                    // (n, l)
  }
  // Project: B = Q^T A (l, k), then the exact SVD of the small B, in double.
  const MatrixCMd b = apply_t(q).transpose().cast<double>();
  Eigen::BDCSVD<MatrixCMd> svd(b, Eigen::ComputeThinU | Eigen::ComputeThinV);
  MatrixRMd u;  // (n, l)
  gemm_rows(q.cast<double>(), svd.matrixU(), &u);
  LowRank out = from_svd(u, svd.singularValues(), svd.matrixV(), rank);
  out.basis = svd.matrixV().cast<float>();
  return out;
}

}  // namespace svdq::detail
