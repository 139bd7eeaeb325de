/*
 * window_cuda.h — the interface between libsegpipe and its optional CUDA
 * kernels (libsegpipe_cuda.so, built by `make cuda` from window_cuda.cu and
 * loaded with dlopen only for --device cuda; see docs/gpu.md).
 *
 * Plain C on both sides. Several GPUs (cuda:N): use(N) picks the calling
 * thread's GPU; each GPU has its own streams and fences. The library exports one symbol,
 * sp_cuda_kernels(), returning a table of functions; a version field guards
 * against a library from another build. Every function returns 0 on success
 * or -1 with the CUDA error readable through error(). Gathers run on one
 * stream of the library's, accumulations and argmaxes on another, so that
 * accumulating one batch overlaps the network's run of the next;
 * gathered() waits for the gathers, mark(slot)/wait(slot) fence a logits
 * buffer (accumulations queued so far have read it), sync() waits for
 * everything on the device (ONNX Runtime's streams included).
 *
 * Geometry is in network coordinates (dim 0 outermost, as in window.c):
 * N = the volume's dims, P = the patch, pad = low zero padding, vst/lst =
 * strides (elements) of the volume and of the label volume per network dim.
 */
#ifndef SP_WINDOW_CUDA_H
#define SP_WINDOW_CUDA_H
#include <stddef.h>
#include <stdint.h>

#define SP_CUDA_ABI 3
#define SP_CUDA_MAX_BATCH 32
#define SP_CUDA_MAX_DEVICES 64                  /* = SP_MAX_GPUS */

typedef struct sp_cuda_geom {
    int64_t N[3], P[3], pad[3];
    int64_t vst[3], lst[3];
    int64_t ring;                           /* rows of dim 0 in the accumulator */
    int C;                                  /* classes */
    int half;                               /* 1: tiles and logits are fp16 */
} sp_cuda_geom;

typedef struct sp_cuda_tiles {
    int n;
    int64_t s[SP_CUDA_MAX_BATCH][3];        /* tile starts, padded coordinates */
} sp_cuda_tiles;

typedef struct sp_cuda_api {
    int abi;                                /* SP_CUDA_ABI */
    const char *(*error)(void);
    int (*init)(int device, char *name, size_t cap);   /* device name out */
    void *(*alloc)(size_t bytes);           /* NULL on failure */
    void (*release)(void *p);
    int (*upload)(void *dst, const void *src, size_t bytes);
    int (*download)(void *dst, const void *src, size_t bytes);
    int (*zero)(void *p, size_t bytes);
    int (*sync)(void);
    int (*gathered)(void);
    int (*mark)(int slot);                  /* slot 0 or 1 */
    int (*wait)(int slot);
    size_t (*mem_used)(void);               /* bytes in use on the device now */
    /* tiles of vol (fp32, device) -> in (nb x P, fp32 or fp16, device) */
    int (*gather)(const sp_cuda_geom *g, const float *vol, const sp_cuda_tiles *t, void *in);
    /* acc (C x ring x N1 x N2, fp32) += logits (nb x C x P) * gauss (P),
     * tile by tile in order: the same additions in the same order as the
     * CPU path per voxel */
    int (*accumulate)(const sp_cuda_geom *g, float *acc, const void *logits, const float *gauss,
                      const sp_cuda_tiles *t);
    /* rows [r0, r1) of dim 0: labels (u16, volume layout) = argmax over
     * classes (first maximum wins), then those ring rows are cleared */
    int (*finish)(const sp_cuda_geom *g, float *acc, int64_t r0, int64_t r1, uint16_t *labels);
    /* the calling thread's GPU from now on (cuda:N; its streams made on
     * first use); every call above works on the calling thread's GPU */
    int (*use)(int device);
    int (*count)(void);                     /* GPUs CUDA sees; 0 on error */
} sp_cuda_api;

typedef const sp_cuda_api *(*sp_cuda_kernels_fn)(void);
#endif
