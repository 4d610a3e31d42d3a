#include "svdq/calibration.hpp"

#include <cstring>
#include <nlohmann/json.hpp>

#include "check.hpp"
#include "svdq/checkpoint.hpp"
#include "svdq/version.hpp"

namespace svdq {

namespace {

constexpr const char* kPrefix = "svdq.calib.";

template <typename T>
ByteSpan as_bytes(const std::vector<T>& v) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T));
}

}  // namespace

Status save_calibration(const std::string& path, const std::map<std::string, ActivationStats>& layers,
                        const std::map<std::string, std::string>& extra_metadata) {
  SafetensorsWriter w;
  for (const auto& [key, value] : extra_metadata) SVDQ_RETURN_IF_ERROR(w.set_metadata(key, value));
  for (const auto& [name, st] : layers) {
    const int64_t k = st.channels();
    if (name.empty() || k == 0)
      return detail::error(StatusCode::kErrorInvalidArgument, "save_calibration: layer '", name,
                           "' has no name or no observations");
    SVDQ_RETURN_IF_ERROR(w.add(name + ".absmax", "F32", {k}, as_bytes(st.absmax())));
    if (st.sampled_rows() > 0)
      SVDQ_RETURN_IF_ERROR(w.add(name + ".samples", "F32", {st.sampled_rows(), k}, as_bytes(st.samples())));
    if (!st.gram().empty())
      SVDQ_RETURN_IF_ERROR(w.add(name + ".gram", "F64", {k, k}, as_bytes(st.gram())));
    nlohmann::json meta = {{"rows_observed", st.rows_observed()},
                           {"max_rows", st.options().max_rows},
                           {"seed", st.options().seed}};
    SVDQ_RETURN_IF_ERROR(w.set_metadata(kPrefix + name, meta.dump()));
  }
  SVDQ_RETURN_IF_ERROR(w.set_metadata("svdq.version", version_string()));
  return w.write(path);
}

Result<std::map<std::string, ActivationStats>> load_calibration(const std::string& path) {
  constexpr const char* kFn = "load_calibration";
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  if (!file.ok()) return file.status();
  std::map<std::string, ActivationStats> out;
  for (const auto& [key, value] : file->metadata()) {
    if (key.rfind(kPrefix, 0) != 0) continue;
    const std::string name = key.substr(std::strlen(kPrefix));
    const nlohmann::json meta = nlohmann::json::parse(value, nullptr, false);
    if (meta.is_discarded() || !meta.is_object() || !meta.contains("rows_observed") ||
        !meta["rows_observed"].is_number_integer() || !meta.contains("max_rows") ||
        !meta["max_rows"].is_number_integer() || !meta.contains("seed") ||
        !meta["seed"].is_number_unsigned())
      return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": metadata '", key,
                           "' is not {rows_observed, max_rows, seed}");
    Result<std::vector<float>> absmax = file->read_float(name + ".absmax");
    if (!absmax.ok()) return absmax.status();
    std::vector<float> samples;
    if (file->contains(name + ".samples")) {
      Result<std::vector<float>> s = file->read_float(name + ".samples");
      if (!s.ok()) return s.status();
      samples = std::move(*s);
    }
    std::vector<double> gram;
    if (file->contains(name + ".gram")) {
      Result<TensorInfo> g = file->info(name + ".gram");
      if (!g.ok()) return g.status();
      if (g->dtype != "F64")
        return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": ", name,
                             ".gram must be F64, is ", g->dtype);
      gram.resize(static_cast<size_t>(g->numel));
      std::memcpy(gram.data(), g->data.data(), g->data.size());
    }
    CalibrationOptions opt;
    opt.max_rows = meta["max_rows"].get<int64_t>();
    opt.seed = meta["seed"].get<uint64_t>();
    const int64_t k = static_cast<int64_t>(absmax->size());
    Result<ActivationStats> st =
        ActivationStats::restore(k, meta["rows_observed"].get<int64_t>(), std::move(*absmax),
                                 std::move(samples), std::move(gram), opt);
    if (!st.ok())
      return Status(st.status().code(), std::string(kFn) + ": layer '" + name + "': " + st.status().message());
    out.emplace(name, std::move(*st));
  }
  return out;
}

}  // namespace svdq
