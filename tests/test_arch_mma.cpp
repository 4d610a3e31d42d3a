// Tests of the mma.sync semantics in cuda/arch/mma.cuh (namespace svdq::arch::ref), written from
// the PTX ISA's fragment figures and formulas (§9.7.14.5.8, .10, .11), not from mma.cuh's index
// maps: the test packs matrices into lane registers with its own transcription of the ISA, runs the
// warp-level function, and reads D back through its own C/D formula. One-hot A and B reveal where
// each element must land; random products are compared with an int64 / float64 GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>

#include "../cuda/arch/convert.cuh"  // dp4a_us, u4x8_to_u8x8, s4x8_to_s8x8 (the unsigned variant)
#include "../cuda/arch/mma.cuh"
#include "svdq/formats.hpp"

#if SVDQ_HAVE_CUDA_HEADERS
#include <cuda_fp8.h>
#endif

namespace {

namespace ref = svdq::arch::ref;

// ---- The ISA's formulas, transcribed for this test. i is the ISA's element number a_i / b_i /
// c_i of a lane, counted low to high across its registers. ----
struct RC {
  int row, col;
};
int group_id(int lane) { return lane >> 2; }
int tig(int lane) { return lane % 4; }

// mma.m16n8k64 .s4 (Figures 93-96): A a0..a31, B b0..b15, 8 nibbles per register.
RC isa_k64_a(int lane, int i) {
  const int row = ((0 <= i && i < 8) || (16 <= i && i < 24)) ? group_id(lane) : group_id(lane) + 8;
  const int col = i < 16 ? tig(lane) * 8 + (i & 0x7) : tig(lane) * 8 + (i & 0x7) + 32;
  return {row, col};
}
RC isa_k64_b(int lane, int i) {
  const int row = i < 8 ? tig(lane) * 8 + (i & 0x7) : tig(lane) * 8 + (i & 0x7) + 32;
  return {row, group_id(lane)};
}
// mma.m16n8k32 .e4m3 (Figures 88, 90-92): A a0..a15, B b0..b7, 4 bytes per register.
RC isa_k32_a(int lane, int i) {
  const int row = ((0 <= i && i < 4) || (8 <= i && i < 12)) ? group_id(lane) : group_id(lane) + 8;
  const int col = i < 8 ? tig(lane) * 4 + (i & 0x3) : tig(lane) * 4 + (i & 0x3) + 16;
  return {row, col};
}
RC isa_k32_b(int lane, int i) {
  const int row = i < 4 ? tig(lane) * 4 + (i & 0x3) : tig(lane) * 4 + (i & 0x3) + 16;
  return {row, group_id(lane)};
}
// mma.m16n8k16 .bf16/.f16 (Figures 79, 81): A a0..a7, B b0..b3, 2 halves per register.
RC isa_k16_a(int lane, int i) {
  const int row = ((0 <= i && i < 2) || (4 <= i && i < 6)) ? group_id(lane) : group_id(lane) + 8;
  const int col = i < 4 ? tig(lane) * 2 + (i & 0x1) : tig(lane) * 2 + (i & 0x1) + 8;
  return {row, col};
}
RC isa_k16_b(int lane, int i) {
  const int row = i < 2 ? tig(lane) * 2 + (i & 0x1) : tig(lane) * 2 + (i & 0x1) + 8;
  return {row, group_id(lane)};
}
// Accumulators C/D (Figures 83, 92, 96): c0..c3.
RC isa_c(int lane, int i) {
  return {i < 2 ? group_id(lane) : group_id(lane) + 8, tig(lane) * 2 + (i & 0x1)};
}

// ---- Packing matrices into lane registers with the formulas above. `bits` = element width. ----
template <int K, class Map>
void pack_a(const uint32_t (&A)[16][K], int bits, Map map, uint32_t a[32][4]) {
  const int per_reg = 32 / bits;
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) a[lane][r] = 0;
    for (int i = 0; i < 4 * per_reg; ++i) {
      const RC p = map(lane, i);
      const uint32_t mask = bits == 32 ? ~0u : (1u << bits) - 1u;
      a[lane][i / per_reg] |= (A[p.row][p.col] & mask) << (bits * (i % per_reg));
    }
  }
}
template <int K, class Map>
void pack_b(const uint32_t (&B)[K][8], int bits, Map map, uint32_t b[32][2]) {
  const int per_reg = 32 / bits;
  for (int lane = 0; lane < 32; ++lane) {
    b[lane][0] = b[lane][1] = 0;
    for (int i = 0; i < 2 * per_reg; ++i) {
      const RC p = map(lane, i);
      const uint32_t mask = (1u << bits) - 1u;
      b[lane][i / per_reg] |= (B[p.row][p.col] & mask) << (bits * (i % per_reg));
    }
  }
}
template <class T>
void pack_c(const T (&C)[16][8], T c[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) c[lane][i] = C[isa_c(lane, i).row][isa_c(lane, i).col];
}
template <class T>
void unpack_d(const T d[32][4], T (&D)[16][8]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) D[isa_c(lane, i).row][isa_c(lane, i).col] = d[lane][i];
}

