// svdq — the command-line tool: quantize a safetensors model, build calibration statistics,
// inspect a quantized file, benchmark a layer. `svdq --help` and `svdq <command> --help`.
#include <fcntl.h>
#include <omp.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "bench_gpu.hpp"
#include "convert.hpp"
#include "eval.hpp"
#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"  // synth: the embedded default layers

namespace {

using svdq::Status;

int fail(const std::string& what) {
  std::fprintf(stderr, "svdq: error: %s\n", what.c_str());
  return 1;
}
int fail(const Status& st) { return fail(st.to_string()); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A one-line progress bar on stderr, only when stderr is a terminal.
void progress(int done, int total, const std::string& what) {
  if (!isatty(STDERR_FILENO)) return;
  constexpr int kWidth = 30;
  const int fill = total > 0 ? done * kWidth / total : kWidth;
  std::fprintf(stderr, "\r[%.*s%*s] %d/%d %-50.50s", fill, "==============================",
               kWidth - fill, "", done, total, what.c_str());
  if (done == total) std::fprintf(stderr, "\r%*s\r", kWidth + 70, "");
  std::fflush(stderr);
}

// Erases the progress bar's line (before a table row goes to stdout on the same terminal).
void progress_clear() {
  if (!isatty(STDERR_FILENO)) return;
  std::fprintf(stderr, "\r%*s\r", 100, "");
  std::fflush(stderr);
}

// How a layer was made (issue 13): the recipe kept, alpha/beta, score, and what was compared.
void print_recipe(const svdq::QuantizedLinear::Info& i) {
  if (i.recipe.empty()) return;
  char score[48] = "not scored";
  if (i.score >= 0) std::snprintf(score, sizeof score, "score %.4e", i.score);
  std::printf("    recipe %s (alpha %.2f, beta %.2f), %s%s, refine iterations %d, candidates %d%s%s\n",
              i.recipe.c_str(), i.alpha, i.beta, score,
              i.holdout_rows > 0 ? (" cross-validated on " + std::to_string(i.holdout_rows) + " rows").c_str() : "",
              i.refine_iterations, i.candidates_scored, i.notes.empty() ? "" : "; ", i.notes.c_str());
  if (!i.selection.empty()) {
    std::string line = "    compared:";
    for (const auto& c : i.selection) {
      char buf[160];
      std::snprintf(buf, sizeof buf, " %s %.4e", c.recipe.c_str(), c.score);
      line += buf;
    }
    std::printf("%s\n", line.c_str());
  }
}

svdq::ConstMatrixRef float_view(const std::vector<float>& v, int64_t rows, int64_t cols) {
  return svdq::MatrixView<const float>(v.data(), rows, cols);
}

/// A tensor or layer name from a file, safe to print: control and non-ASCII bytes as \xNN.
std::string shown(const std::string& name) { return svdq::printable(name, 200); }

void warn(const std::string& what) { std::fprintf(stderr, "svdq: warning: %s\n", what.c_str()); }

// ----------------------------------------------------------------------------------------------
// Files: inputs must be regular files (a FIFO would block open(2) forever); the output must be
// creatable before any work starts, must not be a special file and must not be an input.

/// stat(2) of an input, refusing anything but a regular file; never opens it.
Status check_input_file(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return Status(svdq::StatusCode::kErrorIo, std::string(what) + " '" + shown(path) +
                                                  "': cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    return Status(svdq::StatusCode::kErrorIo, std::string(what) + " '" + shown(path) +
                                                  "' is not a regular file (a FIFO, device or "
                                                  "directory cannot be read as safetensors)");
  return Status::Ok();
}

/// The output can be written: not a special file, not one of the inputs, and its directory lets
/// us create a file (checked by creating and removing an exclusive probe file).
Status check_output_path(const std::string& out, const std::vector<std::string>& inputs) {
  const auto bad = [&](const std::string& why) {
    return Status(svdq::StatusCode::kErrorIo, "output '" + shown(out) + "' " + why);
  };
  struct stat st {};
  if (::stat(out.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode))
      return bad(S_ISDIR(st.st_mode) ? "is a directory"
                                     : "is a special file (FIFO, device, socket or a link to "
                                       "one, e.g. /dev/stdout): svdq writes regular files only");
    for (const std::string& in : inputs) {
      struct stat si {};
      if (!in.empty() && ::stat(in.c_str(), &si) == 0 && si.st_dev == st.st_dev &&
          si.st_ino == st.st_ino)
        return bad("is the input file '" + shown(in) + "': write to another path");
    }
  } else if (errno != ENOENT) {
    return bad(std::string("cannot be checked: ") + std::strerror(errno));
  }
  const size_t slash = out.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : out.substr(0, slash));
  uint64_t r = 0;
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof r))
    r = static_cast<uint64_t>(getpid()) * 0x9e3779b97f4a7c15ULL;
  char name[64];
  std::snprintf(name, sizeof name, "/.svdq-probe-%016llx", static_cast<unsigned long long>(r));
  const std::string probe = dir + name;
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return bad("cannot be created: no file can be created in directory '" + shown(dir) +
               "': " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
  return Status::Ok();
}

// The temporary output file, removed by SIGINT/SIGTERM/SIGHUP/SIGXFSZ before the process dies, so
// an interrupted run leaves nothing behind. Written with those signals blocked, read by the
// handler (unlink(2) is async-signal-safe).
char g_temp_path[4096];

void remove_temp_and_die(int sig) {
  if (g_temp_path[0] != '\0') ::unlink(g_temp_path);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void install_cleanup_handlers() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGXFSZ}) std::signal(sig, remove_temp_and_die);
}

void set_temp_path(const std::string& path) {
  sigset_t block, old;
  sigemptyset(&block);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGXFSZ}) sigaddset(&block, sig);
  sigprocmask(SIG_BLOCK, &block, &old);
  const size_t n = std::min(path.size(), sizeof g_temp_path - 1);
  std::memcpy(g_temp_path, path.data(), n);
  g_temp_path[n] = '\0';
  sigprocmask(SIG_SETMASK, &old, nullptr);
}

/// Writes the file atomically (svdq::SafetensorsWriter::write); an interrupt removes the temp.
Status write_output(const svdq::SafetensorsWriter& writer, const std::string& path) {
  install_cleanup_handlers();
  return writer.write(path, set_temp_path);
}

// ----------------------------------------------------------------------------------------------
// Memory: sizes asked for on the command line are checked against the machine before allocating.

double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

