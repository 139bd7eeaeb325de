/*
 * reorient.c — reorientation to the closest canonical orientation (RAS+)
 * and its exact undo, as nibabel's as_closest_canonical does it.
 *
 * io_orientation: normalise the affine's columns, take the closest
 * orthogonal matrix (polar decomposition, here by Newton iteration
 * R <- (R + R^-T) / 2, which converges to the SVD's P*Q^T), then for each
 * voxel axis in turn pick the world axis with the largest |component| not
 * yet taken. The data move is one strided copy on all cores.
 */
#include "pipeline.h"

#include <math.h>
#include <string.h>

static int inv3(const double m[3][3], double o[3][3])
{
    double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
                 m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                 m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if (fabs(det) < 1e-300)
        return -1;
    double id = 1.0 / det;
    o[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) * id;
    o[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) * id;
    o[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) * id;
    o[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) * id;
    o[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) * id;
    o[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) * id;
    o[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) * id;
    o[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) * id;
    o[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) * id;
    return 0;
}

sp_status sp_ornt_to_canonical(const double A[4][4], sp_ornt *o)
{
    double R[3][3], inv[3][3];
    for (int c = 0; c < 3; c++) {
        double n = sqrt(A[0][c] * A[0][c] + A[1][c] * A[1][c] + A[2][c] * A[2][c]);
        if (n == 0)
            n = 1;
        for (int r = 0; r < 3; r++)
            R[r][c] = A[r][c] / n;
    }
    for (int it = 0; it < 100; it++) {
        if (inv3(R, inv) != 0)
            return sp_fail(SP_ERR_INPUT, "the affine is singular: cannot determine orientation");
        double d = 0;
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++) {
                double nv = 0.5 * (R[r][c] + inv[c][r]);
                d += fabs(nv - R[r][c]);
                R[r][c] = nv;
            }
        if (d < 1e-15)
            break;
    }
    int taken[3] = {0, 0, 0};
    for (int in = 0; in < 3; in++) {
        int best = -1;
        double bv = -1;
        for (int r = 0; r < 3; r++)   /* first maximum, like np.argmax */
            if (!taken[r] && fabs(R[r][in]) > bv)
                bv = fabs(R[r][in]), best = r;
        if (best < 0 || bv == 0)
            return sp_fail(SP_ERR_INPUT, "the affine is degenerate: cannot determine orientation");
        taken[best] = 1;
        o->ax[best] = in;
        o->fl[best] = R[best][in] < 0;
    }
    return SP_OK;
}

int sp_ornt_is_identity(const sp_ornt *o)
{
    for (int j = 0; j < 3; j++)
        if (o->ax[j] != j || o->fl[j])
            return 0;
    return 1;
}

sp_ornt sp_ornt_inverse(const sp_ornt *o)
{
    sp_ornt r;
    for (int j = 0; j < 3; j++) {
        r.ax[o->ax[j]] = j;
        r.fl[o->ax[j]] = o->fl[j];
    }
    return r;
}

void sp_ornt_dims(const sp_ornt *o, const int64_t in[3], int64_t out[3])
{
    for (int j = 0; j < 3; j++)
        out[j] = in[o->ax[j]];
}

void sp_ornt_affine(const sp_ornt *o, const int64_t in_dim[3], const double A[4][4],
                    double out[4][4])
{
    double M[4][4];
    memset(M, 0, sizeof M);
    M[3][3] = 1;
    for (int j = 0; j < 3; j++) {
        int i = o->ax[j];
        M[i][j] = o->fl[j] ? -1 : 1;
        if (o->fl[j])
            M[i][3] = (double)(in_dim[i] - 1);
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            double s = 0;
            for (int k = 0; k < 4; k++)
                s += A[r][k] * M[k][c];
            out[r][c] = s;
        }
}

typedef struct ornt_ctx {
    const uint8_t *src;
    uint8_t *dst;
    int64_t odim[3];
    int64_t base, sst[3];   /* source offset and strides (elements) per output axis */
    size_t es;
} ornt_ctx;

static void ornt_rows(void *vc, int64_t b, int64_t e, int w)
{
    ornt_ctx *c = vc;
    for (int64_t row = b; row < e; row++) {   /* row = z * odim[1] + y */
        int64_t y = row % c->odim[1], z = row / c->odim[1];
        int64_t so = c->base + y * c->sst[1] + z * c->sst[2];
        int64_t n = c->odim[0], s0 = c->sst[0];
        size_t dofs = (size_t)row * (size_t)n;
        switch (c->es) {
        case 1: {
            uint8_t *d = c->dst + dofs;
            for (int64_t x = 0; x < n; x++) d[x] = c->src[so + x * s0];
            break;
        }
        case 2: {
            uint16_t *d = (uint16_t *)c->dst + dofs;
            const uint16_t *s = (const uint16_t *)c->src;
            for (int64_t x = 0; x < n; x++) d[x] = s[so + x * s0];
            break;
        }
        default: {
            float *d = (float *)c->dst + dofs;
            const float *s = (const float *)c->src;
            for (int64_t x = 0; x < n; x++) d[x] = s[so + x * s0];
            break;
        }
        }
    }
}

void sp_ornt_apply(const sp_ornt *o, const void *src, const int64_t in_dim[3], void *dst,
                   size_t es, sp_pool *pool)
{
    ornt_ctx c;
    int64_t ist[3] = {1, in_dim[0], in_dim[0] * in_dim[1]};
    c.src = src;
    c.dst = dst;
    c.es = es;
    c.base = 0;
    sp_ornt_dims(o, in_dim, c.odim);
    for (int j = 0; j < 3; j++) {
        int i = o->ax[j];
        c.sst[j] = o->fl[j] ? -ist[i] : ist[i];
        if (o->fl[j])
            c.base += (in_dim[i] - 1) * ist[i];
    }
    sp_pool_for(pool, c.odim[1] * c.odim[2], 16, ornt_rows, &c);
}
