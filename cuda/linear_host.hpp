// cuda/linear_host.hpp — the host logic of the GPU layer that does not depend on where the kernels
// run: validation, the repacking at upload, the workspace layout, the launch configuration and
// the kernel dispatch. Two backends sit behind it: the CUDA runtime (gpu_linear.cu, the product)
// and the emulated device (cuda/emu/emu_linear.cpp, tests and tools only). Both compile this very
// text, so the emulated tests check the product's host code too.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "dispatch.hpp"  // GemmPath, the kernel 2 instantiations
#include "gemm_w4a4_dp4a.cuh"
#include "gemm_w4a4_mma.cuh"  // MmaLayout: the fragment order the repack builds
#include "quantize_lora_down.cuh"
#include "quantize_lora_down_plan.hpp"  // kernel 1's tensor-core operand
#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq::cuda {

constexpr size_t kWorkspaceAlign = 256;
inline size_t align_up(size_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// CUDA's launch limits (every architecture svdq targets).
constexpr int64_t kMaxGridX = 2147483647, kMaxGridYZ = 65535;

/// The layer, repacked for the kernels, in host memory (a backend uploads each array once).
/// make_plan builds the dp4a kernel's layout (canonical codes, fp32 scales, (N, r) up);
/// use_gemm_path switches the three weight arrays to the layout of the chosen kernel.
struct LinearPlan {
  Format format = Format::kInt4;
  DType act = DType::kBF16;
  int64_t n = 0, k = 0;
  int rank = 0, group = 64;
  float t_act = 1.0f, t_prod = 1.0f;
  bool has_bias = false;
  bool rotated = false;  // block-Hadamard layer: kernel 1 rotates each smoothed group (QuantizeParams::rotate)
  GemmPath path = GemmPath::kDp4a;  // kernel 2 (the backend sets it from the device: use_gemm_path)
  bool split_k = true;   // kernel 1's split over K for small M (k_split); false only in tests
  std::vector<uint8_t> w_codes;   // dp4a: (N, K/2) canonical; mma: repack_codes_mma
  std::vector<uint8_t> w_scales;  // dp4a: (N, G) fp32 (exact decode); mma: repack_scales_mma
  std::vector<uint8_t> w_scales_raw;  // (N, G) the checkpoint's scale bytes (fp16 LE / E4M3), for repacking
  std::vector<float> inv_s;       // (K) fp32, 1 / s
  DownOperand down;               // kernel 1's lora_down operand (quantize_lora_down_plan.hpp)
  std::vector<float> up;          // dp4a: (N, r) fp32; mma: repack_up_mma
  std::vector<float> bias;        // (N) fp32 (empty without bias)
  // The Nunchaku variants (docs/formats.md §6.1, §6.2): unsigned shifted int4 activations (kernel
  // 1 adds the shift, kernel 2 runs kind 2) and nvfp4 per-channel c_n (decoded to fp32 here).
  bool act_unsigned = false;
  float act_shift = 0.0f;
  bool has_wcscales = false;
  std::vector<float> wcscales;    // (N) fp32 (empty without)

  size_t codes_bytes(int64_t m) const { return align_up(static_cast<size_t>(m) * static_cast<size_t>(k / 2)); }
  size_t scales_bytes(int64_t m) const {
    return align_up(static_cast<size_t>(m) * static_cast<size_t>(k / group) * (format == Format::kInt4 ? 4 : 1));
  }
  size_t lora_bytes(int64_t m) const { return align_up(static_cast<size_t>(m) * static_cast<size_t>(rank) * 4); }
  /// kernel 1's split-K partial sums (quantize_lora_down.cuh: k_split_partial_floats).
  size_t partial_bytes(int64_t m) const { return align_up(static_cast<size_t>(k_split_partial_floats(m, k, rank)) * 4); }
  /// Workspace: codes, then scales, then x·lora_down, then the split-K partials, each 256-byte aligned.
  size_t workspace_size(int64_t m) const {
    return m < 1 ? 0 : codes_bytes(m) + scales_bytes(m) + lora_bytes(m) + partial_bytes(m);
  }
};

// ---- The mma kernel's fragment order (gemm_w4a4_mma.cuh documents the layouts) ----------------
// Each function maps a position of the repacked array back to the canonical element it holds
// (the kernel reads the repacked array at exactly these positions), and leaves padding zero.

/// W codes: (N, K/2) canonical -> [nt][kt][wn][lane][32 B], N padded to 64 rows, K to 64.
inline std::vector<uint8_t> repack_codes_mma(const uint8_t* codes, int64_t n, int64_t k, Format f) {
  const int64_t nts = (n + kBlkN - 1) / kBlkN, kts = (k + MmaLayout::kKTile - 1) / MmaLayout::kKTile;
  const int64_t row_bytes = k / 2;
  std::vector<uint8_t> out(static_cast<size_t>(nts * kts * MmaLayout::kWarpsN * 32 * MmaLayout::kThreadCodeBytes), 0);
  size_t pos = 0;
  for (int64_t nt = 0; nt < nts; ++nt)
    for (int64_t kt = 0; kt < kts; ++kt)
      for (int wn = 0; wn < MmaLayout::kWarpsN; ++wn)
        for (int lane = 0; lane < 32; ++lane)
          for (int b = 0; b < MmaLayout::kThreadCodeBytes; ++b, ++pos) {
            const int gid = lane >> 2, tig = lane & 3;
            int j, byte_in_tile;  // the W row's tile j and the byte within the k tile's 32
            if (f == Format::kInt4) {  // [j][h][4 B]: word 2 tig + h of the group
              j = b / 8;
              const int h = (b / 4) % 2;
              byte_in_tile = 4 * (2 * tig + h) + b % 4;
            } else {  // [gg][j][2 B]: bytes 2 tig, 2 tig + 1 of group gg (8 B each)
              const int gg = b / 8;
              j = (b / 2) % 4;
              byte_in_tile = 8 * gg + 2 * tig + b % 2;
            }
            const int64_t row = nt * kBlkN + 32 * wn + 8 * j + gid;
            const int64_t kb = kt * MmaLayout::kTileBytes + byte_in_tile;
            if (row < n && kb < row_bytes) out[pos] = codes[row * row_bytes + kb];
          }
  return out;
}

/// W group scales (raw bytes: int4 fp16 LE (N, G) x 2 B, nvfp4 E4M3 (N, G)) -> int4
/// [nt][g][wn][tig][j][c] fp16, nvfp4 [nt][kt][wn][tig][gg][j][c] E4M3 (column 32 wn + 8 j + 2 tig + c).
inline std::vector<uint8_t> repack_scales_mma(const uint8_t* raw, int64_t n, int64_t k, Format f) {
  const bool int4 = f == Format::kInt4;
  const int64_t groups = k / (int4 ? 64 : 16);
  const int64_t nts = (n + kBlkN - 1) / kBlkN;
  const int64_t tiles = int4 ? groups : (k + MmaLayout::kKTile - 1) / MmaLayout::kKTile;
  const int sb = MmaLayout::scale_bytes(int4 ? 0 : 1);
  std::vector<uint8_t> out(static_cast<size_t>(nts * tiles * MmaLayout::kWarpsN * 4 * sb), 0);
  size_t pos = 0;
  for (int64_t nt = 0; nt < nts; ++nt)
    for (int64_t t = 0; t < tiles; ++t)
      for (int wn = 0; wn < MmaLayout::kWarpsN; ++wn)
        for (int tig = 0; tig < 4; ++tig)
          for (int b = 0; b < sb; ++b, ++pos) {
            // int4: element b / 2 = [j][c], byte b % 2 of the fp16; nvfp4: element b = [gg][j][c].
            const int e = int4 ? b / 2 : b % 8;
            const int64_t g = int4 ? t : 4 * t + b / 8;
            const int64_t col = nt * kBlkN + 32 * wn + 8 * (e / 2) + 2 * tig + e % 2;
            if (col >= n || g >= groups) continue;
            out[pos] = int4 ? raw[(col * groups + g) * 2 + b % 2] : raw[col * groups + g];
          }
  return out;
}

/// lora_up (N, r) fp32 -> [nt][s][wn][lane][j][e] = up[64 nt + 32 wn + 8 j + gid][8 s + 2 tig + e].
inline std::vector<float> repack_up_mma(const float* up, int64_t n, int rank) {
  const int64_t nts = (n + kBlkN - 1) / kBlkN, steps = (rank + MmaLayout::kRankStep - 1) / MmaLayout::kRankStep;
  std::vector<float> out(static_cast<size_t>(nts * steps * MmaLayout::kWarpsN * 32 * 8), 0.0f);
  size_t pos = 0;
  for (int64_t nt = 0; nt < nts; ++nt)
    for (int64_t s = 0; s < steps; ++s)
      for (int wn = 0; wn < MmaLayout::kWarpsN; ++wn)
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < 8; ++i, ++pos) {
            const int j = i / 2, e = i % 2, gid = lane >> 2, tig = lane & 3;
            const int64_t row = nt * kBlkN + 32 * wn + 8 * j + gid;
            const int64_t q = MmaLayout::kRankStep * s + 2 * tig + e;
            if (row < n && q < rank) out[pos] = up[row * rank + q];
          }
  return out;
}