Status check_memory(double bytes, const std::string& what) {
  const double have = physical_memory_bytes();
  if (have > 0 && bytes > have)
    return Status(svdq::StatusCode::kErrorInvalidArgument,
                  what + " needs about " + std::to_string(static_cast<long long>(bytes / (1 << 20))) +
                      " MiB, more than this machine's " +
                      std::to_string(static_cast<long long>(have / (1 << 20))) + " MiB of memory");
  return Status::Ok();
}

// ----------------------------------------------------------------------------------------------
// Tensor names are matched with std::regex, whose backtracking matcher recurses per character:
// on a 200k-byte name it overflowed the stack and 20k bytes took 15 s. Names longer than this are
// never matched (they are copied unchanged and listed); real tensor names are < 200 bytes.
constexpr size_t kMaxMatchedNameBytes = 1024;

struct NameFilter {
  std::regex include, exclude;
  bool has_exclude = false;
  bool matches(const std::string& name) const {
    if (name.size() > kMaxMatchedNameBytes) return false;
    return std::regex_search(name, include) && !(has_exclude && std::regex_search(name, exclude));
  }
};

// ----------------------------------------------------------------------------------------------
// svdq quantize

struct QuantizeArgs {
  std::string model, output, calib, format = "int4", include = R"(.*\.weight$)", exclude;
  std::string layout = "svdq";  // or "nunchaku": Nunchaku's tensors (include/svdq/nunchaku.hpp)
  std::string storage;          // f16 / bf16; empty: bf16, or f16 for an int4 Nunchaku layout
  int rank = 32;
  int threads = 0;
  bool plus = false;
  bool rotate = false;     // block-Hadamard rotation of the 4-bit path (also on with --plus int4)
  bool no_rotate = false;  // never rotate (--plus int4 compares rotated recipes by default)
};

// One weight to quantize: tensor "<layer>.weight" (or any matching name) and its optional bias.
struct Job {
  std::string tensor, layer, bias;  // bias: "" when the layer has none
  const svdq::ActivationStats* stats = nullptr;
};

// The tensor names a quantized layer writes (besides the bias it takes over).
constexpr const char* kLayerOutputSuffixes[] = {".qweight", ".wscales",   ".wtscale", ".act_tscale",
                                                ".smooth",  ".lora_down", ".lora_up"};

bool is_float_dtype(const std::string& d) { return d == "F32" || d == "F16" || d == "BF16"; }

/// Decides, before anything is quantized, which tensors become layers. Every tensor that is not
/// taken is copied unchanged; the reason is listed when it matched --include. Refusals that would
/// make the output unloadable (a bias the layer cannot hold, an output name the input already
/// uses) skip the layer instead of writing a file svdq's own loader refuses.
Status plan_jobs(const QuantizeArgs& a, const svdq::SafetensorsFile& model,
                 const std::map<std::string, svdq::ActivationStats>& calib, const NameFilter& filter,
                 int gs, std::vector<Job>* jobs, std::vector<std::string>* skipped,
                 std::vector<std::string>* warnings) {
  std::set<std::string> layers;
  size_t long_names = 0;
  for (const std::string& name : model.names()) {
    if (name.size() > kMaxMatchedNameBytes) {
      ++long_names;
      continue;
    }
    if (!filter.matches(name)) continue;
    const auto info = model.info(name);
    const auto skip = [&](const std::string& why) { skipped->push_back(shown(name) + " (" + why + ")"); };
    if (!is_float_dtype(info->dtype) || info->shape.size() != 2) {
      skip("not a 2-D float tensor: " + info->dtype + ", " + std::to_string(info->shape.size()) + "-D");
      continue;
    }
    const int64_t n = info->shape[0], k = info->shape[1];
    if (n == 0 || k == 0) {
      skip("empty weight [" + std::to_string(n) + ", " + std::to_string(k) + "]: nothing to quantize");
      continue;
    }
    if (k % gs != 0) {
      skip("in_features " + std::to_string(k) + " is not a multiple of the " + a.format + " group " +
           std::to_string(gs));
      continue;
    }
    Job job;
    job.tensor = name;
    job.layer = name;
    if (job.layer.size() > 7 && job.layer.compare(job.layer.size() - 7, 7, ".weight") == 0)
      job.layer.resize(job.layer.size() - 7);
    if (!layers.insert(job.layer).second) {
      skip("layer name '" + shown(job.layer) + "' is already taken by another weight");
      continue;
    }
    std::string clash;
    for (const char* suffix : kLayerOutputSuffixes)
      if (model.contains(job.layer + suffix)) clash = job.layer + suffix;
    if (!clash.empty()) {
      layers.erase(job.layer);
      skip("the input already has a tensor '" + shown(clash) + "', a name the quantized layer writes");
      continue;
    }
    const std::string bias = job.layer + ".bias";
    if (model.contains(bias) && bias != name) {
      const auto b = model.info(bias);
      const bool vector_of_n = (b->shape.size() == 1 && b->shape[0] == n) ||
                               (b->shape.size() == 2 && b->shape[0] == 1 && b->shape[1] == n);
      if (!is_float_dtype(b->dtype) || !vector_of_n) {
        layers.erase(job.layer);
        skip("its bias '" + shown(bias) + "' is " + b->dtype + " of " + std::to_string(b->shape.size()) +
             "-D shape with " + std::to_string(b->numel) + " elements; a layer's bias must be " +
             std::to_string(n) + " floats (F32/F16/BF16)");
        continue;
      }
      job.bias = bias;
    }
    if (!a.calib.empty()) {
      const auto it = calib.find(job.layer);
      if (it == calib.end()) {
        warnings->push_back("layer '" + shown(job.layer) + "' has no statistics in --calib '" +
                            shown(a.calib) + "': it is quantized data-free");
      } else {
        job.stats = &it->second;
        if (job.stats->channels() != k)
          return Status(svdq::StatusCode::kErrorShape,
                        "the statistics of layer '" + shown(job.layer) + "' in --calib have " +
                            std::to_string(job.stats->channels()) +
                            " channels, the weight has in_features " + std::to_string(k));
        if (a.plus && job.stats->sampled_rows() == 0)
          return Status(svdq::StatusCode::kErrorInvalidArgument,
                        "--plus scores candidates on sampled rows, but the statistics of layer '" +
                            shown(job.layer) + "' in '" + shown(a.calib) +
                            "' hold none (made with `svdq calibrate --max-rows 0`?); rerun "
                            "calibrate with --max-rows > 0 or drop --plus");
      }
    }
    jobs->push_back(std::move(job));
  }
  if (long_names > 0)
    warnings->push_back(std::to_string(long_names) + " tensor name(s) longer than " +
                        std::to_string(kMaxMatchedNameBytes) +
                        " bytes are not matched against --include and are copied unchanged");
  for (const auto& [layer, st] : calib)
    if (layers.count(layer) == 0)
      warnings->push_back("--calib has statistics of '" + shown(layer) +
                          "', which is not a quantized layer here (unused)");
  return Status::Ok();
}

