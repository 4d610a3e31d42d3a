// Nunchaku import/export (include/svdq/nunchaku.hpp) against fixtures made by DeepCompressor's own
// packer (tools/nunchaku_fixtures.py, tests/data/nunchaku/README.md): import(fixture) must equal
// the canonical layer bit for bit, export(canonical) must equal the fixture's tensors byte for
// byte, and svdq's quantizer -> export -> import must give the same layer back.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/formats.hpp"
#include "svdq/nunchaku.hpp"
#include "svdq/stats.hpp"

namespace svdq {
namespace {

const std::string kData = SVDQ_TEST_DATA "/nunchaku/";

struct Case {
  const char* name;
  const char* layer;
};
const Case kCases[] = {
    {"int4_n128_k128_r16_f16", "transformer_blocks.0.qkv_proj"},
    {"int4_n200_k192_r32_bf16", "transformer_blocks.0.out_proj"},
    {"int4_n96_k320_r48_f16", "single_transformer_blocks.3.mlp_fc1"},
    {"int4_n300_k256_r32_bf16_wrapper", "transformer_blocks.1.qkv_proj_context"},
    {"int4_n64_k128_r0_f16", "transformer_blocks.2.out_proj_context"},
    {"nvfp4_n200_k256_r32_bf16", "transformer_blocks.0.qkv_proj"},
    {"nvfp4_n128_k384_r16_f16", "single_transformer_blocks.1.out_proj"},
    // Format 2.0 variants: unsigned shifted activations (DeepCompressor's wrapper with shift),
    // nvfp4 per-channel wcscales.
    {"int4_n192_k256_r32_bf16_unsigned", "transformer_blocks.0.mlp_fc2"},
    {"int4_n128_k320_r16_f16_unsigned_nobias", "single_transformer_blocks.2.mlp_context_fc2"},
    {"nvfp4_n160_k256_r16_f16_wcscales", "transformer_blocks.1.qkv_proj"},
};

SafetensorsFile open_file(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  return f.ok() ? std::move(f).value() : SafetensorsFile{};
}

void expect_same_data(const QuantizedLinear& a, const QuantizedLinear& b) {
  EXPECT_EQ(a.format, b.format);
  EXPECT_EQ(a.storage, b.storage);
  EXPECT_EQ(a.in_features, b.in_features);
  EXPECT_EQ(a.out_features, b.out_features);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.group, b.group);
  EXPECT_EQ(a.smooth, b.smooth);
  EXPECT_EQ(a.lora_down, b.lora_down);
  EXPECT_EQ(a.lora_up, b.lora_up);
  EXPECT_EQ(a.qweight, b.qweight);
  EXPECT_EQ(a.wscales, b.wscales);
  EXPECT_EQ(a.wtscale, b.wtscale);
  EXPECT_EQ(a.act_tensor_scale, b.act_tensor_scale);
  EXPECT_EQ(a.bias, b.bias);
  EXPECT_EQ(a.act_unsigned, b.act_unsigned);
  EXPECT_EQ(a.act_shift, b.act_shift);
  EXPECT_EQ(a.wcscales, b.wcscales);
}

// A file holding the tensors of `src`, with edits: a tensor dropped, or replaced.
struct Edit {
  std::string drop;
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
SafetensorsFile edited(const SafetensorsFile& src, const Edit& e) {
  SafetensorsWriter w;
  for (const auto& name : src.names()) {
    if (name == e.drop) continue;
    auto info = src.info(name);
    if (name == e.name) {
      EXPECT_TRUE(w.add(name, e.dtype, e.shape, ByteSpan(e.bytes.data(), e.bytes.size())).ok());
    } else {
      EXPECT_TRUE(w.add(name, info->dtype, info->shape, info->data).ok());
    }
  }
  for (const auto& [k, v] : src.metadata()) EXPECT_TRUE(w.set_metadata(k, v).ok());
  auto bytes = w.serialize();
  EXPECT_TRUE(bytes.ok());
  auto f = SafetensorsFile::from_bytes(std::move(bytes).value());
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  return std::move(f).value();
}

TEST(Nunchaku, ImportEqualsCanonicalBitForBit) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
    SafetensorsFile sv = open_file(kData + c.name + ".svdq.safetensors");
    auto canonical = load_quantized(sv, c.layer);
    ASSERT_TRUE(canonical.ok()) << canonical.status().to_string();
    auto imp = import_nunchaku({&nk});
    ASSERT_TRUE(imp.ok()) << imp.status().to_string();
    ASSERT_EQ(imp->layers.size(), 1u);
    EXPECT_TRUE(imp->skipped.empty());
    EXPECT_EQ(imp->layers[0].first, c.layer);
    expect_same_data(imp->layers[0].second, *canonical);
    // Only the unused smooth_orig is left over.
    ASSERT_EQ(imp->other_tensors.size(), 1u);
    EXPECT_EQ(imp->other_tensors[0].second, std::string(c.layer) + ".smooth_orig");
  }
}

