// CUDA kernels of the representation extraction; same contracts as the CPU ones (kernels.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common.cuh"

namespace scalselect {
namespace {

// Stream-ordered device scratch, freed when the call returns (after the kernels, in order).
struct Scratch {
  cudaStream_t stream;
  void* ptr = nullptr;
  Scratch(size_t bytes, cudaStream_t s) : stream(s) { check(cudaMallocAsync(&ptr, bytes, s), "cudaMallocAsync"); }
  ~Scratch() { cudaFreeAsync(ptr, stream); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// One warp per sample: positions j with flag_a[j] && (flag_b == null || flag_b[j]), in order,
// into idx[b * seq + ...] (idx null: count only); their count into count[b]. Ballot + popcount
// per 32 positions.
__global__ void compact_kernel(const uint8_t* flag_a, const uint8_t* flag_b, int64_t seq, int* idx, int* count) {
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x;
  int total = 0;
  for (int64_t j0 = 0; j0 < seq; j0 += 32) {
    const int64_t j = j0 + lane;
    const bool on = j < seq && flag_a[b * seq + j] && (flag_b == nullptr || flag_b[b * seq + j]);
    const unsigned ballot = __ballot_sync(0xffffffffu, on);
    if (on && idx) idx[b * seq + total + __popc(ballot & ((1u << lane) - 1u))] = int(j);
    total += __popc(ballot);
  }
  if (lane == 0) count[b] = total;
}

// attention_mass: a block takes (up to) kRowTile instruction rows of one sample and one head.
// Its 8 warps hold 2 rows each; lane l handles key 32 t + l of key tile t (the tiles some row's
// key range [lo, hi) reaches), staged in shared memory with the queries. Pass 1 keeps a per-lane online softmax
// (running max and sum), merged over the warp: the normaliser of each row. Pass 2 recomputes the logits of the vision
// keys and adds P over the block's rows into a float64 column accumulator (one atomic per column and block). Nothing
// larger than a key tile of logits ever exists.
constexpr int kWarps = 8;
constexpr int kMassThreads = 32 * kWarps;
constexpr int kRowTile = 2 * kWarps;
constexpr int kKeyTile = 32;

__device__ __forceinline__ void merge_softmax(float& m, float& s, float m2, float s2) {
  const float hi = fmaxf(m, m2);
  if (hi == -INFINITY) return;  // both empty
  s = (m == -INFINITY ? 0.0f : s * expf(m - hi)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - hi));
  m = hi;
}

__global__ void attention_mass_kernel(const void* q, const void* k, DType dtype, int heads, int group, int64_t seq,
                                      int hd, int stride, const uint8_t* key_valid, const uint8_t* col_is_vision,
                                      const int32_t* key_lo, const int32_t* key_hi, const int* rows, const int* n_rows,
                                      const int* n_vision, float scale, float softcap, double* acc) {
  extern __shared__ float smem[];
  float* qs = smem;                      // [kRowTile][stride]
  float* ks = smem + kRowTile * stride;  // [kKeyTile][stride]
  __shared__ float part[kWarps][kKeyTile];
  const int64_t b = blockIdx.z;
  const int h = blockIdx.y;
  const int r0 = blockIdx.x * kRowTile;
  const int nr_total = n_rows[b];
  if (r0 >= nr_total || n_vision[b] == 0) return;  // uniform over the block
  const int nr = min(kRowTile, nr_total - r0);
  const int* my_rows = rows + b * seq + r0;
  const int32_t* lo = key_lo + b * seq;
  const int32_t* hi = key_hi + b * seq;
  int64_t jmin = seq, jmax = 0;  // the keys some row of the block sees
  for (int r = 0; r < nr; ++r) {
    jmin = min(jmin, int64_t(lo[my_rows[r]]));
    jmax = max(jmax, int64_t(hi[my_rows[r]]));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t q_base = (b * heads + h) * seq;
  const int64_t k_base = (b * (heads / group) + h / group) * seq;
  const uint8_t* valid = key_valid + b * seq;
  const uint8_t* vision = col_is_vision + b * seq;

  for (int e = threadIdx.x; e < kRowTile * hd; e += blockDim.x) {
    const int r = e / hd, d = e % hd;
    qs[r * stride + d] = r < nr ? load_as<float>(q, dtype, (q_base + my_rows[r]) * hd + d) : 0.0f;
  }
  int64_t row_lo[2], row_hi[2];
  for (int u = 0; u < 2; ++u) {
    const int r = warp + u * kWarps;
    row_lo[u] = r < nr ? int64_t(lo[my_rows[r]]) : 0;
    row_hi[u] = r < nr ? int64_t(hi[my_rows[r]]) : 0;  // no row: sees no key
  }
  float m[2] = {-INFINITY, -INFINITY}, s[2] = {0.0f, 0.0f};
  const int64_t first_tile = jmin / kKeyTile, key_tiles = (jmax + kKeyTile - 1) / kKeyTile;

  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t t = first_tile; t < key_tiles; ++t) {
      const int64_t j = t * kKeyTile + lane;
      const bool key_ok = j < jmax && valid[j];
      if (pass == 1) {  // only tiles with a vision key matter now
        const bool vis = warp == 0 && key_ok && vision[j];
        if (!__syncthreads_or(vis)) continue;
      }
      __syncthreads();  // the previous tile's readers are done
      for (int e = threadIdx.x; e < kKeyTile * hd; e += blockDim.x) {
        const int kk = e / hd, d = e % hd;
        const int64_t jj = t * kKeyTile + kk;
        ks[kk * stride + d] = jj < jmax ? load_as<float>(k, dtype, (k_base + jj) * hd + d) : 0.0f;
      }
      __syncthreads();
      float dot[2] = {0.0f, 0.0f};
      const float* kr = ks + lane * stride;
      const float* q0 = qs + warp * stride;
      const float* q1 = qs + (warp + kWarps) * stride;
      for (int d = 0; d < hd; ++d) {
        const float kv = kr[d];
        dot[0] = fmaf(q0[d], kv, dot[0]);
        dot[1] = fmaf(q1[d], kv, dot[1]);
      }
      float mass = 0.0f;
      for (int u = 0; u < 2; ++u) {
        if (!key_ok || j < row_lo[u] || j >= row_hi[u]) continue;
        float l = dot[u] * scale;
        if (softcap > 0.0f) l = softcap * tanhf(l / softcap);
        if (pass == 0) {
          if (l > m[u]) {
            s[u] = s[u] * expf(m[u] - l) + 1.0f;  // expf(-inf) = 0 for the first key
            m[u] = l;
          } else {
            s[u] += expf(l - m[u]);
          }
        } else if (vision[j]) {
          mass += expf(l - m[u]) / s[u];
        }
      }
      if (pass == 1) {
        part[warp][lane] = mass;
        __syncthreads();
        if (warp == 0) {
          float total = 0.0f;
          for (int w = 0; w < kWarps; ++w) total += part[w][lane];
          if (total != 0.0f) atomicAdd(acc + b * seq + j, double(total));
        }
      }
    }
    if (pass == 0)  // the row's normaliser: merge the lanes' running (max, sum)
      for (int u = 0; u < 2; ++u)
        for (int off = 16; off > 0; off /= 2) {
          const float m2 = __shfl_xor_sync(0xffffffffu, m[u], off);
          const float s2 = __shfl_xor_sync(0xffffffffu, s[u], off);
          merge_softmax(m[u], s[u], m2, s2);
        }
  }
}

__global__ void attention_mass_finish(const double* acc, const uint8_t* col_is_vision, const int* n_rows, int64_t batch,
                                      int64_t seq, int heads, float* out) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= batch * seq) return;
  const int nr = n_rows[e / seq];
  out[e] = col_is_vision[e] && nr > 0 ? float(acc[e] / (double(heads) * double(nr))) : 0.0f;
}

