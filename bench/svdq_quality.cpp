// svdq_quality — the quality benchmark of the offline quantizer: for each layer and format, the
// relative output MSE and SQNR against the unquantized layer, on held-out rows, of the paper's
// recipes, each refinement alone on top of plain SVDQuant, and svdq-plus; plus the time per layer.
//
//   svdq_quality [--shape KxN ...] [--calib M] [--eval M] [--rank R] [--format int4|nvfp4|both]
//                [--csv FILE] [--methods a,b,...] [--decompose] [--rot-probe 1,16,64,128]
//                [--scale-probe] [--branch-probe e,...] [--ab A,B] [--gptq-damp D]
//                [--act-outliers N]
//
// --decompose and the probes (issue 13, docs/quality.md first section) split each method's
// held-out error into its weights-only and activations-only parts and simulate levers that are
// not in the library (larger rotation blocks, nvfp4 scale searches, a weighted branch) on the
// method's branch with the public codecs.
//
// Synthetic layers (svdq::synth) by default; --model DUMP.safetensors (tools/minilm.py dump) adds
// every linear layer of a real model (its .weight, .bias, .calib rows for calibration and .inputs
// rows, held out, for evaluation), and --save-dir writes each method's quantized model there for
// the end-to-end evaluation (tools/minilm.py eval).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <array>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

// --ab A,B: the smoothing of the "ab" methods (a fixed alpha, beta, e.g. the search's pick).
float g_ab_alpha = 0.65f, g_ab_beta = 0.35f;
// --decompose and --rot-probe (below).
float g_gptq_damp = 0.01f;  // --gptq-damp: the "ab...gptq" methods' damping (fraction of mean diag)
bool g_decompose = false;
std::vector<int> g_probe;
std::vector<double> g_branch_probe;

struct Method {
  std::string name;
  std::function<svdq::QuantConfig(svdq::QuantConfig)> make;  // from the plain SVDQuant config
};

std::vector<Method> all_methods() {
  using svdq::QuantConfig;
  using svdq::Recipe;
  return {
      {"data-free", [](QuantConfig c) { c.alpha = c.beta = 0.0f; return c; }},
      {"df+clip-unw", [](QuantConfig c) { c.alpha = c.beta = 0.0f; c.clip_search = true; c.clip_weighted = false; return c; }},
      {"+clip-unw", [](QuantConfig c) { c.clip_search = true; c.clip_weighted = false; return c; }},
      {"plus-nosel", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.selection.enabled = false; c.rotate = false; return c; }},
      {"naive", [](QuantConfig c) { return svdq::recipe_config(Recipe::kNaive, c); }},
      {"smooth", [](QuantConfig c) { return svdq::recipe_config(Recipe::kSmoothOnly, c); }},
      {"lowrank", [](QuantConfig c) { return svdq::recipe_config(Recipe::kLowRankOnly, c); }},
      {"svdquant", [](QuantConfig c) { return c; }},
      {"+search", [](QuantConfig c) { c.smooth_search.enabled = true; return c; }},
      {"+refine", [](QuantConfig c) { c.refine_iterations = 3; return c; }},
      {"+whiten", [](QuantConfig c) { c.whiten_lowrank = true; return c; }},
      {"+gptq", [](QuantConfig c) { c.gptq.enabled = true; return c; }},
      {"+clip", [](QuantConfig c) { c.clip_search = true; return c; }},
      {"+t_act", [](QuantConfig c) { c.calibrate_act_tensor_scale = true; return c; }},
      {"svdq-plus", [](QuantConfig c) { return svdq::svdq_plus_config(c); }},
      // svdq-plus without rotated recipes (the default before issue 13 turned them on for int4).
      {"plus-norot", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.rotate = false; return c; }},
      {"plus+gptq", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.gptq.enabled = true; c.rotate = false; return c; }},
      // Block-Hadamard rotation (qrot, issue 13 item 2): alone, with each start, and in svdq-plus.
      {"df+rotate", [](QuantConfig c) { c.alpha = c.beta = 0.0f; c.rotate = true; return c; }},
      {"+rotate", [](QuantConfig c) { c.rotate = true; return c; }},
      {"+rotate+refine", [](QuantConfig c) { c.rotate = true; c.refine_iterations = 3; return c; }},
      {"+rotate+clip-unw", [](QuantConfig c) { c.rotate = true; c.clip_search = true; c.clip_weighted = false; return c; }},
      {"plus-nosel+rot", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.selection.enabled = false; c.rotate = true; return c; }},
      {"plus+rotate", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.rotate = true; return c; }},
      // The alternating whitened branch: L_k = whitened SVD_r(W_hat - Q(W_hat - L_{k-1})).
      {"+whiten+refine", [](QuantConfig c) { c.whiten_lowrank = true; c.refine_iterations = 3; return c; }},
      {"plus+rot+whiten", [](QuantConfig c) { c = svdq::svdq_plus_config(c); c.rotate = true; c.whiten_lowrank = true; return c; }},
      {"+rotate+whiten+refine", [](QuantConfig c) { c.rotate = true; c.whiten_lowrank = true; c.refine_iterations = 3; return c; }},
      // A fixed smoothing (--ab), e.g. the search's pick, with the refinements: the chosen recipe
      // rebuilt without the search and the selection (for the decomposition).
      {"ab", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; return c; }},
      {"ab+refine", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; c.refine_iterations = 3; return c; }},
      {"ab+refine+clip", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; c.refine_iterations = 3; c.clip_search = true; return c; }},
      {"ab+gptq", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; c.gptq.enabled = true; c.gptq.damp = g_gptq_damp; return c; }},
      {"ab+refine+clip+gptq", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; c.refine_iterations = 3; c.clip_search = true; c.gptq.enabled = true; c.gptq.damp = g_gptq_damp; return c; }},
      {"ab+whiten+refine", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; c.whiten_lowrank = true; c.refine_iterations = 3; return c; }},
      {"ab+whiten+refine+clip", [](QuantConfig c) { c.alpha = g_ab_alpha; c.beta = g_ab_beta; c.whiten_lowrank = true; c.refine_iterations = 3; c.clip_search = true; return c; }},
  };
}

