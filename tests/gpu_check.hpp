// tests/gpu_check.hpp — what tests/test_gpu.cpp and tests/test_gpu_k1.cpp share: the backend (a
// CUDA device, SVDQ_TEST_BACKEND_CUDA, or the emulated device, SVDQ_TEST_BACKEND_EMU: memory,
// copies, the skip without a device) and the comparison of a layer's run with the CPU reference
// (reference_forward_with_activations on the same quantized operands): activation codes and scales
// byte-equal (the contract), outputs bit-equal or within kKernelVsReference, NaN as NaN.
// Test-only: both files of the CUDA build's test_gpu include it (inline functions, one namespace).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

#if defined(SVDQ_TEST_BACKEND_EMU)
#include "emu/emu_linear.hpp"
#else
#include <cuda_runtime.h>
#endif

namespace svdq_test {

// The contract's budget for kernel vs reference on the same quantized operands (DESIGN.md §2).
constexpr double kKernelVsReference = 1e-3;

#if defined(SVDQ_TEST_BACKEND_EMU)
using Linear = svdq::emu::EmuLinear;
using Stream = void*;
constexpr bool kEmu = true;
#define SKIP_WITHOUT_GPU() (void)0
// "Device" memory of the emulated device: 256-byte aligned host memory.
inline void* dev_alloc(size_t bytes) {
  return std::aligned_alloc(256, (bytes + 256 + 255) / 256 * 256);
}
inline void dev_free(void* p) { std::free(p); }
inline void to_dev(void* d, const void* h, size_t n) { std::memcpy(d, h, n); }
inline void to_host(void* h, const void* d, size_t n) { std::memcpy(h, d, n); }
inline void sync(Stream) {}
#else
using Linear = svdq::GpuLinear;
using Stream = cudaStream_t;
constexpr bool kEmu = false;
#define SKIP_WITHOUT_GPU() \
  if (svdq::gpu_device_count() == 0) GTEST_SKIP() << "no CUDA device"
inline void* dev_alloc(size_t bytes) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, bytes + 256), cudaSuccess);
  return p;
}
inline void dev_free(void* p) { cudaFree(p); }
inline void to_dev(void* d, const void* h, size_t n) {
  EXPECT_EQ(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice), cudaSuccess);
}
inline void to_host(void* h, const void* d, size_t n) {
  EXPECT_EQ(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost), cudaSuccess);
}
inline void sync(Stream s) { ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess); }
#endif

/// A row-major M x N view of 16-bit values (bits of dtype dt).
inline svdq::ConstMatrixRef view16(const std::vector<uint16_t>& v, svdq::DType dt, int64_t rows,
                                   int64_t cols) {
  return svdq::ConstMatrixRef(v.data(), dt, rows, cols, cols);
}

/// Bit equality of two 16-bit outputs, except that a NaN equals any NaN (the device's canonical
/// NaN is 0x7FFF, the CPU's 0x7E00 / 0x7FC0). Returns the number of differing elements.
inline size_t count_differences(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b,
                                svdq::DType dt) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  size_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool na = std::isnan(svdq::bits16_to_float(a[i], dt)),
               nb = std::isnan(svdq::bits16_to_float(b[i], dt));
    if (na || nb ? na != nb : a[i] != b[i]) ++d;
  }
  return d;
}

/// NaN positions must agree; the other outputs: bit-equal (`exact`) or within kKernelVsReference
/// (relative Frobenius error over them, as svdq::relative_error: an Inf on either side fails).
inline void expect_outputs_match(const std::vector<uint16_t>& got, const std::vector<uint16_t>& ref,
                                 svdq::DType dt, bool exact) {
  ASSERT_EQ(got.size(), ref.size());
  size_t nan_mismatch = 0, diffs = 0;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float a = svdq::bits16_to_float(got[i], dt), b = svdq::bits16_to_float(ref[i], dt);
    if (std::isnan(a) || std::isnan(b)) {
      nan_mismatch += std::isnan(a) != std::isnan(b);
      continue;
    }
    diffs += got[i] != ref[i];
    num += (static_cast<double>(a) - b) * (static_cast<double>(a) - b);
    den += static_cast<double>(b) * b;
  }
  EXPECT_EQ(nan_mismatch, 0u) << "NaN outputs differ";
  if (exact) {
    EXPECT_EQ(diffs, 0u) << "rank 0 must match the reference bit for bit";
  } else {
    const double rel = den == 0 ? (num == 0 ? 0.0 : std::numeric_limits<double>::infinity())
                                : std::sqrt(num / den);
    EXPECT_LE(rel, kKernelVsReference);
  }
}

/// The CPU reference of a layer on x (M x K, bits of dtype dt): y (M x N) and the quantized
/// activations (codes M x K/2, scales M x K/group).
struct Reference {
  std::vector<uint16_t> y;
  svdq::QuantizedActivations act;
};
inline void reference_of(const svdq::QuantizedLinear& q, const std::vector<uint16_t>& x,
                         svdq::DType dt, int64_t m, Reference* ref) {
  const int64_t k = q.in_features, n = q.out_features;
  ASSERT_EQ(x.size(), static_cast<size_t>(m * k));
  ref->y.assign(static_cast<size_t>(m * n), 0);
  const svdq::Status st = svdq::test_support::reference_forward_with_activations(
      q, view16(x, dt, m, k), svdq::MatrixRef(ref->y.data(), dt, m, n, n), &ref->act);
  ASSERT_TRUE(st.ok()) << st.to_string();
}

/// Activation codes and scales byte-equal to the reference's (the contract).
inline void expect_activations_match(const std::vector<uint8_t>& codes,
                                     const std::vector<uint8_t>& scales, const Reference& ref) {
  EXPECT_EQ(codes, ref.act.codes) << "activation codes differ";
  EXPECT_EQ(scales, ref.act.scales) << "activation scales differ";
}

/// One run against the reference: codes and scales byte-equal; y bit-equal at rank 0 (NaN as
/// NaN), within kKernelVsReference otherwise. `ref` (optional) receives the reference.
inline void expect_matches_reference(const svdq::QuantizedLinear& q, const std::vector<uint16_t>& x,
                                     svdq::DType dt, int64_t m, const std::vector<uint8_t>& codes,
                                     const std::vector<uint8_t>& scales,
                                     const std::vector<uint16_t>& y, Reference* ref = nullptr) {
  Reference local;
  Reference& r = ref != nullptr ? *ref : local;
  ASSERT_NO_FATAL_FAILURE(reference_of(q, x, dt, m, &r));
  expect_activations_match(codes, scales, r);
  expect_outputs_match(y, r.y, dt, q.rank == 0);
}

}  // namespace svdq_test
