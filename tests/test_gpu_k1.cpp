// Kernel 1 (cuda/quantize_lora_down.cuh: activation quantization + x·lora_down on tensor cores),
// on two backends from this one source like tests/test_gpu.cpp:
//   * linked into test_gpu (SVDQ_TEST_BACKEND_CUDA, label "gpu", run by scripts/gpu_suite.sh):
//     svdq::GpuLinear on a device; skips without one;
//   * test_gpu_k1_emu (SVDQ_TEST_BACKEND_EMU, labels "emu" and "cpu"): the emulated device.
// Compared against: the CPU reference's activation codes and scales (byte-equal: the contract);
// lora = x·lora_down read from the workspace against a float64 product of the same 16-bit operands
// (bound below); the layer's output against reference_forward (<= 1e-3 relative; bit-equal at
// rank 0); NaN / Inf rows confined to their row; the same bits under every emulated interleaving.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "gpu_check.hpp"  // the backend (memory, copies, skip) and the comparison with the reference
#include "quantize_lora_down_plan.hpp"
#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

#if defined(SVDQ_TEST_BACKEND_EMU)
#include <random>

#include "emu/runtime.hpp"
#include "quantize_lora_down.cuh"  // hadamard_group, run in an emulated warp below
#endif

namespace {

using namespace svdq_test;  // NOLINT: the shared test backend and checks (tests/gpu_check.hpp)

#if defined(SVDQ_TEST_BACKEND_EMU)
// Kernel 2 on its dp4a path (sm 0): these tests are about kernel 1, and dp4a is the cheapest kernel 2
// to emulate (test_gpu_emu runs every kernel-2 path).
svdq::Result<Linear> make_linear(const svdq::QuantizedLinear& q, svdq::DType dt) { return Linear::create(q, dt, -1, 0); }
#else
svdq::Result<Linear> make_linear(const svdq::QuantizedLinear& q, svdq::DType dt) { return Linear::create(q, dt); }
#endif

// The workspace layout of docs/gpu.md, written out here independently of cuda/linear_host.hpp:
// codes M·K/2, scales M·K/group·(4 | 1), lora M·r fp32, split-K partials min(M·L, 2048)·r fp32
// (L = ceil(K/256) slices; none for r = 0 or L = 1), each piece 256-byte aligned.
size_t align256(size_t v) { return (v + 255) / 256 * 256; }
size_t partial_floats(int64_t m, int64_t k, int r) {
  const int64_t l = (k + 255) / 256;
  return r == 0 || l <= 1 ? 0 : static_cast<size_t>(std::min<int64_t>(m * l, 2048) * r);
}

// Kernel 1's split of K (docs/gpu.md "Split-K"), written out here: T = ceil(M/16) tiles, L slices,
// want = clamp(floor(128 / T), 1, L), per = ceil(L / want) slices per split, S = ceil(L / per).
struct Split {
  int64_t s, per;
};
Split split_for(int64_t m, int64_t k) {
  const int64_t t = (m + 15) / 16, l = (k + 255) / 256;
  const int64_t want = std::clamp<int64_t>(128 / t, 1, l), per = (l + want - 1) / want;
  return {(l + per - 1) / per, per};
}

struct Fixture {
  // K = 320 = 256 + 64: one full slice of kernel 1 and a partial one; N = 136 allows rank 133.
  int64_t k = kEmu ? 320 : 1088, n = 136;
  svdq::synth::Layer layer;
  svdq::ActivationStats stats;
  mutable std::map<std::tuple<int, int, int>, svdq::QuantizedLinear> cache;
  Fixture() {
    svdq::synth::LayerSpec spec;
    spec.in_features = k;
    spec.out_features = n;
    spec.seed = 7;
    layer = *svdq::synth::make_layer(spec);
    const auto calib = svdq::synth::make_activations(layer, 128, 1);
    EXPECT_TRUE(stats.observe(svdq::MatrixView<const float>(calib.data(), 128, k)).ok());
  }
  // One quantization per (format, storage) at kMaxRank; a smaller rank keeps the first r columns
  // of lora_down and lora_up (a valid layer, if not the best one: the kernels are compared with
  // the reference on the same operands, which is all these tests need; it saves the emu run time).
  static constexpr int kMaxRank = 133;
  const svdq::QuantizedLinear& quantize(svdq::Format f, int rank, svdq::DType storage) const {
    const auto key = std::make_tuple(static_cast<int>(f), rank, static_cast<int>(storage));
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    if (rank == kMaxRank) {
      svdq::QuantConfig c;
      c.format = f;
      c.rank = rank;
      c.storage = storage;
      return cache[key] = *svdq::quantize_linear(svdq::MatrixView<const float>(layer.weight.data(), n, k),
                                                 svdq::vector_view<const float>(layer.bias.data(), n), &stats, c);
    }
    svdq::QuantizedLinear q = quantize(f, kMaxRank, storage);
    std::vector<uint16_t> down(static_cast<size_t>(k * rank)), up(static_cast<size_t>(n * rank));
    for (int64_t i = 0; i < k; ++i)
      for (int j = 0; j < rank; ++j) down[i * rank + j] = q.lora_down[i * kMaxRank + j];
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < rank; ++j) up[i * rank + j] = q.lora_up[i * kMaxRank + j];
    q.rank = rank;
    q.lora_down = std::move(down);
    q.lora_up = std::move(up);
    EXPECT_TRUE(svdq::validate(q).ok());
    return cache[key] = std::move(q);
  }
  std::vector<uint16_t> activations(int64_t m, svdq::DType dt, uint64_t seed = 3) const {
    const auto x = svdq::synth::make_activations(layer, m, seed);
    std::vector<uint16_t> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b[i] = svdq::float_to_bits16(x[i], dt);
    return b;
  }
};

