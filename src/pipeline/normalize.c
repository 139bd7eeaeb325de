/*
 * normalize.c — intensity normalisation as nnU-Net does it:
 *   ct:     clip to [lo, hi] (dataset 0.5 / 99.5 percentiles), then
 *           (x - mean) / max(std, 1e-8) with the dataset's foreground stats;
 *   zscore: (x - mean) / max(std, 1e-8) with this volume's own mean/std;
 *   minmax: (x - min) / (max - min) over this volume (brainchop's scaling;
 *           a constant volume becomes 0);
 *   none:   unchanged.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>

typedef struct norm_ctx {
    float *x;
    double lo, hi, mean, inv_std;
    int clip;
    double *sum, *sq;     /* per worker (zscore pass) */
} norm_ctx;

static void norm_range(void *vc, int64_t b, int64_t e, int w)
{
    norm_ctx *c = vc;
    float lo = (float)c->lo, hi = (float)c->hi;
    double mean = c->mean, is = c->inv_std;
    for (int64_t i = b; i < e; i++) {
        double v = c->x[i];
        if (c->clip)
            v = v < lo ? lo : v > hi ? hi : v;
        c->x[i] = (float)((v - mean) * is);
    }
}

static void stats_range(void *vc, int64_t b, int64_t e, int w)
{
    norm_ctx *c = vc;
    double s = 0, q = 0;
    for (int64_t i = b; i < e; i++) {
        s += c->x[i];
        q += (double)c->x[i] * c->x[i];
    }
    c->sum[w] += s;
    c->sq[w] += q;
}

void sp_normalize(float *x, int64_t n, const sp_norm *nm, sp_pool *pool)
{
    norm_ctx c = {.x = x};
    if (nm->scheme == SP_NORM_NONE || n <= 0)
        return;
    if (nm->scheme == SP_NORM_MINMAX) {
        float lo = x[0], hi = x[0];
        for (int64_t i = 1; i < n; i++) {
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
        c.mean = lo;
        c.inv_std = hi > lo ? 1.0 / ((double)hi - lo) : 0;
        sp_pool_for(pool, n, 1 << 16, norm_range, &c);
        return;
    }
    if (nm->scheme == SP_NORM_CT) {
        c.clip = 1;
        c.lo = nm->lo;
        c.hi = nm->hi;
        c.mean = nm->mean;
        c.inv_std = 1.0 / fmax(nm->std, 1e-8);
    } else {
        int nw = sp_pool_size(pool);
        c.sum = calloc((size_t)nw, sizeof(double));
        c.sq = calloc((size_t)nw, sizeof(double));
        if (!c.sum || !c.sq) {
            free(c.sum);
            free(c.sq);
            return;
        }
        sp_pool_for(pool, n, 1 << 16, stats_range, &c);
        double s = 0, q = 0;
        for (int i = 0; i < nw; i++)
            s += c.sum[i], q += c.sq[i];
        free(c.sum);
        free(c.sq);
        c.mean = s / (double)n;
        double var = q / (double)n - c.mean * c.mean;
        c.inv_std = 1.0 / fmax(sqrt(var > 0 ? var : 0), 1e-8);
    }
    sp_pool_for(pool, n, 1 << 16, norm_range, &c);
}
