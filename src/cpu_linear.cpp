// The prepared CPU layer (include/svdq/cpu_linear.hpp).
//
// Layout prepared once: weight codes as int8 values, K-major (wq[k * N + n]; nvfp4 codes are
// stored doubled, 2 * E2M1 is an integer), weight group scales group-major (sw[g * N + n]),
// lora_up transposed (upT[j * N + n]), so every inner loop runs over n with unit stride.
//
// forward(): (1) per row: smooth, quantize each group by the contract (the same group functions
// as quantize_activations), store codes as int8 and group scales as floats; x * lora_down in
// k-ascending order. (2) per (row tile, column chunk): group sums P_g exactly in fp32 (integers,
// or quarters for nvfp4, all below 2^24), acc = fmaf(P_g, sx * sw, acc) in group order, then
// the branch in j-ascending order and the bias. Tasks never share an output element, so the
// thread count does not change any bit.
#include "svdq/cpu_linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "check.hpp"
#include "core.hpp"

namespace svdq {

struct CpuLinear::Impl {
  Format format = Format::kInt4;
  int64_t k = 0, n = 0;
  int r = 0, gs = 64;
  int64_t groups = 0;
  float t_act = 1.0f, t_prod = 1.0f;
  bool act_unsigned = false;   // unsigned int4 codes of (x + shift) / s
  float shift = 0.0f;
  std::vector<float> wc;       // [N] nvfp4 per-channel c_n, or empty
  bool rotate = false;         // block-Hadamard rotation of each smoothed group (formats.hpp)
  std::vector<float> inv_s;    // [K]
  std::vector<int8_t> wq;      // [K][N]
  std::vector<float> sw;       // [groups][N]
  std::vector<float> down;     // [K][r]
  std::vector<float> up_t;     // [r][N]
  std::vector<float> bias;     // [N] (zeros without bias)
};

namespace {

constexpr int64_t kRowTile = 8;     // rows of x per task
constexpr int64_t kColChunk = 256;  // output columns per task
constexpr size_t kAlign = 64;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

struct Workspace {
  int8_t* xq;    // [M][K] activation codes (nvfp4 doubled)
  float* sx;     // [M][groups] activation group scales (nvfp4: E4M3 value, without t_act)
  float* lora;   // [M][r]
};

size_t ws_bytes(const CpuLinear::Impl& p, int64_t m) {
  if (m <= 0) return 0;
  const size_t mm = static_cast<size_t>(m);
  return align_up(mm * static_cast<size_t>(p.k)) +
         align_up(mm * static_cast<size_t>(p.groups) * sizeof(float)) +
         align_up(mm * static_cast<size_t>(p.r) * sizeof(float));
}

Workspace carve(const CpuLinear::Impl& p, int64_t m, void* base) {
  auto* b = static_cast<unsigned char*>(base);
  const size_t mm = static_cast<size_t>(m);
  Workspace w;
  w.xq = reinterpret_cast<int8_t*>(b);
  b += align_up(mm * static_cast<size_t>(p.k));
  w.sx = reinterpret_cast<float*>(b);
  b += align_up(mm * static_cast<size_t>(p.groups) * sizeof(float));
  w.lora = reinterpret_cast<float*>(b);
  return w;
}

inline float load_elem(ConstMatrixRef x, int64_t i, int64_t j) {
  switch (x.dtype) {
    case DType::kF16: return half_bits_to_float(static_cast<const uint16_t*>(x.data)[i * x.ld + j]);
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(x.data)[i * x.ld + j]);
    default: return static_cast<const float*>(x.data)[i * x.ld + j];
  }
}

// Stage 1 for row i: codes, scales, lora.
void quantize_row(const CpuLinear::Impl& p, ConstMatrixRef x, int64_t i, const Workspace& w) {
  const int gs = p.gs;
  float xh[64];
  uint8_t codes[64];
  int8_t* xq = w.xq + i * p.k;
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int e = 0; e < gs; ++e) {
      const int64_t kk = g * gs + e;
      xh[e] = p.act_unsigned ? (load_elem(x, i, kk) + p.shift) * p.inv_s[kk]
                             : load_elem(x, i, kk) * p.inv_s[kk];
    }
    if (p.rotate) hadamard_transform(xh, gs);  // never with act_unsigned (validate)
    if (p.act_unsigned) {
      uint8_t sb[4];
      detail::quantize_act_group_uint4(xh, gs, codes, sb);
      std::memcpy(&w.sx[i * p.groups + g], sb, 4);
      for (int e = 0; e < gs; ++e) xq[g * gs + e] = static_cast<int8_t>(codes[e]);
    } else if (p.format == Format::kInt4) {
      uint8_t sb[4];
      detail::quantize_act_group_int4(xh, gs, codes, sb);
      std::memcpy(&w.sx[i * p.groups + g], sb, 4);
      for (int e = 0; e < gs; ++e) xq[g * gs + e] = static_cast<int8_t>(decode_int4(codes[e]));
    } else {
      uint8_t sb = 0;
      detail::quantize_act_group_nvfp4(xh, gs, p.t_act, codes, &sb);
      w.sx[i * p.groups + g] = decode_e4m3(sb);
      for (int e = 0; e < gs; ++e)
        xq[g * gs + e] = static_cast<int8_t>(2.0f * decode_e2m1(codes[e]));
    }
  }
  if (p.r > 0) {
    float* lora = w.lora + i * p.r;
    for (int j = 0; j < p.r; ++j) lora[j] = 0.0f;
    for (int64_t kk = 0; kk < p.k; ++kk) {
      const float xv = load_elem(x, i, kk);
      const float* d = p.down.data() + kk * p.r;
      for (int j = 0; j < p.r; ++j) lora[j] = lora[j] + xv * d[j];
    }
  }
}

