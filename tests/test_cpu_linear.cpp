// The prepared CPU layer (svdq/cpu_linear.hpp) against reference_forward: the same bits for
// every format, storage dtype, x/y dtype, rank, ragged M, leading dimension and thread count;
// rows past m and the padding past y.cols are never written; bad input comes back as a Status.
// reference_forward itself is checked against a float64 recomputation of the contract in
// test_linear.cpp, so this file only needs bit-equality with it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "svdq/cpu_linear.hpp"
#include "svdq/linear.hpp"
#include "svdq/testing.hpp"

namespace {

using namespace svdq;

constexpr int64_t kK = 256, kN = 300;  // N = 256 + 44: a full and a ragged column chunk

struct AlignedBuffer {
  std::unique_ptr<unsigned char, decltype(&std::free)> p{nullptr, &std::free};
  explicit AlignedBuffer(size_t bytes) {
    p.reset(static_cast<unsigned char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64)));
  }
  void* get() const { return p.get(); }
};

const synth::Layer& layer() {
  static const synth::Layer l = [] {
    synth::LayerSpec spec;
    spec.in_features = kK, spec.out_features = kN, spec.seed = 7;
    return std::move(*synth::make_layer(spec));
  }();
  return l;
}

QuantizedLinear make(Format f, int rank, DType storage, bool with_bias, float t_act = 1.0f) {
  const auto& l = layer();
  const std::vector<float> cal = synth::make_activations(l, 64, 11);
  ActivationStats stats;
  EXPECT_TRUE(stats.observe(MatrixView<const float>(cal.data(), 64, kK)).ok());
  QuantConfig c;
  c.format = f, c.rank = rank, c.storage = storage, c.act_tensor_scale = t_act;
  auto q = quantize_linear(MatrixView<const float>(l.weight.data(), kN, kK),
                           with_bias ? ConstMatrixRef(vector_view<const float>(l.bias.data(), kN))
                                     : ConstMatrixRef(),
                           &stats, c);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return q.ok() ? std::move(q).value() : QuantizedLinear{};
}

// x (m rows, ld) in `dt`, from synthetic rows; row `nan_row` gets a NaN (if >= 0).
std::vector<unsigned char> make_x(int64_t m, int64_t ld, DType dt, int64_t nan_row) {
  const std::vector<float> v = synth::make_activations(layer(), m, 99);
  std::vector<unsigned char> buf(static_cast<size_t>(m * ld) * dtype_size(dt), 0xAB);
  MatrixRef x(buf.data(), dt, m, kK, ld);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < kK; ++j)
      x.store(i, j, i == nan_row && j == 3 ? std::numeric_limits<float>::quiet_NaN() : v[i * kK + j]);
  return buf;
}

struct Case {
  Format f;
  int rank;
  DType storage;
  bool bias;
};

void check_equal(const QuantizedLinear& q, DType xt, DType yt, int64_t m, int threads,
                 const std::string& what) {
  const int64_t ldx = kK + 5, ldy = kN + 3;
  const auto xb = make_x(m, ldx, xt, m > 5 ? 5 : -1);
  const ConstMatrixRef x(xb.data(), xt, m, kK, ldx);
  const size_t ybytes = static_cast<size_t>(m * ldy) * dtype_size(yt);
  std::vector<unsigned char> yref(ybytes, 0x5C), ycpu(ybytes, 0x5C);
  ASSERT_TRUE(reference_forward(q, x, MatrixRef(yref.data(), yt, m, kN, ldy)).ok()) << what;

  auto cl = CpuLinear::create(q);
  ASSERT_TRUE(cl.ok()) << cl.status().to_string();
  AlignedBuffer ws(cl->workspace_size(m));
  const Status st = cl->forward(x, MatrixRef(ycpu.data(), yt, m, kN, ldy), m, ws.get(),
                                cl->workspace_size(m), threads);
  ASSERT_TRUE(st.ok()) << st.to_string() << " " << what;
  // Byte equality of the whole buffer: values, and the padding columns left untouched (0x5C).
  const size_t es = dtype_size(yt);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldy; ++j) {
      const size_t off = static_cast<size_t>(i * ldy + j) * es;
      ASSERT_EQ(std::memcmp(yref.data() + off, ycpu.data() + off, es), 0)
          << what << ": first difference at row " << i << " col " << j;
    }
  if (m > 5) {  // the NaN row is NaN, its neighbours are finite
    const ConstMatrixRef yv(ycpu.data(), yt, m, kN, ldy);
    EXPECT_TRUE(std::isnan(yv.at(5, 0))) << what;
    EXPECT_TRUE(std::isfinite(yv.at(4, 0))) << what;
  }
}

std::string name(const Case& c, DType xt, DType yt, int64_t m, int t) {
  return std::string(format_name(c.f)) + " r" + std::to_string(c.rank) + " " +
         dtype_name(c.storage) + (c.bias ? " bias" : " nobias") + " x:" + dtype_name(xt) +
         " y:" + dtype_name(yt) + " M=" + std::to_string(m) + " threads=" + std::to_string(t);
}

TEST(CpuLinear, BitEqualToReferenceForward) {
  const Case cases[] = {{Format::kInt4, 32, DType::kBF16, true},
                        {Format::kInt4, 0, DType::kF16, true},
                        {Format::kNvfp4, 16, DType::kBF16, false},
                        {Format::kNvfp4, 32, DType::kF16, true}};
  for (const Case& c : cases) {
    const QuantizedLinear q = make(c.f, c.rank, c.storage, c.bias);
    for (DType xt : {DType::kF32, DType::kF16, DType::kBF16})
      for (int64_t m : {1, 7, 44, 129})
        for (int t : {1, 2, 3}) {
          const DType yt = xt == DType::kF32 ? DType::kBF16 : xt == DType::kF16 ? DType::kF32 : DType::kBF16;
          check_equal(q, xt, yt, m, t, name(c, xt, yt, m, t));
          check_equal(q, xt, xt, m, t, name(c, xt, xt, m, t));
        }
  }
}

