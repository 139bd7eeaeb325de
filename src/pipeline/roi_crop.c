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
 * structure. A subtask's remove_outside (heartchambers_highres) ends here
 * too: labels outside the dilated mask of some of those structures go.
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

/* *want (n entries): want[l] when names[l] is in list[0..nl); strict: every
 * listed name must be among names (a prior result's), else SP_ERR_INPUT */
static sp_status want_list(const char *const *list, int nl, const char *const *names, int n, int strict,
                           const char *model, uint8_t **want)
{
    uint8_t *w = *want = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!w)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nl; i++) {
        int l = named(names, n, list[i]);
        for (int m = l; m && m < n; m++)   /* every label of that name */
            w[m] |= names[m] && !strcmp(names[m], list[i]);
        if (!l && strict) {
            free(w);
            *want = NULL;
            if (strict == 2)   /* the crop model: a --roi-subset name it does not segment */
                return sp_fail(SP_ERR_USAGE, "--roi-subset: the crop model of '%.64s' does not segment \"%.64s\", so "
                               "it cannot find its region (TotalSegmentator stops there too)", model, list[i]);
            return sp_fail(SP_ERR_INPUT, "the prior result to crop from has no label named \"%.64s\" (a structure "
                           "'%.64s' crops to; TotalSegmentator's `total` output names it)", list[i], model);
        }
    }
    return SP_OK;
}

sp_status sp_crop_want_names(const sp_manifest *mf, const uint8_t *keep, const char *const *names, int n,
                             int strict, uint8_t **want)
{
    if (mf->n_crop_names)
        return want_list((const char *const *)mf->crop_names, mf->n_crop_names, names, n, strict, mf->name, want);
    const char **kept = calloc((size_t)mf->num_classes, sizeof *kept);
    int nk = 0;
    if (!kept)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int l = 1; keep && l < mf->num_classes; l++)
        if (keep[l])
            kept[nk++] = mf->labels[l];
    sp_status st = want_list(kept, nk, names, n, strict, mf->name, want);
    free(kept);
    return st;
}

sp_status sp_outside_want(const sp_manifest *mf, const char *const *names, int n, int strict, uint8_t **want)
{
    return want_list((const char *const *)mf->outside_names, mf->n_outside, names, n, strict, mf->name, want);
}

sp_status sp_remove_outside(uint16_t *labels, const uint8_t *mask, const int64_t dim[3], int iterations)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]), any = 0;
    for (size_t v = 0; v < nv && !any; v++)
        any = mask[v];
    if (iterations < 1 || !any) {   /* scipy: iterations < 1 dilates until nothing changes */
        if (!any)
            memset(labels, 0, nv * sizeof *labels);
        return SP_OK;
    }
    /* city-block distance to the mask in two raster passes (exact for 6-neighbour steps), capped */
    uint16_t *d = sp_big_alloc(nv * sizeof *d);
    const int64_t sx = 1, sy = dim[0], sz = dim[0] * dim[1];
    if (!d)
        return sp_fail(SP_ERR_NOMEM, "remove_outside: cannot allocate %zu voxels", nv);
    for (size_t v = 0; v < nv; v++)
        d[v] = mask[v] ? 0 : 65535;
    for (int pass = 0; pass < 2; pass++)
        for (int64_t q = 0; q < (int64_t)nv; q++) {
            int64_t v = pass ? (int64_t)nv - 1 - q : q, i = v % dim[0], j = (v / dim[0]) % dim[1], k = v / sz;
            int64_t s1 = pass ? 1 : -1;
            uint32_t best = d[v];
            if ((pass ? i + 1 < dim[0] : i > 0) && d[v + s1 * sx] + 1u < best)
                best = d[v + s1 * sx] + 1u;
            if ((pass ? j + 1 < dim[1] : j > 0) && d[v + s1 * sy] + 1u < best)
                best = d[v + s1 * sy] + 1u;
            if ((pass ? k + 1 < dim[2] : k > 0) && d[v + s1 * sz] + 1u < best)
                best = d[v + s1 * sz] + 1u;
            d[v] = (uint16_t)(best > 65535 ? 65535 : best);
        }
    for (size_t v = 0; v < nv; v++)
        if (d[v] > iterations)
            labels[v] = 0;
    free(d);
    return SP_OK;
}
