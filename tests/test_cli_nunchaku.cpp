// `svdq quantize --layout nunchaku` (issue 11): the same model quantized with the canonical layout
// and with Nunchaku's must give the same layers, read back by load_quantized and load_nunchaku.
// Runs the built svdq binary (SVDQ_CLI_PATH).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/nunchaku.hpp"

namespace svdq {
namespace {

namespace fs = std::filesystem;

int run(const std::string& args, const std::string& log) {
  const std::string cmd = std::string("'") + SVDQ_CLI_PATH + "' " + args + " > '" + log + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

void add_f32(SafetensorsWriter& w, const std::string& name, std::vector<int64_t> shape,
             const std::vector<float>& v) {
  ASSERT_TRUE(w.add(name, "F32", shape, ByteSpan(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4)).ok());
}

TEST(CliNunchaku, QuantizeLayoutNunchakuImportsToTheSameLayers) {
  const fs::path dir = fs::path(::testing::TempDir()) / "svdq_cli_nunchaku";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 0.05f);
  // Two layers: K not a multiple of 128 (padding), one without bias; plus an unquantized tensor.
  struct L {
    std::string name;
    int64_t n, k;
    bool bias;
  } const layers[] = {{"blocks.0.attn.to_q", 200, 192, true}, {"blocks.0.ff.net.0.proj", 96, 128, false}};
  SafetensorsWriter w;
  for (const L& l : layers) {
    std::vector<float> wt(static_cast<size_t>(l.n * l.k)), b(static_cast<size_t>(l.n));
    for (float& v : wt) v = g(rng);
    for (float& v : b) v = 20.0f * g(rng);
    add_f32(w, l.name + ".weight", {l.n, l.k}, wt);
    if (l.bias) add_f32(w, l.name + ".bias", {l.n}, b);
  }
  add_f32(w, "norm.weight", {4}, {1, 2, 3, 4});
  const std::string model = (dir / "model.safetensors").string();
  ASSERT_TRUE(w.write(model).ok());
  for (const char* format : {"int4", "nvfp4"}) {
    SCOPED_TRACE(format);
    const std::string a = (dir / "a.safetensors").string(), b = (dir / "b.safetensors").string();
    const std::string log = (dir / "log.txt").string();
    const std::string common = "quantize '" + model + "' --format " + format + " --rank 16 --threads 1 ";
    const std::string storage = std::string(format) == "int4" ? "--storage f16 " : "";
    ASSERT_EQ(run(common + storage + "-o '" + a + "'", log), 0);
    ASSERT_EQ(run(common + "--layout nunchaku -o '" + b + "'", log), 0);
    auto fa = SafetensorsFile::open(a);
    ASSERT_TRUE(fa.ok());
    std::vector<SafetensorsFile> files;
    auto imp = load_nunchaku(b, files);
    ASSERT_TRUE(imp.ok()) << imp.status().to_string();
    ASSERT_EQ(imp->layers.size(), 2u);
    EXPECT_TRUE(imp->skipped.empty());
    ASSERT_EQ(imp->other_tensors.size(), 3u);  // norm.weight and the two smooth_orig
    EXPECT_TRUE(files[0].contains("norm.weight"));
    EXPECT_EQ(files[0].metadata().at("quantization_config"),
              nunchaku_quantization_config(std::string(format) == "int4" ? Format::kInt4 : Format::kNvfp4, 16));
    for (const auto& [name, q] : imp->layers) {
      SCOPED_TRACE(name);
      auto c = load_quantized(*fa, name);
      ASSERT_TRUE(c.ok()) << c.status().to_string();
      EXPECT_EQ(q.format, c->format);
      EXPECT_EQ(q.storage, c->storage);
      EXPECT_EQ(q.in_features, c->in_features);
      EXPECT_EQ(q.out_features, c->out_features);
      EXPECT_EQ(q.rank, c->rank);
      EXPECT_EQ(q.qweight, c->qweight);
      EXPECT_EQ(q.wscales, c->wscales);
      EXPECT_EQ(q.wtscale, c->wtscale);
      EXPECT_EQ(q.smooth, c->smooth);
      EXPECT_EQ(q.lora_down, c->lora_down);
      EXPECT_EQ(q.lora_up, c->lora_up);
      EXPECT_EQ(q.bias, c->bias);
    }
  }
  // An int4 layer under a name Nunchaku runs unsigned (GELU(x) + 0.171875) is written with that
  // contract: it imports as act_unsigned, and equals to_unsigned_activations of the canonical one.
  SafetensorsWriter w2;
  std::vector<float> wt(64 * 128);
  for (float& v : wt) v = g(rng);
  add_f32(w2, "blocks.1.mlp_fc2.weight", {64, 128}, wt);
  const std::string m2 = (dir / "fc2.safetensors").string(), out2 = (dir / "fc2_out.safetensors").string();
  const std::string can2 = (dir / "fc2_can.safetensors").string();
  ASSERT_TRUE(w2.write(m2).ok());
  const std::string log = (dir / "log.txt").string();
  ASSERT_EQ(run("quantize '" + m2 + "' --rank 16 --layout nunchaku -o '" + out2 + "'", log), 0);
  ASSERT_EQ(run("quantize '" + m2 + "' --rank 16 --storage f16 -o '" + can2 + "'", log), 0);
  std::vector<SafetensorsFile> files;
  auto imp = load_nunchaku(out2, files);
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->layers.size(), 1u);
  const QuantizedLinear& u = imp->layers[0].second;
  EXPECT_TRUE(u.act_unsigned);
  EXPECT_EQ(u.act_shift, kNunchakuGeluShift);
  auto fc = SafetensorsFile::open(can2);
  ASSERT_TRUE(fc.ok());
  auto c = load_quantized(*fc, "blocks.1.mlp_fc2");
  ASSERT_TRUE(c.ok());
  auto want = to_unsigned_activations(*c, kNunchakuGeluShift);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(u.bias, want->bias);
  EXPECT_EQ(u.qweight, want->qweight);
  EXPECT_EQ(u.lora_down, want->lora_down);
  fs::remove_all(dir);
}

std::string slurp(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[4096];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, got);
    std::fclose(f);
  }
  return out;
}

