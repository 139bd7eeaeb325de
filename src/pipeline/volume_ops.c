/*
 * volume_ops.c — whole-volume operations used to make benchmark inputs and
 * by the CLI's `resample`: resampling with a new affine, centred padding,
 * writing intensity volumes.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Geometry with a new affine: written as sform (and no qform). */
static void geom_with_affine(sp_geom *g, const double A[4][4], const int64_t dim[3])
{
    memcpy(g->affine, A, sizeof g->affine);
    for (int i = 0; i < 3; i++) {
        g->dim[i] = dim[i];
        g->spacing[i] = sqrt(A[0][i] * A[0][i] + A[1][i] * A[1][i] + A[2][i] * A[2][i]);
        g->pixdim[i + 1] = g->spacing[i];
        for (int c = 0; c < 4; c++)
            g->srow[i][c] = A[i][c];
    }
    if (g->sform_code <= 0)
        g->sform_code = 1;
    g->qform_code = 0;
    g->affine_source = "sform";
}

void sp_volume_shape_for_spacing(const sp_volume *v, const double spacing[3], int64_t shape[3])
{
    for (int i = 0; i < 3; i++)
        shape[i] = sp_zoom_size(v->g.dim[i], v->g.spacing[i] / spacing[i]);
}

sp_status sp_volume_resample(const sp_volume *v, const int64_t shape[3], int order, sp_volume **out)
{
    *out = NULL;
    if (order != 0 && order != 1)
        return sp_fail(SP_ERR_USAGE, "resample order must be 0 or 1");
    for (int i = 0; i < 3; i++)
        if (shape[i] < 1 || shape[i] > 65535)
            return sp_fail(SP_ERR_USAGE, "bad target shape %lld", (long long)shape[i]);
    sp_geom g = v->g;
    double A[4][4];
    memcpy(A, v->g.affine, sizeof A);
    for (int c = 0; c < 3; c++)
        for (int r = 0; r < 3; r++)
            A[r][c] = A[r][c] * (double)v->g.dim[c] / (double)shape[c];
    geom_with_affine(&g, A, shape);
    sp_volume *o = sp_volume_alloc(&g);
    if (!o)
        return sp_fail(SP_ERR_NOMEM, "resample: out of memory");
    o->file_dtype = v->file_dtype;
    if (order == 1) {
        sp_resample_linear(v->data, v->g.dim, o->data, shape, sp_default_pool());
        o->integer_valued = 0;
    } else {
        sp_resample_nearest_f32(v->data, v->g.dim, o->data, shape, sp_default_pool());
        o->integer_valued = v->integer_valued;
    }
    *out = o;
    return SP_OK;
}

sp_status sp_volume_pad(const sp_volume *v, const int64_t shape[3], float value, sp_volume **out)
{
    *out = NULL;
    int64_t lo[3];
    for (int i = 0; i < 3; i++) {
        if (shape[i] < 1 || shape[i] > 65535)
            return sp_fail(SP_ERR_USAGE, "bad pad shape %lld", (long long)shape[i]);
        lo[i] = (shape[i] - v->g.dim[i]) / 2;   /* negative: crop */
    }
    sp_geom g = v->g;
    double A[4][4];
    memcpy(A, v->g.affine, sizeof A);
    for (int r = 0; r < 3; r++)
        A[r][3] -= A[r][0] * (double)lo[0] + A[r][1] * (double)lo[1] + A[r][2] * (double)lo[2];
    geom_with_affine(&g, A, shape);
    sp_volume *o = sp_volume_alloc(&g);
    if (!o)
        return sp_fail(SP_ERR_NOMEM, "pad: out of memory");
    o->file_dtype = v->file_dtype;
    o->integer_valued = v->integer_valued && value == floorf(value);
    for (int64_t z = 0; z < shape[2]; z++)
        for (int64_t y = 0; y < shape[1]; y++) {
            float *d = o->data + (z * shape[1] + y) * shape[0];
            int64_t sz = z - lo[2], sy = y - lo[1];
            for (int64_t x = 0; x < shape[0]; x++) {
                int64_t sx = x - lo[0];
                int in = sx >= 0 && sx < v->g.dim[0] && sy >= 0 && sy < v->g.dim[1] && sz >= 0 && sz < v->g.dim[2];
                d[x] = in ? v->data[(sz * v->g.dim[1] + sy) * v->g.dim[0] + sx] : value;
            }
        }
    *out = o;
    return SP_OK;
}

sp_status sp_volume_write(const char *path, const sp_volume *v, sp_dtype dtype)
{
    size_t n = (size_t)sp_geom_nvox(&v->g);
    if (dtype == SP_DT_F32)
        return sp_nifti_write(path, &v->g, dtype, v->data, 0);
    if (dtype != SP_DT_I16 && dtype != SP_DT_U8)
        return sp_fail(SP_ERR_USAGE, "%s: can write int16, uint8 or float32", path);
    void *buf = malloc(n * sp_dtype_size(dtype) + 1);
    if (!buf)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    float lo = dtype == SP_DT_U8 ? 0 : -32768, hi = dtype == SP_DT_U8 ? 255 : 32767;
    for (size_t i = 0; i < n; i++) {
        float x = nearbyintf(v->data[i]);
        x = x < lo ? lo : x > hi ? hi : x;
        if (dtype == SP_DT_U8)
            ((uint8_t *)buf)[i] = (uint8_t)x;
        else
            ((int16_t *)buf)[i] = (int16_t)x;
    }
    sp_status st = sp_nifti_write(path, &v->g, dtype, buf, 0);
    free(buf);
    return st;
}

sp_status sp_volume_from_array(const float *data, const int64_t dim[3], const double affine[4][4],
                               sp_volume **out)
{
    static const double eye[4][4] = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}};
    *out = NULL;
    if (!data || dim[0] <= 0 || dim[1] <= 0 || dim[2] <= 0 || dim[0] > (1 << 20) || dim[1] > (1 << 20) ||
        dim[2] > (1 << 20) || (uint64_t)dim[0] * (uint64_t)dim[1] * (uint64_t)dim[2] > (1ull << 31))
        return sp_fail(SP_ERR_INPUT, "volume from memory: bad dims %lldx%lldx%lld (or no data)",
                       (long long)dim[0], (long long)dim[1], (long long)dim[2]);
    sp_geom g;
    memset(&g, 0, sizeof g);
    g.pixdim[0] = 1;
    g.qfac = 1;
    g.xyzt_units = 2;   /* mm */
    geom_with_affine(&g, affine ? affine : eye, dim);
    for (int i = 0; i < 3; i++)
        if (!(g.spacing[i] > 0) || !isfinite(g.spacing[i]))
            return sp_fail(SP_ERR_INPUT, "volume from memory: the affine's column %d is not a voxel size", i);
    sp_volume *v = sp_volume_alloc(&g);
    if (!v)
        return sp_fail(SP_ERR_NOMEM, "volume from memory: out of memory");
    memcpy(v->data, data, (size_t)sp_geom_nvox(&g) * sizeof(float));
    int64_t bad = sp_volume_scan(v);
    if (bad >= 0) {
        sp_volume_free(v);
        return sp_fail(SP_ERR_INPUT, "volume from memory: voxel %lld is not a finite number", (long long)bad);
    }
    v->file_dtype = SP_DT_F32;
    *out = v;
    return SP_OK;
}
