/*
 * vertebrae_pp.c — TotalSegmentator's vertebrae_pp post-processing
 * (postprocessing.py's postprocess_vertebrae_pp and dilate_vertebrae_labels),
 * on the model grid after the prediction, for the task package that asks for
 * it ("vertebrae_pp" in its manifest).
 *
 * The vertebrae_pp network segments vertebral bodies eroded by 3 mm. When two
 * labels touch (face neighbours), the non-zero voxels are split into their
 * 6-connected components (scipy.ndimage.label's default), those under
 * min_mm3 dropped, and the components relabelled by the z of their centre of
 * mass: from the bottom with the highest label present downwards, or, when C1
 * is there and L5 is not, from the top with C1 upwards. Then each label, in
 * increasing order, grows into background voxels by an ellipsoid of
 * dilation_mm built exactly as TotalSegmentator's
 * get_ellipsoid_structuring_element (np.ogrid[-r:r+1] per axis, so an
 * off-centre kernel when r is not an integer) and placed as scipy's
 * binary_dilation places it (kernel index t lands at voxel v + t - n // 2).
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define IDX(i, j, k) ((size_t)(i) + (size_t)dim[0] * ((size_t)(j) + (size_t)dim[1] * (size_t)(k)))

/* _multilabel_labels_touch: two different non-zero labels face to face */
static int labels_touch(const uint16_t *l, const int64_t dim[3])
{
    const size_t step[3] = {1, (size_t)dim[0], (size_t)(dim[0] * dim[1])};
    for (int64_t k = 0; k < dim[2]; k++)
        for (int64_t j = 0; j < dim[1]; j++)
            for (int64_t i = 0; i < dim[0]; i++) {
                size_t v = IDX(i, j, k);
                if (!l[v])
                    continue;
                const int64_t at[3] = {i, j, k};
                for (int a = 0; a < 3; a++)
                    if (at[a] + 1 < dim[a] && l[v + step[a]] && l[v + step[a]] != l[v])
                        return 1;
            }
    return 0;
}

static int32_t root(int32_t *p, int32_t x)
{
    while (p[x] != x)
        x = p[x] = p[p[x]];
    return x;
}

typedef struct comp {
    int64_t size, first;   /* first: its first voxel in numpy's C order (i slowest, k fastest) */
    double zsum;
    int32_t id;
} comp;

static int by_z_up(const void *a, const void *b)
{
    const comp *x = a, *y = b;
    double zx = x->zsum / (double)x->size, zy = y->zsum / (double)y->size;
    return zx < zy ? -1 : zx > zy ? 1 : (x->first > y->first) - (x->first < y->first);
}

static int by_z_down(const void *a, const void *b)
{
    const comp *x = a, *y = b;
    double zx = x->zsum / (double)x->size, zy = y->zsum / (double)y->size;
    return zx > zy ? -1 : zx < zy ? 1 : (x->first > y->first) - (x->first < y->first);
}