// ---- Element encodings used by the tests, independent of the implementation. ----
// E4M3 byte of a float that is an E4M3 value (svdq's CPU codec; exactness checked).
uint32_t e4m3_of(double v) {
  const uint8_t b = svdq::encode_e4m3(static_cast<float>(v));
  EXPECT_EQ(static_cast<double>(svdq::decode_e4m3(b)), v) << "not an e4m3 value: " << v;
  return b;
}
double e4m3_value(uint32_t b) {
#if SVDQ_HAVE_CUDA_HEADERS
  // The toolkit's host conversion: e4m3 -> half is exact, half -> float is exact.
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
  __half hh(h);
  const float f = __half2float(hh);
  EXPECT_TRUE((std::isnan(f) && std::isnan(svdq::decode_e4m3(static_cast<uint8_t>(b)))) ||
              f == svdq::decode_e4m3(static_cast<uint8_t>(b)));
  return f;
#else
  return svdq::decode_e4m3(static_cast<uint8_t>(b));
#endif
}
// bf16 bits of a float that is a bf16 value (its low 16 bits are zero).
uint32_t bf16_of(double v) {
  const float f = static_cast<float>(v);
  EXPECT_EQ(static_cast<double>(f), v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  EXPECT_EQ(u & 0xFFFFu, 0u) << "not a bf16 value: " << v;
  return u >> 16;
}
// f16 bits of a value that is a normal f16 value (|v| in [2^-14, 65504]) or zero.
uint32_t f16_of(double v) {
  if (v == 0) return std::signbit(v) ? 0x8000u : 0u;
  int e;
  const double m = std::frexp(std::fabs(v), &e);  // v = m * 2^e, m in [0.5, 1)
  const double frac = m * 2048.0 - 1024.0;        // 10 fraction bits
  EXPECT_EQ(frac, std::floor(frac)) << "not an f16 value: " << v;
  EXPECT_GE(e - 1, -14);
  EXPECT_LE(e - 1, 15);
  return (v < 0 ? 0x8000u : 0u) | (static_cast<uint32_t>(e - 1 + 15) << 10) |
         static_cast<uint32_t>(frac);
}

// ================================ figure spot checks ===========================================
// Positions read off the figures for a few lanes, checked against the implementation's maps and
// the transcription above (which the rest of this file uses).
TEST(ArchMmaFragments, FigureSpotChecks) {
  struct Case {
    int lane, i, row, col;
  };
  // Figure 93 (m16n8k64 A): T0 holds rows 0/8, cols 0-7 and 32-39; T31 rows 7/15, cols 24-31,
  // 56-63.
  const Case k64a[] = {{0, 0, 0, 0},     {0, 7, 0, 7},    {0, 8, 8, 0},     {0, 16, 0, 32},
                       {0, 31, 8, 39},   {1, 0, 0, 8},    {4, 0, 1, 0},     {31, 7, 7, 31},
                       {31, 15, 15, 31}, {31, 23, 7, 63}, {31, 31, 15, 63}, {13, 20, 3, 44}};
  for (const Case& c : k64a) {
    EXPECT_EQ(isa_k64_a(c.lane, c.i).row, c.row);
    EXPECT_EQ(isa_k64_a(c.lane, c.i).col, c.col);
    const ref::Coord p = ref::m16n8k64_a(c.lane, c.i / 8, c.i % 8);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " a" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " a" << c.i;
  }
  // Figures 94-95 (m16n8k64 B): T0 holds col 0, rows 0-7 and 32-39; T3 rows 24-31, 56-63; T28
  // col 7.
  const Case k64b[] = {{0, 0, 0, 0}, {0, 8, 32, 0}, {3, 7, 31, 0}, {3, 15, 63, 0}, {28, 8, 32, 7}};
  for (const Case& c : k64b) {
    const ref::Coord p = ref::m16n8k64_b(c.lane, c.i / 8, c.i % 8);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " b" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " b" << c.i;
    EXPECT_EQ(isa_k64_b(c.lane, c.i).row, c.row);
  }
  // Figure 88 (m16n8k32 A, 8-bit): T0 rows 0/8 cols 0-3 and 16-19; T6 (g 1, t 2): cols 8-11, 24-27.
  const Case k32a[] = {{0, 0, 0, 0},   {0, 4, 8, 0}, {0, 8, 0, 16},
                       {0, 15, 8, 19}, {6, 1, 1, 9}, {6, 13, 9, 25}};
  for (const Case& c : k32a) {
    const ref::Coord p = ref::m16n8k32_a(c.lane, c.i / 4, c.i % 4);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " a" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " a" << c.i;
  }
  // Figures 90-91 (m16n8k32 B): T1 col 0 rows 4-7 and 20-23.
  const Case k32b[] = {{1, 0, 4, 0}, {1, 3, 7, 0}, {1, 4, 20, 0}, {30, 7, 27, 7}};
  for (const Case& c : k32b) {
    const ref::Coord p = ref::m16n8k32_b(c.lane, c.i / 4, c.i % 4);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " b" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " b" << c.i;
  }
  // Figure 79 (m16n8k16 A): T0 a0,a1 = (0,0),(0,1); a2,a3 = row 8; a4,a5 = (0,8),(0,9); a6,a7 =
  // (8,8..9).
  const Case k16a[] = {{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 2, 8, 0},   {0, 4, 0, 8},
                       {0, 7, 8, 9}, {5, 0, 1, 2}, {31, 7, 15, 15}};
  for (const Case& c : k16a) {
    const ref::Coord p = ref::m16n8k16_a(c.lane, c.i / 2, c.i % 2);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " a" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " a" << c.i;
  }
  // Figure 81 (m16n8k16 B): T0 b0,b1 = rows 0,1 col 0; b2,b3 = rows 8,9.
  const Case k16b[] = {{0, 0, 0, 0}, {0, 1, 1, 0}, {0, 2, 8, 0}, {0, 3, 9, 0}, {31, 3, 15, 7}};
  for (const Case& c : k16b) {
    const ref::Coord p = ref::m16n8k16_b(c.lane, c.i / 2, c.i % 2);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " b" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " b" << c.i;
  }
  // Figures 83/92/96 (C/D): T0 c0..c3 = (0,0),(0,1),(8,0),(8,1); T31 c3 = (15,7).
  const Case cd[] = {{0, 0, 0, 0}, {0, 1, 0, 1},   {0, 2, 8, 0},
                     {0, 3, 8, 1}, {31, 3, 15, 7}, {6, 1, 1, 5}};
  for (const Case& c : cd) {
    const ref::Coord p = ref::m16n8_c(c.lane, c.i);
    EXPECT_EQ(p.row, c.row) << "lane " << c.lane << " c" << c.i;
    EXPECT_EQ(p.col, c.col) << "lane " << c.lane << " c" << c.i;
  }
}

// ============================ integer mma: .s4.s4, .s8.s8, .u4.s4, .u8.s8 ========================
// One typed suite for the four integer instructions. Each is described by the test's own ISA
// transcription (K, element width, the maps above) and its own element decoders (A unsigned for
// .u4/.u8: zero-extended; signed operands sign-extended); the expected D comes from those and an
// int64 sum, never from mma.cuh. .s8 / .u8 use the 8-bit layout of .e4m3 (Figures 88, 90, 91):
// the ISA's layouts depend on the element width only. The act_unsigned layers (docs/formats.md
// §6.1) use .u4.s4 (sm_80/89) and u4x8_to_u8x8 + .u8.s8 (Hopper's route); int4 on Hopper uses
// s4x8_to_s8x8 + .s8.s8.
int s4(uint32_t nibble) {
  return static_cast<int>(nibble & 0xF) >= 8 ? static_cast<int>(nibble & 0xF) - 16
                                             : static_cast<int>(nibble & 0xF);
}
int u4(uint32_t nibble) { return static_cast<int>(nibble & 0xF); }
int s8(uint32_t v) { return static_cast<int>(static_cast<int8_t>(v & 0xFF)); }
int u8(uint32_t v) { return static_cast<int>(v & 0xFF); }
// Byte 0 of the 8-bit words that the kernels' converters make of a word holding 8 copies of one
// 4-bit code (all 8 output bytes must agree).
uint32_t u8_of_u4_code(uint32_t code) {
  uint32_t lo, hi;
  svdq::arch::u4x8_to_u8x8(code * 0x11111111u, lo, hi);
  EXPECT_EQ(lo, hi);
  EXPECT_EQ(lo, (lo & 0xFF) * 0x01010101u);
  return lo & 0xFF;
}
uint32_t s8_of_s4_code(uint32_t code) {
  uint32_t lo, hi;
  svdq::arch::s4x8_to_s8x8(code * 0x11111111u, lo, hi);
  EXPECT_EQ(lo, hi);
  EXPECT_EQ(lo, (lo & 0xFF) * 0x01010101u);
  return lo & 0xFF;
}
uint32_t same_code(uint32_t code) { return code; }

// kAllOnes: the all-ones element (-1 signed, 15 / 255 unsigned). Wrap case: C everywhere kWrapC,
// A row 3 all kWrapA, B column 5 all kWrapB; D(3,5) must be kWrapWant (worked out by hand: the
// exact sum modulo 2^32), every other element C.
struct S4S4 {
  static constexpr int K = 64, kBits = 4;
  static constexpr uint32_t kAllOnes = 0xF;
  static constexpr RC (*map_a)(int, int) = isa_k64_a;
  static constexpr RC (*map_b)(int, int) = isa_k64_b;
  static constexpr int (*a_value)(uint32_t) = s4;
  static constexpr int (*b_value)(uint32_t) = s4;
  // A 4-bit code pair as operand elements, and what the codes mean.
  static constexpr uint32_t (*a_of_code)(uint32_t) = same_code;
  static constexpr uint32_t (*b_of_code)(uint32_t) = same_code;
  static constexpr int (*a_code_value)(uint32_t) = s4;
  static constexpr int32_t kWrapC = std::numeric_limits<int32_t>::max();
  static constexpr uint32_t kWrapA = 0x8, kWrapB = 0x8;  // 64 * (-8)(-8) = 4096
  static constexpr int32_t kWrapWant = std::numeric_limits<int32_t>::min() + 4095;
  static void mma(const uint32_t a[32][4], const uint32_t b[32][2], const int32_t c[32][4],
                  int32_t d[32][4]) {
    ref::mma_m16n8k64_s4s4s32(a, b, c, d);
  }
};
struct S8S8 {
  static constexpr int K = 32, kBits = 8;
  static constexpr uint32_t kAllOnes = 0xFF;
  static constexpr RC (*map_a)(int, int) = isa_k32_a;
  static constexpr RC (*map_b)(int, int) = isa_k32_b;
  static constexpr int (*a_value)(uint32_t) = s8;
  static constexpr int (*b_value)(uint32_t) = s8;
  static constexpr uint32_t (*a_of_code)(uint32_t) = s8_of_s4_code;
  static constexpr uint32_t (*b_of_code)(uint32_t) = s8_of_s4_code;
  static constexpr int (*a_code_value)(uint32_t) = s4;
  static constexpr int32_t kWrapC = std::numeric_limits<int32_t>::max();
  static constexpr uint32_t kWrapA = 0x80, kWrapB = 0x80;  // 32 * (-128)(-128) = 524288
  static constexpr int32_t kWrapWant = std::numeric_limits<int32_t>::min() + 524287;
  static void mma(const uint32_t a[32][4], const uint32_t b[32][2], const int32_t c[32][4],
                  int32_t d[32][4]) {
    ref::mma_m16n8k32_s8s8s32(a, b, c, d);
  }
};
struct U4S4 {
  static constexpr int K = 64, kBits = 4;
  static constexpr uint32_t kAllOnes = 0xF;  // 15 (unsigned), not -1
  static constexpr RC (*map_a)(int, int) = isa_k64_a;
  static constexpr RC (*map_b)(int, int) = isa_k64_b;
  static constexpr int (*a_value)(uint32_t) = u4;
  static constexpr int (*b_value)(uint32_t) = s4;
  static constexpr uint32_t (*a_of_code)(uint32_t) = same_code;
  static constexpr uint32_t (*b_of_code)(uint32_t) = same_code;
  static constexpr int (*a_code_value)(uint32_t) = u4;
  static constexpr int32_t kWrapC = std::numeric_limits<int32_t>::min();
  static constexpr uint32_t kWrapA = 0xF, kWrapB = 0x8;  // 64 * 15 * (-8) = -7680
  static constexpr int32_t kWrapWant = static_cast<int32_t>(0x80000000u - 7680u);
  static void mma(const uint32_t a[32][4], const uint32_t b[32][2], const int32_t c[32][4],
                  int32_t d[32][4]) {
    ref::mma_m16n8k64_u4s4s32(a, b, c, d);
  }
};
struct U8S8 {
  static constexpr int K = 32, kBits = 8;
  static constexpr uint32_t kAllOnes = 0xFF;  // 255 (unsigned), not -1
  static constexpr RC (*map_a)(int, int) = isa_k32_a;
  static constexpr RC (*map_b)(int, int) = isa_k32_b;
  static constexpr int (*a_value)(uint32_t) = u8;
  static constexpr int (*b_value)(uint32_t) = s8;
  static constexpr uint32_t (*a_of_code)(uint32_t) = u8_of_u4_code;
  static constexpr uint32_t (*b_of_code)(uint32_t) = s8_of_s4_code;
  static constexpr int (*a_code_value)(uint32_t) = u4;
  static constexpr int32_t kWrapC = std::numeric_limits<int32_t>::min();
  static constexpr uint32_t kWrapA = 0xFF, kWrapB = 0x80;  // 32 * 255 * (-128) = -1044480
  static constexpr int32_t kWrapWant = static_cast<int32_t>(0x80000000u - 1044480u);
  static void mma(const uint32_t a[32][4], const uint32_t b[32][2], const int32_t c[32][4],
                  int32_t d[32][4]) {
    ref::mma_m16n8k32_u8s8s32(a, b, c, d);
  }
};

template <class Op>
class ArchMmaInt : public ::testing::Test {
 protected:
  static constexpr int K = Op::K;
  using MatA = uint32_t[16][K];
  using MatB = uint32_t[K][8];
  using MatC = int32_t[16][8];
  static constexpr uint32_t kMask = (1u << Op::kBits) - 1u;

  static void run(const MatA& A, const MatB& B, const MatC& C, MatC& D) {
    uint32_t a[32][4], b[32][2];
    int32_t c[32][4], d[32][4];
    pack_a<K>(A, Op::kBits, Op::map_a, a);
    pack_b<K>(B, Op::kBits, Op::map_b, b);
    pack_c(C, c);
    Op::mma(a, b, c, d);
    unpack_d(d, D);
  }
  // The low 32 bits of the exact sum: .s32 without .satfinite wraps.
  static int32_t wrap(int64_t s) {
    return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(s)));
  }
  static void fill(MatA& A, std::mt19937& rng) {
    for (auto& row : A)
      for (auto& v : row) v = rng() & kMask;
  }
  static void fill(MatB& B, std::mt19937& rng) {
    for (auto& row : B)
      for (auto& v : row) v = rng() & kMask;
  }
  static void fill_small(MatC& C, std::mt19937& rng) {
    for (auto& row : C)
      for (auto& v : row) v = static_cast<int32_t>(rng() % 2001) - 1000;
  }
};
struct IntMmaName {
  template <class Op>
  static std::string GetName(int) {
    if (std::is_same_v<Op, S4S4>) return "S4S4";
    if (std::is_same_v<Op, S8S8>) return "S8S8";
    if (std::is_same_v<Op, U4S4>) return "U4S4";
    return "U8S8";
  }
};
using IntMmaOps = ::testing::Types<S4S4, S8S8, U4S4, U8S8>;
TYPED_TEST_SUITE(ArchMmaInt, IntMmaOps, IntMmaName);