const Fixture& fixture() {
  static Fixture f;
  return f;
}

struct Outcome {
  std::vector<uint16_t> y;
  std::vector<uint8_t> codes, scales;
  std::vector<float> lora;
};

// One forward; returns y and the workspace's three pieces.
void run(const Linear& g, const svdq::QuantizedLinear& q, const std::vector<uint16_t>& x, int64_t m, Outcome* out) {
  const size_t sb = q.format == svdq::Format::kInt4 ? 4 : 1;
  const size_t codes = static_cast<size_t>(m * q.in_features / 2), scales = static_cast<size_t>(m * q.in_features / q.group) * sb;
  const size_t lora = static_cast<size_t>(m * q.rank);
  const size_t ws_bytes = g.workspace_size(m);
  ASSERT_EQ(ws_bytes, align256(codes) + align256(scales) + align256(lora * 4) +
                         align256(partial_floats(m, q.in_features, q.rank) * 4));
  void* dx = dev_alloc(x.size() * 2);
  void* dy = dev_alloc(static_cast<size_t>(m * q.out_features) * 2);
  void* ws = dev_alloc(ws_bytes);
  to_dev(dx, x.data(), x.size() * 2);
  const svdq::Status st = g.forward(dx, dy, m, ws, ws_bytes, nullptr);
  EXPECT_TRUE(st.ok()) << st.to_string();
#if !defined(SVDQ_TEST_BACKEND_EMU)
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
#endif
  out->y.resize(static_cast<size_t>(m * q.out_features));
  out->codes.resize(codes);
  out->scales.resize(scales);
  out->lora.resize(lora);
  to_host(out->y.data(), dy, out->y.size() * 2);
  const auto* w = static_cast<const uint8_t*>(ws);
  // Codes and scales through read_activations: the canonical bytes whatever layout kernel 2's path
  // has in the workspace (a GPU's mma path: fragment order, cuda/codecs.cuh ActLayout).
  svdq::QuantizedActivations act;
#if defined(SVDQ_TEST_BACKEND_EMU)
  EXPECT_TRUE(g.read_activations(ws, m, nullptr, &act).ok());
#else
  EXPECT_TRUE(svdq::test_support::read_activations(g, ws, m, nullptr, &act).ok());
#endif
  out->codes = act.codes;
  out->scales = act.scales;
  if (lora > 0) to_host(out->lora.data(), w + align256(codes) + align256(scales), lora * 4);
  dev_free(dx);
  dev_free(dy);
  dev_free(ws);
}

// lora against the float64 product of the same operands (x in the act dtype, lora_down in the
// storage dtype; every product is exact in fp32 and in float64). The bound, per element:
//   |lora - lora64| <= U 2^-24 sum_k |x_k d_kj|  +  2^-38 max|d| sum_k |x_k|
// The second term is the bf16 -> f16 operand split (quantize_lora_down.cuh). U counts roundings,
// each at most 2^-24 of sum|x d| (every partial sum is below it): with S = ceil(K/16) k16 steps
// dealt to 8 warps, a warp chains at most ceil(S/8) steps of 2 mma (hi, lo), then 3 tree adds.
//   emulated device: each mma rounds once (its host body sums in double): U = 2 ceil(S/8) + 4;
//   a GPU: the tensor core's internal order and precision are unspecified; allowing 4 units per
//   mma step and 8 more: U = 4 S + 8 (docs/gpu.md), still below the K units of a plain
//   sequential fp32 sum's worst case.
// Split-K (split_for: P splits of at most S_p = 16 per steps each) adds P - 1 roundings (the
// partials' sum) and shortens the chains: U = 2 ceil(S_p/8) + 4 + (P - 1) emulated,
// 4 S + 8 + (P - 1) on a GPU. `split` = false: the unsplit kernel (P = 1).
// Returns the largest observed error in units of 2^-24 sum|x d| (for docs/gpu.md).
double check_lora(const svdq::QuantizedLinear& q, svdq::DType dt, const std::vector<uint16_t>& x, int64_t m,
                  const std::vector<float>& lora, int skip_row = -1, bool split = true) {
  const int64_t k = q.in_features;
  const int r = q.rank;
  double dmax = 0;
  for (uint16_t b : q.lora_down) dmax = std::max(dmax, std::fabs(static_cast<double>(svdq::bits16_to_float(b, q.storage))));
  double worst = 0;
  int bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (i == skip_row) continue;
    for (int j = 0; j < r; ++j) {
      double s = 0, a = 0, ax = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const double xv = svdq::bits16_to_float(x[i * k + kk], dt);
        const double dv = svdq::bits16_to_float(q.lora_down[kk * r + j], q.storage);
        s += xv * dv;
        a += std::fabs(xv * dv);
        ax += std::fabs(xv);
      }
      const double u = std::ldexp(1.0, -24);
      const double steps = static_cast<double>((k + 15) / 16);
      const Split sp = split ? split_for(m, k) : Split{1, (k + 255) / 256};
      const double split_steps = std::min(steps, static_cast<double>(16 * sp.per));
      const double units = (kEmu ? 2 * std::ceil(split_steps / 8) + 4 : 4 * steps + 8) + static_cast<double>(sp.s - 1);
      const double bound = units * u * a + std::ldexp(dmax * ax, -38);
      const double err = std::fabs(static_cast<double>(lora[i * r + j]) - s);
      if (!(err <= bound) && ++bad <= 5)
        ADD_FAILURE() << "lora[" << i << "][" << j << "] = " << lora[i * r + j] << ", float64 " << s << ", error " << err
                      << " > bound " << bound;
      if (a > 0) worst = std::max(worst, err / (u * a));
    }
  }
  EXPECT_EQ(bad, 0);
  return worst;
}

