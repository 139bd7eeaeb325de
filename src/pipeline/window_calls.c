/*
 * window_calls.c — a batch of sliding-window tiles on the CPU as concurrent
 * single-tile calls of the model's one ONNX Runtime session.
 *
 * Why: ONNX Runtime's CPU 3D convolution (im2col, then a threaded GEMM)
 * has steps that run on the calling thread alone, so one call stops
 * scaling past a few threads (docs/performance.md, "CPU: segpipe vs
 * PyTorch"). Several calls at once overlap those steps: the session is
 * thread-safe for Run, its intra-op pool serves every caller, and each call
 * writes its own slice of the window's output buffer. A tile's logits are
 * those of a batch-1 call, so the labels equal a tile batch of 1's; the
 * window then accumulates the batch in tile order, as for one batched call.
 *
 * With at least as many calls as the runtime has threads (the 2-core
 * case: 4 tiles, 2 threads), each call runs on a one-thread session of the
 * same model (made on first use) instead: the calls then fill the cores
 * without a pool's workers competing with them (the window and inference
 * of demo-ct on example_ct, 2 cores: 11.0 s against 13.6 s for one batched
 * call, docs/performance.md "Tile calls").
 *
 * The first tile runs on the caller's thread; a thread that cannot be
 * started runs its tile on the caller's thread too. The calls get threads of
 * their own, not the window's sp_pool: a pool busy with another job (the
 * service's other requests) runs the whole range on the caller, which with
 * one-thread sessions would leave one core working. Batches of more than
 * SP_WINDOW_MAX_CALLS tiles stay one batched call (window.c).
 */
#include "pipeline.h"
#include "../runtime/device.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct tile_call {
    sp_model *m;
    int solo;
    sp_tensor in, out;
    sp_status st;
    char err[512];
} tile_call;

static void *tile_call_run(void *v)
{
    tile_call *t = v;
    t->st = t->solo ? sp_model_run_solo(t->m, &t->in, 1, &t->out, 1) : sp_model_run(t->m, &t->in, 1, &t->out, 1);
    if (t->st)
        snprintf(t->err, sizeof t->err, "%s", sp_last_error());
    return NULL;
}

int sp_window_calls_wanted(void)
{
    const char *e = getenv("SEGPIPE_TILE_CALLS");
    if (e && !strcmp(e, "batched"))
        return 0;
    return getenv("SEGPIPE_CALIBRATE") == NULL;   /* calibration keeps its per-call ranges */
}

int sp_window_calls_used(const sp_model *m, int nb)
{
    return nb > 1 && nb <= SP_WINDOW_MAX_CALLS && !strcmp(sp_runtime_device_name(sp_model_runtime(m)), "cpu") &&
           sp_window_calls_wanted();
}

int sp_window_calls_solo(const sp_model *m, int nb)
{
    int threads = sp_runtime_threads(sp_model_runtime(m));
    return threads > 1 && nb >= threads;
}

sp_status sp_window_run_calls(sp_model *m, float *in, float *out, int nb, int Cin, int C, const int64_t P[3])
{
    if (nb > SP_WINDOW_MAX_CALLS)
        return sp_fail(SP_ERR_USAGE, "at most %d concurrent tile calls", SP_WINDOW_MAX_CALLS);
    size_t psz = (size_t)(P[0] * P[1] * P[2]);
    tile_call calls[SP_WINDOW_MAX_CALLS];
    pthread_t th[SP_WINDOW_MAX_CALLS];
    int started[SP_WINDOW_MAX_CALLS] = {0};
    int solo = sp_window_calls_solo(m, nb);
    for (int k = 0; k < nb; k++) {
        calls[k] = (tile_call){.m = m, .solo = solo,
                               .in = {SP_DT_F32, 5, {1, Cin, P[0], P[1], P[2]}, in + (size_t)k * Cin * psz},
                               .out = {SP_DT_F32, 5, {1, C, P[0], P[1], P[2]}, out + (size_t)k * C * psz}};
        if (k > 0)
            started[k] = pthread_create(&th[k], NULL, tile_call_run, &calls[k]) == 0;
    }
    tile_call_run(&calls[0]);
    for (int k = 1; k < nb; k++) {
        if (started[k])
            pthread_join(th[k], NULL);
        else
            tile_call_run(&calls[k]);
    }
    for (int k = 0; k < nb; k++)
        if (calls[k].st)
            return sp_fail(calls[k].st, "%s", calls[k].err);
    return SP_OK;
}
