// Bad input at every public entry point (docs/design.md §4, §7): a non-ok Status with the right code and a
// message that names the argument, never a crash, an abort or a half-updated object.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "svdq/formats.hpp"
#include "svdq/linear.hpp"
#include "svdq/metrics.hpp"
#include "svdq/stats.hpp"
#include "svdq/synth.hpp"

namespace {

using namespace svdq;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kN = 64, kK = 128;

// Not ok, one of the accepted codes, and every word in the message.
void expect_error(const Status& st, const std::vector<StatusCode>& codes,
                  std::initializer_list<const char*> words, const char* what = "") {
  ASSERT_FALSE(st.ok()) << what << ": accepted";
  bool code_ok = false;
  for (StatusCode c : codes) code_ok |= st.code() == c;
  EXPECT_TRUE(code_ok) << what << ": unexpected code in '" << st.to_string() << "'";
  for (const char* w : words)
    EXPECT_NE(st.message().find(w), std::string::npos)
        << what << ": '" << w << "' not in '" << st.message() << "'";
}
template <typename T>
void expect_error(const Result<T>& r, const std::vector<StatusCode>& codes,
                  std::initializer_list<const char*> words, const char* what = "") {
  expect_error(r.ok() ? Status::Ok() : r.status(), codes, words, what);
}
constexpr StatusCode kShape = StatusCode::kErrorShape, kArg = StatusCode::kErrorInvalidArgument,
                     kNull = StatusCode::kErrorNullPointer,
                     kNonFinite = StatusCode::kErrorNonFinite;

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = scale * nd(g);
  return v;
}

// A valid small problem: W (N x K), bias (N), calibration statistics (K channels).
struct Fixture : ::testing::Test {
  std::vector<float> w = randn(kN * kK, 1), bias = randn(kN, 2), xcal = randn(32 * kK, 3);
  ActivationStats stats;
  void SetUp() override {
    ASSERT_TRUE(stats.observe(MatrixView<const float>(xcal.data(), 32, kK)).ok());
  }
  MatrixView<const float> W() const { return {w.data(), kN, kK}; }
  MatrixView<const float> B() const { return vector_view<const float>(bias.data(), kN); }
  static QuantConfig cfg(Format f = Format::kInt4, int rank = 8) {
    QuantConfig c;
    c.format = f;
    c.rank = rank;
    return c;
  }
  Status quant(ConstMatrixRef w_, ConstMatrixRef b_, const ActivationStats* s,
               const QuantConfig& c) {
    auto r = quantize_linear(w_, b_, s, c);
    return r.ok() ? Status::Ok() : r.status();
  }
  Status quant(const QuantConfig& c) { return quant(W(), B(), &stats, c); }
};

// ================================================================================================
// quantize_linear
using QuantizeLinear = Fixture;

TEST_F(QuantizeLinear, ValidBaselineSucceeds) {
  for (Format f : {Format::kInt4, Format::kNvfp4})
    EXPECT_TRUE(quant(cfg(f)).ok()) << format_name(f);
}

TEST_F(QuantizeLinear, WrongShapes) {
  expect_error(quant(W(), vector_view<const float>(bias.data(), kN - 1), &stats, cfg()), {kShape},
               {"bias"}, "bias N-1");
  std::vector<float> b2(2 * kN, 0.0f);
  expect_error(quant(W(), MatrixView<const float>(b2.data(), 2, kN), &stats, cfg()), {kShape},
               {"bias"}, "bias 2xN");
  ActivationStats wide;
  std::vector<float> x(4 * (kK + 64), 1.0f);
  ASSERT_TRUE(wide.observe(MatrixView<const float>(x.data(), 4, kK + 64)).ok());
  expect_error(quant(W(), B(), &wide, cfg()), {kShape}, {"stats", "channels"}, "stats channels");
  expect_error(quant(MatrixView<const float>(w.data(), 0, kK), B(), &stats, cfg()), {kShape}, {"W"},
               "empty W");
}

