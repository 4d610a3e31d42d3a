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

namespace {

Status save_calibration_impl(const std::string& path, const std::map<std::string, ActivationStats>& layers,
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
                           {"seed", st.options().seed},
                           {"fingerprint", st.fingerprint()}};
    SVDQ_RETURN_IF_ERROR(w.set_metadata(kPrefix + name, meta.dump()));
  }
  SVDQ_RETURN_IF_ERROR(w.set_metadata("svdq.version", version_string()));
  return w.write(path);
}

// The tensor `name` must be F32 (or a dtype read_float converts) of exactly `shape`.
Result<std::vector<float>> read_shaped(const SafetensorsFile& file, const std::string& layer,
                                       const std::string& name, const std::vector<int64_t>& shape,
                                       const char* what) {
  Result<TensorInfo> t = file.info(name);
  if (!t.ok()) return t.status();
  if (t->shape != shape) {
    std::string want = "[", got = "[";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    for (size_t i = 0; i < t->shape.size(); ++i) got += (i ? ", " : "") + std::to_string(t->shape[i]);
    return detail::error(StatusCode::kErrorShape, "load_calibration: layer '", layer, "': ", what,
                         " has shape ", got, "], expected ", want, "]");
  }
  return file.read_float(name);
}

Result<std::map<std::string, ActivationStats>> load_calibration_impl(const SafetensorsFile& file) {
  constexpr const char* kFn = "load_calibration";
  std::map<std::string, ActivationStats> out;
  for (const auto& [key, value] : file.metadata()) {
    if (key.rfind(kPrefix, 0) != 0) continue;
    const std::string name = key.substr(std::strlen(kPrefix));
    const nlohmann::json meta = nlohmann::json::parse(value, nullptr, false);
    if (meta.is_discarded() || !meta.is_object() || !meta.contains("rows_observed") ||
        !meta["rows_observed"].is_number_integer() || !meta.contains("max_rows") ||
        !meta["max_rows"].is_number_integer() || !meta.contains("seed") ||
        !meta["seed"].is_number_unsigned() ||
        (meta.contains("fingerprint") && !meta["fingerprint"].is_number_unsigned()))
      return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": metadata '", key,
                           "' is not {rows_observed, max_rows, seed[, fingerprint]}");
    Result<TensorInfo> ai = file.info(name + ".absmax");
    if (!ai.ok()) return ai.status();
    if (ai->shape.size() != 1 || ai->shape[0] <= 0)
      return detail::error(StatusCode::kErrorShape, kFn, ": layer '", name,
                           "': absmax must have shape [K] with K > 0");
    const int64_t k = ai->shape[0];
    Result<std::vector<float>> absmax = file.read_float(name + ".absmax");
    if (!absmax.ok()) return absmax.status();
    std::vector<float> samples;
    if (file.contains(name + ".samples")) {
      Result<TensorInfo> si = file.info(name + ".samples");
      if (!si.ok()) return si.status();
      const int64_t s_rows = si->shape.size() == 2 ? si->shape[0] : -1;
      Result<std::vector<float>> s = read_shaped(file, name, name + ".samples", {s_rows, k}, "samples");
      if (!s.ok()) return s.status();
      samples = std::move(*s);
    }
    std::vector<double> gram;
    if (file.contains(name + ".gram")) {
      Result<TensorInfo> g = file.info(name + ".gram");
      if (!g.ok()) return g.status();
      if (g->dtype != "F64")
        return detail::error(StatusCode::kErrorInvalidArgument, kFn, ": ", name,
                             ".gram must be F64, is ", g->dtype);
      if (g->shape != std::vector<int64_t>{k, k})
        return detail::error(StatusCode::kErrorShape, kFn, ": layer '", name,
                             "': gram must have shape [K, K] with K = ", k);
      gram.resize(static_cast<size_t>(g->numel));
      if (!gram.empty()) std::memcpy(gram.data(), g->data.data(), g->data.size());
    }
    CalibrationOptions opt;
    opt.max_rows = meta["max_rows"].get<int64_t>();
    opt.seed = meta["seed"].get<uint64_t>();
    const uint64_t fingerprint = meta.contains("fingerprint") ? meta["fingerprint"].get<uint64_t>() : 0;
    Result<ActivationStats> st =
        ActivationStats::restore(k, meta["rows_observed"].get<int64_t>(), std::move(*absmax),
                                 std::move(samples), std::move(gram), opt, fingerprint);
    if (!st.ok())
      return Status(st.status().code(), std::string(kFn) + ": layer '" + name + "': " + st.status().message());
    out.emplace(name, std::move(*st));
  }
  return out;
}

}  // namespace

Status save_calibration(const std::string& path, const std::map<std::string, ActivationStats>& layers,
                        const std::map<std::string, std::string>& extra_metadata) {
  return detail::guard_allocation<Status>(
      "save_calibration", [&] { return save_calibration_impl(path, layers, extra_metadata); });
}

Result<std::map<std::string, ActivationStats>> load_calibration(const std::string& path) {
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  if (!file.ok()) return file.status();
  return load_calibration(*file);
}

Result<std::map<std::string, ActivationStats>> load_calibration(const SafetensorsFile& file) {
  return detail::guard_allocation<Result<std::map<std::string, ActivationStats>>>(
      "load_calibration", [&] { return load_calibration_impl(file); });
}

}  // namespace svdq
