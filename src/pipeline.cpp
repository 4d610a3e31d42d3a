// quantize_linear: validation, then smoothing -> low-rank split -> residual quantization, with the
// optional refinements (smoothing search, iterative low-rank refinement, activation-aware split,
// GPTQ, clipping search, static nvfp4 activation scale). docs/quality.md measures each.
//
// Search order: each smoothing candidate is built with the configured split (whitened or plain)
// and round-to-nearest (+ clipping search) and scored on the sampled rows; the best candidate is
// then refined (iterations), and its residual finally quantized with GPTQ when asked (kept only
// if it scores better than round-to-nearest).
#include <Eigen/Cholesky>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "check.hpp"
#include "core.hpp"
#include "random.hpp"

namespace svdq {

namespace {

using detail::error;
using detail::MatrixRM;

// Everything derived from the inputs once, before any candidate.
struct Problem {
  QuantConfig cfg;
  int64_t n = 0, k = 0;
  MatrixRM w;                   // (N, K) the weight
  std::vector<float> amax_w;    // (K)
  const ActivationStats* stats = nullptr;
  MatrixRM x;                   // (S, K) sampled raw input rows; empty when none
  Eigen::MatrixXd gram;         // (K, K) raw X^T X; empty unless GPTQ or whitening need it
  Eigen::VectorXd gram_diag;    // (K) diag(X^T X); empty unless the clipping search weights by it
  MatrixRM chol;                // (K, K) lower Cholesky factor of gram + damping (whitening)
  std::vector<int64_t> scored;  // output channels scored
  MatrixRM y_ref;               // (S, |scored|) = x W[scored]^T
  // Recipe selection: the sampled rows held out from fitting (every holdout_stride-th); x and
  // y_ref above then hold the other rows only.
  MatrixRM x_hold, y_hold;
};

// One recipe: which of the config's options are on. quantize_linear runs the config's own plan,
// or, with QuantConfig::selection, several and keeps the best on the held-out rows.
struct Plan {
  std::string name;
  float alpha = 0, beta = 0;
  bool search = false;  // alpha, beta: the smoothing search's pick (a named recipe part)
  int refine = 0;
  bool clip = false, clip_weighted = true;
  bool gptq = false, whiten = false;
  bool rotate = false;  // block-Hadamard rotation of the 4-bit path
  bool same_as(const Plan& o) const {
    return alpha == o.alpha && beta == o.beta && refine == o.refine && clip == o.clip &&
           (!clip || clip_weighted == o.clip_weighted) && gptq == o.gptq && whiten == o.whiten &&
           rotate == o.rotate;
  }
};

// One smoothing candidate, built.
struct Candidate {
  float alpha = 0, beta = 0;
  std::vector<uint16_t> smooth;     // (K) stored bits
  Eigen::VectorXf s;                // (K) stored values
  float t_act = 1.0f;
  MatrixRM w_hat;                   // (N, K) W diag(s)
  std::vector<uint16_t> lora_up;    // (N, r) bits
  std::vector<uint16_t> lora_down;  // (K, r) bits
  MatrixRM residual;                // (N, K) W_hat - up (s . lora_down)^T
  bool rotate = false;              // the 4-bit path is rotated: Q(residual H) is what is stored
  double score = INFINITY;
};

// Block-Hadamard rotation (formats.hpp) of every group of every row of m, in place.
void rotate_groups(MatrixRM* m, int gs) {
  const int64_t rows = m->rows(), cols = m->cols();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t g = 0; g < cols / gs; ++g) hadamard_transform(m->row(i).data() + g * gs, gs);
}

// What the 4-bit path quantizes for candidate c: m itself, or m rotated when c rotates. The
// rotation is its own inverse, so the same call maps a dequantized rotated residual back.
MatrixRM rotated_if(const Candidate& c, const MatrixRM& m, Format f) {
  MatrixRM out = m;
  if (c.rotate) rotate_groups(&out, group_size(f));
  return out;
}

bool needs_rows(const QuantConfig& c) {
  return c.selection.enabled || c.smooth_search.enabled || c.refine_iterations > 0 || c.whiten_lowrank || c.gptq.enabled;
}
// The full K x K Gram only for the options that use it; the clipping search needs its diagonal.
bool needs_gram(const QuantConfig& c) { return c.whiten_lowrank || c.gptq.enabled; }
bool needs_gram_diag(const QuantConfig& c) { return needs_gram(c) || c.clip_search; }

Status check_config(const QuantConfig& c, int64_t n, int64_t k) {
  constexpr const char* kFn = "quantize_linear";
  if (c.format != Format::kInt4 && c.format != Format::kNvfp4)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.format is not int4 or nvfp4");
  const int gs = group_size(c.format);
  if (k % gs != 0)
    return error(StatusCode::kErrorShape, kFn, ": W.cols (", k, ") must be a multiple of the ",
                 format_name(c.format), " group size ", gs);
  if (c.rank < 0)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.rank (", c.rank, ") must be >= 0");
  if (c.rank > std::min(n, k))
    return error(StatusCode::kErrorShape, kFn, ": config.rank (", c.rank,
                 ") must be <= min(N, K) = ", std::min(n, k));
  if (!(c.alpha >= 0.0f && c.alpha <= 1.0f) || !(c.beta >= 0.0f && c.beta <= 1.0f))
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.alpha (", c.alpha,
                 ") and config.beta (", c.beta, ") must be in [0, 1]");
  for (const auto& [a, b] : c.smooth_search.candidates)
    if (!(a >= 0.0f && a <= 1.0f) || !(b >= 0.0f && b <= 1.0f))
      return error(StatusCode::kErrorInvalidArgument, kFn,
                   ": config.smooth_search.candidates must have alpha and beta in [0, 1], got (",
                   a, ", ", b, ")");
  if (c.storage != DType::kF16 && c.storage != DType::kBF16)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.storage (",
                 dtype_name(c.storage), ") must be f16 or bf16");
  if (c.svd.oversample < 0 || c.svd.power_iterations < 0 || c.svd.power_iterations > 64)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.svd.oversample (",
                 c.svd.oversample, ") must be >= 0 and config.svd.power_iterations (",
                 c.svd.power_iterations, ") in [0, 64]");
  if (c.svd.method != SvdMethod::kRandomized && c.svd.method != SvdMethod::kExact)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.svd.method is unknown");
  if (!(c.act_tensor_scale >= detail::kMinTensorScale && c.act_tensor_scale <= detail::kMaxTensorScale))
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.act_tensor_scale (",
                 c.act_tensor_scale, ") must be finite and in [2^-126, FLT_MAX / (6 * 448)]");
  if (c.refine_iterations < 0 || c.refine_iterations > 100)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.refine_iterations (",
                 c.refine_iterations, ") must be in [0, 100]");
  if (!(c.gptq.damp > 0.0f && c.gptq.damp < 1.0f) || c.gptq.block <= 0 ||
      !(c.whiten_damp > 0.0f && c.whiten_damp < 1.0f))
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": config.gptq.damp and config.whiten_damp must be in (0, 1) and "
                 "config.gptq.block > 0");
  if (c.rotate && c.gptq.enabled)
    return error(StatusCode::kErrorNotSupported, kFn,
                 ": config.rotate with config.gptq.enabled is not implemented (GPTQ's Hessian "
                 "would have to be rotated too); use one of them");
  if (c.selection.holdout_stride < 2 || c.selection.holdout_stride > 1024)
    return error(StatusCode::kErrorInvalidArgument, kFn, ": config.selection.holdout_stride (",
                 c.selection.holdout_stride, ") must be in [2, 1024]");
  if (c.smooth_search.max_scored_outputs < 0)
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": config.smooth_search.max_scored_outputs must be >= 0");
  return Status::Ok();
}

