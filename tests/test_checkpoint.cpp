// Checkpoint I/O (include/svdq/checkpoint.hpp, docs/checkpoint.md): quantized layers round-trip
// byte for byte; files from an independent hand-built writer read back exactly; every rule of
// the reader's validation has its own crafted file and expected code; load_quantized refuses
// missing layers and tensors of the wrong dtype or shape.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/linear.hpp"
#include "svdq/stats.hpp"
#include "svdq/version.hpp"

namespace {

using namespace svdq;
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// ---- Helpers ---------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("svdq_test_checkpoint_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

/// The independent minimal writer: u64 LE header length, the header text as given, the buffer.
Bytes raw_file(const std::string& header, const Bytes& buffer, uint64_t declared_length) {
  Bytes out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(declared_length >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}
Bytes raw_file(const std::string& header, const Bytes& buffer = {}) {
  return raw_file(header, buffer, header.size());
}

/// Expects the bytes to be refused by both open() (through a file) and from_bytes(), with `code`
/// and a message containing `needle`.
void expect_refused(const Bytes& bytes, StatusCode code, const std::string& needle) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  write_bytes(path, bytes);
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok()) << "open() accepted a malformed file; expected: " << needle;
  EXPECT_EQ(f.status().code(), code) << f.status().to_string();
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status().to_string();
  EXPECT_NE(f.status().message().find("bad.safetensors"), std::string::npos)
      << "the message should name the file: " << f.status().to_string();
  auto m = SafetensorsFile::from_bytes(bytes);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), code) << m.status().to_string();
  EXPECT_NE(m.status().message().find(needle), std::string::npos) << m.status().to_string();
}

/// One valid tensor entry "t" (F32 [2] at [0, 8)) plus `extra` JSON members.
std::string header_with(const std::string& entry) { return "{\"t\":" + entry + "}"; }

template <typename T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// ---- Building layers --------------------------------------------------------------------------

struct LayerSpec {
  Format format;
  int rank;
  bool bias;
  DType storage;
  int64_t k;
  int64_t n;
};

std::string spec_name(const LayerSpec& s) {
  return std::string(format_name(s.format)) + "_r" + std::to_string(s.rank) +
         (s.bias ? "_bias_" : "_nobias_") + dtype_name(s.storage) + "_k" + std::to_string(s.k) +
         "_n" + std::to_string(s.n);
}

QuantizedLinear make_layer(const LayerSpec& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(s.n * s.k)), b(static_cast<size_t>(s.n));
  for (float& v : w) v = gauss(rng) * 0.05f;
  for (float& v : b) v = gauss(rng);
  const int64_t rows = 32;
  std::vector<float> x(static_cast<size_t>(rows * s.k));
  for (float& v : x) v = gauss(rng);
  for (int64_t i = 0; i < rows; ++i) x[static_cast<size_t>(i * s.k + 3)] *= 40.0f;  // outlier
  ActivationStats stats;
  EXPECT_TRUE(stats.observe(MatrixView<const float>(x.data(), rows, s.k)).ok());

  QuantConfig c;
  c.format = s.format;
  c.rank = s.rank;
  c.storage = s.storage;
  c.alpha = 0.37f;  // not exactly representable in decimal: checks the metadata round trip
  c.beta = 0.63f;
  c.svd.method = s.rank == 16 && s.bias ? SvdMethod::kExact : SvdMethod::kRandomized;
  if (s.format == Format::kNvfp4) c.act_tensor_scale = 0.75f;
  const ConstMatrixRef bias =
      s.bias ? ConstMatrixRef(vector_view<const float>(b.data(), s.n)) : ConstMatrixRef();
  auto q = quantize_linear(MatrixView<const float>(w.data(), s.n, s.k), bias, &stats, c);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return q.ok() ? std::move(q).value() : QuantizedLinear{};
}

void expect_identical(const QuantizedLinear& a, const QuantizedLinear& b) {
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
  EXPECT_TRUE(same_bits(a.wtscale, b.wtscale)) << a.wtscale << " vs " << b.wtscale;
  EXPECT_TRUE(same_bits(a.act_tensor_scale, b.act_tensor_scale));
  EXPECT_EQ(a.bias, b.bias);
  EXPECT_TRUE(same_bits(a.info.alpha, b.info.alpha)) << a.info.alpha << " vs " << b.info.alpha;
  EXPECT_TRUE(same_bits(a.info.beta, b.info.beta)) << a.info.beta << " vs " << b.info.beta;
  EXPECT_EQ(a.info.svd, b.info.svd);
  EXPECT_TRUE(same_bits(a.info.weight_norm, b.info.weight_norm));
  EXPECT_TRUE(same_bits(a.info.residual_norm, b.info.residual_norm));
  // info.seconds (wall time) is deliberately not stored: checkpoints hold no wall-clock time.
  EXPECT_TRUE(same_bits(a.info.score, b.info.score)) << a.info.score << " vs " << b.info.score;
  EXPECT_EQ(a.info.candidates_scored, b.info.candidates_scored);
  EXPECT_EQ(a.info.refine_iterations, b.info.refine_iterations);
  EXPECT_EQ(a.info.notes, b.info.notes);
  EXPECT_EQ(a.info.recipe, b.info.recipe);
  EXPECT_EQ(a.info.holdout_rows, b.info.holdout_rows);
  ASSERT_EQ(a.info.selection.size(), b.info.selection.size());
  for (size_t i = 0; i < a.info.selection.size(); ++i) {
    EXPECT_EQ(a.info.selection[i].recipe, b.info.selection[i].recipe);
    EXPECT_TRUE(same_bits(a.info.selection[i].score, b.info.selection[i].score));
  }
}

