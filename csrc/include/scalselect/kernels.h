// Kernel API of scalselect in plain C++: raw pointers, sizes, strides, a stream handle.
// No framework types cross this boundary; Python checks shapes, dtypes and devices first.
#pragma once
#include <cstdint>

namespace scalselect {

// Element types the kernels read. Values match _DTYPE_CODES in scalselect/kernels/__init__.py.
enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// Row-wise preprocessing shared by both passes, for rows x[i, :] of an n x d matrix:
//   r_i = x_i / ||x_i||   if l2_normalize (rows of norm 0 stay 0), else x_i
//   c_i = (r_i - shift) * inv_scale          (inv_scale may be null: no scaling)
// all in float64.

// Pass 1 (Gram accumulation): writes c_i as float32 to out (n x d, contiguous) and adds
// sum_i c_i (float64) into colsum. The caller then forms out^T out with a BLAS GEMM.
void gram_prep_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                   bool l2_normalize, const double* shift, const double* inv_scale,
                   float* out, double* colsum);

// Pass 2 (scores): score_i = || c_i W ||^2 with W (d x k, float32, row-major), in float64,
// without storing the n x k product.
void projected_sqnorm_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                          bool l2_normalize, const double* shift, const double* inv_scale,
                          const float* w, int64_t k, double* out);

#ifdef SCALSELECT_WITH_CUDA
// Same contracts on device pointers, enqueued on `stream` (a cudaStream_t as an integer).
// colsum and out live on the device; colsum is accumulated with atomics.
void gram_prep_cuda(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                    bool l2_normalize, const double* shift, const double* inv_scale,
                    float* out, double* colsum, std::uintptr_t stream);
void projected_sqnorm_cuda(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                           bool l2_normalize, const double* shift, const double* inv_scale,
                           const float* w, int64_t k, double* out, std::uintptr_t stream);
// Architectures this module was compiled for, e.g. "80;90".
const char* cuda_archs();
#endif

}  // namespace scalselect
