// cuda/arch/ldmatrix.cuh — ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: a warp loads
// one, two or four 8x8 matrices of 16-bit elements from shared memory into mma fragment order.
//
// PTX ISA §9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix" (Figure 104):
//   * each matrix row is 16 bytes (8 x .b16), starting at an address supplied by one thread:
//     threads 0-7 give the rows of matrix 0, 8-15 of matrix 1, 16-23 of 2, 24-31 of 3; for .x1 only
//     threads 0-7 are read, for .x2 only threads 0-15 (the others' addresses are ignored on sm_80+;
//     "for sm_75 or below, all threads must contain valid addresses");
//   * "a group of four consecutive threads loads 16 bytes. The matrix addresses must be naturally
//     aligned accordingly": every row address is 16-byte aligned;
//   * destination register j of every thread holds its fragment of matrix j: thread l gets row l/4,
//     elements 2*(l%4) (low half) and 2*(l%4)+1 (high half);
//   * .trans: the matrix is loaded "in column-major format": thread l gets column l/4, rows
//     2*(l%4) (low half) and 2*(l%4)+1 (high half) of the stored matrix.
// CUTLASS cute/arch/copy_sm75.hpp (SM75_U32x1/x2/x4_LDSM_N, SM75_U16x2/4/8_LDSM_T) uses the same
// 1/2/4 destination registers and one 32-bit shared address per thread.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "config.cuh"
#include "guard.cuh"

namespace svdq::arch {

namespace ref {

/// Which stored element of matrix j lands in half `half` (0 = low 16 bits) of register j of
/// `lane`: {row, col} of the 8x8 matrix as stored (row r = the 16 bytes at row address r).
SVDQ_HD constexpr int ldmatrix_row(int lane, int half, bool trans) {
  return trans ? 2 * (lane % 4) + half : lane / 4;
}
SVDQ_HD constexpr int ldmatrix_col(int lane, int half, bool trans) {
  return trans ? lane / 4 : 2 * (lane % 4) + half;
}

/// The whole warp: rows[8 * j + r][c] is element c of row r of matrix j (as the row addresses of
/// threads 8j + r point to); d[lane][j] for j < num (num = 1, 2 or 4).
inline void ldmatrix_m8n8_b16(int num, bool trans, const uint16_t rows[32][8], uint32_t d[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < num; ++j) {
      uint32_t v = 0;
      for (int half = 0; half < 2; ++half) {
        const int r = ldmatrix_row(lane, half, trans), c = ldmatrix_col(lane, half, trans);
        v |= static_cast<uint32_t>(rows[8 * j + r][c]) << (16 * half);
      }
      d[lane][j] = v;
    }
}

}  // namespace ref

#if defined(__CUDACC__) || SVDQ_ARCH_HOST

/// ldmatrix.sync.aligned.m8n8.x{N}{.trans}.shared.b16 d, [row]. `row`: this thread's row address
/// in shared memory (16 bytes, 16-byte aligned; read from threads 0 .. 8N-1 only). d[j]: this
/// thread's fragment of matrix j. Every lane of the warp calls it at the same program point.
template <int N, bool kTrans>
SVDQ_DEV void ldmatrix_m8n8_b16(uint32_t (&d)[N], const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if SVDQ_ARCH_HOST
  constexpr const char* kWhat = N == 1 ? (kTrans ? "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16"
                                                 : "ldmatrix.sync.aligned.m8n8.x1.shared.b16")
                                : N == 2
                                    ? (kTrans ? "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16"
                                              : "ldmatrix.sync.aligned.m8n8.x2.shared.b16")
                                    : (kTrans ? "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"
                                              : "ldmatrix.sync.aligned.m8n8.x4.shared.b16");
  const uintptr_t mine = reinterpret_cast<uintptr_t>(row);
  uintptr_t addr[32];
  emu::warp_gather(kWhat, 0xFFFFFFFFu, &mine, addr, sizeof mine);
  const int lane = emu::lane_id();
  // Validate every row this lane reads before reading any: alignment here, bounds and the
  // barrier-interval race check in the runtime (one 16-byte row at a time).
  // Rows read by this lane: row lane/4 of each matrix, or with .trans rows 2*(lane%4) and +1.
  for (int j = 0; j < N; ++j)
    for (int half = 0; half < (kTrans ? 2 : 1); ++half) {
      const int supplier = 8 * j + ref::ldmatrix_row(lane, half, kTrans);
      const uintptr_t p = addr[supplier];
      if (p % 16 != 0) {
        char msg[96];
        std::snprintf(msg, sizeof msg, "the row address of lane %d is not 16-byte aligned",
                      supplier);
        emu::fail(kWhat, msg);
      }
      emu::note_shared_access(reinterpret_cast<const void*>(p), 16, false, kWhat, true);
    }
  for (int j = 0; j < N; ++j) {
    uint32_t v = 0;
    for (int half = 0; half < 2; ++half) {
      const int r = ref::ldmatrix_row(lane, half, kTrans),
                c = ref::ldmatrix_col(lane, half, kTrans);
      uint16_t e;
      std::memcpy(&e, reinterpret_cast<const unsigned char*>(addr[8 * j + r]) + 2 * c, 2);
      v |= static_cast<uint32_t>(e) << (16 * half);
    }
    d[j] = v;
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  // The instruction takes a .shared window address (32 bits), not a generic pointer.
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  // volatile + "memory": a warp-synchronous load of shared memory that other lanes (and this one)
  // wrote through ordinary stores; the clobber keeps those stores before it and its result from
  // being cached across later stores.
  if constexpr (N == 1 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(d[0])
                 : "r"(a)
                 : "memory");
  else if constexpr (N == 1 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(d[0])
                 : "r"(a)
                 : "memory");
  else if constexpr (N == 2 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(d[0]), "=r"(d[1])
                 : "r"(a)
                 : "memory");
  else if constexpr (N == 2 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(d[0]), "=r"(d[1])
                 : "r"(a)
                 : "memory");
  else if constexpr (N == 4 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a)
                 : "memory");
#elif defined(__CUDA_ARCH__)
  SVDQ_NO_DEVICE_CODE("ldmatrix.sync.aligned.m8n8 (needs sm_75)");
#endif
}

SVDQ_DEV void ldmatrix_x1(uint32_t (&d)[1], const void* row) {
  ldmatrix_m8n8_b16<1, false>(d, row);
}
SVDQ_DEV void ldmatrix_x2(uint32_t (&d)[2], const void* row) {
  ldmatrix_m8n8_b16<2, false>(d, row);
}
SVDQ_DEV void ldmatrix_x4(uint32_t (&d)[4], const void* row) {
  ldmatrix_m8n8_b16<4, false>(d, row);
}
SVDQ_DEV void ldmatrix_x1_trans(uint32_t (&d)[1], const void* row) {
  ldmatrix_m8n8_b16<1, true>(d, row);
}
SVDQ_DEV void ldmatrix_x2_trans(uint32_t (&d)[2], const void* row) {
  ldmatrix_m8n8_b16<2, true>(d, row);
}
SVDQ_DEV void ldmatrix_x4_trans(uint32_t (&d)[4], const void* row) {
  ldmatrix_m8n8_b16<4, true>(d, row);
}

#endif  // __CUDACC__ || SVDQ_ARCH_HOST

}  // namespace svdq::arch