/// The tensors a layer must be stored as (docs/checkpoint.md), checked on the file itself.
void expect_canonical_tensors(const SafetensorsFile& f, const std::string& name,
                              const QuantizedLinear& q) {
  const int64_t n = q.out_features, k = q.in_features, r = q.rank;
  const std::string s16 = q.storage == DType::kF16 ? "F16" : "BF16";
  const bool int4 = q.format == Format::kInt4;
  struct Want {
    std::string key, dtype;
    std::vector<int64_t> shape;
  };
  std::vector<Want> want = {
      {".qweight", "U8", {n, k / 2}},
      {".wscales", int4 ? "F16" : "F8_E4M3", {n, k / (int4 ? 64 : 16)}},
      {".smooth", s16, {k}},
      {".lora_down", s16, {k, r}},
      {".lora_up", s16, {n, r}},
  };
  if (!int4) {
    want.push_back({".wtscale", "F32", {1}});
    want.push_back({".act_tscale", "F32", {1}});
  }
  if (!q.bias.empty()) want.push_back({".bias", s16, {n}});
  for (const Want& w : want) {
    auto t = f.info(name + w.key);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(t->dtype, w.dtype) << w.key;
    EXPECT_EQ(t->shape, w.shape) << w.key;
  }
  EXPECT_EQ(f.contains(name + ".bias"), !q.bias.empty());
  EXPECT_EQ(f.contains(name + ".wtscale"), !int4);
  if (!int4) {
    auto t = f.read_float(name + ".wtscale");
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(same_bits((*t)[0], q.wtscale));
  }
}

// ---- Round trips -----------------------------------------------------------------------------

class RoundTrip : public ::testing::TestWithParam<LayerSpec> {};

TEST_P(RoundTrip, EveryFieldByteForByte) {
  const LayerSpec s = GetParam();
  const QuantizedLinear a = make_layer(s, 11);
  LayerSpec s2 = s;
  s2.k = s.k == 128 ? 256 : 128;  // a second layer of another shape in the same file
  s2.n = 40;
  const QuantizedLinear b = make_layer(s2, 12);
  ASSERT_TRUE(validate(a).ok());
  ASSERT_TRUE(validate(b).ok());
  EXPECT_EQ(a.bias.empty(), !s.bias);

  TempDir dir;
  const std::string path = dir.file("layers.safetensors");
  const Status st = save_quantized(path, {{"blocks.0.attn.to_q", &a}, {"blocks.0.ff.up", &b}},
                                   {{"model", "synthetic"}});
  ASSERT_TRUE(st.ok()) << st.to_string();

  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("svdq.version"), std::string(version_string()));
  EXPECT_EQ(f->metadata().at("model"), "synthetic");
  auto layers = quantized_layers(*f);
  ASSERT_TRUE(layers.ok());
  EXPECT_EQ(*layers, (std::vector<std::string>{"blocks.0.attn.to_q", "blocks.0.ff.up"}));
  expect_canonical_tensors(*f, "blocks.0.attn.to_q", a);
  expect_canonical_tensors(*f, "blocks.0.ff.up", b);

  auto la = load_quantized(*f, "blocks.0.attn.to_q");
  ASSERT_TRUE(la.ok()) << la.status().to_string();
  expect_identical(a, *la);
  auto lb = load_quantized(*f, "blocks.0.ff.up");
  ASSERT_TRUE(lb.ok()) << lb.status().to_string();
  expect_identical(b, *lb);

  // Saving what was loaded gives the same file, byte for byte.
  const std::string path2 = dir.file("again.safetensors");
  ASSERT_TRUE(save_quantized(path2, {{"blocks.0.attn.to_q", &*la}, {"blocks.0.ff.up", &*lb}},
                             {{"model", "synthetic"}})
                  .ok());
  EXPECT_EQ(read_bytes(path), read_bytes(path2));
}

std::vector<LayerSpec> round_trip_specs() {
  std::vector<LayerSpec> v;
  for (Format f : {Format::kInt4, Format::kNvfp4})
    for (int rank : {0, 16})
      for (bool bias : {false, true})
        for (DType st : {DType::kF16, DType::kBF16})
          v.push_back({f, rank, bias, st, bias ? 256 : 128, bias ? 72 : 33});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Layers, RoundTrip, ::testing::ValuesIn(round_trip_specs()),
                         [](const auto& info) { return spec_name(info.param); });

// The recipe's provenance (issue 13): an svdq-plus layer's info, every field, survives the file.
TEST(Checkpoint, RecipeProvenanceRoundTrips) {
  std::mt19937 rng(5);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  const int64_t n = 40, k = 128, rows = 64;
  std::vector<float> w(static_cast<size_t>(n * k)), x(static_cast<size_t>(rows * k));
  for (float& v : w) v = gauss(rng) * 0.05f;
  for (float& v : x) v = gauss(rng);
  for (int64_t i = 0; i < rows; ++i) x[static_cast<size_t>(i * k + 7)] *= 30.0f;
  ActivationStats stats;
  ASSERT_TRUE(stats.observe(MatrixView<const float>(x.data(), rows, k)).ok());
  QuantConfig c;
  c.rank = 8;
  c.smooth_search.candidates = {{0.25f, 0.75f}, {0.5f, 0.5f}};
  auto q = quantize_linear(MatrixView<const float>(w.data(), n, k), ConstMatrixRef(), &stats,
                           svdq_plus_config(c));
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  // Non-default values in every provenance field, so a lost field cannot pass.
  EXPECT_FALSE(q->info.recipe.empty());
  EXPECT_EQ(q->info.holdout_rows, rows);  // every sampled row is scored out of fold
  EXPECT_GE(q->info.selection.size(), 5u);
  EXPECT_GT(q->info.score, 0.0);
  EXPECT_GT(q->info.candidates_scored, 0);
  q->info.refine_iterations = 2;
  q->info.notes += "a \"quoted\" note, \\ and \u00e9; ";
  q->info.selection.push_back({"hand-made", 0.1});  // not exactly representable in decimal

  TempDir dir;
  const std::string path = dir.file("plus.safetensors");
  ASSERT_TRUE(save_quantized(path, {{"mlp.down", &*q}}).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const std::string meta = f->metadata().at("svdq.layer.mlp.down");
  EXPECT_NE(meta.find("\"recipe\""), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"selection\""), std::string::npos) << meta;
  auto l = load_quantized(*f, "mlp.down");
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  expect_identical(*q, *l);
}

