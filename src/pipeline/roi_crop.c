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
