// Kernel API of scalselect in plain C++: raw pointers, sizes, strides, a stream handle.
// No framework types cross this boundary; Python checks shapes, dtypes and devices first.
#pragma once
#include <cstdint>

namespace scalselect {

// Element types the kernels read. Values match _DTYPE_CODES in scalselect/kernels/__init__.py.
enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// Row-wise preprocessing shared by both passes, for rows x[i, :] of an n x d matrix:
//   r_i = (x_i - shift) * inv_scale          (inv_scale may be null: no scaling)
//   c_i = r_i / ||r_i||   if l2_normalize (rows of norm 0 stay 0), else r_i
// all in float64.

// Pass 1 (Gram accumulation) and the sketch update: writes c_i as float32 to out (n x d,
// contiguous), adds sum_i c_i (float64) into colsum and, when colsumsq is not null,
// sum_i c_i^2 per column (float64, from the unrounded values) into colsumsq. The caller then
// forms the products (out^T out, or out times a test matrix) with a BLAS GEMM.
void gram_prep_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                   const double* shift, const double* inv_scale, float* out, double* colsum, double* colsumsq);

// Pass 2 (scores): score_i = || c_i W ||^2 with W (d x k, float32, row-major), in float64,
// without storing the n x k product.
void projected_sqnorm_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                          const double* shift, const double* inv_scale, const float* w, int64_t k, double* out);

// Representation extraction (semantics: attention_mass / top_mass_mean in
// scalselect/kernels/twins.py). All tensors contiguous; masks are [batch, seq] bytes (0 / 1).
//
// attention_mass: q [batch, heads, seq, hd] and k [batch, kv_heads, seq, hd] of `dtype`, heads a
// multiple of kv_heads (head h reads kv head h / (heads / kv_heads)). For the rows i with
// row_is_instruction[i] && key_valid[i], the softmax of the logits l = scale * q_i . k_j (then
// softcap * tanh(l / softcap) when softcap > 0) over the keys key_lo[i] <= j < key_hi[i] with
// key_valid[j] (int32 [batch, seq] each; the caller guarantees key_lo[i] <= i < key_hi[i] <= seq
// for those rows); out[b, j] (float32, every entry written) = mean over heads and those rows of
// P[i, j] where col_is_vision[j], else 0. Works on one tile of logits at a time, never a
// [seq, seq] map.
void attention_mass_cpu(const void* q, const void* k, DType dtype, int64_t batch, int64_t heads, int64_t kv_heads,
                        int64_t seq, int64_t hd, const uint8_t* key_valid, const uint8_t* row_is_instruction,
                        const uint8_t* col_is_vision, const int32_t* key_lo, const int32_t* key_hi, double scale,
                        double softcap, float* out);

// top_mass_mean: hidden [batch, seq, dim] of `dtype`, mass [batch, seq] float64. Per sample,
// p = mass / sum over the vision tokens (uniform when the sum is not > 0), sorted descending
// (ties: earlier position first), kept up to and including the first token whose running sum
// exceeds tau (at least one). out [batch, dim] float32 = mean hidden state of the kept tokens;
// kept [batch] = their count (0 and a zero vector for a sample without vision tokens).
void top_mass_mean_cpu(const void* hidden, DType dtype, int64_t batch, int64_t seq, int64_t dim, const double* mass,
                       const uint8_t* col_is_vision, double tau, float* out, int64_t* kept);

#ifdef SCALSELECT_WITH_CUDA
// Same contracts on device pointers, enqueued on `stream` (a cudaStream_t as an integer).
// colsum and out live on the device; colsum is accumulated with atomics.
void gram_prep_cuda(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                    const double* shift, const double* inv_scale, float* out, double* colsum, double* colsumsq,
                    std::uintptr_t stream);
void projected_sqnorm_cuda(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                           const double* shift, const double* inv_scale, const float* w, int64_t k, double* out,
                           std::uintptr_t stream);
void attention_mass_cuda(const void* q, const void* k, DType dtype, int64_t batch, int64_t heads, int64_t kv_heads,
                         int64_t seq, int64_t hd, const uint8_t* key_valid, const uint8_t* row_is_instruction,
                         const uint8_t* col_is_vision, const int32_t* key_lo, const int32_t* key_hi, double scale,
                         double softcap, float* out, std::uintptr_t stream);
void top_mass_mean_cuda(const void* hidden, DType dtype, int64_t batch, int64_t seq, int64_t dim, const double* mass,
                        const uint8_t* col_is_vision, double tau, float* out, int64_t* kept, std::uintptr_t stream);
// Architectures this module was compiled for, e.g. "80,90".
const char* cuda_archs();
#endif

}  // namespace scalselect