/// Validates `q` and `act` and repacks. `fn` names the caller in messages.
inline Result<LinearPlan> make_plan(const QuantizedLinear& q, DType act, const char* fn) {
  SVDQ_RETURN_IF_ERROR(validate(q));
  if (act != DType::kF16 && act != DType::kBF16)
    return Status(StatusCode::kErrorInvalidArgument,
                  std::string(fn) + ": act_dtype (" + dtype_name(act) + ") must be f16 or bf16");
  // N tiles go on gridDim.y (at most 65535).
  if ((q.out_features + kBlkN - 1) / kBlkN > kMaxGridYZ)
    return Status(StatusCode::kErrorShape, std::string(fn) + ": out_features (" + std::to_string(q.out_features) +
                                               ") must be at most " + std::to_string(kMaxGridYZ * kBlkN));
  LinearPlan p;
  p.format = q.format;
  p.act = act;
  p.n = q.out_features;
  p.k = q.in_features;
  p.rank = q.rank;
  p.group = q.group;
  p.t_act = q.format == Format::kNvfp4 ? q.act_tensor_scale : 1.0f;
  p.t_prod = q.act_tensor_scale * q.wtscale;
  p.has_bias = !q.bias.empty();
  p.rotated = q.rotation != Rotation::kNone;
  const int64_t n = q.out_features, k = q.in_features, r = q.rank, groups = k / q.group;
  p.w_codes = q.qweight;
  p.w_scales.resize(static_cast<size_t>(n * groups) * 4);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < groups; ++g) {
      const float v = q.wscale(i, g);
      std::memcpy(p.w_scales.data() + (i * groups + g) * 4, &v, 4);
    }
  p.w_scales_raw = q.wscales;
  p.inv_s = q.inverse_smooth();
  p.up.resize(static_cast<size_t>(n * r));
  p.bias.resize(q.bias.size());
  p.down = make_down_operand(q, act);
  for (int64_t i = 0; i < n * r; ++i) p.up[i] = bits16_to_float(q.lora_up[i], q.storage);
  for (size_t i = 0; i < p.bias.size(); ++i) p.bias[i] = bits16_to_float(q.bias[i], q.storage);
  p.act_unsigned = q.act_unsigned;
  p.act_shift = q.act_shift;
  p.has_wcscales = !q.wcscales.empty();
  p.wcscales.resize(q.wcscales.size());
  for (size_t i = 0; i < p.wcscales.size(); ++i) p.wcscales[i] = bits16_to_float(q.wcscales[i], q.storage);
  return p;
}