// First non-finite element of a matrix, as an error naming it; Ok when all are finite.
Status check_finite(const char* name, const MatrixRM& m) {
  if (m.allFinite()) return Status::Ok();
  for (int64_t i = 0; i < m.rows(); ++i)
    for (int64_t j = 0; j < m.cols(); ++j)
      if (!std::isfinite(m(i, j)))
        return error(StatusCode::kErrorNonFinite, "quantize_linear: ", name, "(", i, ", ", j,
                     ") is ", m(i, j), "; weights and bias must be finite");
  return Status::Ok();
}

std::vector<std::pair<float, float>> default_candidates() {
  std::vector<std::pair<float, float>> c = {{0.0f, 0.0f}};
  for (int i = 1; i <= 19; ++i) {
    const float a = 0.05f * static_cast<float>(i);
    c.push_back({a, 0.0f});
    c.push_back({a, 1.0f - a});
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Building a candidate

void set_smoothing(const Problem& p, float alpha, float beta, Candidate* c) {
  c->alpha = alpha;
  c->beta = beta;
  c->smooth = detail::smoothing_factors(alpha != 0.0f ? p.stats->absmax().data() : nullptr,
                                        p.amax_w.data(), p.k, alpha, beta, p.cfg.storage);
  c->s.resize(p.k);
  for (int64_t j = 0; j < p.k; ++j) c->s[j] = bits16_to_float(c->smooth[j], p.cfg.storage);
  c->w_hat = (alpha != 0.0f || beta != 0.0f) ? MatrixRM(p.w * c->s.asDiagonal()) : p.w;
  c->t_act = p.cfg.format == Format::kNvfp4 ? p.cfg.act_tensor_scale : 1.0f;
  if (p.cfg.format == Format::kNvfp4 && p.cfg.calibrate_act_tensor_scale && p.stats != nullptr &&
      p.stats->rows_observed() > 0) {
    float amax = 0.0f;
    for (int64_t j = 0; j < p.k; ++j) amax = std::max(amax, p.stats->absmax()[j] / c->s[j]);
    if (amax > 0.0f && std::isfinite(amax))  // clamped to validate()'s range
      c->t_act = std::max(amax / (6.0f * 448.0f), detail::kMinTensorScale);
  }
}

// The branch fitted to `target` (N, K, smoothed space), stored in 16 bits, and the residual
// W_hat - branch. Plain: truncated SVD of target. Whitened: the split minimising
// ||(T_raw - L_raw) C||_F with T_raw = target diag(1/s) and C C^T = X^T X + damping, i.e.
// L_raw = SVD_r(T_raw C) C^-1; smoothing cancels (chol(D G D) = D chol(G)), so one factor serves
// every candidate.
Status set_branch(const Problem& p, bool whiten, const MatrixRM& target, Candidate* c) {
  const int r = p.cfg.rank;
  const DType st = p.cfg.storage;
  if (r == 0) {
    c->lora_up.clear();
    c->lora_down.clear();
    c->residual = c->w_hat;
    return Status::Ok();
  }
  MatrixRM up, down_raw;  // (N, r), (r, K): branch = x down_raw^T up^T on the raw x
  if (whiten) {
    const MatrixRM t_raw = target * c->s.cwiseInverse().asDiagonal();
    const detail::LowRank lr = detail::truncated_svd(t_raw, r, p.cfg.svd, &p.chol);
    up = lr.up;
    // down_raw = V_r^T C^-1: solve C^T Z = V_r (Z = down_raw^T) with the triangular factor.
    const Eigen::MatrixXd v = lr.down.transpose().cast<double>();
    const Eigen::MatrixXd z =
        p.chol.cast<double>().transpose().triangularView<Eigen::Upper>().solve(v);
    down_raw = z.transpose().cast<float>();
  } else {
    const detail::LowRank lr = detail::truncated_svd(target, r, p.cfg.svd);
    up = lr.up;
    down_raw = lr.down * c->s.cwiseInverse().asDiagonal();
  }
  c->lora_up.resize(static_cast<size_t>(p.n * r));
  c->lora_down.resize(static_cast<size_t>(p.k * r));
  MatrixRM up_q(p.n, r), down_eff(r, p.k);
  for (int64_t i = 0; i < p.n; ++i)
    for (int j = 0; j < r; ++j) {
      const uint16_t b = float_to_bits16(up(i, j), st);
      c->lora_up[i * r + j] = b;
      up_q(i, j) = bits16_to_float(b, st);
    }
  for (int64_t kk = 0; kk < p.k; ++kk)
    for (int j = 0; j < r; ++j) {
      const uint16_t b = float_to_bits16(down_raw(j, kk), st);
      c->lora_down[kk * r + j] = b;
      down_eff(j, kk) = bits16_to_float(b, st) * c->s[kk];
    }
  if (!up_q.allFinite() || !down_eff.allFinite())
    return error(StatusCode::kErrorInvalidArgument, "quantize_linear: the low-rank branch (",
                 up_q.allFinite() ? "lora_down" : "lora_up", ") overflows config.storage (",
                 dtype_name(st), "); use bf16 storage or scale the weights");
  c->residual = c->w_hat;
  detail::gemm_rows(up_q, down_eff, &c->residual, /*subtract=*/true);
  return Status::Ok();
}

struct ResidualOptions {
  Eigen::VectorXd h_diag;  // diag(Xh^T Xh), empty if none
  Eigen::MatrixXd hessian;  // Xh^T Xh, empty unless GPTQ
};

ResidualOptions residual_options(const Problem& p, const Candidate& c, bool with_hessian) {
  ResidualOptions o;
  if (p.gram_diag.size() == 0) return o;
  if (c.rotate) {
    // diag of the rotated Hessian H^T Xh^T Xh H: sums of squares of the rotated smoothed rows
    // (GPTQ is not combined with rotation, so the full matrix is never needed here).
    MatrixRM xr = p.x * c.s.cwiseInverse().asDiagonal();
    rotate_groups(&xr, group_size(p.cfg.format));
    o.h_diag = xr.cast<double>().colwise().squaredNorm().transpose();
    return o;
  }
  const Eigen::VectorXd inv_s = c.s.cast<double>().cwiseInverse();
  o.h_diag = p.gram_diag.cwiseProduct(inv_s).cwiseProduct(inv_s);
  if (with_hessian && p.gram.size() > 0) o.hessian = inv_s.asDiagonal() * p.gram * inv_s.asDiagonal();
  return o;
}

detail::WeightQuantOptions weight_options(const Problem& p, const Plan& plan,
                                          const ResidualOptions& ro, bool gptq) {
  detail::WeightQuantOptions o;
  o.clip_search = plan.clip;
  // Unweighted clipping ignores diag(H): plain squared error per group.
  o.h_diag = plan.clip_weighted && ro.h_diag.size() ? &ro.h_diag : nullptr;
  o.gptq = p.cfg.gptq;
  o.gptq.enabled = gptq;
  o.hessian = gptq && ro.hessian.size() ? &ro.hessian : nullptr;
  return o;
}

// Output MSE on rows x (reference y_ref) over the scored output channels, for the candidate's
// branch and a quantized residual of those channels.
double score(const Problem& p, const Candidate& c, const detail::QuantizedWeight& qsub,
             const MatrixRM& x, const MatrixRM& y_ref) {
  const int64_t s_rows = x.rows(), ns = static_cast<int64_t>(p.scored.size());
  const int r = p.cfg.rank;
  const Format f = p.cfg.format;
  // Activations through the real quantizer, dequantized: (S, K).
  std::vector<float> inv_s(static_cast<size_t>(p.k));
  for (int64_t j = 0; j < p.k; ++j) inv_s[j] = 1.0f / c.s[j];
  QuantizedActivations qa;
  const Status st = quantize_activations(f, MatrixView<const float>(x.data(), s_rows, p.k),
                                         inv_s.data(), c.t_act, &qa,
                                         c.rotate ? Rotation::kBlockHadamard : Rotation::kNone);
  if (!st.ok()) return INFINITY;
  MatrixRM a(s_rows, p.k);
  const int gs = group_size(f);
  const float t = f == Format::kNvfp4 ? c.t_act : 1.0f;
  for (int64_t m = 0; m < s_rows; ++m)
    for (int64_t j = 0; j < p.k; ++j) a(m, j) = qa.code_value(m, j) * (qa.scale(m, j / gs) * t);
  const MatrixRM wq = detail::dequantize(qsub, f, ns, p.k);
  MatrixRM y;
  detail::gemm_rows(a, wq.transpose(), &y);
  if (r > 0) {
    MatrixRM down(p.k, r), up(ns, r);
    for (int64_t i = 0; i < p.k * r; ++i) down.data()[i] = bits16_to_float(c.lora_down[i], p.cfg.storage);
    for (int64_t i = 0; i < ns; ++i)
      for (int j = 0; j < r; ++j) up(i, j) = bits16_to_float(c.lora_up[p.scored[i] * r + j], p.cfg.storage);
    MatrixRM lora, branch;
    detail::gemm_rows(x, down, &lora);
    detail::gemm_rows(lora, up.transpose(), &branch);
    y += branch;
  }
  return (y - y_ref).cast<double>().squaredNorm() / static_cast<double>(y.size());
}
double score(const Problem& p, const Candidate& c, const detail::QuantizedWeight& qsub) {
  return score(p, c, qsub, p.x, p.y_ref);
}

MatrixRM scored_rows(const Problem& p, const MatrixRM& m) {
  MatrixRM out(static_cast<int64_t>(p.scored.size()), m.cols());
  for (size_t i = 0; i < p.scored.size(); ++i) out.row(static_cast<int64_t>(i)) = m.row(p.scored[i]);
  return out;
}

// Scores a built candidate with round-to-nearest (+ the plan's clipping) on the scored channels,
// on the fitting rows or (hold) the held-out rows.
Result<double> score_rtn(const Problem& p, const Plan& plan, const Candidate& c, bool hold = false) {
  const ResidualOptions ro = residual_options(p, c, false);
  const MatrixRM rq = rotated_if(c, c.residual, p.cfg.format);
  const float t = p.cfg.format == Format::kNvfp4 ? detail::nvfp4_tensor_scale(rq) : 1.0f;
  Result<detail::QuantizedWeight> q = detail::quantize_weight(
      scored_rows(p, rq), p.cfg.format, t, weight_options(p, plan, ro, false));
  if (!q.ok()) return q.status();
  return hold ? score(p, c, *q, p.x_hold, p.y_hold) : score(p, c, *q);
}

Status build_problem(ConstMatrixRef W, const ActivationStats* stats, const QuantConfig& cfg,
                     Problem* p) {
  p->cfg = cfg;
  p->n = W.rows;
  p->k = W.cols;
  p->w = detail::to_eigen(W);
  SVDQ_RETURN_IF_ERROR(check_finite("W", p->w));
  p->amax_w = detail::column_absmax(p->w);
  p->stats = stats;
  const bool has_rows = stats != nullptr && stats->sampled_rows() > 0;
  if (needs_rows(cfg) && !has_rows)
    return error(StatusCode::kErrorInvalidArgument, "quantize_linear: stats has no sampled rows, "
                 "but the smoothing search, refinement, whitening and GPTQ score or fit on them "
                 "(CalibrationOptions::max_rows > 0)");
  if (has_rows) {
    p->x = Eigen::Map<const MatrixRM>(stats->samples().data(), stats->sampled_rows(), p->k);
    // Scored output channels: all, or a seeded subset (sorted) of max_scored_outputs.
    const int64_t cap = cfg.smooth_search.max_scored_outputs;
    p->scored.resize(static_cast<size_t>(p->n));
    std::iota(p->scored.begin(), p->scored.end(), 0);
    if (cap > 0 && cap < p->n) {
      uint64_t state = 0x5c07edULL;
      for (int64_t i = 0; i < cap; ++i) {
        const int64_t j = i + static_cast<int64_t>(detail::splitmix64(state) % static_cast<uint64_t>(p->n - i));
        std::swap(p->scored[i], p->scored[j]);
      }
      p->scored.resize(static_cast<size_t>(cap));
      std::sort(p->scored.begin(), p->scored.end());
    }
    const int64_t stride = cfg.selection.holdout_stride, rows = p->x.rows();
    if (cfg.selection.enabled && rows / stride >= 1 && rows - rows / stride >= 1) {
      // Deterministic split: sampled row i is held out when i % stride == stride - 1.
      const int64_t hold = rows / stride;
      MatrixRM fit(rows - hold, p->k);
      p->x_hold.resize(hold, p->k);
      for (int64_t i = 0, f = 0, h = 0; i < rows; ++i) {
        if (i % stride == stride - 1) {
          p->x_hold.row(h++) = p->x.row(i);
        } else {
          fit.row(f++) = p->x.row(i);
        }
      }
      p->x = std::move(fit);
    }
    const MatrixRM w_scored_t = scored_rows(*p, p->w).transpose();
    detail::gemm_rows(p->x, w_scored_t, &p->y_ref);
    if (p->x_hold.rows() > 0) detail::gemm_rows(p->x_hold, w_scored_t, &p->y_hold);
  }
  if (needs_gram_diag(cfg) && has_rows) {
    // With held-out rows the statistics come from the fitting rows only.
    static const std::vector<double> kNone;
    const std::vector<double>& g = p->x_hold.rows() > 0 ? kNone : stats->gram();
    if (needs_gram(cfg)) {
      if (!g.empty()) {
        p->gram = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
            g.data(), p->k, p->k);
      } else {
        const Eigen::MatrixXd xd = p->x.cast<double>();
        detail::gemm_rows(xd.transpose(), xd, &p->gram);
      }
      p->gram_diag = p->gram.diagonal();
    } else {
      // Only the diagonal: O(K) memory instead of the K x K matrix (issue 13, item 5).
      p->gram_diag.resize(p->k);
      const int64_t k = p->k, rows = p->x.rows();
      const bool from_stats = !g.empty();
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < k; ++j) {
        double acc = 0;
        if (from_stats) {
          acc = g[static_cast<size_t>(j * k + j)];
        } else {
          for (int64_t m = 0; m < rows; ++m) {
            const double v = p->x(m, j);
            acc += v * v;
          }
        }
        p->gram_diag[j] = acc;
      }
    }
  }
  if (cfg.whiten_lowrank && cfg.rank > 0) {
    Eigen::MatrixXd g = p->gram;
    const double mean_diag = g.diagonal().mean();
    g.diagonal().array() += static_cast<double>(cfg.whiten_damp) * (mean_diag > 0 ? mean_diag : 1.0);
    Eigen::LLT<Eigen::MatrixXd> llt(g);
    if (llt.info() != Eigen::Success)
      return error(StatusCode::kErrorInternal, "quantize_linear: the damped Gram matrix is not "
                   "positive definite");
    p->chol = llt.matrixL().toDenseMatrix().cast<float>();
  }
  return Status::Ok();
}

