/*
 * conform.c — FreeSurfer-style conforming for brain MRI models (manifest
 * "conform", docs/model-format.md): the volume resampled onto an N^3 grid
 * of s mm voxels in LIA orientation, as nibabel.processing.conform does it
 * (the reference the tests compare against):
 *  - the input's closest orientation is turned into LIA (no resampling);
 *  - the output affine keeps those axis directions with s mm voxels, and
 *    maps output voxel (N-1)//2 to the world position of the reoriented
 *    input's voxel (shape-1)//2 (nibabel.affines.rescale_affine);
 *  - values: trilinear interpolation of the original data at each output
 *    voxel's position, 0 outside [0, n-1] on any axis (scipy.ndimage's
 *    affine_transform, order 1, mode "constant").
 * Labels go back to the input grid by nearest neighbour (floor(q + 0.5)).
 */
#include "pipeline.h"

#include <math.h>
#include <string.h>

static void matmul(const double a[4][4], const double b[4][4], double out[4][4])
{
    double t[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            t[r][c] = 0;
            for (int k = 0; k < 4; k++)
                t[r][c] += a[r][k] * b[k][c];
        }
    memcpy(out, t, sizeof t);
}

/* inverse of an affine [R t; 0 1] (R 3x3 by cofactors) */
static int affine_inv(const double a[4][4], double out[4][4])
{
    double det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
                 a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    if (!(fabs(det) > 1e-12))
        return -1;
    double r[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int i1 = (j + 1) % 3, i2 = (j + 2) % 3, j1 = (i + 1) % 3, j2 = (i + 2) % 3;
            r[i][j] = (a[i1][j1] * a[i2][j2] - a[i1][j2] * a[i2][j1]) / det;
        }
    for (int i = 0; i < 3; i++) {
        out[i][3] = 0;
        for (int j = 0; j < 3; j++) {
            out[i][j] = r[i][j];
            out[i][3] -= r[i][j] * a[j][3];
        }
    }
    out[3][0] = out[3][1] = out[3][2] = 0;
    out[3][3] = 1;
    return 0;
}

sp_status sp_conform_affine(const double aff[4][4], const int64_t dim[3], int64_t n, double mm, double out[4][4])
{
    sp_ornt o;
    sp_status st = sp_ornt_to_canonical(aff, &o);
    if (st)
        return st;
    int64_t c[3];
    double ca[4][4];
    sp_ornt_dims(&o, dim, c);
    sp_ornt_affine(&o, dim, aff, ca);   /* RAS+ */
    /* LIA voxel (u, v, w) = canonical voxel (c0-1-u, w, c2-1-v) */
    double P[4][4] = {{-1, 0, 0, (double)(c[0] - 1)}, {0, 0, 1, 0}, {0, -1, 0, (double)(c[2] - 1)}, {0, 0, 0, 1}};
    double lia[4][4];
    matmul(ca, P, lia);
    int64_t shape[3] = {c[0], c[2], c[1]};
    double ctr[3], mid = (double)((n - 1) / 2);
    for (int r = 0; r < 3; r++) {   /* the world centroid of voxel (shape - 1) // 2 */
        ctr[r] = lia[r][3];
        for (int k = 0; k < 3; k++)
            ctr[r] += lia[r][k] * (double)((shape[k] - 1) / 2);
    }
    for (int k = 0; k < 3; k++) {
        double s = sqrt(lia[0][k] * lia[0][k] + lia[1][k] * lia[1][k] + lia[2][k] * lia[2][k]);
        for (int r = 0; r < 3; r++)
            out[r][k] = lia[r][k] * mm / s;
    }
    for (int r = 0; r < 3; r++)
        out[r][3] = ctr[r] - (out[r][0] + out[r][1] + out[r][2]) * mid;
    out[3][0] = out[3][1] = out[3][2] = 0;
    out[3][3] = 1;
    return SP_OK;
}