TEST_F(QuantizeLinear, KNotAMultipleOfTheGroup) {
  // int4 needs K % 64 == 0: K = 96 is a multiple of 16 only. nvfp4 needs K % 16 == 0: K = 24.
  expect_error(quant(MatrixView<const float>(w.data(), kN, 96), B(), nullptr,
                     recipe_config(Recipe::kNaive, cfg())),
               {kShape}, {"W", "64"}, "int4 K=96");
  expect_error(quant(MatrixView<const float>(w.data(), kN, 24), B(), nullptr,
                     recipe_config(Recipe::kNaive, cfg(Format::kNvfp4))),
               {kShape}, {"W", "16"}, "nvfp4 K=24");
  EXPECT_TRUE(quant(MatrixView<const float>(w.data(), kN, 96), B(), nullptr,
                    recipe_config(Recipe::kLowRankOnly, cfg(Format::kNvfp4)))
                  .ok());
}

TEST_F(QuantizeLinear, RankOutOfRange) {
  expect_error(quant(cfg(Format::kInt4, kN + 1)), {kShape, kArg}, {"rank"}, "rank > min(N, K)");
  EXPECT_TRUE(quant(cfg(Format::kInt4, kN)).ok());  // rank == min(N, K) is allowed
  // A negative rank is a scalar option out of its range, not a shape mismatch.
  expect_error(quant(cfg(Format::kInt4, -1)), {kArg}, {"rank"}, "rank < 0");
}

TEST_F(QuantizeLinear, NullDataAndLeadingDimension) {
  expect_error(quant(MatrixView<const float>(nullptr, kN, kK), B(), &stats, cfg()), {kNull}, {"W"},
               "null W");
  expect_error(quant(MatrixView<const float>(w.data(), kN / 2, kK, kK - 1), B(), &stats, cfg()),
               {kShape}, {"W", "ld"}, "W.ld < cols");
  expect_error(quant(ConstMatrixRef(w.data(), DType::kF64, kN / 2, kK, kK), B(), &stats, cfg()),
               {kArg}, {"W", "dtype"}, "f64 W");
  // A bias view with null data means "no bias" (documented), not an error.
  EXPECT_TRUE(quant(W(), MatrixView<const float>(nullptr, 1, kN), &stats, cfg()).ok());
}

TEST_F(QuantizeLinear, NonFiniteWeightsNameThePosition) {
  for (float bad : {kNaN, kInf, -kInf}) {
    std::vector<float> w2 = w;
    w2[37 * kK + 101] = bad;
    const Status st = quant(MatrixView<const float>(w2.data(), kN, kK), B(), &stats, cfg());
    expect_error(st, {kNonFinite}, {"W", "37", "101"}, "non-finite W");
  }
  // 16-bit W: an Inf bit pattern at (3, 70).
  std::vector<uint16_t> w16(kN * kK, 0x3C00);  // fp16 1.0
  w16[3 * kK + 70] = 0x7C00;
  expect_error(quant(ConstMatrixRef(w16.data(), DType::kF16, kN, kK, kK), B(), &stats, cfg()),
               {kNonFinite}, {"W", "3", "70"}, "fp16 Inf in W");
  // Non-finite values in the padding beyond cols are not part of W.
  std::vector<float> padded(kN * (kK + 4), kNaN);
  for (int64_t i = 0; i < kN; ++i)
    std::memcpy(&padded[i * (kK + 4)], &w[i * kK], kK * sizeof(float));
  EXPECT_TRUE(
      quant(MatrixView<const float>(padded.data(), kN, kK, kK + 4), B(), &stats, cfg()).ok());
}

TEST_F(QuantizeLinear, NonFiniteBias) {
  std::vector<float> b2 = bias;
  b2[11] = kNaN;
  expect_error(quant(W(), vector_view<const float>(b2.data(), kN), &stats, cfg()), {kNonFinite},
               {"bias"}, "NaN bias");
}

