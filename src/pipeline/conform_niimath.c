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
#include <string.h>

typedef struct nm_ctx {
    const float *src;
    int64_t sd[3], od[3];
    float m[3][4];            /* output voxel -> input voxel */
    float smin, scale, fill;
    float *dst;
} nm_ctx;

/* niimath's getscale: the robust source range (f_low 0). */
static void get_scale(const float *x, int64_t n, double f_high, float *smin, float *scale)
{
    float lo = x[0], hi = x[0];
    int64_t nz = 0, neg = 0;
    for (int64_t i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
        nz += fabsf(x[i]) >= 1e-15f;
        neg += x[i] < 0;
    }
    if (lo < 0 && 100.0 * (double)neg / (double)n < 2.0)
        lo = 0;
    *smin = lo;
    *scale = 1;
    if (f_high >= 1.0 || !(hi > lo))   /* a constant volume: no histogram (niimath would divide by 0) */
        return;
    enum { NB = 1000 };
    int64_t cs[NB] = {0};
    float bin = (hi - lo) / NB;
    for (int64_t i = 0; i < n; i++) {
        int b = (int)((x[i] - lo) / bin);
        b = b > NB - 1 ? NB - 1 : b < 0 ? 0 : b;
        cs[b]++;
    }
    for (int b = 1; b < NB; b++)
        cs[b] += cs[b - 1];
    int64_t nth = n - (int64_t)((1.0 - (double)(float)f_high) * (double)nz);
    int idx = 0;
    while (idx < NB - 1 && cs[idx + 1] < nth)
        idx++;
    float smax = (float)idx * bin + lo;
    if (lo != smax)
        *scale = 255.0f / (smax - lo);
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
    int64_t n = dim[0] * dim[1] * dim[2];
    get_scale(src, n, f_high, &c.smin, &c.scale);
    float mn = src[0];
    for (int64_t i = 1; i < n; i++)
        mn = fminf(mn, src[i]);
    c.fill = sc(&c, mn);
    sp_pool_for(pool, c.od[1] * c.od[2], 4, nm_rows, &c);
    return SP_OK;
}