// top_mass_mean, selection: one block per sample. p over its vision tokens, the rank of each in
// the order (p descending, position ascending) by counting, the sorted values scattered by rank,
// and one thread walks the running sum sequentially (the twin's cumsum, same rounding).
constexpr int kSelectThreads = 256;
constexpr int kChunk = 1024;

__global__ void top_mass_select(const double* mass, const uint8_t* col_is_vision, int64_t seq, double tau, int* pos,
                                double* p, double* sorted_p, int* sorted_pos, int64_t* kept) {
  __shared__ double chunk[kChunk];
  __shared__ double scratch[kSelectThreads / 32];
  __shared__ int n_shared;
  __shared__ double sum_shared;
  const int64_t b = blockIdx.x;
  const int64_t base = b * seq;
  if (threadIdx.x < 32) {  // warp 0 compacts the vision positions
    int total = 0;
    for (int64_t j0 = 0; j0 < seq; j0 += 32) {
      const int64_t j = j0 + threadIdx.x;
      const bool on = j < seq && col_is_vision[base + j];
      const unsigned ballot = __ballot_sync(0xffffffffu, on);
      if (on) {
        const int at = total + __popc(ballot & ((1u << threadIdx.x) - 1u));
        pos[base + at] = int(j);
        p[base + at] = mass[base + j];
      }
      total += __popc(ballot);
    }
    if (threadIdx.x == 0) n_shared = total;
  }
  __syncthreads();
  const int n = n_shared;
  if (n == 0) {
    if (threadIdx.x == 0) kept[b] = 0;
    return;
  }
  double part = 0.0;
  for (int t = threadIdx.x; t < n; t += blockDim.x) part += p[base + t];
  for (int off = 16; off > 0; off /= 2) part += __shfl_down_sync(0xffffffffu, part, off);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = part;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kSelectThreads / 32; ++w) total += scratch[w];
    sum_shared = total;
  }
  __syncthreads();
  const double sum = sum_shared;
  for (int t = threadIdx.x; t < n; t += blockDim.x) p[base + t] = sum > 0.0 ? p[base + t] / sum : 1.0 / double(n);
  __syncthreads();
  for (int t0 = 0; t0 < n; t0 += blockDim.x) {
    const int t = t0 + threadIdx.x;
    const double pt = t < n ? p[base + t] : 0.0;
    int rank = 0;
    for (int u0 = 0; u0 < n; u0 += kChunk) {
      const int width = min(kChunk, n - u0);
      __syncthreads();
      for (int u = threadIdx.x; u < width; u += blockDim.x) chunk[u] = p[base + u0 + u];
      __syncthreads();
      if (t < n)
        for (int u = 0; u < width; ++u) {
          const double pu = chunk[u];
          rank += pu > pt || (pu == pt && u0 + u < t);
        }
    }
    if (t < n) {
      sorted_p[base + rank] = pt;
      sorted_pos[base + rank] = pos[base + t];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int below = 0;
    double run = 0.0;
    for (int r = 0; r < n; ++r) below += (run += sorted_p[base + r]) <= tau;
    kept[b] = below + 1 < n ? below + 1 : n;
  }
}

