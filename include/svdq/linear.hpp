// svdq/linear.hpp — quantizing a linear layer offline and the CPU reference W4A4 forward.
//
// PyTorch layout: W is N x K (out x in), y = x W^T + b, x holds M token rows of K channels.
//
// Offline (quantize_linear):
//   s_j      = amax_x[j]^alpha / amax_w[j]^beta   (zero/non-finite -> 1; rounded to `storage`)
//   W_hat    = W diag(s)
//   W_hat   ~= L_up L_down_hat + R               (truncated SVD, rank r)
//   Q(R)                                         (int4 group 64 or nvfp4 group 16)
// Runtime (reference_forward, the GPU kernels):
//   y = Q(x diag(1/s)) Q(R)^T + (x lora_down) lora_up^T + b
//   (rotated layers: y = Q(x diag(1/s) H) Q(R H)^T + ..., H block-diagonal Walsh-Hadamard per group)
// with lora_down = diag(1/s) V_r (K x r) reading the RAW x and lora_up = U_r Sigma_r (N x r),
// Nunchaku's conventions (proj_down, proj_up).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "svdq/formats.hpp"
#include "svdq/stats.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq {

/// How the truncated SVD is computed.
enum class SvdMethod : uint8_t {
  kRandomized = 0,  ///< Halko-Martinsson-Tropp range finder (oversampling, power iterations)
  kExact = 1,       ///< Eigen BDCSVD of the whole matrix, in double (slow on big layers)
};

struct SvdOptions {
  SvdMethod method = SvdMethod::kRandomized;
  int oversample = 16;        ///< extra columns in the range finder (>= 0)
  int power_iterations = 2;   ///< subspace iterations (>= 0), each re-orthonormalised
  uint64_t seed = 0x5eed5eedULL;  ///< the Gaussian test matrix is drawn from it: same seed, same bits
};

/// Per-layer smoothing search (DeepCompressor's): each (alpha, beta) candidate is quantized and
/// scored by the layer's output error on the stats' sampled rows, with the low-rank branch and the
/// real activation quantizer in the loop; the best-scoring candidate is kept.
struct SmoothSearch {
  bool enabled = false;
  /// Empty: DeepCompressor's 39 candidates (0, 0), (a, 0), (a, 1 - a) for a = 0.05, 0.10 .. 0.95.
  std::vector<std::pair<float, float>> candidates;
  /// Score on a fixed, seeded subset of this many output channels (0 = all): the weight
  /// quantization is per output row, so a subset is an unbiased, much cheaper estimate.
  int64_t max_scored_outputs = 1024;
  /// ... and at most this many scored weights (outputs x K; 0 = no cap): a wide layer (K = 12288)
  /// is scored on 256 outputs, the cost of scoring 1024 outputs of K = 3072.
  int64_t max_scored_weights = 1024 * 3072;
};

/// GPTQ (Frantar et al. 2023) on the residual R with H = Xh^T Xh from smoothed calibration rows.
/// Static groups: group scales come from R before error feedback, so the layout is unchanged.
/// If GPTQ scores worse than round-to-nearest on the scoring rows, round-to-nearest is kept and
/// QuantizedLinear::Info::notes says so.
struct GptqOptions {
  bool enabled = false;
  float damp = 0.01f;     ///< H += damp * mean(diag(H)) * I
  int block = 128;        ///< columns per lazy-update block
  bool act_order = true;  ///< process columns by decreasing diag(H)
};

/// Progress of quantize_linear's search: (step done, steps in all, what).
using ProgressFn = std::function<void(int done, int total, const std::string& what)>;

/// Options of quantize_linear(). Defaults are the plain SVDQuant recipe.
struct QuantConfig {
  Format format = Format::kInt4;
  int rank = 32;        ///< low-rank branch rank r, 0 <= r <= min(N, K); 0 disables the branch
  float alpha = 0.5f;   ///< smoothing exponent on activation absmax (0 with beta = 0: no smoothing)
  float beta = 0.5f;    ///< smoothing exponent on weight absmax (SmoothQuant: beta = 1 - alpha)
  DType storage = DType::kBF16;  ///< dtype of smooth, lora_down, lora_up, bias: kF16 or kBF16
  SvdOptions svd;
  /// nvfp4 only: static activation tensor scale t_act (> 0, finite); 1 means none.
  float act_tensor_scale = 1.0f;