// One-hot A (value 1, then the all-ones element) over random B and C: where each A element lands,
// and that it is read with A's signedness.
TYPED_TEST(ArchMmaInt, OneHotAPlacesEachElement) {
  using Op = TypeParam;
  constexpr int K = Op::K;
  std::mt19937 rng(1);
  uint32_t B[K][8];
  int32_t C[16][8];
  this->fill(B, rng);
  this->fill_small(C, rng);
  for (const uint32_t one : {1u, Op::kAllOnes})
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < K; ++j) {
        uint32_t A[16][K] = {};
        A[i][j] = one;
        int32_t D[16][8];
        this->run(A, B, C, D);
        for (int m = 0; m < 16; ++m)
          for (int n = 0; n < 8; ++n) {
            const int32_t want = C[m][n] + (m == i ? Op::a_value(one) * Op::b_value(B[j][n]) : 0);
            ASSERT_EQ(D[m][n], want) << "A one-hot " << one << " at (" << i << "," << j << "), D("
                                     << m << "," << n << ")";
          }
      }
}

// One-hot B (value 1, then the all-ones element), a fresh random A per position, C zero.
TYPED_TEST(ArchMmaInt, OneHotBPlacesEachElement) {
  using Op = TypeParam;
  constexpr int K = Op::K;
  std::mt19937 rng(2);
  const int32_t zero[16][8] = {};
  for (const uint32_t one : {1u, Op::kAllOnes})
    for (int k = 0; k < K; ++k)
      for (int n = 0; n < 8; ++n) {
        uint32_t A[16][K], B[K][8] = {};
        this->fill(A, rng);
        B[k][n] = one;
        int32_t D[16][8];
        this->run(A, B, zero, D);
        for (int m = 0; m < 16; ++m)
          for (int nn = 0; nn < 8; ++nn)
            ASSERT_EQ(D[m][nn], nn == n ? Op::a_value(A[m][k]) * Op::b_value(one) : 0)
                << "B one-hot " << one << " at (" << k << "," << n << "), D(" << m << "," << nn
                << ")";
      }
}