// What building a plan produced: the candidate (branch, residual), and the decisions.
struct Built {
  Candidate c;
  bool use_gptq = false;
  int kept_iters = 0;
  int scored = 0;  // smoothing candidates scored
  std::string notes;
};

// Builds a plan on the fitting rows: the best of `cands` (alpha, beta) (scored when score_all),
// then plan.refine iterations of the low-rank refinement, then the GPTQ decision.
Status build(const Problem& p, const Plan& plan, const std::vector<std::pair<float, float>>& cands,
             bool score_all, int step0, Built* out) {
  const QuantConfig& config = p.cfg;
  const int64_t n = p.n, k = p.k;
  const bool can_score = p.x.rows() > 0;
  const int total_steps = static_cast<int>(cands.size()) + plan.refine + 1;
  // 1. Smoothing: the given (alpha, beta), or the best-scoring candidate.
  Candidate& best = out->c;
  for (size_t i = 0; i < cands.size(); ++i) {
    Candidate c;
    c.rotate = plan.rotate;
    set_smoothing(p, cands[i].first, cands[i].second, &c);
    SVDQ_RETURN_IF_ERROR(set_branch(p, plan.whiten, c.w_hat, &c));
    if (score_all && can_score) {
      Result<double> sc = score_rtn(p, plan, c);
      if (!sc.ok()) return sc.status();
      c.score = *sc;
      ++out->scored;
    }
    if (i == 0 || c.score < best.score) best = std::move(c);
    if (config.progress && step0 >= 0)
      config.progress(step0 + static_cast<int>(i) + 1, total_steps,
                      detail::cat("smoothing (", cands[i].first, ", ", cands[i].second, ")"));
  }

  // 2. Iterative low-rank refinement: L_k = SVD_r(W_hat - Q(W_hat - L_{k-1})).
  if (config.rank > 0 && plan.refine > 0 && can_score) {
    const ResidualOptions ro = residual_options(p, best, false);
    for (int it = 1; it <= plan.refine; ++it) {
      const MatrixRM rq = rotated_if(best, best.residual, config.format);
      const float t = config.format == Format::kNvfp4 ? detail::nvfp4_tensor_scale(rq) : 1.0f;
      Result<detail::QuantizedWeight> q =
          detail::quantize_weight(rq, config.format, t, weight_options(p, plan, ro, false));
      if (!q.ok()) return q.status();
      // Q(R) in the unrotated space: the rotation is its own inverse.
      const MatrixRM target =
          best.w_hat - rotated_if(best, detail::dequantize(*q, config.format, n, k), config.format);
      // The new branch replaces best's in place (smoothing and W_hat stay); the old one is kept
      // aside and put back if the iterate does not score better.
      std::vector<uint16_t> prev_up = std::move(best.lora_up), prev_down = std::move(best.lora_down);
      MatrixRM prev_residual = std::move(best.residual);
      SVDQ_RETURN_IF_ERROR(set_branch(p, plan.whiten, target, &best));
      Result<double> sc = score_rtn(p, plan, best);
      if (!sc.ok()) return sc.status();
      if (config.progress && step0 >= 0)
        config.progress(step0 + static_cast<int>(cands.size()) + it, total_steps,
                        detail::cat("refinement ", it));
      if (!(*sc < best.score)) {
        best.lora_up = std::move(prev_up);
        best.lora_down = std::move(prev_down);
        best.residual = std::move(prev_residual);
        break;
      }
      best.score = *sc;
      out->kept_iters = it;
    }
  }

  // 3. GPTQ when asked and better than round-to-nearest on the fitting rows.
  if (plan.gptq && can_score) {
    const ResidualOptions ro = residual_options(p, best, true);
    const float t_w = config.format == Format::kNvfp4 ? detail::nvfp4_tensor_scale(best.residual) : 1.0f;
    Result<detail::QuantizedWeight> qg = detail::quantize_weight(
        scored_rows(p, best.residual), config.format, t_w, weight_options(p, plan, ro, true));
    if (!qg.ok()) return qg.status();
    const double gptq_score = score(p, best, *qg);
    out->use_gptq = gptq_score < best.score;
    if (out->use_gptq) {
      best.score = gptq_score;
    } else {
      out->notes += detail::cat("gptq scored ", gptq_score, " >= round-to-nearest ", best.score,
                                ": kept round-to-nearest; ");
    }
  }
  return Status::Ok();
}

