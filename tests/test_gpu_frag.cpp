// Kernel 1's activation output in kernel 2's mma A-fragment order (issue 9 item 1; codecs.cuh,
// kActFragment), on the emulated device.
//
// The expected position of every code nibble is derived here from the PTX ISA's fragment tables
// ("Matrix Fragments for mma.m16n8k64" (.s4), "... mma.m16n8k32" (.s8), "... mma.m16n8k16 with
// floating point type" (.bf16)), written out below from the ISA text and not taken from the
// kernels or from cuda/arch/mma.cuh, plus the two choices gemm_w4a4_mma.cuh documents:
//   * the k relabeling inside a group, applied identically to A and B (so every dot product is
//     unchanged): which activation channel feeds mma k slot `slot`;
//   * the order of a lane's four A registers in its 16 bytes: [row half rh][word h].
// For every element of a few shapes (full 16-row tiles, a partial last tile, a K tail, split-K,
// both mma paths and nvfp4), the nibble kernel 1 stored at that position must be the CPU
// reference's code of that (row, channel), and each scale must be the reference's scale; rows of a
// partial last tile stay canonical. Then the layer (read_activations: canonical bytes; y against
// reference_forward) on the same shapes, which adds nvfp4 K tails to the mma paths' layer tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "emu/emu_linear.hpp"
#include "svdq/svdq.hpp"
#include "svdq/testing.hpp"

namespace {

struct Shape {
  svdq::Format format;
  int64_t k, m;
  int rank;
  int sm;  // 80: mma.s4 path, 90: s4 -> s8 + mma.s8 path
  svdq::DType dtype = svdq::DType::kBF16;
  // The layer variants and special rows (FragmentOrderVariants below).
  enum Variant { kPlain, kRotated, kUnsigned, kWcscales } variant = kPlain;
  bool specials = false;  // NaN in row 3, -Inf in row 20 (full tiles), NaN in row 40 (partial tile)
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << svdq::format_name(s.format) << " K " << s.k << " M " << s.m << " rank " << s.rank << " sm " << s.sm << " "
      << svdq::dtype_name(s.dtype);
}

std::string shape_name(const ::testing::TestParamInfo<Shape>& info) {
  const Shape& s = info.param;
  static const char* const kVariant[] = {"", "_rot", "_unsigned", "_wcscales"};
  return std::string(svdq::format_name(s.format)) + "_k" + std::to_string(s.k) + "_m" + std::to_string(s.m) + "_r" +
         std::to_string(s.rank) + "_sm" + std::to_string(s.sm) + "_" + svdq::dtype_name(s.dtype) + kVariant[s.variant] +
         (s.specials ? "_specials" : "");
}

struct Layer {
  svdq::QuantizedLinear q;
  std::vector<uint16_t> x;  // (M, K) bits
};

Layer make_layer(const Shape& s) {
  svdq::synth::LayerSpec spec;
  spec.in_features = s.k;
  spec.out_features = 96;
  const auto layer = *svdq::synth::make_layer(spec);
  svdq::ActivationStats stats;
  const auto calib = svdq::synth::make_activations(layer, 64, 1);
  EXPECT_TRUE(stats.observe(svdq::MatrixView<const float>(calib.data(), 64, s.k)).ok());
  svdq::QuantConfig c;
  c.format = s.format;
  c.rank = s.rank;
  Layer l;
  l.q = *svdq::quantize_linear(svdq::MatrixView<const float>(layer.weight.data(), spec.out_features, s.k),
                               svdq::vector_view<const float>(layer.bias.data(), spec.out_features), &stats, c);
  if (s.variant == Shape::kRotated) l.q.rotation = svdq::Rotation::kBlockHadamard;  // same operands, rotated path
  if (s.variant == Shape::kUnsigned) {
    auto u = svdq::to_unsigned_activations(l.q, svdq::kNunchakuGeluShift);
    EXPECT_TRUE(u.ok()) << u.status().to_string();
    l.q = *u;
  }
  if (s.variant == Shape::kWcscales) {  // c_n = 2^e (1 + j/8), one channel 0
    l.q.wcscales.resize(static_cast<size_t>(l.q.out_features));
    for (int64_t n = 0; n < l.q.out_features; ++n) {
      const float v = n == 5 ? 0.0f : std::ldexp(1.0f + static_cast<float>(n % 8) / 8.0f, static_cast<int>(n % 5) - 2);
      l.q.wcscales[static_cast<size_t>(n)] = svdq::float_to_bits16(v, l.q.storage);
    }
  }
  EXPECT_TRUE(svdq::validate(l.q).ok());
  auto x = svdq::synth::make_activations(layer, s.m, 7);
  if (s.specials) {
    x[static_cast<size_t>(3 * s.k + 10)] = std::nanf("");
    x[static_cast<size_t>(20 * s.k + 70)] = -INFINITY;
    if (s.m > 40) x[static_cast<size_t>(40 * s.k + 5)] = std::nanf("");
  }
  l.x.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) l.x[i] = svdq::float_to_bits16(x[i], s.dtype);
  return l;
}