inline void store_elem(MatrixRef y, int64_t i, int64_t j, float v) {
  switch (y.dtype) {
    case DType::kF16: static_cast<uint16_t*>(y.data)[i * y.ld + j] = float_to_half_bits(v); break;
    case DType::kBF16: static_cast<uint16_t*>(y.data)[i * y.ld + j] = float_to_bf16_bits(v); break;
    default: static_cast<float*>(y.data)[i * y.ld + j] = v; break;
  }
}

// Stage 2 for rows [m0, m0 + mt) and columns [n0, n0 + nc). The body is compiled twice (generic
// and AVX2+FMA, chosen at run time); fmaf is correctly rounded either way, products and sums of
// the group sums are exact, and no other a * b + c is contracted (-ffp-contract=off), so both
// give the same bits.
[[gnu::always_inline]] inline void tile_body(const CpuLinear::Impl& p, const Workspace& w,
                                             MatrixRef y, int64_t m0, int64_t mt, int64_t n0,
                                             int64_t nc) {
  alignas(64) float acc[kRowTile][kColChunk];
  alignas(64) float ps[kRowTile][kColChunk];
  alignas(64) float wf[kColChunk];
  const int64_t n = p.n, gs = p.gs;
  const float p_scale = p.format == Format::kNvfp4 ? 0.25f : 1.0f;  // (2a)(2b) = 4ab
  for (int64_t i = 0; i < mt; ++i)
    for (int64_t c = 0; c < nc; ++c) acc[i][c] = 0.0f;
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t i = 0; i < mt; ++i)
      for (int64_t c = 0; c < nc; ++c) ps[i][c] = 0.0f;
    for (int64_t e = 0; e < gs; ++e) {
      const int64_t kk = g * gs + e;
      const int8_t* wrow = p.wq.data() + kk * n + n0;
      for (int64_t c = 0; c < nc; ++c) wf[c] = static_cast<float>(wrow[c]);
      for (int64_t i = 0; i < mt; ++i) {
        const float xv = static_cast<float>(w.xq[(m0 + i) * p.k + kk]);
        if (xv == 0.0f) continue;  // adds nothing (P_g is exact, so skipping changes no bit)
        float* pr = ps[i];
        for (int64_t c = 0; c < nc; ++c) pr[c] = pr[c] + xv * wf[c];
      }
    }
    const float* swg = p.sw.data() + g * n + n0;
    for (int64_t i = 0; i < mt; ++i) {
      const float sx = w.sx[(m0 + i) * p.groups + g];
      float* a = acc[i];
      const float* pr = ps[i];
      for (int64_t c = 0; c < nc; ++c) a[c] = std::fma(pr[c] * p_scale, sx * swg[c], a[c]);
    }
  }
  for (int64_t i = 0; i < mt; ++i) {
    float* a = acc[i];
    if (p.format == Format::kNvfp4)
      for (int64_t c = 0; c < nc; ++c) a[c] = a[c] * p.t_prod;
    if (!p.wc.empty())
      for (int64_t c = 0; c < nc; ++c) a[c] = a[c] * p.wc[n0 + c];
    float* br = ps[i];  // reuse as the branch accumulator
    for (int64_t c = 0; c < nc; ++c) br[c] = 0.0f;
    const float* lora = w.lora + (m0 + i) * p.r;
    for (int j = 0; j < p.r; ++j) {
      const float lj = lora[j];
      const float* u = p.up_t.data() + j * n + n0;
      for (int64_t c = 0; c < nc; ++c) br[c] = br[c] + lj * u[c];
    }
    const float* b = p.bias.data() + n0;
    for (int64_t c = 0; c < nc; ++c) store_elem(y, m0 + i, n0 + c, (a[c] + br[c]) + b[c]);
  }
}