TEST(Nunchaku, ExportEqualsDeepCompressorBytes) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
    SafetensorsFile sv = open_file(kData + c.name + ".svdq.safetensors");
    auto canonical = load_quantized(sv, c.layer);
    ASSERT_TRUE(canonical.ok());
    const std::string path = ::testing::TempDir() + "/nk_export.safetensors";
    ASSERT_TRUE(save_nunchaku(path, {{c.layer, &*canonical}}).ok());
    SafetensorsFile out = open_file(path);
    std::vector<std::string> want = nk.names(), have = out.names();
    std::sort(want.begin(), want.end());
    std::sort(have.begin(), have.end());
    EXPECT_EQ(have, want);
    for (const auto& name : nk.names()) {
      SCOPED_TRACE(name);
      auto a = nk.info(name);
      auto b = out.info(name);
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(b->dtype, a->dtype);
      EXPECT_EQ(b->shape, a->shape);
      EXPECT_TRUE(std::equal(a->data.begin(), a->data.end(), b->data.begin(), b->data.end()));
    }
    EXPECT_EQ(out.metadata().at("quantization_config"), nk.metadata().at("quantization_config"));
    EXPECT_EQ(out.metadata().at(std::string("svdq.nunchaku.") + c.layer),
              nk.metadata().at(std::string("svdq.nunchaku.") + c.layer));
    std::remove(path.c_str());
  }
}

TEST(Nunchaku, DeepCompressorSingleGroupQuirkIsRefused) {
  SafetensorsFile nk = open_file(kData + "int4_n64_k64_r0_f16_quirk.nunchaku.safetensors");
  auto imp = import_nunchaku({&nk});
  ASSERT_FALSE(imp.ok());
  EXPECT_EQ(imp.status().code(), StatusCode::kErrorShape);
  EXPECT_NE(imp.status().message().find("transformer_blocks.3.out_proj.wscales"), std::string::npos)
      << imp.status().message();
}

TEST(Nunchaku, SizesFromOptionsOrPadded) {
  const Case& c = kCases[1];  // N 200, K 192, r 32
  SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
  // Explicit sizes win over the metadata.
  NunchakuImportOptions o;
  o.shapes[c.layer] = {256, 256, 32};
  auto imp = import_nunchaku({&nk}, o);
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  EXPECT_EQ(imp->layers[0].second.out_features, 256);
  EXPECT_EQ(imp->layers[0].second.in_features, 256);
  // Sizes that do not round up to the padded ones are refused.
  o.shapes[c.layer] = {192, 100, 32};
  imp = import_nunchaku({&nk}, o);
  ASSERT_FALSE(imp.ok());
  EXPECT_EQ(imp.status().code(), StatusCode::kErrorShape);
  o.shapes[c.layer] = {192, 200, 8};  // rank 8 pads to 16, not 32
  EXPECT_FALSE(import_nunchaku({&nk}, o).ok());
}

TEST(Nunchaku, UnsignedLayersImportUnsignedByName) {
  const Case& c = kCases[0];
  SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
  // Rename the layer to a FLUX mlp_fc2.
  SafetensorsWriter w;
  const std::string from = c.layer, to = "single_transformer_blocks.0.mlp_fc2";
  for (const auto& name : nk.names()) {
    auto info = nk.info(name);
    ASSERT_TRUE(w.add(to + name.substr(from.size()), info->dtype, info->shape, info->data).ok());
  }
  auto f = SafetensorsFile::from_bytes(std::move(w.serialize()).value());
  ASSERT_TRUE(f.ok());
  auto imp = import_nunchaku({&*f});
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->layers.size(), 1u);
  EXPECT_TRUE(imp->skipped.empty());
  EXPECT_EQ(imp->layers[0].first, to);
  EXPECT_TRUE(imp->layers[0].second.act_unsigned);
  EXPECT_EQ(imp->layers[0].second.act_shift, kNunchakuGeluShift);
  EXPECT_NE(imp->layers[0].second.info.notes.find("unsigned"), std::string::npos);
  NunchakuImportOptions o;
  o.unsigned_layers.clear();  // --signed-all
  imp = import_nunchaku({&*f}, o);
  ASSERT_TRUE(imp.ok());
  ASSERT_EQ(imp->layers.size(), 1u);
  EXPECT_FALSE(imp->layers[0].second.act_unsigned);
  EXPECT_EQ(imp->layers[0].second.act_shift, 0.0f);
}

