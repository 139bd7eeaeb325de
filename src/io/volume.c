/*
 * volume.c — the sp_volume object itself, whatever file it came from:
 * allocation and release, the value-range scan, the public accessors and
 * the affine's axis codes. The readers (nifti.c, dicom_volume.c) build
 * volumes with these helpers; neither reader calls the other (the choice
 * between them is made in volume_read.c).
 */
#include "volume.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t sp_geom_nvox(const sp_geom *g) { return g->dim[0] * g->dim[1] * g->dim[2]; }

int64_t sp_volume_scan(sp_volume *v)
{
    int64_t n = sp_geom_nvox(&v->g), bad = -1;
    int nonint = 0;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        float x = v->data[i];
        if (!isfinite(x)) {
            if (bad < 0)
                bad = i;
            continue;
        }
        nonint |= x != floorf(x);
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    v->vmin = lo;
    v->vmax = hi;
    v->range_valid = n > 0;
    v->integer_valued = !nonint;
    return bad;
}

sp_volume *sp_volume_alloc(const sp_geom *g)
{
    sp_volume *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->g = *g;
    v->data = sp_big_alloc((size_t)sp_geom_nvox(g) * sizeof(float) + 1);
    if (!v->data) {
        free(v);
        return NULL;
    }
    v->file_dtype = SP_DT_F32;
    return v;
}

void sp_volume_free(sp_volume *v)
{
    if (v) {
        free(v->label_xml);
        if (v->dicom && v->dicom_free)
            v->dicom_free(v->dicom);
        free(v->data);
        free(v);
    }
}

const float *sp_volume_data(const sp_volume *v) { return v->data; }
int sp_volume_from_dicom(const sp_volume *v) { return v && v->dicom != NULL; }

void sp_affine_axcodes(const double a[4][4], char out[4])
{
    /* Closest axis per voxel axis (greedy, as nibabel's io_orientation for
     * well-conditioned affines); used for display only. */
    static const char pos[3] = {'R', 'A', 'S'}, neg[3] = {'L', 'P', 'I'};
    int used[3] = {0, 0, 0};
    for (int ax = 0; ax < 3; ax++) {
        int best = -1;
        double bv = 0;
        for (int r = 0; r < 3; r++)
            if (!used[r] && fabs(a[r][ax]) > bv)
                bv = fabs(a[r][ax]), best = r;
        if (best < 0) {
            out[ax] = '?';
            continue;
        }
        used[best] = 1;
        out[ax] = a[best][ax] >= 0 ? pos[best] : neg[best];
    }
    out[3] = 0;
}

void sp_volume_get_info(const sp_volume *v, sp_volume_info *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 0; i < 3; i++) {
        o->dim[i] = v->g.dim[i];
        o->spacing[i] = v->g.spacing[i];
    }
    memcpy(o->affine, v->g.affine, sizeof o->affine);
    o->file_dtype = v->file_dtype;
    o->qform_code = v->g.qform_code;
    o->sform_code = v->g.sform_code;
    o->affine_source = v->g.affine_source;
    sp_affine_axcodes(v->g.affine, o->axcodes);
}

