// medens._C: thin pybind11 bindings over the kernels. Tensors cross as raw data pointers (Python ints), sizes,
// element strides and dtype codes; no torch headers. Kernels run with the GIL released and return a status code.
// Every argument is named (py::arg, the C++ parameter's name) and medens/ops/_launch.py passes them by keyword, so
// a swapped pair of sizes is a TypeError, never a silent wrong result.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/host_cache.h"
#include "medens/patch_math.h"
#include "cpu/vector_log.h"

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
  info["cpu_avx512"] = medens::cpu::avx512_kernels();
#if defined(__VERSION__)
  info["compiler"] = std::string(__VERSION__);
#endif
  return info;
}

// The DLPack structures (https://dmlc.github.io/dlpack/latest/c_api.html), declared here so that the extension
// needs no header beyond pybind11: a block of the host cache goes to torch.from_dlpack as a contiguous tensor, and
// the deleter, which torch calls when the tensor's storage dies, gives the block back to the cache.
struct DLDevice {
  int32_t device_type;  // 1: kDLCPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0: int, 1: unsigned int, 2: float, 4: bfloat, 6: bool
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct HostBlock {
  DLManagedTensor managed;
  std::vector<int64_t> shape;
  int64_t capacity;
};

void release_host_block(DLManagedTensor* managed) {
  HostBlock* block = static_cast<HostBlock*>(managed->manager_ctx);
  medens::cpu::host_cache_release(managed->dl_tensor.data, block->capacity);
  delete block;
}

/// A DLPack capsule ("dltensor") for a contiguous CPU tensor of the given shape and DLPack dtype (code, bits),
/// over a block of the host cache.
py::capsule host_block(const std::vector<int64_t>& shape, int dtype_code, int dtype_bits) {
  if (dtype_bits <= 0 || dtype_bits % 8 != 0)
    throw py::value_error("host_block: dtype_bits must be a positive multiple of 8, got " + std::to_string(dtype_bits));
  int64_t bytes = dtype_bits / 8;
  for (const int64_t size : shape) {
    if (size < 0) throw py::value_error("host_block: sizes must be >= 0, got " + std::to_string(size));
    bytes *= size;
  }
  auto* block = new HostBlock();
  block->shape = shape;
  void* data = medens::cpu::host_cache_acquire(bytes, &block->capacity);
  if (data == nullptr) {
    delete block;
    throw std::bad_alloc();
  }
  const DLDataType dtype{static_cast<uint8_t>(dtype_code), static_cast<uint8_t>(dtype_bits), 1};
  block->managed.dl_tensor =
      DLTensor{data, DLDevice{1, 0}, static_cast<int32_t>(shape.size()), dtype, block->shape.data(), nullptr, 0};
  block->managed.manager_ctx = block;
  block->managed.deleter = &release_host_block;
  // A capsule that no consumer took (still named "dltensor") releases the block itself.
  return py::capsule(&block->managed, "dltensor", [](PyObject* capsule) {
    if (PyCapsule_IsValid(capsule, "dltensor")) {
      auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
      managed->deleter(managed);
    }
  });
}

py::dict host_cache_info() {
  const medens::cpu::HostCacheInfo info = medens::cpu::host_cache_info();
  py::dict out;
  out["limit_bytes"] = info.limit_bytes;
  out["idle_bytes"] = info.idle_bytes;
  out["idle_blocks"] = info.idle_blocks;
  out["in_use_bytes"] = info.in_use_bytes;
  out["hits"] = info.hits;
  out["misses"] = info.misses;
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "medens compiled kernels (CPU, and CUDA when built with a toolkit)";
  m.def("build_info", &build_info, "How this extension was built.");

  m.def("host_block", &host_block, py::arg("shape"), py::arg("dtype_code"), py::arg("dtype_bits"),
        "A DLPack capsule (contiguous CPU tensor) over a block of the host cache; the block returns to the cache "
        "when the tensor made from it dies.");
  m.def("host_cache_info", &host_cache_info, "Limit, idle and in-use bytes, hits and misses of the host cache.");
  m.def("host_cache_clear", &medens::cpu::host_cache_clear, "Frees every idle block; returns the bytes freed.");
  m.def("host_cache_set_limit", &medens::cpu::host_cache_set_limit, py::arg("bytes"),
        "Sets the most idle bytes the host cache keeps.");

  // The masking keys' logarithms, exposed so the tests can check their accuracy directly (in place, float64).
  m.def(
      "_log_f64_cpu", [](std::uintptr_t values, int64_t count) { medens::cpu::log_in_place(as_ptr<double>(values), count); },
      py::arg("values"), py::arg("count"), "values[i] = log(values[i]) in place, as the CPU masking kernel takes it.");
  m.def(
      "_gumbel_f64_cpu",
      [](std::uintptr_t values, int64_t count) { medens::cpu::gumbel_in_place(as_ptr<double>(values), count); },
      py::arg("values"), py::arg("count"), "values[i] = -log(-log(values[i])) in place, as the CPU masking kernel.");

  m.def(
      "patch_entropy_cpu",
      [](std::uintptr_t images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
         const Strides& strides, int64_t patch, int bins, float lo, float range_width, std::uintptr_t out,
         int num_threads) {
        return medens::cpu::patch_entropy(as_ptr<const void>(images), dtype, batch, channels, height, width,
                                          strides.data(), patch, bins, lo, range_width, as_ptr<float>(out),
                                          num_threads);
      },
      py::arg("images"), py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("strides"), py::arg("patch"), py::arg("bins"), py::arg("lo"), py::arg("range_width"),
      py::arg("out"), py::arg("num_threads"),
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
      py::arg("scores"), py::arg("scores_dtype"), py::arg("scores_strides"), py::arg("noise"),
      py::arg("noise_dtype"), py::arg("noise_strides"), py::arg("batch"), py::arg("num_patches"),
      py::arg("num_keep"), py::arg("temperature"), py::arg("prefer_high"), py::arg("mask"), py::arg("ids_keep"),
      py::arg("ids_mask"), py::arg("ids_restore"), py::arg("num_threads"),
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
      py::arg("images"), py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("strides"), py::arg("ids"), py::arg("ids_strides"), py::arg("num_ids"),
      py::arg("patch"), py::arg("normalize"), py::arg("eps"), py::arg("out"), py::arg("num_threads"),
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
      py::arg("grad"), py::arg("dtype"), py::arg("images"), py::arg("image_strides"), py::arg("batch"),
      py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("ids"), py::arg("ids_strides"),
      py::arg("num_ids"), py::arg("patch"), py::arg("normalize"), py::arg("eps"), py::arg("grad_images"),
      py::arg("num_threads"),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "apply_patch_mask_cpu",
      [](std::uintptr_t images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
         int64_t width, const Strides& strides, std::uintptr_t mask, const Strides& mask_strides, int64_t patch,
         uint64_t fill_bits, std::uintptr_t out, const Strides& out_strides, int num_threads) {
        return medens::cpu::apply_patch_mask(as_ptr<const void>(images), element_size, batch, channels, height,
                                             width, strides.data(), as_ptr<const bool>(mask), mask_strides.data(),
                                             patch, fill_bits, as_ptr<void>(out), out_strides.data(), num_threads);
      },
      py::arg("images"), py::arg("element_size"), py::arg("batch"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("strides"), py::arg("mask"), py::arg("mask_strides"), py::arg("patch"),
      py::arg("fill_bits"), py::arg("out"), py::arg("out_strides"), py::arg("num_threads"),
      py::call_guard<py::gil_scoped_release>());

#if defined(MEDENS_WITH_CUDA)
  medens::register_cuda_bindings(m);
#endif
}