// Random full-range elements and C against an int64 GEMM, wrapped to 32 bits.
TYPED_TEST(ArchMmaInt, RandomMatchesInt64Gemm) {
  using Op = TypeParam;
  constexpr int K = Op::K;
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    uint32_t A[16][K], B[K][8];
    int32_t C[16][8], D[16][8];
    this->fill(A, rng);
    this->fill(B, rng);
    for (auto& row : C)
      for (auto& v : row) v = static_cast<int32_t>(rng());
    this->run(A, B, C, D);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        int64_t s = C[m][n];
        for (int k = 0; k < K; ++k)
          s += static_cast<int64_t>(Op::a_value(A[m][k])) * Op::b_value(B[k][n]);
        ASSERT_EQ(D[m][n], this->wrap(s)) << "trial " << trial << ", D(" << m << "," << n << ")";
      }
  }
}

// No .satfinite: a sum past the int32 range wraps (the wanted value worked out by hand).
TYPED_TEST(ArchMmaInt, AccumulationWrapsWithoutSatfinite) {
  using Op = TypeParam;
  constexpr int K = Op::K;
  uint32_t A[16][K] = {}, B[K][8] = {};
  int32_t C[16][8], D[16][8];
  for (auto& row : C)
    for (auto& v : row) v = Op::kWrapC;
  for (int k = 0; k < K; ++k) A[3][k] = Op::kWrapA, B[k][5] = Op::kWrapB;
  this->run(A, B, C, D);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n)
      EXPECT_EQ(D[m][n], m == 3 && n == 5 ? Op::kWrapWant : Op::kWrapC)
          << "D(" << m << "," << n << ")";
}