TEST(Checkpoint, MixedFileOfLayersAndCopiedTensors) {
  const QuantizedLinear q = make_layer({Format::kNvfp4, 16, true, DType::kBF16, 128, 32}, 5);
  TempDir dir;
  SafetensorsWriter w;
  const std::vector<float> norm = {1.0f, -2.5f, 3.25f};
  ASSERT_TRUE(
      w.add("norm.weight", "F32", {3}, ByteSpan(reinterpret_cast<const uint8_t*>(norm.data()), 12))
          .ok());
  ASSERT_TRUE(add_quantized(w, "proj", q).ok());
  ASSERT_TRUE(w.set_metadata("svdq.version", version_string()).ok());
  ASSERT_TRUE(w.write(dir.file("mixed.safetensors")).ok());

  auto f = SafetensorsFile::open(dir.file("mixed.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->names().front(), "norm.weight");  // insertion order is data order
  auto nw = f->read_float("norm.weight");
  ASSERT_TRUE(nw.ok());
  EXPECT_EQ(*nw, norm);
  auto lq = load_quantized(*f, "proj");
  ASSERT_TRUE(lq.ok()) << lq.status().to_string();
  expect_identical(q, *lq);
}

TEST(Checkpoint, RankZeroLayerWithoutLoraTensorsLoads) {
  const QuantizedLinear q = make_layer({Format::kInt4, 0, false, DType::kF16, 128, 16}, 6);
  auto full = SafetensorsWriter();
  ASSERT_TRUE(add_quantized(full, "l", q).ok());
  auto bytes = full.serialize();
  ASSERT_TRUE(bytes.ok());
  auto src = SafetensorsFile::from_bytes(*bytes);
  ASSERT_TRUE(src.ok());
  SafetensorsWriter w;  // copy everything except the (empty) lora tensors
  for (const std::string& name : src->names()) {
    if (name == "l.lora_down" || name == "l.lora_up") continue;
    auto t = src->info(name);
    ASSERT_TRUE(w.add(name, t->dtype, t->shape, t->data).ok());
  }
  for (const auto& [k, v] : src->metadata()) ASSERT_TRUE(w.set_metadata(k, v).ok());
  auto f = SafetensorsFile::from_bytes(*w.serialize());
  ASSERT_TRUE(f.ok());
  auto l = load_quantized(*f, "l");
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  expect_identical(q, *l);
}

// ---- The writer's file layout ---------------------------------------------------------------

TEST(Writer, HeaderPaddedToEightContiguousInsertionOrder) {
  SafetensorsWriter w;
  const Bytes a = {1, 2, 3};           // U8 [3]: leaves the next tensor unaligned
  const Bytes b = {0, 0x3c, 0, 0xc0};  // F16 [2] = {1, -2}
  const Bytes c = {};                  // F32 [0, 4]: empty
  ASSERT_TRUE(w.add("zeta", "U8", {3}, a).ok());
  ASSERT_TRUE(w.add("alpha", "F16", {2}, b).ok());
  ASSERT_TRUE(w.add("empty", "F32", {0, 4}, c).ok());
  ASSERT_TRUE(w.set_metadata("k", "v").ok());
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes.ok());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | (*bytes)[i];
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes->size(), 8 + n + 7);
  const std::string header(bytes->begin() + 8, bytes->begin() + 8 + static_cast<int64_t>(n));
  const std::string padding = header.substr(header.rfind('}') + 1);
  EXPECT_LT(padding.size(), 8u);
  EXPECT_EQ(padding, std::string(padding.size(), ' ')) << "the header is padded with spaces";
  // Parsed independently: offsets contiguous in insertion order; "__metadata__" first.
  const auto j = nlohmann::ordered_json::parse(header);
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"__metadata__", "zeta", "alpha", "empty"}));
  EXPECT_EQ(j["zeta"]["data_offsets"], nlohmann::ordered_json::array({0, 3}));
  EXPECT_EQ(j["alpha"]["data_offsets"], nlohmann::ordered_json::array({3, 7}));
  EXPECT_EQ(j["empty"]["data_offsets"], nlohmann::ordered_json::array({7, 7}));
  EXPECT_EQ(j["empty"]["shape"], nlohmann::ordered_json::array({0, 4}));
  EXPECT_EQ(j["__metadata__"]["k"], "v");
  const Bytes data(bytes->begin() + 8 + static_cast<int64_t>(n), bytes->end());
  EXPECT_EQ(data, (Bytes{1, 2, 3, 0, 0x3c, 0, 0xc0}));

  TempDir dir;
  ASSERT_TRUE(w.write(dir.file("w.safetensors")).ok());
  EXPECT_EQ(read_bytes(dir.file("w.safetensors")), *bytes);
  for (const auto& e : fs::directory_iterator(dir.file("")))
    EXPECT_EQ(e.path().filename(), "w.safetensors") << "temporary file left behind";
}

TEST(Writer, NamesWithAnyCharactersRoundTrip) {
  const std::vector<std::string> names = {"",
                                          "with space",
                                          "quote\"back\\slash",
                                          "new\nline",
                                          "\xc3\xa9t\xc3\xa9 \xe2\x88\x91 \xf0\x9f\x98\x80",
                                          std::string("nul\0inside", 10),
                                          "__metadata__x"};
  SafetensorsWriter w;
  for (size_t i = 0; i < names.size(); ++i) {
    const Bytes b = {static_cast<uint8_t>(i)};
    ASSERT_TRUE(w.add(names[i], "I8", {1}, b).ok()) << i;
  }
  ASSERT_TRUE(w.set_metadata("m\tkey", "line1\nline2 \xe2\x82\xac").ok());
  auto f = SafetensorsFile::from_bytes(*w.serialize());
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->names(), names);  // data order = insertion order
  for (size_t i = 0; i < names.size(); ++i) {
    auto b = f->bytes(names[i]);
    ASSERT_TRUE(b.ok());
    ASSERT_EQ(b->size(), 1u);
    EXPECT_EQ((*b)[0], i);
  }
  EXPECT_EQ(f->metadata().at("m\tkey"), "line1\nline2 \xe2\x82\xac");
}