/// Input metadata is copied, except keys in svdq's own namespace "svdq.": stale or forged layer
/// descriptions must never shadow the ones this run writes.
void copy_metadata(const svdq::SafetensorsFile& model, svdq::SafetensorsWriter* writer) {
  for (const auto& [key, value] : model.metadata()) {
    if (key.rfind("svdq.", 0) == 0) {
      warn("input metadata key '" + shown(key) + "' is in svdq's namespace: dropped");
      continue;
    }
    (void)writer->set_metadata(key, value);
  }
}

int cmd_quantize(const QuantizeArgs& a) {
  const auto t_all = std::chrono::steady_clock::now();
  if (a.threads > 0) omp_set_num_threads(a.threads);
  auto format = svdq::parse_format(a.format);
  if (!format.ok()) return fail(format.status());
  if (a.plus && a.calib.empty())
    return fail("--plus needs --calib (svdq-plus scores and refines on calibration rows)");
  if (a.rotate && a.layout == "nunchaku")
    return fail("--rotate with --layout nunchaku: Nunchaku's kernels do not rotate activations; "
                "drop --rotate (--plus does not rotate layers for --layout nunchaku)");
  if (Status st = check_input_file(a.model, "model"); !st.ok()) return fail(st);
  if (!a.calib.empty())
    if (Status st = check_input_file(a.calib, "--calib"); !st.ok()) return fail(st);
  if (Status st = check_output_path(a.output, {a.model, a.calib}); !st.ok()) return fail(st);
  auto model = svdq::SafetensorsFile::open(a.model);
  if (!model.ok()) return fail(model.status());
  std::map<std::string, svdq::ActivationStats> calib;
  std::map<std::string, std::string> calib_rows;  // fingerprints of the calibration rows (svdq eval)
  if (!a.calib.empty()) {
    auto c = svdq::load_calibration(a.calib);
    if (!c.ok()) return fail(c.status());
    calib = std::move(*c);
    if (calib.empty())
      return fail("--calib '" + shown(a.calib) +
                  "' holds no calibration statistics (no 'svdq.calib.<layer>' metadata); is it a "
                  "rows file? Build statistics with `svdq calibrate ROWS -o STATS` first");
    if (auto f = svdq::SafetensorsFile::open(a.calib); f.ok())
      for (const auto& [key, value] : f->metadata())
        if (key.rfind("svdq.calib_rows.", 0) == 0) calib_rows[key] = value;
  }
  NameFilter filter;
  try {
    filter.include = std::regex(a.include);
    filter.has_exclude = !a.exclude.empty();
    if (filter.has_exclude) filter.exclude = std::regex(a.exclude);
  } catch (const std::regex_error& e) {
    return fail(std::string("--include/--exclude is not a valid regular expression: ") + e.what());
  }
  const int gs = svdq::group_size(*format);
  std::vector<Job> jobs;
  std::vector<std::string> skipped, warnings;
  if (Status st = plan_jobs(a, *model, calib, filter, gs, &jobs, &skipped, &warnings); !st.ok())
    return fail(st);

  std::printf("svdq quantize: %zu layer(s) of %s -> %s, %s rank %d%s\n", jobs.size(),
              shown(a.model).c_str(), shown(a.output).c_str(), a.format.c_str(), a.rank,
              a.plus ? ", svdq-plus" : "");
  if (a.calib.empty())
    std::printf("  no --calib: data-free quantization (no activation smoothing, alpha = beta = 0)\n");
  for (const std::string& s : skipped) std::printf("  skipped %s\n", s.c_str());
  for (const std::string& w : warnings) warn(w);
  if (jobs.empty()) return fail("no tensor of " + shown(a.model) + " matches --include and can be quantized");

  svdq::SafetensorsWriter writer;
  std::set<std::string> consumed;  // tensors replaced by a quantized layer
  int nunchaku_rank = 0;           // --layout nunchaku: the largest padded rank
  std::printf("  %-40s %-13s %-10s %-12s %8s\n", "layer", "shape (NxK)", "method", "relMSE(cal)", "time s");
  std::printf("  (relMSE(cal) = ||y_q - y||^2 / ||y||^2 on the calibration rows: optimistic; "
              "`svdq eval` measures held-out rows)\n");
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    progress(static_cast<int>(i), static_cast<int>(jobs.size()), shown(j.layer));
    const auto info = model->info(j.tensor);
    const int64_t n = info->shape[0], k = info->shape[1];
    auto w = model->read_float(j.tensor);
    if (!w.ok()) return fail(w.status());
    std::vector<float> bias;
    if (!j.bias.empty()) {
      auto b = model->read_float(j.bias);
      if (!b.ok()) return fail(b.status());
      bias = std::move(*b);
    }
    const svdq::ActivationStats* stats = j.stats;
    svdq::QuantConfig cfg;
    cfg.format = *format;
    cfg.rank = static_cast<int>(std::min<int64_t>(a.rank, std::min(n, k)));
    // Nunchaku stores int4 group scales in the model dtype; svdq's are fp16, which bf16 cannot
    // hold in general (add_nunchaku refuses such a layer), so an int4 Nunchaku file is by
    // default an f16 one.
    if (a.storage == "f16" ||
        (a.storage.empty() && a.layout == "nunchaku" && *format == svdq::Format::kInt4))
      cfg.storage = svdq::DType::kF16;
    std::string method = stats ? "svdquant" : "data-free";
    if (stats == nullptr) {
      cfg.alpha = cfg.beta = 0.0f;
    } else if (a.plus) {
      cfg = svdq::svdq_plus_config(cfg);  // plan_jobs made sure the statistics hold rows
      method = "svdq-plus";
    }
    // svdq_plus_config() compares rotated recipes for int4; Nunchaku's layout cannot hold a
    // rotated layer (add_nunchaku refuses it), and --no-rotate asks for none.
    if (a.rotate) cfg.rotate = true;
    if (a.no_rotate || a.layout == "nunchaku") cfg.rotate = false;
    if (cfg.rotate) method += "+rot";
    // Sub-progress of the search and refinements (svdq-plus): "<layer> <step>/<steps> <what>".
    cfg.progress = [&](int done, int total, const std::string& what) {
      progress(static_cast<int>(i), static_cast<int>(jobs.size()),
               j.layer + " " + std::to_string(done) + "/" + std::to_string(total) + " " + what);
    };
    const svdq::ConstMatrixRef wv = float_view(*w, n, k);
    const svdq::ConstMatrixRef bv = bias.empty() ? svdq::ConstMatrixRef() : float_view(bias, 1, n);
    auto q = svdq::quantize_linear(wv, bv, stats, cfg);
    if (!q.ok()) return fail("layer '" + shown(j.layer) + "': " + q.status().to_string());
    // Output error on the calibration rows, when there are some.
    std::string err = "-";
    if (stats != nullptr && stats->sampled_rows() > 0) {
      const int64_t m = stats->sampled_rows();
      std::vector<float> y(static_cast<size_t>(m * n));
      std::vector<double> ref;
      const auto x = float_view(stats->samples(), m, k);
      if (svdq::reference_forward(*q, x, svdq::MatrixView<float>(y.data(), m, n)).ok() &&
          svdq::dense_forward(x, wv, bv, &ref).ok()) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.4e",
                      svdq::relative_mse(svdq::MatrixView<const float>(y.data(), m, n),
                                         svdq::MatrixView<const double>(ref.data(), m, n)));
        err = buf;
      }
    }
    const double seconds = q->info.seconds;
    q->info.seconds = 0;  // same command, same file: the time is printed, never stored
    if (a.layout == "nunchaku") {
      // Nunchaku's layout, dtypes, padding and names, as `svdq convert --to nunchaku` writes it.
      // A layer Nunchaku feeds GELU(x) + 0.171875 unsigned gets that contract, bias folded.
      if (*format == svdq::Format::kInt4 && svdq::nunchaku_unsigned_by_name(j.layer)) {
        auto u = svdq::to_unsigned_activations(*q, svdq::kNunchakuGeluShift);
        if (!u.ok()) return fail("layer '" + shown(j.layer) + "': " + u.status().to_string());
        *q = std::move(*u);
      }
      if (Status st = svdq::add_nunchaku(writer, j.layer, *q); !st.ok()) return fail(st);
      nunchaku_rank = std::max(nunchaku_rank, (q->rank + 15) / 16 * 16);
    } else if (Status st = svdq::add_quantized(writer, j.layer, *q); !st.ok()) {
      return fail(st);
    }
    consumed.insert(j.tensor);
    if (!j.bias.empty()) consumed.insert(j.bias);
    progress_clear();
    std::printf("  %-40s %-13s %-10s %-12s %8.2f\n", shown(j.layer).c_str(),
                (std::to_string(n) + "x" + std::to_string(k)).c_str(), method.c_str(), err.c_str(),
                seconds);
    print_recipe(q->info);
    if (q->act_unsigned)
      std::printf("    unsigned activations (GELU(x) + %g, Nunchaku's fc2 contract), shift folded into the bias\n",
                  static_cast<double>(q->act_shift));
  }
  progress(static_cast<int>(jobs.size()), static_cast<int>(jobs.size()), "done");
  // Every other tensor is copied unchanged, streamed from the mapped input (no copy in memory).
  int copied = 0;
  for (const std::string& name : model->names()) {
    if (consumed.count(name)) continue;
    const auto info = model->info(name);
    if (Status st = writer.add_view(name, info->dtype, info->shape, info->data); !st.ok()) return fail(st);
    ++copied;
  }
  copy_metadata(*model, &writer);
  // The fingerprints of the calibration rows (from --calib), for `svdq eval`'s refusal.
  for (const auto& [key, value] : calib_rows) (void)writer.set_metadata(key, value);
  (void)writer.set_metadata("svdq.version", svdq::version_string());
  if (a.layout == "nunchaku")
    (void)writer.set_metadata("quantization_config",
                              svdq::nunchaku_quantization_config(*format, nunchaku_rank));
  if (Status st = write_output(writer, a.output); !st.ok()) return fail(st);
  std::printf("wrote %s: %zu quantized layer(s), %d tensor(s) copied unchanged, %.1f s\n",
              shown(a.output).c_str(), jobs.size(), copied, seconds_since(t_all));
  return 0;
}

