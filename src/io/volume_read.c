/*
 * volume_read.c — one entry for every volume input: sp_volume_read and
 * sp_volume_read_mem look at what they are given (a folder: a DICOM series;
 * bytes starting with a zip signature: a zipped DICOM series; anything
 * else: NIfTI-1/2, optionally gzipped) and hand it to that reader. This is
 * the only file that knows both readers, so nifti.c and dicom_volume.c
 * never call each other.
 */
#include "volume.h"

#include <sys/stat.h>

#include <stdlib.h>

sp_read_params sp_read_default_params(void)
{
    sp_read_params p = {SP_DEFAULT_MAX_VOXELS, NULL, NULL, 0, NULL, NULL};
    return p;
}

sp_status sp_volume_read_mem(const void *data, size_t size, const char *name,
                             const sp_read_params *p, sp_volume **out)
{
#ifndef SP_NO_DICOM
    if (sp_is_zip(data, size)) {   /* a zipped DICOM series (e.g. an upload) */
        return sp_dicom_read_zip(data, size, name, p, out);
    }
#endif
    return sp_nifti_read_mem(data, size, name ? name : "(memory)", p, out);
}

sp_status sp_volume_read(const char *path, const sp_read_params *p, sp_volume **out)
{
    void *buf;
    size_t n;
    uint64_t lim = p && p->max_voxels ? p->max_voxels : SP_DEFAULT_MAX_VOXELS;
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {   /* a DICOM series folder */
#ifdef SP_NO_DICOM
        *out = NULL;
        return sp_fail(SP_ERR_INPUT, "%s is a folder: DICOM input is not in this build (NO_DICOM=1)", path);
#else
        return sp_dicom_read_dir(path, p, out);
#endif
    }
    sp_status st = sp_read_file(path, (size_t)(lim * 8 + 65536), &buf, &n);
    *out = NULL;
    if (st)
        return st;
#ifndef SP_NO_DICOM
    if (sp_is_zip(buf, n))   /* a zipped DICOM series */
        st = sp_dicom_read_zip(buf, n, path, p, out);
    else
#endif
        st = sp_nifti_read_mem(buf, n, path, p, out);
    free(buf);
    return st;
}
