// CPU kernels for the two streaming passes of the leverage-score engine.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "scalselect/dtype.h"
#include "scalselect/kernels.h"
#include "scalselect/parallel.h"

namespace scalselect {
namespace {

// Reads row i of x into dst as float64 (the precision every centring step runs in).
void read_row(const void* x, DType dtype, int64_t i, int64_t d, int64_t row_stride, double* dst) {
  with_dtype(dtype, x, [&](auto data, auto convert) {
    const auto* r = data + i * row_stride;
    for (int64_t j = 0; j < d; ++j) dst[j] = double(convert(r[j]));
  });
}

// c = (x - shift) * inv_scale, then scaled to unit length if l2_normalize, in place (kernels.h).
void centre_row(double* row, int64_t d, bool l2_normalize, const double* shift, const double* inv_scale) {
  if (inv_scale) {
    for (int64_t j = 0; j < d; ++j) row[j] = (row[j] - shift[j]) * inv_scale[j];
  } else {
    for (int64_t j = 0; j < d; ++j) row[j] -= shift[j];
  }
  if (l2_normalize) {
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += row[j] * row[j];
    const double norm_inv = ss > 0.0 ? 1.0 / std::sqrt(ss) : 0.0;
    for (int64_t j = 0; j < d; ++j) row[j] *= norm_inv;
  }
}

int thread_count(int64_t rows) { return int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows / 16))); }

// Pass 2 is a small GEMM (rows x d) * (d x k) whose product is only squared and summed, so it
// is blocked like one: W is packed into panels of kNr columns, a block of kRowBlock centred rows
// stays in cache, and a kMr x kNr tile of the product lives in registers while the depth loop
// runs over kKc columns of the rows at a time.
constexpr int kMr = 6;   // rows of the register tile
constexpr int kNr = 16;  // columns of the register tile: two 8-float vectors
constexpr int64_t kRowBlock = 4 * kMr;
constexpr int64_t kKc = 256;  // depth slice: kMr x kKc rows and kKc x kNr panel fit L1

typedef float v8f __attribute__((vector_size(32)));

// W (d x k, row-major) -> panels[t][j][0..kNr) = W[j][t*kNr + ...], zero-padded past k.
std::vector<float> pack_panels(const float* w, int64_t d, int64_t k) {
  const int64_t tiles = (k + kNr - 1) / kNr;
  std::vector<float> panels(size_t(tiles * d * kNr), 0.0f);
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t j = 0; j < d; ++j)
      for (int64_t c = 0; c < kNr && t * kNr + c < k; ++c)
        panels[size_t((t * d + j) * kNr + c)] = w[j * k + t * kNr + c];
  return panels;
}

// An AVX2+FMA clone next to the portable one, picked at load time, where the compiler can.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SCALSELECT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SCALSELECT_CLONES
#endif

// acc[r][0..kNr) += sum_{j < depth} c[r * ldc + j] * panel[j][0..kNr), for kMr rows.
SCALSELECT_CLONES
void register_tile(const float* c, int64_t ldc, const float* panel, int64_t depth, float* acc) {
  v8f a[kMr][2];
  for (int r = 0; r < kMr; ++r) {
    std::memcpy(&a[r][0], acc + r * kNr, sizeof(v8f));
    std::memcpy(&a[r][1], acc + r * kNr + 8, sizeof(v8f));
  }
  for (int64_t j = 0; j < depth; ++j) {
    v8f w0, w1;
    std::memcpy(&w0, panel + j * kNr, sizeof(v8f));
    std::memcpy(&w1, panel + j * kNr + 8, sizeof(v8f));
    for (int r = 0; r < kMr; ++r) {
      const float cv = c[r * ldc + j];
      const v8f b = {cv, cv, cv, cv, cv, cv, cv, cv};
      a[r][0] += b * w0;
      a[r][1] += b * w1;
    }
  }
  for (int r = 0; r < kMr; ++r) {
    std::memcpy(acc + r * kNr, &a[r][0], sizeof(v8f));
    std::memcpy(acc + r * kNr + 8, &a[r][1], sizeof(v8f));
  }
}

}  // namespace