// ----------------------------------------------------------------------------------------------
// svdq calibrate: rows of each layer's input (tensors "<layer><suffix>", [M, K]) -> statistics

// Rows are fed to ActivationStats in chunks of at most this many bytes, straight from the mapped
// file when its dtype and alignment allow: a 1 GiB rows tensor is never copied whole.
constexpr int64_t kRowChunkBytes = int64_t{64} << 20;

/// Folds one [M, K] rows tensor into stats, chunk by chunk (fixed chunk sizes: same file, same
/// statistics), and appends each row's fingerprint (svdq_cli::row_fingerprint of its fp32 values).
Status observe_rows(const svdq::TensorInfo& t, svdq::ActivationStats* stats,
                    std::vector<uint64_t>* fingerprints) {
  const int64_t m = t.shape[0], k = t.shape[1];
  const int64_t elem = svdq::safetensors_dtype_size(t.dtype);
  const int64_t chunk = std::max<int64_t>(1, kRowChunkBytes / std::max<int64_t>(1, k * 4));
  std::vector<float> buf;
  for (int64_t r0 = 0; r0 < m; r0 += chunk) {
    const int64_t rows = std::min(chunk, m - r0);
    const uint8_t* p = t.data.data() + r0 * k * elem;
    svdq::ConstMatrixRef view;
    const bool aligned = reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(elem) == 0;
    if (aligned && (t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16")) {
      const svdq::DType dt = t.dtype == "F32" ? svdq::DType::kF32
                             : t.dtype == "F16" ? svdq::DType::kF16 : svdq::DType::kBF16;
      view = svdq::ConstMatrixRef(p, dt, rows, k, k);
    } else {  // unaligned or F8_E4M3: convert this chunk only
      buf.resize(static_cast<size_t>(rows * k));
      for (int64_t i = 0; i < rows * k; ++i) {
        if (t.dtype == "F32") {
          std::memcpy(&buf[i], p + 4 * i, 4);
        } else if (t.dtype == "F8_E4M3") {
          buf[i] = svdq::decode_e4m3(p[i]);
        } else {
          uint16_t b;
          std::memcpy(&b, p + 2 * i, 2);
          buf[i] = t.dtype == "F16" ? svdq::half_bits_to_float(b) : svdq::bf16_bits_to_float(b);
        }
      }
      view = float_view(buf, rows, k);
    }
    SVDQ_RETURN_IF_ERROR(stats->observe(view));
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* q = p + r * k * elem;
      for (int64_t i = 0; i < k; ++i) {
        if (t.dtype == "F32") {
          std::memcpy(&row[i], q + 4 * i, 4);
        } else if (t.dtype == "F8_E4M3") {
          row[i] = svdq::decode_e4m3(q[i]);
        } else {
          uint16_t b;
          std::memcpy(&b, q + 2 * i, 2);
          row[i] = t.dtype == "F16" ? svdq::half_bits_to_float(b) : svdq::bf16_bits_to_float(b);
        }
      }
      fingerprints->push_back(svdq_cli::row_fingerprint(row.data(), k));
    }
  }
  return Status::Ok();
}

