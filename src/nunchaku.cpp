// src/nunchaku.cpp — Nunchaku checkpoint import/export (include/svdq/nunchaku.hpp). The layout
// (docs/checkpoint.md §5.3) was read from DeepCompressor's packer
// (deepcompressor/backend/nunchaku/utils.py, NunchakuWeightPacker); this is an independent
// implementation of the same index maps, checked against that packer's output by
// tests/test_nunchaku.cpp on fixtures made by tools/nunchaku_fixtures.py.
#include "svdq/nunchaku.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "check.hpp"
#include "svdq/formats.hpp"
#include "svdq/types.hpp"

namespace svdq {
namespace {

using detail::error;
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr int64_t kTile = 128;  // N and K padding (warp_n; mem_k * num_k_unrolls)
constexpr int64_t kRankPad = 16;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Position of channel j (0..127) inside a 128-block: NunchakuWeightPacker.pack_scale,
// j = 16a + 8b + 2c + d -> 16a + 4c + 2b + d.
int64_t p128(int64_t j) {
  const int64_t a = j / 16, b = (j % 16) / 8, c = (j % 8) / 2, d = j % 2;
  return 16 * a + 4 * c + 2 * b + d;
}
// bias / smooth / wcscales (pack_scale with one group).
int64_t vec_pos(int64_t i) { return kTile * (i / kTile) + p128(i % kTile); }
// int4 wscales (n, g), G = Kp / 64 groups: n-tile-major.
int64_t int4_scale_pos(int64_t n, int64_t g, int64_t groups) {
  return ((n / kTile) * groups + g) * kTile + p128(n % kTile);
}
// nvfp4 wscales (n, g): pack_micro_scale, j = 32s + 8q + l, g = 4kg + jj.
int64_t fp4_scale_pos(int64_t n, int64_t g, int64_t ktiles) {
  const int64_t j = n % kTile, s = j / 32, q = (j % 32) / 8, l = j % 8, kg = g / 4, jj = g % 4;
  return (((((n / kTile) * ktiles + kg) * 8 + l) * 4 + q) * 4 + s) * 4 + jj;
}
// qweight nibble index (byte = idx / 2, low nibble when even): pack_weight.
int64_t qw_nibble(int64_t n, int64_t k, int64_t ktiles) {
  const int64_t nt = n / kTile, np = (n % kTile) / 16, ns = (n % 16) / 8, nl = n % 8;
  const int64_t kt = k / 64, ks = (k % 64) / 32, kl = (k % 32) / 8, e = k % 8;
  const int64_t word = (((((nt * ktiles + kt) * 8 + np) * 8 + nl) * 4 + kl) * 2 + ns) * 2 + ks;
  return word * 8 + e;
}
// Element (c, t) of a packed low-rank tensor [Cp, Rp]: c is K (down) or N (up), t the rank.
int64_t lora_pos(int64_t c, int64_t t, int64_t rpacks, bool down) {
  const int64_t cp = c / 16, rp = t / 16;
  const int64_t nrow = down ? t : c, kcol = down ? c : t;  // the packer's "n" and "k" roles
  const int64_t ns = (nrow % 16) / 8, nl = nrow % 8;
  const int64_t ks = (kcol % 16) / 8, kl = (kcol % 8) / 2, e = kcol % 2;
  return (((((cp * rpacks + rp) * 8 + nl) * 4 + kl) * 2 + ns) * 2 + ks) * 2 + e;
}

uint16_t load16(const uint8_t* p, int64_t i) {
  uint16_t v;
  std::memcpy(&v, p + 2 * i, 2);
  return v;
}
void store16(std::vector<uint8_t>& b, int64_t i, uint16_t v) { std::memcpy(b.data() + 2 * i, &v, 2); }

bool is16(const std::string& dt) { return dt == "F16" || dt == "BF16"; }
DType dtype_of(const std::string& dt) { return dt == "F16" ? DType::kF16 : DType::kBF16; }
const char* st_name(DType d) { return d == DType::kF16 ? "F16" : "BF16"; }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// One layer's tensors, found in one file.
struct Found {
  const SafetensorsFile* file = nullptr;
  std::string layer;
  std::string where;  // "import_nunchaku: <file>: layer '<layer>'"
  std::map<std::string, TensorInfo> t;   // role -> tensor
  std::map<std::string, std::string> key;  // role -> full name
};

// Roles and their accepted suffixes (legacy first).
const std::vector<std::pair<std::string, std::vector<std::string>>>& roles() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> r = {
      {"qweight", {"qweight"}},
      {"wscales", {"wscales"}},
      {"wcscales", {"wcscales"}},
      {"wtscale", {"wtscale"}},
      {"wzeros", {"wzeros"}},
      {"bias", {"bias"}},
      {"smooth", {"smooth", "smooth_factor"}},
      {"smooth_orig", {"smooth_orig", "smooth_factor_orig"}},
      {"lora_down", {"lora_down", "proj_down"}},
      {"lora_up", {"lora_up", "proj_up"}},
  };
  return r;
}

Status tensor_error(const Found& f, StatusCode code, const std::string& role, const std::string& rule) {
  const auto it = f.key.find(role);
  const std::string name = it != f.key.end() ? it->second : f.layer + "." + role;
  return error(code, f.where, ": tensor '", name, "': ", rule);
}

Status expect(const Found& f, const std::string& role, const std::vector<int64_t>& shape) {
  const TensorInfo& ti = f.t.at(role);
  if (ti.shape != shape)
    return tensor_error(f, StatusCode::kErrorShape, role,
                        "shape " + shape_str(ti.shape) + ", expected " + shape_str(shape));
  return Status::Ok();
}

bool unsigned_by_name(const std::string& layer, const std::vector<std::string>& names) {
  for (const auto& s : names) {
    if (s.empty() || layer.size() < s.size()) continue;
    if (layer.compare(layer.size() - s.size(), s.size(), s) != 0) continue;
    if (layer.size() == s.size() || layer[layer.size() - s.size() - 1] == '.') return true;
  }
  return false;
}

// Converts one found layer. Returns a Status error for malformed input; sets `skip` (and
// returns Ok) when the layer is well-formed but svdq cannot represent it exactly.
Status convert_layer(const Found& f, const NunchakuImportOptions& opt, QuantizedLinear& out,
                     std::string& skip) {
  auto has = [&](const char* r) { return f.t.count(r) != 0; };
  const TensorInfo& qw = f.t.at("qweight");
  if (has("wzeros") || qw.dtype == "I32") {
    skip = "AWQ W4A16 layer (qweight " + qw.dtype + (has("wzeros") ? ", wzeros" : "") +
           "), not a W4A4 layer";
    return Status::Ok();
  }
  if (qw.dtype != "I8" && qw.dtype != "U8")
    return tensor_error(f, StatusCode::kErrorInvalidArgument, "qweight",
                        "dtype " + qw.dtype + ", expected I8");
  if (qw.shape.size() != 2 || qw.shape[0] <= 0 || qw.shape[1] <= 0 || qw.shape[0] % kTile != 0 ||
      (2 * qw.shape[1]) % kTile != 0)
    return tensor_error(f, StatusCode::kErrorShape, "qweight",
                        "shape " + shape_str(qw.shape) +
                            ", expected [Np, Kp/2] with Np and Kp positive multiples of 128");
  const int64_t np = qw.shape[0], kp = 2 * qw.shape[1], ktiles = kp / 64;
  for (const char* r : {"wscales", "smooth"})
    if (!has(r)) return tensor_error(f, StatusCode::kErrorInvalidArgument, r, "missing");
  const TensorInfo& ws = f.t.at("wscales");
  Format format;
  if (is16(ws.dtype)) {
    format = Format::kInt4;
    SVDQ_RETURN_IF_ERROR(expect(f, "wscales", {kp / 64, np}));
  } else if (ws.dtype == "F8_E4M3") {
    format = Format::kNvfp4;
    SVDQ_RETURN_IF_ERROR(expect(f, "wscales", {kp / 16, np}));
  } else {
    return tensor_error(f, StatusCode::kErrorInvalidArgument, "wscales",
                        "dtype " + ws.dtype + ", expected F16 or BF16 (int4) or F8_E4M3 (nvfp4)");
  }
  const TensorInfo& sm = f.t.at("smooth");
  if (!is16(sm.dtype))
    return tensor_error(f, StatusCode::kErrorInvalidArgument, "smooth",
                        "dtype " + sm.dtype + ", expected F16 or BF16");
  const std::string tdt = sm.dtype;  // the model dtype T
  if (format == Format::kInt4 && ws.dtype != tdt)
    return tensor_error(f, StatusCode::kErrorInvalidArgument, "wscales",
                        "dtype " + ws.dtype + ", expected " + tdt + " (the dtype of smooth)");
  SVDQ_RETURN_IF_ERROR(expect(f, "smooth", {kp}));
  auto check16 = [&](const char* role, const std::vector<int64_t>& shape) -> Status {
    const TensorInfo& ti = f.t.at(role);
    if (ti.dtype != tdt)
      return tensor_error(f, StatusCode::kErrorInvalidArgument, role,
                          "dtype " + ti.dtype + ", expected " + tdt + " (the dtype of smooth)");
    return expect(f, role, shape);
  };
  if (has("bias")) SVDQ_RETURN_IF_ERROR(check16("bias", {np}));
  if (has("smooth_orig")) SVDQ_RETURN_IF_ERROR(check16("smooth_orig", {kp}));
  int64_t rp = 0;
  if (has("lora_down") != has("lora_up"))
    return tensor_error(f, StatusCode::kErrorInvalidArgument,
                        has("lora_down") ? "lora_up" : "lora_down", "missing (the other one is there)");
  if (has("lora_down")) {
    const TensorInfo& ld = f.t.at("lora_down");
    if (ld.shape.size() != 2)
      return tensor_error(f, StatusCode::kErrorShape, "lora_down",
                          "shape " + shape_str(ld.shape) + ", expected [Kp, Rp]");
    rp = ld.shape[1];
    if (rp % kRankPad != 0)
      return tensor_error(f, StatusCode::kErrorShape, "lora_down",
                          "rank " + std::to_string(rp) + " is not a multiple of 16");
    SVDQ_RETURN_IF_ERROR(check16("lora_down", {kp, rp}));
    SVDQ_RETURN_IF_ERROR(check16("lora_up", {np, rp}));
  }
  if (format == Format::kNvfp4) {
    if (has("wcscales")) SVDQ_RETURN_IF_ERROR(check16("wcscales", {np}));
    if (has("wtscale")) {
      const TensorInfo& wt = f.t.at("wtscale");
      if (wt.dtype != "F32" && !is16(wt.dtype))
        return tensor_error(f, StatusCode::kErrorInvalidArgument, "wtscale",
                            "dtype " + wt.dtype + ", expected F32, F16 or BF16");
      if (wt.numel != 1)
        return tensor_error(f, StatusCode::kErrorShape, "wtscale",
                            "shape " + shape_str(wt.shape) + ", expected one element");
    }
  } else {
    for (const char* r : {"wcscales", "wtscale"})
      if (has(r))
        return tensor_error(f, StatusCode::kErrorInvalidArgument, r,
                            "present in an int4 layer (nvfp4 only)");
  }

  // True sizes: options, then the file's svdq.nunchaku.<layer> metadata, then the padded ones.
  NunchakuLayerShape shape{kp, np, static_cast<int>(rp)};
  if (auto it = opt.shapes.find(f.layer); it != opt.shapes.end()) {
    shape = it->second;
  } else if (auto mt = f.file->metadata().find("svdq.nunchaku." + f.layer);
             mt != f.file->metadata().end()) {
    const Json j = Json::parse(mt->second, nullptr, false);
    auto int_field = [&](const char* k, int64_t& v) {
      if (!j.is_object() || !j.contains(k) || !j[k].is_number_integer()) return false;
      v = j[k].get<int64_t>();
      return true;
    };
    int64_t kk = 0, nn = 0, rr = 0;
    if (!int_field("in_features", kk) || !int_field("out_features", nn) || !int_field("rank", rr) ||
        rr < 0 || rr > rp)
      return error(StatusCode::kErrorInvalidArgument, f.where, ": metadata 'svdq.nunchaku.",
                   f.layer, "' is not {in_features, out_features, rank} integers (rank <= ", rp, ")");
    shape = {kk, nn, static_cast<int>(rr)};
  }
  const int64_t k = shape.in_features, n = shape.out_features;
  const int64_t r = shape.rank < 0 ? rp : shape.rank;
  const int64_t group = group_size(format);
  if (k <= 0 || n <= 0 || round_up(k, kTile) != kp || round_up(n, kTile) != np || k % group != 0)
    return error(StatusCode::kErrorShape, f.where, ": true sizes K = ", k, ", N = ", n,
                 " do not fit the padded qweight [", np, ", ", kp / 2, "] (K and N round up to ",
                 "the next multiple of 128; K a multiple of ", group, ")");
  if (r > rp || round_up(r, kRankPad) != rp || r > std::min(n, k))
    return error(StatusCode::kErrorShape, f.where, ": true rank ", r,
                 " does not fit the padded rank ", rp, " (rank rounds up to the next multiple of ",
                 "16 and is at most min(N, K))");

  QuantizedLinear q;
  if (format == Format::kInt4 && unsigned_by_name(f.layer, opt.unsigned_layers)) {
    // Fed by Nunchaku's fused GELU epilogue: unsigned codes of (x + shift) / s; the file's bias
    // already holds the shift's branch contribution (DeepCompressor folds it), as svdq's
    // act_unsigned contract expects.
    q.act_unsigned = true;
    q.act_shift = opt.unsigned_shift;
  }
  q.format = format;
  q.storage = dtype_of(tdt);
  q.in_features = k;
  q.out_features = n;
  q.rank = static_cast<int>(r);
  q.group = static_cast<int>(group);
  q.info.notes = q.act_unsigned ? "imported from Nunchaku (unsigned activations, shift " +
                                      detail::cat(q.act_shift) + ")"
                                : "imported from Nunchaku";

  const uint8_t* wsd = ws.data.data();
  if (format == Format::kInt4) {
    q.wscales.resize(static_cast<size_t>(n * (k / 64) * 2));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < k / 64; ++g) {
        const uint16_t b = load16(wsd, int4_scale_pos(i, g, kp / 64));
        uint16_t h = b;
        if (q.storage == DType::kBF16) {
          const float v = bf16_bits_to_float(b);
          h = float_to_half_bits(v);
          if (std::isnan(v) || half_bits_to_float(h) != v) {
            skip = detail::cat("wscales[", i, ", ", g, "] = ", v,
                               " (bf16) is not exactly representable in fp16, svdq's int4 "
                               "scale dtype");
            return Status::Ok();
          }
        }
        store16(q.wscales, i * (k / 64) + g, h);
      }
  } else {
    q.wscales.resize(static_cast<size_t>(n * (k / 16)));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < k / 16; ++g)
        q.wscales[i * (k / 16) + g] = wsd[fp4_scale_pos(i, g, ktiles)];
    // wcscales: equal ones fold into t_w = c * wtscale when that product is an exact fp32;
    // otherwise (differing, or an inexact product) they stay per channel, wtscale apart.
    double w = 1.0;
    if (has("wtscale")) {
      const TensorInfo& wt = f.t.at("wtscale");
      if (wt.dtype == "F32") {
        float v;
        std::memcpy(&v, wt.data.data(), 4);
        w = v;
      } else {
        w = bits16_to_float(load16(wt.data.data(), 0), dtype_of(wt.dtype));
      }
    }
    double c = 1.0;
    if (has("wcscales")) {
      const uint8_t* d = f.t.at("wcscales").data.data();
      c = bits16_to_float(load16(d, vec_pos(0)), q.storage);
      bool per_channel = false;
      for (int64_t i = 1; i < n; ++i) per_channel |= load16(d, vec_pos(i)) != load16(d, vec_pos(0));
      const float folded = static_cast<float>(c * w);
      per_channel |= !(std::isfinite(folded) && folded > 0 && static_cast<double>(folded) == c * w);
      if (per_channel) {  // QuantizedLinear::wcscales
        q.wcscales.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) q.wcscales[i] = load16(d, vec_pos(i));
        c = 1.0;
      }
    }
    const double tw = c * w;
    const float twf = static_cast<float>(tw);
    if (!(std::isfinite(twf) && twf > 0 && static_cast<double>(twf) == tw)) {
      skip = detail::cat("wtscale (", w, ") is not a positive finite fp32 tensor scale");
      return Status::Ok();
    }
    q.wtscale = twf;
  }

  q.qweight.assign(static_cast<size_t>(n * k / 2), 0);
  const uint8_t* qd = qw.data.data();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t idx = qw_nibble(i, j, ktiles);
      const uint8_t code = (idx & 1) ? (qd[idx / 2] >> 4) : (qd[idx / 2] & 0xF);
      q.qweight[i * (k / 2) + j / 2] |= static_cast<uint8_t>((j & 1) ? code << 4 : code);
    }
  const uint8_t* sd = sm.data.data();
  q.smooth.resize(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) q.smooth[j] = load16(sd, vec_pos(j));
  if (has("bias")) {
    const uint8_t* bd = f.t.at("bias").data.data();
    bool zero = true;
    q.bias.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      q.bias[i] = load16(bd, vec_pos(i));
      zero = zero && q.bias[i] == 0;
    }
    if (zero) q.bias.clear();
  }
  if (r > 0) {
    const uint8_t* dd = f.t.at("lora_down").data.data();
    const uint8_t* ud = f.t.at("lora_up").data.data();
    q.lora_down.resize(static_cast<size_t>(k * r));
    q.lora_up.resize(static_cast<size_t>(n * r));
    for (int64_t j = 0; j < k; ++j)
      for (int64_t t = 0; t < r; ++t) q.lora_down[j * r + t] = load16(dd, lora_pos(j, t, rp / 16, true));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t t = 0; t < r; ++t) q.lora_up[i * r + t] = load16(ud, lora_pos(i, t, rp / 16, false));
  }
  const Status v = validate(q);
  if (!v.ok()) return error(v.code(), f.where, ": ", v.message());
  out = std::move(q);
  return Status::Ok();
}

}  // namespace

