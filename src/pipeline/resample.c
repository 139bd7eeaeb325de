/*
 * resample.c — resampling equal to scipy.ndimage.zoom with grid_mode=False
 * (corner voxels aligned): output index o maps to input coordinate
 * o * (n_in - 1) / (n_out - 1), computed in double as scipy does.
 *
 * Linear (order 1): separable weights from per-axis tables, each output
 * voxel from its 8 neighbours, coordinates clamped ('nearest' mode).
 * Nearest (order 0): index floor(x + 0.5), clamped, again per-axis tables,
 * so labels back to the native grid cost one gather per voxel.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>

int64_t sp_zoom_size(int64_t n, double zoom)
{
    double v = nearbyint((double)n * zoom);   /* Python round(): half to even */
    return v < 1 ? 1 : (int64_t)v;
}

static double axis_zoom(int64_t in, int64_t out)
{
    return out > 1 ? (double)(in - 1) / (double)(out - 1) : 1.0;
}

typedef struct lin_tab {
    int64_t *i0, *i1;
    float *w;
} lin_tab;

static int make_lin(int64_t in, int64_t out, lin_tab *t)
{
    t->i0 = malloc((size_t)out * sizeof *t->i0);
    t->i1 = malloc((size_t)out * sizeof *t->i1);
    t->w = malloc((size_t)out * sizeof *t->w);
    if (!t->i0 || !t->i1 || !t->w)
        return -1;
    double z = axis_zoom(in, out);
    for (int64_t o = 0; o < out; o++) {
        double x = (double)o * z;
        if (x > (double)(in - 1))
            x = (double)(in - 1);
        if (x < 0)
            x = 0;
        int64_t f = (int64_t)floor(x);
        t->i0[o] = f;
        t->i1[o] = f + 1 < in ? f + 1 : in - 1;
        t->w[o] = (float)(x - (double)f);
    }
    return 0;
}

static void free_lin(lin_tab *t)
{
    free(t->i0);
    free(t->i1);
    free(t->w);
}

typedef struct lin_ctx {
    const float *src;
    float *dst;
    int64_t in[3], out[3];
    lin_tab t[3];
} lin_ctx;

static void lin_rows(void *vc, int64_t b, int64_t e, int w)
{
    lin_ctx *c = vc;
    int64_t sx = 1, sy = c->in[0], sz = c->in[0] * c->in[1];
    for (int64_t row = b; row < e; row++) {
        int64_t y = row % c->out[1], z = row / c->out[1];
        float wy = c->t[1].w[y], wz = c->t[2].w[z];
        const float *p00 = c->src + c->t[2].i0[z] * sz + c->t[1].i0[y] * sy;
        const float *p01 = c->src + c->t[2].i0[z] * sz + c->t[1].i1[y] * sy;
        const float *p10 = c->src + c->t[2].i1[z] * sz + c->t[1].i0[y] * sy;
        const float *p11 = c->src + c->t[2].i1[z] * sz + c->t[1].i1[y] * sy;
        float *d = c->dst + row * c->out[0];
        for (int64_t x = 0; x < c->out[0]; x++) {
            int64_t a = c->t[0].i0[x] * sx, bb = c->t[0].i1[x] * sx;
            float wx = c->t[0].w[x];
            float v00 = p00[a] + wx * (p00[bb] - p00[a]);
            float v01 = p01[a] + wx * (p01[bb] - p01[a]);
            float v10 = p10[a] + wx * (p10[bb] - p10[a]);
            float v11 = p11[a] + wx * (p11[bb] - p11[a]);
            float v0 = v00 + wy * (v01 - v00);
            float v1 = v10 + wy * (v11 - v10);
            d[x] = v0 + wz * (v1 - v0);
        }
    }
}

void sp_resample_linear(const float *src, const int64_t in[3], float *dst,
                        const int64_t out[3], sp_pool *pool)
{
    lin_ctx c = {.src = src, .dst = dst};
    int ok = 1;
    for (int a = 0; a < 3; a++) {
        c.in[a] = in[a];
        c.out[a] = out[a];
    }
    for (int a = 0; a < 3; a++)
        ok &= make_lin(in[a], out[a], &c.t[a]) == 0;
    if (ok)
        sp_pool_for(pool, out[1] * out[2], 8, lin_rows, &c);
    for (int a = 0; a < 3; a++)
        free_lin(&c.t[a]);
}