TEST(Nunchaku, ExportRefusesUnsignedSignednessNunchakuWouldNotRun) {
  const Case& c = kCases[7];  // int4 unsigned, transformer_blocks.0.mlp_fc2
  SafetensorsFile sv = open_file(kData + c.name + ".svdq.safetensors");
  auto u = load_quantized(sv, c.layer);
  ASSERT_TRUE(u.ok()) << u.status().to_string();
  ASSERT_TRUE(u->act_unsigned);
  SafetensorsWriter w;
  // Unsigned under a name Nunchaku runs signed.
  Status s = add_nunchaku(w, "transformer_blocks.0.mlp_fc1", *u);
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(s.message().find("would run this one signed"), std::string::npos) << s.message();
  // Signed under a name Nunchaku runs unsigned.
  QuantizedLinear sg = *u;
  sg.act_unsigned = false;
  sg.act_shift = 0;
  s = add_nunchaku(w, "ff.net.2", sg);
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(s.message().find("unsigned, shifted"), std::string::npos) << s.message();
  // Another shift.
  QuantizedLinear sh = *u;
  sh.act_shift = 0.25f;
  s = add_nunchaku(w, c.layer, sh);
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(s.message().find("act_shift"), std::string::npos) << s.message();
  EXPECT_FALSE(w.contains("transformer_blocks.0.mlp_fc1.qweight"));  // nothing added
  EXPECT_FALSE(w.contains("ff.net.2.qweight"));
  EXPECT_FALSE(w.contains(std::string(c.layer) + ".qweight"));
  // The check can be switched off (a runtime other than Nunchaku).
  NunchakuExportOptions o;
  o.unsigned_layers.clear();
  EXPECT_TRUE(add_nunchaku(w, "ff.net.2", sg, o).ok());
}

TEST(Nunchaku, V2NamesImportTheSame) {
  const Case& c = kCases[2];
  SafetensorsFile sv = open_file(kData + c.name + ".svdq.safetensors");
  auto canonical = load_quantized(sv, c.layer);
  ASSERT_TRUE(canonical.ok());
  NunchakuExportOptions o;
  o.names = NunchakuNames::kV2;
  SafetensorsWriter w;
  ASSERT_TRUE(add_nunchaku(w, c.layer, *canonical, o).ok());
  EXPECT_TRUE(w.contains(std::string(c.layer) + ".proj_down"));
  EXPECT_TRUE(w.contains(std::string(c.layer) + ".smooth_factor"));
  auto f = SafetensorsFile::from_bytes(std::move(w.serialize()).value());
  ASSERT_TRUE(f.ok());
  auto imp = import_nunchaku({&*f});
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->layers.size(), 1u);
  expect_same_data(imp->layers[0].second, *canonical);
}

QuantizedLinear quantized(Format format, DType storage, int64_t n, int64_t k, int rank, bool bias) {
  std::mt19937 rng(7);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n * k)), b(static_cast<size_t>(n)), x(32 * k);
  for (float& v : w) v = gauss(rng) * 0.05f;
  for (float& v : b) v = gauss(rng);
  for (float& v : x) v = gauss(rng);
  ActivationStats stats;
  EXPECT_TRUE(stats.observe(MatrixView<const float>(x.data(), 32, k)).ok());
  QuantConfig c;
  c.format = format;
  c.rank = rank;
  c.storage = storage;
  const ConstMatrixRef bref = bias ? ConstMatrixRef(vector_view<const float>(b.data(), n)) : ConstMatrixRef();
  auto q = quantize_linear(MatrixView<const float>(w.data(), n, k), bref, &stats, c);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return std::move(q).value();
}

TEST(Nunchaku, QuantizeExportImportRoundTrip) {
  struct RT {
    Format format;
    int64_t n, k;
    int rank;
    bool bias;
  } const cases[] = {{Format::kInt4, 200, 192, 32, true},
                     {Format::kInt4, 130, 384, 20, false},
                     {Format::kNvfp4, 200, 192, 32, true},
                     {Format::kNvfp4, 96, 48, 0, true}};
  for (const RT& rt : cases) {
    SCOPED_TRACE(::testing::Message() << format_name(rt.format) << " " << rt.n << "x" << rt.k << " r"
                                      << rt.rank);
    QuantizedLinear q = quantized(rt.format, DType::kF16, rt.n, rt.k, rt.rank, rt.bias);
    const std::string path = ::testing::TempDir() + "/nk_rt.safetensors";
    ASSERT_TRUE(save_nunchaku(path, {{"blocks.0.proj", &q}}).ok());
    std::vector<SafetensorsFile> files;
    auto imp = load_nunchaku(path, files);
    ASSERT_TRUE(imp.ok()) << imp.status().to_string();
    ASSERT_EQ(imp->layers.size(), 1u);
    expect_same_data(imp->layers[0].second, q);
    std::remove(path.c_str());
  }
}

