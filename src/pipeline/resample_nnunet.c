/*
 * resample_nnunet.c — nnU-Net's resampling of image data, for packages whose
 * manifest says "resample": "nnunet" (nnunetv2/preprocessing/resampling/
 * default_resampling.py, resample_data_or_seg with is_seg=False, order 3,
 * order_z 0):
 *
 * - isotropic enough (max/min spacing <= 3, nnU-Net's ANISO_THRESHOLD, for
 *   the input's spacing and then the target's): skimage's
 *   resize(order=3, mode='edge', anti_aliasing=False), i.e.
 *   scipy.ndimage.zoom(order=3, mode='nearest', grid_mode=True), then the
 *   output clipped to the input's range (resize's clip=True);
 * - anisotropic (one axis coarser): that resize on each slice across the
 *   low-resolution axis (each slice clipped to its own range), then nearest
 *   neighbour along that axis (map_coordinates order 0, mode 'nearest', at
 *   pixel centres (o + 0.5) * n / n_out - 0.5).
 *
 * The cubic B-spline is separable, so each axis is one pass over lines:
 * the line padded by 12 edge voxels (scipy's _prepad_for_spline_filter for
 * mode 'nearest'), its B-spline coefficients by the recursive filter (pole
 * sqrt(3) - 2, Unser 1993; scipy's ni_splines.c with its 'reflect' end
 * conditions), then 4 taps around (o + 0.5) * n / n_out - 0.5. Lines along
 * the second and third axes are filtered W = dim[0] at a time, contiguous.
 */
#include "pipeline.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAD 12            /* scipy pads 12 voxels before a 'nearest' spline filter */
#define ANISO 3.0         /* nnunetv2.configuration.ANISO_THRESHOLD */

/* Step 1: cubic B-spline coefficients of m samples in place, W lanes
 * interleaved (c[i * W + x]); scipy's apply_filter with the reflect ends */
static void bspline3(double *c, int64_t m, int64_t W)
{
    const double z = sqrt(3.0) - 2.0;
    for (int64_t i = 0; i < m * W; i++)
        c[i] *= 6.0;   /* (1 - z)(1 - 1/z) */
    double zn = pow(z, (double)m), k = z / (1.0 - zn * zn);
    for (int64_t x = 0; x < W; x++) {   /* _init_causal_reflect */
        double c0 = c[x], s = c[x] + zn * c[(m - 1) * W + x], zi = z;
        for (int64_t i = 1; i < m && fabs(zi) > DBL_MIN; i++, zi *= z)
            s += zi * (c[i * W + x] + zn * c[(m - 1 - i) * W + x]);
        c[x] = s * k + c0;
    }
    for (int64_t i = 1; i < m; i++)
        for (int64_t x = 0; x < W; x++)
            c[i * W + x] += z * c[(i - 1) * W + x];
    for (int64_t x = 0; x < W; x++)   /* _init_anticausal_reflect */
        c[(m - 1) * W + x] *= z / (z - 1.0);
    for (int64_t i = m - 2; i >= 0; i--)
        for (int64_t x = 0; x < W; x++)
            c[i * W + x] = z * (c[(i + 1) * W + x] - c[i * W + x]);
}

typedef struct cub_tab {
    int64_t *first;   /* first tap, padded coordinates */
    double (*w)[4];
} cub_tab;

/* the taps of each output position: centres (o + 0.5) * n / nout - 0.5 */
static int make_tab(int64_t n, int64_t nout, cub_tab *t)
{
    t->first = malloc((size_t)nout * sizeof *t->first);
    t->w = malloc((size_t)nout * sizeof *t->w);
    if (!t->first || !t->w)
        return -1;
    double zoom = (double)n / (double)nout;
    for (int64_t o = 0; o < nout; o++) {
        double c = ((double)o + 0.5) * zoom - 0.5 + PAD, f = floor(c), u = c - f, v = 1.0 - u;
        t->first[o] = (int64_t)f - 1;
        t->w[o][0] = v * v * v / 6.0;
        t->w[o][1] = (4.0 - 6.0 * u * u + 3.0 * u * u * u) / 6.0;
        t->w[o][2] = (4.0 - 6.0 * v * v + 3.0 * v * v * v) / 6.0;
        t->w[o][3] = u * u * u / 6.0;
    }
    return 0;
}

typedef struct cub_ctx {
    const float *src;
    float *dst;
    int64_t cd[3], nd[3];   /* dims before and after this axis's pass */
    int axis;
    cub_tab tab;
    double **buf;           /* per worker: (n + 2 PAD) x W */
} cub_ctx;

