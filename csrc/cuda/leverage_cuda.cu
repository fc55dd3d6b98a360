// CUDA kernels for the two streaming passes; same contracts as the CPU ones (kernels.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common.cuh"

namespace scalselect {
namespace {

constexpr int kThreads = 256;

// Block-wide sum of one double per thread; result valid in thread 0.
__device__ double block_sum(double v, double* scratch) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? scratch[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  __syncthreads();
  return v;
}

__device__ __forceinline__ double shifted(const void* x, DType dtype, int64_t i, int64_t j, int64_t row_stride,
                                          const double* shift, const double* inv_scale) {
  const double v = load_as<double>(x, dtype, i * row_stride + j) - shift[j];
  return inv_scale ? v * inv_scale[j] : v;
}

// One block per row: 1 / ||(x_i - shift) * inv_scale||, or 0 for a zero row.
__global__ void row_inv_norm_kernel(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                                    const double* shift, const double* inv_scale, double* inv_norm) {
  __shared__ double scratch[32];
  const int64_t i = blockIdx.x;
  if (i >= n) return;
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const double v = shifted(x, dtype, i, j, row_stride, shift, inv_scale);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  if (threadIdx.x == 0) inv_norm[i] = ss > 0.0 ? rsqrt(ss) : 0.0;
}

__device__ __forceinline__ double centred(const void* x, DType dtype, int64_t i, int64_t j, int64_t row_stride,
                                          const double* inv_norm, const double* shift, const double* inv_scale) {
  const double v = shifted(x, dtype, i, j, row_stride, shift, inv_scale);
  return inv_norm ? v * inv_norm[i] : v;
}

// Grid: (column tiles of kThreads, row slabs). Each thread walks its column down its slab.
__global__ void gram_prep_kernel(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                                 const double* inv_norm, const double* shift, const double* inv_scale,
                                 int64_t rows_per_slab, float* out, double* colsum, double* colsumsq) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int64_t i0 = int64_t(blockIdx.y) * rows_per_slab;
  const int64_t i1 = n < i0 + rows_per_slab ? n : i0 + rows_per_slab;
  double s = 0.0, sq = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const double c = centred(x, dtype, i, j, row_stride, inv_norm, shift, inv_scale);
    out[i * d + j] = float(c);
    s += c;
    sq += c * c;
  }
  atomicAdd(colsum + j, s);
  if (colsumsq) atomicAdd(colsumsq + j, sq);
}

constexpr int kRows = 8;    // rows per block in the projection
constexpr int kDTile = 64;  // slice of d staged in shared memory

// Grid: one block per kRows rows. Threads own output columns t, t+blockDim, ...; the centred
// rows are staged in shared memory tile by tile so W is read once per block, coalesced.
__global__ void projected_sqnorm_kernel(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                                        const double* inv_norm, const double* shift, const double* inv_scale,
                                        const float* w, int64_t k, double* out) {
  __shared__ float tile[kRows][kDTile];
  __shared__ double scratch[32];
  const int64_t i0 = int64_t(blockIdx.x) * kRows;
  const int rows = n - i0 < kRows ? int(n - i0) : kRows;
  double sq[kRows];
  for (int r = 0; r < kRows; ++r) sq[r] = 0.0;
  for (int64_t col0 = 0; col0 < k; col0 += blockDim.x) {
    const int64_t col = col0 + threadIdx.x;
    float acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    for (int64_t j0 = 0; j0 < d; j0 += kDTile) {
      const int width = d - j0 < kDTile ? int(d - j0) : kDTile;
      for (int e = threadIdx.x; e < kRows * kDTile; e += blockDim.x) {
        const int r = e / kDTile, jj = e % kDTile;
        tile[r][jj] = (r < rows && jj < width)
                          ? float(centred(x, dtype, i0 + r, j0 + jj, row_stride, inv_norm, shift, inv_scale))
                          : 0.0f;
      }
      __syncthreads();
      if (col < k)
        for (int jj = 0; jj < width; ++jj) {
          const float wv = w[(j0 + jj) * k + col];
          for (int r = 0; r < kRows; ++r) acc[r] += tile[r][jj] * wv;
        }
      __syncthreads();
    }
    for (int r = 0; r < kRows; ++r) sq[r] += double(acc[r]) * double(acc[r]);
  }
  for (int r = 0; r < kRows; ++r) {
    const double total = block_sum(sq[r], scratch);
    if (threadIdx.x == 0 && r < rows) out[i0 + r] = total;
  }
}

// Device buffer of n inverse norms of the shifted, scaled rows when they are L2-normalised
// (else null: scale 1), freed in stream order when the call returns.
struct InvNorms {
  cudaStream_t stream;
  double* ptr = nullptr;
  InvNorms(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize, const double* shift,
           const double* inv_scale, cudaStream_t s)
      : stream(s) {
    if (!l2_normalize) return;
    check(cudaMallocAsync(&ptr, sizeof(double) * size_t(n), s), "cudaMallocAsync");
    row_inv_norm_kernel<<<unsigned(n), kThreads, 0, s>>>(x, dtype, n, d, row_stride, shift, inv_scale, ptr);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
      cudaFreeAsync(ptr, s);  // the destructor does not run when the constructor throws
      check(err, "row_inv_norm_kernel");
    }
  }
  ~InvNorms() {
    if (ptr) cudaFreeAsync(ptr, stream);
  }
};

}  // namespace

void gram_prep_cuda(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                    const double* shift, const double* inv_scale, float* out, double* colsum, double* colsumsq,
                    std::uintptr_t stream) {
  if (n <= 0 || d <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  InvNorms norms(x, dtype, n, d, row_stride, l2_normalize, shift, inv_scale, s);
  // Rows per slab from the device: enough slabs for about 8 resident blocks of kThreads per SM
  // (a short chunk still fills the GPU), 16 to 64 rows each (longer slabs, fewer colsum
  // atomics), and never more slabs than the grid's y limit allows.
  int device = 0, sms = 0, max_grid_y = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&max_grid_y, cudaDevAttrMaxGridDimY, device), "cudaDeviceGetAttribute");
  const int64_t col_tiles = (d + kThreads - 1) / kThreads;
  const int64_t want_slabs = std::max<int64_t>(1, (8 * int64_t(sms) + col_tiles - 1) / col_tiles);
  int64_t slab = std::min<int64_t>(64, std::max<int64_t>(16, (n + want_slabs - 1) / want_slabs));
  slab = std::max<int64_t>(slab, (n + max_grid_y - 1) / max_grid_y);
  dim3 grid(unsigned(col_tiles), unsigned((n + slab - 1) / slab));
  gram_prep_kernel<<<grid, kThreads, 0, s>>>(x, dtype, n, d, row_stride, norms.ptr, shift, inv_scale, slab, out, colsum,
                                             colsumsq);
  check(cudaGetLastError(), "gram_prep_kernel");
}

void projected_sqnorm_cuda(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                           const double* shift, const double* inv_scale, const float* w, int64_t k, double* out,
                           std::uintptr_t stream) {
  if (n <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  InvNorms norms(x, dtype, n, d, row_stride, l2_normalize, shift, inv_scale, s);
  const unsigned blocks = unsigned((n + kRows - 1) / kRows);
  projected_sqnorm_kernel<<<blocks, kThreads, 0, s>>>(x, dtype, n, d, row_stride, norms.ptr, shift, inv_scale, w, k,
                                                      out);
  check(cudaGetLastError(), "projected_sqnorm_kernel");
}

const char* cuda_archs() { return SCALSELECT_CUDA_ARCHS; }

}  // namespace scalselect
