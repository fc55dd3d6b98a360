// The one switch over storage types that the CPU kernels share: fn(typed pointer, to_float)
// for the DType a tensor was stored in, with half types converted by bit manipulation.
#pragma once
#include <cstdint>

#include "scalselect/half.h"
#include "scalselect/kernels.h"

namespace scalselect {

template <typename Fn>
inline void with_dtype(DType dtype, const void* x, Fn fn) {
  switch (dtype) {
    case DType::F32:
      fn(static_cast<const float*>(x), [](float v) { return v; });
      break;
    case DType::F64:
      fn(static_cast<const double*>(x), [](double v) { return v; });
      break;
    case DType::F16:
      fn(static_cast<const uint16_t*>(x), [](uint16_t v) { return f16_to_float(v); });
      break;
    case DType::BF16:
      fn(static_cast<const uint16_t*>(x), [](uint16_t v) { return bf16_to_float(v); });
      break;
  }
}

}  // namespace scalselect