// top_mass_mean, the mean: grid (column blocks, samples), each thread one column, float64 sum.
__global__ void top_mass_mean_kernel(const void* hidden, DType dtype, int64_t seq, int64_t dim, const int* sorted_pos,
                                     const int64_t* kept, float* out) {
  const int64_t b = blockIdx.y;
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t n = kept[b];
  double acc = 0.0;
  for (int64_t r = 0; r < n; ++r) acc += load_as<float>(hidden, dtype, (b * seq + sorted_pos[b * seq + r]) * dim + d);
  out[b * dim + d] = n > 0 ? float(acc / double(n)) : 0.0f;
}

}  // namespace

void attention_mass_cuda(const void* q, const void* k, DType dtype, int64_t batch, int64_t heads, int64_t kv_heads,
                         int64_t seq, int64_t hd, const uint8_t* key_valid, const uint8_t* row_is_instruction,
                         const uint8_t* col_is_vision, const int32_t* key_lo, const int32_t* key_hi, double scale,
                         double softcap, float* out, std::uintptr_t stream) {
  if (batch <= 0 || seq <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const size_t cells = size_t(batch) * size_t(seq);
  if (heads <= 0 || kv_heads <= 0) {
    check(cudaMemsetAsync(out, 0, sizeof(float) * cells, s), "cudaMemsetAsync");
    return;
  }
  if (batch > 65535 || heads > 65535 || seq >= (int64_t(1) << 31) || hd >= (int64_t(1) << 20))
    throw std::runtime_error("attention_mass_cuda: batch, heads, sequence or head size too large");
  const int stride = int(hd | 1);  // odd: lanes reading one column of the key tile hit 32 banks
  const size_t smem = sizeof(float) * size_t(kRowTile + kKeyTile) * size_t(stride);
  // The per-block limits count the kernel's static shared memory (`part`) with the dynamic.
  cudaFuncAttributes attr;
  check(cudaFuncGetAttributes(&attr, attention_mass_kernel), "cudaFuncGetAttributes");
  const size_t total = smem + attr.sharedSizeBytes;
  int device = 0, limit = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlock, device), "cudaDeviceGetAttribute");
  if (total > size_t(limit)) {  // beyond the default: opt in, up to what the device allows
    int optin = 0;
    check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
    if (total > size_t(optin))
      throw std::runtime_error("attention_mass_cuda: head size " + std::to_string(hd) + " needs " +
                               std::to_string(total) +
                               " bytes of shared memory per block; the "
                               "device allows " +
                               std::to_string(optin));
    check(cudaFuncSetAttribute(attention_mass_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
          "cudaFuncSetAttribute");
  }
  Scratch acc(sizeof(double) * cells, s);
  Scratch rows(sizeof(int) * cells, s);
  Scratch counts(sizeof(int) * 2 * size_t(batch), s);
  int* n_rows = static_cast<int*>(counts.ptr);
  int* n_vision = n_rows + batch;
  check(cudaMemsetAsync(acc.ptr, 0, sizeof(double) * cells, s), "cudaMemsetAsync");
  compact_kernel<<<unsigned(batch), 32, 0, s>>>(row_is_instruction, key_valid, seq, static_cast<int*>(rows.ptr),
                                                n_rows);
  compact_kernel<<<unsigned(batch), 32, 0, s>>>(col_is_vision, nullptr, seq, nullptr, n_vision);
  check(cudaGetLastError(), "compact_kernel");
  // Row tiles for up to seq instruction rows; blocks past a sample's rows return at once.
  const dim3 grid(unsigned((seq + kRowTile - 1) / kRowTile), unsigned(heads), unsigned(batch));
  attention_mass_kernel<<<grid, kMassThreads, smem, s>>>(
      q, k, dtype, int(heads), int(heads / kv_heads), seq, int(hd), stride, key_valid, col_is_vision, key_lo, key_hi,
      static_cast<const int*>(rows.ptr), n_rows, n_vision, float(scale), float(softcap), static_cast<double*>(acc.ptr));
  check(cudaGetLastError(), "attention_mass_kernel");
  const unsigned blocks = unsigned((cells + 255) / 256);
  attention_mass_finish<<<blocks, 256, 0, s>>>(static_cast<const double*>(acc.ptr), col_is_vision, n_rows, batch, seq,
                                               int(heads), out);
  check(cudaGetLastError(), "attention_mass_finish");
}

