// Tests of ldmatrix's semantics in cuda/arch/ldmatrix.cuh (svdq::arch::ref), written from the PTX
// ISA (§9.7.14.5.15, Figure 104) rather than from ldmatrix.cuh's maps: rows carry their own
// coordinates, so every register shows which stored element it received. Then the two sections of
// the ISA are checked against each other: ldmatrix.x4 of a row-major 16x16 tile with the usual
// row addressing yields the mma.m16n8k16 A fragment, and ldmatrix.x2.trans of a row-major K x N
// tile yields the B fragment, so a bf16 GEMM tile runs end to end against a float64 GEMM.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>

#include "../cuda/arch/ldmatrix.cuh"
#include "../cuda/arch/mma.cuh"

namespace {

namespace ref = svdq::arch::ref;

// Element value encoding its coordinates: matrix j, row r, column c.
uint16_t tag(int j, int r, int c) { return static_cast<uint16_t>(0x1000 * (j + 1) + 0x10 * r + c); }

void fill_tagged(uint16_t rows[32][8]) {
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) rows[8 * j + r][c] = tag(j, r, c);
}

// Figure 104: thread l receives row l/4, elements 2*(l%4) (low half) and 2*(l%4)+1 (high half);
// register j holds matrix j.
TEST(ArchLdmatrix, FragmentLayoutNoTrans) {
  uint16_t rows[32][8];
  fill_tagged(rows);
  for (int num : {1, 2, 4}) {
    uint32_t d[32][4] = {};
    ref::ldmatrix_m8n8_b16(num, false, rows, d);
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < num; ++j) {
        const int row = lane / 4, col = 2 * (lane % 4);
        EXPECT_EQ(d[lane][j] & 0xFFFF, tag(j, row, col)) << "x" << num << " lane " << lane;
        EXPECT_EQ(d[lane][j] >> 16, tag(j, row, col + 1)) << "x" << num << " lane " << lane;
      }
  }
}

// .trans: the matrix is read column-major: thread l receives column l/4, rows 2*(l%4) and +1.
TEST(ArchLdmatrix, FragmentLayoutTrans) {
  uint16_t rows[32][8];
  fill_tagged(rows);
  for (int num : {1, 2, 4}) {
    uint32_t d[32][4] = {};
    ref::ldmatrix_m8n8_b16(num, true, rows, d);
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < num; ++j) {
        const int col = lane / 4, row = 2 * (lane % 4);
        EXPECT_EQ(d[lane][j] & 0xFFFF, tag(j, row, col)) << "x" << num << " lane " << lane;
        EXPECT_EQ(d[lane][j] >> 16, tag(j, row + 1, col)) << "x" << num << " lane " << lane;
      }
  }
}

// Spot checks read off Figure 104: T0 gets (0,0),(0,1); T5 gets (1,2),(1,3); T31 gets (7,6),(7,7).
TEST(ArchLdmatrix, FigureSpotChecks) {
  EXPECT_EQ(ref::ldmatrix_row(0, 0, false), 0);
  EXPECT_EQ(ref::ldmatrix_col(0, 1, false), 1);
  EXPECT_EQ(ref::ldmatrix_row(5, 0, false), 1);
  EXPECT_EQ(ref::ldmatrix_col(5, 0, false), 2);
  EXPECT_EQ(ref::ldmatrix_row(31, 1, false), 7);
  EXPECT_EQ(ref::ldmatrix_col(31, 1, false), 7);
  // Transposed: T5 gets column 1, rows 2 and 3.
  EXPECT_EQ(ref::ldmatrix_col(5, 0, true), 1);
  EXPECT_EQ(ref::ldmatrix_row(5, 0, true), 2);
  EXPECT_EQ(ref::ldmatrix_row(5, 1, true), 3);
}

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  EXPECT_EQ(u & 0xFFFFu, 0u);
  return static_cast<uint16_t>(u >> 16);
}

// ldmatrix feeds mma: A 16x16 row-major, lane l addresses row (l % 16), column block 8 * (l / 16)
// (matrices 0-3 = rows 0-7 / 8-15 of k 0-7, then of k 8-15); B stored K x N row-major (16 x 8),
// lane l addresses row k = l % 16 (x2.trans: matrices 0-1 = k 0-7 / 8-15). The registers must equal
// the mma.m16n8k16 fragments of the ISA (written out here) and the product must be the GEMM.
TEST(ArchLdmatrix, FeedsMmaM16n8k16Fragments) {
  std::mt19937 rng(12);
  for (int trial = 0; trial < 20; ++trial) {
    float A[16][16], B[16][8];
    for (auto& row : A)
      for (auto& v : row) v = static_cast<float>(static_cast<int>(rng() % 33) - 16);
    for (auto& row : B)
      for (auto& v : row) v = static_cast<float>(static_cast<int>(rng() % 33) - 16) * 0.25f;
    // Rows as the lanes' addresses point to.
    uint16_t arows[32][8], brows[32][8] = {};
    for (int lane = 0; lane < 32; ++lane)
      for (int c = 0; c < 8; ++c) arows[lane][c] = bf16_bits(A[lane % 16][8 * (lane / 16) + c]);
    for (int lane = 0; lane < 16; ++lane)
      for (int c = 0; c < 8; ++c) brows[lane][c] = bf16_bits(B[lane][c]);
    uint32_t a[32][4], b4[32][4], b[32][2];
    ref::ldmatrix_m8n8_b16(4, false, arows, a);
    ref::ldmatrix_m8n8_b16(2, true, brows, b4);
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane % 4;
      // PTX ISA Figure 79: a0,a1 (g, 2t..), a2,a3 (g+8, 2t..), a4,a5 (g, 2t+8..), a6,a7 (g+8,
      // 2t+8..).
      const int arow[4] = {g, g + 8, g, g + 8}, acol[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int r = 0; r < 4; ++r) {
        EXPECT_EQ(a[lane][r] & 0xFFFF, bf16_bits(A[arow[r]][acol[r]])) << "lane " << lane;
        EXPECT_EQ(a[lane][r] >> 16, bf16_bits(A[arow[r]][acol[r] + 1])) << "lane " << lane;
      }
      // Figure 81: b0,b1 (k 2t, 2t+1; n g), b2,b3 (k 2t+8, 2t+9).
      for (int r = 0; r < 2; ++r) {
        b[lane][r] = b4[lane][r];
        EXPECT_EQ(b[lane][r] & 0xFFFF, bf16_bits(B[2 * t + 8 * r][g])) << "lane " << lane;
        EXPECT_EQ(b[lane][r] >> 16, bf16_bits(B[2 * t + 8 * r + 1][g])) << "lane " << lane;
      }
    }
    float c[32][4] = {}, d[32][4];
    ref::mma_m16n8k16_bf16bf16f32(a, b, c, d);
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r) {
        const int m = r < 2 ? (lane >> 2) : (lane >> 2) + 8, n = 2 * (lane % 4) + (r & 1);
        double s = 0;
        for (int k = 0; k < 16; ++k) s += static_cast<double>(A[m][k]) * B[k][n];
        ASSERT_EQ(static_cast<double>(d[lane][r]), s);
      }
  }
}

}  // namespace