int cmd_calibrate(const std::vector<std::string>& inputs, const std::string& output,
                  const std::string& suffix, int64_t max_rows, bool gram) {
  std::map<std::string, std::vector<uint64_t>> fingerprints;  // per layer, for `svdq eval`
  svdq::CalibrationOptions opt;
  opt.max_rows = max_rows;
  opt.accumulate_gram = gram;
  for (const std::string& path : inputs)
    if (Status st = check_input_file(path, "rows file"); !st.ok()) return fail(st);
  if (Status st = check_output_path(output, inputs); !st.ok()) return fail(st);
  std::vector<svdq::SafetensorsFile> files;
  // First pass, headers only: which layers, K, rows; the memory the statistics will take is
  // checked before anything is allocated.
  struct LayerPlan {
    int64_t k = 0, rows = 0;
  };
  std::map<std::string, LayerPlan> plan;
  for (const std::string& path : inputs) {
    auto file = svdq::SafetensorsFile::open(path);
    if (!file.ok()) return fail(file.status());
    for (const std::string& name : file->names()) {
      if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const auto info = file->info(name);
      if (info->shape.size() != 2)
        return fail("'" + shown(name) + "' must be a 2-D [rows, in_features] tensor");
      if (!is_float_dtype(info->dtype) && info->dtype != "F8_E4M3")
        return fail("'" + shown(name) + "' has dtype " + info->dtype + "; rows must be F32, F16, BF16 or F8_E4M3");
      if (info->shape[1] == 0) return fail("'" + shown(name) + "' has 0 columns (in_features)");
      const std::string layer = name.substr(0, name.size() - suffix.size());
      LayerPlan& lp = plan[layer];
      if (lp.k != 0 && lp.k != info->shape[1])
        return fail("'" + shown(name) + "' has " + std::to_string(info->shape[1]) +
                    " columns, an earlier rows tensor of layer '" + shown(layer) + "' has " +
                    std::to_string(lp.k));
      lp.k = info->shape[1];
      lp.rows += info->shape[0];
    }
    files.push_back(std::move(*file));
  }
  if (plan.empty()) return fail("no tensor named '<layer>" + shown(suffix) + "' in the input file(s)");
  double need = 0;
  for (const auto& [layer, lp] : plan) {
    const double k = static_cast<double>(lp.k);
    need += 4.0 * k + 4.0 * k * static_cast<double>(std::min(max_rows, lp.rows)) + (gram ? 8.0 * k * k : 0.0);
  }
  if (Status st = check_memory(need, std::string("the statistics (--max-rows ") + std::to_string(max_rows) +
                                         (gram ? ", --gram" : "") + ")");
      !st.ok())
    return fail(st.message() + "; lower --max-rows" + (gram ? " or drop --gram" : ""));

  std::map<std::string, svdq::ActivationStats> layers;
  for (const svdq::SafetensorsFile& file : files) {
    for (const std::string& name : file.names()) {
      if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const auto info = file.info(name);
      const std::string layer = name.substr(0, name.size() - suffix.size());
      auto [it, fresh] = layers.try_emplace(layer, info->shape[1], opt);
      if (Status st = observe_rows(*info, &it->second, &fingerprints[layer]); !st.ok())
        return fail("'" + shown(layer) + "': " + st.to_string());
    }
  }
  std::map<std::string, std::string> meta;
  for (auto& [layer, h] : fingerprints) meta[svdq_cli::calib_rows_key(layer)] = svdq_cli::encode_fingerprints(h);
  if (Status st = svdq::save_calibration(output, layers, meta); !st.ok()) return fail(st);
  for (const auto& [name, st] : layers)
    std::printf("  %-40s K=%-6lld rows=%-8lld sampled=%lld\n", shown(name).c_str(),
                static_cast<long long>(st.channels()), static_cast<long long>(st.rows_observed()),
                static_cast<long long>(st.sampled_rows()));
  std::printf("wrote %s: statistics of %zu layer(s)\n", shown(output).c_str(), layers.size());
  return 0;
}

// ----------------------------------------------------------------------------------------------
// svdq inspect

int cmd_inspect(const std::string& path) {
  if (Status st = check_input_file(path, "file"); !st.ok()) return fail(st);
  auto file = svdq::SafetensorsFile::open(path);
  if (!file.ok()) return fail(file.status());
  auto layers = svdq::quantized_layers(*file);
  if (!layers.ok()) return fail(layers.status());
  std::printf("%s: %lld bytes, %zu tensors, %zu quantized layer(s)\n", shown(path).c_str(),
              static_cast<long long>(file->file_size()), file->names().size(), layers->size());
  if (auto v = file->metadata().find("svdq.version"); v != file->metadata().end())
    std::printf("written by svdq %s\n", shown(v->second).c_str());
  int64_t q_bytes = 0, q_weights = 0;
  if (!layers->empty())
    std::printf("  %-40s %-6s %-6s %-5s %-5s %-13s %12s %8s %8s\n", "layer", "format", "group", "rank",
                "dtype", "shape (NxK)", "bytes", "bits/w", "vs bf16");
  for (const std::string& name : *layers) {
    auto q = svdq::load_quantized(*file, name);
    if (!q.ok()) return fail("layer '" + shown(name) + "': " + q.status().to_string());
    const int64_t weights = q->in_features * q->out_features;
    q_bytes += q->size_bytes();
    q_weights += weights;
    std::printf("  %-40s %-6s %-6d %-5d %-5s %-13s %12lld %8.3f %7.2fx\n", shown(name).c_str(),
                svdq::format_name(q->format), q->group, q->rank, svdq::dtype_name(q->storage),
                (std::to_string(q->out_features) + "x" + std::to_string(q->in_features)).c_str(),
                static_cast<long long>(q->size_bytes()), q->bits_per_weight(),
                2.0 * static_cast<double>(weights) / static_cast<double>(q->size_bytes()));
    if (q->rotation != svdq::Rotation::kNone)
      std::printf("    rotation %s\n", svdq::rotation_name(q->rotation));
    print_recipe(q->info);
    if (q->act_unsigned)  // format 2.0 variants (docs/formats.md §6.1, §6.2)
      std::printf("    activations: unsigned 4-bit of (x + %g) / s (Nunchaku GELU-fed layer)\n",
                  static_cast<double>(q->act_shift));
    if (!q->wcscales.empty()) std::printf("    weights: per-channel wcscales (nvfp4)\n");
  }
  if (q_weights > 0)
    std::printf("quantized layers: %lld weights in %lld bytes = %.3f bits per weight\n",
                static_cast<long long>(q_weights), static_cast<long long>(q_bytes),
                8.0 * static_cast<double>(q_bytes) / static_cast<double>(q_weights));
  return 0;
}

