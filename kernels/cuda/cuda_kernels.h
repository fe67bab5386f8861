// Host launchers of the CUDA kernels in medens._C (kernels/cuda/*.cu).
//
// Pointers are device data pointers of torch tensors; sizes and strides are in elements. Each launcher makes
// `device` current, enqueues its kernels on `stream` (PyTorch's current stream for that device) and returns
// without synchronising. The return value is medens::kOk, a medens::Status code (bad arguments), or
// kCudaErrorBase + the cudaError_t of a failed launch. Index errors found on the device are reported through
// `index_error` (a device int, set to 1), never by reading or writing out of bounds.
#pragma once

#include <cstdint>

#if defined(MEDENS_CUDA_EMULATOR)
#include "emulator/cuda_emulator.h"
#else
#include <cuda_runtime_api.h>
#endif

namespace medens {
namespace cuda {

/// Status = kCudaErrorBase + cudaError_t when a CUDA call or launch fails.
constexpr int kCudaErrorBase = 1000;
/// Longest row of patches whose masking keys are selected in shared memory; longer rows need a global workspace.
constexpr int64_t kMaxSharedKeys = 4096;
/// Largest patch (p * p values) whose entropy terms are tabulated (the table has p * p + 1 doubles).
constexpr int64_t kMaxTabulatedPatch = 1 << 16;
/// Largest number of histogram bins (one warp's histogram must fit in 48 KiB of shared memory).
constexpr int kMaxBins = 12 * 1024;

/// Entropy (bits) of the grey-level histogram of every p x p patch; out (B, N) float32 contiguous.
/// `terms` is a device workspace of p * p + 1 doubles when p * p <= kMaxTabulatedPatch (else may be null).
int patch_entropy(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  const int64_t* strides, int64_t patch, int bins, float lo, float range_width, double* terms,
                  float* out, int device, cudaStream_t stream);

/// Gumbel top-k selection of the N - K hidden patches, one block per row. scores, noise: float32/float64 with
/// strides (noise unused when temperature == 0). `key_workspace` holds B * N uint64 when N > kMaxSharedKeys (else
/// may be null). Outputs contiguous: mask (B, N), ids_keep (B, K), ids_mask (B, N - K), ids_restore (B, N).
int entropy_guided_mask(const void* scores, int scores_dtype, const int64_t* scores_strides, const void* noise,
                        int noise_dtype, const int64_t* noise_strides, int64_t batch, int64_t num_patches,
                        int64_t num_keep, double temperature, bool prefer_high, uint64_t* key_workspace, bool* mask,
                        int64_t* ids_keep, int64_t* ids_mask, int64_t* ids_restore, int device, cudaStream_t stream);

/// out (B, K, p*p*C) contiguous = patchify(images)[b, ids[b, k]], optionally normalised per patch. Rows of
/// out-of-range ids are filled with NaN and flagged in `index_error`.
int gather_patches(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                   const int64_t* strides, const int64_t* ids, const int64_t* ids_strides, int64_t num_ids,
                   int64_t patch, bool normalize, double eps, void* out, int* index_error, int device,
                   cudaStream_t stream);

/// Gradient of gather_patches, accumulated (atomically: repeated ids add up) into grad_images (B, C, H, W)
/// contiguous, zero-initialised by the caller. grad (B, K, p*p*C) contiguous; images read only when normalize.
/// dtype: float32 or float64, shared by grad, images and grad_images. Out-of-range ids are skipped and flagged.
int gather_patches_backward(const void* grad, int dtype, const void* images, const int64_t* image_strides,
                            int64_t batch, int64_t channels, int64_t height, int64_t width, const int64_t* ids,
                            const int64_t* ids_strides, int64_t num_ids, int64_t patch, bool normalize, double eps,
                            void* grad_images, int* index_error, int device, cudaStream_t stream);

/// out = images with every pixel of a hidden patch set to the element whose bit pattern is `fill_bits`.
/// Elements are copied as raw values of element_size bytes (1, 2, 4 or 8).
int apply_patch_mask(const void* images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
                     int64_t width, const int64_t* strides, const bool* mask, const int64_t* mask_strides,
                     int64_t patch, uint64_t fill_bits, void* out, const int64_t* out_strides, int device,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace medens