// Finite operands that the 16-bit storage cannot hold (fp16 max 65504) must not produce a layer
// whose forward turns finite inputs into NaN/Inf: either an error, or a finite result.
TEST_F(QuantizeLinear, ValuesBeyondTheStorageRange) {
  const std::vector<float> x = randn(4 * kK, 9);
  const std::vector<float> big_w = randn(kN * kK, 4, 1e5f), big_b(kN, 1e6f);
  for (Format f : {Format::kInt4, Format::kNvfp4})
    for (int which = 0; which < 2; ++which) {
      QuantConfig c = recipe_config(Recipe::kLowRankOnly, cfg(f, 4));
      c.storage = DType::kF16;
      const char* what = which == 0 ? "W of 1e5 (lora_up overflows fp16)" : "bias of 1e6";
      auto q = which == 0
                   ? quantize_linear(MatrixView<const float>(big_w.data(), kN, kK), B(), nullptr, c)
                   : quantize_linear(W(), vector_view<const float>(big_b.data(), kN), nullptr, c);
      if (!q.ok()) {
        EXPECT_TRUE(q.status().code() == kArg || q.status().code() == kNonFinite)
            << q.status().to_string();
        continue;
      }
      EXPECT_TRUE(validate(*q).ok())
          << format_name(f) << ", " << what << ": quantize_linear returned a layer that "
          << "validate() rejects: " << validate(*q).to_string();
      std::vector<float> y(4 * kN);
      const Status st = reference_forward(*q, MatrixView<const float>(x.data(), 4, kK),
                                          MatrixView<float>(y.data(), 4, kN));
      if (!st.ok()) continue;  // reported just above
      int bad = 0;
      for (float v : y) bad += !std::isfinite(v);
      EXPECT_EQ(bad, 0) << format_name(f) << ", " << what << ": accepted, and finite x gives "
                        << bad << " non-finite outputs of " << y.size();
    }
}

TEST_F(QuantizeLinear, BadOptions) {
  for (float a : {-0.1f, 1.5f, kNaN}) {
    QuantConfig c = cfg();
    c.alpha = a;
    expect_error(quant(c), {kArg}, {"alpha"}, "alpha out of [0, 1]");
  }
  QuantConfig c = cfg();
  c.beta = 2.0f;
  expect_error(quant(c), {kArg}, {"beta"}, "beta out of [0, 1]");
  // alpha > 0 needs statistics.
  expect_error(quant(W(), B(), nullptr, cfg()), {kArg, kNull}, {"stats"}, "null stats");
  ActivationStats empty(kK);
  expect_error(quant(W(), B(), &empty, cfg()), {kArg}, {"stats"}, "empty stats");
  for (DType t : {DType::kF32, DType::kF64}) {
    c = cfg();
    c.storage = t;
    expect_error(quant(c), {kArg}, {"storage"}, "storage not 16-bit");
  }
  for (float t : {0.0f, -1.0f, kNaN, kInf}) {
    c = cfg(Format::kNvfp4);
    c.act_tensor_scale = t;
    expect_error(quant(c), {kArg}, {"act_tensor_scale"}, "act_tensor_scale");
  }
  c = cfg();
  c.svd.oversample = -1;
  expect_error(quant(c), {kArg}, {"oversample"}, "oversample < 0");
  c = cfg();
  c.format = static_cast<Format>(9);
  expect_error(quant(c), {kArg}, {"format"}, "unknown format");
  // Data-free smoothing on weights only (alpha = 0, beta > 0) needs no statistics.
  c = cfg();
  c.alpha = 0.0f;
  EXPECT_TRUE(quant(W(), B(), nullptr, c).ok());
}

