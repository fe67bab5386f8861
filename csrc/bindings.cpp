// medens._C: thin pybind11 bindings over the kernels. Tensors cross as raw data pointers (Python ints), sizes,
// element strides and dtype codes; no torch headers. Kernels run with the GIL released and return a status code.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"

#if defined(MEDENS_WITH_CUDA)
#include "medens/cuda_bindings.h"
#endif

namespace py = pybind11;

namespace {

template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

using Strides = std::vector<int64_t>;

py::dict build_info() {
  py::dict info;
#if defined(MEDENS_VERSION)
  info["version"] = MEDENS_VERSION;
#else
  info["version"] = "unknown";
#endif
#if defined(MEDENS_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#if defined(MEDENS_CUDA_REQUESTED)
  info["cuda_requested"] = MEDENS_CUDA_REQUESTED;  // AUTO, ON or OFF at build time
#endif
  std::vector<std::string> archs;
#if defined(MEDENS_WITH_CUDA)
  info["cuda_compiled"] = true;
  std::string list = MEDENS_CUDA_ARCHITECTURES;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = list.find(',', start);
    const std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) archs.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
#else
  info["cuda_compiled"] = false;
#endif
  info["cuda_architectures"] = archs;
#if defined(__VERSION__)
  info["compiler"] = std::string(__VERSION__);
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "medens compiled kernels (CPU, and CUDA when built with a toolkit)";
  m.def("build_info", &build_info, "How this extension was built.");

  m.def(
      "patch_entropy_cpu",
      [](std::uintptr_t images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
         const Strides& strides, int64_t patch, int bins, float lo, float range_width, std::uintptr_t out,
         int num_threads) {
        return medens::cpu::patch_entropy(as_ptr<const void>(images), dtype, batch, channels, height, width,
                                          strides.data(), patch, bins, lo, range_width, as_ptr<float>(out),
                                          num_threads);
      },
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "entropy_guided_mask_cpu",
      [](std::uintptr_t scores, int scores_dtype, const Strides& scores_strides, std::uintptr_t noise,
         int noise_dtype, const Strides& noise_strides, int64_t batch, int64_t num_patches, int64_t num_keep,
         double temperature, bool prefer_high, std::uintptr_t mask, std::uintptr_t ids_keep, std::uintptr_t ids_mask,
         std::uintptr_t ids_restore, int num_threads) {
        return medens::cpu::entropy_guided_mask(
            as_ptr<const void>(scores), scores_dtype, scores_strides.data(), as_ptr<const void>(noise), noise_dtype,
            noise_strides.data(), batch, num_patches, num_keep, temperature, prefer_high, as_ptr<bool>(mask),
            as_ptr<int64_t>(ids_keep), as_ptr<int64_t>(ids_mask), as_ptr<int64_t>(ids_restore), num_threads);
      },
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "gather_patches_cpu",
      [](std::uintptr_t images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
         const Strides& strides, std::uintptr_t ids, const Strides& ids_strides, int64_t num_ids, int64_t patch,
         bool normalize, double eps, std::uintptr_t out, int num_threads) {
        return medens::cpu::gather_patches(as_ptr<const void>(images), dtype, batch, channels, height, width,
                                           strides.data(), as_ptr<const int64_t>(ids), ids_strides.data(), num_ids,
                                           patch, normalize, eps, as_ptr<void>(out), num_threads);
      },
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "gather_patches_backward_cpu",
      [](std::uintptr_t grad, int dtype, std::uintptr_t images, const Strides& image_strides, int64_t batch,
         int64_t channels, int64_t height, int64_t width, std::uintptr_t ids, const Strides& ids_strides,
         int64_t num_ids, int64_t patch, bool normalize, double eps, std::uintptr_t grad_images, int num_threads) {
        return medens::cpu::gather_patches_backward(
            as_ptr<const void>(grad), dtype, as_ptr<const void>(images), image_strides.data(), batch, channels,
            height, width, as_ptr<const int64_t>(ids), ids_strides.data(), num_ids, patch, normalize, eps,
            as_ptr<void>(grad_images), num_threads);
      },
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "apply_patch_mask_cpu",
      [](std::uintptr_t images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
         int64_t width, const Strides& strides, std::uintptr_t mask, const Strides& mask_strides, int64_t patch,
         std::uintptr_t fill, std::uintptr_t out, const Strides& out_strides, int num_threads) {
        return medens::cpu::apply_patch_mask(as_ptr<const void>(images), element_size, batch, channels, height,
                                             width, strides.data(), as_ptr<const bool>(mask), mask_strides.data(),
                                             patch, as_ptr<const void>(fill), as_ptr<void>(out), out_strides.data(),
                                             num_threads);
      },
      py::call_guard<py::gil_scoped_release>());

#if defined(MEDENS_WITH_CUDA)
  medens::register_cuda_bindings(m);
#endif
}
