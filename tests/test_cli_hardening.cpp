// The svdq command under hostile files, hostile paths and misuse (issue 10): every case runs the
// real binary (SVDQ_CLI_PATH) in a child process on files built here with SafetensorsWriter, and
// checks its exit status, its messages, and that what it wrote loads with svdq's own loader.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "svdq/calibration.hpp"
#include "svdq/checkpoint.hpp"
#include "svdq/synth.hpp"

namespace {

using namespace svdq;
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("svdq_test_cli_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct CliRun {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string out, err;
  long max_rss_kib = 0;
};

/// Runs svdq with args in a child (stdout/stderr to files), optionally with a file-size limit,
/// killed after timeout_s seconds (alarm). rusage is the child's own (wait4).
CliRun run_svdq(const TempDir& dir, const std::vector<std::string>& args, int timeout_s = 120,
             long fsize_limit = -1) {
  const std::string out = dir.file(".stdout"), err = dir.file(".stderr");
  const pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
    if (fsize_limit >= 0) {
      struct rlimit lim {};
      getrlimit(RLIMIT_FSIZE, &lim);
      lim.rlim_cur = static_cast<rlim_t>(fsize_limit);
      setrlimit(RLIMIT_FSIZE, &lim);
    }
    alarm(static_cast<unsigned>(timeout_s));  // survives exec: a hang ends as SIGALRM
    std::vector<char*> argv;
    std::string bin = SVDQ_CLI_PATH;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  CliRun r;
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.max_rss_kib = ru.ru_maxrss;
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

/// A synthetic [n, k] weight as F32 bytes.
std::vector<uint8_t> weight(int64_t n, int64_t k, uint64_t seed = 1) {
  synth::LayerSpec spec;
  spec.in_features = k;
  spec.out_features = n;
  spec.seed = seed;
  spec.spectrum_rank = static_cast<int>(std::min<int64_t>(16, std::min(n, k)));
  spec.weight_outlier_columns = 2;
  spec.act_outlier_channels = 2;
  auto l = synth::make_layer(spec);
  EXPECT_TRUE(l.ok()) << l.status().to_string();
  return l.ok() ? f32_bytes(l->weight) : std::vector<uint8_t>(static_cast<size_t>(n * k * 4));
}

void write_file(const SafetensorsWriter& w, const std::string& path) {
  const Status s = w.write(path);
  ASSERT_TRUE(s.ok()) << s.to_string();
}

/// A small model: "a.weight" [64, 128] F32 and "b.weight" [32, 64] with "b.bias" [32].
std::string small_model(const TempDir& dir) {
  SafetensorsWriter w;
  EXPECT_TRUE(w.add("a.weight", "F32", {64, 128}, weight(64, 128)).ok());
  EXPECT_TRUE(w.add("b.weight", "F32", {32, 64}, weight(32, 64, 2)).ok());
  EXPECT_TRUE(w.add("b.bias", "F32", {32}, f32_bytes(std::vector<float>(32, 0.5f))).ok());
  const std::string path = dir.file("model.safetensors");
  write_file(w, path);
  return path;
}

// ---- item 1: long names -----------------------------------------------------------------------

TEST(CliHardening, AHugeTensorNameDoesNotCrashTheMatcher) {
  // A 200k-character name overflowed std::regex's stack. The writer refuses such names now
  // (kSafetensorsMaxNameBytes), so the file is built by hand: the reader must refuse it with a
  // clear message, and neither quantize nor inspect may crash or hang.
  TempDir dir;
  const std::string huge(200000, 'x');
  const std::string header = "{\"" + huge + ".weight\":{\"dtype\":\"F32\",\"shape\":[1,64],"
                             "\"data_offsets\":[0,256]}}";
  std::string file(8, '\0');
  uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  file += header;
  file += std::string(256, '\0');
  const std::string path = dir.file("m.safetensors");
  std::ofstream(path, std::ios::binary).write(file.data(), static_cast<std::streamsize>(file.size()));
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"quantize", path, "-o", dir.file("q.safetensors"), "--rank", "8"}, {"inspect", path}}) {
    const CliRun r = run_svdq(dir, args, 60);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": signal " << r.signal << "\n" << r.out << r.err;
    EXPECT_TRUE(has(r.err, "over the limit of 1024 bytes")) << r.err;
  }
}

// ---- item 2: FIFOs ----------------------------------------------------------------------------