// ----------------------------------------------------------------------------------------------
// svdq bench: the layer forward on a synthetic or loaded layer; the CPU reference forward against
// the unquantized layer, or with --gpu the GPU layer against cuBLAS BF16 (cli/bench_gpu.cpp).

struct BenchArgs {
  int64_t k = 3072, n = 3072;
  std::vector<int64_t> ms{256};
  std::string format = "int4", quantized, layer;
  int rank = 32, repeats = 3;
  bool gpu = false;
};

/// The layer of --quantized: --layer, or the file's only quantized layer.
svdq::Result<svdq::QuantizedLinear> load_bench_layer(const BenchArgs& a, std::string* name) {
  SVDQ_RETURN_IF_ERROR(check_input_file(a.quantized, "--quantized"));
  auto file = svdq::SafetensorsFile::open(a.quantized);
  if (!file.ok()) return file.status();
  auto layers = svdq::quantized_layers(*file);
  if (!layers.ok()) return layers.status();
  if (layers->empty())
    return Status(svdq::StatusCode::kErrorInvalidArgument,
                  "--quantized '" + shown(a.quantized) + "' holds no quantized layer (svdq inspect lists them)");
  if (a.layer.empty() && layers->size() > 1) {
    std::string list;
    for (size_t i = 0; i < layers->size() && i < 8; ++i) list += (i ? ", " : "") + shown((*layers)[i]);
    return Status(svdq::StatusCode::kErrorInvalidArgument,
                  "--quantized '" + shown(a.quantized) + "' holds " + std::to_string(layers->size()) +
                      " quantized layers: choose one with --layer (" + list + (layers->size() > 8 ? ", ..." : "") + ")");
  }
  *name = a.layer.empty() ? layers->front() : a.layer;
  if (std::find(layers->begin(), layers->end(), *name) == layers->end())
    return Status(svdq::StatusCode::kErrorInvalidArgument,
                  "--layer '" + shown(*name) + "' is not a quantized layer of '" + shown(a.quantized) +
                      "' (svdq inspect lists them)");
  return svdq::load_quantized(*file, *name);
}

/// Rows of an M-row batch whose GPU output is compared with the CPU reference: the first and the
/// last 64 (the first and the last M tile), all of them when M <= 128.
std::vector<int64_t> checked_rows(int64_t m) {
  std::vector<int64_t> rows;
  for (int64_t r = 0; r < m; ++r)
    if (r < 64 || r >= m - 64) rows.push_back(r);
  return rows;
}

// The GPU layer's output against the CPU reference on the same bf16 rows: docs/gpu.md's bound.
constexpr double kGpuVsCpuBound = 1e-3;

int bench_gpu(const BenchArgs& a, const svdq::QuantizedLinear& q, const std::string& what,
              const svdq::synth::Layer& synth, bool stand_in_weight, const std::vector<float>& x,
              const std::string& device) {
  const int64_t k = q.in_features, n = q.out_features;
  const int64_t max_m = *std::max_element(a.ms.begin(), a.ms.end());
  std::vector<uint16_t> xb(static_cast<size_t>(max_m * k)), wb(synth.weight.size());
  for (size_t i = 0; i < xb.size(); ++i) xb[i] = svdq::float_to_bits16(x[i], svdq::DType::kBF16);
  for (size_t i = 0; i < wb.size(); ++i) wb[i] = svdq::float_to_bits16(synth.weight[i], svdq::DType::kBF16);
  std::printf("svdq bench --gpu: %s\n  layer: %s, bf16 activations (synthetic rows)\n", device.c_str(), what.c_str());
  std::printf("  per launch: median [min, max] of %d CUDA-graph replays timed with CUDA events after 3 warm-up "
              "replays, inputs, outputs and weights rotated over copies > 2x L2\n"
              "  svdq: GpuLinear::forward (both kernels, bias included); cuBLAS: GemmEx bf16 x bf16 -> bf16, "
              "fp32 compute, no bias%s\n"
              "  speedup = cuBLAS time / svdq time; err vs CPU: relative error of the GPU output against "
              "reference_forward on the first and last 64 rows (bound %.0e)%s\n",
              a.repeats, stand_in_weight ? ", on a stand-in weight of the same shape (timing only)" : "",
              kGpuVsCpuBound, stand_in_weight ? "" : "; vs bf16: against cuBLAS BF16 of the unquantized layer + bias");
  std::printf("  %7s %24s %8s %24s %8s %8s %5s %11s %10s\n", "M", "svdq us", "TFLOP/s", "cuBLAS us", "TFLOP/s",
              "speedup", "sets", "err vs CPU", "vs bf16");
  std::vector<std::string> failures;
  std::vector<svdq::GpuLinear> uploaded;  // copies of q on the GPU, reused for every M
  for (const int64_t m : a.ms) {
    const std::vector<int64_t> rows = checked_rows(m);
    svdq_cli::GpuBenchRun run;
    if (Status st = svdq_cli::gpu_bench_run(q, wb, xb, m, a.repeats, rows, &uploaded, &run); !st.ok())
      return fail("M=" + std::to_string(m) + ": " + st.to_string());
    // The CPU reference on the same bf16 rows, output bf16 like the GPU's.
    const int64_t c = static_cast<int64_t>(rows.size());
    std::vector<svdq::bfloat16_t> xr(static_cast<size_t>(c * k)), yr(static_cast<size_t>(c * n));
    for (int64_t i = 0; i < c; ++i)
      for (int64_t j = 0; j < k; ++j) xr[i * k + j].bits = xb[rows[i] * k + j];
    if (Status st = svdq::reference_forward(q, svdq::MatrixView<const svdq::bfloat16_t>(xr.data(), c, k),
                                            svdq::MatrixView<svdq::bfloat16_t>(yr.data(), c, n));
        !st.ok())
      return fail(st);
    const svdq::ConstMatrixRef gpu_rows(run.y_svdq.data(), svdq::DType::kBF16, c, n, n);
    const double err_cpu = svdq::relative_error(gpu_rows, svdq::MatrixView<const svdq::bfloat16_t>(yr.data(), c, n));
    char vs_bf16[32] = "-";
    if (!stand_in_weight) {
      std::vector<float> dense(static_cast<size_t>(c * n));
      for (int64_t i = 0; i < c; ++i)
        for (int64_t j = 0; j < n; ++j)
          dense[i * n + j] = svdq::bits16_to_float(run.y_cublas[i * n + j], svdq::DType::kBF16) + synth.bias[j];
      std::snprintf(vs_bf16, sizeof vs_bf16, "%.3e", svdq::relative_error(gpu_rows, float_view(dense, c, n)));
    }
    const double flop = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    const auto us = [](const svdq_cli::GpuTime& t) {
      char b[64];
      std::snprintf(b, sizeof b, "%.2f [%.2f, %.2f]", t.median_s * 1e6, t.min_s * 1e6, t.max_s * 1e6);
      return std::string(b);
    };
    std::printf("  %7lld %24s %8.2f %24s %8.2f %7.2fx %5d %11.3e %10s\n", static_cast<long long>(m),
                us(run.svdq).c_str(), flop / run.svdq.median_s * 1e-12, us(run.cublas).c_str(),
                flop / run.cublas.median_s * 1e-12, run.cublas.median_s / run.svdq.median_s, run.sets, err_cpu,
                vs_bf16);
    std::fflush(stdout);
    if (!(err_cpu <= kGpuVsCpuBound))
      failures.push_back("M=" + std::to_string(m) + ": " + std::to_string(err_cpu));
  }
  if (!failures.empty()) {
    std::string list;
    for (const auto& f : failures) list += (list.empty() ? "" : ", ") + f;
    return fail("the GPU layer's output departs from the CPU reference by more than the bound 1e-3 "
                "(docs/gpu.md): " + list);
  }
  return 0;
}

