// libFuzzer target for the safetensors reader, quantized layers and calibration statistics
// (scripts/fuzz.sh builds and runs it).
//
// Each input is parsed as a whole file with SafetensorsFile::from_bytes (the same validation as
// open(), on an exact-size heap buffer, so AddressSanitizer sees any over-read). For a file that
// parses, every tensor is read (info, every byte, read_float where the dtype converts), every
// quantized layer is loaded and run (reference_forward on 3 rows), the file is read as
// calibration statistics (load_calibration), and these properties are checked; a violation traps:
//   1. rewriting the tensors and metadata with SafetensorsWriter and parsing again gives the same
//      names, dtypes, shapes, bytes and metadata;
//   2. a layer that load_quantized accepts saves (add_quantized) and loads again unchanged, and
//      its forward on finite rows succeeds;
//   3. statistics that load_calibration accepts are self-consistent (samples within absmax),
//      observe() continues them, and merging a copy is refused as an identical source.
// Every input that parses is also tried one byte short (a truncated file).
// With SVDQ_FUZZ_SEED_DIR set, LLVMFuzzerInitialize first writes a few valid seed files there.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "svdq/calibration.hpp"
#include "svdq/checkpoint.hpp"
#include "svdq/linear.hpp"

namespace {

using svdq::ByteSpan;
using svdq::QuantizedLinear;
using svdq::SafetensorsFile;
using svdq::SafetensorsWriter;

#define FUZZ_CHECK(cond)                                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "fuzz_safetensors: check failed: %s (line %d)\n", #cond, __LINE__); \
      __builtin_trap();                                                                        \
    }                                                                                          \
  } while (0)

bool same_layer(const QuantizedLinear& a, const QuantizedLinear& b) {
  return a.format == b.format && a.storage == b.storage && a.in_features == b.in_features &&
         a.out_features == b.out_features && a.rank == b.rank && a.group == b.group &&
         a.smooth == b.smooth && a.lora_down == b.lora_down && a.lora_up == b.lora_up &&
         a.qweight == b.qweight && a.wscales == b.wscales && a.bias == b.bias &&
         std::memcmp(&a.wtscale, &b.wtscale, 4) == 0 &&
         std::memcmp(&a.act_tensor_scale, &b.act_tensor_scale, 4) == 0 &&
         std::memcmp(&a.info.alpha, &b.info.alpha, 4) == 0 &&
         std::memcmp(&a.info.beta, &b.info.beta, 4) == 0 && a.info.svd == b.info.svd &&
         std::memcmp(&a.info.weight_norm, &b.info.weight_norm, 8) == 0 &&
         std::memcmp(&a.info.residual_norm, &b.info.residual_norm, 8) == 0 &&
         std::memcmp(&a.info.seconds, &b.info.seconds, 8) == 0;
}

void exercise(const SafetensorsFile& f) {
  volatile uint32_t sink = 0;
  SafetensorsWriter w;
  for (const std::string& name : f.names()) {
    auto t = f.info(name);
    FUZZ_CHECK(t.ok());
    FUZZ_CHECK(t->end - t->begin == static_cast<int64_t>(t->data.size()));
    FUZZ_CHECK(static_cast<int64_t>(t->data.size()) ==
               t->numel * svdq::safetensors_dtype_size(t->dtype));
    uint32_t sum = 0;
    for (const uint8_t b : t->data) sum += b;  // every byte of the tensor is readable
    sink = sink + sum;
    auto b = f.bytes(name);
    FUZZ_CHECK(b.ok() && b->data() == t->data.data() && b->size() == t->data.size());
    auto v = f.read_float(name);
    if (v.ok())
      FUZZ_CHECK(static_cast<int64_t>(v->size()) == t->numel);
    else
      FUZZ_CHECK(!v.status().message().empty());
    FUZZ_CHECK(w.add(name, t->dtype, t->shape, t->data).ok());
  }
  for (const auto& [k, v] : f.metadata()) FUZZ_CHECK(w.set_metadata(k, v).ok());

  // Property 1: write and parse again.
  auto bytes = w.serialize();
  FUZZ_CHECK(bytes.ok());
  auto g = SafetensorsFile::from_bytes(std::move(bytes).value());
  FUZZ_CHECK(g.ok());
  FUZZ_CHECK(g->metadata() == f.metadata());
  FUZZ_CHECK(g->names().size() == f.names().size());
  for (const std::string& name : f.names()) {
    auto a = f.info(name);
    auto b = g->info(name);
    FUZZ_CHECK(b.ok());
    FUZZ_CHECK(a->dtype == b->dtype && a->shape == b->shape && a->numel == b->numel);
    FUZZ_CHECK(a->data.size() == b->data.size());
    FUZZ_CHECK(a->data.empty() || std::memcmp(a->data.data(), b->data.data(), a->data.size()) == 0);
  }

  // Property 2: quantized layers load, save and load unchanged.
  auto layers = svdq::quantized_layers(f);
  if (!layers.ok()) return;
  for (const std::string& layer : *layers) {
    auto q = svdq::load_quantized(f, layer);
    if (!q.ok()) {
      FUZZ_CHECK(!q.status().message().empty());
      continue;
    }
    FUZZ_CHECK(svdq::validate(*q).ok());
    // A forward on 3 finite rows of a validated layer always succeeds (and never reads outside
    // the layer: the fields' sizes were checked against K, N and r).
    {
      const int64_t k = q->in_features, n = q->out_features;
      std::vector<float> x(static_cast<size_t>(3 * k)), y(static_cast<size_t>(3 * n));
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.5f;
      const svdq::Status fs = svdq::reference_forward(
          *q, svdq::MatrixView<const float>(x.data(), 3, k), svdq::MatrixView<float>(y.data(), 3, n));
      FUZZ_CHECK(fs.ok());
    }
    SafetensorsWriter lw;
    const svdq::Status s = svdq::add_quantized(lw, layer, *q);
    if (!s.ok()) continue;  // e.g. a non-finite info.* value cannot be stored as JSON
    auto lf = SafetensorsFile::from_bytes(std::move(lw.serialize()).value());
    FUZZ_CHECK(lf.ok());
    auto q2 = svdq::load_quantized(*lf, layer);
    FUZZ_CHECK(q2.ok());
    FUZZ_CHECK(same_layer(*q, *q2));
  }
}