// Every (A code, B code) pair of 4-bit codes, as the kernels feed them (8-bit forms: through the
// converters u4x8_to_u8x8 / s4x8_to_s8x8), A all one code and B all the other: D = C + K a b
// exactly with the codes' meaning (a sign-extended unsigned A would give K (a - 16) b for a >= 8).
// C zero, then C(m, n) = 100 m - 7 n.
TYPED_TEST(ArchMmaInt, EveryCodePairIsExact) {
  using Op = TypeParam;
  constexpr int K = Op::K;
  int32_t C[2][16][8];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) C[0][m][n] = 0, C[1][m][n] = 100 * m - 7 * n;
  for (const auto& c : C)
    for (uint32_t ca = 0; ca < 16; ++ca)
      for (uint32_t cb = 0; cb < 16; ++cb) {
        uint32_t A[16][K], B[K][8];
        const uint32_t ea = Op::a_of_code(ca), eb = Op::b_of_code(cb);
        for (auto& row : A)
          for (auto& v : row) v = ea;
        for (auto& row : B)
          for (auto& v : row) v = eb;
        int32_t D[16][8];
        this->run(A, B, c, D);
        for (int m = 0; m < 16; ++m)
          for (int n = 0; n < 8; ++n)
            ASSERT_EQ(D[m][n], c[m][n] + K * Op::a_code_value(ca) * s4(cb))
                << "codes " << ca << " x " << cb;
      }
}