// Quantized layers per (format, method), for --save-dir.
using Saved = std::map<std::string, std::vector<std::pair<std::string, svdq::QuantizedLinear>>>;

struct Result {
  std::string layer, format, method;
  double rel_mse, sqnr, seconds;
  float alpha, beta;
  std::string notes, recipe;
};

// ---------------------------------------------------------------------------------------------
// Error decomposition (--decompose) and the rotation-block probe (--rot-probe), issue 13.
//
// The 4-bit path of a layer computes Q(xh) Q(R)^T for xh = x / s (rotated when the layer rotates)
// and R = W_hat - branch; the branch is exact up to its 16-bit storage, which R absorbs. Its error
// against xh R^T splits into
//   e_w    = xh (Q(R) - R)^T            the weights quantized alone (activations exact),
//   e_a    = (Q(xh) - xh) R^T           the activations quantized alone,
//   e_both = e_a + Q(xh) (Q(R) - R)^T   both (the layer's main-path error),
// each reported as ||e||^2 / ||y||^2 over the evaluation rows (y = x W^T + b in double, the
// relMSE denominator), and res = ||xh R^T||^2 / ||y||^2, the share of the output the 4-bit path
// carries. Computed in double (dense_forward) from the layer's stored bits.

// Normalised Walsh-Hadamard on every block of b floats of a row of len floats (b a power of 2).
// b = 16 and 64 use the contract's butterfly (svdq::hadamard_transform), bit for bit; other b
// the same butterfly order with the scale 1/sqrt(b) in fp32 (a prototype: no contract exists).
void rotate_blocks(float* row, int64_t len, int b) {
  if (b <= 1) return;
  for (int64_t o = 0; o + b <= len; o += b) {
    float* v = row + o;
    if (b == 16 || b == 64 || b == 256) {
      svdq::hadamard_transform(v, b);
      continue;
    }
    for (int h = 1; h < b; h *= 2)
      for (int i = 0; i < b; ++i)
        if ((i & h) == 0) {
          const float a = v[i], c = v[i + h];
          v[i] = a + c;
          v[i + h] = a - c;
        }
    const float sc = static_cast<float>(1.0 / std::sqrt(static_cast<double>(b)));
    for (int i = 0; i < b; ++i) v[i] *= sc;
  }
}

// Sum of squares of a double vector.
double sumsq(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return s;
}

struct Parts {
  double w = 0, a = 0, both = 0, res = 0;  // relative to ||y||^2
};

// Parts of the error of a 4-bit path: xt (M x K) the (rotated) smoothed rows, rt (N x K) the
// (rotated) unquantized residual, rq (N x K) its quantized value, dq (M x K) Q(xt) dequantized.
Parts decompose_parts(const std::vector<float>& xt, const std::vector<float>& rt,
                      const std::vector<float>& rq, const std::vector<float>& dq, int64_t m,
                      int64_t n, int64_t k, double ref2) {
  using namespace svdq;
  std::vector<float> d(rq.size()), dx(xt.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = rq[i] - rt[i];
  for (size_t i = 0; i < dx.size(); ++i) dx[i] = dq[i] - xt[i];
  auto gemm = [&](const std::vector<float>& a, const std::vector<float>& b) {
    std::vector<double> y;
    (void)dense_forward(MatrixView<const float>(a.data(), m, k), MatrixView<const float>(b.data(), n, k),
                        ConstMatrixRef(), &y);
    return y;
  };
  Parts p;
  p.w = sumsq(gemm(xt, d)) / ref2;
  std::vector<double> ea = gemm(dx, rt);
  p.a = sumsq(ea) / ref2;
  const std::vector<double> eq = gemm(dq, d);
  for (size_t i = 0; i < ea.size(); ++i) ea[i] += eq[i];
  p.both = sumsq(ea) / ref2;
  p.res = sumsq(gemm(xt, rt)) / ref2;
  return p;
}

// Q(xt) dequantized by the activation contract (xt already smoothed and rotated).
std::vector<float> dequantized_acts(svdq::Format f, const std::vector<float>& xt, int64_t m,
                                    int64_t k, float t_act) {
  using namespace svdq;
  QuantizedActivations qa;
  std::vector<float> out(xt.size(), 0.0f);
  if (!quantize_activations(f, MatrixView<const float>(xt.data(), m, k), nullptr, t_act, &qa).ok())
    return out;
  const int gs = group_size(f);
  const float t = f == Format::kNvfp4 ? t_act : 1.0f;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) out[i * k + j] = qa.code_value(i, j) * (qa.scale(i, j / gs) * t);
  return out;
}

// The weight contract's nvfp4 tensor scale t = amax / (6 * 448) of rt, at least 2^-126 (1 for an
// all-zero rt), and the absolute maximum of one group: the set-up both weight quantizers share.
float nvfp4_weight_tensor_scale(const std::vector<float>& rt) {
  float amax = 0;
  for (float v : rt) amax = std::max(amax, std::fabs(v));
  return amax > 0 ? std::max(amax / (6.0f * 448.0f), 0x1p-126f) : 1.0f;
}
float group_absmax(const float* w, int gs) {
  float a = 0;
  for (int e = 0; e < gs; ++e) a = std::max(a, std::fabs(w[e]));
  return a;
}

// Round-to-nearest weight quantization of rt (N x K) by the weight contract (docs/formats.md §2),
// dequantized: nvfp4 t = amax / (6 * 448), scale_g = E4M3(amax_g / 6 / t); int4 fp16(amax_g / 7).
std::vector<float> rtn_weights(svdq::Format f, const std::vector<float>& rt, int64_t n, int64_t k) {
  using namespace svdq;
  const int gs = group_size(f);
  const float t = f == Format::kNvfp4 ? nvfp4_weight_tensor_scale(rt) : 1.0f;
  std::vector<float> out(rt.size(), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < k / gs; ++g) {
      const float* w = rt.data() + i * k + g * gs;
      const float a = group_absmax(w, gs);
      const float sc = f == Format::kNvfp4
                           ? decode_e4m3(encode_e4m3(a / 6.0f / t)) * t
                           : bits16_to_float(float_to_bits16(a / 7.0f, DType::kF16), DType::kF16);
      if (sc == 0.0f) continue;
      for (int e = 0; e < gs; ++e)
        out[i * k + g * gs + e] =
            (f == Format::kNvfp4 ? decode_e2m1(encode_e2m1(w[e] / sc))
                                 : static_cast<float>(decode_int4(encode_int4(w[e] / sc)))) * sc;
    }
  return out;
}

