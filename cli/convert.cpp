// cli/convert.cpp — `svdq convert`: Nunchaku checkpoints <-> svdq's format (include/svdq/nunchaku.hpp).
//
//   svdq convert --from nunchaku IN -o OUT [--shape LAYER=K,N,R ...] [--signed-all]
//       IN: a Nunchaku .safetensors file, or a legacy release folder (transformer_blocks +
//       unquantized_layers). Every W4A4 layer svdq represents exactly becomes an svdq layer;
//       every other tensor (other parameters, layers it cannot represent) is copied unchanged.
//   svdq convert --to nunchaku IN -o OUT [--names legacy|v2] [--signed-all]
//       IN: an svdq file. Its layers are written in Nunchaku's layout; other tensors are copied.
// Nothing is written when any layer fails.
#include "convert.hpp"

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "svdq/svdq.hpp"

namespace svdq_cli {
namespace {

struct ConvertArgs {
  std::string from, to, input, output, names = "legacy";
  std::vector<std::string> shapes;
  bool signed_all = false;
};

int fail(const std::string& what) {
  std::fprintf(stderr, "svdq convert: %s\n", what.c_str());
  return 1;
}
int fail(const svdq::Status& st) { return fail(st.to_string()); }

int from_nunchaku(const ConvertArgs& a) {
  svdq::NunchakuImportOptions opt;
  if (a.signed_all) opt.unsigned_layers.clear();
  for (const std::string& s : a.shapes) {
    const size_t eq = s.rfind('=');
    long long k = 0, n = 0, r = -1;
    if (eq == std::string::npos ||
        std::sscanf(s.c_str() + eq + 1, "%lld,%lld,%lld", &k, &n, &r) < 2)
      return fail("--shape '" + s + "': expected LAYER=K,N[,RANK]");
    opt.shapes[s.substr(0, eq)] = {k, n, static_cast<int>(r)};
  }
  std::vector<svdq::SafetensorsFile> files;
  auto imp = svdq::load_nunchaku(a.input, files, opt);
  if (!imp.ok()) return fail(imp.status());
  svdq::SafetensorsWriter w;
  for (const auto& [name, q] : imp->layers) {
    const svdq::Status st = svdq::add_quantized(w, name, q);
    if (!st.ok()) return fail(st);
  }
  for (const auto& [fi, name] : imp->other_tensors) {
    auto info = files[fi].info(name);
    if (!info.ok()) return fail(info.status());
    const svdq::Status st = w.add(name, info->dtype, info->shape, info->data);
    if (!st.ok()) return fail(st);
  }
  nlohmann::ordered_json skipped = nlohmann::ordered_json::object();
  for (const auto& s : imp->skipped) skipped[s.layer] = s.reason;
  for (const auto& f : files)
    for (const auto& [k, v] : f.metadata())
      if (k.rfind("svdq.", 0) != 0 && !w.set_metadata(k, v).ok()) return fail("metadata " + k);
  if (!w.set_metadata("svdq.version", svdq::version_string()).ok() ||
      !w.set_metadata("svdq.nunchaku.skipped", skipped.dump()).ok())
    return fail("metadata");
  const svdq::Status st = w.write(a.output);
  if (!st.ok()) return fail(st);
  std::printf("%s: %zu layer(s) converted, %zu not representable, %zu other tensor(s) copied\n",
              a.output.c_str(), imp->layers.size(), imp->skipped.size(), imp->other_tensors.size());
  for (const auto& s : imp->skipped) std::printf("  kept as is: %s: %s\n", s.layer.c_str(), s.reason.c_str());
  return 0;
}

int to_nunchaku(const ConvertArgs& a) {
  auto file = svdq::SafetensorsFile::open(a.input);
  if (!file.ok()) return fail(file.status());
  auto names = svdq::quantized_layers(*file);
  if (!names.ok()) return fail(names.status());
  if (names->empty()) return fail(a.input + ": no svdq layers (svdq.layer.* metadata)");
  svdq::NunchakuExportOptions opt;
  opt.names = a.names == "v2" ? svdq::NunchakuNames::kV2 : svdq::NunchakuNames::kLegacy;
  if (a.signed_all) opt.unsigned_layers.clear();  // no signedness-by-name check
  svdq::SafetensorsWriter w;
  std::set<std::string> used;
  int max_rank = 0;
  svdq::Format format = svdq::Format::kInt4;
  for (size_t i = 0; i < names->size(); ++i) {
    const std::string& name = (*names)[i];
    auto q = svdq::load_quantized(*file, name);
    if (!q.ok()) return fail(q.status());
    if (i == 0) format = q->format;
    if (q->format != format) return fail("layer " + name + ": a Nunchaku file holds one format");
    svdq::NunchakuExportOptions lo = opt;  // keep an imported smooth_orig (copied below)
    lo.smooth_orig = !file->contains(name + ".smooth_orig") && !file->contains(name + ".smooth_factor_orig");
    const svdq::Status st = svdq::add_nunchaku(w, name, *q, lo);
    if (!st.ok()) return fail(st);
    max_rank = std::max(max_rank, (q->rank + 15) / 16 * 16);
    for (const char* t : {"qweight", "wscales", "wtscale", "act_tscale", "smooth", "lora_down", "lora_up", "bias",
                          "wcscales"})
      used.insert(name + "." + t);
  }
  for (const std::string& name : file->names()) {
    if (used.count(name)) continue;
    auto info = file->info(name);
    const svdq::Status st = w.add(name, info->dtype, info->shape, info->data);
    if (!st.ok()) return fail(st);
  }
  for (const auto& [k, v] : file->metadata())
    if (k.rfind("svdq.", 0) != 0 && k != "quantization_config" && !w.set_metadata(k, v).ok())
      return fail("metadata " + k);
  if (!w.set_metadata("quantization_config", svdq::nunchaku_quantization_config(format, max_rank)).ok())
    return fail("metadata");
  const svdq::Status st = w.write(a.output);
  if (!st.ok()) return fail(st);
  std::printf("%s: %zu layer(s) in Nunchaku's layout (%s names)\n", a.output.c_str(), names->size(),
              a.names.c_str());
  return 0;
}

}  // namespace

std::function<int()> register_convert(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  auto* c = app.add_subcommand("convert", "convert Nunchaku SVDQuant checkpoints to svdq's format and back");
  c->add_option("input", a->input, "input: a .safetensors file (or a legacy Nunchaku release folder)")
      ->required()
      ->check(CLI::ExistingPath);
  c->add_option("-o,--output", a->output, "output file (.safetensors)")->required();
  auto* from = c->add_option("--from", a->from, "source layout")->check(CLI::IsMember({"nunchaku"}));
  auto* to = c->add_option("--to", a->to, "target layout")->check(CLI::IsMember({"nunchaku"}));
  from->excludes(to);
  c->add_option("--shape", a->shapes, "true sizes of a layer, LAYER=K,N[,RANK] (import; repeatable)");
  c->add_flag("--signed-all", a->signed_all,
              "import the GELU-fed int4 layers (mlp_fc2, ...) as signed layers too (import); export "
              "without checking that a layer's signedness is what Nunchaku runs for its name (export)");
  c->add_option("--names", a->names, "tensor names to write: legacy (lora_down, smooth) or v2 (proj_down, smooth_factor)")
      ->check(CLI::IsMember({"legacy", "v2"}))
      ->capture_default_str();
  return [a]() {
    if (a->from.empty() == a->to.empty()) return fail("give exactly one of --from nunchaku, --to nunchaku");
    return a->from.empty() ? to_nunchaku(*a) : from_nunchaku(*a);
  };
}

}  // namespace svdq_cli