typedef struct nn_ctx {
    const void *src;
    void *dst;
    size_t es;               /* element size: 2 (labels) or 4 (float) */
    int64_t in[3], out[3];
    int64_t *ix[3];
} nn_ctx;

static void nn_rows(void *vc, int64_t b, int64_t e, int w)
{
    nn_ctx *c = vc;
    const int64_t *ix = c->ix[0];
    for (int64_t row = b; row < e; row++) {
        int64_t y = row % c->out[1], z = row / c->out[1];
        int64_t so = c->ix[2][z] * c->in[0] * c->in[1] + c->ix[1][y] * c->in[0];
        if (c->es == 2) {
            const uint16_t *s = (const uint16_t *)c->src + so;
            uint16_t *d = (uint16_t *)c->dst + row * c->out[0];
            for (int64_t x = 0; x < c->out[0]; x++)
                d[x] = s[ix[x]];
        } else {
            const float *s = (const float *)c->src + so;
            float *d = (float *)c->dst + row * c->out[0];
            for (int64_t x = 0; x < c->out[0]; x++)
                d[x] = s[ix[x]];
        }
    }
}

static void resample_nearest(const void *src, const int64_t in[3], void *dst, const int64_t out[3],
                             size_t es, sp_pool *pool)
{
    nn_ctx c = {.src = src, .dst = dst, .es = es};
    int ok = 1;
    for (int a = 0; a < 3; a++) {
        c.in[a] = in[a];
        c.out[a] = out[a];
        c.ix[a] = malloc((size_t)out[a] * sizeof(int64_t));
        ok &= c.ix[a] != NULL;
    }
    for (int a = 0; ok && a < 3; a++) {
        double z = axis_zoom(in[a], out[a]);
        for (int64_t o = 0; o < out[a]; o++) {
            int64_t k = (int64_t)floor((double)o * z + 0.5);
            c.ix[a][o] = k < 0 ? 0 : k >= in[a] ? in[a] - 1 : k;
        }
    }
    if (ok)
        sp_pool_for(pool, out[1] * out[2], 64, nn_rows, &c);
    for (int a = 0; a < 3; a++)
        free(c.ix[a]);
}

void sp_resample_nearest_u16(const uint16_t *src, const int64_t in[3], uint16_t *dst,
                             const int64_t out[3], sp_pool *pool)
{
    resample_nearest(src, in, dst, out, 2, pool);
}

void sp_resample_nearest_f32(const float *src, const int64_t in[3], float *dst,
                             const int64_t out[3], sp_pool *pool)
{
    resample_nearest(src, in, dst, out, 4, pool);
}

/* Labels back to the native grid in one gather: nearest resampling to the
 * canonical grid and the inverse reorientation composed per native axis
 * (each native axis is one canonical axis, maybe flipped), so no canonical
 * copy is made. tab[i][x]: model offset of native index x along axis i. */
typedef struct native_ctx {
    const uint16_t *src;
    uint16_t *dst;
    int64_t n[3];
    int64_t *tab[3];
} native_ctx;

static void native_rows(void *vc, int64_t b, int64_t e, int w)
{
    native_ctx *c = vc;
    (void)w;
    const int64_t *t0 = c->tab[0];
    for (int64_t row = b; row < e; row++) {
        int64_t y = row % c->n[1], z = row / c->n[1];
        const uint16_t *s = c->src + c->tab[1][y] + c->tab[2][z];
        uint16_t *d = c->dst + row * c->n[0];
        for (int64_t x = 0; x < c->n[0]; x++)
            d[x] = s[t0[x]];
    }
}