/* The relabelling branch: out gets the new labels (0 elsewhere). */
static sp_status relabel(const uint16_t *l, uint16_t *out, const int64_t dim[3], int nlab, uint16_t c1,
                         uint16_t l5, double min_vox_mm3, double vox)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    int32_t *p = malloc(nv * sizeof *p);
    comp *c = NULL;
    if (!p)
        return sp_fail(SP_ERR_NOMEM, "vertebrae_pp: cannot allocate %zu voxels", nv);
    for (size_t v = 0; v < nv; v++)
        p[v] = (int32_t)v;
    for (int64_t k = 0; k < dim[2]; k++)   /* 6-connected union of the non-zero voxels */
        for (int64_t j = 0; j < dim[1]; j++)
            for (int64_t i = 0; i < dim[0]; i++) {
                size_t v = IDX(i, j, k);
                if (!l[v])
                    continue;
                size_t nb[3] = {i ? v - 1 : v, j ? v - (size_t)dim[0] : v, k ? v - (size_t)(dim[0] * dim[1]) : v};
                for (int a = 0; a < 3; a++)
                    if (nb[a] != v && l[nb[a]]) {
                        int32_t x = root(p, (int32_t)v), y = root(p, (int32_t)nb[a]);
                        p[x > y ? x : y] = x > y ? y : x;
                    }
            }
    int32_t nc = 0;
    for (size_t v = 0; v < nv; v++)   /* every voxel to its root: the smallest index of its component */
        if (l[v]) {
            p[v] = root(p, (int32_t)v);
            nc += p[v] == (int32_t)v;
        }
    if (!(c = calloc((size_t)(nc ? nc : 1), sizeof *c))) {
        free(p);
        return sp_fail(SP_ERR_NOMEM, "vertebrae_pp: out of memory");
    }
    int32_t next = 0;
    for (size_t v = 0; v < nv; v++) {   /* roots come first in memory order: numbered -1, -2, ... */
        if (!l[v])
            continue;
        int32_t r = p[v] == (int32_t)v ? -1 - next++ : p[p[v]];
        p[v] = r;
        comp *x = &c[-1 - r];
        int64_t i = (int64_t)(v % (size_t)dim[0]), j = (int64_t)(v / (size_t)dim[0] % (size_t)dim[1]),
                k = (int64_t)(v / (size_t)(dim[0] * dim[1]));
        int64_t key = (i * dim[1] + j) * dim[2] + k;
        if (!x->size || key < x->first)
            x->first = key;
        x->size++;
        x->zsum += (double)k;
        x->id = r;
    }
    uint8_t present[65536] = {0};
    int kept = 0, maxp = 0;
    for (size_t v = 0; v < nv; v++)
        if (l[v] && (double)c[-1 - p[v]].size * vox >= min_vox_mm3 && l[v] < nlab)
            present[l[v]] = 1, maxp = l[v] > maxp ? l[v] : maxp;
    for (int32_t q = 0; q < nc; q++)
        if ((double)c[q].size * vox >= min_vox_mm3)
            c[kept++] = c[q];
    memset(out, 0, nv * sizeof *out);
    if (kept && maxp) {
        int from_top = !present[l5] && present[c1];
        qsort(c, (size_t)kept, sizeof *c, from_top ? by_z_down : by_z_up);
        uint16_t *lab_of = calloc((size_t)nc, sizeof *lab_of);   /* component number -> new label */
        if (!lab_of) {
            free(p), free(c);
            return sp_fail(SP_ERR_NOMEM, "vertebrae_pp: out of memory");
        }
        for (int q = 0; q < kept; q++) {
            int lab = from_top ? c1 + q : maxp - q;
            if (lab < 1 || lab >= nlab)
                break;
            lab_of[-1 - c[q].id] = (uint16_t)lab;
        }
        for (size_t v = 0; v < nv; v++)
            if (l[v])
                out[v] = lab_of[-1 - p[v]];
        free(lab_of);
    }
    free(p);
    free(c);
    return SP_OK;
}

/* get_ellipsoid_structuring_element(spacing, mm): the kernel's offsets
 * (t - n // 2 per axis, as scipy's binary_dilation places index t) into
 * off[], their count returned (0: out of memory). */
static int ellipsoid(const double spacing[3], double mm, int (**off)[3])
{
    double r[3];
    int n[3];
    for (int a = 0; a < 3; a++) {
        r[a] = mm / spacing[a];
        n[a] = (int)ceil((r[a] + 1.0) - (-r[a]));   /* np.ogrid[-r:r+1]: ceil((stop - start) / 1) values */
        if (n[a] < 1 || n[a] > 255)
            return -1;
    }
    *off = malloc((size_t)n[0] * (size_t)n[1] * (size_t)n[2] * sizeof **off);
    if (!*off)
        return 0;
    int m = 0;
    for (int a = 0; a < n[0]; a++)
        for (int b = 0; b < n[1]; b++)
            for (int d = 0; d < n[2]; d++) {
                double g[3] = {a * 1.0 + -r[0], b * 1.0 + -r[1], d * 1.0 + -r[2]}, s = 0;
                for (int q = 0; q < 3; q++)
                    s += g[q] * g[q] / (r[q] * r[q]);
                if (s <= 1) {
                    (*off)[m][0] = a - n[0] / 2, (*off)[m][1] = b - n[1] / 2, (*off)[m][2] = d - n[2] / 2;
                    m++;
                }
            }
    return m;
}