// A layer's smoothed evaluation rows (xh = x * (1/s), fp32 as the contract) and its unquantized
// residual R = W diag(s) - up (diag(s) down)^T (double, rounded to fp32).
void smoothed_problem(const svdq::QuantizedLinear& q, const std::vector<float>& w,
                      const std::vector<float>& x, int64_t m, std::vector<float>* xh,
                      std::vector<float>* r) {
  using namespace svdq;
  const int64_t n = q.out_features, k = q.in_features;
  const int rk = q.rank;
  const std::vector<float> inv_s = q.inverse_smooth();
  xh->resize(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) (*xh)[i * k + j] = x[i * k + j] * inv_s[j];
  std::vector<double> s(static_cast<size_t>(k)), down(static_cast<size_t>(k * rk)), up(static_cast<size_t>(n * rk));
  for (int64_t j = 0; j < k; ++j) s[j] = bits16_to_float(q.smooth[j], q.storage);
  for (size_t i = 0; i < down.size(); ++i) down[i] = bits16_to_float(q.lora_down[i], q.storage);
  for (size_t i = 0; i < up.size(); ++i) up[i] = bits16_to_float(q.lora_up[i], q.storage);
  r->resize(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double b = 0;
      for (int c = 0; c < rk; ++c) b += up[i * rk + c] * down[j * rk + c];
      (*r)[i * k + j] = static_cast<float>(s[j] * (static_cast<double>(w[i * k + j]) - b));
    }
}

// Prototype (--scale-probe), nvfp4 only: the per-group scale chosen by search instead of
// amax / 6. Weights (offline, no runtime change): every E4M3 code from `down` codes below to
// `up` codes above the round-to-nearest one, the least squared group error (weighted by h_j when
// h is not null) kept. Activations (a runtime change: the kernel would have to do it): per group,
// the scale mapping amax to 6 or amax to 4 ("four over six"), the smaller group error kept.
std::vector<float> searched_weights(const std::vector<float>& rt, int64_t n, int64_t k, int down, int up,
                                    const std::vector<double>* h) {
  using namespace svdq;
  const int gs = 16;
  const float t = nvfp4_weight_tensor_scale(rt);
  std::vector<float> out(rt.size(), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < k / gs; ++g) {
      const float* w = rt.data() + i * k + g * gs;
      const float a = group_absmax(w, gs);
      const int c0 = encode_e4m3(a / 6.0f / t);
      double best = INFINITY;
      for (int c = std::max(1, c0 - down); c <= std::min(0x7E, c0 + up); ++c) {
        const float sc = decode_e4m3(static_cast<uint8_t>(c)) * t;
        if (!(sc > 0)) continue;
        double err = 0;
        float vals[16];
        for (int e = 0; e < gs; ++e) {
          vals[e] = decode_e2m1(encode_e2m1(w[e] / sc)) * sc;
          const double d = static_cast<double>(w[e]) - vals[e];
          err += (h ? (*h)[g * gs + e] : 1.0) * d * d;
        }
        if (err < best) {
          best = err;
          std::copy(vals, vals + gs, out.begin() + i * k + g * gs);
        }
      }
    }
  return out;
}
std::vector<float> four_over_six_acts(const std::vector<float>& xt, int64_t m, int64_t k) {
  using namespace svdq;
  const int gs = 16;
  std::vector<float> out(xt.size(), 0.0f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t g = 0; g < k / gs; ++g) {
      const float* x = xt.data() + i * k + g * gs;
      const float a = group_absmax(x, gs);
      double best = INFINITY;
      for (float top : {6.0f, 4.0f}) {
        const float d = decode_e4m3(encode_e4m3(a / top));
        if (!(d > 0)) continue;
        const float inv = 1.0f / d;
        float vals[16];
        double err = 0;
        for (int e = 0; e < gs; ++e) {
          vals[e] = decode_e2m1(encode_e2m1(x[e] * inv)) * d;
          err += (static_cast<double>(x[e]) - vals[e]) * (static_cast<double>(x[e]) - vals[e]);
        }
        if (err < best) {
          best = err;
          std::copy(vals, vals + gs, out.begin() + i * k + g * gs);
        }
      }
    }
  return out;
}
bool g_scale_probe = false;