/* Step 2: one item of an axis pass (a row for axis 0, W = 1; a slice or a
 * column of rows for axes 1 and 2, W = dim[0]) */
static void cub_item(cub_ctx *c, int64_t it, double *b)
{
    int a = c->axis;
    int64_t n = c->cd[a], nout = c->nd[a], W = a ? c->cd[0] : 1, m = n + 2 * PAD;
    int64_t ib, is, ob, os;
    if (a == 0) {
        ib = it * c->cd[0], is = 1, ob = it * c->nd[0], os = 1;
    } else if (a == 1) {
        ib = it * c->cd[0] * c->cd[1], is = c->cd[0], ob = it * c->nd[0] * c->nd[1], os = c->nd[0];
    } else {
        ib = it * c->cd[0], is = c->cd[0] * c->cd[1], ob = it * c->nd[0], os = c->nd[0] * c->nd[1];
    }
    for (int64_t i = 0; i < m; i++) {   /* np.pad(mode='edge') */
        int64_t k = i < PAD ? 0 : i - PAD >= n ? n - 1 : i - PAD;
        const float *s = c->src + ib + k * is;
        for (int64_t x = 0; x < W; x++)
            b[i * W + x] = s[x];
    }
    bspline3(b, m, W);
    for (int64_t o = 0; o < nout; o++) {
        const double *p = b + c->tab.first[o] * W, *w = c->tab.w[o];
        float *d = c->dst + ob + o * os;
        for (int64_t x = 0; x < W; x++)
            d[x] = (float)(w[0] * p[x] + w[1] * p[W + x] + w[2] * p[2 * W + x] + w[3] * p[3 * W + x]);
    }
}

static void cub_items(void *vc, int64_t b, int64_t e, int w)
{
    cub_ctx *c = vc;
    for (int64_t it = b; it < e; it++)
        cub_item(c, it, c->buf[w]);
}

/* One axis's pass, src (dims cd) to dst (cd with axis a at nout) */
static sp_status cubic_axis(const float *src, const int64_t cd[3], int a, int64_t nout, float *dst, sp_pool *pool)
{
    cub_ctx c = {.src = src, .dst = dst, .axis = a};
    memcpy(c.cd, cd, sizeof c.cd);
    memcpy(c.nd, cd, sizeof c.nd);
    c.nd[a] = nout;
    int nw = sp_pool_size(pool), ok = make_tab(cd[a], nout, &c.tab) == 0;
    int64_t W = a ? cd[0] : 1, items = a == 0 ? cd[1] * cd[2] : a == 1 ? cd[2] : cd[1];
    ok = ok && (c.buf = calloc((size_t)nw, sizeof *c.buf));
    for (int i = 0; ok && i < nw; i++)
        ok = (c.buf[i] = malloc((size_t)((cd[a] + 2 * PAD) * W) * sizeof **c.buf)) != NULL;
    if (ok)
        sp_pool_for(pool, items, a ? 1 : 64, cub_items, &c);
    for (int i = 0; c.buf && i < nw; i++)
        free(c.buf[i]);
    free(c.buf);
    free(c.tab.first);
    free(c.tab.w);
    return ok ? SP_OK : sp_fail(SP_ERR_NOMEM, "resample: cannot allocate the spline's line buffers");
}

/* Step 3: the cubic zoom along every axis in axes (1 each), cur (dims d)
 * to *out (dims d with those axes at want); cur is freed when owned */
static sp_status cubic_zoom(float *cur, int owned, int64_t d[3], const int64_t want[3], const int axes[3],
                            float **out, sp_pool *pool)
{
    sp_status st = SP_OK;
    for (int a = 0; a < 3 && !st; a++) {
        if (!axes[a] || d[a] == want[a])
            continue;
        int64_t nd[3] = {d[0], d[1], d[2]};
        nd[a] = want[a];
        float *next = sp_big_alloc((size_t)(nd[0] * nd[1] * nd[2]) * sizeof *next);
        st = next ? cubic_axis(cur, d, a, want[a], next, pool)
                  : sp_fail(SP_ERR_NOMEM, "resample: cannot allocate %lld voxels", (long long)(nd[0] * nd[1] * nd[2]));
        if (owned)
            free(cur);
        cur = next, owned = 1;
        memcpy(d, nd, sizeof nd);
    }
    if (st) {
        free(owned ? cur : NULL);
        return st;
    }
    *out = cur;
    return SP_OK;
}

/* Step 4: values clipped to [lo, hi] of the input, over the whole volume
 * (sa < 0) or slice by slice across axis sa (each slice its own range) */
