// The GPU layer (here on the emulated device, the same host logic and kernel source as GpuLinear)
// runs a block-Hadamard-rotated layer (docs/formats.md §6.3; issue 9: kernel 1 rotates each
// smoothed group): a layer quantized with QuantConfig::rotate (its weights really are Q(R H)) is
// accepted, and its activation codes and scales are byte-equal to the CPU reference, its output
// within the kernels' budget of reference_forward (rank 4) on every kernel-2 path. The rotation
// itself is checked against float64 and the CPU runtimes in tests/test_rotation.cpp; the kernel's
// rotated cases in tests/test_gpu_k1.cpp and tests/test_gpu.cpp.
#include <gtest/gtest.h>

#include <vector>

#include "emu/emu_linear.hpp"
#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

namespace {

TEST(RotationEmu, GpuLayerRunsARotatedLayer) {
  const int64_t n = 16, k = 128, m = 4;
  std::vector<float> w(static_cast<size_t>(n * k));
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i % 13) - 6) / 8.0f;
  std::vector<uint16_t> x(static_cast<size_t>(m * k));
  for (size_t i = 0; i < x.size(); ++i)  // a spiky channel every 37: what the rotation spreads
    x[i] = svdq::float_to_bf16_bits((i % 37 == 5 ? 40.0f : 1.0f) * static_cast<float>(static_cast<int>(i % 11) - 5) / 4.0f);
  for (auto fmt : {svdq::Format::kInt4, svdq::Format::kNvfp4}) {
    SCOPED_TRACE(svdq::format_name(fmt));
    svdq::QuantConfig cfg;
    cfg.format = fmt;
    cfg.alpha = cfg.beta = 0.0f;
    cfg.rank = 4;
    cfg.rotate = true;
    auto q = svdq::quantize_linear(svdq::MatrixView<const float>(w.data(), n, k), {}, nullptr, cfg);
    ASSERT_TRUE(q.ok()) << q.status().to_string();
    ASSERT_EQ(q->rotation, svdq::Rotation::kBlockHadamard);
    svdq::QuantizedActivations act_ref;
    std::vector<uint16_t> y_ref(static_cast<size_t>(m * n));
    ASSERT_TRUE(svdq::test_support::reference_forward_with_activations(
                    *q, svdq::ConstMatrixRef(x.data(), svdq::DType::kBF16, m, k, k),
                    svdq::MatrixRef(y_ref.data(), svdq::DType::kBF16, m, n, n), &act_ref)
                    .ok());
    for (int sm : {0, 80, 90}) {
      SCOPED_TRACE(sm);
      auto layer = svdq::emu::EmuLinear::create(*q, svdq::DType::kBF16, -1, sm);
      ASSERT_TRUE(layer.ok()) << layer.status().to_string();
      EXPECT_TRUE(layer->can_implement(m, svdq::DType::kBF16).ok());
      std::vector<uint16_t> y(static_cast<size_t>(m * n), 0);
      std::vector<unsigned char> ws(layer->workspace_size(m) + 256);
      void* wsp = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
      const svdq::Status st = layer->forward(x.data(), y.data(), m, wsp, layer->workspace_size(m), nullptr);
      ASSERT_TRUE(st.ok()) << st.to_string();
      svdq::QuantizedActivations act;
      ASSERT_TRUE(layer->read_activations(wsp, m, nullptr, &act).ok());
      EXPECT_EQ(act.codes, act_ref.codes);
      EXPECT_EQ(act.scales, act_ref.scales);
      EXPECT_LE(svdq::relative_error(svdq::ConstMatrixRef(y.data(), svdq::DType::kBF16, m, n, n),
                                     svdq::ConstMatrixRef(y_ref.data(), svdq::DType::kBF16, m, n, n)),
                1e-3);
    }
  }
}

}  // namespace
