// Python bindings of the CUDA launchers (csrc/cuda_bindings.cpp), compiled only when CMake finds a CUDA toolkit
// (MEDENS_WITH_CUDA); csrc/bindings.cpp calls register_cuda_bindings from PYBIND11_MODULE(_C).
#pragma once

#include <pybind11/pybind11.h>

namespace medens {

/// Adds the *_cuda entry points (one per kernel launcher), cuda_error_string and the CUDA limits to `m`.
void register_cuda_bindings(pybind11::module_& m);

}  // namespace medens
