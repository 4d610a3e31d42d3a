// cuda/linear_host.hpp — the host logic of the GPU layer that does not depend on where the kernels
// run: validation, the repacking at upload, the workspace layout, the launch configuration and
// the kernel dispatch. Two backends sit behind it: the CUDA runtime (gpu_linear.cu, the product)
// and the emulated device (cuda/emu/emu_linear.cpp, tests and tools only). Both compile this very
// text, so the emulated tests check the product's host code too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dispatch.hpp"  // GemmPath, the kernel 2 instantiations
#include "gemm_w4a4_dp4a.cuh"
#include "quantize_lora_down.cuh"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"

namespace svdq::cuda {

constexpr size_t kWorkspaceAlign = 256;
inline size_t align_up(size_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// CUDA's launch limits (every architecture svdq targets).
constexpr int64_t kMaxGridX = 2147483647, kMaxGridYZ = 65535;

/// The layer, repacked for the kernels, in host memory (a backend uploads each array once).
struct LinearPlan {
  Format format = Format::kInt4;
  DType act = DType::kBF16;
  int64_t n = 0, k = 0;
  int rank = 0, group = 64;
  float t_act = 1.0f, t_prod = 1.0f;
  bool has_bias = false;
  bool rotated = false;  // block-Hadamard layer: not implemented by the kernels yet (can_implement)
  GemmPath path = GemmPath::kDp4a;  // kernel 2 (the backend sets it from the device: dispatch.hpp)
  std::vector<uint8_t> w_codes;  // (N, K/2) canonical packed codes (the dp4a kernel reads them as is)
  std::vector<float> w_scales;   // (N, G) fp32, exact decode of the fp16 / E4M3 group scales
  std::vector<float> inv_s;      // (K) fp32, 1 / s
  std::vector<float> down_t;     // (r, K) fp32, lora_down transposed
  std::vector<float> up;         // (N, r) fp32
  std::vector<float> bias;       // (N) fp32 (empty without bias)

  size_t codes_bytes(int64_t m) const { return align_up(static_cast<size_t>(m) * static_cast<size_t>(k / 2)); }
  size_t scales_bytes(int64_t m) const {
    return align_up(static_cast<size_t>(m) * static_cast<size_t>(k / group) * (format == Format::kInt4 ? 4 : 1));
  }
  size_t lora_bytes(int64_t m) const { return align_up(static_cast<size_t>(m) * static_cast<size_t>(rank) * 4); }
  /// Workspace: codes, then scales, then x·lora_down, each 256-byte aligned.
  size_t workspace_size(int64_t m) const { return m < 1 ? 0 : codes_bytes(m) + scales_bytes(m) + lora_bytes(m); }
};

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
  p.w_scales.resize(static_cast<size_t>(n * groups));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < groups; ++g) p.w_scales[i * groups + g] = q.wscale(i, g);
  p.inv_s = q.inverse_smooth();
  p.down_t.resize(static_cast<size_t>(r * k));
  p.up.resize(static_cast<size_t>(n * r));
  p.bias.resize(q.bias.size());
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t j = 0; j < r; ++j) p.down_t[j * k + kk] = bits16_to_float(q.lora_down[kk * r + j], q.storage);
  for (int64_t i = 0; i < n * r; ++i) p.up[i] = bits16_to_float(q.lora_up[i], q.storage);
  for (size_t i = 0; i < p.bias.size(); ++i) p.bias[i] = bits16_to_float(q.bias[i], q.storage);
  return p;
}

inline Status can_implement(const LinearPlan* p, int64_t m, DType dtype, const char* fn) {
  if (p == nullptr) return Status(StatusCode::kErrorInvalidArgument, std::string(fn) + ": empty (moved-from) layer");
  if (p->rotated)  // qrot (issue 13): the kernels do not rotate activations yet
    return Status(StatusCode::kErrorNotSupported,
                  std::string(fn) + ": the layer's rotation is block-hadamard; the GPU kernels "
                                    "implement rotation none only (use CpuLinear or reference_forward)");
  if (m < 1 || m > kMaxGridX)
    return Status(StatusCode::kErrorShape, std::string(fn) + ": M (" + std::to_string(m) + ") must be in [1, 2^31)");
  if (dtype != p->act)
    return Status(StatusCode::kErrorInvalidArgument, std::string(fn) + ": dtype (" + dtype_name(dtype) +
                                                         ") must be the layer's act dtype (" + dtype_name(p->act) + ")");
  return Status::Ok();
}

/// Where the uploaded arrays of a plan live on the backend's device.
struct DeviceWeights {
  const uint8_t* w_codes = nullptr;
  const float *w_scales = nullptr, *inv_s = nullptr, *down_t = nullptr, *up = nullptr, *bias = nullptr;
};

struct Dim {
  unsigned x = 1, y = 1, z = 1;
};

/// Everything one forward() launches: two kernels, their grids, blocks and parameters.
struct ForwardLaunch {
  Dim qgrid, qblock, ggrid, gblock;
  QuantizeParams qp;
  GemmParams gp;
  bool bf16 = true;
  int kind = 0;  // 0 int4, 1 nvfp4
  GemmPath path = GemmPath::kDp4a;
};

/// The launch configuration for M rows: kernel 1 one CTA per row (gridDim.x = M <= 2^31-1);
/// kernel 2 M tiles on gridDim.x (ceil(M/64) <= 2^31-1) and N tiles on gridDim.y (<= 65535).
inline void grids(const LinearPlan& p, int64_t m, Dim* qgrid, Dim* ggrid) {
  qgrid->x = static_cast<unsigned>(m);
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
  out->qp = QuantizeParams{d_x, m, L.k, w.inv_s, L.t_act, codes, scales, w.down_t, L.rank, lora};
  out->gp = GemmParams{m, L.n, L.k, codes, scales, w.w_codes, w.w_scales, L.t_prod, lora, w.up, L.rank,
                       L.has_bias ? w.bias : nullptr, d_y};
  grids(L, m, &out->qgrid, &out->ggrid);
  out->qblock.x = kQuantThreads;
  out->gblock.x = kGemmThreads;
  out->bf16 = L.act == DType::kBF16;
  out->kind = L.format == Format::kInt4 ? 0 : 1;
  out->path = L.path;
  return Status::Ok();
}

/// Calls `launch.template operator()<T, kKind>(fl)` for the layer's dtype and format: the one
/// place the kernel instantiations are chosen.
template <typename Launcher>
Status dispatch(const ForwardLaunch& fl, Launcher&& launch) {
  if (fl.bf16 && fl.kind == 0) return launch.template operator()<__nv_bfloat16, 0>(fl);
  if (fl.bf16) return launch.template operator()<__nv_bfloat16, 1>(fl);
  if (fl.kind == 0) return launch.template operator()<__half, 0>(fl);
  return launch.template operator()<__half, 1>(fl);
}

/// Fills `out` (codes and scales of M rows) from host copies of the workspace's first two pieces.
inline void activations_meta(const LinearPlan& L, int64_t m, QuantizedActivations* out, size_t* codes,
                             size_t* scales) {
  out->format = L.format;
  out->rows = m;
  out->cols = L.k;
  out->tensor_scale = L.t_act;
  *codes = static_cast<size_t>(m * (L.k / 2));
  *scales = static_cast<size_t>(m * (L.k / L.group) * (L.format == Format::kInt4 ? 4 : 1));
  out->codes.resize(*codes);
  out->scales.resize(*scales);
}

}  // namespace svdq::cuda
