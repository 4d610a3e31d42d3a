// cuda/dispatch.hpp — the one place that maps a GPU architecture to kernel 2's implementation
// (issue 9 item 6), and the kernel instantiation that a launch of that path runs. Both backends
// (gpu_linear.cu and the emulated device, cuda/emu/emu_linear.cpp) use it; the emulated device
// takes the compute capability as a parameter so that its tests run every path.
#pragma once

#include <string>

#include "gemm_w4a4_dp4a.cuh"
#include "gemm_w4a4_mma.cuh"
#include "svdq/status.hpp"

namespace svdq::cuda {

/// Kernel 2's implementations. kDp4a: CUDA cores (the baseline; no architecture selects it, the
/// emulated device can force it). kMmaS4: mma.m16n8k64.s4 for int4. kMmaS8: s4 -> s8 in
/// registers + mma.m16n8k32.s8 for int4 (Hopper: its .s4 mma is emulated by a subroutine and its
/// e4m3 mma.sync runs on f16 HMMA, see cuda/arch/mma.cuh). nvfp4 uses the bf16 mma on both mma paths.
enum class GemmPath : int { kDp4a = 0, kMmaS4 = 1, kMmaS8 = 2 };

inline const char* gemm_path_name(GemmPath p) {
  switch (p) {
    case GemmPath::kDp4a: return "dp4a";
    case GemmPath::kMmaS4: return "mma_s4";
    case GemmPath::kMmaS8: return "mma_s8";
  }
  return "?";
}

struct ArchEntry {
  int major, minor;
  GemmPath path;
};

/// The architectures svdq has kernels for (the CUDA build's fat binary: sm_80 SASS runs on
/// sm_86/87/89; sm_90 SASS on sm_90).
inline constexpr ArchEntry kArchTable[] = {
    {8, 0, GemmPath::kMmaS4},  // A100
    {8, 6, GemmPath::kMmaS4},  // RTX 30xx, A40, A10
    {8, 7, GemmPath::kMmaS4},  // Orin
    {8, 9, GemmPath::kMmaS4},  // L4, L40, RTX 40xx
    {9, 0, GemmPath::kMmaS8},  // H100, H200
};

// The kernels' device code holds only the paths its architecture may run (gemm_w4a4_mma.cuh,
// mma_path_compiled; dp4a: none on a GPU). The table and that rule must agree: each entry's path
// compiled for its architecture; path 2 (s8, sm_90 only) not below sm_90; path 1 kept on sm_90
// (the sm_80 kernel's correctness run on an H200).
constexpr bool arch_table_matches_device_code() {
  for (const ArchEntry& e : kArchTable) {
    const int arch = 100 * e.major + 10 * e.minor, path = static_cast<int>(e.path);
    if (!mma_path_compiled(path, arch, false)) return false;
    if (arch < 900 && mma_path_compiled(2, arch, false)) return false;
    if (arch >= 900 && !mma_path_compiled(1, arch, false)) return false;
  }
  return true;
}
static_assert(arch_table_matches_device_code(),
              "kArchTable and mma_path_compiled (gemm_w4a4_mma.cuh) disagree");

/// The path for sm_<major><minor>; kErrorArchMismatch naming the rule for any other architecture.
inline Result<GemmPath> gemm_path_for(int major, int minor, const char* fn) {
  for (const ArchEntry& e : kArchTable)
    if (e.major == major && e.minor == minor) return e.path;
  return Status(StatusCode::kErrorArchMismatch,
                std::string(fn) + ": sm_" + std::to_string(major * 10 + minor) +
                    " has no svdq kernel; supported: sm_80, sm_86, sm_87, sm_89, sm_90");
}

/// The path called `name` (gemm_path_name's spelling); kErrorInvalidArgument naming the accepted
/// names otherwise. For tests that force a path (svdq::test_support::create_on_gemm_path).
inline Result<GemmPath> gemm_path_named(const std::string& name, const char* fn) {
  for (GemmPath p : {GemmPath::kDp4a, GemmPath::kMmaS4, GemmPath::kMmaS8})
    if (name == gemm_path_name(p)) return p;
  return Status(StatusCode::kErrorInvalidArgument,
                std::string(fn) + ": gemm_path '" + name + "' is not a kernel 2 path (dp4a, mma_s4, mma_s8)");
}

/// Whether a GPU kernel image for sm_<arch/10> holds path p's body: the mma paths by
/// mma_path_compiled (PTX JIT not counted), dp4a on none (its body is the emulated device's).
constexpr bool gemm_path_compiled(GemmPath p, int arch) {
  return p != GemmPath::kDp4a && arch > 0 && mma_path_compiled(static_cast<int>(p), arch, false);
}

/// The activations' layout kernel 1 writes for kernel 2's path (codecs.cuh, ActLayout): the dp4a
/// kernel stages canonical rows through shared memory; the mma kernel loads its A fragments
/// straight from global memory, in fragment order (16-byte loads), both formats and both mma paths.
constexpr ActLayout act_layout_for(GemmPath p) { return p == GemmPath::kDp4a ? kActCanonical : kActFragment; }

using GemmKernel = void (*)(GemmParams);

/// The kernel 2 instantiation of a path for dtype T and format kKind (0 int4, 1 nvfp4).
template <typename T, int kKind>
GemmKernel gemm_kernel(GemmPath p) {
  switch (p) {
    case GemmPath::kMmaS4: return &gemm_w4a4_mma_kernel<T, kKind, 1>;
    case GemmPath::kMmaS8: return &gemm_w4a4_mma_kernel<T, kKind, 2>;
    default: return &gemm_w4a4_dp4a_kernel<T, kKind>;
  }
}

/// Its name, for messages ("gemm_w4a4_mma_kernel<__nv_bfloat16, 0, 2>").
inline std::string gemm_kernel_name(GemmPath p, bool bf16, int kind) {
  const std::string t = bf16 ? "__nv_bfloat16" : "__half";
  if (p == GemmPath::kDp4a) return "gemm_w4a4_dp4a_kernel<" + t + ", " + std::to_string(kind) + ">";
  return "gemm_w4a4_mma_kernel<" + t + ", " + std::to_string(kind) + ", " +
         std::to_string(static_cast<int>(p)) + ">";
}

}  // namespace svdq::cuda