/// Sets kernel 2's path and puts the weight arrays into its layout (the mma kernels' fragment
/// order, from the canonical arrays make_plan built). Call once, before upload.
inline void use_gemm_path(LinearPlan* p, GemmPath path) {
  p->path = path;
  if (path != GemmPath::kDp4a) {
    p->w_codes = repack_codes_mma(p->w_codes.data(), p->n, p->k, p->format);
    p->w_scales = repack_scales_mma(p->w_scales_raw.data(), p->n, p->k, p->format);
    p->up = repack_up_mma(p->up.data(), p->n, p->rank);
  }
  std::vector<uint8_t>().swap(p->w_scales_raw);
}

inline Status can_implement(const LinearPlan* p, int64_t m, DType dtype, const char* fn) {
  if (p == nullptr) return Status(StatusCode::kErrorInvalidArgument, std::string(fn) + ": empty (moved-from) layer");
  if (m < 1 || m > kMaxGridX)
    return Status(StatusCode::kErrorShape, std::string(fn) + ": M (" + std::to_string(m) + ") must be in [1, 2^31)");
  if (dtype != p->act)
    return Status(StatusCode::kErrorInvalidArgument, std::string(fn) + ": dtype (" + dtype_name(dtype) +
                                                         ") must be the layer's act dtype (" + dtype_name(p->act) + ")");
  return Status::Ok();
}