// ================================ m16n8k32 .e4m3 ===============================================
void run_e4m3(const uint32_t (&A)[16][32], const uint32_t (&B)[32][8], const float (&C)[16][8],
              float (&D)[16][8]) {
  uint32_t a[32][4], b[32][2];
  float c[32][4], d[32][4];
  pack_a<32>(A, 8, isa_k32_a, a);
  pack_b<32>(B, 8, isa_k32_b, b);
  pack_c(C, c);
  ref::mma_m16n8k32_e4m3e4m3f32(a, b, c, d);
  unpack_d(d, D);
}

TEST(ArchMmaE4m3, OneHotAAndB) {
  std::mt19937 rng(4);
  uint32_t Bm[32][8], Am[16][32];
  for (auto& row : Bm)
    for (auto& v : row) v = e4m3_of(static_cast<int>(rng() % 17) - 8);
  for (auto& row : Am)
    for (auto& v : row) v = e4m3_of(static_cast<int>(rng() % 17) - 8);
  const float C[16][8] = {};
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 32; ++j) {
      uint32_t A[16][32] = {};
      A[i][j] = e4m3_of(1.0);
      float D[16][8];
      run_e4m3(A, Bm, C, D);
      for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n)
          ASSERT_EQ(D[m][n], m == i ? e4m3_value(Bm[j][n]) : 0.0)
              << "A one-hot (" << i << "," << j << ")";
    }
  for (int k = 0; k < 32; ++k)
    for (int n = 0; n < 8; ++n) {
      uint32_t B[32][8] = {};
      B[k][n] = e4m3_of(-2.0);
      float D[16][8];
      run_e4m3(Am, B, C, D);
      for (int m = 0; m < 16; ++m)
        for (int nn = 0; nn < 8; ++nn)
          ASSERT_EQ(D[m][nn], nn == n ? -2.0 * e4m3_value(Am[m][k]) : 0.0)
              << "B one-hot (" << k << "," << n << ")";
    }
}

TEST(ArchMmaE4m3, AllCodesTimesValues) {
  const double values[] = {1.0, -2.0, 0.5, 448.0, 0.001953125 /* 2^-9 */, 3.0, -0.0};
  for (double v : values)
    for (uint32_t code = 0; code < 256; ++code) {
      uint32_t A[16][32] = {}, B[32][8] = {};
      A[0][0] = code;
      A[15][31] = code;
      B[0][0] = e4m3_of(v);
      B[31][7] = e4m3_of(v);
      const float C[16][8] = {};
      float D[16][8];
      run_e4m3(A, B, C, D);
      const double want = e4m3_value(code) * v;  // exact in double and in fp32
      for (const auto& [m, n] : {std::pair{0, 0}, std::pair{15, 7}}) {
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(D[m][n])) << "code " << code;
        } else {
          EXPECT_EQ(D[m][n], static_cast<float>(want)) << "code " << code << " x " << v;
        }
      }
      // Off the diagonal the code meets only zeros of B: 0, or NaN for a NaN code (NaN * 0).
      for (const float off : {D[0][7], D[15][0]}) {
        if (std::isnan(want))
          EXPECT_TRUE(std::isnan(off)) << "code " << code;
        else
          EXPECT_EQ(off, 0.0f) << "code " << code;
      }
    }
}

// The project's use: int4 codes as e4m3, a group of 64 = two k32 mmas chained through C, exact.
TEST(ArchMmaE4m3, Int4GroupSumsAreExact) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 100; ++trial) {
    int a[16][64], b[64][8];
    for (auto& row : a)
      for (auto& v : row) v = trial == 0 ? -8 : static_cast<int>(rng() % 16) - 8;
    for (auto& row : b)
      for (auto& v : row) v = trial == 0 ? -8 : static_cast<int>(rng() % 16) - 8;
    float C[16][8] = {}, D[16][8];
    for (int half = 0; half < 2; ++half) {
      uint32_t A[16][32], B[32][8];
      for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 32; ++k) A[m][k] = e4m3_of(a[m][32 * half + k]);
      for (int k = 0; k < 32; ++k)
        for (int n = 0; n < 8; ++n) B[k][n] = e4m3_of(b[32 * half + k][n]);
      run_e4m3(A, B, C, D);
      std::memcpy(C, D, sizeof C);
    }
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        int64_t s = 0;
        for (int k = 0; k < 64; ++k) s += a[m][k] * b[k][n];
        ASSERT_EQ(D[m][n], static_cast<float>(s));
      }
  }
}

// General inputs: the documented host order (C, then k ascending, in double; one rounding).
TEST(ArchMmaE4m3, RandomMatchesFloat64GemmRoundedOnce) {
  std::mt19937 rng(6);
  for (int trial = 0; trial < 100; ++trial) {
    uint32_t A[16][32], B[32][8];
    float C[16][8], D[16][8];
    auto code = [&] {
      uint32_t c;
      do c = rng() & 0xFF;
      while ((c & 0x7F) == 0x7F);
      return c;
    };
    for (auto& row : A)
      for (auto& v : row) v = code();
    for (auto& row : B)
      for (auto& v : row) v = code();
    for (auto& row : C)
      for (auto& v : row)
        v = std::ldexp(static_cast<float>(static_cast<int>(rng() % 2001) - 1000), -6);
    run_e4m3(A, B, C, D);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double s = C[m][n];  // every term a multiple of 2^-18 below 2^25: exact in double
        for (int k = 0; k < 32; ++k) s += e4m3_value(A[m][k]) * e4m3_value(B[k][n]);
        ASSERT_EQ(D[m][n], static_cast<float>(s));
      }
  }
}