static sp_status clip_ranges(const float *in, const int64_t id[3], float *v, const int64_t vd[3], int sa)
{
    int64_t ns = sa < 0 ? 1 : id[sa];
    float *lo = malloc((size_t)ns * sizeof *lo), *hi = malloc((size_t)ns * sizeof *hi);
    if (!lo || !hi) {
        free(lo);
        free(hi);
        return sp_fail(SP_ERR_NOMEM, "resample: cannot allocate %lld slice ranges", (long long)ns);
    }
    for (int64_t s = 0; s < ns; s++)
        lo[s] = INFINITY, hi[s] = -INFINITY;
    for (int pass = 0; pass < 2; pass++) {   /* 0: the input's ranges, 1: the output clipped */
        const int64_t *d = pass ? vd : id;
        size_t i = 0;
        for (int64_t z = 0; z < d[2]; z++)
            for (int64_t y = 0; y < d[1]; y++)
                for (int64_t x = 0; x < d[0]; x++, i++) {
                    int64_t s = sa == 0 ? x : sa == 1 ? y : sa == 2 ? z : 0;
                    if (!pass) {
                        lo[s] = in[i] < lo[s] ? in[i] : lo[s];
                        hi[s] = in[i] > hi[s] ? in[i] : hi[s];
                    } else {
                        v[i] = v[i] < lo[s] ? lo[s] : v[i] > hi[s] ? hi[s] : v[i];
                    }
                }
    }
    free(lo);
    free(hi);
    return SP_OK;
}

/* nnU-Net's get_do_separate_z + get_lowres_axis: the one coarsest axis of
 * an anisotropic spacing (the input's first, then the target's), or -1 */
static int lowres_axis(const double in_sp[3], const double out_sp[3])
{
    for (int k = 0; k < 2; k++) {
        const double *s = k ? out_sp : in_sp;
        double mx = fmax(s[0], fmax(s[1], s[2])), mn = fmin(s[0], fmin(s[1], s[2]));
        if (mx / mn <= ANISO)
            continue;
        int n = 0, ax = -1;
        for (int a = 0; a < 3; a++)
            if (mx / s[a] == 1.0)
                n++, ax = a;
        return n == 1 ? ax : -1;
    }
    return -1;
}

/* Step 5: nearest neighbour along axis a at pixel centres */
static void nearest_axis(const float *src, const int64_t d[3], int a, int64_t nout, float *dst)
{
    int64_t nd[3] = {d[0], d[1], d[2]}, st[3] = {1, d[0], d[0] * d[1]};
    nd[a] = nout;
    double scale = (double)d[a] / (double)nout;
    for (int64_t z = 0; z < nd[2]; z++)
        for (int64_t y = 0; y < nd[1]; y++)
            for (int64_t x = 0; x < nd[0]; x++) {
                int64_t q[3] = {x, y, z};
                int64_t k = (int64_t)floor(scale * ((double)q[a] + 0.5) - 0.5 + 0.5);
                q[a] = k < 0 ? 0 : k >= d[a] ? d[a] - 1 : k;
                *dst++ = src[q[0] * st[0] + q[1] * st[1] + q[2] * st[2]];
            }
}

sp_status sp_resample_nnunet(const float *src, const int64_t in[3], const double in_sp[3], const double out_sp[3],
                             float *dst, const int64_t out[3], sp_pool *pool)
{
    size_t nout = (size_t)(out[0] * out[1] * out[2]);
    if (in[0] == out[0] && in[1] == out[1] && in[2] == out[2]) {   /* nnU-Net leaves the data as it is */
        memcpy(dst, src, nout * sizeof *dst);
        return SP_OK;
    }
    int sa = lowres_axis(in_sp, out_sp), axes[3] = {sa != 0, sa != 1, sa != 2};
    int64_t d[3] = {in[0], in[1], in[2]};
    float *v = NULL;
    sp_status st = cubic_zoom((float *)src, 0, d, out, axes, &v, pool);
    if (st)
        return st;
    if (v == src) {   /* only the low-resolution axis changes size: no spline pass ran */
        if (!(v = sp_big_alloc((size_t)(d[0] * d[1] * d[2]) * sizeof *v)))
            return sp_fail(SP_ERR_NOMEM, "resample: cannot allocate %zu voxels", (size_t)(d[0] * d[1] * d[2]));
        memcpy(v, src, (size_t)(d[0] * d[1] * d[2]) * sizeof *v);
    } else if ((st = clip_ranges(src, in, v, d, sa))) {
        free(v);
        return st;
    }
    if (sa >= 0 && d[sa] != out[sa])
        nearest_axis(v, d, sa, out[sa], dst);
    else
        memcpy(dst, v, nout * sizeof *dst);
    free(v);
    return SP_OK;
}
