/*
 * roi_crop.c — the box TotalSegmentator crops to before it runs a task on a
 * part of the body (cropping.py: get_bbox_from_mask, crop_to_bbox, undo_crop),
 * for `--roi-subset` on task packages with a low-resolution "roi_crop" model
 * (pipeline/ct.c runs that model and the task; docs/cli.md).
 *
 * The box is taken in the input's own voxel axes, before any reorientation,
 * as TotalSegmentator crops the image it read: [min - addon, max + 1 + addon)
 * per axis over the voxels whose label is wanted, clipped to the volume, with
 * addon = (int)(addon_mm / voxel size) (its crop_to_mask). The crop is a new
 * volume whose affine starts at the box's first voxel; labels found on it go
 * back into a zeroed full-size map (undo_crop).
 *
 * The labels the box is taken from are the crop model's, or a prior result
 * the user gives (TotalSegmentator's crop_path: its `total` output, or
 * segpipe's), checked here to be on the input's grid and to name every crop
 * structure.
 */
#include "pipeline.h"

#include <stdlib.h>
#include <string.h>

int sp_roi_box(const uint16_t *labels, const int64_t dim[3], const uint8_t *want, int nwant,
               const double addon_mm[3], const double spacing[3], int64_t lo[3], int64_t hi[3])
{
    int64_t mn[3] = {dim[0], dim[1], dim[2]}, mx[3] = {-1, -1, -1};
    size_t v = 0;
    for (int64_t k = 0; k < dim[2]; k++)
        for (int64_t j = 0; j < dim[1]; j++)
            for (int64_t i = 0; i < dim[0]; i++, v++) {
                uint16_t l = labels[v];
                if (!l || l >= nwant || !want[l])
                    continue;
                int64_t c[3] = {i, j, k};
                for (int a = 0; a < 3; a++) {
                    mn[a] = c[a] < mn[a] ? c[a] : mn[a];
                    mx[a] = c[a] > mx[a] ? c[a] : mx[a];
                }
            }
    if (mx[0] < 0)
        return 0;
    for (int a = 0; a < 3; a++) {
        int64_t add = spacing[a] > 0 ? (int64_t)(addon_mm[a] / spacing[a]) : 0;
        lo[a] = mn[a] - add < 0 ? 0 : mn[a] - add;
        hi[a] = mx[a] + 1 + add > dim[a] ? dim[a] : mx[a] + 1 + add;
    }
    return 1;
}

sp_status sp_volume_crop_box(const sp_volume *v, const int64_t lo[3], const int64_t hi[3], sp_volume **out)
{
    *out = NULL;
    sp_volume *c = calloc(1, sizeof *c);
    if (!c)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    c->g = v->g;
    c->g.affine_source = v->g.affine_source;
    for (int a = 0; a < 3; a++)
        c->g.dim[a] = hi[a] - lo[a];
    for (int r = 0; r < 3; r++) {   /* the affine starts at voxel lo */
        double o = 0;
        for (int a = 0; a < 3; a++)
            o += v->g.affine[r][a] * (double)lo[a];
        c->g.affine[r][3] += o;
        c->g.srow[r][3] += o;
    }
    size_t n = (size_t)(c->g.dim[0] * c->g.dim[1] * c->g.dim[2]);
    if (!(c->data = sp_big_alloc(n * sizeof *c->data))) {
        free(c);
        return sp_fail(SP_ERR_NOMEM, "roi crop: cannot allocate %zu voxels", n);
    }
    const int64_t *d = v->g.dim;
    size_t row = (size_t)c->g.dim[0], o = 0;
    for (int64_t k = lo[2]; k < hi[2]; k++)
        for (int64_t j = lo[1]; j < hi[1]; j++, o += row)
            memcpy(c->data + o, v->data + (size_t)((k * d[1] + j) * d[0] + lo[0]), row * sizeof *c->data);
    c->file_dtype = v->file_dtype;
    c->integer_valued = v->integer_valued;
    c->range_valid = v->range_valid;
    c->vmin = v->vmin;
    c->vmax = v->vmax;
    *out = c;
    return SP_OK;
}

sp_status sp_labels_uncrop(const uint16_t *crop, const int64_t lo[3], const int64_t hi[3], const int64_t dim[3],
                           uint16_t **out)
{
    size_t n = (size_t)(dim[0] * dim[1] * dim[2]), row = (size_t)(hi[0] - lo[0]), o = 0;
    uint16_t *f = sp_big_alloc((n ? n : 1) * sizeof *f);
    if (!(*out = f))
        return sp_fail(SP_ERR_NOMEM, "cannot allocate the label volume (%zu voxels)", n);
    memset(f, 0, n * sizeof *f);
    for (int64_t k = lo[2]; crop && k < hi[2]; k++)
        for (int64_t j = lo[1]; j < hi[1]; j++, o += row)
            memcpy(f + (size_t)((k * dim[1] + j) * dim[0] + lo[0]), crop + o, row * sizeof *f);
    return SP_OK;
}

sp_status sp_crop_from_check(const sp_volume *ct, const sp_volume *g)
{
    if (!g)
        return sp_fail(SP_ERR_USAGE, "crop_from needs crop_from_grid (the prior result's geometry)");
    const int64_t *a = ct->g.dim, *b = g->g.dim;
    if (a[0] != b[0] || a[1] != b[1] || a[2] != b[2])
        return sp_fail(SP_ERR_INPUT, "the prior result to crop from is %lldx%lldx%lld but the input is "
                       "%lldx%lldx%lld: it must be a result on the input's own grid (the same scan, not resampled)",
                       (long long)b[0], (long long)b[1], (long long)b[2], (long long)a[0], (long long)a[1],
                       (long long)a[2]);
    for (int r = 0; r < 3; r++)
        for (int q = 0; q < 4; q++) {
            double tol = q < 3 ? 1e-3 * (ct->g.spacing[q] > 0 ? ct->g.spacing[q] : 1) : 1e-2;
            double d = ct->g.affine[r][q] - g->g.affine[r][q];
            if (d > tol || d < -tol)
                return sp_fail(SP_ERR_INPUT, "the prior result to crop from has another affine than the input "
                               "(element [%d][%d]: %g vs %g): it must be a result on the input's own grid", r, q,
                               g->g.affine[r][q], ct->g.affine[r][q]);
        }
    return SP_OK;
}

static int named(const char *const *names, int n, const char *s)
{
    for (int l = 1; l < n; l++)
        if (names[l] && !strcmp(names[l], s))
            return l;
    return 0;
}

sp_status sp_crop_want_names(const sp_manifest *mf, const uint8_t *keep, const char *const *names, int n,
                             int strict, uint8_t **want)
{
    uint8_t *w = *want = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!w)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    int ns = mf->n_crop_names ? mf->n_crop_names : mf->num_classes;
    for (int i = 0; i < ns; i++) {
        const char *s = mf->n_crop_names ? mf->crop_names[i] : (i && keep && keep[i] ? mf->labels[i] : NULL);
        int l = s ? named(names, n, s) : 0;
        for (int m = l; m && m < n; m++)   /* every label of that name */
            w[m] |= names[m] && !strcmp(names[m], s);
        if (s && !l && strict) {
            free(w);
            *want = NULL;
            return sp_fail(SP_ERR_INPUT, "the prior result to crop from has no label named \"%.64s\" (a structure "
                           "'%.64s' crops to; TotalSegmentator's `total` output names it)", s, mf->name);
        }
    }
    return SP_OK;
}