void top_mass_mean_cuda(const void* hidden, DType dtype, int64_t batch, int64_t seq, int64_t dim, const double* mass,
                        const uint8_t* col_is_vision, double tau, float* out, int64_t* kept, std::uintptr_t stream) {
  if (batch <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (batch > 65535 || seq >= (int64_t(1) << 31))
    throw std::runtime_error("top_mass_mean_cuda: batch or sequence too large");
  const size_t cells = size_t(batch) * size_t(std::max<int64_t>(seq, 1));
  Scratch pos(sizeof(int) * cells, s), p(sizeof(double) * cells, s);
  Scratch sorted_p(sizeof(double) * cells, s), sorted_pos(sizeof(int) * cells, s);
  top_mass_select<<<unsigned(batch), kSelectThreads, 0, s>>>(
      mass, col_is_vision, seq, tau, static_cast<int*>(pos.ptr), static_cast<double*>(p.ptr),
      static_cast<double*>(sorted_p.ptr), static_cast<int*>(sorted_pos.ptr), kept);
  check(cudaGetLastError(), "top_mass_select");
  if (dim <= 0) return;
  const dim3 grid(unsigned((dim + 255) / 256), unsigned(batch));
  top_mass_mean_kernel<<<grid, 256, 0, s>>>(hidden, dtype, seq, dim, static_cast<const int*>(sorted_pos.ptr), kept,
                                            out);
  check(cudaGetLastError(), "top_mass_mean_kernel");
}

}  // namespace scalselect
