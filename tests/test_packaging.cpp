// Packaging contracts that live in the library: the version comes from one place (CMake's
// project(VERSION) -> svdq/version.hpp), checkpoints carry a format version and no wall-clock
// time (same layer, same bytes), and a loader refuses a newer major format with a clear message.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"

namespace {

using namespace svdq;

QuantizedLinear small_layer(double seconds) {
  std::vector<float> w(32 * 64);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i * 37 % 101) - 50) / 50.0f;
  QuantConfig c;
  c.rank = 4;
  c.alpha = c.beta = 0;
  auto q = quantize_linear(MatrixView<const float>(w.data(), 32, 64), ConstMatrixRef(), nullptr, c);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  QuantizedLinear l = q.ok() ? std::move(q).value() : QuantizedLinear{};
  l.info.seconds = seconds;
  return l;
}

std::vector<uint8_t> bytes_of(const QuantizedLinear& q) {
  SafetensorsWriter w;
  EXPECT_TRUE(add_quantized(w, "layer", q).ok());
  auto b = w.serialize();
  EXPECT_TRUE(b.ok());
  return b.ok() ? *b : std::vector<uint8_t>{};
}

TEST(Packaging, VersionStringMatchesTheMacros) {
  const std::string expect = std::to_string(SVDQ_VERSION_MAJOR) + "." +
                             std::to_string(SVDQ_VERSION_MINOR) + "." +
                             std::to_string(SVDQ_VERSION_PATCH);
  EXPECT_EQ(expect, SVDQ_VERSION_STRING);
  EXPECT_EQ(expect, version_string());
}

TEST(Packaging, CheckpointHoldsNoWallClockTime) {
  // Two quantizations that took different times give byte-identical files.
  EXPECT_EQ(bytes_of(small_layer(1.25)), bytes_of(small_layer(7.5)));
  auto f = SafetensorsFile::from_bytes(bytes_of(small_layer(3.0)));
  ASSERT_TRUE(f.ok());
  for (const auto& [key, value] : f->metadata())
    EXPECT_EQ(value.find("seconds"), std::string::npos) << key << " = " << value;
}

TEST(Packaging, NewerMajorFormatIsRefusedOlderMinorAccepted) {
  auto f = SafetensorsFile::from_bytes(bytes_of(small_layer(0)));
  ASSERT_TRUE(f.ok());
  std::string key, meta;
  for (const auto& [k, v] : f->metadata())
    if (v.find("format_version") != std::string::npos) key = k, meta = v;
  ASSERT_FALSE(key.empty()) << "no layer metadata carries format_version";
  // A plain layer is written with the oldest version that holds it (1.0); 2.0 layers: test_variants.
  const std::string current = "\"format_version\":\"1.0\"";
  ASSERT_NE(meta.find(current), std::string::npos) << meta;
  ASSERT_TRUE(load_quantized(*f, "layer").ok());

  const auto with_version = [&](const std::string& v) {
    std::string m = meta;
    m.replace(m.find(current), current.size(), "\"format_version\":\"" + v + "\"");
    SafetensorsWriter w;
    EXPECT_TRUE(add_quantized(w, "layer", small_layer(0)).ok());
    EXPECT_TRUE(w.set_metadata(key, m).ok());
    auto b = w.serialize();
    auto g = SafetensorsFile::from_bytes(std::move(*b));
    EXPECT_TRUE(g.ok());
    return load_quantized(*g, "layer");
  };
  // MAJOR + 1 (2.0) is the format of rotated layers, which this svdq reads (test_rotation.cpp).
  const std::string newer = std::to_string(SVDQ_CHECKPOINT_FORMAT_MAJOR + 2) + ".0";
  auto r = with_version(newer);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kErrorNotSupported);
  EXPECT_NE(r.status().message().find("format version " + newer + " is newer"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("upgrade svdq"), std::string::npos);
  EXPECT_TRUE(with_version(std::to_string(SVDQ_CHECKPOINT_FORMAT_MAJOR) + ".7").ok());
  EXPECT_FALSE(with_version("x.1").ok());
}

}  // namespace
