/*
 * normalize.c — intensity normalisation as nnU-Net does it:
 *   ct:     clip to [lo, hi] (dataset 0.5 / 99.5 percentiles), then
 *           (x - mean) / max(std, 1e-8) with the dataset's foreground stats;
 *   zscore: (x - mean) / max(std, 1e-8) with this volume's own mean/std;
 *   minmax: (x - min) / (max - min) over this volume (brainchop's scaling;
 *           a constant volume becomes 0);
 *   quantile: brainchop's qnormalize: (x - q_lo) / (q_hi - q_lo + eps)
 *           clipped to [0, 1], the quantiles as numpy.quantile's default
 *           (linear between the order statistics at q (n - 1));
 *   none:   unchanged.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct norm_ctx {
    float *x;
    double lo, hi, mean, inv_std;
    int clip, clip01;
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
        v = (v - mean) * is;
        if (c->clip01)
            v = v < 0 ? 0 : v > 1 ? 1 : v;
        c->x[i] = (float)v;
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

/* the k-th smallest of a[0..n) (a reordered), Hoare quickselect */
static float kth(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float p = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < p)
                i++;
            while (a[j] > p)
                j--;
            if (i <= j) {
                float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return a[k];
    }
    return a[k];
}

/* numpy's "linear" quantile between the order statistics a (k-th) and b
 * (k+1-th), t the fraction of the position past k (numpy's _lerp) */
static double quantile_lerp(double a, double b, double t)
{
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

/* numpy.quantile(x, q) (method "linear") on a scratch copy */
static double quantile(float *tmp, int64_t n, double q)
{
    double pos = q * (double)(n - 1);
    int64_t k = (int64_t)floor(pos);
    double t = pos - (double)k, a = kth(tmp, n, k), b = a;
    if (t > 0 && k + 1 < n) {   /* the next order statistic: the smallest right of k */
        b = tmp[k + 1];
        for (int64_t i = k + 2; i < n; i++)
            b = tmp[i] < b ? tmp[i] : b;
    }
    return quantile_lerp(a, b, t);
}

/* The counts of each integer 0..255 in x, per worker; bin 256 counts every
 * other value (a fraction, out of range, NaN). */
typedef struct hist_ctx {
    const float *x;
    int64_t (*h)[257];
} hist_ctx;

static void hist_range(void *vc, int64_t b, int64_t e, int w)
{
    hist_ctx *c = vc;
    int64_t *h = c->h[w];
    for (int64_t i = b; i < e; i++) {
        float v = c->x[i];
        int k = v >= 0 && v <= 255 ? (int)v : 256;
        h[k != 256 && (float)k == v ? k : 256]++;
    }
}

/* The k-th smallest of a volume whose counts h[0..255] cover every voxel */
static double hist_kth(const int64_t *h, int64_t k)
{
    int64_t cum = 0;
    for (int v = 0; v < 256; v++)
        if ((cum += h[v]) > k)
            return v;
    return 255;
}

/* quantile() from the counts: the same order statistics, without a copy
 * and a selection, where every voxel is an integer 0..255 (a conformed
 * uint8 volume, conform_niimath.c); 0 where some voxel is not. */
static int hist_quantiles(const float *x, int64_t n, const sp_norm *nm, sp_pool *pool, double *lo, double *hi)
{
    int nw = sp_pool_size(pool);
    hist_ctx c = {.x = x, .h = calloc((size_t)nw, sizeof *c.h)};
    if (!c.h)
        return 0;
    sp_pool_for(pool, n, 1 << 16, hist_range, &c);
    int64_t h[257] = {0};
    for (int w = 0; w < nw; w++)
        for (int v = 0; v < 257; v++)
            h[v] += c.h[w][v];
    free(c.h);
    if (h[256])
        return 0;
    double q[2] = {nm->lo, nm->hi}, *out[2] = {lo, hi};
    for (int i = 0; i < 2; i++) {
        double pos = q[i] * (double)(n - 1);
        int64_t k = (int64_t)floor(pos);
        double t = pos - (double)k, a = hist_kth(h, k), b = t > 0 && k + 1 < n ? hist_kth(h, k + 1) : a;
        *out[i] = quantile_lerp(a, b, t);
    }
    return 1;
}

static void quantile_norm(float *x, int64_t n, const sp_norm *nm, sp_pool *pool)
{
    double lo = 0, hi = 1;
    float *tmp = NULL;
    if (hist_quantiles(x, n, nm, pool, &lo, &hi))
        ;   /* a uint8-valued volume: from its counts */
    else if ((tmp = malloc((size_t)n * sizeof *tmp))) {
        memcpy(tmp, x, (size_t)n * sizeof *tmp);
        lo = quantile(tmp, n, nm->lo);
        hi = quantile(tmp, n, nm->hi);
        free(tmp);
    } else {   /* no room for a copy: min/max (never reached at brain sizes) */
        lo = hi = x[0];
        for (int64_t i = 1; i < n; i++) {
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
    }
    norm_ctx c = {.x = x, .mean = lo, .inv_std = 1.0 / (hi - lo + nm->mean), .clip01 = 1};
    sp_pool_for(pool, n, 1 << 16, norm_range, &c);
}

void sp_normalize(float *x, int64_t n, const sp_norm *nm, sp_pool *pool)
{
    norm_ctx c = {.x = x};
    if (nm->scheme == SP_NORM_NONE || n <= 0)
        return;
    if (nm->scheme == SP_NORM_QUANTILE) {
        quantile_norm(x, n, nm, pool);
        return;
    }
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
