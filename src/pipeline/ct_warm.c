/*
 * ct_warm.c — sp_ct_warm_up: a volume package warmed up for the sliding
 * window it will run, so the first request of a service pays no set-up.
 *
 * sp_package_warm_up (runtime/package.c) runs the network twice on one
 * zero tile. On the CPU the window runs a batch of tiles as concurrent
 * single-tile calls (window_calls.c), each on a one-thread session of the
 * same model when there are at least as many calls as threads; that
 * session is made on first use, i.e. by the first request, which then pays
 * its graph optimisation (issue #45). Here it is made, and run once, at
 * warm-up: only where the window will use it (CPU, tile calls wanted, the
 * automatic tile batch >= the runtime's threads > 1: on one thread the
 * model's own session already runs each call on its caller), since it
 * holds a second copy of the model's weights.
 */
#include "pipeline.h"
#include "../runtime/device.h"
#include "../runtime/package.h"

#include <stdlib.h>

/* 1 when the window of a run of pk with the default tile batch runs its
 * batches as calls on one-thread sessions (window_calls.c's own rules) */
static int uses_solo_calls(const sp_package *pk)
{
    int b = sp_ct_auto_tile_batch(pk);
    return pk->model && sp_window_calls_used(pk->model, b) && sp_window_calls_solo(pk->model, b);
}

/* One zero tile through the model's one-thread session (making it). */
static sp_status warm_solo(sp_package *pk)
{
    const sp_manifest *mf = &pk->mf;
    int ni, no;
    sp_dtype dt = sp_model_inputs(pk->model, &ni)[0].meta.dtype;
    sp_model_outputs(pk->model, &no);
    if (ni != 1 || no != 1 || dt != SP_DT_F32)   /* the window's calls: one fp32 input, one output */
        return SP_OK;
    int C = sp_ct_tile_channels(pk);
    size_t n = (size_t)(mf->patch[0] * mf->patch[1] * mf->patch[2]);
    float *in = calloc(n * (size_t)mf->channels, sizeof *in), *out = malloc(n * (size_t)C * sizeof *out);
    sp_status st = SP_OK;
    if (!in || !out)
        st = sp_fail(SP_ERR_NOMEM, "warm-up: out of memory");
    if (!st) {
        sp_tensor ti = {SP_DT_F32, 5, {1, mf->channels, mf->patch[0], mf->patch[1], mf->patch[2]}, in};
        sp_tensor to = {SP_DT_F32, 5, {1, C, mf->patch[0], mf->patch[1], mf->patch[2]}, out};
        st = sp_model_run_solo(pk->model, &ti, 1, &to, 1);
    }
    free(in);
    free(out);
    return st;
}

/* The one-thread sessions of pk and of a task package's parts. */
static sp_status warm_solo_all(sp_package *pk)
{
    sp_status st = SP_OK;
    if (pk->mf.n_parts) {
        for (int i = 0; i < pk->mf.n_parts && !st; i++)
            st = warm_solo_all(pk->part[i]);
        if (!st && pk->crop)
            st = warm_solo_all(pk->crop);
        return st;
    }
    return uses_solo_calls(pk) ? warm_solo(pk) : SP_OK;
}

sp_status sp_ct_warm_up(sp_package *pk)
{
    sp_status st = sp_package_warm_up(pk);
    if (st || !sp_package_is_volume(pk))
        return st;
    return warm_solo_all(pk);
}