// The layer's own parts (its stored Q(R), its rotation) and, per probe block size b, the parts of
// round-to-nearest with a Walsh-Hadamard rotation of b channels on the same branch (b = 1: none).
void decompose_layer(const svdq::QuantizedLinear& q, const std::vector<float>& w,
                     const std::vector<float>& x, int64_t m, double ref2, const std::vector<int>& probe,
                     const std::string& tag) {
  using namespace svdq;
  const int64_t n = q.out_features, k = q.in_features;
  const int gs = group_size(q.format);
  std::vector<float> xh, r;
  smoothed_problem(q, w, x, m, &xh, &r);
  {
    std::vector<float> xt = xh, rt = r, rq(r.size());
    const int b = q.rotation == Rotation::kBlockHadamard ? gs : 1;
    for (int64_t i = 0; i < m; ++i) rotate_blocks(xt.data() + i * k, k, b);
    for (int64_t i = 0; i < n; ++i) rotate_blocks(rt.data() + i * k, k, b);
    const float t = q.format == Format::kNvfp4 ? q.wtscale : 1.0f;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j)
        rq[i * k + j] = decode_code(q.format, packed_nibble(q.qweight.data() + i * (k / 2), j)) *
                        (q.wscale(i, j / gs) * t);
    const Parts p = decompose_parts(xt, rt, rq, dequantized_acts(q.format, xt, m, k, q.act_tensor_scale),
                                    m, n, k, ref2);
    std::fprintf(stderr, "    decompose %-34s both %.4e  W-only %.4e  A-only %.4e  res share %.4f\n",
                 tag.c_str(), p.both, p.w, p.a, p.res);
  }
  if (g_scale_probe && q.format == Format::kNvfp4 && q.rotation == Rotation::kNone) {
    // Unweighted (h = null): weighting by diag(xh^T xh) of the evaluation rows would peek at them.
    const std::vector<float> rq0 = rtn_weights(q.format, r, n, k);
    const std::vector<float> dq6 = dequantized_acts(q.format, xh, m, k, q.act_tensor_scale);
    const std::vector<float> dq46 = four_over_six_acts(xh, m, k);
    struct Variant {
      const char* name;
      int down, up;  // E4M3 codes searched below / above the round-to-nearest one (0, 0: RTN)
      bool four_over_six;
    };
    static const Variant variants[] = {
        {"RTN / act amax->6", 0, 0, false},
        {"W search down 4 codes (clip-like) / act 6", 4, 0, false},
        {"W search -4..+4 codes / act 6", 4, 4, false},
        {"W search up 4 codes / act 6", 0, 4, false},
        {"W search -4..+4 / act 4-or-6 (runtime change)", 4, 4, true},
    };
    for (const Variant& v : variants) {
      const std::vector<float> rq = v.down == 0 && v.up == 0 ? rq0 : searched_weights(r, n, k, v.down, v.up, nullptr);
      const Parts p = decompose_parts(xh, r, rq, v.four_over_six ? dq46 : dq6, m, n, k, ref2);
      std::fprintf(stderr, "    scale-probe %-30s %-46s both %.4e  W-only %.4e  A-only %.4e\n", tag.c_str(),
                   v.name, p.both, p.w, p.a);
    }
  }
  for (int b : probe) {
    if (b > 1 && (k % b != 0 || (b & (b - 1)) != 0)) continue;
    std::vector<float> xt = xh, rt = r;
    for (int64_t i = 0; i < m; ++i) rotate_blocks(xt.data() + i * k, k, b);
    for (int64_t i = 0; i < n; ++i) rotate_blocks(rt.data() + i * k, k, b);
    const Parts p = decompose_parts(xt, rt, rtn_weights(q.format, rt, n, k),
                                    dequantized_acts(q.format, xt, m, k, q.act_tensor_scale), m, n, k, ref2);
    std::fprintf(stderr, "    rot-probe %-28s b=%-4d both %.4e  W-only %.4e  A-only %.4e  (RTN)\n",
                 tag.c_str(), b, p.both, p.w, p.a);
  }
}

// ---------------------------------------------------------------------------------------------
// Prototype (--branch-probe): the low-rank branch fitted with per-channel weights d_j,
// L = P_r T with P_r the projector on the r leading left singular vectors of T diag(sqrt(d)),
// T = W_hat (iterate 0) or W_hat - Q(W_hat - L) (refinement, round-to-nearest). The main-path
// error (Q(xh) - xh) R^T + Q(xh)(Q(R) - R)^T has an activation part that is smallest when R
// is small on the channels whose activation quantization error is large: d_j = E(Q(xh)_j - xh_j)^2
// (+ e * E xh_j^2 for the weight part). d = 1 is the plain SVD. fp32 branch (not rounded to
// 16 bits), so the figures compare prototypes with each other, not with quantize_linear.

// Orthonormalises the l columns of y (rows x l, row-major double) in place (modified
// Gram-Schmidt, twice).
void orthonormalize_cols(std::vector<double>* y, int64_t rows, int l) {
  for (int pass = 0; pass < 2; ++pass)
    for (int c = 0; c < l; ++c) {
      for (int b = 0; b < c; ++b) {
        double dot = 0;
        for (int64_t i = 0; i < rows; ++i) dot += (*y)[i * l + b] * (*y)[i * l + c];
        for (int64_t i = 0; i < rows; ++i) (*y)[i * l + c] -= dot * (*y)[i * l + b];
      }
      double nrm = 0;
      for (int64_t i = 0; i < rows; ++i) nrm += (*y)[i * l + c] * (*y)[i * l + c];
      nrm = std::sqrt(nrm);
      for (int64_t i = 0; i < rows; ++i) (*y)[i * l + c] = nrm > 0 ? (*y)[i * l + c] / nrm : 0.0;
    }
}