typedef struct cf_ctx {
    const float *src;
    const uint16_t *lab;
    int64_t sd[3], od[3];
    double m[4][4];           /* destination voxel -> source voxel */
    float *dst;
    uint16_t *ldst;
} cf_ctx;

static float tri(const cf_ctx *c, const double q[3])
{
    int64_t i0[3];
    double f[3];
    for (int a = 0; a < 3; a++) {
        if (!(q[a] >= 0 && q[a] <= (double)(c->sd[a] - 1)))
            return 0.0f;
        i0[a] = (int64_t)q[a];
        f[a] = q[a] - (double)i0[a];
    }
    double v = 0;
    for (int corner = 0; corner < 8; corner++) {
        double w = 1;
        int64_t idx = 0, st = 1;
        for (int a = 0; a < 3; a++) {
            int hi = (corner >> a) & 1;
            int64_t ia = i0[a] + hi < c->sd[a] ? i0[a] + hi : c->sd[a] - 1;
            w *= hi ? f[a] : 1 - f[a];
            idx += ia * st;
            st *= c->sd[a];
        }
        if (w != 0)
            v += w * c->src[idx];
    }
    return (float)v;
}

/* one row (j, k) of the destination */
static void rows(void *vc, int64_t b, int64_t e, int w)
{
    cf_ctx *c = vc;
    for (int64_t job = b; job < e; job++) {
        int64_t j = job % c->od[1], k = job / c->od[1];
        for (int64_t i = 0; i < c->od[0]; i++) {
            double q[3];
            for (int r = 0; r < 3; r++)
                q[r] = c->m[r][0] * (double)i + c->m[r][1] * (double)j + c->m[r][2] * (double)k + c->m[r][3];
            size_t at = (size_t)((k * c->od[1] + j) * c->od[0] + i);
            if (c->dst) {
                c->dst[at] = tri(c, q);
                continue;
            }
            int64_t n[3];
            int in = 1;
            for (int r = 0; r < 3 && in; r++) {
                n[r] = (int64_t)floor(q[r] + 0.5);
                in = n[r] >= 0 && n[r] < c->sd[r];
            }
            c->ldst[at] = in ? c->lab[(n[2] * c->sd[1] + n[1]) * c->sd[0] + n[0]] : 0;
        }
    }
}

sp_status sp_affine_between(const double from[4][4], const double to[4][4], double m[4][4])
{
    double inv[4][4];
    if (affine_inv(from, inv))
        return sp_fail(SP_ERR_INPUT, "conform: singular affine");
    matmul(inv, to, m);
    return SP_OK;
}

/* c->m = inverse(from) @ to, then every destination row */
static sp_status map_rows(cf_ctx *c, const double from[4][4], const double to[4][4], sp_pool *pool)
{
    double inv[4][4];
    if (affine_inv(from, inv))
        return sp_fail(SP_ERR_INPUT, "conform: singular affine");
    matmul(inv, to, c->m);
    sp_pool_for(pool, c->od[1] * c->od[2], 4, rows, c);
    return SP_OK;
}

sp_status sp_conform_volume(const float *src, const int64_t dim[3], const double aff[4][4], const double caff[4][4],
                            const int64_t odim[3], float *dst, sp_pool *pool)
{
    cf_ctx c = {src, NULL, {dim[0], dim[1], dim[2]}, {odim[0], odim[1], odim[2]}, {{0}}, dst, NULL};
    return map_rows(&c, aff, caff, pool);
}

sp_status sp_conform_labels_back(const uint16_t *lab, const int64_t odim[3], const double caff[4][4],
                                 const double aff[4][4], const int64_t dim[3], uint16_t *dst, sp_pool *pool)
{
    cf_ctx c = {NULL, lab, {odim[0], odim[1], odim[2]}, {dim[0], dim[1], dim[2]}, {{0}}, NULL, dst};
    return map_rows(&c, caff, aff, pool);
}