TEST_F(QuantizeLinear, BadRefinementOptions) {
  struct Case {
    const char* what;
    void (*set)(QuantConfig&);
    const char* word;
  };
  const Case cases[] = {
      {"refine_iterations < 0", [](QuantConfig& c) { c.refine_iterations = -1; },
       "refine_iterations"},
      {"gptq.damp 0", [](QuantConfig& c) { c.gptq.damp = 0.0f; }, "gptq.damp"},
      {"gptq.block 0", [](QuantConfig& c) { c.gptq.block = 0; }, "gptq.block"},
      {"whiten_damp NaN", [](QuantConfig& c) { c.whiten_damp = kNaN; }, "whiten_damp"},
      {"candidate alpha 1.5",
       [](QuantConfig& c) {
         c.smooth_search.candidates = {{0.5f, 0.5f}, {1.5f, 0.0f}};
       },
       "candidates"},
      {"max_scored_outputs < 0", [](QuantConfig& c) { c.smooth_search.max_scored_outputs = -1; },
       "max_scored_outputs"},
      {"power_iterations < 0", [](QuantConfig& c) { c.svd.power_iterations = -1; },
       "power_iterations"},
  };
  for (const Case& k : cases) {
    QuantConfig c = cfg();
    k.set(c);
    expect_error(quant(c), {kArg}, {k.word}, k.what);
  }
  // Refinements that fit on sampled rows, with statistics that kept none.
  CalibrationOptions no_rows;
  no_rows.max_rows = 0;
  ActivationStats bare(kK, no_rows);
  ASSERT_TRUE(bare.observe(MatrixView<const float>(xcal.data(), 32, kK)).ok());
  QuantConfig c = cfg();
  c.refine_iterations = 2;
  expect_error(quant(W(), B(), &bare, c), {kArg}, {"stats", "rows"},
               "refinement without sampled rows");
}

TEST_F(QuantizeLinear, FactorizeLowRankBadArguments) {
  expect_error(factorize_low_rank(W(), nullptr, 0, false), {kShape, kArg}, {"rank"}, "rank 0");
  expect_error(factorize_low_rank(W(), nullptr, kN + 1, false), {kShape, kArg}, {"rank"},
               "rank > min");
  expect_error(factorize_low_rank(MatrixView<const float>(nullptr, kN, kK), nullptr, 4, false),
               {kNull}, {"W"}, "null W");
  expect_error(factorize_low_rank(W(), nullptr, 4, true), {kArg, kNull}, {"stats"},
               "whitened without stats");
  std::vector<float> w2 = w;
  w2[5] = kInf;
  expect_error(factorize_low_rank(MatrixView<const float>(w2.data(), kN, kK), nullptr, 4, false),
               {kNonFinite}, {"W"}, "Inf in W");
  EXPECT_TRUE(factorize_low_rank(W(), &stats, 4, true).ok());
}

// ================================================================================================
// reference_forward and validate
struct Forward : Fixture {
  QuantizedLinear layer;
  std::vector<float> x = randn(8 * kK, 5), y = std::vector<float>(8 * kN, 7.0f);
  void SetUp() override {
    Fixture::SetUp();
    auto q = quantize_linear(W(), B(), &stats, cfg(Format::kInt4, 8));
    ASSERT_TRUE(q.ok()) << q.status().to_string();
    layer = std::move(*q);
  }
  Status run(const QuantizedLinear& l, ConstMatrixRef xv, MatrixRef yv) {
    return reference_forward(l, xv, yv);
  }
  Status run(const QuantizedLinear& l) {
    return run(l, MatrixView<const float>(x.data(), 8, kK), MatrixView<float>(y.data(), 8, kN));
  }
  void expect_y_untouched() {
    for (float v : y) ASSERT_EQ(v, 7.0f) << "y written by a failed call";
  }
};

TEST_F(Forward, ValidBaselineSucceeds) { EXPECT_TRUE(run(layer).ok()); }