TEST(Writer, RefusesBadArguments) {
  SafetensorsWriter w;
  const Bytes four = {0, 0, 0, 0};
  ASSERT_TRUE(w.add("x", "F32", {1}, four).ok());
  auto expect = [](const Status& s, StatusCode code, const std::string& needle) {
    EXPECT_EQ(s.code(), code) << s.to_string();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
  };
  expect(w.add("x", "F32", {1}, four), StatusCode::kErrorInvalidArgument, "already added");
  expect(w.add("__metadata__", "F32", {1}, four), StatusCode::kErrorInvalidArgument, "reserved");
  expect(w.add("y", "F12", {1}, four), StatusCode::kErrorInvalidArgument, "unknown dtype");
  expect(w.add("y", "F32", {-1}, four), StatusCode::kErrorInvalidArgument, "negative");
  expect(w.add("y", "F32", {2}, four), StatusCode::kErrorShape, "needs 8");
  expect(w.add("y", "F32", {int64_t{1} << 40, int64_t{1} << 40}, four),
         StatusCode::kErrorInvalidArgument, "overflows");
  expect(w.add("bad\xff", "U8", {0}, {}), StatusCode::kErrorInvalidArgument, "UTF-8");
  expect(w.set_metadata("k", "\xc0\x80"), StatusCode::kErrorInvalidArgument, "UTF-8");
  expect(w.add("y", "U8", {4}, ByteSpan(static_cast<const uint8_t*>(nullptr), 4)),
         StatusCode::kErrorNullPointer, "null");
  EXPECT_FALSE(w.contains("y"));
  TempDir dir;
  expect(w.write(dir.file("no/such/dir/x.safetensors")), StatusCode::kErrorIo, "cannot create");
}

TEST(Writer, SaveQuantizedRefusesNullAndRepeatedLayers) {
  const QuantizedLinear q = make_layer({Format::kInt4, 0, false, DType::kBF16, 128, 8}, 7);
  TempDir dir;
  Status s = save_quantized(dir.file("a"), {{"a", &q}, {"b", nullptr}});
  EXPECT_EQ(s.code(), StatusCode::kErrorNullPointer) << s.to_string();
  s = save_quantized(dir.file("a"), {{"a", &q}, {"a", &q}});
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("already holds"), std::string::npos) << s.to_string();
  s = save_quantized(dir.file("a"), {{"", &q}});
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument) << s.to_string();
  QuantizedLinear bad = q;
  bad.qweight.pop_back();
  s = save_quantized(dir.file("a"), {{"a", &bad}});
  EXPECT_EQ(s.code(), StatusCode::kErrorShape) << s.to_string();
  EXPECT_NE(s.message().find("qweight"), std::string::npos) << s.to_string();
  bad = q;
  bad.wtscale = 2.0f;  // int4 stores no tensor scale: refusing beats silently dropping it
  s = save_quantized(dir.file("a"), {{"a", &bad}});
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument) << s.to_string();
  bad = q;
  bad.info.alpha = NAN;
  s = save_quantized(dir.file("a"), {{"a", &bad}});
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("info.alpha"), std::string::npos) << s.to_string();
  EXPECT_FALSE(fs::exists(dir.file("a")));
}

// ---- The atomic writer: exclusive temp file, modes, special files, no leftovers (issue 10) ------

/// Names in the directory, sorted.
std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

SafetensorsWriter small_writer() {
  SafetensorsWriter w;
  const Bytes b = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_TRUE(w.add("t", "U8", {8}, b).ok());
  return w;
}

TEST(AtomicWrite, PlantedLinkAtTheOldPredictableTempNameIsNotFollowed) {
  TempDir dir;
  const std::string out = dir.file("out.safetensors"), victim = dir.file("victim");
  write_bytes(victim, {'k', 'e', 'e', 'p'});
  // The writer used to open "<out>.tmp-<pid>" with fopen, following a link planted there.
  fs::create_symlink(victim, out + ".tmp-" + std::to_string(getpid()));
  ASSERT_TRUE(small_writer().write(out).ok());
  EXPECT_EQ(read_bytes(victim), (Bytes{'k', 'e', 'e', 'p'}));
  auto f = SafetensorsFile::open(out);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_TRUE(f->contains("t"));
}

TEST(AtomicWrite, TempFileIsInTheOutputDirectoryAndGoneAfterwards) {
  TempDir dir;
  const std::string out = dir.file("out.safetensors");
  std::vector<std::string> temps;
  ASSERT_TRUE(small_writer().write(out, [&](const std::string& t) { temps.push_back(t); }).ok());
  ASSERT_EQ(temps.size(), 2u);  // created, then gone
  EXPECT_EQ(fs::path(temps[0]).parent_path(), fs::path(out).parent_path());
  EXPECT_NE(temps[0].find(".out.safetensors.tmp-"), std::string::npos) << temps[0];
  EXPECT_EQ(temps[1], "");
  EXPECT_EQ(listing(dir.file("")), std::vector<std::string>{"out.safetensors"});
  // A second write picks another unpredictable name.
  std::vector<std::string> again;
  ASSERT_TRUE(small_writer().write(out, [&](const std::string& t) { again.push_back(t); }).ok());
  ASSERT_FALSE(again.empty());
  EXPECT_NE(again[0], temps[0]);
}

