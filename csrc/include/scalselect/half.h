// float16 / bfloat16 <-> float32 conversions by bit manipulation (host and device).
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SCALSELECT_HD __host__ __device__ __forceinline__
#else
#define SCALSELECT_HD inline
#endif

namespace scalselect {

SCALSELECT_HD float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

SCALSELECT_HD float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// IEEE binary16 -> binary32, exact for normals, subnormals, infinities and NaNs.
SCALSELECT_HD float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float32
  const float mag = float(man) * 5.9604644775390625e-08f;
  return sign ? -mag : mag;
}

}  // namespace scalselect