void tile_generic(const CpuLinear::Impl& p, const Workspace& w, MatrixRef y, int64_t m0,
                  int64_t mt, int64_t n0, int64_t nc) {
  tile_body(p, w, y, m0, mt, n0, nc);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SVDQ_HAVE_AVX2_PATH 1
[[gnu::target("avx2,fma")]] void tile_avx2(const CpuLinear::Impl& p, const Workspace& w,
                                            MatrixRef y, int64_t m0, int64_t mt, int64_t n0,
                                            int64_t nc) {
  tile_body(p, w, y, m0, mt, n0, nc);
}
bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

using TileFn = void (*)(const CpuLinear::Impl&, const Workspace&, MatrixRef, int64_t, int64_t,
                        int64_t, int64_t);
TileFn pick_tile() {
#ifdef SVDQ_HAVE_AVX2_PATH
  static const bool avx2 = cpu_has_avx2_fma();
  if (avx2) return tile_avx2;
#endif
  return tile_generic;
}

bool overlap(ConstMatrixRef x, MatrixRef y, int64_t m) {
  if (m <= 0 || x.cols == 0 || y.cols == 0) return false;
  const auto span = [m](const void* d, int64_t cols, int64_t ld, DType t) {
    const auto b = reinterpret_cast<uintptr_t>(d);
    return std::pair<uintptr_t, uintptr_t>(
        b, b + static_cast<uintptr_t>(((m - 1) * ld + cols) * static_cast<int64_t>(dtype_size(t))) - 1);
  };
  const auto [x0, x1] = span(x.data, x.cols, x.ld, x.dtype);
  const auto [y0, y1] = span(y.data, y.cols, y.ld, y.dtype);
  return x0 <= y1 && y0 <= x1;
}

}  // namespace