TEST(CliHardening, FifoInputsAreRefusedWithoutHanging) {
  TempDir dir;
  const std::string fifo = dir.file("fifo"), model = small_model(dir);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"inspect", fifo},
           {"quantize", fifo, "-o", dir.file("q.safetensors")},
           {"calibrate", fifo, "-o", dir.file("c.safetensors")},
           {"quantize", model, "-o", dir.file("q.safetensors"), "--calib", fifo}}) {
    const CliRun r = run_svdq(dir, args, 20);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": signal " << r.signal << " (SIGALRM = hung)\n" << r.err;
    EXPECT_TRUE(has(r.err, "not a regular file")) << r.err;
  }
}

// ---- item 3: sizes ----------------------------------------------------------------------------

TEST(CliHardening, ImpossibleSizesAreClearErrorsNotAborts) {
  TempDir dir;
  CliRun r = run_svdq(dir, {"bench", "-k", "1048576", "-n", "1048576"}, 60);
  EXPECT_EQ(r.exit_code, 1) << "signal " << r.signal << "\n" << r.err;
  EXPECT_TRUE(has(r.err, "more than this machine's")) << r.err;
  // A small rows file with a huge --max-rows: the reservation must follow the data (or fail with
  // a message); never an abort.
  SafetensorsWriter w;
  ASSERT_TRUE(w.add("l.inputs", "F32", {4, 4096}, f32_bytes(std::vector<float>(4 * 4096, 1.0f))).ok());
  write_file(w, dir.file("rows.safetensors"));
  r = run_svdq(dir, {"calibrate", dir.file("rows.safetensors"), "-o", dir.file("c.safetensors"),
                     "--max-rows", "1048576"}, 60);
  EXPECT_EQ(r.signal, 0) << r.err;
  EXPECT_TRUE(r.exit_code == 0 || (r.exit_code == 1 && has(r.err, "error"))) << r.err;
}

// ---- items 6, 9: output always loads -------------------------------------------------------------

TEST(CliHardening, OutputAlwaysLoadsAndInputMetadataNeverShadowsSvdqKeys) {
  TempDir dir;
  SafetensorsWriter w;
  ASSERT_TRUE(w.add("a.weight", "F32", {64, 128}, weight(64, 128)).ok());
  ASSERT_TRUE(w.add("a.bias", "F32", {32}, f32_bytes(std::vector<float>(32, 1.0f))).ok());  // wrong length
  ASSERT_TRUE(w.add("b.weight", "F32", {64, 128}, weight(64, 128, 3)).ok());
  ASSERT_TRUE(w.add("b.bias", "I32", {64}, std::vector<uint8_t>(256, 0)).ok());  // wrong dtype
  ASSERT_TRUE(w.add("c.weight", "F32", {48, 64}, weight(48, 64, 4)).ok());
  ASSERT_TRUE(w.add("c.bias", "F32", {48}, f32_bytes(std::vector<float>(48, 0.25f))).ok());  // good
  ASSERT_TRUE(w.add("d.weight", "F32", {32, 64}, weight(32, 64, 5)).ok());
  ASSERT_TRUE(w.add("d.smooth", "F32", {64}, f32_bytes(std::vector<float>(64, 1.0f))).ok());  // clash
  ASSERT_TRUE(w.add("e.weight", "F32", {0, 64}, {}).ok());  // empty: aborted the run before
  ASSERT_TRUE(w.add("f.weight", "F32", {16, 0}, {}).ok());
  ASSERT_TRUE(w.set_metadata("svdq.layer.c", R"({"format":"nvfp4"})").ok());  // forged
  ASSERT_TRUE(w.set_metadata("svdq.layer.ghost", R"({"format":"int4"})").ok());
  ASSERT_TRUE(w.set_metadata("author", "me").ok());
  write_file(w, dir.file("m.safetensors"));
  for (const char* format : {"int4", "nvfp4"}) {
    const std::string out = dir.file(std::string("q_") + format + ".safetensors");
    const CliRun r = run_svdq(dir, {"quantize", dir.file("m.safetensors"), "-o", out, "--format", format,
                                 "--rank", "8"});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_TRUE(has(r.out, "skipped a.weight (its bias")) << r.out;
    EXPECT_TRUE(has(r.out, "skipped b.weight (its bias")) << r.out;
    EXPECT_TRUE(has(r.out, "skipped d.weight (the input already has a tensor 'd.smooth'")) << r.out;
    EXPECT_TRUE(has(r.out, "skipped e.weight (empty weight [0, 64]")) << r.out;
    EXPECT_TRUE(has(r.out, "skipped f.weight (empty weight [16, 0]")) << r.out;
    EXPECT_TRUE(has(r.err, "'svdq.layer.ghost' is in svdq's namespace: dropped")) << r.err;
    auto f = SafetensorsFile::open(out);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    auto layers = quantized_layers(*f);
    ASSERT_TRUE(layers.ok());
    EXPECT_EQ(*layers, std::vector<std::string>{"c"});
    for (const std::string& l : *layers) {
      auto q = load_quantized(*f, l);
      ASSERT_TRUE(q.ok()) << q.status().to_string();
      EXPECT_EQ(format_name(q->format), std::string(format));
      EXPECT_EQ(q->bias.size(), 48u);
    }
    EXPECT_EQ(f->metadata().at("author"), "me");
    for (const char* kept : {"a.weight", "a.bias", "b.weight", "b.bias", "d.weight", "d.smooth", "e.weight"})
      EXPECT_TRUE(f->contains(kept)) << kept;
  }
}

