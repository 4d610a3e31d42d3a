// The GPU layer (here on the emulated device, the same host logic as GpuLinear) refuses a
// block-Hadamard-rotated layer, whose rotation its kernels do not implement yet (docs/formats.md
// §6.3), instead of computing it without the rotation.
#include <gtest/gtest.h>

#include <vector>

#include "emu/emu_linear.hpp"
#include "svdq/svdq.hpp"

namespace {

TEST(RotationEmu, GpuLayerRefusesARotatedLayer) {
  const int64_t n = 16, k = 64;
  std::vector<float> w(static_cast<size_t>(n * k));
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i % 13) - 6) / 8.0f;
  svdq::QuantConfig cfg;
  cfg.alpha = cfg.beta = 0.0f;
  cfg.rank = 4;
  cfg.rotate = true;
  auto q = svdq::quantize_linear(svdq::MatrixView<const float>(w.data(), n, k), {}, nullptr, cfg);
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  ASSERT_EQ(q->rotation, svdq::Rotation::kBlockHadamard);
  auto layer = svdq::emu::EmuLinear::create(*q, svdq::DType::kBF16);
  ASSERT_TRUE(layer.ok()) << layer.status().to_string();
  const svdq::Status st = layer->can_implement(4, svdq::DType::kBF16);
  EXPECT_EQ(st.code(), svdq::StatusCode::kErrorNotSupported);
  EXPECT_NE(st.message().find("block-hadamard"), std::string::npos) << st.message();
  // forward() goes through the same check.
  std::vector<uint16_t> x(static_cast<size_t>(4 * k), 0), y(static_cast<size_t>(4 * n), 0);
  std::vector<unsigned char> ws(layer->workspace_size(4) + 256);
  EXPECT_EQ(layer->forward(x.data(), y.data(), 4, ws.data(), ws.size(), nullptr).code(),
            svdq::StatusCode::kErrorNotSupported);
  // The same layer unrotated is accepted.
  q->rotation = svdq::Rotation::kNone;
  auto plain = svdq::emu::EmuLinear::create(*q, svdq::DType::kBF16);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->can_implement(4, svdq::DType::kBF16).ok());
}

}  // namespace
