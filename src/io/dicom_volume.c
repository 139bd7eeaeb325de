/*
 * dicom_volume.c — a DICOM series (dicom.cc, GDCM) as an sp_volume: the
 * geometry written as an sform, values as float32 with their range.
 */
#include "volume.h"
#include "dicom.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef SP_NO_DICOM
sp_status sp_dicom_read_dir(const char *dir, const char *uid, uint64_t max_voxels, sp_volume **out)
{
    char msg[1024];
    sp_dicom_vol d;
    *out = NULL;
    sp_status st = sp_dicom_load(dir, uid, max_voxels, &d, msg, sizeof msg);
    if (st)
        return sp_fail(st, "%s", msg);
    sp_geom g;
    memset(&g, 0, sizeof g);
    memcpy(g.dim, d.dim, sizeof g.dim);
    memcpy(g.affine, d.affine, sizeof g.affine);
    for (int r = 0; r < 3; r++)
        memcpy(g.srow[r], d.affine[r], sizeof g.srow[r]);
    for (int c = 0; c < 3; c++)
        g.spacing[c] = g.pixdim[c + 1] = d.spacing[c];
    g.pixdim[0] = g.qfac = 1;
    g.sform_code = 1;
    g.xyzt_units = 2;   /* mm */
    g.affine_source = "sform";
    sp_volume *v = sp_volume_alloc(&g);
    if (!v) {
        free(d.data);
        return sp_fail(SP_ERR_NOMEM, "DICOM: cannot allocate the volume");
    }
    size_t n = (size_t)sp_geom_nvox(&g);
    memcpy(v->data, d.data, n * sizeof(float));
    free(d.data);
    int nonint = 0;
    float lo = v->data[0], hi = v->data[0];
    for (size_t i = 0; i < n; i++) {
        lo = v->data[i] < lo ? v->data[i] : lo;
        hi = v->data[i] > hi ? v->data[i] : hi;
        nonint |= v->data[i] != floorf(v->data[i]);
    }
    v->vmin = lo;
    v->vmax = hi;
    v->range_valid = 1;
    v->integer_valued = !nonint;
    v->file_dtype = nonint ? SP_DT_F32 : SP_DT_I16;
    *out = v;
    return SP_OK;
}
#endif