// Output MSE of a built plan on the held-out rows (the fitting rows when none are held out).
Result<double> holdout_score(const Problem& p, const Plan& plan, const Built& b) {
  const ResidualOptions ro = residual_options(p, b.c, b.use_gptq);
  const MatrixRM rq = rotated_if(b.c, b.c.residual, p.cfg.format);
  const float t = p.cfg.format == Format::kNvfp4 ? detail::nvfp4_tensor_scale(rq) : 1.0f;
  Result<detail::QuantizedWeight> q = detail::quantize_weight(
      scored_rows(p, rq), p.cfg.format, t, weight_options(p, plan, ro, b.use_gptq));
  if (!q.ok()) return q.status();
  return p.x_hold.rows() > 0 ? score(p, b.c, *q, p.x_hold, p.y_hold) : score(p, b.c, *q);
}

// A name for a config's options (no selection): "svdquant", "data-free+clip", "search+refine+clip".
std::string config_recipe_name(const QuantConfig& c) {
  std::string name = c.smooth_search.enabled ? "search"
                     : (c.alpha == 0.0f && c.beta == 0.0f) ? "data-free"
                                                             : "svdquant";
  if (c.rank == 0) name += "(rank 0)";
  if (c.rotate) name += "+rotate";
  if (c.refine_iterations > 0 && c.rank > 0) name += "+refine";
  if (c.whiten_lowrank) name += "+whiten";
  if (c.clip_search) name += c.clip_weighted ? "+clip" : "+clip-unweighted";
  if (c.gptq.enabled) name += "+gptq";
  return name;
}

}  // namespace