// ================================ m16n8k16 .bf16 / .f16 ========================================
template <bool kBf16>
void run_k16(const uint32_t (&A)[16][16], const uint32_t (&B)[16][8], const float (&C)[16][8],
             float (&D)[16][8]) {
  uint32_t a[32][4], b[32][2];
  float c[32][4], d[32][4];
  pack_a<16>(A, 16, isa_k16_a, a);
  pack_b<16>(B, 16, isa_k16_b, b);
  pack_c(C, c);
  if (kBf16)
    ref::mma_m16n8k16_bf16bf16f32(a, b, c, d);
  else
    ref::mma_m16n8k16_f16f16f32(a, b, c, d);
  unpack_d(d, D);
}

template <bool kBf16>
void one_hot_k16() {
  auto enc = [](double v) { return kBf16 ? bf16_of(v) : f16_of(v); };
  std::mt19937 rng(kBf16 ? 7 : 8);
  double bv[16][8], av[16][16];
  uint32_t Bm[16][8], Am[16][16];
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) Bm[k][n] = enc(bv[k][n] = static_cast<int>(rng() % 255) - 127);
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 16; ++k) Am[m][k] = enc(av[m][k] = static_cast<int>(rng() % 255) - 127);
  float C[16][8];
  for (auto& row : C)
    for (auto& v : row) v = static_cast<float>(static_cast<int>(rng() % 100));
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      uint32_t A[16][16] = {};
      A[i][j] = enc(1.0);
      float D[16][8];
      run_k16<kBf16>(A, Bm, C, D);
      for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n)
          ASSERT_EQ(D[m][n], C[m][n] + (m == i ? bv[j][n] : 0.0))
              << "A one-hot (" << i << "," << j << ")";
    }
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      uint32_t B[16][8] = {};
      B[k][n] = enc(0.5);
      float D[16][8];
      run_k16<kBf16>(Am, B, C, D);
      for (int m = 0; m < 16; ++m)
        for (int nn = 0; nn < 8; ++nn)
          ASSERT_EQ(D[m][nn], C[m][nn] + (nn == n ? 0.5 * av[m][k] : 0.0))
              << "B one-hot (" << k << "," << n << ")";
    }
}
TEST(ArchMmaBf16, OneHotAAndB) { one_hot_k16<true>(); }
TEST(ArchMmaF16, OneHotAAndB) { one_hot_k16<false>(); }

// Random values with 8 (bf16) / 11 (f16) significant bits and exponents in [-8, 8]: every product
// and partial sum is exact in double, so the host result is the exact sum rounded once to fp32.
template <bool kBf16>
void random_k16() {
  std::mt19937 rng(kBf16 ? 9 : 10);
  const int bits = kBf16 ? 8 : 11;
  auto value = [&] {
    // A normalised significand of `bits` bits: representable, and >= 2^-9 (an f16 normal).
    const int sig = (1 << (bits - 1)) + static_cast<int>(rng() % (1u << (bits - 1)));
    const int e = static_cast<int>(rng() % 17) - 8;
    return (rng() & 1 ? -1.0 : 1.0) * std::ldexp(static_cast<double>(sig), e - bits);
  };
  for (int trial = 0; trial < 100; ++trial) {
    double av[16][16], bv[16][8];
    uint32_t A[16][16], B[16][8];
    for (int m = 0; m < 16; ++m)
      for (int k = 0; k < 16; ++k) {
        av[m][k] = value();
        A[m][k] = kBf16 ? bf16_of(av[m][k]) : f16_of(av[m][k]);
      }
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; ++n) {
        bv[k][n] = value();
        B[k][n] = kBf16 ? bf16_of(bv[k][n]) : f16_of(bv[k][n]);
      }
    float C[16][8], D[16][8];
    for (auto& row : C)
      for (auto& v : row) v = static_cast<float>(value());
    run_k16<kBf16>(A, B, C, D);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double s = C[m][n];
        for (int k = 0; k < 16; ++k) s += av[m][k] * bv[k][n];
        ASSERT_EQ(D[m][n], static_cast<float>(s)) << "trial " << trial;
      }
  }
}
TEST(ArchMmaBf16, RandomMatchesFloat64Gemm) { random_k16<true>(); }
TEST(ArchMmaF16, RandomMatchesFloat64Gemm) { random_k16<false>(); }

// The nvfp4 use: operands are E2M1 values, C = 0: one mma is one group of 16, and its sum is exact.
TEST(ArchMmaBf16, E2M1GroupSumsAreExact) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 100; ++trial) {
    double av[16][16], bv[16][8];
    uint32_t A[16][16], B[16][8];
    for (int m = 0; m < 16; ++m)
      for (int k = 0; k < 16; ++k) A[m][k] = bf16_of(av[m][k] = svdq::decode_e2m1(rng() & 0xF));
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; ++n) B[k][n] = bf16_of(bv[k][n] = svdq::decode_e2m1(rng() & 0xF));
    const float C[16][8] = {};
    float D[16][8];
    run_k16<true>(A, B, C, D);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double s = 0;
        for (int k = 0; k < 16; ++k) s += av[m][k] * bv[k][n];
        ASSERT_EQ(static_cast<double>(D[m][n]), s);
      }
  }
}