struct Case {
  svdq::Format format;
  svdq::DType dtype;
  int rank;
  int64_t m;
  svdq::DType storage = svdq::DType::kBF16;
  bool rotated = false;  // the layer with rotation = block-hadamard (kernel 1 rotates each group)
  bool operator==(const Case&) const = default;
};

// The layer `q` with rotation = block-hadamard: a valid layer (its weights are whatever they are;
// the kernels are compared with the reference on the same operands), without a second quantization.
svdq::QuantizedLinear rotated_copy(const svdq::QuantizedLinear& q) {
  svdq::QuantizedLinear r = q;
  r.rotation = svdq::Rotation::kBlockHadamard;
  EXPECT_TRUE(svdq::validate(r).ok());
  return r;
}

class Kernel1 : public ::testing::TestWithParam<Case> {};

TEST_P(Kernel1, CodesScalesLoraAndOutput) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const Fixture& f = fixture();
  const svdq::QuantizedLinear& q0 = f.quantize(c.format, c.rank, c.storage);
  const svdq::QuantizedLinear rot = c.rotated ? rotated_copy(q0) : svdq::QuantizedLinear{};
  const svdq::QuantizedLinear& q = c.rotated ? rot : q0;
  auto g = make_linear(q, c.dtype);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  const auto x = f.activations(c.m, c.dtype);
  Outcome got;
  ASSERT_NO_FATAL_FAILURE(run(*g, q, x, c.m, &got));
  expect_matches_reference(q, x, c.dtype, c.m, got.codes, got.scales, got.y);
  if (c.rank > 0) RecordProperty("lora_error_units", std::to_string(check_lora(q, c.dtype, x, c.m, got.lora)));
}

std::vector<Case> cases() {
  using svdq::DType;
  using svdq::Format;
  std::vector<Case> v;
  // Ranks 0/16/32/64/128, M 1/7/33/129 (33 and 129: the last CTA with one row), both formats and
  // dtypes, bf16 storage (the plain operand for bf16 activations, the scaled hi/lo split for f16
  // ones) and f16 storage (the exact hi/lo split for bf16 activations; plain for f16), rank 133
  // (a second 128-column pass, not a multiple of 8: zero-padded columns) and rank 5: every value
  // of each dimension, not the full cross (the emulated device's time under ASan).
  const Format i4 = Format::kInt4, f4 = Format::kNvfp4;
  const DType bf = DType::kBF16, hf = DType::kF16;
  // Every case once: gtest refuses the whole suite when two share a name (case_name), and the
  // device's full crosses below repeat some of the listed ones.
  auto add = [&v](const Case& c) {
    if (std::find(v.begin(), v.end(), c) == v.end()) v.push_back(c);
  };
  for (const Case& c : std::vector<Case>{
           {i4, bf, 0, 33},  {i4, bf, 16, 7},  {i4, bf, 128, 1},     {i4, bf, 64, 7, hf}, {i4, bf, 133, 17},
           {i4, hf, 0, 1},   {i4, hf, 32, 7},  {i4, hf, 128, 129},   {i4, hf, 5, 17},     {i4, hf, 128, 7, hf},
           {f4, bf, 0, 7},   {f4, bf, 64, 1},  {f4, bf, 128, 7, hf}, {f4, bf, 32, 33},    {f4, bf, 5, 17},
           {f4, hf, 16, 1},  {f4, hf, 128, 7}, {f4, hf, 133, 17},    {f4, hf, 64, 7, hf}})
    add(c);
  // Rotated layers (block-Hadamard, docs/formats.md §6.3): both formats and dtypes, rank 0 (output
  // bit-equal) and a branch, both storage dtypes, M with a partial CTA; K = 320 has a partial slice.
  for (const Case& c : std::vector<Case>{{i4, bf, 0, 17, bf, true},
                                          {i4, hf, 16, 7, hf, true},
                                          {f4, bf, 0, 17, bf, true},
                                          {f4, hf, 32, 1, bf, true}})
    add(c);
  if (!kEmu)  // a device: the full cross of the ranks, M and types as well
    for (auto fmt : {i4, f4})
      for (auto dt : {bf, hf})
        for (int r : {0, 16, 32, 64, 128})
          for (int64_t m : {1, 7, 129, 1000}) add({fmt, dt, r, m});
  if (!kEmu)  // a device: rotated layers over the same formats and dtypes, ranks 0 / 32, three M
    for (auto fmt : {i4, f4})
      for (auto dt : {bf, hf})
        for (int r : {0, 32})
          for (int64_t m : {1, 129, 1000}) add({fmt, dt, r, m, bf, true});
  return v;
}
std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(svdq::format_name(c.format)) + "_" + svdq::dtype_name(c.dtype) + "_r" + std::to_string(c.rank) +
         "_m" + std::to_string(c.m) + "_st" + svdq::dtype_name(c.storage) + (c.rotated ? "_rot" : "");
}
INSTANTIATE_TEST_SUITE_P(All, Kernel1, ::testing::ValuesIn(cases()), case_name);