// ---- The PTX ISA's A fragments: (row in the 16-row tile, k slot) of register `reg`, element `e` of
// `lane`; groupID = lane >> 2, threadID_in_group = lane % 4. -------------------------------------
struct RowSlot {
  int row, slot;
};
// mma.m16n8k64 .s4: a0..a31, 8 per .b32 register (i = 8 reg + e);
//   row = groupID for ai with i < 8 or 16 <= i < 24, groupID + 8 otherwise;
//   col = threadID_in_group * 8 + (i & 7), + 32 for i >= 16.
RowSlot isa_k64_s4_a(int lane, int reg, int e) {
  const int i = 8 * reg + e, gid = lane >> 2, t = lane & 3;
  return {(i < 8 || (i >= 16 && i < 24)) ? gid : gid + 8, t * 8 + (i & 7) + (i >= 16 ? 32 : 0)};
}
// mma.m16n8k32 .s8: a0..a15, 4 per register (i = 4 reg + e);
//   row = groupID for i < 4 or 8 <= i < 12, groupID + 8 otherwise;
//   col = threadID_in_group * 4 + (i & 3), + 16 for i >= 8.
RowSlot isa_k32_s8_a(int lane, int reg, int e) {
  const int i = 4 * reg + e, gid = lane >> 2, t = lane & 3;
  return {(i < 4 || (i >= 8 && i < 12)) ? gid : gid + 8, t * 4 + (i & 3) + (i >= 8 ? 16 : 0)};
}
// mma.m16n8k16 .bf16: a0..a7, 2 per register (i = 2 reg + e);
//   row = groupID for i < 2 or 4 <= i < 6, groupID + 8 otherwise;
//   col = threadID_in_group * 2 + (i & 1), + 8 for i >= 4.
RowSlot isa_k16_bf16_a(int lane, int reg, int e) {
  const int i = 2 * reg + e, gid = lane >> 2, t = lane & 3;
  return {(i < 2 || (i >= 4 && i < 6)) ? gid : gid + 8, t * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}

// The code nibble of (row, channel) in canonical (M, K/2) bytes.
int nibble(const std::vector<uint8_t>& codes, int64_t k, int64_t row, int64_t ch) {
  return (codes[static_cast<size_t>(row * (k / 2) + ch / 2)] >> (4 * (ch % 2))) & 0xF;
}
// The nibble at nibble index `pos` (byte pos / 2, low half first) of a buffer.
int nibble_at(const uint8_t* buf, int64_t pos) { return (buf[pos / 2] >> (4 * (pos % 2))) & 0xF; }

struct Checked {
  int64_t codes = 0, scales = 0, bad = 0;
};

// Checks every code and scale kernel 1 wrote (`dev_codes`, `dev_scales`: the workspace's first
// two pieces) against the reference `ref`, at the positions derived from the ISA above.
Checked check_layout(const Shape& s, const svdq::QuantizedActivations& ref, const uint8_t* dev_codes,
                     const uint8_t* dev_scales) {
  Checked c;
  const int64_t k = s.k, m = s.m, row_bytes = k / 2, full = m / 16 * 16;
  const bool int4 = s.format == svdq::Format::kInt4;
  const int64_t groups = k / (int4 ? 64 : 16);
  auto expect_code = [&](int64_t row, int64_t ch, int64_t byte_pos, int nib) {
    ++c.codes;
    const int want = nibble(ref.codes, k, row, ch);
    const int got = nibble_at(dev_codes, 2 * byte_pos + nib);
    if (want != got && ++c.bad <= 8)
      ADD_FAILURE() << "code of row " << row << " channel " << ch << ": kernel 1 stored " << got << " at byte "
                    << byte_pos << " nibble " << nib << ", reference " << want;
  };
  auto expect_scale = [&](int64_t row, int64_t g, int64_t pos) {
    ++c.scales;
    const size_t sb = int4 ? 4 : 1;
    if (std::memcmp(dev_scales + pos * sb, ref.scales.data() + (row * groups + g) * sb, sb) != 0 && ++c.bad <= 8)
      ADD_FAILURE() << "scale of row " << row << " group " << g << " at element " << pos;
  };
  for (int64_t t = 0; t < full / 16; ++t) {
    const int64_t tile = t * 16 * row_bytes;  // a full tile keeps its canonical 16 K/2 bytes
    if (int4) {
      // Registers in a lane's 16 bytes: [rh][h] words, i.e. word position 2 rh + h of the
      // register that holds row half rh and word h (h: k slots 0..31 / 32..63 on .s4).
      for (int64_t g = 0; g < groups; ++g)
        for (int lane = 0; lane < 32; ++lane) {
          const int64_t base = tile + g * 512 + 16 * lane;
          if (s.sm == 80) {
            for (int reg = 0; reg < 4; ++reg)
              for (int e = 0; e < 8; ++e) {
                const RowSlot rs = isa_k64_s4_a(lane, reg, e);
                // Relabeling (.s4): slot 8 tig + e <- channel 16 tig + e, slot 32 + 8 tig + e <-
                // channel 16 tig + 8 + e.
                const int h = rs.slot / 32, tig = (rs.slot % 32) / 8;
                const int64_t ch = 64 * g + 16 * tig + 8 * h + rs.slot % 8;
                const int rh = rs.row / 8;
                expect_code(16 * t + rs.row, ch, base + 4 * (2 * rh + h) + e / 2, e % 2);
              }
          } else {
            // .s8: two mma per group (h = 0, 1), register r of mma h built from word (rh, h):
            // bytes of registers 0/1 = its nibbles 0..3, of registers 2/3 = its nibbles 4..7.
            // Relabeling (.s8): slot 4 tig + e <- channel 16 tig + 8 h + e, slot 16 + 4 tig + e <-
            // channel 16 tig + 8 h + 4 + e.
            for (int h = 0; h < 2; ++h)
              for (int reg = 0; reg < 4; ++reg)
                for (int e = 0; e < 4; ++e) {
                  const RowSlot rs = isa_k32_s8_a(lane, reg, e);
                  const int hi = rs.slot / 16, tig = (rs.slot % 16) / 4;
                  const int n = 4 * hi + rs.slot % 4;  // nibble of the word
                  const int64_t ch = 64 * g + 16 * tig + 8 * h + n;
                  const int rh = rs.row / 8;
                  expect_code(16 * t + rs.row, ch, base + 4 * (2 * rh + h) + n / 2, n % 2);
                }
          }
        }
      for (int64_t g = 0; g < groups; ++g)  // scales: [g][gid][rh] fp32
        for (int r = 0; r < 16; ++r) expect_scale(16 * t + r, g, t * 16 * groups + g * 16 + 2 * (r % 8) + r / 8);
    } else {
      // nvfp4: per k tile kt of Gk groups, lane's 4 Gk bytes are [rh][gg][2 B]: the byte pair of
      // (rh, gg) holds register rh (k slots 2 tig, +1) in its low byte and register 2 + rh (slots
      // 8 + 2 tig, +1) in its high byte, one E2M1 code per nibble. Relabeling (bf16 k16, one group):
      // slot 2 tig + e <- channel 4 tig + e, slot 8 + 2 tig + e <- channel 4 tig + 2 + e.
      for (int64_t kt = 0; 4 * kt < groups; ++kt) {
        const int gk = static_cast<int>(groups - 4 * kt < 4 ? groups - 4 * kt : 4);
        for (int gg = 0; gg < gk; ++gg)
          for (int lane = 0; lane < 32; ++lane)
            for (int reg = 0; reg < 4; ++reg)
              for (int e = 0; e < 2; ++e) {
                const RowSlot rs = isa_k16_bf16_a(lane, reg, e);
                const int upper = rs.slot / 8, tig = (rs.slot % 8) / 2;
                const int64_t ch = 16 * (4 * kt + gg) + 4 * tig + 2 * upper + rs.slot % 2;
                const int rh = rs.row / 8;
                const int64_t byte = tile + 512 * kt + 4 * gk * lane + 2 * gk * rh + 2 * gg + (reg >= 2 ? 1 : 0);
                expect_code(16 * t + rs.row, ch, byte, e);
              }
        for (int gg = 0; gg < gk; ++gg)  // scales: [kt][gid][rh][gg < Gk]
          for (int r = 0; r < 16; ++r)
            expect_scale(16 * t + r, 4 * kt + gg, t * 16 * groups + 64 * kt + 2 * gk * (r % 8) + gk * (r / 8) + gg);
      }
    }
  }
  for (int64_t row = full; row < m; ++row) {  // a partial last tile: canonical
    for (int64_t ch = 0; ch < k; ++ch) expect_code(row, ch, row * row_bytes + ch / 2, static_cast<int>(ch % 2));
    for (int64_t g = 0; g < groups; ++g) expect_scale(row, g, row * groups + g);
  }
  return c;
}

class FragmentOrder : public ::testing::TestWithParam<Shape> {};

TEST_P(FragmentOrder, KernelOneWritesWhatTheIsaFragmentsConsume) {
  const Shape s = GetParam();
  const Layer l = make_layer(s);
  auto g = svdq::emu::EmuLinear::create(l.q, s.dtype, -1, s.sm);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  const size_t ws_bytes = g->workspace_size(s.m);
  auto* ws = static_cast<uint8_t*>(std::aligned_alloc(256, (ws_bytes + 255) / 256 * 256));
  std::memset(ws, 0xCD, ws_bytes);
  std::vector<uint16_t> y(static_cast<size_t>(s.m * l.q.out_features));
  const svdq::Status st = g->forward(l.x.data(), y.data(), s.m, ws, ws_bytes, nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();

  std::vector<uint16_t> y_ref(y.size());
  svdq::QuantizedActivations ref;
  ASSERT_TRUE(svdq::test_support::reference_forward_with_activations(
                  l.q, svdq::ConstMatrixRef(l.x.data(), s.dtype, s.m, s.k, s.k),
                  svdq::MatrixRef(y_ref.data(), s.dtype, s.m, l.q.out_features, l.q.out_features), &ref)
                  .ok());
  // The scales start after the codes, 256-byte aligned (the workspace layout, unchanged).
  const size_t codes_bytes = (static_cast<size_t>(s.m * s.k / 2) + 255) / 256 * 256;
  const Checked c = check_layout(s, ref, ws, ws + codes_bytes);
  EXPECT_EQ(c.codes, s.m * s.k);
  EXPECT_EQ(c.bad, 0) << "of " << c.codes << " codes and " << c.scales << " scales";

  // The layer: read_activations returns the canonical bytes; y matches the reference.
  svdq::QuantizedActivations act;
  ASSERT_TRUE(g->read_activations(ws, s.m, nullptr, &act).ok());
  EXPECT_EQ(act.codes, ref.codes);
  EXPECT_EQ(act.scales, ref.scales);
  if (s.rank == 0) {  // bit-equal; a NaN equals any NaN (device 0x7FFF, CPU 0x7E00 / 0x7FC0)
    size_t diff = 0, nans = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const bool na = std::isnan(svdq::bits16_to_float(y[i], s.dtype)), nb = std::isnan(svdq::bits16_to_float(y_ref[i], s.dtype));
      nans += na;
      diff += na || nb ? na != nb : y[i] != y_ref[i];
    }
    EXPECT_EQ(diff, 0u) << "rank 0 must match the reference bit for bit";
    if (s.specials)
      EXPECT_EQ(nans, static_cast<size_t>((s.m > 40 ? 3 : 2) * l.q.out_features)) << "the special rows, and only them, are NaN";
  } else {
    EXPECT_LE(svdq::relative_error(svdq::ConstMatrixRef(y.data(), s.dtype, s.m, l.q.out_features, l.q.out_features),
                                   svdq::ConstMatrixRef(y_ref.data(), s.dtype, s.m, l.q.out_features, l.q.out_features)),
              1e-3);
  }
  if (s.specials) {  // the same bytes under another interleaving of the emulated threads and CTAs
    svdq::emu::LaunchOptions o;
    o.seed = 7;
    g->set_options(o);
    std::vector<uint8_t> ws1(ws, ws + ws_bytes);
    std::vector<uint16_t> y1 = y;
    std::memset(ws, 0x5A, ws_bytes);
    ASSERT_TRUE(g->forward(l.x.data(), y.data(), s.m, ws, ws_bytes, nullptr).ok());
    EXPECT_EQ(y, y1);
    const size_t scale_bytes = static_cast<size_t>(s.m * (s.k / l.q.group)) * (s.format == svdq::Format::kInt4 ? 4 : 1);
    EXPECT_EQ(0, std::memcmp(ws, ws1.data(), static_cast<size_t>(s.m * s.k / 2))) << "codes differ between interleavings";
    EXPECT_EQ(0, std::memcmp(ws + codes_bytes, ws1.data() + codes_bytes, scale_bytes)) << "scales differ";
  }
  std::free(ws);
}

std::vector<Shape> shapes() {
  using svdq::Format;
  std::vector<Shape> v;
  for (int sm : {80, 90}) {
    // int4: 5 groups (two 256-channel slices of kernel 1: split-K at small M), full tiles + a tail.
    for (int64_t m : {16, 44, 129}) v.push_back({Format::kInt4, 320, m, 0, sm});
    v.push_back({Format::kInt4, 320, 48, 16, sm, svdq::DType::kF16});
    // nvfp4: K tails of 3, 2 and 1 groups in the last k tile, and a whole one.
    for (int64_t k : {304, 288, 272, 256}) v.push_back({Format::kNvfp4, k, 44, 0, sm});
    v.push_back({Format::kNvfp4, 304, 129, 16, sm, svdq::DType::kF16});
    // Layer variants with NaN / -Inf rows in full tiles and in the partial one, rank 0; and the
    // same bytes under a second interleaving seed.
    v.push_back({Format::kInt4, 320, 44, 0, sm, svdq::DType::kBF16, Shape::kRotated, true});
    v.push_back({Format::kNvfp4, 304, 44, 0, sm, svdq::DType::kF16, Shape::kRotated, true});
    v.push_back({Format::kInt4, 320, 44, 0, sm, svdq::DType::kF16, Shape::kUnsigned, true});
    v.push_back({Format::kNvfp4, 304, 44, 0, sm, svdq::DType::kBF16, Shape::kWcscales, true});
  }
  return v;
}
INSTANTIATE_TEST_SUITE_P(Emu, FragmentOrder, ::testing::ValuesIn(shapes()), shape_name);

}  // namespace
