// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2023) on the low-rank residual, with static groups:
// the group scales are fixed from R before any error feedback, so the result is an ordinary
// QuantizedWeight in the canonical layout. Columns are processed in act-order (decreasing
// diag(H)) when asked, in blocks with lazy batched updates.
#include <Eigen/Cholesky>
#include <algorithm>
#include <cstring>
#include <numeric>

#include "check.hpp"
#include "core.hpp"

namespace svdq::detail {

Result<QuantizedWeight> gptq_quantize(const MatrixRM& r, Format format, float tensor_scale,
                                      const WeightQuantOptions& options) {
  const int64_t n = r.rows(), k = r.cols();
  const int gs = group_size(format);
  const int64_t groups = k / gs;
  const int sbytes = format == Format::kInt4 ? 2 : 1;
  const GptqOptions& opt = options.gptq;
  QuantizedWeight out;
  out.tensor_scale = format == Format::kNvfp4 ? tensor_scale : 1.0f;
  const float t = out.tensor_scale;
  out.scales.assign(static_cast<size_t>(n * groups * sbytes), 0);
  out.packed.assign(static_cast<size_t>(n * k / 2), 0);

  // Static group scales, (n, groups) values, from R itself (with the clipping search if asked).
  std::vector<float> scale(static_cast<size_t>(n * groups));
  const double* h_diag = options.h_diag ? options.h_diag->data() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint8_t codes[64];
    for (int64_t g = 0; g < groups; ++g) {
      scale[i * groups + g] =
          quantize_group(format, r.row(i).data() + g * gs, gs, t, options.clip_search,
                         h_diag ? h_diag + g * gs : nullptr, codes, out.scales.data() + (i * groups + g) * sbytes);
    }
  }

  // H with dead columns neutralised and damping, permuted to act-order.
  Eigen::MatrixXd h = *options.hessian;
  MatrixRM w = r;
  for (int64_t j = 0; j < k; ++j)
    if (h(j, j) <= 0.0) {
      h(j, j) = 1.0;
      w.col(j).setZero();
    }
  const double damp = static_cast<double>(opt.damp) * h.diagonal().mean();
  h.diagonal().array() += damp;
  std::vector<int64_t> perm(static_cast<size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return h(a, a) > h(b, b); });
  Eigen::MatrixXd hp(k, k);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b) hp(a, b) = h(perm[a], perm[b]);
  MatrixRM wp(n, k);
  for (int64_t j = 0; j < k; ++j) wp.col(j) = w.col(perm[j]);

  // U = upper Cholesky factor of H^-1: row j of U drives the error feedback of column j.
  Eigen::LLT<Eigen::MatrixXd> llt(hp);
  if (llt.info() != Eigen::Success)
    return error(StatusCode::kErrorInternal, "gptq: the damped Hessian is not positive definite");
  const Eigen::MatrixXd hinv = llt.solve(Eigen::MatrixXd::Identity(k, k));
  Eigen::LLT<Eigen::MatrixXd> llt_inv(hinv);
  if (llt_inv.info() != Eigen::Success)
    return error(StatusCode::kErrorInternal, "gptq: H^-1 is not positive definite");
  const MatrixRM u = MatrixRM(llt_inv.matrixU().toDenseMatrix().cast<float>());

  // Rows are independent given U: each task runs the whole blocked sweep on a chunk of rows, so
  // there is one parallel region and every GEMM inside is a single-threaded block update.
  std::vector<uint8_t> codes(static_cast<size_t>(n * k), 0);  // (n, k) in original column order
  const int64_t block = std::max(1, opt.block);
  constexpr int64_t kRowChunk = 64;
  const int64_t chunks = (n + kRowChunk - 1) / kRowChunk;
  ParallelGuard guard;  // no exception may leave the region: rethrown below, a Status upstream
#pragma omp parallel for schedule(dynamic)
  for (int64_t ch = 0; ch < chunks; ++ch) guard.run([&] {
    const int64_t r0 = ch * kRowChunk, rows = std::min(kRowChunk, n - r0);
    MatrixRM wc = wp.middleRows(r0, rows);  // (rows, k) permuted columns
    MatrixRM err1(rows, block);
    for (int64_t i1 = 0; i1 < k; i1 += block) {
      const int64_t i2 = std::min(i1 + block, k), bw = i2 - i1;
      for (int64_t c = 0; c < bw; ++c) {
        const int64_t col = i1 + c, orig = perm[col], g = orig / gs;
        const float d = u(col, col);
        for (int64_t i = 0; i < rows; ++i) {
          const float sc = scale[(r0 + i) * groups + g];
          const float v = wc(i, col);
          const uint8_t q = encode_with(format, v, sc);
          codes[(r0 + i) * k + orig] = q;
          err1(i, c) = (v - decode_code(format, q) * sc) / d;
        }
        if (c + 1 < bw)  // feed this column's error into the rest of the block
          wc.middleCols(col + 1, bw - c - 1).noalias() -=
              err1.col(c) * u.row(col).segment(col + 1, bw - c - 1);
      }
      if (i2 < k)  // lazy batched update of every later column
        wc.rightCols(k - i2).noalias() -= err1.leftCols(bw) * u.block(i1, i2, bw, k - i2);
    }
  });
  guard.rethrow();
  for (int64_t i = 0; i < n; ++i)
    pack_nibbles(codes.data() + i * k, k, out.packed.data() + i * (k / 2));
  return out;
}

}  // namespace svdq::detail
