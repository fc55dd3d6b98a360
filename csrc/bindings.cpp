// The only file that includes pybind11: exposes the kernels on raw pointers (integers).
// Python (scalselect/kernels/) validates contiguity, dtype, device and sizes before calling.
#include <pybind11/pybind11.h>

#include "scalselect/kernels.h"

namespace py = pybind11;
using scalselect::DType;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Bumped whenever a kernel's arguments or semantics change: Python refuses a module built from
// older sources (a stale build in a source checkout) instead of calling it with new arguments.
constexpr int kKernelVersion = 2;

py::dict build_info() {
  py::dict info;
  info["kernel_version"] = kKernelVersion;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef SCALSELECT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(scalselect::cuda_archs());
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "scalselect native kernels (C++ always, CUDA when compiled in)";
  m.def("build_info", &build_info, "Which backends this module was compiled with.");

  m.def(
      "gram_prep_cpu",
      [](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t row_stride, bool l2,
         std::uintptr_t shift, std::uintptr_t inv_scale, std::uintptr_t out,
         std::uintptr_t colsum, std::uintptr_t colsumsq) {
        py::gil_scoped_release nogil;
        scalselect::gram_prep_cpu(ptr<const void>(x), DType(dtype), n, d, row_stride, l2,
                                  ptr<const double>(shift), ptr<const double>(inv_scale),
                                  ptr<float>(out), ptr<double>(colsum), ptr<double>(colsumsq));
      });
  m.def(
      "projected_sqnorm_cpu",
      [](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t row_stride, bool l2,
         std::uintptr_t shift, std::uintptr_t inv_scale, std::uintptr_t w, int64_t k,
         std::uintptr_t out) {
        py::gil_scoped_release nogil;
        scalselect::projected_sqnorm_cpu(ptr<const void>(x), DType(dtype), n, d, row_stride, l2,
                                         ptr<const double>(shift), ptr<const double>(inv_scale),
                                         ptr<const float>(w), k, ptr<double>(out));
      });
  m.def(
      "attention_mass_cpu",
      [](std::uintptr_t q, std::uintptr_t k, int dtype, int64_t batch, int64_t heads,
         int64_t kv_heads, int64_t seq, int64_t hd, std::uintptr_t key_valid,
         std::uintptr_t row_is_instruction, std::uintptr_t col_is_vision, std::uintptr_t key_lo,
         std::uintptr_t key_hi, double scale, double softcap, std::uintptr_t out) {
        py::gil_scoped_release nogil;
        scalselect::attention_mass_cpu(ptr<const void>(q), ptr<const void>(k), DType(dtype), batch,
                                       heads, kv_heads, seq, hd, ptr<const uint8_t>(key_valid),
                                       ptr<const uint8_t>(row_is_instruction),
                                       ptr<const uint8_t>(col_is_vision), ptr<const int32_t>(key_lo),
                                       ptr<const int32_t>(key_hi), scale, softcap, ptr<float>(out));
      });
  m.def(
      "top_mass_mean_cpu",
      [](std::uintptr_t hidden, int dtype, int64_t batch, int64_t seq, int64_t dim,
         std::uintptr_t mass, std::uintptr_t col_is_vision, double tau, std::uintptr_t out,
         std::uintptr_t kept) {
        py::gil_scoped_release nogil;
        scalselect::top_mass_mean_cpu(ptr<const void>(hidden), DType(dtype), batch, seq, dim,
                                      ptr<const double>(mass), ptr<const uint8_t>(col_is_vision),
                                      tau, ptr<float>(out), ptr<int64_t>(kept));
      });

#ifdef SCALSELECT_WITH_CUDA
  m.def(
      "gram_prep_cuda",
      [](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t row_stride, bool l2,
         std::uintptr_t shift, std::uintptr_t inv_scale, std::uintptr_t out,
         std::uintptr_t colsum, std::uintptr_t colsumsq, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        scalselect::gram_prep_cuda(ptr<const void>(x), DType(dtype), n, d, row_stride, l2,
                                   ptr<const double>(shift), ptr<const double>(inv_scale),
                                   ptr<float>(out), ptr<double>(colsum), ptr<double>(colsumsq),
                                   stream);
      });
  m.def(
      "projected_sqnorm_cuda",
      [](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t row_stride, bool l2,
         std::uintptr_t shift, std::uintptr_t inv_scale, std::uintptr_t w, int64_t k,
         std::uintptr_t out, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        scalselect::projected_sqnorm_cuda(ptr<const void>(x), DType(dtype), n, d, row_stride, l2,
                                          ptr<const double>(shift), ptr<const double>(inv_scale),
                                          ptr<const float>(w), k, ptr<double>(out), stream);
      });
  m.def(
      "attention_mass_cuda",
      [](std::uintptr_t q, std::uintptr_t k, int dtype, int64_t batch, int64_t heads,
         int64_t kv_heads, int64_t seq, int64_t hd, std::uintptr_t key_valid,
         std::uintptr_t row_is_instruction, std::uintptr_t col_is_vision, std::uintptr_t key_lo,
         std::uintptr_t key_hi, double scale, double softcap, std::uintptr_t out,
         std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        scalselect::attention_mass_cuda(ptr<const void>(q), ptr<const void>(k), DType(dtype), batch,
                                        heads, kv_heads, seq, hd, ptr<const uint8_t>(key_valid),
                                        ptr<const uint8_t>(row_is_instruction),
                                        ptr<const uint8_t>(col_is_vision), ptr<const int32_t>(key_lo),
                                        ptr<const int32_t>(key_hi), scale, softcap, ptr<float>(out),
                                        stream);
      });
  m.def(
      "top_mass_mean_cuda",
      [](std::uintptr_t hidden, int dtype, int64_t batch, int64_t seq, int64_t dim,
         std::uintptr_t mass, std::uintptr_t col_is_vision, double tau, std::uintptr_t out,
         std::uintptr_t kept, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        scalselect::top_mass_mean_cuda(ptr<const void>(hidden), DType(dtype), batch, seq, dim,
                                       ptr<const double>(mass), ptr<const uint8_t>(col_is_vision),
                                       tau, ptr<float>(out), ptr<int64_t>(kept), stream);
      });
#endif
}