TEST_F(Forward, WrongShapes) {
  expect_error(
      run(layer, MatrixView<const float>(x.data(), 4, kK - 64), MatrixView<float>(y.data(), 4, kN)),
      {kShape}, {"x"}, "x.cols != K");
  expect_error(
      run(layer, MatrixView<const float>(x.data(), 8, kK), MatrixView<float>(y.data(), 7, kN)),
      {kShape}, {"y"}, "y.rows != x.rows");
  expect_error(
      run(layer, MatrixView<const float>(x.data(), 4, kK), MatrixView<float>(y.data(), 4, kN - 1)),
      {kShape}, {"y"}, "y.cols != N");
  expect_error(run(layer, MatrixView<const float>(x.data(), 4, kK, kK - 1),
                   MatrixView<float>(y.data(), 4, kN)),
               {kShape}, {"x", "ld"}, "x.ld < cols");
  expect_error(
      run(layer, MatrixView<const float>(nullptr, 4, kK), MatrixView<float>(y.data(), 4, kN)),
      {kNull}, {"x"}, "null x");
  expect_error(
      run(layer, MatrixView<const float>(x.data(), 4, kK), MatrixView<float>(nullptr, 4, kN)),
      {kNull}, {"y"}, "null y");
  expect_error(run(layer, ConstMatrixRef(x.data(), DType::kF64, 4, kK, kK),
                   MatrixView<float>(y.data(), 4, kN)),
               {kArg}, {"x"}, "f64 x");
  expect_y_untouched();
}

TEST_F(Forward, OutputAliasingInput) {
  std::vector<float> buf(x.begin(), x.end());  // 8 x K floats; y (4 x N) fits inside
  const std::vector<float> before = buf;
  const MatrixView<const float> xv(buf.data(), 4, kK);
  expect_error(run(layer, xv, MatrixView<float>(buf.data(), 4, kN)), {kArg}, {"alias"}, "y == x");
  EXPECT_TRUE(buf == before);
  // Partial overlap is aliasing too: y starts inside x's rows.
  expect_error(run(layer, xv, MatrixView<float>(buf.data() + kK + 5, 4, kN)), {kArg}, {"alias"},
               "y overlaps x");
  EXPECT_TRUE(buf == before) << "x was overwritten";
}

TEST_F(Forward, CorruptedLayer) {
  struct Case {
    const char* what;
    void (*corrupt)(QuantizedLinear&);
    std::vector<StatusCode> codes;
    const char* word;
  };
  const Case cases[] = {
      {"qweight short", [](QuantizedLinear& l) { l.qweight.pop_back(); }, {kShape}, "qweight"},
      {"wscales long", [](QuantizedLinear& l) { l.wscales.push_back(0); }, {kShape}, "wscales"},
      {"smooth short", [](QuantizedLinear& l) { l.smooth.resize(10); }, {kShape}, "smooth"},
      {"rank vs lora", [](QuantizedLinear& l) { l.rank = 9; }, {kShape}, "lora"},
      {"lora_up short",
       [](QuantizedLinear& l) { l.lora_up.resize(l.lora_up.size() - 8); },
       {kShape},
       "lora_up"},
      {"lora_down empty", [](QuantizedLinear& l) { l.lora_down.clear(); }, {kShape}, "lora_down"},
      {"bias length", [](QuantizedLinear& l) { l.bias.resize(5); }, {kShape}, "bias"},
      {"rank < 0", [](QuantizedLinear& l) { l.rank = -2; }, {kShape, kArg}, "rank"},
      {"rank > min(N, K)", [](QuantizedLinear& l) { l.rank = kN + 1; }, {kShape, kArg}, "rank"},
      {"group", [](QuantizedLinear& l) { l.group = 16; }, {kShape, kArg}, "group"},
      {"in_features", [](QuantizedLinear& l) { l.in_features = 0; }, {kShape}, "in_features"},
      {"storage f32", [](QuantizedLinear& l) { l.storage = DType::kF32; }, {kArg}, "storage"},
      {"format", [](QuantizedLinear& l) { l.format = static_cast<Format>(3); }, {kArg}, "format"},
      {"wtscale NaN", [](QuantizedLinear& l) { l.wtscale = kNaN; }, {kArg}, "wtscale"},
      {"act_tensor_scale 0",
       [](QuantizedLinear& l) { l.act_tensor_scale = 0; },
       {kArg},
       "act_tensor_scale"},
  };
  for (const Case& c : cases) {
    QuantizedLinear l = layer;
    c.corrupt(l);
    expect_error(validate(l), c.codes, {c.word}, c.what);
    expect_error(run(l), c.codes, {c.word}, c.what);
  }
  expect_y_untouched();
}