TEST(AtomicWrite, KeepsAnExistingOutputsModeAndUsesTheUmaskForANewOne) {
  TempDir dir;
  const std::string out = dir.file("out.safetensors");
  write_bytes(out, {0});
  ASSERT_EQ(chmod(out.c_str(), 0640), 0);
  ASSERT_TRUE(small_writer().write(out).ok());
  struct stat st {};
  ASSERT_EQ(stat(out.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  const mode_t mask = umask(022);
  const std::string fresh = dir.file("fresh.safetensors");
  const Status s = small_writer().write(fresh);
  umask(mask);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(stat(fresh.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
}

TEST(AtomicWrite, RefusesSpecialFilesInsteadOfReplacingThem) {
  TempDir dir;
  const std::string fifo = dir.file("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  Status s = small_writer().write(fifo);
  EXPECT_EQ(s.code(), StatusCode::kErrorIo) << s.to_string();
  EXPECT_NE(s.message().find("FIFO"), std::string::npos) << s.to_string();
  struct stat st {};
  ASSERT_EQ(stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  // A link to /dev/null in our own directory: a broken writer replaces the link, never /dev/null.
  const std::string devnull = dir.file("devnull");
  fs::create_symlink("/dev/null", devnull);
  s = small_writer().write(devnull);
  EXPECT_EQ(s.code(), StatusCode::kErrorIo) << s.to_string();
  EXPECT_NE(s.message().find("character device"), std::string::npos) << s.to_string();
  s = small_writer().write(dir.file(""));
  EXPECT_EQ(s.code(), StatusCode::kErrorIo) << s.to_string();
  EXPECT_EQ(listing(dir.file("")), (std::vector<std::string>{"devnull", "fifo"}));
  EXPECT_TRUE(fs::is_symlink(devnull));
}

TEST(AtomicWrite, AFailedWriteLeavesNoTemporaryFile) {
  TempDir dir;
  const std::string out = dir.file("big.safetensors");
  SafetensorsWriter w;
  const Bytes big(1 << 20, 7);
  ASSERT_TRUE(w.add("big", "U8", {1 << 20}, big).ok());
  // A file-size limit makes write(2) fail with EFBIG (SIGXFSZ ignored) halfway through the data.
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  const Status s = w.write(out);
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(s.code(), StatusCode::kErrorIo) << s.to_string();
  EXPECT_TRUE(listing(dir.file("")).empty());
}

TEST(AtomicWrite, AddViewStreamsTheCallersBytesWithoutACopy) {
  TempDir dir;
  Bytes src = {1, 2, 3, 4};
  SafetensorsWriter w;
  ASSERT_TRUE(w.add_view("v", "U8", {4}, src).ok());
  ASSERT_TRUE(w.add("c", "U8", {4}, src).ok());
  src[0] = 9;  // the view sees the change, the copy does not
  ASSERT_TRUE(w.write(dir.file("v.safetensors")).ok());
  auto f = SafetensorsFile::open(dir.file("v.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(Bytes(f->bytes("v")->begin(), f->bytes("v")->end()), (Bytes{9, 2, 3, 4}));
  EXPECT_EQ(Bytes(f->bytes("c")->begin(), f->bytes("c")->end()), (Bytes{1, 2, 3, 4}));
  Status s = w.add_view("v", "U8", {4}, src);
  EXPECT_EQ(s.code(), StatusCode::kErrorInvalidArgument) << s.to_string();
}

TEST(Reader, AFifoIsRefusedWithoutBlocking) {
  TempDir dir;
  const std::string fifo = dir.file("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto f = SafetensorsFile::open(fifo);  // blocked forever in open(2) before O_NONBLOCK
  EXPECT_EQ(f.status().code(), StatusCode::kErrorIo) << f.status().to_string();
  EXPECT_NE(f.status().message().find("not a regular file"), std::string::npos);
}

// ---- Reading files from an independent writer --------------------------------------------------

TEST(Reader, HandBuiltFileReadsExactly) {
  // Header not padded (odd length), keys in arbitrary order, unknown extra keys in an entry and a
  // scalar: all legal. (Gaps and trailing bytes are not: test_hardening.cpp.)
  const std::string header =
      "{\"h\": {\"shape\": [2, 2], \"dtype\": \"F16\", \"data_offsets\": [0, 8]},"
      " \"__metadata__\": {\"format\": \"pt\", \"note\": \"x\"},"
      " \"b\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [8, 14], \"extra\": 1},"
      " \"f\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [14, 18]},"
      " \"u\": {\"dtype\": \"U8\", \"shape\": [1, 3], \"data_offsets\": [18, 21]},"
      " \"e\": {\"dtype\": \"F8_E4M3\", \"shape\": [2], \"data_offsets\": [21, 23]},"
      " \"z\": {\"dtype\": \"I64\", \"shape\": [0], \"data_offsets\": [23, 23]}}";
  Bytes buf = {
      0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b,  // F16 1, -2, 2^-24, 65504
      0x80, 0x3f, 0x40, 0xc0, 0x80, 0x00,              // BF16 1, -3, 2^-126
      0x00, 0x00, 0xc0, 0x3f,                          // F32 1.5
      7,    8,    9,                                   // U8
      0x38, 0xfe,                                      // E4M3 1, -448
  };
  TempDir dir;
  write_bytes(dir.file("hand.safetensors"), raw_file(header, buf));
  auto f = SafetensorsFile::open(dir.file("hand.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->names(), (std::vector<std::string>{"h", "b", "f", "u", "e", "z"}));
  EXPECT_EQ(f->metadata().size(), 2u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->file_size(), static_cast<int64_t>(8 + header.size() + buf.size()));

  EXPECT_EQ(*f->read_float("h"),
            (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f}));
  EXPECT_EQ(*f->read_float("b"), (std::vector<float>{1.0f, -3.0f, std::ldexp(1.0f, -126)}));
  EXPECT_EQ(*f->read_float("f"), (std::vector<float>{1.5f}));
  EXPECT_EQ(*f->read_float("e"), (std::vector<float>{1.0f, -448.0f}));
  auto z = f->info("z");
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(z->numel, 0);
  EXPECT_TRUE(z->data.empty());
  auto fi = f->info("f");
  ASSERT_TRUE(fi.ok());
  EXPECT_TRUE(fi->shape.empty());
  EXPECT_EQ(fi->numel, 1);
  EXPECT_EQ(fi->begin, 14);
  EXPECT_EQ(fi->end, 18);
  auto u = f->bytes("u");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(Bytes(u->begin(), u->end()), (Bytes{7, 8, 9}));
  EXPECT_EQ(f->info("u")->shape, (std::vector<int64_t>{1, 3}));

  auto not_float = f->read_float("u");
  EXPECT_EQ(not_float.status().code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(not_float.status().message().find("U8"), std::string::npos);
  auto missing = f->info("nope");
  EXPECT_EQ(missing.status().code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(missing.status().message().find("'nope'"), std::string::npos);
  EXPECT_FALSE(f->bytes("nope").ok());
  EXPECT_FALSE(f->read_float("nope").ok());
  EXPECT_FALSE(f->contains("__metadata__"));

  // No metadata and no tensors at all is a valid (empty) file.
  auto empty = SafetensorsFile::from_bytes(raw_file("{}"));
  ASSERT_TRUE(empty.ok()) << empty.status().to_string();
  EXPECT_TRUE(empty->names().empty());
  EXPECT_TRUE(empty->metadata().empty());
  EXPECT_TRUE(quantized_layers(*empty)->empty());
}

TEST(Reader, MoveKeepsTheMappingAlive) {
  SafetensorsWriter w;
  const std::vector<float> v = {0.25f, 8.0f};
  ASSERT_TRUE(w.add("v", "F32", {2}, ByteSpan(reinterpret_cast<const uint8_t*>(v.data()), 8)).ok());
  TempDir dir;
  ASSERT_TRUE(w.write(dir.file("m.safetensors")).ok());
  auto opened = SafetensorsFile::open(dir.file("m.safetensors"));
  ASSERT_TRUE(opened.ok());
  SafetensorsFile a = std::move(opened).value();
  SafetensorsFile b(std::move(a));
  EXPECT_TRUE(a.names().empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_FALSE(a.info("v").ok());
  EXPECT_EQ(*b.read_float("v"), v);
  SafetensorsFile c;
  c = std::move(b);
  EXPECT_EQ(*c.read_float("v"), v);
  auto mem = SafetensorsFile::from_bytes(*w.serialize());
  ASSERT_TRUE(mem.ok());
  c = std::move(mem).value();  // replaces (and unmaps) the mapped file
  EXPECT_EQ(*c.read_float("v"), v);
}

// ---- Malformed files: each rule of the reader's validation ------------------------------------

constexpr auto kBad = StatusCode::kErrorInvalidArgument;
const Bytes kEight(8, 0);  // buffer for tensor "t" F32 [2] at [0, 8)
const std::string kGoodEntry = R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";

TEST(Malformed, ValidBaselineOpens) {
  auto f = SafetensorsFile::from_bytes(raw_file(header_with(kGoodEntry), kEight));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
}

TEST(Malformed, MissingFile) {
  TempDir dir;
  auto f = SafetensorsFile::open(dir.file("does_not_exist.safetensors"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kErrorIo);
  EXPECT_NE(f.status().message().find("does_not_exist.safetensors"), std::string::npos);
  EXPECT_NE(f.status().message().find("cannot open"), std::string::npos);
}

TEST(Malformed, DirectoryIsNotAFile) {
  TempDir dir;
  fs::create_directories(dir.file("d"));
  auto f = SafetensorsFile::open(dir.file("d"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kErrorIo);
  EXPECT_NE(f.status().message().find("not a regular file"), std::string::npos);
}

TEST(Malformed, EmptyFile) { expect_refused({}, kBad, "file is 0 bytes"); }

TEST(Malformed, ShorterThanEightBytes) {
  expect_refused({1, 0, 0}, kBad, "shorter than the 8-byte");
}

TEST(Malformed, HeaderLengthPastEndOfFile) {
  expect_refused(raw_file("{}", {}, 100), kBad, "runs past the end of the file");
}

TEST(Malformed, HeaderLengthAbsurd) {
  expect_refused(raw_file("{}", {}, uint64_t{1} << 62), kBad, "exceeds the limit");
  expect_refused(raw_file("{}", {}, 100'000'001), kBad, "exceeds the limit");
}

TEST(Malformed, HeaderNotJson) {
  expect_refused(raw_file("{\"t\": {\"dtype\": ", kEight), kBad, "not valid JSON");
  expect_refused(raw_file("\xff\xfe{}"), kBad, "not valid JSON");
  expect_refused(raw_file("{\"\xc3\x28\": 1}"), kBad, "not valid JSON");  // ill-formed UTF-8
  expect_refused(raw_file("{\"t\": 1e999}"), kBad, "not valid JSON");     // overflows a double
  expect_refused(raw_file("{} {}"), kBad, "not valid JSON");              // trailing garbage
}

TEST(Malformed, HeaderNotObject) {
  expect_refused(raw_file("[1, 2]"), kBad, "not an object");
  expect_refused(raw_file("\"str\""), kBad, "not an object");
  expect_refused(raw_file("null    "), kBad, "not an object");
}

TEST(Malformed, EntryNotObject) {
  expect_refused(raw_file(header_with("[1, 2]"), kEight), kBad, "tensor 't' is a JSON array");
}

TEST(Malformed, MissingDtype) {
  expect_refused(raw_file(header_with(R"({"shape": [2], "data_offsets": [0, 8]})"), kEight), kBad,
                 "has no \"dtype\"");
}

TEST(Malformed, MissingShape) {
  expect_refused(raw_file(header_with(R"({"dtype": "F32", "data_offsets": [0, 8]})"), kEight), kBad,
                 "has no \"shape\"");
}

TEST(Malformed, MissingDataOffsets) {
  expect_refused(raw_file(header_with(R"({"dtype": "F32", "shape": [2]})"), kEight), kBad,
                 "has no \"data_offsets\"");
}

TEST(Malformed, DtypeNotString) {
  expect_refused(
      raw_file(header_with(R"({"dtype": 4, "shape": [2], "data_offsets": [0, 8]})"), kEight), kBad,
      "\"dtype\" is a JSON number");
}

TEST(Malformed, ShapeNotArray) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": 2, "data_offsets": [0, 8]})"), kEight),
      kBad, "\"shape\" is a JSON number");
}

TEST(Malformed, DataOffsetsNotPair) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]})"), kEight),
      kBad, "not an array of 2 integers");
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [2], "data_offsets": {"a": 0}})"), kEight),
      kBad, "not an array of 2 integers");
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]})"), kEight),
      kBad, "data_offsets[1] is not an integer");
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [2], "data_offsets": [-8, 8]})"), kEight),
      kBad, "data_offsets[0] is negative");
}