/* dilate_vertebrae_labels: for each label in increasing order, its voxels
 * in src dilated by the kernel, written into dst's background voxels. */
static sp_status dilate(const uint16_t *src, uint16_t *dst, const int64_t dim[3], int nlab, const double spacing[3],
                        double mm)
{
    if (mm <= 0)
        return SP_OK;
    int (*off)[3] = NULL;
    int m = ellipsoid(spacing, mm, &off);
    if (m < 0)
        return sp_fail(SP_ERR_MODEL, "vertebrae_pp: dilation of %g mm is too large for the %g x %g x %g mm grid", mm,
                       spacing[0], spacing[1], spacing[2]);
    if (!m)
        return sp_fail(SP_ERR_NOMEM, "vertebrae_pp: out of memory");
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    for (int lab = 1; lab < nlab; lab++)
        for (size_t v = 0; v < nv; v++) {
            if (src[v] != lab)
                continue;
            int64_t at[3] = {(int64_t)(v % (size_t)dim[0]), (int64_t)(v / (size_t)dim[0] % (size_t)dim[1]),
                             (int64_t)(v / (size_t)(dim[0] * dim[1]))};
            for (int q = 0; q < m; q++) {
                int64_t i = at[0] + off[q][0], j = at[1] + off[q][1], k = at[2] + off[q][2];
                if (i < 0 || j < 0 || k < 0 || i >= dim[0] || j >= dim[1] || k >= dim[2])
                    continue;
                size_t w = IDX(i, j, k);
                if (!dst[w])
                    dst[w] = (uint16_t)lab;
            }
        }
    free(off);
    return SP_OK;
}

sp_status sp_vertebrae_pp(uint16_t *labels, const int64_t dim[3], const double spacing[3], int nlab, uint16_t c1,
                          uint16_t l5, double min_mm3, double dilation_mm)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    if (nv > (size_t)INT32_MAX)
        return sp_fail(SP_ERR_INPUT, "vertebrae_pp: %zu model-grid voxels, at most %d", nv, INT32_MAX);
    double sp[3], vox = 1;
    for (int a = 0; a < 3; a++) {   /* TotalSegmentator reads the zooms of the NIfTI header: float32 */
        sp[a] = (double)(float)spacing[a];
        vox *= sp[a];
    }
    uint16_t *src = malloc((nv ? nv : 1) * sizeof *src);
    if (!src)
        return sp_fail(SP_ERR_NOMEM, "vertebrae_pp: cannot allocate %zu voxels", nv);
    sp_status st = SP_OK;
    if (labels_touch(labels, dim)) {
        memcpy(src, labels, nv * sizeof *src);
        st = relabel(src, labels, dim, nlab, c1, l5, min_mm3, vox);
        int any = 0;
        for (size_t v = 0; !st && v < nv && !any; v++)
            any = labels[v] != 0;
        if (!any) {   /* nothing kept: TotalSegmentator returns the zeros undilated */
            free(src);
            return st;
        }
    }
    if (!st) {
        memcpy(src, labels, nv * sizeof *src);
        st = dilate(src, labels, dim, nlab, sp, dilation_mm);
    }
    free(src);
    return st;
}

sp_status sp_vertebrae_refine(uint16_t *labels, const int64_t dim[3], const double spacing[3], int nlab,
                              const uint16_t *mask, uint16_t keep, double dilation_mm)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    double sp[3];
    for (int a = 0; a < 3; a++)   /* the input header's zooms, float32 */
        sp[a] = (double)(float)spacing[a];
    uint16_t *src = calloc(nv ? nv : 1, sizeof *src);
    if (!src)
        return sp_fail(SP_ERR_NOMEM, "vertebrae refinement: cannot allocate %zu voxels", nv);
    memcpy(src, labels, nv * sizeof *src);
    sp_status st = dilate(src, labels, dim, nlab, sp, dilation_mm);
    free(src);
    for (size_t v = 0; !st && v < nv; v++)   /* refined[body_data != 1] = 0 */
        if (mask[v] != keep)
            labels[v] = 0;
    return st;
}