int cmd_bench(const BenchArgs& a) {
  if (a.ms.empty()) return fail("-m/--tokens needs at least one token count");
  std::string device;
  // Before any work: can --gpu run here at all (build, driver, device, cuBLAS)?
  if (a.gpu)
    if (Status st = svdq_cli::gpu_bench_probe(&device); !st.ok()) return fail(st);
  svdq::QuantizedLinear q;
  std::string what, layer_name;
  int64_t k = a.k, n = a.n;
  if (!a.quantized.empty()) {
    auto loaded = load_bench_layer(a, &layer_name);
    if (!loaded.ok()) return fail(loaded.status());
    q = std::move(*loaded);
    k = q.in_features;
    n = q.out_features;
  }
  const int64_t max_m = *std::max_element(a.ms.begin(), a.ms.end());
  // W and about eight N x K working copies in the quantizer, the rows, y (float) and ref (double).
  const double kd = static_cast<double>(k), nd = static_cast<double>(n), md = static_cast<double>(max_m);
  if (Status st = check_memory(4.0 * 9.0 * nd * kd + 4.0 * (md + 256.0) * kd + 12.0 * md * nd,
                               "bench -k " + std::to_string(k) + " -n " + std::to_string(n) +
                                   " -m " + std::to_string(max_m));
      !st.ok())
    return fail(st);
  // The synthetic layer: the layer itself, or with --quantized the activation model of its rows
  // and a stand-in weight of the same shape for the dense baseline.
  svdq::synth::LayerSpec spec;
  spec.in_features = k;
  spec.out_features = n;
  auto layer = svdq::synth::make_layer(spec);
  if (!layer.ok()) return fail(layer.status());
  const auto w = float_view(layer->weight, n, k);
  const auto b = float_view(layer->bias, 1, n);
  if (a.quantized.empty()) {
    auto format = svdq::parse_format(a.format);
    if (!format.ok()) return fail(format.status());
    const auto calib = svdq::synth::make_activations(*layer, 256, 1);
    svdq::ActivationStats stats;
    if (Status st = stats.observe(float_view(calib, 256, k)); !st.ok()) return fail(st);
    svdq::QuantConfig cfg;
    cfg.format = *format;
    cfg.rank = a.rank;
    auto made = svdq::quantize_linear(w, b, &stats, cfg);
    if (!made.ok()) return fail(made.status());
    q = std::move(*made);
    char buf[160];
    std::snprintf(buf, sizeof buf, "synthetic %s K=%lld N=%lld rank %d (quantized in %.3f s)", a.format.c_str(),
                  static_cast<long long>(k), static_cast<long long>(n), q.rank, q.info.seconds);
    what = buf;
  } else {
    what = "'" + shown(layer_name) + "' of " + shown(a.quantized) + ": " + svdq::format_name(q.format) +
           " K=" + std::to_string(k) + " N=" + std::to_string(n) + " rank " + std::to_string(q.rank);
  }
  const auto x = svdq::synth::make_activations(*layer, max_m, 2);
  if (x.empty()) return fail("could not draw " + std::to_string(max_m) + " synthetic rows of " + std::to_string(k));
  if (a.gpu) return bench_gpu(a, q, what, *layer, !a.quantized.empty(), x, device);

  std::printf("svdq bench (CPU reference forward; --gpu times the GPU layer): %s\n", what.c_str());
  for (const int64_t m : a.ms) {
    std::vector<float> y(static_cast<size_t>(m * n));
    std::vector<double> times;
    for (int r = 0; r < a.repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      if (Status st = svdq::reference_forward(q, float_view(x, m, k), svdq::MatrixView<float>(y.data(), m, n)); !st.ok())
        return fail(st);
      times.push_back(seconds_since(t0));
    }
    std::sort(times.begin(), times.end());
    const double med = times[times.size() / 2];
    std::printf("  M=%lld: forward median %.4f s over %d run(s), %.2f GFLOP/s", static_cast<long long>(m), med,
                a.repeats, 2.0 * static_cast<double>(m) * nd * kd / med * 1e-9);
    if (a.quantized.empty()) {
      std::vector<double> ref;
      if (Status st = svdq::dense_forward(float_view(x, m, k), w, b, &ref); !st.ok()) return fail(st);
      const auto yv = svdq::MatrixView<const float>(y.data(), m, n);
      const auto rv = svdq::MatrixView<const double>(ref.data(), m, n);
      std::printf(" | rel. error %.5f, SQNR %.2f dB vs the unquantized layer", svdq::relative_error(yv, rv),
                  svdq::sqnr_db(yv, rv));
    }
    std::printf("\n");
  }
  return 0;
}