// mma.m16n8k8 .tf32 (PTX ISA "Matrix Fragments for mma.m16n8k8", .tf32), transcribed here: A a0..a3
// one element per register, row groupID (a0, a2) / groupID + 8 (a1, a3), col threadID_in_group
// (a0, a1) / + 4 (a2, a3); B b0, b1: row threadID_in_group / + 4, col groupID.
TEST(ArchMmaTf32, OneHotAndRandomMatchFloat64Gemm) {
  auto isa_a = [](int lane, int i) { return RC{i & 1 ? group_id(lane) + 8 : group_id(lane), i & 2 ? tig(lane) + 4 : tig(lane)}; };
  auto isa_b = [](int lane, int i) { return RC{tig(lane) + 4 * i, group_id(lane)}; };
  auto bits = [](double v) {
    const float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  std::mt19937 rng(12);
  for (int trial = 0; trial < 16 * 8 + 8 * 8 + 50; ++trial) {
    double av[16][8] = {}, bv[8][8] = {};
    if (trial < 16 * 8) {  // one-hot A, B all distinct: D's row m must be B's row k
      av[trial / 8][trial % 8] = 1.0;
      for (int k = 0; k < 8; ++k)
        for (int n = 0; n < 8; ++n) bv[k][n] = k * 8 + n + 1;
    } else if (trial < 16 * 8 + 64) {  // one-hot B, A distinct
      const int t = trial - 16 * 8;
      bv[t / 8][t % 8] = 1.0;
      for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 8; ++k) av[m][k] = m * 8 + k + 1;
    } else {  // 11-bit significands, exponents in [-8, 8]: the host's double sum is exact
      auto value = [&] {
        const int sig = 1024 + static_cast<int>(rng() % 1024u), e = static_cast<int>(rng() % 17) - 8;
        return (rng() & 1 ? -1.0 : 1.0) * std::ldexp(static_cast<double>(sig), e - 11);
      };
      for (auto& r : av)
        for (auto& v : r) v = value();
      for (auto& r : bv)
        for (auto& v : r) v = value();
    }
    uint32_t a[32][4], b[32][2];
    float c[32][4] = {}, d[32][4];
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) a[lane][i] = bits(av[isa_a(lane, i).row][isa_a(lane, i).col]);
      for (int i = 0; i < 2; ++i) b[lane][i] = bits(bv[isa_b(lane, i).row][isa_b(lane, i).col]);
    }
    ref::mma_m16n8k8_tf32tf32f32(a, b, c, d);
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const RC p = isa_c(lane, i);
        double s = 0;
        for (int k = 0; k < 8; ++k) s += av[p.row][k] * bv[k][p.col];
        ASSERT_EQ(d[lane][i], static_cast<float>(s)) << "trial " << trial << " lane " << lane << " c" << i;
      }
  }
}

// ================================ converters and dp4a for unsigned A ============================
// u4x8_to_u8x8: every code at every one of the 8 positions, and random words, against a per-element
// zero extension.
TEST(ArchConvertU4, ZeroExtensionOfEveryCodeAtEveryPosition) {
  auto check = [](uint32_t w) {
    uint32_t lo, hi;
    svdq::arch::u4x8_to_u8x8(w, lo, hi);
    for (int e = 0; e < 8; ++e) {
      const uint32_t got = ((e < 4 ? lo : hi) >> (8 * (e % 4))) & 0xFF;
      ASSERT_EQ(got, (w >> (4 * e)) & 0xF) << "word " << std::hex << w << " element " << e;
    }
  };
  for (int e = 0; e < 8; ++e)
    for (uint32_t c = 0; c < 16; ++c) check(c << (4 * e));
  std::mt19937 rng(23);
  for (int i = 0; i < 100000; ++i) check(rng());
}

// dp4a.u32.s32: every (u4 code, s4 code) pair in every byte lane, and random full-range words,
// against int64 (a unsigned per byte, b signed), wrapping.
TEST(ArchDp4aUS, UnsignedTimesSignedBytes) {
  auto want = [](uint32_t a, uint32_t b, int32_t c) {
    int64_t s = c;
    for (int i = 0; i < 4; ++i) s += static_cast<int64_t>((a >> (8 * i)) & 0xFF) * static_cast<int8_t>(b >> (8 * i));
    return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(s)));
  };
  for (int lane = 0; lane < 4; ++lane)
    for (uint32_t ua = 0; ua < 16; ++ua)
      for (int sb = -8; sb < 8; ++sb) {
        const uint32_t a = ua << (8 * lane), b = (static_cast<uint32_t>(sb) & 0xFF) << (8 * lane);
        ASSERT_EQ(svdq::arch::dp4a_us(a, static_cast<int32_t>(b), 5), 5 + static_cast<int>(ua) * sb);
      }
  std::mt19937 rng(24);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t a = rng(), b = rng();
    const int32_t c = static_cast<int32_t>(rng());
    ASSERT_EQ(svdq::arch::dp4a_us(a, static_cast<int32_t>(b), c), want(a, b, c));
  }
  EXPECT_EQ(svdq::arch::dp4a_us(0xFFFFFFFFu, 0x7F7F7F7F, 0), 4 * 255 * 127);
}

}  // namespace