TEST(Nunchaku, ExportRefusesWhatItCannotWriteExactly) {
  QuantizedLinear q = quantized(Format::kInt4, DType::kBF16, 128, 128, 16, true);
  q.wscales[0] = 0x01;  // fp16 0x3C01 = 1 + 2^-10: not a bf16 value
  q.wscales[1] = 0x3C;
  const std::string path = ::testing::TempDir() + "/nk_refused.safetensors";
  std::remove(path.c_str());
  Status s = save_nunchaku(path, {{"blocks.0.proj", &q}});
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(s.message().find("blocks.0.proj.wscales"), std::string::npos) << s.message();
  EXPECT_FALSE(std::filesystem::exists(path));
  QuantizedLinear f = quantized(Format::kNvfp4, DType::kF16, 128, 128, 16, true);
  f.act_tensor_scale = 0.5f;
  s = save_nunchaku(path, {{"blocks.0.proj", &f}});
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(Nunchaku, BadInputNamesLayerAndTensor) {
  const Case& c = kCases[0];  // N = K = 128, r = 16, F16
  SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
  const std::string L = c.layer;
  struct Bad {
    const char* what;
    Edit edit;
    StatusCode code;
    std::string tensor;
  };
  std::vector<Bad> bads = {
      {"missing tensor", {L + ".smooth"}, StatusCode::kErrorInvalidArgument, L + ".smooth"},
      {"missing lora_up", {L + ".lora_up"}, StatusCode::kErrorInvalidArgument, L + ".lora_up"},
      {"wrong shape", {"", L + ".wscales", "F16", {128, 2}, std::vector<uint8_t>(512)},
       StatusCode::kErrorShape, L + ".wscales"},
      {"rank not a multiple of 16",
       {"", L + ".lora_down", "F16", {128, 20}, std::vector<uint8_t>(128 * 20 * 2)},
       StatusCode::kErrorShape, L + ".lora_down"},
      {"scales of the wrong dtype", {"", L + ".wscales", "F32", {2, 128}, std::vector<uint8_t>(1024)},
       StatusCode::kErrorInvalidArgument, L + ".wscales"},
      {"int4 scales bf16 while smooth is f16",
       {"", L + ".wscales", "BF16", {2, 128}, std::vector<uint8_t>(512)},
       StatusCode::kErrorInvalidArgument, L + ".wscales"},
      {"qweight not padded", {"", L + ".qweight", "I8", {100, 64}, std::vector<uint8_t>(6400)},
       StatusCode::kErrorShape, L + ".qweight"},
  };
  for (const Bad& b : bads) {
    SCOPED_TRACE(b.what);
    SafetensorsFile f = edited(nk, b.edit);
    auto imp = import_nunchaku({&f});
    ASSERT_FALSE(imp.ok());
    EXPECT_EQ(imp.status().code(), b.code) << imp.status().message();
    EXPECT_NE(imp.status().message().find("'" + b.tensor + "'"), std::string::npos)
        << imp.status().message();
    EXPECT_NE(imp.status().message().find("layer '" + L + "'"), std::string::npos)
        << imp.status().message();
  }
  // A truncated file: the reader refuses it, naming the tensor whose bytes are cut.
  std::vector<uint8_t> bytes;
  {
    FILE* fp = std::fopen((kData + c.name + ".nunchaku.safetensors").c_str(), "rb");
    ASSERT_NE(fp, nullptr);
    int ch;
    while ((ch = std::fgetc(fp)) != EOF) bytes.push_back(static_cast<uint8_t>(ch));
    std::fclose(fp);
  }
  const std::string last = nk.names().back();
  bytes.resize(bytes.size() - 10);
  auto t = SafetensorsFile::from_bytes(bytes);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(last), std::string::npos) << t.status().message();
  // load_nunchaku of a truncated file writes nothing and says which file.
  const std::string path = ::testing::TempDir() + "/nk_trunc.safetensors";
  {
    FILE* fp = std::fopen(path.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), fp);
    std::fclose(fp);
  }
  std::vector<SafetensorsFile> files;
  auto imp = load_nunchaku(path, files);
  ASSERT_FALSE(imp.ok());
  EXPECT_NE(imp.status().message().find(last), std::string::npos) << imp.status().message();
  EXPECT_TRUE(files.empty());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace svdq