TEST(CpuLinear, Nvfp4StaticActivationTensorScale) {
  const QuantizedLinear q = make(Format::kNvfp4, 32, DType::kBF16, true, 0.37f);
  for (int64_t m : {7, 44}) check_equal(q, DType::kF32, DType::kF32, m, 2, "t_act 0.37");
}

TEST(CpuLinear, WorkspaceReuseAndSmallerM) {
  const QuantizedLinear q = make(Format::kInt4, 16, DType::kBF16, true);
  auto cl = CpuLinear::create(q);
  ASSERT_TRUE(cl.ok());
  EXPECT_EQ(cl->workspace_size(0), 0u);
  EXPECT_GT(cl->workspace_size(129), cl->workspace_size(7));
  // One workspace for max_M = 129 serves a call with m = 7 on a view of 129 rows: rows 7.. untouched.
  AlignedBuffer ws(cl->workspace_size(129));
  const auto xb = make_x(129, kK, DType::kF32, -1);
  std::vector<float> y(129 * kN, 7.0f), yref(7 * kN);
  ASSERT_TRUE(cl->forward(ConstMatrixRef(xb.data(), DType::kF32, 129, kK, kK),
                          MatrixView<float>(y.data(), 129, kN), 7, ws.get(),
                          cl->workspace_size(129), 2).ok());
  ASSERT_TRUE(reference_forward(q, ConstMatrixRef(xb.data(), DType::kF32, 7, kK, kK),
                                MatrixView<float>(yref.data(), 7, kN)).ok());
  EXPECT_EQ(std::memcmp(y.data(), yref.data(), yref.size() * 4), 0);
  for (size_t i = 7 * kN; i < y.size(); ++i) ASSERT_EQ(y[i], 7.0f);
}

TEST(CpuLinear, BadInputIsAStatus) {
  const QuantizedLinear q = make(Format::kInt4, 16, DType::kBF16, true);
  auto cl = CpuLinear::create(q);
  ASSERT_TRUE(cl.ok());
  const int64_t m = 8;
  const auto xb = make_x(m, kK, DType::kF32, -1);
  std::vector<float> y(m * kN, 7.0f);
  const size_t need = cl->workspace_size(m);
  AlignedBuffer ws(need + 64);
  const ConstMatrixRef x(xb.data(), DType::kF32, m, kK, kK);
  const MatrixView<float> yv(y.data(), m, kN);
  const auto expect = [&](Status st, StatusCode code, const char* word) {
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(word), std::string::npos) << st.message();
    for (float v : y) ASSERT_EQ(v, 7.0f) << "y written by a failed call";
  };
  expect(cl->forward(x, yv, m, ws.get(), need - 1, 1), StatusCode::kErrorWorkspace, "workspace_bytes");
  expect(cl->forward(x, yv, m, nullptr, need, 1), StatusCode::kErrorWorkspace, "workspace");
  expect(cl->forward(x, yv, m, static_cast<unsigned char*>(ws.get()) + 4, need, 1),
         StatusCode::kErrorWorkspace, "aligned");
  expect(cl->forward(x, yv, m, ws.get(), need, 0), StatusCode::kErrorInvalidArgument, "threads");
  expect(cl->forward(x, yv, m + 1, ws.get(), need, 1), StatusCode::kErrorShape, "m");
  expect(cl->forward(x, yv, -1, ws.get(), need, 1), StatusCode::kErrorShape, "m");
  expect(cl->forward(ConstMatrixRef(xb.data(), DType::kF32, m, kK - 64, kK), yv, m, ws.get(), need, 1),
         StatusCode::kErrorShape, "x.cols");
  expect(cl->forward(x, MatrixView<float>(y.data(), m, kN - 1), m, ws.get(), need, 1),
         StatusCode::kErrorShape, "y.cols");
  expect(cl->forward(ConstMatrixRef(nullptr, DType::kF32, m, kK, kK), yv, m, ws.get(), need, 1),
         StatusCode::kErrorNullPointer, "x.data");
  expect(cl->forward(ConstMatrixRef(xb.data(), DType::kF32, m, kK, kK - 1), yv, m, ws.get(), need, 1),
         StatusCode::kErrorShape, "x.ld");
  expect(cl->forward(ConstMatrixRef(xb.data(), DType::kF64, m, kK, kK), yv, m, ws.get(), need, 1),
         StatusCode::kErrorInvalidArgument, "dtype");
  // y overlapping x.
  std::vector<float> both(static_cast<size_t>(m * (kK + kN)), 1.0f);
  EXPECT_EQ(cl->forward(ConstMatrixRef(both.data(), DType::kF32, m, kK, kK),
                        MatrixView<float>(both.data() + 10, m, kN), m, ws.get(), need, 1).code(),
            StatusCode::kErrorInvalidArgument);
  // m == 0 needs no workspace.
  EXPECT_TRUE(cl->forward(x, yv, 0, nullptr, 0, 1).ok());
  // An invalid layer is refused at create().
  QuantizedLinear bad = q;
  bad.qweight.pop_back();
  auto r = CpuLinear::create(bad);
  EXPECT_FALSE(r.ok());
  // A moved-from layer answers with a Status.
  CpuLinear moved = std::move(*cl);
  EXPECT_FALSE(cl->forward(x, yv, m, ws.get(), need, 1).ok());
  EXPECT_TRUE(moved.forward(x, yv, m, ws.get(), need, 1).ok());
}

}  // namespace
