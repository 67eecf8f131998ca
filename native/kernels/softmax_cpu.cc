// CPU twin of softmax.cu. Per row, three passes: the max of s·x; e_j = exp(s·x_j - max) into an
// f32 scratch row while summing; y_j = e_j / sum, rounded once to the storage dtype.
// Max and sum keep kLanes independent partials so the loops vectorise without reassociation
// flags, and exp is exp_f32 below rather than std::exp, whose libm call keeps a loop scalar.
#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"
#include "softmax.h"

namespace kvf {
namespace {

constexpr int kLanes = 16;

// A float select written with bit masks: GCC's default -ftrapping-math will not if-convert
// `c ? arithmetic : other` on floats, which would keep the whole loop scalar.
inline uint32_t mask_if(bool c) { return 0u - static_cast<uint32_t>(c); }
inline float select_f32(uint32_t mask, float a, float b) { return bits_f32((f32_bits(a) & mask) | (f32_bits(b) & ~mask)); }

// exp(x) in f32, vectorisable: x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
// product), e^r by Cephes' degree-7 polynomial, then scaled by 2^n in two steps so results in
// the subnormal range round once. Max error 1.01 ulp over every float (checked exhaustively
// against double exp, with and without FMA contraction); exact inf, 0 and NaN at the edges.
// The same routine is in silu_mul_cpu.cc; keep the two identical.
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

// Rows [r0, r1); e is a scratch row of `cols` floats.
template <typename T>
KVF_CPU_CLONES void softmax_rows(const SoftmaxArgs& a, float* e, int64_t r0, int64_t r1) {
  const int64_t cols = a.cols;
  const float s = a.scale;
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * cols;
    T* y = static_cast<T*>(a.y) + r * cols;

    float lane_max[kLanes];
    for (int l = 0; l < kLanes; ++l) lane_max[l] = -INFINITY;
    int64_t j = 0;
    for (; j + kLanes <= cols; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = s * to_f32(x[j + l]);
        lane_max[l] = v > lane_max[l] ? v : lane_max[l];  // NaN never becomes the max
      }
    }
    float m = -INFINITY;
    for (int l = 0; l < kLanes; ++l) m = lane_max[l] > m ? lane_max[l] : m;
    for (; j < cols; ++j) {
      const float v = s * to_f32(x[j]);
      m = v > m ? v : m;
    }

    if (m == -INFINITY) {  // fully masked row: zeros (a NaN input still shows as NaN)
      for (j = 0; j < cols; ++j) {
        const float v = s * to_f32(x[j]);
        y[j] = from_f32<T>(std::isnan(v) ? v : 0.0f);
      }
      continue;
    }

    float lane_sum[kLanes] = {};
    for (j = 0; j + kLanes <= cols; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = exp_f32(s * to_f32(x[j + l]) - m);
        e[j + l] = v;
        lane_sum[l] += v;
      }
    }
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += lane_sum[l];
    for (; j < cols; ++j) {
      const float v = exp_f32(s * to_f32(x[j]) - m);
      e[j] = v;
      sum += v;
    }

    for (j = 0; j < cols; ++j) y[j] = from_f32<T>(e[j] / sum);
  }
}

}  // namespace

Status softmax_cpu(const SoftmaxArgs& a) {
  if (a.rows == 0 || a.cols == 0) return Status::Ok();
  return dispatch_float(a.dtype, "softmax", [&](auto tag) {
    using T = decltype(tag);
    const int64_t grain = std::max<int64_t>(1, 16384 / a.cols);  // ~16K elements per chunk
    cpu::parallel_for(a.rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<float> e(static_cast<size_t>(a.cols));
      softmax_rows<T>(a, e.data(), r0, r1);
    });
    return Status::Ok();
  });
}

}  // namespace kvf
