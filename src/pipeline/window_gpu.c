/*
 * window_gpu.c — the sliding window on the GPU (docs/gpu.md).
 *
 * The volume is uploaded once; each batch of tiles is gathered on the
 * device, run by ONNX Runtime's CUDA provider with its input and output
 * bound to device memory, and its logits are weighted and added into a
 * device accumulator by libsegpipe_cuda.so's kernels (gathers on a stream
 * of their own; with SEGPIPE_GPU_SLOTS=2 two logits buffers, so that one
 * batch is accumulated while the next runs); finished rows are
 * argmaxed there, and only the uint16 labels come back. Same ring
 * accumulator as window.c (patch[0] rows of dim 0, fp32), so GPU memory is
 * C x patch[0] x N1 x N2 x 4 bytes plus one batch of tiles and of logits.
 *
 * The kernels live in an optional library, loaded with dlopen the first
 * time a CUDA session runs a window: libsegpipe itself never links CUDA, so
 * the CPU build needs no CUDA toolkit. Looked up as SEGPIPE_CUDA_KERNELS,
 * else libsegpipe_cuda.so beside the module holding this code (build/ or
 * <prefix>/lib) or in ../lib from it (<prefix>/bin).
 */
#include "pipeline.h"
#include "../runtime/device.h"
#include "window_cuda.h"

#include <dlfcn.h>
#include <stdint.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const sp_cuda_api *g_k;
static char g_err[PATH_MAX + 256] = "not loaded";
static char g_name[128];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static size_t g_peak[SP_CUDA_MAX_DEVICES];   /* per GPU */

static void *open_kernels(void)
{
    const char *env = getenv("SEGPIPE_CUDA_KERNELS");
    if (env && *env)
        return dlopen(env, RTLD_NOW | RTLD_LOCAL);
    static const char *const rel[] = {"libsegpipe_cuda.so", "../lib/libsegpipe_cuda.so"};
    int found;
    void *h = sp_module_dlopen(rel, sizeof rel / sizeof *rel, &found);
    if (!found) {
        char dir[PATH_MAX];
        sp_module_dir(dir, sizeof dir);
        snprintf(g_err, sizeof g_err, "libsegpipe_cuda.so not found beside %s (build it with `make cuda`)", dir);
    }
    return h;
}

static void load_kernels(void)
{
    void *h = open_kernels();
    if (!h) {
        const char *e = dlerror();
        if (e)
            snprintf(g_err, sizeof g_err, "cannot load the GPU window kernels: %s", e);
        return;
    }
    sp_cuda_kernels_fn fn = (sp_cuda_kernels_fn)dlsym(h, "sp_cuda_kernels");
    const sp_cuda_api *k = fn ? fn() : NULL;
    if (!k || k->abi != SP_CUDA_ABI) {
        snprintf(g_err, sizeof g_err, "libsegpipe_cuda.so is from another build (interface %d, want %d)",
                 k ? k->abi : -1, SP_CUDA_ABI);
        return;
    }
    if (k->init(0, g_name, sizeof g_name) != 0) {
        snprintf(g_err, sizeof g_err, "GPU window kernels: %s", k->error());
        return;
    }
    g_err[0] = 0;
    g_k = k;
}

int sp_window_gpu_available(void)
{
    pthread_once(&g_once, load_kernels);
    return g_k != NULL;
}

const char *sp_window_gpu_error(void)
{
    pthread_once(&g_once, load_kernels);
    return g_err;
}

const char *sp_window_gpu_name(void)
{
    return sp_window_gpu_available() ? g_name : "";
}

size_t sp_gpu_peak_memory_of(int gpu)
{
    return gpu >= 0 && gpu < SP_CUDA_MAX_DEVICES ? __atomic_load_n(&g_peak[gpu], __ATOMIC_RELAXED) : 0;
}

size_t sp_gpu_peak_memory(void)
{
    size_t m = 0;
    for (int i = 0; i < SP_CUDA_MAX_DEVICES; i++)
        m = sp_gpu_peak_memory_of(i) > m ? sp_gpu_peak_memory_of(i) : m;
    return m;
}

int sp_gpu_count(void)
{
    return sp_window_gpu_available() ? g_k->count() : 0;
}

typedef struct gpu_win {
    sp_cuda_geom g;
    float *vol, *acc, *gauss;
    void *in, *out[2];           /* logits buffers: nslots of them */
    int nslots;
    int gpu;                     /* cuda:N */
    uint16_t *labels;
    size_t es;                   /* bytes per tile/logit element */
} gpu_win;