// Issue 13: `--plus --format int4` compares block-Hadamard rotated recipes by default, but
// Nunchaku's kernels do not rotate, so `--layout nunchaku` must quantize without them (the export
// refuses a rotated layer); `--rotate` with it is refused up front, and `--no-rotate` turns the
// default off for the canonical layout.
TEST(CliNunchaku, PlusDoesNotRotateForLayoutNunchaku) {
  const fs::path dir = fs::path(::testing::TempDir()) / "svdq_cli_nunchaku_plus";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t n = 64, k = 128, m = 64;
  std::vector<float> wt(static_cast<size_t>(n * k)), x(static_cast<size_t>(m * k));
  for (float& v : wt) v = 0.05f * g(rng);
  for (float& v : x) v = g(rng);
  for (int64_t i = 0; i < m; ++i) x[static_cast<size_t>(i * k + 5)] *= 40.0f;  // an outlier channel
  SafetensorsWriter w, r;
  add_f32(w, "blocks.0.attn.to_q.weight", {n, k}, wt);
  add_f32(r, "blocks.0.attn.to_q.inputs", {m, k}, x);
  const std::string model = (dir / "m.safetensors").string(), rows = (dir / "r.safetensors").string();
  const std::string calib = (dir / "c.safetensors").string(), log = (dir / "log.txt").string();
  ASSERT_TRUE(w.write(model).ok());
  ASSERT_TRUE(r.write(rows).ok());
  ASSERT_EQ(run("calibrate '" + rows + "' -o '" + calib + "'", log), 0) << slurp(log);
  const std::string common = "quantize '" + model + "' --calib '" + calib + "' --rank 8 --threads 1 --plus ";
  // Canonical layout: rotated recipes are compared (the compared list names them).
  ASSERT_EQ(run(common + "-o '" + (dir / "a.safetensors").string() + "'", log), 0) << slurp(log);
  EXPECT_NE(slurp(log).find("+rotate"), std::string::npos) << slurp(log);
  // --no-rotate: none.
  ASSERT_EQ(run(common + "--no-rotate -o '" + (dir / "b.safetensors").string() + "'", log), 0) << slurp(log);
  EXPECT_NE(slurp(log).find("compared: data-free"), std::string::npos) << slurp(log);
  EXPECT_EQ(slurp(log).find("+rotate"), std::string::npos) << slurp(log);
  // Nunchaku's layout: none either, and the file imports.
  const std::string out = (dir / "n.safetensors").string();
  ASSERT_EQ(run(common + "--layout nunchaku -o '" + out + "'", log), 0) << slurp(log);
  EXPECT_NE(slurp(log).find("compared: data-free"), std::string::npos) << slurp(log);
  EXPECT_EQ(slurp(log).find("+rotate"), std::string::npos) << slurp(log);
  std::vector<SafetensorsFile> files;
  auto imp = load_nunchaku(out, files);
  ASSERT_TRUE(imp.ok()) << imp.status().to_string();
  ASSERT_EQ(imp->layers.size(), 1u);
  EXPECT_EQ(imp->layers[0].second.rotation, Rotation::kNone);
  // --rotate with it: refused, naming both.
  EXPECT_NE(run(common + "--rotate --layout nunchaku -o '" + (dir / "x.safetensors").string() + "'", log), 0);
  EXPECT_NE(slurp(log).find("--rotate with --layout nunchaku"), std::string::npos) << slurp(log);
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
  fs::remove_all(dir);
}