/// Where the uploaded arrays of a plan live on the backend's device.
struct DeviceWeights {
  const uint8_t *w_codes = nullptr, *w_scales = nullptr;
  const float* inv_s = nullptr;
  const uint16_t* down = nullptr;  // plan.down.bits
  const float *up = nullptr, *bias = nullptr;
  const float* wcscales = nullptr;  // plan.wcscales (null without)
};

struct Dim {
  unsigned x = 1, y = 1, z = 1;
};

/// Everything one forward() launches: kernel 1, split-K's reduction (when `reduce`), kernel 2,
/// their grids, blocks and parameters.
struct ForwardLaunch {
  Dim qgrid, qblock, ggrid, gblock;
  QuantizeParams qp;
  bool reduce = false;  // split-K with a branch: lora_reduce_kernel runs between kernels 1 and 2
  Dim rgrid, rblock;
  LoraReduceParams rp{};
  GemmParams gp;
  bool bf16 = true;
  int kind = 0;  // 0 int4, 1 nvfp4, 2 int4 with unsigned activations (kernel 1 runs kind 0 + act_unsigned)
  GemmPath path = GemmPath::kDp4a;
};

/// The launch configuration for M rows: kernel 1 one CTA per 16 rows (gridDim.x = ceil(M/16)) and
/// split of K (gridDim.y = S, k_split; S <= kSplitTargetCtas);
/// kernel 2 M tiles on gridDim.x (ceil(M/64) <= 2^31-1) and N tiles on gridDim.y (<= 65535).
inline void grids(const LinearPlan& p, int64_t m, Dim* qgrid, Dim* ggrid) {
  qgrid->x = static_cast<unsigned>((m + kQuantRows - 1) / kQuantRows);
  qgrid->y = static_cast<unsigned>(k_split(m, p.k, p.split_k).splits);
  ggrid->x = static_cast<unsigned>((m + kBlkM - 1) / kBlkM);
  ggrid->y = static_cast<unsigned>((p.n + kBlkN - 1) / kBlkN);
}

/// Checks forward()'s arguments and builds its launches.
inline Status plan_forward(const LinearPlan* p, const DeviceWeights& w, const void* d_x, void* d_y, int64_t m,
                           void* d_workspace, size_t workspace_bytes, ForwardLaunch* out) {
  constexpr const char* kFn = "GpuLinear::forward";
  SVDQ_RETURN_IF_ERROR(can_implement(p, m, p ? p->act : DType::kF32, kFn));
  const LinearPlan& L = *p;
  if (d_x == nullptr || d_y == nullptr)
    return Status(StatusCode::kErrorNullPointer, std::string(kFn) + ": x and y must be device pointers, not null");
  if ((reinterpret_cast<uintptr_t>(d_x) | reinterpret_cast<uintptr_t>(d_y)) % 16 != 0)
    return Status(StatusCode::kErrorInvalidArgument, std::string(kFn) + ": x and y must be 16-byte aligned");
  if (d_workspace == nullptr || reinterpret_cast<uintptr_t>(d_workspace) % kWorkspaceAlign != 0)
    return Status(StatusCode::kErrorWorkspace, std::string(kFn) + ": workspace must be non-null and 256-byte aligned");
  if (workspace_bytes < L.workspace_size(m))
    return Status(StatusCode::kErrorWorkspace, std::string(kFn) + ": workspace_bytes (" + std::to_string(workspace_bytes) +
                                                   ") < workspace_size(M) (" + std::to_string(L.workspace_size(m)) + ")");
  uint8_t* ws = static_cast<uint8_t*>(d_workspace);
  uint8_t* codes = ws;
  uint8_t* scales = codes + L.codes_bytes(m);
  float* lora = reinterpret_cast<float*>(scales + L.scales_bytes(m));
  float* partial = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(lora) + L.lora_bytes(m));
  const KSplit split = k_split(m, L.k, L.split_k);
  out->qp = QuantizeParams{d_x, m, L.k, w.inv_s, L.t_act, codes, scales, w.down, L.rank, L.down.rank_pad,
                           L.down.has_lo ? 1 : 0, L.down.lora_scale, lora};
  out->qp.rotate = L.rotated ? 1 : 0;
  out->qp.split_channels = split.channels;
  out->reduce = split.splits > 1 && L.rank > 0;
  out->qp.partial = out->reduce ? partial : nullptr;
  out->rp = LoraReduceParams{partial, split.splits, m * L.rank, L.down.lora_scale, lora};
  out->rgrid.x = static_cast<unsigned>((m * L.rank + kReduceThreads - 1) / kReduceThreads);
  out->rblock.x = kReduceThreads;
  out->gp = GemmParams{m, L.n, L.k, codes, scales, w.w_codes, w.w_scales, L.t_prod, lora, w.up, L.rank,
                       L.has_bias ? w.bias : nullptr, d_y};
  out->qp.act_unsigned = L.act_unsigned ? 1 : 0;  // the Nunchaku variants (formats.md §6.1, §6.2)
  out->qp.act_shift = L.act_shift;
  out->qp.layout = act_layout_for(L.path);  // kernel 2's A order (dispatch.hpp)
  out->gp.wcscales = L.has_wcscales ? w.wcscales : nullptr;
  grids(L, m, &out->qgrid, &out->ggrid);
  out->qblock.x = kQuantThreads;
  out->gblock.x = kGemmThreads;
  out->bf16 = L.act == DType::kBF16;
  out->kind = L.format == Format::kNvfp4 ? 1 : (L.act_unsigned ? 2 : 0);
  out->path = L.path;
  return Status::Ok();
}

