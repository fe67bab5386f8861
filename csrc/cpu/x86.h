// Hand-written AVX-512 paths: compiled with a target attribute in every build, and taken only where the machine
// running the code has AVX-512 (checked once). Other machines and compilers keep the portable loops, and so does
// any process started with MEDENS_DISABLE_AVX512=1 (the tests use it to check the portable loops here). Defining
// MEDENS_NO_X86_DISPATCH at build time leaves the AVX-512 code out altogether, as on other architectures.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MEDENS_NO_X86_DISPATCH)
#define MEDENS_X86_DISPATCH 1
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

namespace medens {
namespace cpu {

inline bool cpu_has_avx512() {
  static const bool has = [] {
    const char* disable = std::getenv("MEDENS_DISABLE_AVX512");
    if (disable != nullptr && *disable != '\0' && std::strcmp(disable, "0") != 0) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return has;
}

}  // namespace cpu
}  // namespace medens
#endif