Result<CpuLinear> CpuLinear::create(const QuantizedLinear& q) {
  SVDQ_RETURN_IF_ERROR(validate(q));
  auto p = std::make_unique<Impl>();
  p->format = q.format;
  p->k = q.in_features;
  p->n = q.out_features;
  p->r = q.rank;
  p->gs = q.group;
  p->groups = p->k / p->gs;
  p->t_act = q.act_tensor_scale;
  p->t_prod = q.act_tensor_scale * q.wtscale;
  p->rotate = q.rotation == Rotation::kBlockHadamard;
  p->inv_s = q.inverse_smooth();
  p->act_unsigned = q.act_unsigned;
  p->shift = q.act_shift;
  p->wc.resize(q.wcscales.size());
  for (size_t i = 0; i < q.wcscales.size(); ++i) p->wc[i] = bits16_to_float(q.wcscales[i], q.storage);
  const int64_t k = p->k, n = p->n, r = p->r;
  p->wq.resize(static_cast<size_t>(k * n));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* row = q.qweight.data() + i * (k / 2);
    for (int64_t j = 0; j < k; ++j) {
      const uint8_t code = packed_nibble(row, j);
      p->wq[static_cast<size_t>(j * n + i)] =
          q.format == Format::kInt4 ? static_cast<int8_t>(decode_int4(code))
                                    : static_cast<int8_t>(2.0f * decode_e2m1(code));
    }
  }
  p->sw.resize(static_cast<size_t>(p->groups * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < p->groups; ++g) p->sw[static_cast<size_t>(g * n + i)] = q.wscale(i, g);
  p->down.resize(static_cast<size_t>(k * r));
  for (int64_t i = 0; i < k * r; ++i) p->down[i] = bits16_to_float(q.lora_down[i], q.storage);
  p->up_t.resize(static_cast<size_t>(r * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < r; ++j)
      p->up_t[static_cast<size_t>(j * n + i)] = bits16_to_float(q.lora_up[i * r + j], q.storage);
  p->bias.assign(static_cast<size_t>(n), 0.0f);
  for (size_t i = 0; i < q.bias.size(); ++i) p->bias[i] = bits16_to_float(q.bias[i], q.storage);
  return CpuLinear(std::move(p));
}

CpuLinear::CpuLinear(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CpuLinear::CpuLinear(CpuLinear&&) noexcept = default;
CpuLinear& CpuLinear::operator=(CpuLinear&&) noexcept = default;
CpuLinear::~CpuLinear() = default;

int64_t CpuLinear::in_features() const noexcept { return impl_ ? impl_->k : 0; }
int64_t CpuLinear::out_features() const noexcept { return impl_ ? impl_->n : 0; }
int CpuLinear::rank() const noexcept { return impl_ ? impl_->r : 0; }
Format CpuLinear::format() const noexcept { return impl_ ? impl_->format : Format::kInt4; }

size_t CpuLinear::workspace_size(int64_t max_m) const noexcept {
  return impl_ ? ws_bytes(*impl_, max_m) : 0;
}

Status CpuLinear::forward(ConstMatrixRef x, MatrixRef y, int64_t m, void* workspace,
                          size_t workspace_bytes, int threads) const {
  constexpr const char* kFn = "CpuLinear::forward";
  if (!impl_)
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": the layer was moved from");
  const Impl& p = *impl_;
  if (m < 0) return detail::error(StatusCode::kErrorShape, kFn, ": m (", m, ") must be >= 0");
  if (threads < 1)
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": threads (", threads,
                         ") must be >= 1");
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "x", x));
  SVDQ_RETURN_IF_ERROR(detail::check_matrix(kFn, "y", MatrixRef(y)));
  if (x.cols != p.k)
    return detail::error(StatusCode::kErrorShape, kFn, ": x.cols (", x.cols,
                         ") must equal in_features (", p.k, ")");
  if (y.cols != p.n)
    return detail::error(StatusCode::kErrorShape, kFn, ": y.cols (", y.cols,
                         ") must equal out_features (", p.n, ")");
  if (x.rows < m || y.rows < m)
    return detail::error(StatusCode::kErrorShape, kFn, ": x.rows (", x.rows, ") and y.rows (",
                         y.rows, ") must be >= m (", m, ")");
  if (m == 0) return Status::Ok();
  const size_t need = ws_bytes(p, m);
  if (workspace == nullptr)
    return detail::error(StatusCode::kErrorWorkspace, kFn, ": workspace is null (",
                         need, " bytes needed for m = ", m, ")");
  if (reinterpret_cast<uintptr_t>(workspace) % kAlign != 0)
    return detail::error(StatusCode::kErrorWorkspace, kFn, ": workspace must be ", kAlign,
                         "-byte aligned");
  if (workspace_bytes < need)
    return detail::error(StatusCode::kErrorWorkspace, kFn, ": workspace_bytes (", workspace_bytes,
                         ") must be >= workspace_size(", m, ") = ", need);
  if (overlap(x, y, m))
    return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": y must not alias (overlap) x");

  const Workspace w = carve(p, m, workspace);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < m; ++i) quantize_row(p, x, i, w);

  const TileFn tile = pick_tile();
  const int64_t row_tiles = (m + kRowTile - 1) / kRowTile;
  const int64_t col_chunks = (p.n + kColChunk - 1) / kColChunk;
  const int64_t tasks = row_tiles * col_chunks;
  // Column chunk outer: consecutive tasks share a weight chunk (kept in cache across row tiles).
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t cc = t / row_tiles, rt = t % row_tiles;
    const int64_t m0 = rt * kRowTile, n0 = cc * kColChunk;
    tile(p, w, y, m0, std::min(kRowTile, m - m0), n0, std::min(kColChunk, p.n - n0));
  }
  return Status::Ok();
}

}  // namespace svdq
