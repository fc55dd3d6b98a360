// Shared by the .cu files: error checks and reading one element of any supported dtype.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "scalselect/half.h"
#include "scalselect/kernels.h"

namespace scalselect {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Element idx of x, whose dtype is `dtype`, as T (float or double).
template <typename T>
__device__ __forceinline__ T load_as(const void* x, DType dtype, int64_t idx) {
  switch (dtype) {
    case DType::F32:
      return T(static_cast<const float*>(x)[idx]);
    case DType::F64:
      return T(static_cast<const double*>(x)[idx]);
    case DType::F16:
      return T(f16_to_float(static_cast<const uint16_t*>(x)[idx]));
    default:
      return T(bf16_to_float(static_cast<const uint16_t*>(x)[idx]));
  }
}

}  // namespace scalselect
