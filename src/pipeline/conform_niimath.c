/*
 * conform_niimath.c — brainchop's own conform (manifest conform.style
 * "niimath", docs/mri.md): brainchop-cli conforms with `niimath -conform
 * -odt char`, which differs from nibabel's conform (conform.c) in three
 * ways that change the network's input:
 *  - intensities first: the robust range of the input (min, or 0 when fewer
 *    than 2% of voxels are negative, to the top of the 1000-bin histogram
 *    bin where the count reaches all voxels minus (1 - f_high) of the
 *    non-zero ones; f_high 0.98) is scaled to 0..255 and clipped;
 *  - geometry: LIA axes with voxel n/2 at the world position of input voxel
 *    dim/2 (not (n-1)//2 and (dim-1)//2), any input rotation resampled;
 *  - trilinear interpolation in float32, voxels whose 2x2x2 neighbourhood
 *    leaves the input keep the scaled input's minimum; then rounded (half
 *    away from zero) to uint8.
 * Facts read from niimath's src/conform.c and core.c (rordenlab/niimath).
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct nm_ctx {
    const float *src;
    int64_t sd[3], od[3];
    float m[3][4];            /* output voxel -> input voxel */
    float smin, scale, fill;
    float *dst;
} nm_ctx;

/* get_scale's passes, split over the pool: per worker the range, the counts
 * of non-zero and negative voxels, then the histogram; merged in order (min,
 * max and integer counts: the same result as one serial pass). */
enum { NB = 1000 };
typedef struct gs_ctx {
    const float *x;
    float lo, bin;
    float *wlo, *whi;
    int64_t *wnz, *wneg;
    int64_t (*hist)[NB];
} gs_ctx;

static void gs_range(void *vc, int64_t b, int64_t e, int w)
{
    gs_ctx *c = vc;
    float lo = c->wlo[w], hi = c->whi[w];
    int64_t nz = 0, neg = 0;
    for (int64_t i = b; i < e; i++) {
        lo = fminf(lo, c->x[i]);
        hi = fmaxf(hi, c->x[i]);
        nz += fabsf(c->x[i]) >= 1e-15f;
        neg += c->x[i] < 0;
    }
    c->wlo[w] = lo, c->whi[w] = hi;
    c->wnz[w] += nz, c->wneg[w] += neg;
}

static void gs_hist(void *vc, int64_t b, int64_t e, int w)
{
    gs_ctx *c = vc;
    int64_t *cs = c->hist[w];
    for (int64_t i = b; i < e; i++) {
        int k = (int)((c->x[i] - c->lo) / c->bin);
        k = k > NB - 1 ? NB - 1 : k < 0 ? 0 : k;
        cs[k]++;
    }
}

/* niimath's getscale: the robust source range (f_low 0); *mn the minimum. */
static sp_status get_scale(const float *x, int64_t n, double f_high, float *smin, float *scale, float *mn,
                           sp_pool *pool)
{
    int nw = sp_pool_size(pool);
    gs_ctx c = {.x = x, .wlo = malloc((size_t)nw * sizeof(float)), .whi = malloc((size_t)nw * sizeof(float)),
                .wnz = calloc((size_t)nw, sizeof(int64_t)), .wneg = calloc((size_t)nw, sizeof(int64_t)),
                .hist = calloc((size_t)nw, sizeof *c.hist)};
    sp_status st = c.wlo && c.whi && c.wnz && c.wneg && c.hist ? SP_OK
                                                               : sp_fail(SP_ERR_NOMEM, "conform: histogram");
    float lo = x[0], hi = x[0];
    int64_t nz = 0, neg = 0;
    for (int w = 0; !st && w < nw; w++)
        c.wlo[w] = c.whi[w] = x[0];
    if (!st)
        sp_pool_for(pool, n, 1 << 16, gs_range, &c);
    for (int w = 0; !st && w < nw; w++) {
        lo = fminf(lo, c.wlo[w]), hi = fmaxf(hi, c.whi[w]);
        nz += c.wnz[w], neg += c.wneg[w];
    }
    *mn = lo;
    if (lo < 0 && 100.0 * (double)neg / (double)n < 2.0)
        lo = 0;
    *smin = lo;
    *scale = 1;
    if (!st && f_high < 1.0 && hi > lo) {   /* a constant volume: no histogram (niimath would divide by 0) */
        c.lo = lo;
        c.bin = (hi - lo) / NB;
        sp_pool_for(pool, n, 1 << 16, gs_hist, &c);
        int64_t cs[NB] = {0};
        for (int w = 0; w < nw; w++)
            for (int b = 0; b < NB; b++)
                cs[b] += c.hist[w][b];
        for (int b = 1; b < NB; b++)
            cs[b] += cs[b - 1];
        int64_t nth = n - (int64_t)((1.0 - (double)(float)f_high) * (double)nz);
        int idx = 0;
        while (idx < NB - 1 && cs[idx + 1] < nth)
            idx++;
        float smax = (float)idx * c.bin + lo;
        if (lo != smax)
            *scale = 255.0f / (smax - lo);
    }
    free(c.wlo), free(c.whi), free(c.wnz), free(c.wneg), free(c.hist);
    return st;
}