static sp_status kfail(const char *what)
{
    return sp_fail(SP_ERR_RUNTIME, "GPU sliding window: %s: %s", what, g_k->error());
}

static void gpu_free(gpu_win *w)
{
    g_k->release(w->vol);
    g_k->release(w->acc);
    g_k->release(w->gauss);
    g_k->release(w->in);
    g_k->release(w->out[0]);
    g_k->release(w->out[1]);
    g_k->release(w->labels);
}

/* device buffers, the volume and the Gaussian map uploaded */
static sp_status gpu_setup(gpu_win *w, const float *vol, const sp_window_plan *pl, const sp_window_params *wp)
{
    size_t nvox = (size_t)(pl->N[0] * pl->N[1] * pl->N[2]), psz = (size_t)(pl->P[0] * pl->P[1] * pl->P[2]);
    size_t acc = (size_t)pl->C * (size_t)w->g.ring * (size_t)(pl->N[1] * pl->N[2]) * sizeof(float);
    struct { void **p; size_t bytes; } want[] = {
        {(void **)&w->vol, nvox * sizeof(float)}, {(void **)&w->labels, nvox * sizeof(uint16_t)},
        {(void **)&w->acc, acc}, {(void **)&w->gauss, psz * sizeof(float)},
        {&w->in, (size_t)pl->batch * psz * w->es}, {&w->out[0], (size_t)pl->batch * (size_t)pl->C * psz * w->es},
        {&w->out[1], w->nslots > 1 ? (size_t)pl->batch * (size_t)pl->C * psz * w->es : 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        if (want[i].bytes && !(*want[i].p = g_k->alloc(want[i].bytes)))
            return sp_fail(SP_ERR_NOMEM, "GPU sliding window: cannot allocate %.1f MB on the device (%s)",
                           (double)want[i].bytes / 1e6, g_k->error());
    float *gauss = sp_gaussian_map(pl->P, wp->sigma_scale);
    if (!gauss)
        return sp_fail(SP_ERR_NOMEM, "sliding window: cannot allocate the Gaussian map");
    int bad = g_k->upload(w->vol, vol, nvox * sizeof(float)) || g_k->upload(w->gauss, gauss, psz * sizeof(float)) ||
              g_k->zero(w->acc, acc);
    free(gauss);
    return bad ? kfail("upload") : SP_OK;
}

/* one batch into logits buffer `slot`: gather (its own stream), wait until
 * the accumulation that last read the buffer is done, run, queue the
 * accumulation (it overlaps the next batch's gather and run). ONNX Runtime
 * synchronises its stream before Run returns, so the logits are complete. */
static sp_status gpu_batch(sp_model *m, gpu_win *w, const sp_tile *tiles, int nb, int slot, sp_timings *t)
{
    sp_cuda_tiles ct = {nb, {{0}}};
    for (int i = 0; i < nb; i++)
        memcpy(ct.s[i], tiles[i].s, sizeof ct.s[i]);
    double t0 = sp_now();
    if (g_k->gather(&w->g, w->vol, &ct, w->in) || g_k->gathered() || g_k->wait(slot))
        return kfail("gathering tiles");
    double t1 = sp_now();
    sp_dtype dt = w->g.half ? SP_DT_F16 : SP_DT_F32;
    const int64_t *P = w->g.P;
    sp_tensor in = {dt, 5, {nb, 1, P[0], P[1], P[2]}, w->in};
    sp_tensor out = {dt, 5, {nb, w->g.C, P[0], P[1], P[2]}, w->out[slot]};
    sp_status st = sp_model_run_device(m, &in, 1, &out, 1);
    double t2 = sp_now();
    if (!st && (g_k->accumulate(&w->g, w->acc, w->out[slot], w->gauss, &ct) || g_k->mark(slot)))
        st = kfail("accumulating");
    sp_timings_add(t, "window", t1 - t0);
    sp_timings_add(t, "inference", t2 - t1);
    return st;
}

static sp_status gpu_loop(sp_model *m, gpu_win *w, const sp_window_plan *pl, const sp_window_params *wp,
                          sp_timings *t, void (*progress)(const char *, int, int, void *), void *user)
{
    int B = pl->batch < SP_CUDA_MAX_BATCH ? pl->batch : SP_CUDA_MAX_BATCH;
    int64_t finished = 0;
    int nbatch = 0;
    if (progress)
        progress("inference", 0, pl->ntiles, user);
    for (int i = 0; i < pl->ntiles;) {
        if (wp->cancel && __atomic_load_n(wp->cancel, __ATOMIC_RELAXED))
            return sp_fail(SP_ERR_CANCELLED, "cancelled after %d of %d tiles", i, pl->ntiles);
        int nb = 0;
        while (nb < B && i + nb < pl->ntiles && pl->tiles[i + nb].s[0] == pl->tiles[i].s[0])
            nb++;
        int64_t row = pl->tiles[i].s[0] - pl->pad[0];   /* rows before it are final */
        if (row > finished) {
            if (g_k->finish(&w->g, w->acc, finished, row < pl->N[0] ? row : pl->N[0], w->labels))
                return kfail("argmax");
            finished = row;
        }
        sp_status st = gpu_batch(m, w, &pl->tiles[i], nb, nbatch++ % w->nslots, t);
        if (st)
            return st;
        i += nb;
        if (progress)
            progress("inference", i, pl->ntiles, user);
    }
    double t0 = sp_now();
    if (g_k->finish(&w->g, w->acc, finished, pl->N[0], w->labels) || g_k->sync())
        return kfail("argmax");
    size_t *peak = &g_peak[w->gpu];
    size_t used = g_k->mem_used(), seen = __atomic_load_n(peak, __ATOMIC_RELAXED);
    while (used > seen && !__atomic_compare_exchange_n(peak, &seen, used, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    sp_timings_add(t, "window", sp_now() - t0);
    return SP_OK;
}

sp_status sp_window_run_gpu(sp_model *m, const float *vol, const sp_window_plan *pl, const sp_window_params *wp,
                            uint16_t *labels, sp_timings *t, void (*progress)(const char *, int, int, void *),
                            void *progress_user)
{
    if (!sp_window_gpu_available())
        return sp_fail(SP_ERR_RUNTIME, "%s", g_err);
    for (int d = 0; d < 3; d++)
        if (pl->P[d] > 65535 || pl->N[d] > (d == 1 ? 65535 : INT64_MAX))
            return sp_fail(SP_ERR_INPUT, "GPU sliding window: patch %lld or volume %lld along network dim %d is "
                           "past the kernels' grid (65535)", (long long)pl->P[d], (long long)pl->N[d], d);
    int n;
    gpu_win w;
    memset(&w, 0, sizeof w);
    w.gpu = sp_runtime_device_id(sp_model_runtime(m));
    if (g_k->use(w.gpu))
        return kfail("choosing the GPU");
    w.g.half = sp_model_inputs(m, &n)[0].meta.dtype == SP_DT_F16;
    /* One logits buffer: a second one let each batch's accumulation overlap
     * the next run, 1-2% faster for 0.5-1 GB more GPU memory (docs/gpu.md);
     * SEGPIPE_GPU_SLOTS=2 turns it on. */
    const char *slots = getenv("SEGPIPE_GPU_SLOTS");
    w.nslots = slots && !strcmp(slots, "2") ? 2 : 1;
    w.es = w.g.half ? 2 : 4;
    for (int d = 0; d < 3; d++) {
        w.g.N[d] = pl->N[d];
        w.g.P[d] = pl->P[d];
        w.g.pad[d] = pl->pad[d];
        w.g.vst[d] = w.g.lst[d] = pl->vst[d];
    }
    w.g.ring = pl->P[0] < pl->N[0] ? pl->P[0] : pl->N[0];
    w.g.C = pl->C;
    double t0 = sp_now();
    sp_status st = gpu_setup(&w, vol, pl, wp);
    sp_timings_add(t, "upload", sp_now() - t0);
    if (!st)
        st = gpu_loop(m, &w, pl, wp, t, progress, progress_user);
    if (!st) {
        t0 = sp_now();
        size_t nvox = (size_t)(pl->N[0] * pl->N[1] * pl->N[2]);
        if (g_k->download(labels, w.labels, nvox * sizeof(uint16_t)))
            st = kfail("download");
        sp_timings_add(t, "download", sp_now() - t0);
    }
    gpu_free(&w);
    return st;
}

int sp_gpu_status(char *buf, size_t cap)
{
    sp_runtime_params rp = sp_runtime_default_params();
    sp_runtime *rt;
    rp.device = "cuda";
    if (sp_runtime_create(&rp, &rt) != SP_OK) {
        snprintf(buf, cap, "cuda: not available (%s)", sp_last_error());
        return 0;
    }
    sp_runtime_free(rt);
    if (!sp_window_gpu_available()) {
        snprintf(buf, cap, "cuda: provider loads; GPU window kernels missing, so CT logits are copied to the host "
                 "per tile (%s)", g_err);
        return 0;
    }
    snprintf(buf, cap, "cuda: %s, window kernels loaded", g_name);
    return 1;
}