/// Kernel 1's kind for a launch kind: the unsigned variant (2) is kernel 1's int4 instance with
/// QuantizeParams::act_unsigned set (a runtime flag there: one add and one qmax per group).
constexpr int quantize_kind(int kind) { return kind == 1 ? 1 : 0; }

/// Calls `launch.template operator()<T, kKind>(fl)` for the layer's dtype and kind (0 int4,
/// 1 nvfp4, 2 int4 with unsigned activations): the one place the kernel instantiations are chosen.
template <typename Launcher>
Status dispatch(const ForwardLaunch& fl, Launcher&& launch) {
  if (fl.bf16 && fl.kind == 0) return launch.template operator()<__nv_bfloat16, 0>(fl);
  if (fl.bf16 && fl.kind == 2) return launch.template operator()<__nv_bfloat16, 2>(fl);
  if (fl.bf16) return launch.template operator()<__nv_bfloat16, 1>(fl);
  if (fl.kind == 0) return launch.template operator()<__half, 0>(fl);
  if (fl.kind == 2) return launch.template operator()<__half, 2>(fl);
  return launch.template operator()<__half, 1>(fl);
}

/// Fills `out` (codes and scales of M rows) from host copies of the workspace's first two pieces.
inline void activations_meta(const LinearPlan& L, int64_t m, QuantizedActivations* out, size_t* codes,
                             size_t* scales) {
  out->format = L.format;
  out->rows = m;
  out->cols = L.k;
  out->tensor_scale = L.t_act;
  out->unsigned_codes = L.act_unsigned;
  *codes = static_cast<size_t>(m * (L.k / 2));
  *scales = static_cast<size_t>(m * (L.k / L.group) * (L.format == Format::kInt4 ? 4 : 1));
  out->codes.resize(*codes);
  out->scales.resize(*scales);
}

/// Puts host copies of the workspace's codes and scales (as kernel 1 wrote them, in the layout of
/// the plan's kernel 2 path: act_layout_for) into the canonical order, in place: read_activations
/// always returns the canonical bytes (the CPU reference's), whatever the device layout.
inline void activations_to_canonical(const LinearPlan& L, int64_t m, QuantizedActivations* out) {
  const int layout = act_layout_for(L.path);
  if (layout == kActCanonical) return;
  const int kind = L.format == Format::kNvfp4 ? 1 : 0;
  const int64_t row_bytes = L.k / 2, groups = L.k / L.group, sb = kind == 0 ? 4 : 1;
  const std::vector<uint8_t> codes = out->codes, scales = out->scales;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = 0; b < row_bytes; ++b)
      out->codes[static_cast<size_t>(r * row_bytes + b)] = codes[static_cast<size_t>(act_code_offset(layout, kind, m, L.k, r, b))];
    for (int64_t g = 0; g < groups; ++g)
      std::memcpy(out->scales.data() + (r * groups + g) * sb,
                  scales.data() + act_scale_offset(layout, kind, m, L.k, r, g) * sb, static_cast<size_t>(sb));
  }
}

}  // namespace svdq::cuda