static inline float sc(const nm_ctx *c, float v)
{
    v = c->scale * (v - c->smin);
    return fminf(fmaxf(v, 0.0f), 255.0f);
}

static void nm_rows(void *vc, int64_t b, int64_t e, int w)
{
    (void)w;
    const nm_ctx *c = vc;
    int64_t dx = c->sd[0], dxy = c->sd[0] * c->sd[1];
    for (int64_t job = b; job < e; job++) {
        int64_t y = job % c->od[1], z = job / c->od[1];
        float bx = (float)y * c->m[0][1] + (float)z * c->m[0][2] + c->m[0][3];
        float by = (float)y * c->m[1][1] + (float)z * c->m[1][2] + c->m[1][3];
        float bz = (float)y * c->m[2][1] + (float)z * c->m[2][2] + c->m[2][3];
        float *out = c->dst + (size_t)(z * c->od[1] + y) * (size_t)c->od[0];
        for (int64_t x = 0; x < c->od[0]; x++) {
            float ix = (float)x * c->m[0][0] + bx, iy = (float)x * c->m[1][0] + by, iz = (float)x * c->m[2][0] + bz;
            int64_t fx = (int64_t)floorf(ix), fy = (int64_t)floorf(iy), fz = (int64_t)floorf(iz);
            float v = c->fill;
            if (fx >= 0 && fy >= 0 && fz >= 0 && fx + 1 < c->sd[0] && fy + 1 < c->sd[1] && fz + 1 < c->sd[2]) {
                float ddx = ix - (float)fx, ddy = iy - (float)fy, ddz = iz - (float)fz;
                float wx0 = 1.0f - ddx, wy0 = 1.0f - ddy, wz0 = 1.0f - ddz;
                const float *p = c->src + fx + fy * dx + fz * dxy;
                v = 0.0f;
                v += sc(c, p[0]) * wx0 * wy0 * wz0;
                v += sc(c, p[dxy]) * wx0 * wy0 * ddz;
                v += sc(c, p[dx]) * wx0 * ddy * wz0;
                v += sc(c, p[dx + dxy]) * wx0 * ddy * ddz;
                v += sc(c, p[1]) * ddx * wy0 * wz0;
                v += sc(c, p[1 + dxy]) * ddx * wy0 * ddz;
                v += sc(c, p[1 + dx]) * ddx * ddy * wz0;
                v += sc(c, p[1 + dx + dxy]) * ddx * ddy * ddz;
            }
            v = roundf(v);
            out[x] = v < 0 ? 0.0f : v > 255 ? 255.0f : v;
        }
    }
}

sp_status sp_conform_niimath_affine(const double aff[4][4], const int64_t dim[3], int64_t n, double mm,
                                    double out[4][4])
{
    static const double R[3][3] = {{-1, 0, 0}, {0, 0, 1}, {0, -1, 0}};   /* LIA */
    memset(out, 0, 16 * sizeof(double));
    for (int r = 0; r < 3; r++) {
        double pc = aff[r][3], vc = 0;
        for (int k = 0; k < 3; k++) {
            pc += aff[r][k] * ((double)dim[k] / 2.0);
            out[r][k] = R[r][k] * mm;
            vc += out[r][k] * (double)n;
        }
        out[r][3] = pc - 0.5 * vc;
    }
    out[3][3] = 1;
    return SP_OK;
}

sp_status sp_conform_niimath_volume(const float *src, const int64_t dim[3], const double aff[4][4],
                                    const double caff[4][4], const int64_t odim[3], double f_high, float *dst,
                                    sp_pool *pool)
{
    nm_ctx c = {.src = src, .sd = {dim[0], dim[1], dim[2]}, .od = {odim[0], odim[1], odim[2]}, .dst = dst};
    double m[4][4];
    sp_status st = sp_affine_between(aff, caff, m);   /* output voxel -> input voxel */
    if (st)
        return st;
    for (int r = 0; r < 3; r++)
        for (int k = 0; k < 4; k++)
            c.m[r][k] = (float)m[r][k];
    float mn;
    if ((st = get_scale(src, dim[0] * dim[1] * dim[2], f_high, &c.smin, &c.scale, &mn, pool)))
        return st;
    c.fill = sc(&c, mn);
    sp_pool_for(pool, c.od[1] * c.od[2], 4, nm_rows, &c);
    return SP_OK;
}
