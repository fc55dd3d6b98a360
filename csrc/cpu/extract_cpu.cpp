// CPU kernels of the representation extraction: the probed layer's attention mass on the vision
// tokens and the mean hidden state of the most-attended ones. Contracts in kernels.h; semantics defined by
// the twins in scalselect/kernels/twins.py.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "scalselect/dtype.h"
#include "scalselect/kernels.h"
#include "scalselect/parallel.h"

namespace scalselect {
namespace {

// n contiguous elements of x starting at `offset`, converted to float32.
void to_float(const void* x, DType dtype, int64_t offset, int64_t n, float* dst) {
  with_dtype(dtype, x, [&](auto data, auto convert) {
    const auto* r = data + offset;
    for (int64_t j = 0; j < n; ++j) dst[j] = float(convert(r[j]));
  });
}

// An AVX2+FMA clone next to the portable one, picked at load time, where the compiler can.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SCALSELECT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SCALSELECT_CLONES
#endif

typedef float v8f __attribute__((vector_size(32)));
// The helpers below pass 8-float vectors by value; they are internal to this file and inlined,
// so the ABI note GCC gives for that (without -mavx) does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef int32_t v8i __attribute__((vector_size(32)));

constexpr int kMr = 6;   // query rows of the register tile
constexpr int kNr = 16;  // keys of the register tile (two 8-float vectors): one key panel
constexpr int kLanes = 8;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline v8f splat(float v) { return v8f{v, v, v, v, v, v, v, v}; }

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store8(float* p, const v8f& v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) for x <= 0 (Cephes' expf: round to n = x/ln2, two-part reduction, degree-5
// polynomial; within 2 ulp of the true value). x below -87.3 (and -inf) gives exactly 0, as
// the softmax of a masked key must.
inline v8f exp_nonpositive(const v8f& arg) {
  v8f x = arg;
  const v8f lo = splat(-87.3f);
  const v8i keep = x >= lo;
  x = x < lo ? lo : x;
  const v8f magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v8f t = x * splat(1.44269504088896341f) + magic;
  const v8f n = t - magic;
  v8i ni;
  std::memcpy(&ni, &t, sizeof(ni));
  ni -= 0x4B400000;  // the integer n from t's mantissa
  const v8f r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  const v8i bits = (ni + 127) << 23;  // 2^n, n in [-126, 0]
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  v8i out;
  const v8f e = p * scale;
  std::memcpy(&out, &e, sizeof(out));
  out &= keep;
  v8f res;
  std::memcpy(&res, &out, sizeof(res));
  return res;
}

// Logits of kMr query rows (q, row stride hd) against one panel of kNr keys ([hd][kNr]):
// out[r * ldo + c] = q_r . k_c, the depth loop in registers.
SCALSELECT_CLONES
void logit_tile(const float* q, const float* panel, int64_t hd, float* out, int64_t ldo) {
  v8f a[kMr][2];
  for (int r = 0; r < kMr; ++r) a[r][0] = a[r][1] = splat(0.0f);
  for (int64_t d = 0; d < hd; ++d) {
    const v8f w0 = load8(panel + d * kNr), w1 = load8(panel + d * kNr + kLanes);
    for (int r = 0; r < kMr; ++r) {
      const v8f b = splat(q[r * hd + d]);
      a[r][0] += b * w0;
      a[r][1] += b * w1;
    }
  }
  for (int r = 0; r < kMr; ++r) {
    store8(out + r * ldo, a[r][0]);
    store8(out + r * ldo + kLanes, a[r][1]);
  }
}

// One query row's softmax over its keys lo <= j < hi, read from row[j0, j1) (j0 <= lo, hi <= j1,
// both multiples of 8; logits outside [lo, hi) and keys with bias -inf count as masked), added
// into colsum: colsum[j] += P[j]. The logits are multiplied by `scale` here (1 when the caller
// has scaled and soft-capped them). row is overwritten.
SCALSELECT_CLONES
void softmax_into(float* row, const float* bias, int64_t j0, int64_t j1, int64_t lo, int64_t hi, float scale,
                  float* colsum) {
  const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
  v8f m = splat(kNegInf);
  for (int64_t j = j0; j < j1; j += kLanes) {
    const v8i at = lane + int32_t(j);
    const v8i inside = (at >= int32_t(lo)) & (at < int32_t(hi));
    const v8f x = inside ? load8(row + j) * splat(scale) + load8(bias + j) : splat(kNegInf);
    store8(row + j, x);
    m = x > m ? x : m;
  }
  float mx = m[0];
  for (int l = 1; l < kLanes; ++l) mx = std::max(mx, m[l]);
  v8f s = splat(0.0f);
  for (int64_t j = j0; j < j1; j += kLanes) {
    const v8f e = exp_nonpositive(load8(row + j) - splat(mx));
    store8(row + j, e);
    s += e;
  }
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += s[l];
  const v8f inv = splat(float(1.0 / total));
  for (int64_t j = j0; j < j1; j += kLanes) store8(colsum + j, load8(colsum + j) + load8(row + j) * inv);
}

// Keys [first, first + nkeys) of one (sample, kv head) packed as panels:
// panels[t][d][c] = k[first + 16 t + c][d], zero past the last key.
void pack_keys(const void* k, DType dtype, int64_t base, int64_t first, int64_t nkeys, int64_t hd, float* panels,
               float* row) {
  const int64_t tiles = (nkeys + kNr - 1) / kNr;
  std::fill(panels, panels + tiles * hd * kNr, 0.0f);
  for (int64_t j = 0; j < nkeys; ++j) {
    to_float(k, dtype, base + (first + j) * hd, hd, row);
    float* dst = panels + (j / kNr) * hd * kNr + j % kNr;
    for (int64_t d = 0; d < hd; ++d) dst[d * kNr] = row[d];
  }
}

int64_t round_down(int64_t x, int64_t m) { return x / m * m; }
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

void attention_mass_cpu(const void* q, const void* k, DType dtype, int64_t batch, int64_t heads, int64_t kv_heads,
                        int64_t seq, int64_t hd, const uint8_t* key_valid, const uint8_t* row_is_instruction,
                        const uint8_t* col_is_vision, const int32_t* key_lo, const int32_t* key_hi, double scale,
                        double softcap, float* out) {
  if (batch <= 0 || seq <= 0) return;
  std::fill(out, out + batch * seq, 0.0f);
  if (heads <= 0 || kv_heads <= 0) return;
  const int64_t group = heads / kv_heads;
  // The instruction rows of the samples that have a vision token, concatenated.
  std::vector<int64_t> rows, first(size_t(batch) + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    first[b] = int64_t(rows.size());
    const uint8_t* vision = col_is_vision + b * seq;
    if (std::none_of(vision, vision + seq, [](uint8_t v) { return v != 0; })) continue;
    for (int64_t i = 0; i < seq; ++i)
      if (row_is_instruction[b * seq + i] && key_valid[b * seq + i]) rows.push_back(i);
  }
  first[batch] = int64_t(rows.size());
  if (rows.empty()) return;
  // A task is one (sample, kv head, chunk of its rows): its keys are converted and packed once
  // and serve every query head of the group and every row of the chunk. Chunks are whole
  // samples unless that leaves threads without work.
  const int threads = num_threads();
  int64_t chunk = 0;
  for (int64_t b = 0; b < batch; ++b) chunk = std::max(chunk, first[b + 1] - first[b]);
  auto count_tasks = [&](int64_t c) {
    int64_t n = 0;
    for (int64_t b = 0; b < batch; ++b) n += (first[b + 1] - first[b] + c - 1) / c * kv_heads;
    return n;
  };
  while (chunk > kMr && count_tasks(chunk) < 4 * threads)
    chunk = std::max<int64_t>(kMr, ((chunk + 1) / 2 + kMr - 1) / kMr * kMr);
  std::vector<int64_t> task_sample, task_head, task_row, task_first(size_t(batch) + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    task_first[b] = int64_t(task_sample.size());
    for (int64_t r0 = 0; r0 < first[b + 1] - first[b]; r0 += chunk)
      for (int64_t kh = 0; kh < kv_heads; ++kh) {
        task_sample.push_back(b);
        task_head.push_back(kh);
        task_row.push_back(r0);
      }
  }
  task_first[batch] = int64_t(task_sample.size());
  const int64_t tasks = task_first[batch];
  const int64_t s_pad = (seq + kNr - 1) / kNr * kNr;
  const int64_t rt = 4 * kMr;  // rows whose logits are held at once
  // Each task writes its own column sums (8 bytes per key and kv head: a small fraction of k
  // itself); they are added in task order below, so the result does not depend on which thread
  // ran what, and dynamic scheduling can cope with a busy machine.
  std::vector<double> partial(size_t(tasks) * size_t(seq), 0.0);
  struct Scratch {
    std::vector<float> panels, scratch, qt, logits, colsum, bias;
  };
  std::vector<Scratch> per_worker(size_t(worker_count(tasks, threads)));
  parallel_for(tasks, threads, [&](int64_t task, int worker) {
    Scratch& s = per_worker[size_t(worker)];
    if (s.panels.empty()) {  // sized by the worker that uses it, on its first task
      s.panels.resize(size_t(s_pad * hd));
      s.scratch.resize(size_t(hd));
      s.qt.assign(size_t(rt * hd), 0.0f);  // rows past the tile stay zero
      s.logits.resize(size_t(rt * s_pad));
      s.colsum.resize(size_t(s_pad));
      s.bias.resize(size_t(s_pad));
    }
    auto& [panels, scratch, qt, logits, colsum, bias] = s;
    const int64_t b = task_sample[task], kh = task_head[task], c0 = task_row[task];
    const int64_t* my_rows = rows.data() + first[b] + c0;  // ascending positions
    const int64_t n_mine = std::min(chunk, first[b + 1] - first[b] - c0);
    const int32_t* lo = key_lo + b * seq;
    const int32_t* hi = key_hi + b * seq;
    // The keys some row of the chunk sees, from a panel boundary: [k0, k1).
    int64_t k0 = seq, k1 = 0;
    for (int64_t r = 0; r < n_mine; ++r) {
      k0 = std::min<int64_t>(k0, lo[my_rows[r]]);
      k1 = std::max<int64_t>(k1, hi[my_rows[r]]);
    }
    k0 = round_down(k0, kNr);
    const uint8_t* valid = key_valid + b * seq;
    for (int64_t j = 0; j < s_pad; ++j) bias[j] = k0 + j < k1 && valid[k0 + j] ? 0.0f : kNegInf;
    pack_keys(k, dtype, (b * kv_heads + kh) * seq * hd, k0, k1 - k0, hd, panels.data(), scratch.data());
    double* mine = partial.data() + size_t(task) * size_t(seq);
    for (int64_t r0 = 0; r0 < n_mine; r0 += rt) {
      const int64_t nr = std::min(rt, n_mine - r0);
      const int64_t* tile = my_rows + r0;
      int64_t t_lo = seq, t_hi = 0;  // the tile's keys, relative to k0
      for (int64_t r = 0; r < nr; ++r) {
        t_lo = std::min<int64_t>(t_lo, lo[tile[r]] - k0);
        t_hi = std::max<int64_t>(t_hi, hi[tile[r]] - k0);
      }
      const int64_t p0 = t_lo / kNr, p1 = (t_hi + kNr - 1) / kNr, ld = p1 * kNr;
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        for (int64_t r = 0; r < nr; ++r)
          to_float(q, dtype, ((b * heads + h) * seq + tile[r]) * hd, hd, qt.data() + r * hd);
        for (int64_t m0 = 0; m0 < nr; m0 += kMr)
          for (int64_t t = p0; t < p1; ++t)
            logit_tile(qt.data() + m0 * hd, panels.data() + t * hd * kNr, hd, logits.data() + m0 * ld + t * kNr, ld);
        std::fill(colsum.begin() + p0 * kNr, colsum.begin() + ld, 0.0f);
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t row_lo = lo[tile[r]] - k0, row_hi = hi[tile[r]] - k0;
          const int64_t j0 = round_down(row_lo, kLanes), j1 = round_up(row_hi, kLanes);
          float* row = logits.data() + r * ld;
          float row_scale = float(scale);
          if (softcap > 0.0) {  // rare (Gemma 2): scaled and capped here, before the mask
            for (int64_t j = j0; j < j1; ++j) row[j] = float(softcap * std::tanh(double(row[j]) * scale / softcap));
            row_scale = 1.0f;
          }
          softmax_into(row, bias.data(), j0, j1, row_lo, row_hi, row_scale, colsum.data());
        }
        for (int64_t j = p0 * kNr; j < std::min(ld, seq - k0); ++j) mine[k0 + j] += colsum[j];
      }
    }
  });
  parallel_for(batch, threads, [&](int64_t b, int) {
    const int64_t n_rows = first[b + 1] - first[b];
    if (n_rows == 0) return;
    std::vector<double> total(size_t(seq), 0.0);
    for (int64_t task = task_first[b]; task < task_first[b + 1]; ++task)
      for (int64_t j = 0; j < seq; ++j) total[j] += partial[size_t(task) * size_t(seq) + size_t(j)];
    const double denom = double(heads) * double(n_rows);
    for (int64_t j = 0; j < seq; ++j)
      if (col_is_vision[b * seq + j]) out[b * seq + j] = float(total[j] / denom);
  });
}

void top_mass_mean_cpu(const void* hidden, DType dtype, int64_t batch, int64_t seq, int64_t dim, const double* mass,
                       const uint8_t* col_is_vision, double tau, float* out, int64_t* kept) {
  if (batch <= 0) return;
  // Selection per sample (cheap), then the means over (sample, column block) tasks.
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(batch));
  const int threads = num_threads();
  parallel_for(batch, threads, [&](int64_t b, int) {
    std::vector<int64_t> cols;
    for (int64_t j = 0; j < seq; ++j)
      if (col_is_vision[b * seq + j]) cols.push_back(j);
    const int64_t n = int64_t(cols.size());
    kept[b] = 0;
    if (n == 0) return;
    std::vector<double> p(static_cast<size_t>(n));
    double sum = 0.0;
    for (int64_t t = 0; t < n; ++t) sum += p[t] = mass[b * seq + cols[t]];
    for (int64_t t = 0; t < n; ++t) p[t] = sum > 0.0 ? p[t] / sum : 1.0 / double(n);
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&p](int64_t x, int64_t y) { return p[x] > p[y]; });
    int64_t below = 0;  // tokens whose running sum is still <= tau
    double run = 0.0;
    for (int64_t t = 0; t < n; ++t) below += (run += p[order[t]]) <= tau;
    const int64_t n_keep = std::min(below + 1, n);
    chosen[b].resize(size_t(n_keep));
    for (int64_t t = 0; t < n_keep; ++t) chosen[b][t] = cols[order[t]];
    kept[b] = n_keep;
  });
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (dim + kBlock - 1) / kBlock;
  parallel_for(batch * blocks, threads, [&](int64_t task, int) {
    float row[kBlock];
    double acc[kBlock];
    const int64_t b = task / blocks, d0 = task % blocks * kBlock;
    const int64_t w = std::min(kBlock, dim - d0);
    std::fill(acc, acc + kBlock, 0.0);
    for (int64_t pos : chosen[b]) {
      to_float(hidden, dtype, (b * seq + pos) * dim + d0, w, row);
      for (int64_t d = 0; d < w; ++d) acc[d] += row[d];
    }
    const double n = double(chosen[b].size());
    for (int64_t d = 0; d < w; ++d) out[b * dim + d0 + d] = n > 0 ? float(acc[d] / n) : 0.0f;
  });
}

}  // namespace scalselect