// libgomp's default wait policy spins at every barrier before sleeping. On a busy machine a
// thread that waits for a descheduled one burns its time slice spinning: the CLI ran 3-5x slower
// with the default thread count than with --threads 1 (~60% of samples inside libgomp). The
// policy is read once when libgomp loads, so the tool re-executes itself once with
// OMP_WAIT_POLICY=PASSIVE unless the user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT).
void prefer_passive_omp_waits(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: then run on with the default policy
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_omp_waits(argv);
  CLI::App app{"svdq: SVDQuant-style W4A4 quantization of linear layers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(svdq::version_string()));

  QuantizeArgs qa;
  auto* quantize = app.add_subcommand("quantize", "quantize every matching 2-D weight of a safetensors model");
  quantize->add_option("model", qa.model, "input model (.safetensors)")->required()->check(CLI::ExistingFile);
  quantize->add_option("-o,--output", qa.output, "output file (.safetensors)")->required();
  quantize->add_option("--calib", qa.calib, "calibration statistics from `svdq calibrate` (else data-free)")
      ->check(CLI::ExistingFile);
  quantize->add_option("--format", qa.format, "int4 or nvfp4")->check(CLI::IsMember({"int4", "nvfp4"}))
      ->capture_default_str();
  quantize->add_option("--rank", qa.rank, "low-rank branch rank")->check(CLI::Range(0, 4096))->capture_default_str();
  quantize->add_option("--include", qa.include, "regex of weight tensors to quantize")->capture_default_str();
  quantize->add_option("--exclude", qa.exclude, "regex of weight tensors to leave unchanged");
  quantize->add_option("--threads", qa.threads, "CPU threads (default: all)")->check(CLI::Range(1, 1024));
  quantize->add_flag("--plus", qa.plus, "svdq-plus (search and refinements; needs sampled calibration rows)");
  quantize->add_option("--layout", qa.layout,
                       "svdq (canonical) or nunchaku (Nunchaku's packed tensors and quantization_config)")
      ->check(CLI::IsMember({"svdq", "nunchaku"}))
      ->capture_default_str();
  quantize->add_option("--storage", qa.storage,
                       "dtype of smooth, lora and bias: f16 or bf16 (default bf16; f16 for --layout "
                       "nunchaku --format int4)")
      ->check(CLI::IsMember({"f16", "bf16"}));
  auto* rot_flag = quantize->add_flag(
      "--rotate", qa.rotate,
      "block-Hadamard rotation inside each quantization group (with --plus: compared with the "
      "unrotated recipes; --plus --format int4 does this by default)");
  quantize->add_flag("--no-rotate", qa.no_rotate,
                     "never rotate (--plus --format int4 otherwise compares rotated recipes; "
                     "implied by --layout nunchaku)")
      ->excludes(rot_flag);

  std::vector<std::string> calib_inputs;
  std::string calib_out, calib_suffix = ".inputs";
  int64_t calib_rows = 512;
  bool calib_gram = false;
  auto* calibrate = app.add_subcommand(
      "calibrate", "build calibration statistics from recorded input rows ('<layer>.inputs' [M, K] tensors)");
  calibrate->add_option("rows", calib_inputs, "safetensors file(s) of input rows")->required()->check(CLI::ExistingFile);
  calibrate->add_option("-o,--output", calib_out, "statistics file to write")->required();
  calibrate->add_option("--suffix", calib_suffix, "tensor name suffix of the row tensors")->capture_default_str();
  calibrate->add_option("--max-rows", calib_rows, "rows kept per layer for scoring")->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  calibrate->add_flag("--gram", calib_gram, "also accumulate X^T X (K^2 doubles per layer)");

  std::string inspect_path;
  auto* inspect = app.add_subcommand("inspect", "describe a quantized file: layers, formats, ranks, sizes");
  inspect->add_option("file", inspect_path, "a .safetensors file written by svdq")->required()->check(CLI::ExistingFile);

  BenchArgs ba;
  auto* bench = app.add_subcommand(
      "bench", "time the layer forward (synthetic or --quantized layer): the CPU reference against the "
               "unquantized layer, or with --gpu the GPU layer against cuBLAS BF16");
  auto* ok = bench->add_option("-k,--in", ba.k, "in_features K")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  auto* on = bench->add_option("-n,--out", ba.n, "out_features N")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  bench->add_option("-m,--tokens", ba.ms, "tokens M (a comma-separated list times each)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->delimiter(',')->capture_default_str();
  auto* of = bench->add_option("--format", ba.format, "int4 or nvfp4")->check(CLI::IsMember({"int4", "nvfp4"}))->capture_default_str();
  auto* orank = bench->add_option("--rank", ba.rank, "low-rank branch rank")->check(CLI::Range(0, 4096))->capture_default_str();
  auto* oreps = bench->add_option("--repeats", ba.repeats, "timed runs (median reported; --gpu: timed graph replays, default 20)")
      ->check(CLI::Range(1, 1000))->capture_default_str();
  bench->add_flag("--gpu", ba.gpu, "time the GPU layer (svdq::GpuLinear) against cuBLAS BF16 (needs a CUDA build and a GPU)");
  auto* oq = bench->add_option("--quantized", ba.quantized, "time a layer of this svdq checkpoint instead of a synthetic one")
      ->check(CLI::ExistingFile);
  oq->excludes(ok)->excludes(on)->excludes(of)->excludes(orank);
  bench->add_option("--layer", ba.layer, "the layer of --quantized (default: its only one)")->needs(oq);

  auto run_convert = svdq_cli::register_convert(app);
  const auto run_eval = svdq_cli::add_eval_command(app);
  CLI11_PARSE(app, argc, argv);
  // The library returns Status for every failure; this is the last resort for the tool's own
  // allocations (an exception must never escape main and abort).
  try {
    if (const int rc = run_eval(); rc >= 0) return rc;
    if (app.got_subcommand("convert")) return run_convert();
    if (*quantize) return cmd_quantize(qa);
    if (*calibrate) return cmd_calibrate(calib_inputs, calib_out, calib_suffix, calib_rows, calib_gram);
    if (*inspect) return cmd_inspect(inspect_path);
    if (*bench) {
      if (ba.gpu && oreps->count() == 0) ba.repeats = 20;  // replays are cheap on a GPU
      return cmd_bench(ba);
    }
  } catch (const std::bad_alloc&) {
    return fail("out of memory (the sizes asked for do not fit this machine)");
  } catch (const std::exception& e) {
    return fail(std::string("unexpected failure: ") + e.what());
  }
  return 0;
}