// A NaN and an Inf row: codes and scales still byte-equal to the reference, their lora rows not
// finite (NaN, or +-Inf from the Inf row), their outputs NaN, every other row's lora and output bits
// unchanged from the clean run. Rows 3 and 17 are in different CTAs' tiles (16 rows each).
TEST(Kernel1Rows, NanAndInfRowsStayInTheirRows) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 20;
  for (auto [fmt, dt] : {std::pair{svdq::Format::kInt4, svdq::DType::kBF16}, {svdq::Format::kNvfp4, svdq::DType::kF16}}) {
      SCOPED_TRACE(std::string(svdq::format_name(fmt)) + " " + svdq::dtype_name(dt));
      const auto& q = f.quantize(fmt, 32, svdq::DType::kBF16);
      auto g = make_linear(q, dt);
      ASSERT_TRUE(g.ok());
      auto x = f.activations(m, dt);
      Outcome clean, dirty;
      ASSERT_NO_FATAL_FAILURE(run(*g, q, x, m, &clean));
      const uint16_t nan = dt == svdq::DType::kBF16 ? 0x7FC0 : 0x7E00, inf = dt == svdq::DType::kBF16 ? 0x7F80 : 0x7C00;
      x[3 * f.k + 10] = nan;
      x[17 * f.k + 300] = inf;
      ASSERT_NO_FATAL_FAILURE(run(*g, q, x, m, &dirty));
      Reference ref;
      ASSERT_NO_FATAL_FAILURE(reference_of(q, x, dt, m, &ref));
      expect_activations_match(dirty.codes, dirty.scales, ref);
      for (int64_t i = 0; i < m; ++i) {
        const bool bad_row = i == 3 || i == 17;
        for (int j = 0; j < q.rank; ++j) {
          const float v = dirty.lora[i * q.rank + j];
          if (bad_row) EXPECT_FALSE(std::isfinite(v)) << i << " " << j;
          else EXPECT_EQ(std::memcmp(&v, &clean.lora[i * q.rank + j], 4), 0) << i << " " << j;
        }
        for (int64_t j = 0; j < f.n; ++j) {
          const float y = svdq::bits16_to_float(dirty.y[i * f.n + j], dt);
          if (bad_row) EXPECT_TRUE(std::isnan(y)) << i << " " << j;
          else EXPECT_EQ(dirty.y[i * f.n + j], clean.y[i * f.n + j]) << i << " " << j;
        }
      }
    }
}