namespace svdq {
namespace {

TEST(Nunchaku, LegacyTwoFileFolder) {
  const Case& c = kCases[0];
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "nk_legacy";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kData + c.name + ".nunchaku.safetensors", dir / "transformer_blocks.safetensors");
  SafetensorsWriter w;
  const float x[2] = {1.0f, 2.0f};
  ASSERT_TRUE(w.add("x_embedder.weight", "F32", {2}, ByteSpan(reinterpret_cast<const uint8_t*>(x), 8)).ok());
  ASSERT_TRUE(w.write((dir / "unquantized_layers.safetensors").string()).ok());
  std::vector<SafetensorsFile> files;
  auto imp = load_nunchaku(dir.string(), files);
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(imp->layers.size(), 1u);
  ASSERT_EQ(imp->other_tensors.size(), 2u);  // smooth_orig, and the unquantized tensor
  EXPECT_EQ(imp->other_tensors[1].first, 1u);
  EXPECT_EQ(imp->other_tensors[1].second, "x_embedder.weight");
  EXPECT_TRUE(files[1].contains("x_embedder.weight"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace svdq

namespace svdq {
namespace {

// A float64 simulation of Nunchaku's W4A4 runtime arithmetic (docs/checkpoint.md §5.5) on an
// imported layer: x / smooth rounded to the model dtype T; per 64 (int4) or 16 (nvfp4) group
// scale = amax * (1/7.f) or min(amax * (1/6.f), 448) with codes from the reciprocal of the
// UNROUNDED scale (rcp.approx and __fdividef modelled as exact IEEE operations, one rounding);
// int4 codes saturate to [-8, 7] and the GEMM uses the scale rounded to T; nvfp4 the E4M3 scale.
// mode 0: Nunchaku's arithmetic; mode 1: svdq's contract (DESIGN §2), which must reproduce
// reference_forward (it checks this simulation); mode 2: no activation quantization at all
// (float64 x / s times the dequantized weight: the W4A4 error's reference).
// Unsigned layers: x + shift first (Nunchaku: a T addition, then h2div), scale amax * (1/15.f),
// codes saturated to [0, 15]; the branch reads the raw x. wcscales: acc * t_w * c_n.
std::vector<double> nunchaku_forward(const QuantizedLinear& q, const std::vector<float>& x, int64_t m,
                                     int mode = 0) {
  const int64_t k = q.in_features, n = q.out_features, r = q.rank, gs = q.group, groups = k / gs;
  const DType t = q.storage;
  std::vector<double> y(static_cast<size_t>(m * n), 0.0);
  std::vector<float> xq(static_cast<size_t>(k)), as(static_cast<size_t>(groups));
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x.data() + i * k;
    for (int64_t g = 0; g < groups; ++g) {
      float xh[64], amax = 0.0f;
      const float sh = q.act_shift;
      auto t16 = [&](float v) { return bits16_to_float(float_to_bits16(v, t), t); };
      for (int64_t j = 0; j < gs; ++j) {
        const float s = bits16_to_float(q.smooth[g * gs + j], t);
        const float xv = xr[g * gs + j];
        xh[j] = mode == 0 ? t16((q.act_unsigned ? t16(xv + sh) : xv) / s)
                          : (q.act_unsigned ? xv + sh : xv) * (1.0f / s);
        amax = std::max(amax, std::fabs(xh[j]));
      }
      if (mode == 2) {
        as[g] = 1.0f;
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = static_cast<float>((static_cast<double>(xr[g * gs + j]) + sh) /
                                              bits16_to_float(q.smooth[g * gs + j], t));
      } else if (mode == 1 && q.act_unsigned) {
        const float scale = amax / 15.0f, inv = 15.0f / amax;
        as[g] = std::isfinite(inv) ? scale : 0.0f;
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = as[g] == 0 ? 0.0f : std::clamp(std::nearbyint(xh[j] * inv), 0.0f, 15.0f);
      } else if (q.act_unsigned) {
        const float scale = amax * (1.0f / 15.0f);
        const float rscale = 1.0f / scale;
        as[g] = t16(scale);
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = scale == 0 ? 0.0f : std::clamp(std::nearbyint(xh[j] * rscale), 0.0f, 15.0f);
      } else if (mode == 1 && q.format == Format::kInt4) {
        const float scale = amax / 7.0f, inv = 7.0f / amax;
        as[g] = std::isfinite(inv) ? scale : 0.0f;
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = as[g] == 0 ? 0.0f : std::clamp(std::nearbyint(xh[j] * inv), -7.0f, 7.0f);
      } else if (mode == 1) {
        const float d = decode_e4m3(encode_e4m3(amax / 6.0f / q.act_tensor_scale)) * q.act_tensor_scale;
        const float inv = 1.0f / d;
        as[g] = std::isfinite(inv) && d != 0 ? d : 0.0f;
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = as[g] == 0 ? 0.0f : decode_e2m1(encode_e2m1(xh[j] * inv));
      } else if (q.format == Format::kInt4) {
        const float scale = amax * (1.0f / 7.0f);
        const float rscale = 1.0f / scale;
        as[g] = bits16_to_float(float_to_bits16(scale, t), t);
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = scale == 0 ? 0.0f : std::clamp(std::nearbyint(xh[j] * rscale), -8.0f, 7.0f);
      } else {
        const float scale = std::min(amax * (1.0f / 6.0f), 448.0f);
        const float rscale = 1.0f / scale;
        as[g] = decode_e4m3(encode_e4m3(scale));
        for (int64_t j = 0; j < gs; ++j)
          xq[g * gs + j] = scale == 0 ? 0.0f : decode_e2m1(encode_e2m1(xh[j] * rscale));
      }
    }
    std::vector<double> lora(static_cast<size_t>(r), 0.0);
    for (int64_t s = 0; s < r; ++s)
      for (int64_t j = 0; j < k; ++j)
        lora[s] += static_cast<double>(xr[j]) * bits16_to_float(q.lora_down[j * r + s], t);
    for (int64_t o = 0; o < n; ++o) {
      double acc = 0.0;
      for (int64_t g = 0; g < groups; ++g) {
        double p = 0.0;
        for (int64_t j = 0; j < gs; ++j)
          p += xq[g * gs + j] *
               decode_code(q.format, packed_nibble(q.qweight.data() + o * (k / 2), g * gs + j));
        acc += p * as[g] * q.wscale(o, g);
      }
      acc *= q.wtscale;
      if (!q.wcscales.empty()) acc *= bits16_to_float(q.wcscales[o], t);
      for (int64_t s = 0; s < r; ++s) acc += lora[s] * bits16_to_float(q.lora_up[o * r + s], t);
      if (!q.bias.empty()) acc += bits16_to_float(q.bias[o], t);
      y[i * n + o] = acc;
    }
  }
  return y;
}

TEST(Nunchaku, RuntimeSemanticsGapIsSmall) {
  for (const Case& c : kCases) {
    SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
    auto imp = import_nunchaku({&nk});
    ASSERT_TRUE(imp.ok());
    const QuantizedLinear& q = imp->layers[0].second;
    const int64_t m = 64, k = q.in_features, n = q.out_features;
    std::mt19937 rng(11);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < k; ++j) {
        float v = gauss(rng) * (j % 37 == 5 ? 20.0f : 1.0f);  // a few outlier channels
        if (q.act_unsigned) v = 0.5f * v * (1.0f + std::erf(v / std::sqrt(2.0f)));  // GELU's output
        x[i * k + j] = bits16_to_float(float_to_bits16(v, q.storage), q.storage);  // 16-bit input
      }
    std::vector<float> y(static_cast<size_t>(m * n));
    ASSERT_TRUE(reference_forward(q, MatrixView<const float>(x.data(), m, k),
                                  MatrixView<float>(y.data(), m, n)).ok());
    const std::vector<double> z = nunchaku_forward(q, x, m, 0);
    const std::vector<double> svdq_sim = nunchaku_forward(q, x, m, 1);
    const std::vector<double> exact = nunchaku_forward(q, x, m, 2);
    auto rel = [&](const std::vector<double>& a, const std::vector<double>& b) {
      double num = 0, den = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
      }
      return std::sqrt(num / den);
    };
    const std::vector<double> yd(y.begin(), y.end());
    const double sim = rel(svdq_sim, yd), gap = rel(z, yd), err_ref = rel(yd, exact),
                 err_nk = rel(z, exact);
    std::printf("[ gap      ] %-32s sim %.1e  gap %.3e  act-quant error: svdq %.3e nunchaku %.3e\n",
                c.name, sim, gap, err_ref, err_nk);
    EXPECT_LT(sim, 1e-5);             // the simulation of svdq's contract is reference_forward
    EXPECT_GT(gap, 0.0);              // Nunchaku's arithmetic differs ...
    EXPECT_LT(gap, 0.75 * err_ref);   // ... by less than the activation quantization error
    EXPECT_LT(err_nk, 1.1 * err_ref);  // and is about as accurate
  }
}

}  // namespace
}  // namespace svdq

namespace svdq {
namespace {

std::vector<uint8_t> bytes_of(const SafetensorsFile& f, const std::string& name) {
  auto b = f.bytes(name);
  EXPECT_TRUE(b.ok());
  return std::vector<uint8_t>(b->begin(), b->end());
}

TEST(Nunchaku, NotRepresentableLayersAreListed) {
  // nvfp4 with per-channel wcscales and a wtscale: kept per channel, t_w apart; the export
  // writes the same tensors back.
  const Case& f4 = kCases[5];  // nvfp4_n200_k256_r32_bf16, t_w = 0.75 in wcscales
  SafetensorsFile nk = open_file(kData + f4.name + ".nunchaku.safetensors");
  const std::string L = f4.layer;
  std::vector<uint8_t> wc = bytes_of(nk, L + ".wcscales");
  wc[2 * 5] ^= 0x01;  // the entry at position 5 (channel 3: p(3) = 5, §5.3) differs
  SafetensorsFile a0 = edited(nk, {"", L + ".wcscales", "BF16", {256}, wc});
  const float half_f = 0.5f;
  std::vector<uint8_t> wt(4);
  std::memcpy(wt.data(), &half_f, 4);
  SafetensorsWriter aw0;
  for (const auto& name : a0.names()) {
    auto info = a0.info(name);
    ASSERT_TRUE(aw0.add(name, info->dtype, info->shape, info->data).ok());
  }
  ASSERT_TRUE(aw0.add(L + ".wtscale", "F32", {1}, ByteSpan(wt.data(), 4)).ok());
  for (const auto& [k, v] : a0.metadata()) ASSERT_TRUE(aw0.set_metadata(k, v).ok());
  auto a = SafetensorsFile::from_bytes(std::move(aw0.serialize()).value());
  ASSERT_TRUE(a.ok());
  auto imp = import_nunchaku({&*a});
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_TRUE(imp->skipped.empty());
  ASSERT_EQ(imp->layers.size(), 1u);
  const QuantizedLinear& pc = imp->layers[0].second;
  ASSERT_EQ(pc.wcscales.size(), 200u);
  EXPECT_EQ(pc.wtscale, 0.5f);
  EXPECT_EQ(pc.wcscales[3], float_to_bf16_bits(0.75f) ^ 1);
  EXPECT_EQ(pc.wcscales[0], float_to_bf16_bits(0.75f));
  SafetensorsWriter back;
  NunchakuExportOptions eo;
  eo.shape_metadata = false;
  ASSERT_TRUE(add_nunchaku(back, L, pc, eo).ok());
  auto bb = SafetensorsFile::from_bytes(std::move(back.serialize()).value());
  ASSERT_TRUE(bb.ok());
  for (const char* t : {".wcscales", ".wtscale", ".qweight", ".wscales", ".bias", ".lora_down"}) {
    SCOPED_TRACE(t);
    EXPECT_EQ(bytes_of(*bb, L + t), bytes_of(*a, L + t));
  }

  // Equal wcscales (0.75) with a wtscale whose product with them is not an fp32 value: kept per
  // channel too (nothing lost), not folded.
  {
    const float third = 1.0f / 3.0f;
    ASSERT_NE(static_cast<double>(static_cast<float>(0.75 * third)), 0.75 * third);
    std::vector<uint8_t> t3(4);
    std::memcpy(t3.data(), &third, 4);
    SafetensorsWriter ew;
    for (const auto& name : nk.names()) {
      auto info = nk.info(name);
      ASSERT_TRUE(ew.add(name, info->dtype, info->shape, info->data).ok());
    }
    ASSERT_TRUE(ew.add(L + ".wtscale", "F32", {1}, ByteSpan(t3.data(), 4)).ok());
    for (const auto& [k, v] : nk.metadata()) ASSERT_TRUE(ew.set_metadata(k, v).ok());
    auto e = SafetensorsFile::from_bytes(std::move(ew.serialize()).value());
    ASSERT_TRUE(e.ok());
    auto ei = import_nunchaku({&*e});
    ASSERT_TRUE(ei.ok()) << ei.status().to_string();
    ASSERT_EQ(ei->layers.size(), 1u);
    EXPECT_EQ(ei->layers[0].second.wtscale, third);
    EXPECT_EQ(ei->layers[0].second.wcscales,
              std::vector<uint16_t>(200, float_to_bf16_bits(0.75f)));
  }

  // DeepCompressor's per-tensor variant: wcscales absent, wtscale BF16 [1] = 0.75: same layer.
  SafetensorsFile sv = open_file(kData + f4.name + ".svdq.safetensors");
  auto canonical = load_quantized(sv, L);
  ASSERT_TRUE(canonical.ok());
  const uint16_t b075 = float_to_bf16_bits(0.75f);
  SafetensorsWriter w;
  for (const auto& name : nk.names()) {
    auto info = nk.info(name);
    if (name == L + ".wcscales") {
      ASSERT_TRUE(w.add(L + ".wtscale", "BF16", {1}, ByteSpan(reinterpret_cast<const uint8_t*>(&b075), 2)).ok());
      continue;
    }
    ASSERT_TRUE(w.add(name, info->dtype, info->shape, info->data).ok());
  }
  for (const auto& [k, v] : nk.metadata()) ASSERT_TRUE(w.set_metadata(k, v).ok());
  auto b = SafetensorsFile::from_bytes(std::move(w.serialize()).value());
  ASSERT_TRUE(b.ok());
  imp = import_nunchaku({&*b});
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->layers.size(), 1u);
  expect_same_data(imp->layers[0].second, *canonical);