Result<NunchakuImport> import_nunchaku(const std::vector<const SafetensorsFile*>& files,
                                       const NunchakuImportOptions& options) {
  NunchakuImport result;
  std::set<std::pair<size_t, std::string>> used;
  std::map<std::string, Found> found;
  for (size_t fi = 0; fi < files.size(); ++fi) {
    if (files[fi] == nullptr)
      return error(StatusCode::kErrorNullPointer, "import_nunchaku: files[", fi, "] is null");
    const SafetensorsFile& file = *files[fi];
    static const std::string kQ = ".qweight";
    for (const std::string& name : file.names()) {
      if (name.size() <= kQ.size() || name.compare(name.size() - kQ.size(), kQ.size(), kQ) != 0)
        continue;
      const std::string layer = name.substr(0, name.size() - kQ.size());
      if (found.count(layer))
        return error(StatusCode::kErrorInvalidArgument, "import_nunchaku: ", file.source(),
                     ": layer '", layer, "' appears in two files");
      Found f;
      f.file = &file;
      f.layer = layer;
      f.where = "import_nunchaku: " + file.source() + ": layer '" + layer + "'";
      for (const auto& [role, suffixes] : roles())
        for (const std::string& s : suffixes) {
          const std::string key = layer + "." + s;
          if (!file.contains(key)) continue;
          if (f.key.count(role))
            return error(StatusCode::kErrorInvalidArgument, f.where, ": both '", f.key[role],
                         "' and '", key, "' are present");
          auto info = file.info(key);
          if (!info.ok()) return info.status();
          f.t[role] = *info;
          f.key[role] = key;
        }
      found.emplace(layer, std::move(f));
    }
  }
  for (auto& [layer, f] : found) {
    QuantizedLinear q;
    std::string skip;
    SVDQ_RETURN_IF_ERROR(convert_layer(f, options, q, skip));
    const size_t fi = static_cast<size_t>(
        std::find(files.begin(), files.end(), f.file) - files.begin());
    if (!skip.empty()) {
      result.skipped.push_back({layer, skip});
      continue;
    }
    for (const auto& [role, key] : f.key)
      if (role != "smooth_orig") used.insert({fi, key});
    result.layers.emplace_back(layer, std::move(q));
  }
  for (size_t fi = 0; fi < files.size(); ++fi)
    for (const std::string& name : files[fi]->names())
      if (!used.count({fi, name})) result.other_tensors.emplace_back(fi, name);
  return result;
}