// K below one 256-channel slice: nvfp4 K = 48 (3 k16 steps, warps 3-7 idle) and int4 K = 64;
// rank = min(N, K) = 16; M = 20 (two CTAs, the second with 4 rows).
TEST(Kernel1Shapes, NarrowK) {
  SKIP_WITHOUT_GPU();
  for (auto [fmt, k] : {std::pair{svdq::Format::kNvfp4, int64_t{48}}, {svdq::Format::kInt4, int64_t{64}}})
    for (auto dt : {svdq::DType::kBF16, svdq::DType::kF16}) {
      SCOPED_TRACE(std::string(svdq::format_name(fmt)) + " " + svdq::dtype_name(dt));
      const int64_t n = 16, m = 20;
      svdq::synth::LayerSpec spec;
      spec.in_features = k;
      spec.out_features = n;
      spec.spectrum_rank = 8;
      spec.weight_outlier_columns = 2;
      spec.act_outlier_channels = 2;
      const auto layer = svdq::synth::make_layer(spec);
      ASSERT_TRUE(layer.ok()) << layer.status().to_string();
      svdq::ActivationStats stats;
      const auto calib = svdq::synth::make_activations(*layer, 32, 1);
      ASSERT_TRUE(stats.observe(svdq::MatrixView<const float>(calib.data(), 32, k)).ok());
      svdq::QuantConfig c;
      c.format = fmt;
      c.rank = 16;
      auto q = svdq::quantize_linear(svdq::MatrixView<const float>(layer->weight.data(), n, k),
                                     svdq::vector_view<const float>(layer->bias.data(), n), &stats, c);
      ASSERT_TRUE(q.ok()) << q.status().to_string();
      auto g = make_linear(*q, dt);
      ASSERT_TRUE(g.ok()) << g.status().to_string();
      const auto xf = svdq::synth::make_activations(*layer, m, 5);
      std::vector<uint16_t> x(xf.size());
      for (size_t i = 0; i < x.size(); ++i) x[i] = svdq::float_to_bits16(xf[i], dt);
      Outcome got;
      ASSERT_NO_FATAL_FAILURE(run(*g, *q, x, m, &got));
      expect_matches_reference(*q, x, dt, m, got.codes, got.scales, got.y);
      check_lora(*q, dt, x, m, got.lora);
    }
}

// Split-K (docs/gpu.md): K = 832 = 3 slices of 256 + a tail of 64, so M = 1 and M = 17 (two
// tiles, the second with one row) run S = 4 splits, the last one short. Against the reference:
// codes and scales byte-equal, rank 0 output bit-equal, lora within the split bound of float64
// (check_lora), output within the budget. On the emulated device also against the unsplit kernel
// (set_split_k(false)): the same codes and scales, lora within the unsplit bound; and (int4
// M = 17) the same bits under another interleaving. Cases: int4 bf16 r16 M 17 and r0 M 1, nvfp4
// f16 r16 M 1 (a short list: the emulated device under ASan is slow).
TEST(Kernel1SplitK, SplitMatchesTheReferenceAndTheUnsplitKernel) {
  SKIP_WITHOUT_GPU();
  const int64_t k = 832, n = 32;
  svdq::synth::LayerSpec spec;
  spec.in_features = k;
  spec.out_features = n;
  spec.spectrum_rank = 8;
  spec.seed = 11;
  const auto layer = svdq::synth::make_layer(spec);
  ASSERT_TRUE(layer.ok()) << layer.status().to_string();
  svdq::ActivationStats stats;
  const auto calib = svdq::synth::make_activations(*layer, 32, 1);
  ASSERT_TRUE(stats.observe(svdq::MatrixView<const float>(calib.data(), 32, k)).ok());
  for (auto [fmt, dt] : {std::pair{svdq::Format::kInt4, svdq::DType::kBF16}, {svdq::Format::kNvfp4, svdq::DType::kF16}}) {
    svdq::QuantConfig c;
    c.format = fmt;
    c.rank = 16;
    auto q16 = svdq::quantize_linear(svdq::MatrixView<const float>(layer->weight.data(), n, k),
                                     svdq::vector_view<const float>(layer->bias.data(), n), &stats, c);
    ASSERT_TRUE(q16.ok()) << q16.status().to_string();
    svdq::QuantizedLinear q0 = *q16;  // the same layer without its branch: rank 0
    q0.rank = 0;
    q0.lora_down.clear();
    q0.lora_up.clear();
    ASSERT_TRUE(svdq::validate(q0).ok());
    const bool int4 = fmt == svdq::Format::kInt4;
    for (const svdq::QuantizedLinear* q : {&q0, &*q16})
      for (int64_t m : {1, 17}) {
        if (!(int4 ? (q->rank == 0) == (m == 1) : q->rank > 0 && m == 1)) continue;
        SCOPED_TRACE(std::string(svdq::format_name(fmt)) + " r" + std::to_string(q->rank) + " m" + std::to_string(m));
        ASSERT_EQ(split_for(m, k).s, 4);
        auto g = make_linear(*q, dt);
        ASSERT_TRUE(g.ok()) << g.status().to_string();
        const auto xf = svdq::synth::make_activations(*layer, m, 9);
        std::vector<uint16_t> x(xf.size());
        for (size_t i = 0; i < x.size(); ++i) x[i] = svdq::float_to_bits16(xf[i], dt);
        Outcome got;
        ASSERT_NO_FATAL_FAILURE(run(*g, *q, x, m, &got));
        expect_matches_reference(*q, x, dt, m, got.codes, got.scales, got.y);
        if (q->rank > 0) RecordProperty("split_lora_error_units", std::to_string(check_lora(*q, dt, x, m, got.lora)));
#if defined(SVDQ_TEST_BACKEND_EMU)
        g->set_split_k(false);
        Outcome unsplit;
        ASSERT_NO_FATAL_FAILURE(run(*g, *q, x, m, &unsplit));
        EXPECT_EQ(unsplit.codes, got.codes);
        EXPECT_EQ(unsplit.scales, got.scales);
        if (q->rank == 0) EXPECT_EQ(unsplit.y, got.y);
        else check_lora(*q, dt, x, m, unsplit.lora, -1, false);
        g->set_split_k(true);
        if (m != 17) continue;
        svdq::emu::LaunchOptions o;
        o.seed = 17;
        o.preempt_one_in = 61;
        g->set_options(o);
        Outcome again;
        ASSERT_NO_FATAL_FAILURE(run(*g, *q, x, m, &again));
        EXPECT_EQ(again.codes, got.codes);
        EXPECT_EQ(again.scales, got.scales);
        ASSERT_EQ(again.lora.size(), got.lora.size());
        if (!got.lora.empty()) EXPECT_EQ(std::memcmp(again.lora.data(), got.lora.data(), got.lora.size() * 4), 0);
        EXPECT_EQ(again.y, got.y);
#endif
      }
  }
}