void exercise_calibration(const SafetensorsFile& f) {
  auto layers = svdq::load_calibration(f);
  if (!layers.ok()) {
    FUZZ_CHECK(!layers.status().message().empty());
    return;
  }
  for (auto& [name, st] : *layers) {
    const int64_t k = st.channels();
    FUZZ_CHECK(k > 0 && st.valid().ok());
    FUZZ_CHECK(static_cast<int64_t>(st.absmax().size()) == k);
    FUZZ_CHECK(st.sampled_rows() <= st.rows_observed());
    for (int64_t i = 0; i < st.sampled_rows(); ++i)
      for (int64_t j = 0; j < k; ++j)
        FUZZ_CHECK(std::fabs(st.samples()[i * k + j]) <= st.absmax()[j]);
    svdq::ActivationStats copy = st;
    if (st.rows_observed() > 0) FUZZ_CHECK(!st.merge(copy).ok());
    if (k <= 4096) {
      std::vector<float> row(static_cast<size_t>(k), 0.25f);
      FUZZ_CHECK(st.observe(svdq::MatrixView<const float>(row.data(), 1, k)).ok());
    }
  }
}

// ---- Seeds -----------------------------------------------------------------------------------

void put(const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = dir + "/" + name;
  if (std::FILE* fp = std::fopen(path.c_str(), "wb")) {
    std::fwrite(bytes.data(), 1, bytes.size(), fp);
    std::fclose(fp);
  }
}

/// A self-consistent layer with patterned contents (no quantize_linear: no Eigen needed here).
QuantizedLinear pattern_layer(svdq::Format format, int64_t k, int64_t n, int rank, bool bias) {
  QuantizedLinear q;
  q.format = format;
  q.storage = format == svdq::Format::kInt4 ? svdq::DType::kF16 : svdq::DType::kBF16;
  q.in_features = k;
  q.out_features = n;
  q.rank = rank;
  q.group = svdq::group_size(format);
  uint32_t x = 12345;
  auto next = [&x] { return x = x * 1664525u + 1013904223u; };
  q.smooth.resize(k);
  for (auto& v : q.smooth) v = svdq::float_to_bits16(1.0f + (next() >> 28) / 8.0f, q.storage);
  // Values a quantizer can produce: finite branch and bias, scales >= 0 (validate() checks them).
  auto small = [&] { return svdq::float_to_bits16(static_cast<float>(next() >> 20) / 4096.0f - 0.5f, q.storage); };
  q.lora_down.resize(k * rank);
  for (auto& v : q.lora_down) v = small();
  q.lora_up.resize(n * rank);
  for (auto& v : q.lora_up) v = small();
  q.qweight.resize(n * k / 2);
  for (auto& v : q.qweight) v = static_cast<uint8_t>(next() >> 24);
  const int64_t scale_bytes = format == svdq::Format::kInt4 ? 2 : 1;
  q.wscales.resize(n * (k / q.group) * scale_bytes);
  for (int64_t i = 0; i < n * (k / q.group); ++i) {
    if (format == svdq::Format::kInt4) {
      const uint16_t h = svdq::float_to_half_bits(static_cast<float>(next() >> 24) / 1024.0f);
      std::memcpy(q.wscales.data() + 2 * i, &h, 2);
    } else {
      q.wscales[i] = static_cast<uint8_t>(next() >> 26);  // E4M3 codes 0..63: positive, finite
    }
  }
  if (bias) {
    q.bias.resize(n);
    for (auto& v : q.bias) v = small();
  }
  if (format == svdq::Format::kNvfp4) {
    q.wtscale = 0.0123f;
    q.act_tensor_scale = 0.5f;
  }
  q.info.alpha = 0.37f;
  q.info.beta = 0.63f;
  q.info.weight_norm = 12.5;
  q.info.residual_norm = 0.25;
  return q;
}