  // int4 bf16 scale that fp16 cannot hold (1e6 > 65504).
  const Case& i4 = kCases[1];  // int4_n200_k192_r32_bf16
  SafetensorsFile nk4 = open_file(kData + i4.name + ".nunchaku.safetensors");
  std::vector<uint8_t> ws = bytes_of(nk4, std::string(i4.layer) + ".wscales");
  const uint16_t big = float_to_bf16_bits(1e6f);
  std::memcpy(ws.data(), &big, 2);  // scale (n 0, g 0)
  SafetensorsFile c = edited(nk4, {"", std::string(i4.layer) + ".wscales", "BF16", {4, 256}, ws});
  imp = import_nunchaku({&c});
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->skipped.size(), 1u);
  EXPECT_NE(imp->skipped[0].reason.find("not exactly representable in fp16"), std::string::npos)
      << imp->skipped[0].reason;

  // AWQ W4A16 (qweight I32, wzeros): listed, not an error.
  SafetensorsWriter aw;
  std::vector<uint8_t> z(64 * 4);
  ASSERT_TRUE(aw.add("blocks.0.norm1.linear.qweight", "I32", {8, 8}, ByteSpan(z.data(), z.size())).ok());
  ASSERT_TRUE(aw.add("blocks.0.norm1.linear.wzeros", "BF16", {8}, ByteSpan(z.data(), 16)).ok());
  auto awf = SafetensorsFile::from_bytes(std::move(aw.serialize()).value());
  ASSERT_TRUE(awf.ok());
  imp = import_nunchaku({&*awf});
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->skipped.size(), 1u);
  EXPECT_NE(imp->skipped[0].reason.find("AWQ"), std::string::npos);
  EXPECT_EQ(imp->other_tensors.size(), 2u);
}