// Eigenvectors of a symmetric l x l matrix (cyclic Jacobi), columns sorted by eigenvalue, largest
// first: returns V (l x l row-major).
std::vector<double> sym_eigvecs(std::vector<double> a, int l) {
  std::vector<double> v(static_cast<size_t>(l * l), 0.0);
  for (int i = 0; i < l; ++i) v[i * l + i] = 1;
  for (int sweep = 0; sweep < 60; ++sweep) {
    double off = 0;
    for (int i = 0; i < l; ++i)
      for (int j = i + 1; j < l; ++j) off += a[i * l + j] * a[i * l + j];
    if (off < 1e-30) break;
    for (int p = 0; p < l; ++p)
      for (int q = p + 1; q < l; ++q) {
        const double apq = a[p * l + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (a[q * l + q] - a[p * l + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < l; ++k) {  // A <- J^T A J
          const double akp = a[k * l + p], akq = a[k * l + q];
          a[k * l + p] = c * akp - s * akq;
          a[k * l + q] = s * akp + c * akq;
        }
        for (int k = 0; k < l; ++k) {
          const double apk = a[p * l + k], aqk = a[q * l + k];
          a[p * l + k] = c * apk - s * aqk;
          a[q * l + k] = s * apk + c * aqk;
        }
        for (int k = 0; k < l; ++k) {
          const double vkp = v[k * l + p], vkq = v[k * l + q];
          v[k * l + p] = c * vkp - s * vkq;
          v[k * l + q] = s * vkp + c * vkq;
        }
      }
  }
  std::vector<int> order(static_cast<size_t>(l));
  for (int i = 0; i < l; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int x, int y) { return a[x * l + x] > a[y * l + y]; });
  std::vector<double> out(v.size());
  for (int k = 0; k < l; ++k)
    for (int c = 0; c < l; ++c) out[k * l + c] = v[k * l + order[c]];
  return out;
}

// L = U U^T T with U the r leading left singular vectors of T diag(sqrt(d)) (randomized, l = r + 8,
// 2 power iterations, seeded). t: N x K float. Returns L (N x K float).
std::vector<float> weighted_branch(const std::vector<float>& t, const std::vector<double>& d, int64_t n,
                                   int64_t k, int r) {
  using namespace svdq;
  const int l = std::min<int64_t>(r + 8, std::min(n, k));
  std::vector<float> a(t.size()), at(t.size());  // A = T diag(sqrt d) and its transpose
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      a[i * k + j] = static_cast<float>(t[i * k + j] * std::sqrt(d[j]));
      at[j * n + i] = a[i * k + j];
    }
  uint64_t st = 12345;
  auto gauss = [&] {  // Box-Muller on splitmix64
    auto u = [&] {
      uint64_t z = (st += 0x9e3779b97f4a7c15ULL);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      return (((z ^ (z >> 31)) >> 11) + 0.5) * 0x1.0p-53;
    };
    return std::sqrt(-2 * std::log(u())) * std::cos(6.283185307179586 * u());
  };
  std::vector<float> omega_t(static_cast<size_t>(l * k));  // (l, K)
  for (auto& v : omega_t) v = static_cast<float>(gauss());
  auto mul = [&](const std::vector<float>& x, int64_t xr, const std::vector<float>& w, int64_t wr,
                 int64_t inner) {  // x (xr, inner) * w (wr, inner)^T -> (xr, wr) double
    std::vector<double> y;
    (void)dense_forward(MatrixView<const float>(x.data(), xr, inner), MatrixView<const float>(w.data(), wr, inner),
                        ConstMatrixRef(), &y);
    return y;
  };
  auto transpose_f = [](const std::vector<double>& y, int64_t rows, int cols) {  // (rows, cols) -> (cols, rows) float
    std::vector<float> o(y.size());
    for (int64_t i = 0; i < rows; ++i)
      for (int c = 0; c < cols; ++c) o[c * rows + i] = static_cast<float>(y[i * cols + c]);
    return o;
  };
  std::vector<double> y = mul(a, n, omega_t, l, k);  // (N, l) = A Omega
  orthonormalize_cols(&y, n, l);
  for (int it = 0; it < 2; ++it) {
    std::vector<double> z = mul(at, k, transpose_f(y, n, l), l, n);  // (K, l) = A^T Q
    orthonormalize_cols(&z, k, l);
    y = mul(a, n, transpose_f(z, k, l), l, k);  // (N, l)
    orthonormalize_cols(&y, n, l);
  }
  // B = Q^T A (l, K); B B^T (l, l); its leading eigenvectors rotate Q to the left singular vectors.
  const std::vector<float> qt = transpose_f(y, n, l);  // (l, N)
  const std::vector<double> bt = mul(at, k, qt, l, n);  // (K, l) = A^T Q = B^T
  std::vector<double> bbt(static_cast<size_t>(l * l), 0.0);
  for (int64_t j = 0; j < k; ++j)
    for (int p = 0; p < l; ++p)
      for (int q = 0; q < l; ++q) bbt[p * l + q] += bt[j * l + p] * bt[j * l + q];
  const std::vector<double> v = sym_eigvecs(bbt, l);
  std::vector<float> u_t(static_cast<size_t>(r * n));  // (r, N): U^T, U = Q V[:, :r]
  for (int64_t i = 0; i < n; ++i)
    for (int c = 0; c < r; ++c) {
      double acc = 0;
      for (int p = 0; p < l; ++p) acc += y[i * l + p] * v[p * l + c];
      u_t[c * n + i] = static_cast<float>(acc);
    }
  // L = U (U^T T): C = U^T T (r, K), then L (N, K).
  std::vector<float> tt(t.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) tt[j * n + i] = t[i * k + j];
  const std::vector<double> ct = mul(tt, k, u_t, r, n);  // (K, r) = T^T U
  std::vector<float> lo(t.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double acc = 0;
      for (int c = 0; c < r; ++c) acc += static_cast<double>(u_t[c * n + i]) * ct[j * r + c];
      lo[i * k + j] = static_cast<float>(acc);
    }
  return lo;
}

// Runs the prototype for one layer's smoothing (that of q) with weights d_j = D_j + e * E xh_j^2
// for each e in es (e < 0: d = 1, the plain SVD), 3 refinement iterates, the best on the
// calibration rows kept; prints the held-out main-path error of each.
void branch_probe(const svdq::QuantizedLinear& q, const std::vector<float>& w, const std::vector<float>& calib,
                  int64_t m_calib, const std::vector<float>& x, int64_t m, double ref2,
                  const std::vector<double>& es, const std::string& tag) {
  using namespace svdq;
  const int64_t n = q.out_features, k = q.in_features;
  const std::vector<float> inv_s = q.inverse_smooth();
  auto smooth = [&](const std::vector<float>& rows, int64_t mr) {
    std::vector<float> o(rows.size());
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < k; ++j) o[i * k + j] = rows[i * k + j] * inv_s[j];
    return o;
  };
  const std::vector<float> xc = smooth(calib, m_calib), xe = smooth(x, m);
  const std::vector<float> dqc = dequantized_acts(q.format, xc, m_calib, k, q.act_tensor_scale);
  const std::vector<float> dqe = dequantized_acts(q.format, xe, m, k, q.act_tensor_scale);
  std::vector<double> dact(static_cast<size_t>(k), 0.0), pow2(static_cast<size_t>(k), 0.0);
  for (int64_t i = 0; i < m_calib; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const double e = dqc[i * k + j] - xc[i * k + j];
      dact[j] += e * e / m_calib;
      pow2[j] += static_cast<double>(xc[i * k + j]) * xc[i * k + j] / m_calib;
    }
  std::vector<float> w_hat(w.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j)
      w_hat[i * k + j] = w[i * k + j] * bits16_to_float(q.smooth[j], q.storage);
  // Calibration reference x W^T for the iterate choice (bias cancels).
  std::vector<double> yc;
  (void)dense_forward(MatrixView<const float>(calib.data(), m_calib, k), MatrixView<const float>(w.data(), n, k),
                      ConstMatrixRef(), &yc);
  const double refc = sumsq(yc);
  for (double e : es) {
    std::vector<double> d(static_cast<size_t>(k), 1.0);
    if (e >= 0)
      for (int64_t j = 0; j < k; ++j) d[j] = std::max(dact[j] + e * pow2[j], 1e-30);
    std::vector<float> t = w_hat;
    double best_c = INFINITY;
    Parts best_e;
    int best_it = -1;
    std::string line;
    for (int it = 0; it <= 3; ++it) {
      const std::vector<float> lo = weighted_branch(t, d, n, k, q.rank);
      std::vector<float> r(w_hat.size());
      for (size_t i = 0; i < r.size(); ++i) r[i] = w_hat[i] - lo[i];
      const std::vector<float> rq = rtn_weights(q.format, r, n, k);
      const Parts pc = decompose_parts(xc, r, rq, dqc, m_calib, n, k, refc);
      const Parts pe = decompose_parts(xe, r, rq, dqe, m, n, k, ref2);
      char buf[160];
      std::snprintf(buf, sizeof buf, " it%d calib %.4e eval %.4e (W %.3e A %.3e)", it, pc.both, pe.both, pe.w, pe.a);
      line += buf;
      if (pc.both < best_c) {
        best_c = pc.both;
        best_e = pe;
        best_it = it;
      } else {
        break;  // the pipeline's rule: stop at the first iterate that does not improve
      }
      for (size_t i = 0; i < t.size(); ++i) t[i] = w_hat[i] - rq[i];
    }
    std::fprintf(stderr, "    branch-probe %-30s e=%-8g kept it%d: eval both %.4e  W-only %.4e  A-only %.4e |%s\n",
                 tag.c_str(), e, best_it, best_e.both, best_e.w, best_e.a, line.c_str());
  }
}