  // --- refinements (each off by default; svdq_plus_config() switches on the measured best) ---
  SmoothSearch smooth_search;
  /// Iterative low-rank refinement L_k = SVD_r(W_hat - Q(W_hat - L_{k-1})): at most this many
  /// iterations, the best iterate by output error on the scoring rows kept, stop at the first that
  /// does not improve. Needs sampled rows. 0 = off.
  int refine_iterations = 0;
  /// Activation-aware low-rank split: minimise E||xh (W_hat - L)^T|| instead of ||W_hat - L||_F,
  /// via the Cholesky factor of C = Xh^T Xh (+ whiten_damp * mean diag). Needs rows or a Gram.
  bool whiten_lowrank = false;
  float whiten_damp = 0.01f;
  GptqOptions gptq;
  /// Per-group clipping search for weight scales: amax * c for c in {1, .95, ..., .60}, the one
  /// with the least (diag(H)-weighted when calibration rows exist) squared error kept per group.
  bool clip_search = false;
  /// With calibration rows, weight the clipping error by diag(H) (true) or not (false: plain
  /// squared error, which the held-out rows favour when diag(H) of the sample is spiky).
  bool clip_weighted = true;
  /// nvfp4: set act_tensor_scale from calibration, t_act = max_j amax_x[j] / s_j / (6 * 448).
  bool calibrate_act_tensor_scale = false;
  /// Recipe selection (svdq-plus) by k-fold cross-validation on the sampled calibration rows:
  /// sampled row i belongs to fold i % folds. Every simpler recipe built from this config's
  /// options (data-free, plain alpha/beta, the search's pick, each enabled option alone, and the
  /// full combination from each smoothing start with clipping weighted or not) is scored out of
  /// fold: fold f's rows are scored by the recipe fitted without them (its smoothing-search pick,
  /// refinement iterate count, diag(H) clipping weights and GPTQ Hessian from the other folds).
  /// The recipe with the least summed error over all sampled rows is kept (simpler first on
  /// ties) and refitted on ALL sampled rows. Info::recipe names it, Info::score is its
  /// cross-validated output MSE, Info::selection lists every score. docs/quality.md says what is
  /// shared between folds (the SVDs of the refinement run with all-rows clipping weights).
  struct Selection {
    bool enabled = false;
    int folds = 4;  ///< in [2, 64]; fewer sampled rows than folds: one fold per row
  } selection;
  /// Block-Hadamard rotation of the 4-bit path (docs/formats.md): the residual is rotated by the
  /// normalised Walsh-Hadamard matrix inside each quantization group before it is quantized, and
  /// the runtime rotates the smoothed activations the same way. Spreads spiky channels over their
  /// group. The layer gets rotation = kBlockHadamard (checkpoint format 2.0; CpuLinear,
  /// reference_forward and GpuLinear run it; Nunchaku export refuses it). With selection, rotated
  /// and unrotated recipes are both compared. Not combined with GPTQ (kErrorNotSupported).
  /// svdq_plus_config() switches it on for int4.
  bool rotate = false;
  /// Called after each search step (optional).
  ProgressFn progress;
};

/// The comparison recipes of the SVDQuant paper, built from the same parts.
enum class Recipe : uint8_t {
  kNaive = 0,        ///< no smoothing, rank 0: plain W4A4 round-to-nearest
  kSmoothOnly = 1,   ///< smoothing, rank 0
  kLowRankOnly = 2,  ///< no smoothing, low-rank branch
  kSvdquant = 3,     ///< smoothing + low-rank branch
};
/// svdq's best measured combination ("svdq-plus", docs/quality.md) on top of `base`'s format,
/// rank and storage: smoothing search, refinement, clipping search and selection, and for int4
/// (unless base.gptq.enabled) `rotate`, so that the rotated recipes are compared next to the
/// unrotated ones. Set rotate = false afterwards for a layer that must run unrotated (Nunchaku's
/// layout, a runtime without rotation).
QuantConfig svdq_plus_config(QuantConfig base);

/// "naive", "smooth", "lowrank", "svdquant".
const char* recipe_name(Recipe r) noexcept;
/// `base` with the parts the recipe leaves out switched off (alpha = beta = 0 and/or rank = 0).
QuantConfig recipe_config(Recipe r, QuantConfig base) noexcept;