// ================================================================================================
// ActivationStats
TEST(Stats, NonFiniteRowsAreRejectedWhole) {
  ActivationStats s;
  const std::vector<float> good = randn(4 * kK, 6);
  ASSERT_TRUE(s.observe(MatrixView<const float>(good.data(), 4, kK)).ok());
  const std::vector<float> amax = s.absmax();
  for (float bad : {kNaN, kInf, -kInf}) {
    std::vector<float> rows = randn(5 * kK, 7, 100.0f);  // larger than anything seen so far
    rows[3 * kK + 9] = bad;
    expect_error(s.observe(MatrixView<const float>(rows.data(), 5, kK)), {kNonFinite},
                 {"rows", "3", "9"}, "non-finite row");
    EXPECT_EQ(s.absmax(), amax) << "absmax updated by a rejected call";
    EXPECT_EQ(s.rows_observed(), 4);
  }
}

// On a fresh object a rejected first call must not fix the channel count either.
TEST(Stats, RejectedFirstCallLeavesTheObjectFresh) {
  ActivationStats s;
  std::vector<float> rows(2 * kK, 1.0f);
  rows[kK + 2] = kNaN;
  expect_error(s.observe(MatrixView<const float>(rows.data(), 2, kK)), {kNonFinite}, {"rows"},
               "NaN first call");
  EXPECT_EQ(s.rows_observed(), 0);
  EXPECT_EQ(s.channels(), 0) << "channel count fixed by a rejected observe()";
  const std::vector<float> other(3 * 64, 2.0f);
  EXPECT_TRUE(s.observe(MatrixView<const float>(other.data(), 3, 64)).ok())
      << "a fresh object must accept any K after a rejected call";
}

TEST(Stats, MismatchedChannelsAndMerge) {
  ActivationStats a(kK), b;
  const std::vector<float> rows = randn(3 * kK, 8);
  ASSERT_TRUE(a.observe(MatrixView<const float>(rows.data(), 3, kK)).ok());
  const std::vector<float> amax = a.absmax();
  expect_error(a.observe(MatrixView<const float>(rows.data(), 3, 64)), {kShape}, {"cols"},
               "observe K mismatch");
  expect_error(a.observe(MatrixView<const float>(nullptr, 3, kK)), {kNull}, {"rows"},
               "observe null");
  expect_error(a.observe(MatrixView<const float>(rows.data(), 2, kK, kK - 1)), {kShape}, {"ld"},
               "observe ld");
  ASSERT_TRUE(b.observe(MatrixView<const float>(rows.data(), 3, 64)).ok());
  expect_error(a.merge(b), {kShape}, {"channels"}, "merge K mismatch");
  CalibrationOptions gram;
  gram.accumulate_gram = true;
  ActivationStats g(kK, gram);
  ASSERT_TRUE(g.observe(MatrixView<const float>(rows.data(), 3, kK)).ok());
  expect_error(a.merge(g), {kArg, kShape}, {"gram"}, "merge Gram mismatch");
  EXPECT_EQ(a.absmax(), amax);
  EXPECT_EQ(a.rows_observed(), 3);
  EXPECT_EQ(ActivationStats(-5).channels(), 0);  // no crash on a bad constructor argument
}