// -------------------------------------------------------------------------------------------------

QuantConfig svdq_plus_config(QuantConfig base) {
  base.smooth_search.enabled = true;
  base.refine_iterations = 3;
  base.clip_search = true;
  base.selection.enabled = true;
  return base;
}

namespace {

Result<QuantizedLinear> quantize_linear_impl(ConstMatrixRef W, ConstMatrixRef bias,
                                             const ActivationStats* stats,
                                             const QuantConfig& config) {
  constexpr const char* kFn = "quantize_linear";
  const auto t0 = std::chrono::steady_clock::now();
  if (stats != nullptr)
    if (Status s = stats->valid(); !s.ok())
      return Status(s.code(), std::string(kFn) + ": stats: " + s.message());

  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "W", W));
  const int64_t n = W.rows, k = W.cols;
  if (n <= 0 || k <= 0)
    return error(StatusCode::kErrorShape, kFn, ": W must be non-empty (got ", n, " x ", k, ")");
  SVDQ_RETURN_IF_ERROR(check_config(config, n, k));
  const bool has_bias = bias.data != nullptr && !bias.empty();
  MatrixRM b;
  if (has_bias) {
    SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "bias", bias));
    if (!(bias.rows == 1 && bias.cols == n) && !(bias.cols == 1 && bias.rows == n))
      return error(StatusCode::kErrorShape, kFn, ": bias must be 1 x N or N x 1 with N = W.rows (",
                   n, "), got ", bias.rows, " x ", bias.cols);
    b = detail::to_eigen(bias).reshaped<Eigen::RowMajor>(1, n);
    SVDQ_RETURN_IF_ERROR(check_finite("bias", b));
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(bits16_to_float(float_to_bits16(b(0, i), config.storage), config.storage)))
        return error(StatusCode::kErrorInvalidArgument, kFn, ": bias(", i, ") = ", b(0, i),
                     " overflows config.storage (", dtype_name(config.storage), ")");
  }
  const bool search = config.smooth_search.enabled;
  const bool uses_stats_absmax = config.alpha != 0.0f || search ||
                                 (config.calibrate_act_tensor_scale && config.format == Format::kNvfp4);
  if (uses_stats_absmax) {
    if (stats == nullptr || stats->rows_observed() == 0)
      return error(StatusCode::kErrorInvalidArgument, kFn, ": stats is ",
                   stats == nullptr ? "null" : "empty",
                   " but config (alpha = ", config.alpha, search ? ", smoothing search" : "",
                   ") needs activation statistics; use alpha = beta = 0 for data-free");
    if (stats->channels() != k)
      return error(StatusCode::kErrorShape, kFn, ": stats.channels() (", stats->channels(),
                   ") must equal W.cols (", k, ")");
  } else if (stats != nullptr && stats->rows_observed() > 0 && stats->channels() != k) {
    return error(StatusCode::kErrorShape, kFn, ": stats.channels() (", stats->channels(),
                 ") must equal W.cols (", k, ")");
  }

  Problem p;
  SVDQ_RETURN_IF_ERROR(build_problem(W, stats, config, &p));

  // The config's own plan: every option it switches on.
  Plan full;
  full.alpha = config.alpha;
  full.beta = config.beta;
  full.search = search;
  full.refine = config.rank > 0 ? config.refine_iterations : 0;
  full.clip = config.clip_search;
  full.clip_weighted = config.clip_weighted;
  full.gptq = config.gptq.enabled;
  full.whiten = config.whiten_lowrank;
  full.rotate = config.rotate;
  std::vector<std::pair<float, float>> cands = {{config.alpha, config.beta}};
  if (search) cands = config.smooth_search.candidates.empty() ? default_candidates()
                                                              : config.smooth_search.candidates;
  const bool score_all = search || config.refine_iterations > 0 || config.gptq.enabled;

  Built chosen;
  Plan chosen_plan = full;
  QuantizedLinear::Info info;
  if (!config.selection.enabled) {
    SVDQ_RETURN_IF_ERROR(build(p, full, cands, score_all, 0, &chosen));
  } else {
    // 1. The smoothing search on the fitting rows, once: its pick is the "search" part.
    // With config.rotate the search runs twice, unrotated and rotated: each plan starts from the
    // pick made with its own 4-bit path.
    float sa = config.alpha, sb = config.beta, sa_rot = sa, sb_rot = sb;
    int scored = 0;
    if (search) {
      for (int rot = 0; rot < (config.rotate ? 2 : 1); ++rot) {
        Built s;
        Plan probe = full;
        probe.refine = 0;
        probe.gptq = false;
        probe.rotate = rot == 1;
        SVDQ_RETURN_IF_ERROR(build(p, probe, cands, true, 0, &s));
        (rot == 1 ? sa_rot : sa) = s.c.alpha;
        (rot == 1 ? sb_rot : sb) = s.c.beta;
        scored += s.scored;
      }
    }
    // 2. The plans, simplest first (ties keep the simpler): data-free, plain, each option alone,
    // then combinations; a plan equal to an earlier one is skipped.
    std::vector<Plan> plans;
    auto add = [&](Plan pl, bool from_search) {
      if (from_search) {
        pl.alpha = pl.rotate ? sa_rot : sa;
        pl.beta = pl.rotate ? sb_rot : sb;
      }
      std::string name = from_search ? "search" : (pl.alpha == 0.0f && pl.beta == 0.0f &&
                                                   !(config.alpha == 0.0f && config.beta == 0.0f))
                                                      ? "data-free"
                                                      : "svdquant";
      if (pl.rotate) name += "+rotate";
      if (pl.refine > 0) name += "+refine";
      if (pl.whiten) name += "+whiten";
      if (pl.clip) name += pl.clip_weighted ? "+clip" : "+clip-unweighted";
      if (pl.gptq) name += "+gptq";
      pl.name = name;
      pl.search = from_search;
      for (const Plan& q : plans)
        if (q.same_as(pl)) return;
      plans.push_back(pl);
    };
    Plan plain;
    plain.alpha = config.alpha;
    plain.beta = config.beta;
    Plan df;  // data-free: no smoothing
    add(df, false);
    add(plain, false);
    if (search) add(plain, true);
    if (config.rotate) {  // rotation alone, from each smoothing start
      Plan d = df, pl = plain;
      d.rotate = pl.rotate = true;
      add(d, false);
      add(pl, false);
      if (search) add(pl, true);
    }
    if (full.refine > 0) {
      Plan pl = plain;
      pl.refine = full.refine;
      add(pl, false);
    }
    if (full.whiten) {
      Plan pl = plain;
      pl.whiten = true;
      add(pl, false);
    }
    if (full.clip) {
      Plan pl = plain;
      pl.clip = true;
      pl.clip_weighted = true;
      add(pl, false);
      pl.clip_weighted = false;
      add(pl, false);
      Plan d = df;
      d.clip = true;
      d.clip_weighted = false;
      add(d, false);
    }
    if (full.gptq) {
      Plan pl = plain;
      pl.gptq = true;
      add(pl, false);
    }
    // Combinations: every option on, from each smoothing start, clipping weighted or not
    // (with config.rotate: unrotated, then rotated).
    for (int rot = 0; rot < (config.rotate ? 2 : 1); ++rot)
      for (int start = 0; start < 3; ++start) {
        if (start == 2 && !search) continue;
        Plan pl = full;
        pl.rotate = rot == 1;
        pl.alpha = start == 0 ? 0.0f : config.alpha;
        pl.beta = start == 0 ? 0.0f : config.beta;
        for (int w = 0; w < (full.clip ? 2 : 1); ++w) {
          pl.clip_weighted = full.clip ? w == 0 : full.clip_weighted;
          add(pl, start == 2);
        }
      }
    // 3. Each plan built on the fitting rows, scored on the held-out ones (or, with too few
    // sampled rows to split, on the same rows: said in the notes).
    const bool held = p.x_hold.rows() > 0;
    double best = INFINITY;
    for (size_t i = 0; i < plans.size(); ++i) {
      Built b;
      SVDQ_RETURN_IF_ERROR(build(p, plans[i], {{plans[i].alpha, plans[i].beta}},
                                 plans[i].refine > 0 || plans[i].gptq, -1, &b));
      Result<double> hs = holdout_score(p, plans[i], b);
      if (!hs.ok()) return hs.status();
      const double v = std::isfinite(*hs) ? *hs : -1.0;
      info.selection.push_back({plans[i].name, v});
      if (i == 0 || (std::isfinite(*hs) && *hs < best)) {
        best = *hs;
        chosen = std::move(b);
        chosen_plan = plans[i];
      }
      if (config.progress)
        config.progress(static_cast<int>(i) + 1, static_cast<int>(plans.size()) + 1,
                        detail::cat("recipe ", plans[i].name));
    }
    chosen.c.score = best;
    chosen.scored = scored + static_cast<int>(plans.size());
    info.holdout_rows = held ? p.x_hold.rows() : 0;
    if (!held)
      chosen.notes += detail::cat("selection: only ", p.x.rows(),
                                  " sampled rows, too few to hold any out: scored on the fitting rows; ");
  }

  // The chosen residual, quantized: GPTQ when the build kept it, else round-to-nearest.
  const bool use_gptq = chosen.use_gptq;
  const ResidualOptions ro = residual_options(p, chosen.c, use_gptq);
  const MatrixRM rq = rotated_if(chosen.c, chosen.c.residual, config.format);
  const float t_w = config.format == Format::kNvfp4 ? detail::nvfp4_tensor_scale(rq) : 1.0f;
  Result<detail::QuantizedWeight> qw = detail::quantize_weight(
      rq, config.format, t_w, weight_options(p, chosen_plan, ro, use_gptq));
  if (!qw.ok()) return qw.status();
  if (config.progress) config.progress(1, 1, "residual quantized");

  Candidate& best = chosen.c;
  QuantizedLinear out;
  out.format = config.format;
  out.storage = config.storage;
  out.in_features = k;
  out.out_features = n;
  out.rank = config.rank;
  out.group = group_size(config.format);
  out.smooth = std::move(best.smooth);
  out.lora_down = std::move(best.lora_down);
  out.lora_up = std::move(best.lora_up);
  out.qweight = std::move(qw->packed);
  out.wscales = std::move(qw->scales);
  out.wtscale = qw->tensor_scale;
  out.act_tensor_scale = config.format == Format::kNvfp4 ? best.t_act : 1.0f;
  out.rotation = best.rotate ? Rotation::kBlockHadamard : Rotation::kNone;
  if (has_bias) {
    out.bias.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.bias[i] = float_to_bits16(b(0, i), config.storage);
  }
  out.info = std::move(info);
  out.info.alpha = best.alpha;
  out.info.beta = best.beta;
  out.info.svd = config.svd.method;
  out.info.weight_norm = best.w_hat.cast<double>().norm();
  out.info.residual_norm = best.residual.cast<double>().norm();
  out.info.score = std::isfinite(best.score) ? best.score : -1.0;
  out.info.candidates_scored = chosen.scored;
  out.info.refine_iterations = chosen.kept_iters;
  if (use_gptq) chosen.notes += "gptq; ";
  out.info.notes = chosen.notes;
  out.info.recipe = config.selection.enabled ? chosen_plan.name : config_recipe_name(config);
  out.info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