TEST(Malformed, UnknownDtype) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F31", "shape": [2], "data_offsets": [0, 8]})"), kEight),
      kBad, "unknown dtype 'F31'");
  expect_refused(
      raw_file(header_with(R"({"dtype": "f32", "shape": [2], "data_offsets": [0, 8]})"), kEight),
      kBad, "unknown dtype 'f32'");  // case-sensitive, as safetensors
}

TEST(Malformed, NegativeDim) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]})"), kEight),
      kBad, "shape[0] is negative");
}

TEST(Malformed, NonIntegerDim) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]})"), kEight),
      kBad, "shape[0] is not an integer");
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [1, "2"], "data_offsets": [0, 8]})"),
               kEight),
      kBad, "shape[1] is not an integer");
  expect_refused(
      raw_file(header_with(
                   R"({"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 8]})"),
               kEight),
      kBad, "shape[0] is too large");
}

TEST(Malformed, ShapeProductOverflow) {
  expect_refused(raw_file(header_with(R"({"dtype": "F32", "shape": [4294967296, 4294967296],
                                          "data_offsets": [0, 8]})"),
                          kEight),
                 kBad, "overflows");
  // The element count fits, the byte count does not.
  expect_refused(raw_file(header_with(R"({"dtype": "F64", "shape": [2305843009213693952],
                                          "data_offsets": [0, 8]})"),
                          kEight),
                 kBad, "overflows");
}