// ================================================================================================
// quantize_activations, parse_format, synth, dense_forward
TEST(QuantizeActivations, BadArguments) {
  const std::vector<float> x = randn(4 * kK, 10);
  const MatrixView<const float> xv(x.data(), 4, kK);
  QuantizedActivations out;
  expect_error(quantize_activations(Format::kInt4, xv, nullptr, 1.0f, nullptr), {kNull}, {"out"},
               "null out");
  expect_error(quantize_activations(Format::kInt4, MatrixView<const float>(nullptr, 4, kK), nullptr,
                                    1.0f, &out),
               {kNull}, {"x"}, "null x");
  expect_error(quantize_activations(Format::kInt4, MatrixView<const float>(x.data(), 4, 96),
                                    nullptr, 1.0f, &out),
               {kShape}, {"x", "64"}, "int4 K=96");
  expect_error(quantize_activations(Format::kNvfp4, MatrixView<const float>(x.data(), 4, 40),
                                    nullptr, 1.0f, &out),
               {kShape}, {"x", "16"}, "nvfp4 K=40");
  expect_error(quantize_activations(Format::kInt4, MatrixView<const float>(x.data(), 2, kK, 8),
                                    nullptr, 1.0f, &out),
               {kShape}, {"ld"}, "x.ld < cols");
  for (float t : {0.0f, -2.0f, kNaN, kInf})
    expect_error(quantize_activations(Format::kNvfp4, xv, nullptr, t, &out), {kArg},
                 {"tensor_scale"}, "t_act");
  EXPECT_TRUE(
      quantize_activations(Format::kInt4, xv, nullptr, 0.0f, &out).ok());  // ignored for int4
  expect_error(quantize_activations(static_cast<Format>(7), xv, nullptr, 1.0f, &out), {kArg},
               {"format"}, "unknown format");
}

TEST(ParseFormat, UnknownNames) {
  for (const char* name : {"int8", "INT4", "", "nvfp4 ", "fp4"})
    expect_error(parse_format(name), {kArg}, {name}, name);
  ASSERT_TRUE(parse_format("int4").ok());
  EXPECT_EQ(*parse_format("nvfp4"), Format::kNvfp4);
}

TEST(Synth, BadSpecs) {
  synth::LayerSpec spec;
  spec.in_features = 0;
  expect_error(synth::make_layer(spec), {kShape, kArg}, {"in_features"}, "K = 0");
  spec = {};
  spec.out_features = 0;
  expect_error(synth::make_layer(spec), {kShape, kArg}, {"out_features"}, "N = 0");
  spec = {};
  spec.in_features = -64;
  expect_error(synth::make_layer(spec), {kShape, kArg}, {"in_features"}, "K < 0");
  spec = {};
  spec.in_features = 64, spec.out_features = 64, spec.act_outlier_channels = 65;
  expect_error(synth::make_layer(spec), {kArg}, {"act_outlier_channels"}, "outliers > K");
  spec = {};
  spec.in_features = 64, spec.out_features = 64, spec.spectrum_decay = 0;
  expect_error(synth::make_layer(spec), {kArg}, {"spectrum_decay"}, "decay 0");
  spec = {};
  spec.in_features = 64, spec.out_features = 32;
  auto layer = synth::make_layer(spec);
  ASSERT_TRUE(layer.ok());
  EXPECT_TRUE(synth::make_activations(*layer, 0, 1).empty());
}

TEST(DenseForward, BadArguments) {
  const std::vector<float> w = randn(kN * kK, 11), x = randn(2 * kK, 12), b(kN, 0.0f);
  const MatrixView<const float> wv(w.data(), kN, kK), xv(x.data(), 2, kK);
  std::vector<double> y;
  expect_error(dense_forward(xv, wv, {}, nullptr), {kNull}, {"y"}, "null y");
  expect_error(dense_forward(MatrixView<const float>(x.data(), 2, kK - 1), wv, {}, &y), {kShape},
               {"cols"}, "x.cols != W.cols");
  expect_error(dense_forward(xv, wv, vector_view<const float>(b.data(), kN - 1), &y), {kShape},
               {"bias"}, "bias length");
  expect_error(dense_forward(xv, MatrixView<const float>(nullptr, kN, kK), {}, &y), {kNull}, {"W"},
               "null W");
}

}  // namespace