sp_status sp_labels_to_native(const uint16_t *lab_m, const int64_t mdim[3], const sp_ornt *o,
                              const int64_t ndim[3], uint16_t *dst, sp_pool *pool)
{
    native_ctx c = {.src = lab_m, .dst = dst};
    int64_t mst[3] = {1, mdim[0], mdim[0] * mdim[1]};
    sp_status st = SP_OK;
    for (int i = 0; i < 3; i++)
        c.n[i] = ndim[i];
    for (int j = 0; j < 3; j++) {   /* canonical axis j = native axis o->ax[j] */
        int i = o->ax[j];
        int64_t cn = ndim[i];
        double z = axis_zoom(mdim[j], cn);
        if (!(c.tab[i] = malloc((size_t)cn * sizeof(int64_t)))) {
            st = sp_fail(SP_ERR_NOMEM, "labels back: out of memory");
            break;
        }
        for (int64_t x = 0; x < cn; x++) {
            int64_t cc = o->fl[j] ? cn - 1 - x : x;
            int64_t k = (int64_t)floor((double)cc * z + 0.5);
            k = k < 0 ? 0 : k >= mdim[j] ? mdim[j] - 1 : k;
            c.tab[i][x] = k * mst[j];
        }
    }
    if (!st)
        sp_pool_for(pool, c.n[1] * c.n[2], 64, native_rows, &c);
    for (int i = 0; i < 3; i++)
        free(c.tab[i]);
    return st;
}

typedef struct smooth_ctx {
    const float *logits;
    const uint16_t *lab;
    int C;
    int64_t m[3], o[3];
    uint16_t *dst;
    lin_tab t[3];
} smooth_ctx;

static void smooth_rows(void *vc, int64_t b, int64_t e, int w)
{
    smooth_ctx *c = vc;
    size_t nm = (size_t)(c->m[0] * c->m[1] * c->m[2]);
    for (int64_t row = b; row < e; row++) {
        int64_t y = row % c->o[1], z = row / c->o[1];
        float wy = c->t[1].w[y], wz = c->t[2].w[z];
        int64_t ys[2] = {c->t[1].i0[y], c->t[1].i1[y]}, zs[2] = {c->t[2].i0[z], c->t[2].i1[z]};
        uint16_t *d = c->dst + row * c->o[0];
        for (int64_t x = 0; x < c->o[0]; x++) {
            int64_t xs[2] = {c->t[0].i0[x], c->t[0].i1[x]};
            float wx = c->t[0].w[x];
            size_t idx[8];
            float wt[8];
            uint16_t cand[8];
            int nc = 0;
            for (int k = 0; k < 8; k++) {
                int a = k & 1, bb = (k >> 1) & 1, cc = k >> 2;
                idx[k] = (size_t)((zs[cc] * c->m[1] + ys[bb]) * c->m[0] + xs[a]);
                wt[k] = (a ? wx : 1 - wx) * (bb ? wy : 1 - wy) * (cc ? wz : 1 - wz);
                uint16_t l = c->lab[idx[k]];
                int seen = 0;
                for (int q = 0; q < nc; q++)
                    seen |= cand[q] == l;
                if (!seen)
                    cand[nc++] = l;
            }
            if (nc == 1) {
                d[x] = cand[0];
                continue;
            }
            float best = -INFINITY;
            uint16_t bl = cand[0];
            for (int q = 0; q < nc; q++) {
                const float *L = c->logits + (size_t)cand[q] * nm;
                float v = 0;
                for (int k = 0; k < 8; k++)
                    v += wt[k] * L[idx[k]];
                if (v > best || (v == best && cand[q] < bl))
                    best = v, bl = cand[q];
            }
            d[x] = bl;
        }
    }
}

void sp_smooth_labels(const float *logits, const uint16_t *lab_m, int C, const int64_t mdim[3],
                      uint16_t *dst, const int64_t odim[3], sp_pool *pool)
{
    smooth_ctx c = {.logits = logits, .lab = lab_m, .C = C, .dst = dst};
    int ok = 1;
    for (int a = 0; a < 3; a++) {
        c.m[a] = mdim[a];
        c.o[a] = odim[a];
        ok &= make_lin(mdim[a], odim[a], &c.t[a]) == 0;
    }
    if (ok)
        sp_pool_for(pool, odim[1] * odim[2], 4, smooth_rows, &c);
    for (int a = 0; a < 3; a++)
        free_lin(&c.t[a]);
}