TEST(Malformed, EndBeforeBegin) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [0], "data_offsets": [8, 0]})"), kEight),
      kBad, "end (0) is before begin (8)");
}

TEST(Malformed, DataOffsetsOutOfBuffer) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [2], "data_offsets": [4, 12]})"), kEight),
      kBad, "run past the end of the data buffer (8 bytes");
  // A truncated file: the header promises 8 bytes, 7 are there.
  expect_refused(raw_file(header_with(kGoodEntry), Bytes(7, 0)), kBad, "run past the end");
  // Offsets so large that begin + size would wrap around.
  expect_refused(raw_file(header_with(R"({"dtype": "U8", "shape": [0],
                             "data_offsets": [9223372036854775807, 9223372036854775807]})"),
                          kEight),
                 kBad, "run past the end");
}

TEST(Malformed, ByteSizeMismatch) {
  expect_refused(
      raw_file(header_with(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})"), kEight),
      kBad, "span 8 bytes but shape [3] of F32 needs 12");
  expect_refused(
      raw_file(header_with(R"({"dtype": "F16", "shape": [2], "data_offsets": [0, 8]})"), kEight),
      kBad, "needs 4");
}

TEST(Malformed, OverlappingTensors) {
  const std::string h =
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "U8", "shape": [2], "data_offsets": [7, 9]}})";
  expect_refused(raw_file(h, Bytes(9, 0)), kBad, "tensors 'a' [0, 8) and 'b' [7, 9) overlap");
  const std::string same =
      R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})";
  expect_refused(raw_file(same, Bytes(4, 0)), kBad, "overlap");
  // Empty tensors sit anywhere, even inside another tensor's bytes.
  const std::string empty_inside =
      R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "I8", "shape": [0], "data_offsets": [2, 2]}})";
  EXPECT_TRUE(SafetensorsFile::from_bytes(raw_file(empty_inside, Bytes(4, 0))).ok());
}

TEST(Malformed, MetadataNotObject) {
  expect_refused(raw_file(R"({"__metadata__": ["a", "b"]})"), kBad,
                 "\"__metadata__\" is a JSON array");
}

TEST(Malformed, MetadataValueNotString) {
  expect_refused(raw_file(R"({"__metadata__": {"ok": "x", "n": 1}})"), kBad,
                 "value of key 'n' is a JSON number, not a string");
  expect_refused(raw_file(R"({"__metadata__": {"o": {"nested": "x"}}})"), kBad,
                 "value of key 'o' is a JSON object");
}

// ---- load_quantized refusals ----------------------------------------------------------------

/// Edits one tensor of a file being copied (may change name, dtype, shape, bytes); false drops it.
using TensorEdit = std::function<bool(const std::string& name, TensorInfo* t, Bytes* data)>;

Result<SafetensorsFile> rewrite(const SafetensorsFile& src, const TensorEdit& edit,
                                const std::map<std::string, std::string>& metadata_edits = {}) {
  SafetensorsWriter w;
  for (const std::string& name : src.names()) {
    TensorInfo t = *src.info(name);
    Bytes data(t.data.begin(), t.data.end());
    if (!edit(name, &t, &data)) continue;  // false drops the tensor
    SVDQ_RETURN_IF_ERROR(w.add(t.name, t.dtype, t.shape, data));
  }
  std::map<std::string, std::string> meta = src.metadata();
  for (const auto& [k, v] : metadata_edits) meta[k] = v;
  for (const auto& [k, v] : meta) SVDQ_RETURN_IF_ERROR(w.set_metadata(k, v));
  auto bytes = w.serialize();
  if (!bytes.ok()) return bytes.status();
  return SafetensorsFile::from_bytes(std::move(bytes).value());
}

class LoadQuantized : public ::testing::Test {
 protected:
  void SetUp() override {
    q_ = make_layer({Format::kNvfp4, 16, true, DType::kF16, 128, 24}, 9);
    SafetensorsWriter w;
    ASSERT_TRUE(add_quantized(w, "l", q_).ok());
    auto f = SafetensorsFile::from_bytes(*w.serialize());
    ASSERT_TRUE(f.ok());
    src_ = std::move(f).value();
    ASSERT_TRUE(load_quantized(src_, "l").ok());
  }
  void expect_load_fails(const TensorEdit& edit, StatusCode code, const std::string& needle,
                         const std::map<std::string, std::string>& meta = {}) {
    auto f = rewrite(src_, edit, meta);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    auto l = load_quantized(*f, "l");
    ASSERT_FALSE(l.ok()) << "expected: " << needle;
    EXPECT_EQ(l.status().code(), code) << l.status().to_string();
    EXPECT_NE(l.status().message().find(needle), std::string::npos) << l.status().to_string();
  }
  static bool keep(const std::string&, TensorInfo*, Bytes*) { return true; }

  QuantizedLinear q_;
  SafetensorsFile src_;
};

