// Vectorisable scalar math for the CPU twins. Hot loops call these instead of libm, whose
// calls keep a loop scalar, and select with bit masks instead of `?:`, which GCC's default
// -ftrapping-math will not if-convert on floats.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace kvf::cpu {

// A float select written with bit masks: GCC's default -ftrapping-math will not if-convert
// `c ? arithmetic : other` on floats, which would keep the whole loop scalar.
inline uint32_t mask_if(bool c) { return 0u - static_cast<uint32_t>(c); }
inline float select_f32(uint32_t mask, float a, float b) { return bits_f32((f32_bits(a) & mask) | (f32_bits(b) & ~mask)); }

// exp(x) in f32, vectorisable: x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
// product), e^r by Cephes' degree-7 polynomial, then scaled by 2^n in two steps so results in
// the subnormal range round once. Max error 1.01 ulp over every float (checked exhaustively
// against double exp, with and without FMA contraction); exact inf, 0 and NaN at the edges.
inline float exp_f32(float x) {
  const uint32_t ux = f32_bits(x);
  const uint32_t nan = mask_if((ux & 0x7fffffffu) > 0x7f800000u);
  const uint32_t overflow = mask_if(static_cast<int32_t>(ux) > 0x42b17217);  // x > 88.7228317f
  const uint32_t underflow = mask_if(ux > 0xc2cff1b5u);                       // x < -103.972084f
  const float xc = select_f32(overflow, 88.0f, select_f32(underflow, -104.0f, x));
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float z = xc * 1.44269504088896341f + magic;
  const int32_t n = static_cast<int32_t>(f32_bits(z) - f32_bits(magic));
  const float nf = z - magic;
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  const int32_t n1 = n >> 1, n2 = n - n1;  // n in [-150, 128]: both halves are normal exponents
  const float y = er * bits_f32(static_cast<uint32_t>(n1 + 127) << 23) * bits_f32(static_cast<uint32_t>(n2 + 127) << 23);
  return select_f32(nan, x, select_f32(overflow, INFINITY, select_f32(underflow, 0.0f, y)));
}

}  // namespace kvf::cpu