// convert --from nunchaku of DeepCompressor's unsigned and per-channel fixtures, then inspect:
// the layers import (none listed as not representable) and inspect names the variants.
TEST(CliNunchaku, ConvertAndInspectShowTheVariants) {
  const fs::path dir = fs::path(::testing::TempDir()) / "svdq_cli_nunchaku_variants";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string log = (dir / "log.txt").string();
  struct C {
    const char* file;
    const char* needle;
  } const cases[] = {{"int4_n192_k256_r32_bf16_unsigned", "unsigned 4-bit of (x + 0.171875) / s"},
                     {"nvfp4_n160_k256_r16_f16_wcscales", "per-channel wcscales"}};
  for (const C& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string in = std::string(SVDQ_TEST_DATA) + "/nunchaku/" + c.file + ".nunchaku.safetensors";
    const std::string out = (dir / "out.safetensors").string(), back = (dir / "back.safetensors").string();
    ASSERT_EQ(run("convert --from nunchaku '" + in + "' -o '" + out + "'", log), 0) << slurp(log);
    EXPECT_NE(slurp(log).find("1 layer(s) converted, 0 not representable"), std::string::npos) << slurp(log);
    ASSERT_EQ(run("inspect '" + out + "'", log), 0) << slurp(log);
    EXPECT_NE(slurp(log).find(c.needle), std::string::npos) << slurp(log);
    // And back: the same tensors as DeepCompressor's file.
    ASSERT_EQ(run("convert --to nunchaku '" + out + "' -o '" + back + "'", log), 0) << slurp(log);
    auto a = SafetensorsFile::open(in);
    auto b = SafetensorsFile::open(back);
    ASSERT_TRUE(a.ok() && b.ok());
    for (const auto& name : a->names()) {
      SCOPED_TRACE(name);
      auto x = a->info(name);
      auto y = b->info(name);
      ASSERT_TRUE(y.ok());
      EXPECT_EQ(x->dtype, y->dtype);
      EXPECT_EQ(x->shape, y->shape);
      EXPECT_TRUE(std::equal(x->data.begin(), x->data.end(), y->data.begin(), y->data.end()));
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace svdq
