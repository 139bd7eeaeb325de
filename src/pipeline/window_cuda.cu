/*
 * window_cuda.cu — the sliding window's per-voxel work on the GPU: tile
 * gathering, Gaussian-weighted accumulation of the network's logits and the
 * argmax, so that the logits never leave the device (window_cuda.h is the
 * interface; window_gpu.c drives it). Built into libsegpipe_cuda.so by
 * `make cuda`; libsegpipe itself never links CUDA.
 *
 * Same arithmetic as window.c's CPU loops: acc += logit * weight with the
 * product and the sum rounded separately (no fused multiply-add), tiles
 * added in the same order, first maximum wins in the argmax.
 */
#include "window_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>

/* per GPU (cuda:N), made on first use; the calling thread's GPU is g_dev */
static cudaStream_t g_streams[SP_CUDA_MAX_DEVICES];    /* accumulate, argmax, copies */
static cudaStream_t g_gstreams[SP_CUDA_MAX_DEVICES];   /* gathers */
static cudaEvent_t g_slots[SP_CUDA_MAX_DEVICES][2];
static __thread int g_dev;
static __thread char g_err[256];
#define g_stream g_streams[g_dev]
#define g_gstream g_gstreams[g_dev]
#define g_slot g_slots[g_dev]

static int fail(cudaError_t e, const char *what)
{
    snprintf(g_err, sizeof g_err, "%s: %s", what, cudaGetErrorString(e));
    return -1;
}
#define CK(call, what) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) return fail(e_, what); } while (0)

static const char *k_error(void) { return g_err; }

/* this thread's kernels, copies and allocations go to GPU `device` */
static int k_use(int device)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    int n = 0;
    CK(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    if (device < 0 || device >= n || device >= SP_CUDA_MAX_DEVICES) {
        snprintf(g_err, sizeof g_err, "cuda:%d: CUDA sees %d GPU(s)", device, n);
        return -1;
    }
    CK(cudaSetDevice(device), "cudaSetDevice");
    g_dev = device;
    pthread_mutex_lock(&mu);
    cudaError_t e = cudaSuccess;
    if (!g_stream) {
        e = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
        if (e == cudaSuccess)
            e = cudaStreamCreateWithFlags(&g_gstream, cudaStreamNonBlocking);
        for (int i = 0; i < 2 && e == cudaSuccess; i++)
            e = cudaEventCreateWithFlags(&g_slot[i], cudaEventDisableTiming);
    }
    pthread_mutex_unlock(&mu);
    CK(e, "creating the window's CUDA streams");
    return 0;
}

static int k_count(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

static int k_init(int device, char *name, size_t cap)
{
    cudaDeviceProp prop;
    if (k_use(device))
        return -1;
    CK(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    snprintf(name, cap, "%s", prop.name);
    return 0;
}

static void *k_alloc(size_t bytes)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        fail(e, "cudaMalloc");
        return NULL;
    }
    return p;
}

static void k_release(void *p) { if (p) cudaFree(p); }

static int k_upload(void *dst, const void *src, size_t bytes)
{
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream), "upload");
    CK(cudaStreamSynchronize(g_stream), "upload");
    return 0;
}

static int k_download(void *dst, const void *src, size_t bytes)
{
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream), "download");
    CK(cudaStreamSynchronize(g_stream), "download");
    return 0;
}

static int k_zero(void *p, size_t bytes)
{
    CK(cudaMemsetAsync(p, 0, bytes, g_stream), "memset");
    return 0;
}

static int k_sync(void)
{
    CK(cudaDeviceSynchronize(), "synchronize");
    return 0;
}

static int k_gathered(void)
{
    CK(cudaStreamSynchronize(g_gstream), "gather");
    return 0;
}

static int k_mark(int slot)
{
    CK(cudaEventRecord(g_slot[slot & 1], g_stream), "cudaEventRecord");
    return 0;
}

static int k_wait(int slot)
{
    CK(cudaEventSynchronize(g_slot[slot & 1]), "cudaEventSynchronize");
    return 0;
}

static size_t k_mem_used(void)
{
    size_t free_b = 0, total = 0;
    return cudaMemGetInfo(&free_b, &total) == cudaSuccess ? total - free_b : 0;
}

/* ---- kernels (patch and volume sizes are checked by the caller: patch
 * dims and N[1] fit a grid's y and z, at most 65535) ---- */

__device__ static inline float to_f(float x) { return x; }
__device__ static inline float to_f(__half x) { return __half2float(x); }
__device__ static inline void from_f(float *d, float x) { *d = x; }
__device__ static inline void from_f(__half *d, float x) { *d = __float2half_rn(x); }

/* one tile: grid x: k, y: b, z: a */
template <typename T>
__global__ void gather_k(sp_cuda_geom g, const float *vol, int64_t s0, int64_t s1, int64_t s2, T *in)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y, a = blockIdx.z;
    if (k >= g.P[2])
        return;
    int64_t n0 = s0 + a - g.pad[0], n1 = s1 + b - g.pad[1], n2 = s2 + k - g.pad[2];
    float v = 0.0f;
    if (n0 >= 0 && n0 < g.N[0] && n1 >= 0 && n1 < g.N[1] && n2 >= 0 && n2 < g.N[2])
        v = vol[n0 * g.vst[0] + n1 * g.vst[1] + n2 * g.vst[2]];
    from_f(&in[((int64_t)a * g.P[1] + b) * g.P[2] + k], v);
}