// Quantizes one layer with every method and evaluates on held-out rows.
bool run_layer(const std::string& name, const std::vector<float>& w, const std::vector<float>& bias,
               int64_t n, int64_t k, const std::vector<float>& calib, int64_t m_calib,
               const std::vector<float>& eval, int64_t m_eval, svdq::Format format, int rank,
               const std::vector<Method>& methods, std::vector<Result>* out, Saved* saved) {
  using namespace svdq;
  CalibrationOptions copt;
  copt.max_rows = 512;
  ActivationStats stats(k, copt);
  if (Status st = stats.observe(MatrixView<const float>(calib.data(), m_calib, k)); !st.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), st.to_string().c_str());
    return false;
  }
  const MatrixView<const float> wv(w.data(), n, k), x(eval.data(), m_eval, k);
  const ConstMatrixRef bv = bias.empty() ? ConstMatrixRef() : ConstMatrixRef(vector_view(bias.data(), n));
  std::vector<double> ref;
  if (!dense_forward(x, wv, bv, &ref).ok()) return false;
  const MatrixView<const double> refv(ref.data(), m_eval, n);
  double ref2 = 0;
  for (double v : ref) ref2 += v * v;
  std::vector<float> y(static_cast<size_t>(m_eval * n));
  QuantConfig base;
  base.format = format;
  base.rank = static_cast<int>(std::min<int64_t>(rank, std::min(n, k)));
  for (const Method& m : methods) {
    if (m.name == "+t_act" && format != Format::kNvfp4) continue;
    auto q = quantize_linear(wv, bv, &stats, m.make(base));
    if (!q.ok()) {
      std::fprintf(stderr, "%s %s: %s\n", name.c_str(), m.name.c_str(), q.status().to_string().c_str());
      return false;
    }
    const MatrixView<float> yv(y.data(), m_eval, n);
    if (!reference_forward(*q, x, yv).ok()) return false;
    const double mse = mean_squared_error(yv, refv);
    if (saved != nullptr)
      (*saved)[std::string(format_name(format)) + "-" + m.name].emplace_back(name, *q);
    out->push_back({name, format_name(format), m.name,
                    mse * static_cast<double>(ref.size()) / ref2, sqnr_db(yv, refv), q->info.seconds,
                    q->info.alpha, q->info.beta, q->info.notes, q->info.recipe});
    std::fprintf(stderr, "  %-22s %-6s %-10s rel.MSE %.4e  SQNR %6.2f dB  %7.2f s  (a=%.2f b=%.2f) %s %s\n",
                 name.c_str(), format_name(format), m.name.c_str(), out->back().rel_mse,
                 out->back().sqnr, q->info.seconds, q->info.alpha, q->info.beta,
                 q->info.recipe.c_str(), q->info.notes.c_str());
    if (g_decompose || !g_probe.empty() || g_scale_probe)
      decompose_layer(*q, w, eval, m_eval, ref2, g_probe, name + " " + format_name(format) + " " + m.name);
    if (!g_branch_probe.empty())
      branch_probe(*q, w, calib, m_calib, eval, m_eval, ref2, g_branch_probe,
                   name + " " + format_name(format) + " " + m.name);
  }
  return true;
}

