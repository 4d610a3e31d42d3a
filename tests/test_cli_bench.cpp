// `svdq bench` (docs/cli.md): the real binary (SVDQ_CLI_PATH) in a child process. `--gpu` on a
// machine or build that cannot run it must fail at once (before any quantization) with a message
// naming the reason, and exit 1; with a GPU it must time and print the table. The loaded-layer
// options (--quantized, --layer) and the list of token counts (-m 3,5) on the CPU path.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/gpu.hpp"
#include "svdq/linear.hpp"
#include "svdq/synth.hpp"

namespace {

namespace fs = std::filesystem;

struct CliRun {
  int exit_code = -1;  // -1: killed by a signal (e.g. the alarm)
  std::string out, err;
  double seconds = 0;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class CliBench : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("svdq_test_cli_bench_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  /// svdq with args; killed by SIGALRM after timeout_s.
  CliRun svdq(const std::vector<std::string>& args, int timeout_s = 60) const {
    const std::string out = file(".stdout"), err = file(".stderr");
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = fork();
    if (pid == 0) {
      if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
      alarm(static_cast<unsigned>(timeout_s));
      std::string bin = SVDQ_CLI_PATH;
      std::vector<std::string> copy = args;
      std::vector<char*> argv{bin.data()};
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CliRun r;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  /// A checkpoint with two small quantized layers, "blk.a" (N 64) and "blk.b" (N 32), K = 128.
  std::string two_layers() const {
    std::vector<svdq::QuantizedLinear> qs;
    for (int64_t n : {64, 32}) {
      svdq::synth::LayerSpec spec;
      spec.in_features = 128;
      spec.out_features = n;
      auto l = svdq::synth::make_layer(spec);
      EXPECT_TRUE(l.ok());
      svdq::QuantConfig cfg;
      cfg.rank = 8;
      cfg.alpha = cfg.beta = 0.0f;  // data-free: no statistics needed
      auto q = svdq::quantize_linear(svdq::MatrixView<const float>(l->weight.data(), n, 128),
                                     svdq::MatrixView<const float>(l->bias.data(), 1, n), nullptr, cfg);
      EXPECT_TRUE(q.ok()) << q.status().to_string();
      qs.push_back(std::move(*q));
    }
    const std::string path = file("two.safetensors");
    EXPECT_TRUE(svdq::save_quantized(path, {{"blk.a", &qs[0]}, {"blk.b", &qs[1]}}).ok());
    return path;
  }

  fs::path dir_;
};

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// What `--gpu` must say here, from the library's own view of the build and the machine.
void expect_gpu_refusal_or_table(const CliRun& r) {
  if (!svdq::gpu_compiled()) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(has(r.err, "svdq: error: not supported: --gpu: this svdq was built without CUDA (SVDQ_ENABLE_CUDA=OFF)"))
        << r.err;
  } else if (svdq::gpu_device_count() == 0) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    // No driver (cudaGetDeviceCount fails, error named) or a driver without devices.
    EXPECT_TRUE(has(r.err, "svdq: error: cuda: --gpu: no usable CUDA device: cudaGetDeviceCount failed with cuda") ||
                has(r.err, "svdq: error: cuda: --gpu: no CUDA device is visible"))
        << r.err;
#ifdef SVDQ_TEST_CUBLAS_MAJOR
    // cuBLAS is loaded (dlopen + every symbol) before the refusal, which says how it went: the
    // test's own dlopen of the same name decides which it must be.
    const std::string name = "libcublas.so." + std::to_string(SVDQ_TEST_CUBLAS_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) {
      EXPECT_TRUE(has(r.err, " [cuBLAS: " + name + " loaded]")) << r.err;
      dlclose(lib);
    } else {
      EXPECT_TRUE(has(r.err, " [and cuBLAS (the BF16 baseline) could not be loaded: ")) << r.err;
    }
#endif
  } else {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(has(r.out, "svdq bench --gpu: ")) << r.out;
    EXPECT_TRUE(has(r.out, "speedup")) << r.out;
    return;
  }
  EXPECT_FALSE(has(r.out, "TFLOP/s")) << "nothing may be timed: " << r.out;
}

TEST_F(CliBench, GpuSaysWhyItCannotRunBeforeAnyWork) {
  if (svdq::gpu_device_count() > 0) {
    expect_gpu_refusal_or_table(svdq({"bench", "--gpu", "-k", "256", "-n", "128", "-m", "1,64", "--repeats", "2"}));
    return;
  }
  // A FLUX.1 MLP shape: quantizing it first would take far longer than the refusal may.
  const CliRun r = svdq({"bench", "--gpu", "-k", "3072", "-n", "12288", "-m", "4096"}, 30);
  expect_gpu_refusal_or_table(r);
  EXPECT_LT(r.seconds, 5.0) << "--gpu must be refused before the layer is quantized";
}

TEST_F(CliBench, GpuOnALoadedLayer) {
  const std::string path = two_layers();
  expect_gpu_refusal_or_table(svdq({"bench", "--gpu", "--quantized", path, "--layer", "blk.b", "-m", "16", "--repeats", "2"}));
}

TEST_F(CliBench, LoadedLayerOnTheCpu) {
  const std::string path = two_layers();
  CliRun r = svdq({"bench", "--quantized", path, "--layer", "blk.a", "-m", "4,8", "--repeats", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "'blk.a' of ")) << r.out;
  EXPECT_TRUE(has(r.out, "K=128 N=64 rank 8")) << r.out;
  EXPECT_TRUE(has(r.out, "  M=4: forward median")) << r.out;
  EXPECT_TRUE(has(r.out, "  M=8: forward median")) << r.out;
  EXPECT_FALSE(has(r.out, "rel. error")) << "a loaded layer has no unquantized layer to compare with";

  r = svdq({"bench", "--quantized", path, "-m", "4"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "holds 2 quantized layers: choose one with --layer (blk.a, blk.b)")) << r.err;

  r = svdq({"bench", "--quantized", path, "--layer", "blk.c"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "--layer 'blk.c' is not a quantized layer of")) << r.err;

  // The shape and the recipe come from the file: -k/-n/--format/--rank with --quantized are refused.
  r = svdq({"bench", "--quantized", path, "--layer", "blk.a", "-k", "256"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(has(r.err, "excludes")) << r.err;
  r = svdq({"bench", "--layer", "blk.a"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(has(r.err, "requires")) << r.err;
}

TEST_F(CliBench, SeveralTokenCountsOnTheCpu) {
  const CliRun r = svdq({"bench", "-k", "128", "-n", "64", "-m", "3,5", "--repeats", "1", "--rank", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "synthetic int4 K=128 N=64 rank 4")) << r.out;
  EXPECT_TRUE(has(r.out, "  M=3: forward median")) << r.out;
  EXPECT_TRUE(has(r.out, "  M=5: forward median")) << r.out;
  EXPECT_TRUE(has(r.out, "vs the unquantized layer")) << r.out;
  const CliRun bad = svdq({"bench", "-k", "128", "-n", "64", "-m", "3,0"});
  EXPECT_NE(bad.exit_code, 0) << "M = 0 is out of range";
}

}  // namespace
