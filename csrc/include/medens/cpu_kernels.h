// Host (CPU) kernels of medens._C. Pointers are raw data pointers of torch tensors; sizes and strides are in
// elements. Every function returns a medens::Status code; the Python side turns codes into exceptions.
#pragma once

#include <cstdint>

namespace medens {
namespace cpu {

/// Entropy (bits) of the grey-level histogram of every p x p patch. images: (B, C, H, W) any strides, C in {1, 3};
/// out: (B, (H/p)*(W/p)) float32 contiguous.
int patch_entropy(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  const int64_t* strides, int64_t patch, int bins, float lo, float range_width, float* out,
                  int num_threads);

/// Gumbel top-k selection of the N - K hidden patches. scores, noise: (B, N) float32/float64 with strides
/// (noise unused when temperature == 0). Outputs contiguous: mask (B, N) bool, ids_keep (B, K),
/// ids_mask (B, N - K), ids_restore (B, N).
int entropy_guided_mask(const void* scores, int scores_dtype, const int64_t* scores_strides, const void* noise,
                        int noise_dtype, const int64_t* noise_strides, int64_t batch, int64_t num_patches,
                        int64_t num_keep, double temperature, bool prefer_high, bool* mask, int64_t* ids_keep,
                        int64_t* ids_mask, int64_t* ids_restore, int num_threads);

/// out (B, K, p*p*C) contiguous = patchify(images)[b, ids[b, k]], optionally normalised per patch.
int gather_patches(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                   const int64_t* strides, const int64_t* ids, const int64_t* ids_strides, int64_t num_ids,
                   int64_t patch, bool normalize, double eps, void* out, int num_threads);

/// Gradient of gather_patches with respect to images, written to grad_images (B, C, H, W) contiguous (every
/// element; patches gathered more than once accumulate). grad: (B, K, p*p*C) contiguous; images only read when normalize.
/// dtype: float32 or float64 (grad, images and grad_images share it).
int gather_patches_backward(const void* grad, int dtype, const void* images, const int64_t* image_strides,
                            int64_t batch, int64_t channels, int64_t height, int64_t width, const int64_t* ids,
                            const int64_t* ids_strides, int64_t num_ids, int64_t patch, bool normalize, double eps,
                            void* grad_images, int num_threads);

/// out = images with every pixel of a hidden patch set to the element whose bit pattern is `fill_bits` (as the
/// CUDA launcher takes it). Elements are copied as raw values of element_size bytes (1, 2, 4 or 8).
/// mask: (B, N) bool with strides; images/out: (B, C, H, W) with strides.
int apply_patch_mask(const void* images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
                     int64_t width, const int64_t* strides, const bool* mask, const int64_t* mask_strides,
                     int64_t patch, uint64_t fill_bits, void* out, const int64_t* out_strides, int num_threads);

/// True when the hand-written AVX-512 kernels run in this process: the machine has AVX-512 (F, BW and VL) and
/// MEDENS_DISABLE_AVX512 is not set. Otherwise the portable loops run.
bool avx512_kernels();

}  // namespace cpu
}  // namespace medens