// ---- item 10: silent fallbacks -------------------------------------------------------------------

TEST(CliHardening, SilentFallbacksBecomeErrorsOrWarnings) {
  TempDir dir;
  const std::string model = small_model(dir);
  SafetensorsWriter rows;
  const auto a_rows = f32_bytes(std::vector<float>(16 * 128, 0.5f));
  ASSERT_TRUE(rows.add("a.inputs", "F32", {16, 128}, a_rows).ok());
  write_file(rows, dir.file("rows.safetensors"));
  const std::string out = dir.file("q.safetensors");

  CliRun r = run_svdq(dir, {"quantize", model, "-o", out, "--calib", dir.file("rows.safetensors")});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "holds no calibration statistics")) << r.err;

  r = run_svdq(dir, {"quantize", model, "-o", out, "--plus"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "--plus needs --calib")) << r.err;

  r = run_svdq(dir, {"calibrate", dir.file("rows.safetensors"), "-o", dir.file("c0.safetensors"),
                     "--max-rows", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_svdq(dir, {"quantize", model, "-o", out, "--calib", dir.file("c0.safetensors"), "--plus"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "hold none")) << r.err;

  r = run_svdq(dir, {"calibrate", dir.file("rows.safetensors"), "-o", dir.file("c.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_svdq(dir, {"quantize", model, "-o", out, "--calib", dir.file("c.safetensors"), "--rank", "8"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "layer 'b' has no statistics in --calib")) << r.err;
  EXPECT_FALSE(fs::exists(out + ".tmp"));
}

// ---- items 11-14: output paths ---------------------------------------------------------------------

TEST(CliHardening, BadOutputPathsAreRefusedBeforeAnyWork) {
  TempDir dir;
  const std::string model = small_model(dir), fifo = dir.file("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // A link to /dev/null in our own directory: a broken svdq replaces the link, never /dev/null.
  const std::string devnull = dir.file("devnull");
  fs::create_symlink("/dev/null", devnull);
  struct Case {
    std::string out, needle;
  };
  for (const Case& c : {Case{fifo, "special file"}, Case{devnull, "special file"},
                        Case{model, "is the input file"},
                        Case{dir.file("no/such/dir/q.safetensors"), "cannot be created"}}) {
    const CliRun r = run_svdq(dir, {"quantize", model, "-o", c.out}, 20);
    EXPECT_EQ(r.exit_code, 1) << c.out << ": signal " << r.signal << "\n" << r.out << r.err;
    EXPECT_TRUE(has(r.err, c.needle)) << c.out << ": " << r.err;
    EXPECT_FALSE(has(r.out, "data-free ")) << c.out << ": quantized before checking:\n" << r.out;
  }
  struct stat st {};
  ASSERT_EQ(stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  auto f = SafetensorsFile::open(model);  // the input is intact
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->contains("a.weight"));
}

TEST(CliHardening, AKilledWriteLeavesNoTemporaryFile) {
  TempDir dir;
  SafetensorsWriter w;
  ASSERT_TRUE(w.add("a.weight", "F32", {64, 128}, weight(64, 128)).ok());
  ASSERT_TRUE(w.add("big", "F32", {1 << 18}, std::vector<uint8_t>(size_t{1} << 20, 0)).ok());
  write_file(w, dir.file("m.safetensors"));
  // The file-size limit kills the run with SIGXFSZ in the middle of writing the output; the
  // handler that serves SIGINT and SIGTERM removes the temporary file first.
  const CliRun r = run_svdq(dir, {"quantize", dir.file("m.safetensors"), "-o", dir.file("q.safetensors"),
                               "--rank", "8"}, 60, 256 * 1024);
  EXPECT_EQ(r.signal, SIGXFSZ) << r.exit_code << "\n" << r.err;
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"m.safetensors"});
}

// ---- item 15: escaped names ----------------------------------------------------------------------

TEST(CliHardening, ControlCharactersInNamesArePrintedEscaped) {
  TempDir dir;
  SafetensorsWriter w;
  const std::string name = "evil\x1b[2J\nlayer";
  ASSERT_TRUE(w.add(name + ".weight", "F32", {64, 128}, weight(64, 128)).ok());
  write_file(w, dir.file("m.safetensors"));
  CliRun r = run_svdq(dir, {"quantize", dir.file("m.safetensors"), "-o", dir.file("q.safetensors"),
                         "--rank", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "evil\\x1b[2J\\x0alayer")) << r.out;
  EXPECT_FALSE(has(r.out, "\x1b")) << r.out;
  r = run_svdq(dir, {"inspect", dir.file("q.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "evil\\x1b[2J\\x0alayer")) << r.out;
  EXPECT_FALSE(has(r.out, "\x1b")) << r.out;
}

// ---- item 16: passed-through tensors and rows are streamed ---------------------------------------

TEST(CliHardening, LargeTensorsAreStreamedNotHeldTwice) {
#if defined(__SANITIZE_ADDRESS__)
  // ASan's shadow memory and quarantine make a peak-RSS bound meaningless; the Release run checks it.
  GTEST_SKIP() << "peak-RSS bound not meaningful under AddressSanitizer";
#endif
  TempDir dir;
  constexpr int64_t kBig = int64_t{96} << 20;  // bytes
  {
    SafetensorsWriter w;
    ASSERT_TRUE(w.add("a.weight", "F32", {64, 128}, weight(64, 128)).ok());
    std::vector<uint8_t> big(static_cast<size_t>(kBig), 1);
    ASSERT_TRUE(w.add("big", "U8", {kBig}, big).ok());
    write_file(w, dir.file("m.safetensors"));
  }
  CliRun r = run_svdq(dir, {"quantize", dir.file("m.safetensors"), "-o", dir.file("q.safetensors"),
                         "--rank", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The mapped input's pages count once (kBig); a copy in the writer counted twice before.
  EXPECT_LT(r.max_rss_kib * 1024, kBig * 3 / 2) << "peak RSS " << r.max_rss_kib << " KiB";
  fs::remove(dir.file("m.safetensors"));
  fs::remove(dir.file("q.safetensors"));
  {
    SafetensorsWriter w;  // BF16 rows: read_float made a float copy twice the file's size
    const int64_t k = 1024, m = kBig / (2 * k);
    std::vector<uint8_t> rows(static_cast<size_t>(m * k * 2), 0x3f);
    ASSERT_TRUE(w.add("l.inputs", "BF16", {m, k}, rows).ok());
    write_file(w, dir.file("rows.safetensors"));
  }
  r = run_svdq(dir, {"calibrate", dir.file("rows.safetensors"), "-o", dir.file("c.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(r.max_rss_kib * 1024, kBig * 3 / 2) << "peak RSS " << r.max_rss_kib << " KiB";
}

// ---- item 17: same command, same file ------------------------------------------------------------

TEST(CliHardening, SameCommandSameBytesForAnyThreadCount) {
  TempDir dir;
  SafetensorsWriter w;
  ASSERT_TRUE(w.add("a.weight", "F32", {256, 1024}, weight(256, 1024)).ok());
  write_file(w, dir.file("m.safetensors"));
  SafetensorsWriter rows;
  synth::LayerSpec spec;
  spec.in_features = 1024;
  spec.out_features = 256;
  auto layer = synth::make_layer(spec);
  ASSERT_TRUE(layer.ok());
  ASSERT_TRUE(rows.add("a.inputs", "F32", {64, 1024}, f32_bytes(synth::make_activations(*layer, 64, 1))).ok());
  write_file(rows, dir.file("rows.safetensors"));
  ASSERT_EQ(run_svdq(dir, {"calibrate", dir.file("rows.safetensors"), "-o", dir.file("c.safetensors")}).exit_code, 0);
  struct Variant {
    std::vector<std::string> extra;
    std::vector<int> threads;
  };
  for (const Variant& v : {Variant{{"--format", "int4"}, {1, 2, 3, 1}},
                           Variant{{"--format", "nvfp4", "--calib", dir.file("c.safetensors")}, {1, 2, 3}},
                           Variant{{"--calib", dir.file("c.safetensors"), "--plus"}, {1, 2}}}) {
    std::string first;
    for (int t : v.threads) {
      std::vector<std::string> args = {"quantize", dir.file("m.safetensors"), "-o",
                                       dir.file("q.safetensors"), "--threads", std::to_string(t)};
      args.insert(args.end(), v.extra.begin(), v.extra.end());
      const CliRun r = run_svdq(dir, args, 600);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const std::string bytes = slurp(dir.file("q.safetensors"));
      if (first.empty()) {
        first = bytes;
        continue;
      }
      EXPECT_TRUE(bytes == first) << v.extra[1] << ": --threads " << t << " differs from --threads 1";
    }
  }
}

}  // namespace