void gram_prep_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                   const double* shift, const double* inv_scale, float* out, double* colsum, double* colsumsq) {
  if (n <= 0 || d <= 0) return;
  const int threads = thread_count(n);
  const bool squares = colsumsq != nullptr;
  // One contiguous range of rows per task, summed into the task's own column vectors (sums,
  // then squares) and merged in task order: the sums depend on the thread count only.
  const size_t width = size_t(d) * (squares ? 2 : 1);
  std::vector<double> partial(size_t(threads) * width, 0.0);
  parallel_for(threads, threads, [&](int64_t task, int) {
    std::vector<double> row(d);
    double* mine = partial.data() + size_t(task) * width;
    for (int64_t i = n * task / threads; i < n * (task + 1) / threads; ++i) {
      read_row(x, dtype, i, d, row_stride, row.data());
      centre_row(row.data(), d, l2_normalize, shift, inv_scale);
      float* o = out + i * d;
      for (int64_t j = 0; j < d; ++j) {
        mine[j] += row[j];
        o[j] = float(row[j]);
      }
      if (squares)
        for (int64_t j = 0; j < d; ++j) mine[d + j] += row[j] * row[j];
    }
  });
  for (int t = 0; t < threads; ++t) {
    const double* theirs = partial.data() + size_t(t) * width;
    for (int64_t j = 0; j < d; ++j) colsum[j] += theirs[j];
    if (squares)
      for (int64_t j = 0; j < d; ++j) colsumsq[j] += theirs[d + j];
  }
}

void projected_sqnorm_cpu(const void* x, DType dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                          const double* shift, const double* inv_scale, const float* w, int64_t k, double* out) {
  if (n <= 0) return;
  const int64_t tiles = (k + kNr - 1) / kNr;
  const std::vector<float> panels = pack_panels(w, d, k);
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  const int threads = thread_count(n);
  struct Scratch {
    std::vector<double> row;
    std::vector<float> c, acc;
  };
  std::vector<Scratch> scratch(size_t(worker_count(blocks, threads)));
  parallel_for(blocks, threads, [&](int64_t b, int worker) {
    Scratch& s = scratch[size_t(worker)];
    if (s.row.empty()) {  // sized by the worker that uses it, on its first block
      s.row.resize(size_t(d));
      s.c.assign(size_t(kRowBlock * d), 0.0f);
      s.acc.resize(size_t(kRowBlock * tiles * kNr));
    }
    auto& [row, c, acc] = s;
    const int64_t i0 = b * kRowBlock;
    const int64_t rows = std::min(kRowBlock, n - i0);
    for (int64_t r = 0; r < rows; ++r) {
      read_row(x, dtype, i0 + r, d, row_stride, row.data());
      centre_row(row.data(), d, l2_normalize, shift, inv_scale);
      for (int64_t j = 0; j < d; ++j) c[size_t(r * d + j)] = float(row[j]);
    }
    if (rows < kRowBlock) std::fill(c.begin() + rows * d, c.end(), 0.0f);
    std::fill(acc.begin(), acc.end(), 0.0f);
    // acc is laid out [tile][row][kNr] so each register tile is contiguous.
    for (int64_t j0 = 0; j0 < d; j0 += kKc) {
      const int64_t depth = std::min(kKc, d - j0);
      for (int64_t t = 0; t < tiles; ++t) {
        const float* panel = panels.data() + (t * d + j0) * kNr;
        for (int64_t r0 = 0; r0 < rows; r0 += kMr)
          register_tile(c.data() + r0 * d + j0, d, panel, depth, acc.data() + (t * kRowBlock + r0) * kNr);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      double sq = 0.0;
      for (int64_t t = 0; t < tiles; ++t)
        for (int64_t col = 0; col < kNr; ++col) {
          const double v = acc[size_t((t * kRowBlock + r) * kNr + col)];
          sq += v * v;
        }
      out[i0 + r] = sq;
    }
  });
}

}  // namespace scalselect