Result<NunchakuImport> load_nunchaku(const std::string& path, std::vector<SafetensorsFile>& files,
                                     const NunchakuImportOptions& options) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    paths.push_back((fs::path(path) / "transformer_blocks.safetensors").string());
    const std::string other = (fs::path(path) / "unquantized_layers.safetensors").string();
    if (fs::exists(other, ec)) paths.push_back(other);
  } else {
    paths.push_back(path);
  }
  std::vector<SafetensorsFile> opened;
  for (const auto& p : paths) {
    auto f = SafetensorsFile::open(p);
    if (!f.ok()) return error(f.status().code(), "load_nunchaku: ", f.status().message());
    opened.push_back(std::move(*f));
  }
  std::vector<const SafetensorsFile*> ptrs;
  for (const auto& f : opened) ptrs.push_back(&f);
  auto r = import_nunchaku(ptrs, options);
  if (!r.ok()) return r.status();
  files = std::move(opened);  // moving the vector keeps the elements' addresses
  return r;
}

bool nunchaku_unsigned_by_name(const std::string& layer, const std::vector<std::string>& names) {
  return unsigned_by_name(layer, names);
}

std::string nunchaku_quantization_config(Format format, int rank) {
  // Spelled as Python's json.dumps writes it (", " and ": "), as merge_safetensors.py does.
  const bool fp4 = format == Format::kNvfp4;
  const std::string dt = fp4 ? "\"fp4_e2m1_all\"" : "\"int4\"";
  const std::string gs = fp4 ? "16" : "64";
  return "{\"method\": \"svdquant\", \"weight\": {\"dtype\": " + dt + ", \"scale_dtype\": " +
         (fp4 ? "[null, \"fp8_e4m3_nan\"]" : "null") + ", \"group_size\": " + gs +
         "}, \"activation\": {\"dtype\": " + dt + ", \"scale_dtype\": " +
         (fp4 ? "\"fp8_e4m3_nan\"" : "null") + ", \"group_size\": " + gs +
         "}, \"rank\": " + std::to_string(rank) + "}";
}