/* one tile: a thread per patch voxel (grid x: k, y: b, z: a: no integer
 * division), looping over the classes with pointer steps */
template <typename T>
__global__ void accum_k(sp_cuda_geom g, float *__restrict__ acc, const T *__restrict__ lg,
                        const float *__restrict__ gauss, int64_t s0, int64_t s1, int64_t s2)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y, a = blockIdx.z;
    if (k >= g.P[2])
        return;
    int64_t n0 = s0 + a - g.pad[0], n1 = s1 + b - g.pad[1], n2 = s2 + k - g.pad[2];
    if (n0 < 0 || n0 >= g.N[0] || n1 < 0 || n1 >= g.N[1] || n2 < 0 || n2 >= g.N[2])
        return;
    int64_t psz = g.P[0] * g.P[1] * g.P[2], r = ((int64_t)a * g.P[1] + b) * g.P[2] + k;
    int64_t slab = g.N[1] * g.N[2], cst = g.ring * slab;
    float w = gauss[r];
    float *p = acc + (n0 % g.ring) * slab + n1 * g.N[2] + n2;
    const T *l = lg + r;
    /* restrict + unroll: the loads of several classes are in flight at once */
#pragma unroll 8
    for (int c = 0; c < g.C; c++)
        p[c * cst] = __fadd_rn(p[c * cst], __fmul_rn(to_f(l[c * psz]), w));
}

/* rows [r0, r1) of dim 0: grid x: n2, y: n1, z: row */
__global__ void finish_k(sp_cuda_geom g, float *__restrict__ acc, int64_t r0, uint16_t *__restrict__ labels)
{
    int64_t n2 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, n1 = blockIdx.y, n0 = r0 + blockIdx.z;
    if (n2 >= g.N[2])
        return;
    int64_t slab = g.N[1] * g.N[2], cst = g.ring * slab;
    float *p = acc + (n0 % g.ring) * slab + n1 * g.N[2] + n2;
    float best = p[0];
    int bi = 0;
#pragma unroll 8
    for (int c = 1; c < g.C; c++) {     /* reads only: the loads pipeline */
        float v = p[c * cst];
        if (v > best)
            best = v, bi = c;
    }
#pragma unroll 8
    for (int c = 0; c < g.C; c++)
        p[c * cst] = 0.0f;
    labels[n0 * g.lst[0] + n1 * g.lst[1] + n2 * g.lst[2]] = (uint16_t)bi;
}

static unsigned blocks(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

static int k_gather(const sp_cuda_geom *g, const float *vol, const sp_cuda_tiles *t, void *in)
{
    size_t psz = (size_t)(g->P[0] * g->P[1] * g->P[2]);
    dim3 grid(blocks(g->P[2], 128), (unsigned)g->P[1], (unsigned)g->P[0]);
    for (int i = 0; i < t->n; i++) {
        if (g->half)
            gather_k<__half><<<grid, 128, 0, g_gstream>>>(*g, vol, t->s[i][0], t->s[i][1], t->s[i][2],
                                                         (__half *)in + (size_t)i * psz);
        else
            gather_k<float><<<grid, 128, 0, g_gstream>>>(*g, vol, t->s[i][0], t->s[i][1], t->s[i][2],
                                                        (float *)in + (size_t)i * psz);
        CK(cudaGetLastError(), "gather kernel");
    }
    return 0;
}

static int k_accumulate(const sp_cuda_geom *g, float *acc, const void *logits, const float *gauss,
                        const sp_cuda_tiles *t)
{
    size_t psz = (size_t)(g->P[0] * g->P[1] * g->P[2]);
    dim3 grid(blocks(g->P[2], 128), (unsigned)g->P[1], (unsigned)g->P[0]);
    for (int i = 0; i < t->n; i++) {
        size_t off = (size_t)i * (size_t)g->C * psz;
        if (g->half)
            accum_k<__half><<<grid, 128, 0, g_stream>>>(*g, acc, (const __half *)logits + off, gauss, t->s[i][0],
                                                        t->s[i][1], t->s[i][2]);
        else
            accum_k<float><<<grid, 128, 0, g_stream>>>(*g, acc, (const float *)logits + off, gauss, t->s[i][0],
                                                       t->s[i][1], t->s[i][2]);
        CK(cudaGetLastError(), "accumulate kernel");
    }
    return 0;
}

static int k_finish(const sp_cuda_geom *g, float *acc, int64_t r0, int64_t r1, uint16_t *labels)
{
    for (int64_t r = r0; r < r1; r += 65535) {      /* grid z is at most 65535 */
        int64_t n = r1 - r < 65535 ? r1 - r : 65535;
        dim3 grid(blocks(g->N[2], 128), (unsigned)g->N[1], (unsigned)n);
        finish_k<<<grid, 128, 0, g_stream>>>(*g, acc, r, labels);
        CK(cudaGetLastError(), "argmax kernel");
    }
    return 0;
}

static const sp_cuda_api g_api = {
    SP_CUDA_ABI, k_error, k_init, k_alloc, k_release, k_upload, k_download, k_zero, k_sync, k_gathered, k_mark,
    k_wait, k_mem_used,
    k_gather, k_accumulate, k_finish, k_use, k_count,
};

extern "C" __attribute__((visibility("default"))) const sp_cuda_api *sp_cuda_kernels(void)
{
    return &g_api;
}
