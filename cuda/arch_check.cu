// cuda/arch_check.cu — compiles every instruction wrapper of cuda/arch/ for every architecture of
// the build, so that a PTX typo or an operand-constraint mismatch fails the build rather than a
// kernel on the GPU. The kernel is never launched; it only has to exist in the fatbinary, where
// `cuobjdump -sass` shows the tensor-core instructions each arch gets (docs/gpu.md).
#include "arch/convert.cuh"
#include "arch/global.cuh"
#include "arch/ldmatrix.cuh"
#include "arch/mma.cuh"

namespace svdq::cuda {

// One warp: out receives every result so nothing is optimised away.
__global__ void arch_instruction_check_kernel(const uint32_t* in, uint32_t* out) {
  __shared__ __align__(16) uint16_t tile[32 * 8];
  const int lane = threadIdx.x % 32;
  for (int i = lane; i < 32 * 8; i += 32) tile[i] = static_cast<uint16_t>(in[i % 16]);
  __syncthreads();

  uint32_t a[4] = {in[0], in[1], in[2], in[3]}, b[2] = {in[4], in[5]};
  int32_t ci[4] = {0, 1, 2, 3};
  arch::mma_m16n8k64_s4s4s32(ci, a, b, ci);
  float cf[4] = {0.f, 1.f, 2.f, 3.f};
  arch::mma_m16n8k16_bf16bf16f32(cf, a, b, cf);
  arch::mma_m16n8k16_f16f16f32(cf, a, b, cf);
  arch::mma_m16n8k32_s8s8s32(ci, a, b, ci);
  arch::mma_m16n8k64_u4s4s32(ci, a, b, ci);  // unsigned activations (act_unsigned layers)
  arch::mma_m16n8k32_u8s8s32(ci, a, b, ci);
  const uint32_t at[4] = {arch::float_to_tf32_rna(cf[0]), arch::float_to_tf32_rna(cf[1]), a[2], a[3]};
  arch::mma_m16n8k8_tf32tf32f32(cf, at, b, cf);

  uint32_t r1[1], r2[2], r4[4];
  const uint16_t* row = tile + 8 * lane;
  arch::ldmatrix_x1(r1, row);
  arch::ldmatrix_x2(r2, row);
  arch::ldmatrix_x4(r4, row);
  uint32_t t1[1], t2[2], t4[4];
  arch::ldmatrix_x1_trans(t1, row);
  arch::ldmatrix_x2_trans(t2, row);
  arch::ldmatrix_x4_trans(t4, row);

  uint32_t s8lo, s8hi, e4lo, e4hi;
  arch::s4x8_to_s8x8(in[6], s8lo, s8hi);
  arch::s4x8_to_e4m3x8(in[7], e4lo, e4hi);
  uint32_t u8lo, u8hi;
  arch::u4x8_to_u8x8(in[13], u8lo, u8hi);
  const int32_t dot = arch::dp4a_us(u8lo ^ u8hi, static_cast<int32_t>(s8hi),
                                    arch::dp4a(static_cast<int32_t>(s8lo), static_cast<int32_t>(s8hi), ci[0]));
  const float scale = arch::e4m3_to_float(in[8]);
  const uint32_t wb = arch::e2m1x2_scaled_to_bf16x2(in[9], scale);
  const uint32_t wh = arch::e2m1x2_scaled_to_f16x2(in[9], scale);
  const uint32_t pb = arch::pack_bf16x2_rn(cf[0], cf[1]);
  const uint32_t ph = arch::pack_f16x2_rn(cf[2], cf[3]);
  const float back = arch::bf16_to_float(arch::float_to_bf16_rn(cf[0])) +
                     arch::f16_to_float(arch::float_to_f16_rn(cf[1])) + arch::e2m1_to_float(in[10]);

  uint32_t* o = out + 32 * lane;
  const uint4 v4 = arch::ld_global<uint4>(in + 16);
  arch::st_global(o + 8, arch::ld_global<uint2>(in + 20));
  arch::st_global(o + 12, v4);
  o[0] = static_cast<uint32_t>(ci[0] + ci[1] + ci[2] + ci[3]);
  o[1] = __float_as_uint(cf[0] + cf[1] + cf[2] + cf[3] + back);
  o[2] = r1[0] ^ r2[0] ^ r2[1] ^ r4[0] ^ r4[1] ^ r4[2] ^ r4[3];
  o[3] = t1[0] ^ t2[0] ^ t2[1] ^ t4[0] ^ t4[1] ^ t4[2] ^ t4[3];
  o[4] = s8lo ^ s8hi ^ e4lo ^ e4hi ^ static_cast<uint32_t>(dot);
  o[5] = wb ^ wh ^ pb ^ ph ^ arch::e2m1x2_to_bf16x2(in[12]) ^ arch::e2m1x2_to_f16x2(in[12]) ^
         arch::e2m1_to_bf16(in[11]) ^ arch::e2m1_to_f16(in[11]);
}

// Apart, because below sm_89 its body is a trap, after which the compiler drops everything else.
__global__ void arch_instruction_check_e4m3_kernel(const uint32_t* in, float* out) {
  const uint32_t a[4] = {in[0], in[1], in[2], in[3]}, b[2] = {in[4], in[5]};
  float c[4] = {0.f, 1.f, 2.f, 3.f};
  arch::mma_m16n8k32_e4m3e4m3f32(c, a, b, c);
  float* o = out + 4 * (threadIdx.x % 32);
  for (int i = 0; i < 4; ++i) o[i] = c[i];
}

}  // namespace svdq::cuda