// Rotated layers (docs/formats.md §6.3): a NaN row, an Inf row, and a row whose one group is
// finite but whose butterfly overflows (every element of group 1 is the largest bf16 value, so
// the first stage's sums are +Inf: a non-finite group, scale NaN, as on the CPU). Smoothing is set
// to 1 (s = 1 in the copy) so that the group reaches the rotation unscaled. Codes and scales
// byte-equal to the reference (which the test checks does mark the group non-finite), the three
// rows' outputs NaN, every other row's lora and output bits unchanged from the clean run.
TEST(Kernel1Rotation, NonFiniteAndOverflowingGroupsStayInTheirRows) {
  SKIP_WITHOUT_GPU();
  const Fixture& f = fixture();
  const int64_t m = 20;
  const svdq::DType dt = svdq::DType::kBF16;
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    SCOPED_TRACE(svdq::format_name(fmt));
    svdq::QuantizedLinear q = rotated_copy(f.quantize(fmt, 16, svdq::DType::kBF16));
    std::fill(q.smooth.begin(), q.smooth.end(), svdq::float_to_bits16(1.0f, q.storage));
    ASSERT_TRUE(svdq::validate(q).ok());
    auto g = make_linear(q, dt);
    ASSERT_TRUE(g.ok()) << g.status().to_string();
    auto x = f.activations(m, dt);
    Outcome clean, dirty;
    ASSERT_NO_FATAL_FAILURE(run(*g, q, x, m, &clean));
    const int64_t gs = q.group, nan_row = 3, inf_row = 17, ovf_row = 9;
    x[nan_row * f.k + 10] = 0x7FC0;
    x[inf_row * f.k + 300] = 0xFF80;  // -Inf
    for (int64_t j = gs; j < 2 * gs; ++j) x[ovf_row * f.k + j] = 0x7F7F;  // 3.3895e38, finite
    ASSERT_NO_FATAL_FAILURE(run(*g, q, x, m, &dirty));
    Reference ref;
    ASSERT_NO_FATAL_FAILURE(reference_of(q, x, dt, m, &ref));
    ASSERT_FALSE(std::isfinite(ref.act.scale(ovf_row, 1))) << "the reference must see the overflow";
    ASSERT_TRUE(std::isfinite(ref.act.scale(ovf_row, 0)));
    expect_activations_match(dirty.codes, dirty.scales, ref);
    for (int64_t i = 0; i < m; ++i) {
      const bool bad_row = i == nan_row || i == inf_row || i == ovf_row;
      for (int j = 0; j < q.rank; ++j) {
        const float v = dirty.lora[i * q.rank + j];
        if (i == nan_row || i == inf_row) {
          EXPECT_FALSE(std::isfinite(v)) << i << " " << j;
        } else if (!bad_row) {
          EXPECT_EQ(std::memcmp(&v, &clean.lora[i * q.rank + j], 4), 0) << i << " " << j;
        }
      }
      for (int64_t j = 0; j < f.n; ++j) {
        if (bad_row) {
          EXPECT_TRUE(std::isnan(svdq::bits16_to_float(dirty.y[i * f.n + j], dt))) << i << " " << j;
        } else {
          EXPECT_EQ(dirty.y[i * f.n + j], clean.y[i * f.n + j]) << i << " " << j;
        }
      }
    }
  }
}

