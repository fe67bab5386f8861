// medens._C entry points of the CUDA kernels: thin wrappers over the launchers in kernels/cuda, in the style of
// bindings.cpp. Tensors cross as device data pointers (Python ints), sizes, element strides and dtype codes; the
// caller passes the device index and PyTorch's current stream for it. Launchers run with the GIL released, return
// without synchronising, and return a status code (see kernels/cuda/cuda_kernels.h). Arguments are named as in
// bindings.cpp (the CPU entry point's names, plus workspaces, device and stream) and passed by keyword.
#include "medens/cuda_bindings.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_kernels.h"

namespace py = pybind11;

namespace medens {
namespace {

template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

using Strides = std::vector<int64_t>;

}  // namespace

void register_cuda_bindings(py::module_& m) {
  m.attr("CUDA_ERROR_BASE") = cuda::kCudaErrorBase;
  m.attr("CUDA_MAX_SHARED_KEYS") = cuda::kMaxSharedKeys;
  m.attr("CUDA_MAX_TABULATED_PATCH") = cuda::kMaxTabulatedPatch;

  m.def(
      "cuda_error_string",
      [](int status) -> std::string {
        if (status < cuda::kCudaErrorBase) return "status " + std::to_string(status);
        const auto error = static_cast<cudaError_t>(status - cuda::kCudaErrorBase);
        return std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
      },
      py::arg("status"), "The CUDA error behind a status >= CUDA_ERROR_BASE.");

  m.def(
      "patch_entropy_cuda",
      [](std::uintptr_t images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
         const Strides& strides, int64_t patch, int bins, float lo, float range_width, std::uintptr_t terms,
         std::uintptr_t out, int device, std::uintptr_t stream) {
        return cuda::patch_entropy(as_ptr<const void>(images), dtype, batch, channels, height, width, strides.data(),
                                   patch, bins, lo, range_width, as_ptr<double>(terms), as_ptr<float>(out), device,
                                   as_stream(stream));
      },
      py::arg("images"), py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("strides"), py::arg("patch"), py::arg("bins"), py::arg("lo"), py::arg("range_width"),
      py::arg("terms"), py::arg("out"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "entropy_guided_mask_cuda",
      [](std::uintptr_t scores, int scores_dtype, const Strides& scores_strides, std::uintptr_t noise,
         int noise_dtype, const Strides& noise_strides, int64_t batch, int64_t num_patches, int64_t num_keep,
         double temperature, bool prefer_high, std::uintptr_t key_workspace, std::uintptr_t mask,
         std::uintptr_t ids_keep, std::uintptr_t ids_mask, std::uintptr_t ids_restore, int device,
         std::uintptr_t stream) {
        return cuda::entropy_guided_mask(
            as_ptr<const void>(scores), scores_dtype, scores_strides.data(), as_ptr<const void>(noise), noise_dtype,
            noise_strides.data(), batch, num_patches, num_keep, temperature, prefer_high,
            as_ptr<uint64_t>(key_workspace), as_ptr<bool>(mask), as_ptr<int64_t>(ids_keep),
            as_ptr<int64_t>(ids_mask), as_ptr<int64_t>(ids_restore), device, as_stream(stream));
      },
      py::arg("scores"), py::arg("scores_dtype"), py::arg("scores_strides"), py::arg("noise"),
      py::arg("noise_dtype"), py::arg("noise_strides"), py::arg("batch"), py::arg("num_patches"),
      py::arg("num_keep"), py::arg("temperature"), py::arg("prefer_high"), py::arg("key_workspace"), py::arg("mask"),
      py::arg("ids_keep"), py::arg("ids_mask"), py::arg("ids_restore"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "gather_patches_cuda",
      [](std::uintptr_t images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
         const Strides& strides, std::uintptr_t ids, const Strides& ids_strides, int64_t num_ids, int64_t patch,
         bool normalize, double eps, std::uintptr_t out, std::uintptr_t index_error, int device,
         std::uintptr_t stream) {
        return cuda::gather_patches(as_ptr<const void>(images), dtype, batch, channels, height, width,
                                    strides.data(), as_ptr<const int64_t>(ids), ids_strides.data(), num_ids, patch,
                                    normalize, eps, as_ptr<void>(out), as_ptr<int>(index_error), device,
                                    as_stream(stream));
      },
      py::arg("images"), py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("strides"), py::arg("ids"), py::arg("ids_strides"), py::arg("num_ids"),
      py::arg("patch"), py::arg("normalize"), py::arg("eps"), py::arg("out"), py::arg("index_error"),
      py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "gather_patches_backward_cuda",
      [](std::uintptr_t grad, int dtype, std::uintptr_t images, const Strides& image_strides, int64_t batch,
         int64_t channels, int64_t height, int64_t width, std::uintptr_t ids, const Strides& ids_strides,
         int64_t num_ids, int64_t patch, bool normalize, double eps, std::uintptr_t grad_images,
         std::uintptr_t index_error, int device, std::uintptr_t stream) {
        return cuda::gather_patches_backward(
            as_ptr<const void>(grad), dtype, as_ptr<const void>(images), image_strides.data(), batch, channels, height,
            width, as_ptr<const int64_t>(ids), ids_strides.data(), num_ids, patch, normalize, eps,
            as_ptr<void>(grad_images), as_ptr<int>(index_error), device, as_stream(stream));
      },
      py::arg("grad"), py::arg("dtype"), py::arg("images"), py::arg("image_strides"), py::arg("batch"),
      py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("ids"), py::arg("ids_strides"),
      py::arg("num_ids"), py::arg("patch"), py::arg("normalize"), py::arg("eps"), py::arg("grad_images"),
      py::arg("index_error"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "apply_patch_mask_cuda",
      [](std::uintptr_t images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
         int64_t width, const Strides& strides, std::uintptr_t mask, const Strides& mask_strides, int64_t patch,
         uint64_t fill_bits, std::uintptr_t out, const Strides& out_strides, int device, std::uintptr_t stream) {
        return cuda::apply_patch_mask(as_ptr<const void>(images), element_size, batch, channels, height, width,
                                      strides.data(), as_ptr<const bool>(mask), mask_strides.data(), patch,
                                      fill_bits, as_ptr<void>(out), out_strides.data(), device, as_stream(stream));
      },
      py::arg("images"), py::arg("element_size"), py::arg("batch"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("strides"), py::arg("mask"), py::arg("mask_strides"), py::arg("patch"),
      py::arg("fill_bits"), py::arg("out"), py::arg("out_strides"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace medens