/// A quantized linear layer in svdq's canonical (checkpoint) layout. Plain data: copyable,
/// comparable field by field. 16-bit fields hold raw bits of `storage` (fp16 or bf16).
struct QuantizedLinear {
  Format format = Format::kInt4;
  DType storage = DType::kBF16;
  int64_t in_features = 0;   ///< K
  int64_t out_features = 0;  ///< N
  int rank = 0;              ///< r
  int group = 64;            ///< group_size(format)

  std::vector<uint16_t> smooth;     ///< [K] s_j (1 everywhere when smoothing is off)
  std::vector<uint16_t> lora_down;  ///< [K][r] row-major, = diag(1/s) V_r
  std::vector<uint16_t> lora_up;    ///< [N][r] row-major, = U_r Sigma_r
  std::vector<uint8_t> qweight;     ///< [N][K/2] packed codes of Q(R)
  /// int4: fp16 [N][K/64] as little-endian bytes; nvfp4: E4M3 bytes [N][K/16].
  std::vector<uint8_t> wscales;
  float wtscale = 1.0f;             ///< nvfp4 weight tensor scale t_w (1 for int4)
  float act_tensor_scale = 1.0f;    ///< nvfp4 static t_act (1 = dynamic per group only)
  std::vector<uint16_t> bias;       ///< [N], or empty for no bias
  /// kBlockHadamard: qweight holds Q(R H) and the runtime rotates each smoothed activation group
  /// before quantizing it (docs/formats.md, "Block-Hadamard rotation").
  Rotation rotation = Rotation::kNone;

  // --- Nunchaku-compatible variants (docs/formats.md "Variants"; checkpoint format 2.0) ---
  /// int4 only: quantize the activations as UNSIGNED 4-bit codes 0..15 (absmax / 15) of
  /// (x + act_shift) / s, the way Nunchaku quantizes the input of a GELU MLP's second linear
  /// (act_shift = 0.171875). The low-rank branch still reads the raw x; the shift's branch
  /// contribution is part of `bias` (as DeepCompressor folds it). false: signed codes [-7, 7].
  bool act_unsigned = false;
  /// Added to x in fp32 before smoothing (act_unsigned only; must be 0 otherwise). Finite.
  float act_shift = 0.0f;
  /// nvfp4 only: per-output-channel weight scale c_n ([N], storage dtype bits; Nunchaku's
  /// `wcscales`), multiplied into the main path after t_act * t_w; empty for none.
  std::vector<uint16_t> wcscales;

  /// What produced it (for reports and checkpoint metadata).
  struct Info {
    float alpha = 0, beta = 0;
    SvdMethod svd = SvdMethod::kRandomized;
    double weight_norm = 0;    ///< ||W_hat||_F
    double residual_norm = 0;  ///< ||R||_F, R = W_hat - (low-rank branch as stored)
    double seconds = 0;        ///< wall time of quantize_linear
    /// Output MSE on the calibration sample (y vs x W^T, bias excluded) when one was scored, or -1.
    double score = -1;
    int candidates_scored = 0;  ///< smoothing candidates tried by the search
    int refine_iterations = 0;  ///< refinement iterations kept
    std::string notes;          ///< what the pipeline decided (e.g. a GPTQ fallback)
    /// The recipe kept, e.g. "svdquant", "data-free+clip-unweighted", "search+refine+clip"
    /// (empty when not recorded: older checkpoints).
    std::string recipe;
    /// Recipe selection (QuantConfig::selection): calibration rows scored out of fold (each by
    /// the recipe fitted without it), 0 when there was no selection.
    int64_t holdout_rows = 0;
    /// Every recipe compared by the selection, with its cross-validated output MSE.
    struct Scored {
      std::string recipe;
      double score = 0;
      bool operator==(const Scored&) const = default;
    };
    std::vector<Scored> selection;
  } info;

  /// Bytes of all tensors above (what a checkpoint stores).
  int64_t size_bytes() const noexcept;
  /// size_bytes() * 8 / (N * K).
  double bits_per_weight() const noexcept;
  /// Group scale (n, g) of the weight as a float (int4: the fp16; nvfp4: the E4M3, without t_w).
  float wscale(int64_t n, int64_t g) const noexcept;
  /// inv_s_k = 1.0f / s_k for all k: what a runtime computes once at load.
  std::vector<float> inverse_smooth() const;
};

