// The only file that includes pybind11: exposes the kernels on raw pointers (integers).
// Python (scalselect/kernels/) validates contiguity, dtype, device and sizes before calling.
// Each kernel has one binding: it registers NAME_cpu and, in a CUDA build, NAME_cuda, with the
// argument names of kernels.h (the CUDA one takes the stream last). scalselect/_C.pyi lists them.
#include <pybind11/pybind11.h>

#include <string>

#include "scalselect/kernels.h"
#include "scalselect/parallel.h"

namespace py = pybind11;
using scalselect::DType;

namespace {

// Bumped whenever a kernel's arguments or semantics change: Python refuses a module built from
// older sources (a stale build in a source checkout) instead of calling it with new arguments.
constexpr int kKernelVersion = 3;

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// A CUDA build's NAME_cuda entry, or nothing: lets one binding name both.
#ifdef SCALSELECT_WITH_CUDA
#define SCALSELECT_CUDA_ENTRY(fn) (fn)
#else
#define SCALSELECT_CUDA_ENTRY(fn) nullptr
#endif

// Registers `call(cpu_kernel)` as NAME_cpu and `call(cuda_kernel, stream)` as NAME_cuda.
// `call` is a generic lambda (kernel, extra...) -> the bound function; `names` are its
// arguments' names, in order.
template <typename Call, typename Cpu, typename Cuda, typename... Names>
void def_kernel(py::module_& m, const std::string& name, const char* doc, Call call, Cpu cpu,
                [[maybe_unused]] Cuda cuda, Names... names) {
  m.def((name + "_cpu").c_str(), call(cpu), doc, py::arg(names)...);
#ifdef SCALSELECT_WITH_CUDA
  m.def((name + "_cuda").c_str(), call(cuda, std::uintptr_t{}), doc, py::arg(names)..., py::arg("stream"));
#endif
}

// The bound function of a kernel: the pointers cast, the GIL released, the stream passed on
// when there is one (`Stream...` is empty for the CPU entry).
template <typename... Stream>
auto gram_prep_call(void (*kernel)(const void*, DType, int64_t, int64_t, int64_t, bool, const double*, const double*,
                                   float*, double*, double*, Stream...),
                    Stream...) {
  return [kernel](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                  std::uintptr_t shift, std::uintptr_t inv_scale, std::uintptr_t out, std::uintptr_t colsum,
                  std::uintptr_t colsumsq, Stream... stream) {
    py::gil_scoped_release nogil;
    kernel(ptr<const void>(x), DType(dtype), n, d, row_stride, l2_normalize, ptr<const double>(shift),
           ptr<const double>(inv_scale), ptr<float>(out), ptr<double>(colsum), ptr<double>(colsumsq), stream...);
  };
}

template <typename... Stream>
auto projected_sqnorm_call(void (*kernel)(const void*, DType, int64_t, int64_t, int64_t, bool, const double*,
                                          const double*, const float*, int64_t, double*, Stream...),
                           Stream...) {
  return [kernel](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t row_stride, bool l2_normalize,
                  std::uintptr_t shift, std::uintptr_t inv_scale, std::uintptr_t w, int64_t k, std::uintptr_t out,
                  Stream... stream) {
    py::gil_scoped_release nogil;
    kernel(ptr<const void>(x), DType(dtype), n, d, row_stride, l2_normalize, ptr<const double>(shift),
           ptr<const double>(inv_scale), ptr<const float>(w), k, ptr<double>(out), stream...);
  };
}

template <typename... Stream>
auto attention_mass_call(void (*kernel)(const void*, const void*, DType, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        const uint8_t*, const uint8_t*, const uint8_t*, const int32_t*, const int32_t*,
                                        double, double, float*, Stream...),
                         Stream...) {
  return [kernel](std::uintptr_t q, std::uintptr_t k, int dtype, int64_t batch, int64_t heads, int64_t kv_heads,
                  int64_t seq, int64_t hd, std::uintptr_t key_valid, std::uintptr_t row_is_instruction,
                  std::uintptr_t col_is_vision, std::uintptr_t key_lo, std::uintptr_t key_hi, double scale,
                  double softcap, std::uintptr_t out, Stream... stream) {
    py::gil_scoped_release nogil;
    kernel(ptr<const void>(q), ptr<const void>(k), DType(dtype), batch, heads, kv_heads, seq, hd,
           ptr<const uint8_t>(key_valid), ptr<const uint8_t>(row_is_instruction), ptr<const uint8_t>(col_is_vision),
           ptr<const int32_t>(key_lo), ptr<const int32_t>(key_hi), scale, softcap, ptr<float>(out), stream...);
  };
}

template <typename... Stream>
auto top_mass_mean_call(void (*kernel)(const void*, DType, int64_t, int64_t, int64_t, const double*, const uint8_t*,
                                       double, float*, int64_t*, Stream...),
                        Stream...) {
  return [kernel](std::uintptr_t hidden, int dtype, int64_t batch, int64_t seq, int64_t dim, std::uintptr_t mass,
                  std::uintptr_t col_is_vision, double tau, std::uintptr_t out, std::uintptr_t kept, Stream... stream) {
    py::gil_scoped_release nogil;
    kernel(ptr<const void>(hidden), DType(dtype), batch, seq, dim, ptr<const double>(mass),
           ptr<const uint8_t>(col_is_vision), tau, ptr<float>(out), ptr<int64_t>(kept), stream...);
  };
}

// Generic lambdas over the helpers above, for def_kernel.
#define SCALSELECT_CALL(helper) [](auto kernel, auto... stream) { return helper(kernel, stream...); }

py::dict build_info() {
  py::dict info;
  info["kernel_version"] = kKernelVersion;
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
  m.def("set_num_threads", &scalselect::set_num_threads, py::arg("n"),
        "How many threads the CPU kernels may use (Python passes torch.get_num_threads()).");
  using namespace scalselect;

  def_kernel(m, "gram_prep", "Centred (scaled, unit) rows as float32 and their float64 column sums (and squares).",
             SCALSELECT_CALL(gram_prep_call), &gram_prep_cpu, SCALSELECT_CUDA_ENTRY(&gram_prep_cuda), "x", "dtype", "n",
             "d", "row_stride", "l2_normalize", "shift", "inv_scale", "out", "colsum", "colsumsq");
  def_kernel(m, "projected_sqnorm", "float64 ||c_i W||^2 per prepared row.", SCALSELECT_CALL(projected_sqnorm_call),
             &projected_sqnorm_cpu, SCALSELECT_CUDA_ENTRY(&projected_sqnorm_cuda), "x", "dtype", "n", "d", "row_stride",
             "l2_normalize", "shift", "inv_scale", "w", "k", "out");
  def_kernel(m, "attention_mass", "Mean attention of the instruction rows on each vision token, per-row key ranges.",
             SCALSELECT_CALL(attention_mass_call), &attention_mass_cpu, SCALSELECT_CUDA_ENTRY(&attention_mass_cuda),
             "q", "k", "dtype", "batch", "heads", "kv_heads", "seq", "hd", "key_valid", "row_is_instruction",
             "col_is_vision", "key_lo", "key_hi", "scale", "softcap", "out");
  def_kernel(m, "top_mass_mean", "Mean hidden state of each sample's most-attended vision tokens, and their count.",
             SCALSELECT_CALL(top_mass_mean_call), &top_mass_mean_cpu, SCALSELECT_CUDA_ENTRY(&top_mass_mean_cuda),
             "hidden", "dtype", "batch", "seq", "dim", "mass", "col_is_vision", "tau", "out", "kept");
}