Result<LowRankFactors> factorize_low_rank_impl(ConstMatrixRef W, const ActivationStats* stats,
                                               int rank, bool whitened, const SvdOptions& svd) {
  constexpr const char* kFn = "factorize_low_rank";
  if (stats != nullptr)
    if (Status s = stats->valid(); !s.ok())
      return Status(s.code(), std::string(kFn) + ": stats: " + s.message());
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "W", W));
  if (W.rows <= 0 || W.cols <= 0)
    return error(StatusCode::kErrorShape, kFn, ": W must be non-empty");
  if (rank < 1 || rank > std::min(W.rows, W.cols))
    return error(StatusCode::kErrorShape, kFn, ": rank (", rank, ") must be in [1, min(N, K) = ",
                 std::min(W.rows, W.cols), "]");
  QuantConfig cfg;
  cfg.rank = rank;
  cfg.alpha = cfg.beta = 0.0f;
  cfg.svd = svd;
  cfg.whiten_lowrank = whitened;
  cfg.smooth_search.max_scored_outputs = 0;
  if (whitened && (stats == nullptr || stats->channels() != W.cols))
    return error(StatusCode::kErrorInvalidArgument, kFn,
                 ": whitened needs stats with W.cols channels and sampled rows");
  Problem p;
  SVDQ_RETURN_IF_ERROR(build_problem(W, whitened ? stats : nullptr, cfg, &p));
  Candidate c;
  set_smoothing(p, 0.0f, 0.0f, &c);
  MatrixRM up, down;
  if (whitened) {
    const detail::LowRank lr = detail::truncated_svd(p.w, rank, svd, &p.chol);
    const Eigen::MatrixXd z = p.chol.cast<double>().transpose().triangularView<Eigen::Upper>().solve(
        lr.down.transpose().cast<double>());
    up = lr.up;
    down = z.transpose().cast<float>();
  } else {
    const detail::LowRank lr = detail::truncated_svd(p.w, rank, svd);
    up = lr.up;
    down = lr.down;
  }
  LowRankFactors out;
  out.in_features = W.cols;
  out.out_features = W.rows;
  out.rank = rank;
  out.up.assign(up.data(), up.data() + up.size());
  out.down.assign(down.data(), down.data() + down.size());
  return out;
}

}  // namespace

Result<QuantizedLinear> quantize_linear(ConstMatrixRef W, ConstMatrixRef bias,
                                        const ActivationStats* stats, const QuantConfig& config) {
  return detail::guard_allocation<Result<QuantizedLinear>>(
      "quantize_linear", [&] { return quantize_linear_impl(W, bias, stats, config); });
}

Result<LowRankFactors> factorize_low_rank(ConstMatrixRef W, const ActivationStats* stats, int rank,
                                          bool whitened, const SvdOptions& svd) {
  return detail::guard_allocation<Result<LowRankFactors>>(
      "factorize_low_rank", [&] { return factorize_low_rank_impl(W, stats, rank, whitened, svd); });
}

}  // namespace svdq