// Pure low-rank compression (no 4-bit residual) at a parameter budget: rank r with
// r (N + K) = fraction * N * K; plain SVD vs the activation-aware split, output MSE on held-out rows.
void lowrank_only(const std::string& name, const std::vector<float>& w, int64_t n, int64_t k,
                  const std::vector<float>& calib, int64_t m_calib, const std::vector<float>& eval,
                  int64_t m_eval, double fraction, std::vector<std::array<double, 2>>* out) {
  using namespace svdq;
  const int r = std::max(1, static_cast<int>(fraction * static_cast<double>(n * k) / static_cast<double>(n + k)));
  ActivationStats stats(k);
  if (!stats.observe(MatrixView<const float>(calib.data(), m_calib, k)).ok()) return;
  const MatrixView<const float> wv(w.data(), n, k), x(eval.data(), m_eval, k);
  std::vector<double> ref;
  if (!dense_forward(x, wv, ConstMatrixRef(), &ref).ok()) return;
  std::array<double, 2> errs{};
  for (int white = 0; white < 2; ++white) {
    auto f = factorize_low_rank(wv, &stats, r, white == 1);
    if (!f.ok()) return;
    std::vector<float> wl(static_cast<size_t>(n * k), 0.0f);  // up * down
    for (int64_t i = 0; i < n; ++i)
      for (int c = 0; c < r; ++c) {
        const float u = f->up[i * r + c];
        for (int64_t j = 0; j < k; ++j) wl[i * k + j] += u * f->down[c * k + j];
      }
    std::vector<double> y;
    if (!dense_forward(x, MatrixView<const float>(wl.data(), n, k), ConstMatrixRef(), &y).ok()) return;
    errs[white] = mean_squared_error(MatrixView<const double>(y.data(), m_eval, n),
                                     MatrixView<const double>(ref.data(), m_eval, n));
    double ref2 = 0;
    for (double v : ref) ref2 += v * v;
    errs[white] *= static_cast<double>(ref.size()) / ref2;
  }
  std::fprintf(stderr, "  %-40s low-rank only r=%-4d plain %.4e  activation-aware %.4e\n", name.c_str(), r,
               errs[0], errs[1]);
  out->push_back(errs);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"svdq quality benchmark: output error of each quantization method"};
  std::vector<std::string> shapes = {"3072x3072", "3072x12288"};
  int64_t m_calib = 512, m_eval = 256;
  int rank = 32;
  std::string format_arg = "both", csv, methods_arg, model, save_dir;
  bool no_synth = false;
  double lowrank_fraction = 0;
  app.add_option("--shape", shapes, "synthetic layer shapes KxN")->capture_default_str();
  app.add_option("--calib", m_calib, "calibration rows")->capture_default_str();
  app.add_option("--eval", m_eval, "held-out evaluation rows")->capture_default_str();
  app.add_option("--rank", rank, "low-rank branch rank")->capture_default_str();
  app.add_option("--format", format_arg, "int4, nvfp4 or both")
      ->check(CLI::IsMember({"int4", "nvfp4", "both"}));
  app.add_option("--csv", csv, "write every result as CSV here");
  app.add_option("--methods", methods_arg, "comma-separated subset of methods (default: all)");
  app.add_option("--model", model, "a real model's dump from tools/minilm.py (skipped if absent)");
  app.add_option("--save-dir", save_dir, "write <format>-<method>.safetensors per method of --model");
  app.add_flag("--no-synth", no_synth, "skip the synthetic layers");
  std::vector<std::string> families = {"default"};
  app.add_option("--family", families,
                 "synthetic layer families: default, down (K = 4N, spiky weight columns), huge (a few "
                 "huge activation channels), gelu (one-sided activations with rare per-row spikes)")
      ->capture_default_str();
  app.add_option("--lowrank-only", lowrank_fraction,
                 "instead: pure low-rank compression keeping this fraction of the parameters (e.g. 0.15), "
                 "plain SVD vs activation-aware, on the model's layers");
  int act_outliers = -1;
  app.add_option("--act-outliers", act_outliers,
                 "outlier activation channels of the synthetic layers (default: the family's, 16)");
  std::string ab;
  app.add_option("--ab", ab, "A,B: alpha and beta of the 'ab' methods (default 0.65,0.35)");
  app.add_flag("--scale-probe", g_scale_probe,
               "nvfp4 prototype: weight group scales searched over E4M3 codes, activation scales 4-or-6");
  app.add_option("--gptq-damp", g_gptq_damp, "GPTQ damping of the ab...gptq methods (default 0.01)");
  app.add_flag("--decompose", g_decompose,
               "print each method's main-path error split into weights-only and activations-only");
  app.add_option("--rot-probe", g_probe,
                 "block sizes (1 = none) of a Walsh-Hadamard rotation simulated with round-to-nearest "
                 "on each method's branch (prototype; implies the decomposition)")
      ->delimiter(',');
  app.add_option("--branch-probe", g_branch_probe,
                 "prototype: the branch fitted with channel weights d_j = E(Q(xh)-xh)_j^2 + e E xh_j^2 "
                 "for each e (e < 0: plain SVD), on each method's smoothing, 3 refinement iterates")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  if (!ab.empty() && std::sscanf(ab.c_str(), "%f,%f", &g_ab_alpha, &g_ab_beta) != 2) {
    std::fprintf(stderr, "error: --ab '%s' is not A,B\n", ab.c_str());
    return 2;
  }

  std::vector<Method> methods;
  for (const Method& m : all_methods())
    if (methods_arg.empty() || ("," + methods_arg + ",").find("," + m.name + ",") != std::string::npos)
      methods.push_back(m);
  std::vector<svdq::Format> formats;
  if (format_arg != "nvfp4") formats.push_back(svdq::Format::kInt4);
  if (format_arg != "int4") formats.push_back(svdq::Format::kNvfp4);

  std::vector<Result> results;
  if (no_synth) shapes.clear();
  for (const std::string& fam : families)
  for (const std::string& s : shapes) {
    long long k = 0, n = 0;
    if (std::sscanf(s.c_str(), "%lldx%lld", &k, &n) != 2 || k <= 0 || n <= 0) {
      std::fprintf(stderr, "error: --shape '%s' is not KxN\n", s.c_str());
      return 2;
    }
    if (fam != "default" && fam != "down" && fam != "huge" && fam != "gelu") {
      std::fprintf(stderr, "error: --family '%s' is not default, down, huge or gelu\n", fam.c_str());
      return 2;
    }
    svdq::synth::LayerSpec spec;
    spec.in_features = k;
    spec.out_features = n;
    if (fam == "down") spec.weight_outlier_columns = static_cast<int>(std::min<long long>(k / 32, 256));
    if (fam == "huge") spec.act_outlier_channels = 4;
    if (act_outliers >= 0) spec.act_outlier_channels = act_outliers;
    auto layer = svdq::synth::make_layer(spec);
    if (!layer.ok()) return 1;
    auto calib = svdq::synth::make_activations(*layer, m_calib, 11);
    auto eval = svdq::synth::make_activations(*layer, m_eval, 12);
    // Family transforms of the activations, seeded per row set (documented in docs/quality.md).
    auto transform = [&](std::vector<float>& x, uint64_t seed) {
      uint64_t st = seed * 0x9e3779b97f4a7c15ULL + 1;
      auto next = [&] {
        uint64_t z = (st += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return ((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
      };
      for (size_t i = 0; i < x.size(); ++i) {
        const int64_t j = static_cast<int64_t>(i % static_cast<size_t>(k));
        if (fam == "huge") {
          for (size_t o = 0; o < layer->act_outliers.size(); ++o)
            if (layer->act_outliers[o] == j) x[i] *= 50.0f;  // 4 channels x1000..x5000 in all
        } else if (fam == "gelu" || fam == "down") {
          if (x[i] < 0) x[i] *= 0.05f;               // one-sided, GELU-like
          if (next() < 0.002) x[i] *= 30.0f;         // rare spikes, row by row
        }
      }
    };
    if (fam != "default") {
      transform(calib, 11);
      transform(eval, 12);
    }
    const std::string name = (fam == "default" ? "synth-" : "synth-" + fam + "-") + s;
    for (svdq::Format f : formats)
      if (!run_layer(name, layer->weight, layer->bias, n, k, calib, m_calib, eval, m_eval,
                     f, rank, methods, &results, nullptr))
        return 1;
  }

  if (!model.empty()) {
    auto file = svdq::SafetensorsFile::open(model);
    if (!file.ok()) {
      std::fprintf(stderr, "skipping the real model: %s\n(make the dump with: python3 tools/minilm.py dump %s)\n",
                   file.status().to_string().c_str(), model.c_str());
    } else {
      Saved saved;
      auto layers = file->metadata().find("layers");
      std::vector<std::string> names;
      if (layers != file->metadata().end()) {
        std::string list = layers->second;
        for (size_t pos = 0; pos <= list.size();) {
          const size_t comma = std::min(list.find(',', pos), list.size());
          if (comma > pos) names.push_back(list.substr(pos, comma - pos));
          pos = comma + 1;
        }
      }
      std::vector<std::array<double, 2>> lr_errs;
      for (const std::string& name : names) {
        auto w = file->read_float(name + ".weight");
        auto b = file->read_float(name + ".bias");
        auto xc = file->read_float(name + ".calib");
        auto xe = file->read_float(name + ".inputs");
        auto wi = file->info(name + ".weight");
        auto ci = file->info(name + ".calib");
        auto ei = file->info(name + ".inputs");
        if (!w.ok() || !b.ok() || !xc.ok() || !xe.ok() || !wi.ok() || !ci.ok() || !ei.ok()) {
          std::fprintf(stderr, "%s: missing .weight/.bias/.calib/.inputs in the dump\n", name.c_str());
          return 1;
        }
        const int64_t n = wi->shape[0], k = wi->shape[1];
        if (lowrank_fraction > 0) {
          lowrank_only(name, *w, n, k, *xc, ci->shape[0], *xe, ei->shape[0], lowrank_fraction, &lr_errs);
          continue;
        }
        for (svdq::Format f : formats)
          if (!run_layer(name, *w, *b, n, k, *xc, ci->shape[0], *xe, ei->shape[0], f, rank, methods,
                         &results, save_dir.empty() ? nullptr : &saved))
            return 1;
      }
      if (!lr_errs.empty()) {
        double a = 0, b = 0;
        for (const auto& e : lr_errs) a += e[0], b += e[1];
        std::printf("| low-rank only, %.0f%% of parameters (%zu layers) | plain SVD | activation-aware |\n"
                    "|---|---|---|\n| mean rel. output MSE | %.4e | %.4e |\n",
                    100 * lowrank_fraction, lr_errs.size(), a / lr_errs.size(), b / lr_errs.size());
      }
      for (const auto& [key, list] : saved) {
        std::vector<std::pair<std::string, const svdq::QuantizedLinear*>> ptrs;
        for (const auto& [name, q] : list) ptrs.emplace_back(name, &q);
        const std::string path = save_dir + "/" + key + ".safetensors";
        if (svdq::Status st = svdq::save_quantized(path, ptrs); !st.ok()) {
          std::fprintf(stderr, "%s: %s\n", path.c_str(), st.to_string().c_str());
          return 1;
        }
      }
    }
  }

  // Summary: mean relative MSE per (format, method) over layers, and the reduction vs svdquant.
  struct Acc {
    double mse = 0, seconds = 0;
    int count = 0;
  };
  std::map<std::tuple<std::string, std::string, std::string>, Acc> mean;
  for (const Result& r : results) {
    const std::string source = r.layer.rfind("synth-", 0) == 0 ? "synthetic" : "real";
    auto& acc = mean[{source, r.format, r.method}];
    acc.mse += r.rel_mse;
    acc.seconds += r.seconds;
    acc.count += 1;
  }
  if (!results.empty())
    std::printf("| layers | format | method | mean rel. MSE | vs svdquant | mean time s |\n|---|---|---|---|---|---|\n");
  for (const char* source : {"synthetic", "real"})
    for (svdq::Format f : formats)
      for (const Method& m : methods) {
        auto it = mean.find({source, svdq::format_name(f), m.name});
        if (it == mean.end()) continue;
        const double v = it->second.mse / it->second.count;
        auto base = mean.find({source, svdq::format_name(f), "svdquant"});
        const double b = base != mean.end() ? base->second.mse / base->second.count : v;
        std::printf("| %s (%d) | %s | %s | %.4e | %+.1f%% | %.2f |\n", source, it->second.count,
                    svdq::format_name(f), m.name.c_str(), v, 100.0 * (v / b - 1.0),
                    it->second.seconds / it->second.count);
      }
  // Per layer: relative MSE on held-out rows, and the change against plain SVDQuant.
  if (!results.empty())
    std::printf("\n| layer | format | method | rel. MSE | SQNR dB | vs svdquant | time s | recipe |\n|---|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    double plain = r.rel_mse;
    for (const Result& o : results)
      if (o.layer == r.layer && o.format == r.format && o.method == "svdquant") plain = o.rel_mse;
    std::printf("| %s | %s | %s | %.4e | %.2f | %+.1f%% | %.2f | %s |\n", r.layer.c_str(), r.format.c_str(),
                r.method.c_str(), r.rel_mse, r.sqnr, 100.0 * (r.rel_mse / plain - 1.0), r.seconds,
                r.recipe.c_str());
  }
  if (!csv.empty()) {
    std::ofstream os(csv);
    os << "layer,format,method,rel_mse,sqnr_db,seconds,alpha,beta,notes,recipe\n";
    for (const Result& r : results)
      os << r.layer << ',' << r.format << ',' << r.method << ',' << r.rel_mse << ',' << r.sqnr << ','
         << r.seconds << ',' << r.alpha << ',' << r.beta << ",\"" << r.notes << "\"," << r.recipe << "\n";
  }
  return 0;
}