TEST(Nunchaku, BadNvfp4ScaleTensorsNameLayerAndTensor) {
  const Case& c = kCases[9];  // nvfp4_n160_k256_r16_f16_wcscales: Np = 256, F16
  SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
  const std::string L = c.layer;
  struct Bad {
    const char* what;
    Edit edit;
    StatusCode code;
    std::string tensor;
  };
  std::vector<uint8_t> nan_wc = bytes_of(nk, L + ".wcscales");
  nan_wc[0] = 0x00;  // position 0 = channel 0: F16 NaN 0x7E00
  nan_wc[1] = 0x7E;
  const std::vector<Bad> bads = {
      {"wcscales of the wrong dtype", {"", L + ".wcscales", "F32", {256}, std::vector<uint8_t>(1024)},
       StatusCode::kErrorInvalidArgument, L + ".wcscales"},
      {"wcscales of the wrong shape", {"", L + ".wcscales", "F16", {160}, std::vector<uint8_t>(320)},
       StatusCode::kErrorShape, L + ".wcscales"},
      {"wscales of the wrong dtype", {"", L + ".wscales", "U8", {16, 256}, std::vector<uint8_t>(4096)},
       StatusCode::kErrorInvalidArgument, L + ".wscales"},
      {"wcscales NaN", {"", L + ".wcscales", "F16", {256}, nan_wc}, StatusCode::kErrorNonFinite,
       "wcscales[0]"},
  };
  for (const Bad& b : bads) {
    SCOPED_TRACE(b.what);
    SafetensorsFile f = edited(nk, b.edit);
    auto imp = import_nunchaku({&f});
    ASSERT_FALSE(imp.ok());
    EXPECT_EQ(imp.status().code(), b.code) << imp.status().message();
    EXPECT_NE(imp.status().message().find(b.tensor), std::string::npos) << imp.status().message();
    EXPECT_NE(imp.status().message().find("layer '" + L + "'"), std::string::npos)
        << imp.status().message();
  }
}

TEST(Nunchaku, BothKeySpellingsInOneLayerIsAnError) {
  const Case& c = kCases[0];
  SafetensorsFile nk = open_file(kData + c.name + ".nunchaku.safetensors");
  SafetensorsWriter w;
  for (const auto& name : nk.names()) {
    auto info = nk.info(name);
    ASSERT_TRUE(w.add(name, info->dtype, info->shape, info->data).ok());
  }
  auto sm = nk.info(std::string(c.layer) + ".smooth");
  ASSERT_TRUE(w.add(std::string(c.layer) + ".smooth_factor", sm->dtype, sm->shape, sm->data).ok());
  auto f = SafetensorsFile::from_bytes(std::move(w.serialize()).value());
  ASSERT_TRUE(f.ok());
  auto imp = import_nunchaku({&*f});
  ASSERT_FALSE(imp.ok());
  EXPECT_NE(imp.status().message().find("smooth_factor"), std::string::npos);
}

}  // namespace
}  // namespace svdq