#if defined(SVDQ_TEST_BACKEND_EMU)
// The split rule of quantize_lora_down.cuh (k_split) equals the one written out here (split_for)
// and keeps its promises: every split holds at least one channel and together they cover K in
// whole slices; S = 1 for M > 1024; about 128 CTAs at most; the partials of S·M·r floats fit the
// workspace's piece (k_split_partial_floats, and this file's partial_floats), which never shrinks
// as M grows (so workspace_size(max_M) serves every smaller M).
TEST(Kernel1SplitK, RuleCoversKAndFitsTheWorkspace) {
  for (int64_t k : {64, 256, 320, 512, 832, 3072, 12288, 65536}) {
    int64_t last = 0;
    for (int64_t m = 1; m <= 2200; ++m) {
      const svdq::cuda::KSplit sp = svdq::cuda::k_split(m, k);
      const Split want = split_for(m, k);
      ASSERT_EQ(sp.splits, want.s) << m << " " << k;
      ASSERT_EQ(sp.channels, want.per * 256) << m << " " << k;
      ASSERT_LT((sp.splits - 1) * sp.channels, k) << m << " " << k;  // the last split is not empty
      ASSERT_GE(sp.splits * sp.channels, k) << m << " " << k;
      const int64_t tiles = (m + 15) / 16;
      if (m > 1024) ASSERT_EQ(sp.splits, 1) << m << " " << k;
      ASSERT_LE(sp.splits * tiles, std::max<int64_t>(128, tiles)) << m << " " << k;
      const int64_t room = svdq::cuda::k_split_partial_floats(m, k, 1);
      ASSERT_EQ(static_cast<size_t>(room), partial_floats(m, k, 1));
      if (sp.splits > 1) ASSERT_LE(sp.splits * m, room) << m << " " << k;
      ASSERT_GE(room, last) << m << " " << k;
      last = room;
      ASSERT_EQ(svdq::cuda::k_split(m, k, false).splits, 1);
    }
  }
}

// Kernel 1's rotation step (hadamard_group, quantize_lora_down.cuh) in one emulated warp against
// the CPU's svdq::hadamard_transform (docs/formats.md §6.3), value for value, on random fp32 groups
// with full 24-bit significands (so that a different stage order or pairing rounds differently,
// which the layer tests' 4-bit codes see only at rounding boundaries) over 40 binades, and groups
// near FLT_MAX whose butterfly overflows. int4: each group of 64 is lanes 4j .. 4j + 3, 16 values
// each, and the group's absmax / finiteness (max over its 4 lanes); nvfp4: one group per lane.
// Bit-equal, except that a NaN matches any NaN.
TEST(Kernel1Rotation, GroupButterflyIsBitEqualToTheCpuTransform) {
  std::mt19937 rng(2026);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-20, 20);
  auto same = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0; };
  for (int trial = 0; trial < 8; ++trial) {
    float in[32][16], out[32][16], amax[32];
    bool fin[32];
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 16; ++i)
        in[l][i] = trial >= 6 && l < 8 ? u(rng) * 3.0e38f : std::ldexp(u(rng), ex(rng));  // 6, 7: overflow
    for (int kind = 0; kind < 2; ++kind) {
      SCOPED_TRACE("trial " + std::to_string(trial) + (kind == 0 ? " int4" : " nvfp4"));
      const std::string err = svdq::emu::launch("hadamard_group", dim3(1), dim3(32), 0, svdq::emu::LaunchOptions{}, [&] {
        const int lane = svdq::emu::lane_id();
        float v[16], a = 0.0f;
        bool f = true;
        std::memcpy(v, in[lane], sizeof v);
        if (kind == 0) {
          svdq::cuda::hadamard_group<0>(v, lane, &a, &f);
          for (int off = 1; off < 4; off <<= 1) {  // the kernel's reduction over the group's lanes
            a = fmaxf(a, svdq::arch::shfl_xor(svdq::arch::kFullMask, a, off));
            f = svdq::arch::shfl_xor(svdq::arch::kFullMask, f ? 1 : 0, off) != 0 && f;
          }
        } else {
          svdq::cuda::hadamard_group<1>(v, lane, &a, &f);
        }
        std::memcpy(out[lane], v, sizeof v);
        amax[lane] = a;
        fin[lane] = f;
      });
      ASSERT_EQ(err, "");
      const int gs = kind == 0 ? 64 : 16, lanes = gs / 16;
      int bad = 0;
      for (int g = 0; g < 32 / lanes; ++g) {
        std::vector<float> want(static_cast<size_t>(gs));
        for (int i = 0; i < gs; ++i) want[i] = in[g * lanes + i / 16][i % 16];
        svdq::hadamard_transform(want.data(), gs);
        float wa = 0.0f;
        bool wf = true;
        for (float w : want) {
          wf &= std::isfinite(w);
          wa = std::max(wa, std::fabs(w));
        }
        if (trial >= 6 && g == 0) EXPECT_FALSE(wf) << "the overflow groups must overflow";
        for (int i = 0; i < gs; ++i) bad += !same(out[g * lanes + i / 16][i % 16], want[i]);
        for (int l = g * lanes; l < (g + 1) * lanes; ++l) {
          EXPECT_EQ(fin[l], wf) << "group " << g << " lane " << l;
          if (wf) EXPECT_TRUE(same(amax[l], wa)) << "group " << g << " lane " << l;
        }
      }
      EXPECT_EQ(bad, 0);
    }
  }
}

