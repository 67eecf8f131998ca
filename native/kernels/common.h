// Shared vocabulary of every kernel: dtypes, status, and the scalar conversions that must be
// bit-identical on host and device. No napi.h here, no CUDA headers: kernels/ is plain C++ so
// each op's CPU twin and CUDA kernel share one header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#if defined(__CUDACC__)
#define KVF_HD __host__ __device__ __forceinline__
#else
#define KVF_HD inline
#endif

namespace kvf {

enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2, i32 = 3, u8 = 4 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
  }
  return "?";
}

inline bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// Mirrors NativeStatus in lib/errors.ts.
enum class StatusCode : int32_t {
  ok = 0,
  invalid_argument = 1,
  out_of_memory = 2,
  device_error = 3,
  unsupported = 4,
  internal = 5,
  disposed = 6,
};

// Every fallible native call returns a Status; nothing below N-API throws across the boundary,
// exits or aborts.
struct Status {
  StatusCode code = StatusCode::ok;
  std::string message;

  Status() = default;
  Status(StatusCode c, std::string m) : code(c), message(std::move(m)) {}
  static Status Ok() { return {}; }
  bool ok() const { return code == StatusCode::ok; }
};

inline Status invalid_argument(std::string m) { return {StatusCode::invalid_argument, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::unsupported, std::move(m)}; }
inline Status out_of_memory(std::string m) { return {StatusCode::out_of_memory, std::move(m)}; }
inline Status device_error(std::string m) { return {StatusCode::device_error, std::move(m)}; }

#define KVF_RETURN_IF_ERROR(expr)          \
  do {                                     \
    ::kvf::Status _kvf_s = (expr);         \
    if (!_kvf_s.ok()) return _kvf_s;       \
  } while (0)

// Storage types for the 16-bit floats. Plain bit containers so that host code never depends on
// cuda_fp16.h and both sides round identically (round-to-nearest-even, NaN stays NaN).
struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

KVF_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

KVF_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KVF_HD float bf16_to_f32(bf16_t h) { return bits_f32(static_cast<uint32_t>(h.bits) << 16); }

KVF_HD bf16_t f32_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
  const uint32_t quiet_nan = (u >> 16) | 0x0040u;                    // NaN: keep sign, set the quiet bit
  // An integer select, not a branch, so loops over this conversion vectorise.
  return bf16_t{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}

KVF_HD float f16_to_f32(f16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_f32(sign);  // signed zero
  // Subnormal: value = mant * 2^-24, exact in f32.
  int e = -1;
  do {
    mant <<= 1;
    ++e;
  } while ((mant & 0x400u) == 0);
  return bits_f32(sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13));
}

KVF_HD f16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16_t{static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  if (abs >= 0x477ff000u) return f16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (abs >= 0x38800000u) {                                                       // normal f16
    uint32_t r = abs - 0x38000000u;                                               // rebias 127 -> 15
    r += 0xfffu + ((r >> 13) & 1u);
    return f16_t{static_cast<uint16_t>(sign | (r >> 13))};
  }
  if (abs < 0x33000000u) return f16_t{sign};  // below half the smallest subnormal: +-0
  // Subnormal f16: shift the full significand into place, round to nearest even.
  const uint32_t exp = abs >> 23;
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // 14 + (112 - exp) ... value = mant * 2^(exp-150)
  const uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
  return f16_t{static_cast<uint16_t>(sign | r)};
}

// Uniform load/store so templated kernels read any float storage type as f32.
KVF_HD float to_f32(float x) { return x; }
KVF_HD float to_f32(f16_t x) { return f16_to_f32(x); }
KVF_HD float to_f32(bf16_t x) { return bf16_to_f32(x); }

template <typename T> KVF_HD T from_f32(float x);
template <> KVF_HD float from_f32<float>(float x) { return x; }
template <> KVF_HD f16_t from_f32<f16_t>(float x) { return f32_to_f16(x); }
template <> KVF_HD bf16_t from_f32<bf16_t>(float x) { return f32_to_bf16(x); }

// Calls fn(T{}) with T the storage type of a float dtype; returns unsupported for others.
template <typename Fn>
Status dispatch_float(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::f32: return fn(float{});
    case DType::f16: return fn(f16_t{});
    case DType::bf16: return fn(bf16_t{});
    default:
      return unsupported(std::string(op) + ": dtype " + dtype_name(t) + " is not supported (expected f32, f16 or bf16)");
  }
}

// Pair layout of rotary embeddings. `adjacent`: pairs (2i, 2i+1) (GPT-J, llama.cpp "NORM",
// Meta's original Llama). `half`: pairs (i, i + d/2) (HF rotate_half, GPT-NeoX).
enum class RopeLayout : int32_t { adjacent = 0, half = 1 };

}  // namespace kvf