Status add_nunchaku(SafetensorsWriter& writer, const std::string& layer, const QuantizedLinear& q,
                    const NunchakuExportOptions& options) {
  const std::string where = "add_nunchaku: layer '" + layer + "'";
  if (layer.empty()) return error(StatusCode::kErrorInvalidArgument, "add_nunchaku: layer is empty");
  const Status v = validate(q);
  if (!v.ok()) return error(v.code(), where, ": ", v.message());
  const int64_t n = q.out_features, k = q.in_features, r = q.rank;
  const int64_t np = round_up(n, kTile), kp = round_up(k, kTile), rp = round_up(r, kRankPad);
  const int64_t ktiles = kp / 64;
  const DType t = q.storage;
  const uint16_t one = float_to_bits16(1.0f, t);
  const bool v2 = options.names == NunchakuNames::kV2;
  if (q.rotation != Rotation::kNone)
    return error(StatusCode::kErrorNotSupported, where, ": rotation = ", rotation_name(q.rotation),
                 "; Nunchaku's kernels do not rotate activations (needs none)");
  if (q.format == Format::kNvfp4 && q.act_tensor_scale != 1.0f)
    return error(StatusCode::kErrorInvalidArgument, where, ": act_tensor_scale = ",
                 q.act_tensor_scale, "; Nunchaku has no static activation tensor scale (needs 1)");
  // Nunchaku decides signed/unsigned activations by the layer's role (its name), not the file.
  if (q.format == Format::kInt4 && !options.unsigned_layers.empty()) {
    const bool by_name = unsigned_by_name(layer, options.unsigned_layers);
    if (q.act_unsigned && !by_name)
      return error(StatusCode::kErrorInvalidArgument, where,
                   ": an act_unsigned layer must have a name Nunchaku runs with unsigned "
                   "activations (last component mlp_fc2, mlp_context_fc2 or net.2); Nunchaku "
                   "would run this one signed");
    if (!q.act_unsigned && by_name)
      return error(StatusCode::kErrorInvalidArgument, where,
                   ": Nunchaku runs an int4 layer of this name with unsigned, shifted "
                   "activations (GELU(x) + 0.171875, absmax / 15), but this layer is signed; "
                   "export it under another name or as nvfp4");
    if (q.act_unsigned && q.act_shift != kNunchakuGeluShift)
      return error(StatusCode::kErrorInvalidArgument, where, ": act_shift (", q.act_shift,
                   ") must be Nunchaku's ", kNunchakuGeluShift);
  }

  std::vector<uint8_t> qw(static_cast<size_t>(np * kp / 2), 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const uint8_t code = packed_nibble(q.qweight.data() + i * (k / 2), j);
      const int64_t idx = qw_nibble(i, j, ktiles);
      qw[idx / 2] |= static_cast<uint8_t>((idx & 1) ? code << 4 : code);
    }
  std::vector<uint8_t> ws;
  std::vector<int64_t> ws_shape;
  std::string ws_dtype;
  if (q.format == Format::kInt4) {
    ws.resize(static_cast<size_t>(np * (kp / 64) * 2));
    for (int64_t i = 0; i < np * (kp / 64); ++i) store16(ws, i, one);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < k / 64; ++g) {
        const uint16_t h = load16(q.wscales.data(), i * (k / 64) + g);
        uint16_t b = h;
        if (t == DType::kBF16) {
          const float f = half_bits_to_float(h);
          b = float_to_bf16_bits(f);
          if (std::isnan(f) || bf16_bits_to_float(b) != f)
            return error(StatusCode::kErrorInvalidArgument, where, ": tensor '", layer,
                         ".wscales': wscales[", i, ", ", g, "] = ", f,
                         " (fp16) is not exactly representable in bf16, the layer's storage "
                         "dtype, which Nunchaku uses for int4 scales; store the layer as f16");
        }
        store16(ws, int4_scale_pos(i, g, kp / 64), b);
      }
    ws_shape = {kp / 64, np};
    ws_dtype = st_name(t);
  } else {
    ws.assign(static_cast<size_t>(np * (kp / 16)), encode_e4m3(1.0f));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < k / 16; ++g) ws[fp4_scale_pos(i, g, ktiles)] = q.wscales[i * (k / 16) + g];
    ws_shape = {kp / 16, np};
    ws_dtype = "F8_E4M3";
  }
  auto vec = [&](const std::vector<uint16_t>& src, int64_t len, int64_t padded) {
    std::vector<uint8_t> b(static_cast<size_t>(padded * 2));
    for (int64_t i = 0; i < padded; ++i) store16(b, i, one);
    for (int64_t i = 0; i < len; ++i) store16(b, vec_pos(i), src.empty() ? 0 : src[i]);
    return b;
  };
  const std::vector<uint8_t> bias = vec(q.bias, n, np);
  const std::vector<uint8_t> smooth = vec(q.smooth, k, kp);
  std::vector<uint8_t> down(static_cast<size_t>(kp * rp * 2), 0), up(static_cast<size_t>(np * rp * 2), 0);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t s = 0; s < r; ++s) store16(down, lora_pos(j, s, rp / 16, true), q.lora_down[j * r + s]);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t s = 0; s < r; ++s) store16(up, lora_pos(i, s, rp / 16, false), q.lora_up[i * r + s]);

  // Check every name first so that a failure adds nothing.
  const std::string p = layer + ".";
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, const std::vector<uint8_t>*>> out;
  out.emplace_back(p + "qweight", "I8", std::vector<int64_t>{np, kp / 2}, &qw);
  out.emplace_back(p + "wscales", ws_dtype, ws_shape, &ws);
  std::vector<uint8_t> wc, wt(4);
  if (q.format == Format::kNvfp4) {
    // t_w as DeepCompressor writes a per-tensor scale: in every wcscales entry when the storage
    // dtype holds it exactly (padding 1), else wcscales = 1 and an F32 wtscale.
    // A layer with per-channel wcscales writes them as they are (and t_w apart when not 1).
    const float tw = q.wtscale;
    const uint16_t twb = float_to_bits16(tw, t);
    const bool in_wc = q.wcscales.empty() && bits16_to_float(twb, t) == tw;
    wc = q.wcscales.empty() ? vec(std::vector<uint16_t>(static_cast<size_t>(n), in_wc ? twb : one), n, np)
                            : vec(q.wcscales, n, np);
    out.emplace_back(p + "wcscales", st_name(t), std::vector<int64_t>{np}, &wc);
    if (!in_wc && (q.wcscales.empty() || tw != 1.0f)) {
      std::memcpy(wt.data(), &tw, 4);
      out.emplace_back(p + "wtscale", "F32", std::vector<int64_t>{1}, &wt);
    }
  }
  out.emplace_back(p + "bias", st_name(t), std::vector<int64_t>{np}, &bias);
  out.emplace_back(p + (v2 ? "smooth_factor" : "smooth"), st_name(t), std::vector<int64_t>{kp}, &smooth);
  if (options.smooth_orig)
    out.emplace_back(p + (v2 ? "smooth_factor_orig" : "smooth_orig"), st_name(t),
                     std::vector<int64_t>{kp}, &smooth);
  if (r > 0) {
    out.emplace_back(p + (v2 ? "proj_down" : "lora_down"), st_name(t), std::vector<int64_t>{kp, rp}, &down);
    out.emplace_back(p + (v2 ? "proj_up" : "lora_up"), st_name(t), std::vector<int64_t>{np, rp}, &up);
  }
  for (const auto& [name, dt, shape, bytes] : out)
    if (writer.contains(name))
      return error(StatusCode::kErrorInvalidArgument, where, ": tensor '", name, "' already added");
  for (const auto& [name, dt, shape, bytes] : out)
    SVDQ_RETURN_IF_ERROR(writer.add(name, dt, shape, ByteSpan(bytes->data(), bytes->size())));
  if (options.shape_metadata) {
    OrderedJson j;
    j["in_features"] = k;
    j["out_features"] = n;
    j["rank"] = r;
    SVDQ_RETURN_IF_ERROR(writer.set_metadata("svdq.nunchaku." + layer, j.dump()));
  }
  return Status::Ok();
}

