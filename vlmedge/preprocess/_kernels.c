/* Compiled preprocessing kernels: Pillow's 8-bit resampling pass and the normalization to planar float32.
 *
 * Built at install time as vlmedge/_kernels*.so (setup.py; optional) and called through ctypes by
 * vlmedge/_native.py; vlmedge falls back to numpy, with the same output, when it is missing. Plain C
 * without Python headers: a C compiler is all the build needs. ctypes releases the GIL around calls.
 *
 * vlm_resample_rows, one separable resampling pass (ImagingResample's arithmetic):
 *
 *   dst[o, x] = clip8((2^21 + sum_k weights[o, k] * src[starts[o] + k, x]) >> 22)
 *
 * for o < n_out and x < m: each output row is a weighted sum of counts[o] consecutive input rows,
 * with Pillow's 22-bit fixed-point weights and its rounding (add half, arithmetic shift, clip to
 * 0..255), in int32 exactly as Pillow's C code does. The caller checks that no sum can overflow
 * (255 * sum |w| + 2^21 < 2^31). A horizontal pass is done on a transposed image, so both passes
 * are this loop, vectorized over x by the compiler. On x86-64 with GCC and glibc, AVX-512 (x86-64-v4)
 * and AVX2 (x86-64-v3) clones are built and the loader (ifunc) picks the best the CPU has: 640x480 ->
 * 224x224 CLIP crop 0.44 / 0.62 ms on the dev box, vs 1.3 ms for plain SSE2 (about the numpy path).
 *
 * vlm_normalize_planar: uint8 [h, w, channels] -> float32 [3, h, w] through a 256-entry table per
 * output plane (lut[p][v] = (v / 255 - mean) / std), plane p reading channel plane_channel[p]
 * (2, 1, 0 for BGR -> RGB). 0.06 ms for 224x224 vs 0.35 ms for cv2.LUT plus the planar copies.
 */
#include <stddef.h>
#include <stdint.h>

#define VLM_CHUNK 1024 /* int32 accumulators kept in L1 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && __GNUC__ >= 12
#define VLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define VLM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VLM_CLONES
#endif

#if defined(_WIN32)
#define VLM_EXPORT __declspec(dllexport)
#else
#define VLM_EXPORT __attribute__((visibility("default")))
#endif

/* Version of this interface; vlmedge/_native.py refuses a library with another one. */
VLM_EXPORT int vlm_kernels_abi(void) { return 1; }

VLM_CLONES VLM_EXPORT int vlm_resample_rows(const uint8_t *src, ptrdiff_t src_stride, uint8_t *dst,
                                            ptrdiff_t dst_stride, ptrdiff_t m, int n_out,
                                            const int32_t *starts, const int32_t *counts,
                                            const int32_t *weights, int taps)
{
    int32_t acc[VLM_CHUNK];
    if (m < 0 || n_out < 0 || taps < 0)
        return -1;
    for (int o = 0; o < n_out; o++) {
        const int32_t *w = weights + (ptrdiff_t)o * taps;
        const uint8_t *first = src + (ptrdiff_t)starts[o] * src_stride;
        uint8_t *out = dst + (ptrdiff_t)o * dst_stride;
        const int n = counts[o];
        for (ptrdiff_t x0 = 0; x0 < m; x0 += VLM_CHUNK) {
            const ptrdiff_t len = m - x0 < VLM_CHUNK ? m - x0 : VLM_CHUNK;
            for (ptrdiff_t j = 0; j < len; j++)
                acc[j] = 1 << 21;
            for (int k = 0; k < n; k++) {
                const uint8_t *row = first + (ptrdiff_t)k * src_stride + x0;
                const int32_t wk = w[k];
                for (ptrdiff_t j = 0; j < len; j++)
                    acc[j] += wk * (int32_t)row[j];
            }
            for (ptrdiff_t j = 0; j < len; j++) {
                const int32_t v = acc[j] >> 22;
                out[x0 + j] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
            }
        }
    }
    return 0;
}

VLM_EXPORT int vlm_normalize_planar(const uint8_t *src, ptrdiff_t src_stride, ptrdiff_t h, ptrdiff_t w,
                                   int channels, const int32_t *plane_channel, const float *lut, float *dst)
{
    if (h < 0 || w < 0 || channels < 1)
        return -1;
    for (int p = 0; p < 3; p++) {
        const float *table = lut + 256 * p;
        const int c = plane_channel[p];
        if (c < 0 || c >= channels)
            return -2;
        float *plane = dst + (ptrdiff_t)p * h * w;
        for (ptrdiff_t y = 0; y < h; y++) {
            const uint8_t *row = src + y * src_stride + c;
            float *out = plane + y * w;
            for (ptrdiff_t x = 0; x < w; x++)
                out[x] = table[row[x * channels]];
        }
    }
    return 0;
}