TEST_F(LoadQuantized, MissingLayer) {
  auto l = load_quantized(src_, "m");
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(l.status().message().find("layer 'm': no such layer"), std::string::npos)
      << l.status().to_string();
  EXPECT_FALSE(load_quantized(src_, "l.qweight").ok());
  EXPECT_FALSE(load_quantized(src_, "").ok());
}

TEST_F(LoadQuantized, MissingTensor) {
  expect_load_fails([](const std::string& n, TensorInfo*, Bytes*) { return n != "l.wscales"; },
                    StatusCode::kErrorInvalidArgument,
                    "tensor 'l.wscales' (group scales) is missing");
  expect_load_fails([](const std::string& n, TensorInfo*, Bytes*) { return n != "l.bias"; },
                    StatusCode::kErrorInvalidArgument,
                    "\"bias\" is true but tensor 'l.bias' is missing");
  expect_load_fails([](const std::string& n, TensorInfo*, Bytes*) { return n != "l.lora_up"; },
                    StatusCode::kErrorInvalidArgument, "'l.lora_up' (low-rank up) is missing");
}

TEST_F(LoadQuantized, WrongShape) {
  expect_load_fails(
      [](const std::string& n, TensorInfo* t, Bytes*) {
        if (n == "l.qweight") t->shape = {t->shape[1], t->shape[0]};  // transposed
        return true;
      },
      StatusCode::kErrorShape, "'l.qweight' (packed codes) has shape [64, 24], expected [24, 64]");
  expect_load_fails(
      [](const std::string& n, TensorInfo* t, Bytes*) {
        if (n == "l.lora_down") t->shape = {t->shape[0] * t->shape[1]};  // flattened
        return true;
      },
      StatusCode::kErrorShape,
      "'l.lora_down' (low-rank down) has shape [2048], expected [128, 16]");
  expect_load_fails(
      [](const std::string& n, TensorInfo* t, Bytes* d) {
        if (n == "l.smooth") {
          t->shape = {64};
          d->resize(128);
        }
        return true;
      },
      StatusCode::kErrorShape, "'l.smooth'");
}

TEST_F(LoadQuantized, WrongDtype) {
  expect_load_fails(
      [](const std::string& n, TensorInfo* t, Bytes*) {
        if (n == "l.smooth") t->dtype = "BF16";  // the layer's storage is F16
        return true;
      },
      StatusCode::kErrorInvalidArgument,
      "'l.smooth' (smoothing factors) has dtype BF16, expected F16");
  expect_load_fails(
      [](const std::string& n, TensorInfo* t, Bytes*) {
        if (n == "l.wscales") t->dtype = "U8";
        return true;
      },
      StatusCode::kErrorInvalidArgument, "has dtype U8, expected F8_E4M3");
  expect_load_fails(
      [](const std::string& n, TensorInfo* t, Bytes* d) {
        if (n == "l.wtscale") {
          t->dtype = "F16";
          d->resize(2);
        }
        return true;
      },
      StatusCode::kErrorInvalidArgument, "'l.wtscale' (weight tensor scale) has dtype F16");
}

TEST_F(LoadQuantized, BadMetadata) {
  const std::string key = "svdq.layer.l";
  const std::string good = src_.metadata().at(key);
  auto with = [&](const std::string& field, const std::string& value) {
    auto j = nlohmann::json::parse(good);
    j[field] = nlohmann::json::parse(value);
    return std::map<std::string, std::string>{{key, j.dump()}};
  };
  auto without = [&](const std::string& field) {
    auto j = nlohmann::json::parse(good);
    j.erase(field);
    return std::map<std::string, std::string>{{key, j.dump()}};
  };
  expect_load_fails(keep, kBad, "metadata is not a JSON object", {{key, "not json"}});
  expect_load_fails(keep, kBad, "metadata has no \"format\"", without("format"));
  expect_load_fails(keep, kBad, "\"format\" ('int8') must be", with("format", "\"int8\""));
  expect_load_fails(keep, kBad, "\"storage\" ('f32') must be", with("storage", "\"f32\""));
  expect_load_fails(keep, kBad, "\"group_size\" (64) must be 16", with("group_size", "64"));
  expect_load_fails(keep, kBad, "\"rank\" is negative", with("rank", "-1"));
  expect_load_fails(keep, kBad, "\"rank\" (200) must be in [0, 24]", with("rank", "200"));
  expect_load_fails(keep, kBad, "\"in_features\" is not an integer", with("in_features", "12.5"));
  expect_load_fails(keep, kBad, "\"out_features\" (0) must be in [1,", with("out_features", "0"));
  expect_load_fails(keep, kBad, "\"svd\" ('qr') must be", with("svd", "\"qr\""));
  expect_load_fails(keep, kBad, "\"alpha\" is not a number", with("alpha", "\"0.5\""));
  expect_load_fails(keep, StatusCode::kErrorShape,
                    "'l.qweight' (packed codes) has shape [24, 64], expected [25, 64]",
                    with("out_features", "25"));
  expect_load_fails(keep, StatusCode::kErrorShape, "must be a multiple of group_size 16",
                    with("in_features", "120"));
}

TEST_F(LoadQuantized, ScalarsAreValidated) {
  // A NaN weight tensor scale parses as a tensor but fails validate().
  expect_load_fails(
      [](const std::string& n, TensorInfo*, Bytes* d) {
        if (n == "l.wtscale") {
          const float nan = NAN;
          std::memcpy(d->data(), &nan, 4);
        }
        return true;
      },
      StatusCode::kErrorInvalidArgument, "wtscale (nan) must be finite");
}

TEST(QuantizedLayers, RefusesNonObjectLayerMetadata) {
  SafetensorsWriter w;
  ASSERT_TRUE(w.set_metadata("svdq.layer.x", "[1]").ok());
  auto f = SafetensorsFile::from_bytes(*w.serialize());
  ASSERT_TRUE(f.ok());
  auto l = quantized_layers(*f);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kErrorInvalidArgument);
  EXPECT_NE(l.status().message().find("'svdq.layer.x'"), std::string::npos);
}

}  // namespace