Status save_nunchaku(const std::string& path,
                     const std::vector<std::pair<std::string, const QuantizedLinear*>>& layers,
                     const NunchakuExportOptions& options,
                     const std::map<std::string, std::string>& extra_metadata) {
  if (layers.empty())
    return error(StatusCode::kErrorInvalidArgument, "save_nunchaku: ", path, ": no layers");
  SafetensorsWriter writer;
  int max_rank = 0;
  for (const auto& [name, q] : layers) {
    if (q == nullptr)
      return error(StatusCode::kErrorNullPointer, "save_nunchaku: layer '", name, "' is null");
    if (q->format != layers[0].second->format || q->storage != layers[0].second->storage)
      return error(StatusCode::kErrorInvalidArgument, "save_nunchaku: layer '", name,
                   "': format/storage differs from layer '", layers[0].first,
                   "' (a Nunchaku file has one precision and one dtype)");
    SVDQ_RETURN_IF_ERROR(add_nunchaku(writer, name, *q, options));
    max_rank = std::max<int>(max_rank, static_cast<int>(round_up(q->rank, kRankPad)));
  }
  for (const auto& [key, value] : extra_metadata) SVDQ_RETURN_IF_ERROR(writer.set_metadata(key, value));
  SVDQ_RETURN_IF_ERROR(writer.set_metadata(
      "quantization_config", nunchaku_quantization_config(layers[0].second->format, max_rank)));
  return writer.write(path);
}

}  // namespace svdq