/// Quantizes a linear layer.
///   W:     N x K (fp32/fp16/bf16), finite. K must be a multiple of group_size(config.format).
///   bias:  1 x N or empty (data == nullptr); finite.
///   stats: input statistics with K channels; required when smoothing (alpha != 0), else may be null.
/// Errors name the argument and rule: shapes, divisibility, rank > min(N, K), null data,
/// NaN/Inf in W or bias, alpha/beta not finite, storage not 16-bit, bad SVD options.
Result<QuantizedLinear> quantize_linear(ConstMatrixRef W, ConstMatrixRef bias,
                                        const ActivationStats* stats, const QuantConfig& config);

/// A pure low-rank factorisation W ~= up * down (no 4-bit residual), for comparisons with
/// low-rank compression methods. up: N x r, down: r x K, row-major fp32.
struct LowRankFactors {
  int64_t in_features = 0, out_features = 0;
  int rank = 0;
  std::vector<float> up, down;
};
/// Plain truncated SVD of W (whitened = false) or the activation-aware split minimising
/// E||x (W - up down)^T|| over the stats' rows (whitened = true; needs sampled rows or a Gram).
Result<LowRankFactors> factorize_low_rank(ConstMatrixRef W, const ActivationStats* stats, int rank,
                                          bool whitened, const SvdOptions& svd = {});

/// Checks that a QuantizedLinear is self-consistent (sizes of every field against K, N, r, group,
/// with overflow-checked products) and holds only values a correct quantizer produces: smooth
/// finite, > 0 with a finite reciprocal; wscales (decoded) finite and >= 0; lora_down, lora_up and
/// bias finite; wtscale and act_tensor_scale finite in [2^-126, FLT_MAX / (6 * 448)];
/// act_unsigned only for int4, act_shift finite and 0 unless act_unsigned; wcscales empty or
/// [N] (nvfp4 only), each finite and >= 0. Messages name the field and the index
/// (docs/checkpoint.md, "Values").
Status validate(const QuantizedLinear& layer);

/// Turns a signed int4 layer into an act_unsigned one (docs/formats.md §6.1) for inputs known to
/// be >= -shift (Nunchaku's GELU-fed layers: shift 0.171875, GELU(x) >= -0.1700). Weights,
/// scales and the low-rank branch are unchanged; the bias absorbs the shift's main-path term,
///   bias'[n] = bias[n] - shift * sum_k Wq[n,k] / s_k   (Wq = code * wscale; float64, rounded once
///   to `storage`),
/// so that the layer's output with unquantized activations is the same for every x. A layer
/// without bias gets one. info.notes records the conversion. Errors (kErrorInvalidArgument): not
/// int4, already unsigned, shift not finite and > 0, a layer that fails validate(), a bias that
/// overflows the storage dtype.
Result<QuantizedLinear> to_unsigned_activations(const QuantizedLinear& q, float shift);

/// The CPU reference W4A4 forward, bit-exact to the activation-quantization contract:
///   (act_unsigned: the activation codes are unsigned 0..15 of (x + act_shift) / s)
///   acc[m,n] = 0; for g in order: acc = fmaf(float(P_g[m,n]), sx[m,g] * sw[n,g], acc)
///   nvfp4: acc *= t_act * t_w; then, with wcscales, acc *= c[n]
///   lora[m,:] = sum_k x[m,k] lora_down[k,:]   (fp32)
///   y[m,n] = dtype_y(acc + sum_r lora[m,r] lora_up[n,r] + b[n])
///   x: M x K (fp32/fp16/bf16); y: M x N (fp32/fp16/bf16), must not alias x.
/// The branch sums run in a fixed order (k ascending, then r ascending; fp32 multiply then add),
/// so the result does not depend on the thread count. It decodes the whole layer on every call:
/// an engine prepares a CpuLinear (svdq/cpu_linear.hpp) once instead, which gives the same bits.
/// A NaN/Inf in row m of x makes row m of y NaN and leaves the other rows untouched.
/// (svdq/testing.hpp has a variant that also returns the quantized activations.)
SVDQ_API Status reference_forward(const QuantizedLinear& layer, ConstMatrixRef x, MatrixRef y);

}  // namespace svdq