std::vector<uint8_t> raw(const std::string& header, const std::vector<uint8_t>& buffer) {
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}

void write_seeds(const std::string& dir) {
  {
    SafetensorsWriter w;
    const std::vector<uint8_t> b8 = {0, 0x3c, 0, 0xc0, 0x80, 0x3f, 0x40, 0xc0};
    (void)w.add("f16", "F16", {2, 2}, b8);
    (void)w.add("bf16", "BF16", {4}, b8);
    (void)w.add("f32", "F32", {2}, b8);
    (void)w.add("u8", "U8", {8}, b8);
    (void)w.add("e4m3", "F8_E4M3", {2, 4}, b8);
    (void)w.add("scalar", "I32", {}, ByteSpan(b8.data(), 4));
    (void)w.add("empty", "I64", {0, 3}, {});
    (void)w.set_metadata("format", "pt");
    put(dir, "tensors.safetensors", std::move(w.serialize()).value());
  }
  {
    const QuantizedLinear a = pattern_layer(svdq::Format::kInt4, 64, 3, 2, true);
    const QuantizedLinear b = pattern_layer(svdq::Format::kNvfp4, 32, 2, 1, false);
    const QuantizedLinear c = pattern_layer(svdq::Format::kNvfp4, 16, 1, 0, true);
    SafetensorsWriter w;
    (void)svdq::add_quantized(w, "int4", a);
    (void)w.set_metadata("svdq.version", "0.1.0");
    put(dir, "layer_int4.safetensors", std::move(w.serialize()).value());
    SafetensorsWriter w2;
    (void)svdq::add_quantized(w2, "fp4", b);
    (void)svdq::add_quantized(w2, "r0", c);
    put(dir, "layer_nvfp4.safetensors", std::move(w2.serialize()).value());
  }
  put(dir, "hand.safetensors",
      raw("{\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[2,4]},"
          "\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"U8\",\"shape\":[2,1],"
          "\"data_offsets\":[0,2]}}",
          {1, 2, 0x80, 0x3f}));
  put(dir, "empty.safetensors", raw("{}", {}));
  {  // Calibration statistics: one layer with samples and a Gram, one absmax only.
    svdq::CalibrationOptions with_gram;
    with_gram.max_rows = 3;
    with_gram.accumulate_gram = true;
    svdq::ActivationStats a(with_gram), b(svdq::CalibrationOptions{0, 7, false});
    std::vector<float> rows(5 * 8);
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(static_cast<int>(i * 37 % 11) - 5) * 0.125f;
    (void)a.observe(svdq::MatrixView<const float>(rows.data(), 5, 8));
    (void)b.observe(svdq::MatrixView<const float>(rows.data(), 2, 4, 8));
    (void)svdq::save_calibration(dir + "/calib.safetensors", {{"blk.0.q", a}, {"blk.0.o", b}});
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  if (const char* dir = std::getenv("SVDQ_FUZZ_SEED_DIR")) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = SafetensorsFile::from_bytes(std::vector<uint8_t>(data, data + size));
  if (!f.ok()) {
    FUZZ_CHECK(!f.status().message().empty());
    return 0;
  }
  exercise(*f);
  exercise_calibration(*f);
  // The same file one byte short: a truncated download must be refused or read in bounds.
  // (Random mutations rarely cut exactly the last byte of a valid file; this makes it certain.)
  if (size > 0) {
    auto cut = SafetensorsFile::from_bytes(std::vector<uint8_t>(data, data + size - 1));
    if (cut.ok()) {
      exercise(*cut);
      exercise_calibration(*cut);
    }
  }
  return 0;
}
