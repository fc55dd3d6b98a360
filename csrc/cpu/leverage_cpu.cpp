// CPU kernels for the two streaming passes of the leverage-score engine.
#include <algorithm>
#include <cmath>
#include <vector>

#include "scalselect/half.h"
#include "scalselect/kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace scalselect {
namespace {

// One row converted to float64 (the precision every centring step runs in).
template <typename Loader>
void load_row(Loader load, int64_t d, double* dst) {
  for (int64_t j = 0; j < d; ++j) dst[j] = load(j);
}

// Reads row i of x into dst as float64, whatever the storage type.
void read_row(const void* x, DType dtype, int64_t i, int64_t d, int64_t row_stride, double* dst) {
  switch (dtype) {
    case DType::F32: {
      const float* r = static_cast<const float*>(x) + i * row_stride;
      load_row([r](int64_t j) { return double(r[j]); }, d, dst);
      break;
    }
    case DType::F64: {
      const double* r = static_cast<const double*>(x) + i * row_stride;
      load_row([r](int64_t j) { return r[j]; }, d, dst);
      break;
    }
    case DType::F16: {
      const uint16_t* r = static_cast<const uint16_t*>(x) + i * row_stride;
      load_row([r](int64_t j) { return double(f16_to_float(r[j])); }, d, dst);
      break;
    }
    case DType::BF16: {
      const uint16_t* r = static_cast<const uint16_t*>(x) + i * row_stride;
      load_row([r](int64_t j) { return double(bf16_to_float(r[j])); }, d, dst);
      break;
    }
  }
}

// c = ((x / ||x||) - shift) * inv_scale in place, see kernels.h.
void centre_row(double* row, int64_t d, bool l2_normalize, const double* shift,
                const double* inv_scale) {
  double norm_inv = 1.0;
  if (l2_normalize) {
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += row[j] * row[j];
    norm_inv = ss > 0.0 ? 1.0 / std::sqrt(ss) : 0.0;
  }
  if (inv_scale) {
    for (int64_t j = 0; j < d; ++j) row[j] = (row[j] * norm_inv - shift[j]) * inv_scale[j];
  } else {
    for (int64_t j = 0; j < d; ++j) row[j] = row[j] * norm_inv - shift[j];
  }
}

int thread_count(int64_t rows) {
#ifdef _OPENMP
  return int(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), rows / 16)));
#else
  (void)rows;
  return 1;
#endif
}

// Rows handled together in pass 2, so that each row of W is loaded once per block.
constexpr int64_t kRowBlock = 16;
// Columns of W handled together: the kRowBlock x kColTile accumulator stays in L1.
constexpr int64_t kColTile = 256;

// acc[r][0..width) += sum_j c[r][j] * w[j][col0 .. col0+width)
__attribute__((target_clones("avx512f", "avx2", "default")))
void block_times_w(const float* c, int64_t rows, int64_t d, const float* w, int64_t k,
                   int64_t col0, int64_t width, float* acc) {
  for (int64_t j = 0; j < d; ++j) {
    const float* wj = w + j * k + col0;
    for (int64_t r = 0; r < rows; ++r) {
      const float cv = c[r * d + j];
      float* a = acc + r * kColTile;
      for (int64_t t = 0; t < width; ++t) a[t] += cv * wj[t];
    }
  }
}

}  // namespace

void gram_prep_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                   bool l2_normalize, const double* shift, const double* inv_scale,
                   float* out, double* colsum) {
  if (n <= 0 || d <= 0) return;
  const int threads = thread_count(n);
  // Each thread sums its rows into its own column vector; merged once at the end.
  std::vector<double> partial(size_t(threads) * size_t(d), 0.0);
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    std::vector<double> row(d);
    double* mine = partial.data() + size_t(tid) * size_t(d);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      read_row(x, dtype, i, d, row_stride, row.data());
      centre_row(row.data(), d, l2_normalize, shift, inv_scale);
      float* o = out + i * d;
      for (int64_t j = 0; j < d; ++j) {
        mine[j] += row[j];
        o[j] = float(row[j]);
      }
    }
  }
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < d; ++j) colsum[j] += partial[size_t(t) * size_t(d) + size_t(j)];
}

void projected_sqnorm_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride,
                          bool l2_normalize, const double* shift, const double* inv_scale,
                          const float* w, int64_t k, double* out) {
  if (n <= 0) return;
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
#pragma omp parallel num_threads(thread_count(n))
  {
    std::vector<double> row(d);
    std::vector<float> c(size_t(kRowBlock) * size_t(d));
    std::vector<float> acc(size_t(kRowBlock) * size_t(kColTile));
#pragma omp for schedule(dynamic, 4)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kRowBlock;
      const int64_t rows = std::min(kRowBlock, n - i0);
      for (int64_t r = 0; r < rows; ++r) {
        read_row(x, dtype, i0 + r, d, row_stride, row.data());
        centre_row(row.data(), d, l2_normalize, shift, inv_scale);
        for (int64_t j = 0; j < d; ++j) c[r * d + j] = float(row[j]);
      }
      std::vector<double> sq(rows, 0.0);
      for (int64_t col0 = 0; col0 < k; col0 += kColTile) {
        const int64_t width = std::min(kColTile, k - col0);
        std::fill(acc.begin(), acc.end(), 0.0f);
        block_times_w(c.data(), rows, d, w, k, col0, width, acc.data());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t t = 0; t < width; ++t) {
            const double v = acc[r * kColTile + t];
            sq[r] += v * v;
          }
      }
      for (int64_t r = 0; r < rows; ++r) out[i0 + r] = sq[r];
    }
  }
}

}  // namespace scalselect