// The same bits under every interleaving of the CTAs' threads and order of the CTAs (seeds, with
// preemption between shared accesses): codes, scales, lora and y.
TEST(Kernel1Rows, SameBitsUnderEverySeed) {
  const Fixture& f = fixture();
  const int64_t m = 20;
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    const auto& q = f.quantize(fmt, 32, svdq::DType::kBF16);
    auto g = make_linear(q, svdq::DType::kF16);
    ASSERT_TRUE(g.ok());
    const auto x = f.activations(m, svdq::DType::kF16);
    Outcome r0;
    ASSERT_NO_FATAL_FAILURE(run(*g, q, x, m, &r0));
    for (uint64_t seed : {fmt == svdq::Format::kInt4 ? uint64_t{5} : uint64_t{11}}) {
      svdq::emu::LaunchOptions o;
      o.seed = seed;
      o.preempt_one_in = 61;
      g->set_options(o);
      Outcome r1;
      ASSERT_NO_FATAL_FAILURE(run(*g, q, x, m, &r1));
      EXPECT_EQ(r1.codes, r0.codes) << seed;
      EXPECT_EQ(r1.scales, r0.scales) << seed;
      EXPECT_EQ(std::memcmp(r1.lora.data(), r0.lora.data(), r0.lora.size() * 4), 0) << seed;
      EXPECT_EQ(r1.y, r0.y) << seed;
    }
  }
}
#endif

// Host code: the operand split of quantize_lora_down_plan.hpp. f16 storage, bf16 activations:
// hi + lo equals every finite f16 value exactly. bf16 storage, f16 activations: (hi + lo) 2^-e
// within 2^-25 2^-e of every value (exact unless hi is f16-subnormal), no overflow at the maximum.
TEST(Kernel1Operand, SplitIsExactOrBounded) {
  svdq::QuantizedLinear q;
  q.in_features = 8;
  q.storage = svdq::DType::kF16;
  std::vector<uint16_t> vals;
  for (uint32_t b = 0; b < 65536; ++b)
    if (std::isfinite(svdq::half_bits_to_float(static_cast<uint16_t>(b)))) vals.push_back(static_cast<uint16_t>(b));
  q.rank = static_cast<int>(vals.size() / 8);
  vals.resize(static_cast<size_t>(q.rank) * 8);
  q.lora_down = vals;
  {
    const svdq::cuda::DownOperand d = svdq::cuda::make_down_operand(q, svdq::DType::kBF16);
    ASSERT_TRUE(d.has_lo);
    EXPECT_EQ(d.lora_scale, 1.0f);
    const size_t plane = static_cast<size_t>(d.rank_pad) * 8;
    int bad = 0;
    for (int64_t kk = 0; kk < 8; ++kk)
      for (int j = 0; j < q.rank; ++j) {
        const double want = svdq::half_bits_to_float(q.lora_down[kk * q.rank + j]);
        const double got = static_cast<double>(svdq::bf16_bits_to_float(d.bits[j * 8 + kk])) +
                           svdq::bf16_bits_to_float(d.bits[plane + j * 8 + kk]);
        bad += got != want;
      }
    EXPECT_EQ(bad, 0);
  }
  q.storage = svdq::DType::kBF16;
  for (float top : {1.0f, 3.0e38f, 1.0e-30f}) {
    SCOPED_TRACE(top);
    // bf16 values from `top` down over 40 binades, both signs.
    for (size_t i = 0; i < vals.size(); ++i)
      vals[i] = svdq::float_to_bf16_bits(std::ldexp(top, -1 - static_cast<int>(i % 40)) * (1.0f + (i % 7) / 8.0f) *
                                         (i % 2 ? -1.0f : 1.0f));
    q.lora_down = vals;
    const svdq::cuda::DownOperand d = svdq::cuda::make_down_operand(q, svdq::DType::kF16);
    const size_t plane = static_cast<size_t>(d.rank_pad) * 8;
    int bad = 0;
    for (int64_t kk = 0; kk < 8; ++kk)
      for (int j = 0; j < q.rank; ++j) {
        const double want = svdq::bf16_bits_to_float(q.lora_down[kk * q.rank + j]);
        const double hi = svdq::half_bits_to_float(d.bits[j * 8 + kk]), lo = svdq::half_bits_to_float(d.bits[plane + j * 8 + kk]);
        ASSERT_TRUE(std::isfinite(hi) && std::isfinite(lo));
        const double got = (hi + lo) * d.lora_scale;
        bad += !(std::fabs(got - want) <= std::ldexp(static_cast<double>(d.lora_scale), -25));
      }
    EXPECT_EQ(bad, 0);
  }
  // Same dtype: the bits as stored, no second operand, rank padded to 8 with zero columns.
  q.rank = 5;
  q.lora_down.assign(40, 0x3F80);
  const svdq::cuda::DownOperand d = svdq::cuda::make_down_operand(q, svdq::DType::kBF16);
  EXPECT_FALSE(d.has_lo);
  EXPECT_EQ(d.rank_pad, 8);
  ASSERT_EQ(d.bits.size(), 64u);
  for (int j = 0; j < 8; ++j) EXPECT_EQ(d.bits[j * 8 + 3], j < 5 ? 0x3F80 : 0) << j;
}

}  // namespace
