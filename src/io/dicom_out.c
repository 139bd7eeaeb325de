/*
 * dicom_out.c — labels out as DICOM (docs/dicom.md): the public
 * sp_labels_write_dicom() in front of the DCMTK writers (dicom_seg.cc,
 * dicom_rtstruct.cc). It checks that the labels sit on the grid of the
 * DICOM series they were computed from, codes each structure present
 * (dicom_codes.c; a warning names every structure that only gets segpipe's
 * private code), and writes to a temporary name renamed into place, so a
 * failed write never leaves a partial file.
 */
#include "volume.h"
#include "dicom_out.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

sp_dicom_params sp_dicom_default_params(void)
{
    sp_dicom_params p = {0};
    p.kind = SP_DICOM_SEG;
    return p;
}

#ifndef SP_NO_DICOM
/* the structures present in labels (n voxels), coded, in label order;
 * *n_st of them (0 is background) */
static sp_status structures_of(const uint16_t *labels, size_t n, const char *const *names, int n_names,
                               const char *codes_json, sp_dicom_structure **out, int *n_st)
{
    char *present = calloc(65536, 1);
    if (!present)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        present[labels[i]] = 1;
    int count = 0;
    for (int l = 1; l < 65536; l++)
        count += present[l];
    sp_dicom_structure *st = calloc(count ? (size_t)count : 1, sizeof *st);
    if (!st) {
        free(present);
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    int k = 0, unknown = 0;
    char list[512] = "";
    for (int l = 1; l < 65536; l++) {
        if (!present[l])
            continue;
        char fallback[32];
        snprintf(fallback, sizeof fallback, "label_%d", l);
        const char *name = l < n_names && names && names[l] ? names[l] : fallback;
        if (!sp_dicom_structure_codes(name, l, codes_json, &st[k]) && unknown++ < 8)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%.48s", unknown > 1 ? ", " : "", name);
        k++;
    }
    free(present);
    if (unknown)
        SP_WARN("DICOM: %d structure(s) have no standard code (%s%s): written with segpipe's private code "
                "(scheme " SP_DICOM_PRIVATE_SCHEME "); add them to the manifest's \"dicom_codes\"", unknown, list,
                unknown > 8 ? ", ..." : "");
    *out = st;
    *n_st = count;
    return SP_OK;
}

/* what a viewer will not be able to do with this output, said once */
static void warn_references(const sp_dicom_ref *ref, const char *what)
{
    int with_uid = 0, with_frame = 0;
    for (int k = 0; k < ref->n; k++)
        with_uid += *ref->sop_uid[k] && *ref->sop_class[k];
    for (int i = 0; i < ref->n_attrs; i++)
        with_frame |= ref->attr_tag[i][0] == 0x0020 && ref->attr_tag[i][1] == 0x0052;
    if (!with_uid)
        SP_WARN("%s: the source slices have no SOP instance UID: the output references no images (viewers will "
                "not attach it to the series; geometry, patient and study are still copied)", what);
    else if (with_uid < ref->n)
        SP_WARN("%s: %d of %d source slices have no SOP instance UID and are not referenced", what,
                ref->n - with_uid, ref->n);
    if (!*ref->study_uid)
        SP_WARN("%s: the source has no StudyInstanceUID: the output gets a new study (a PACS will not file it "
                "with its source)", what);
    if (!with_frame)
        SP_WARN("%s: the source has no FrameOfReferenceUID: the output gets a new one", what);
}

sp_status sp_labels_write_dicom(const char *path, const uint16_t *labels, const sp_volume *source,
                                const char *const *names, int n_names, const sp_dicom_params *p)
{
    sp_dicom_params dp = p ? *p : sp_dicom_default_params();
    const char *what = dp.kind == SP_DICOM_RTSTRUCT ? "RTSTRUCT" : "DICOM-SEG";
    const sp_dicom_ref *ref = source ? source->dicom : NULL;
    if (dp.kind != SP_DICOM_SEG && dp.kind != SP_DICOM_RTSTRUCT)
        return sp_fail(SP_ERR_USAGE, "DICOM output: unknown kind %d", (int)dp.kind);
    if (!ref)
        return sp_fail(SP_ERR_USAGE, "%s output needs a DICOM input: it references the series it was made "
                       "from (this input is %s)", what, source ? "NIfTI" : "missing");
    if (source->g.dim[0] != ref->cols || source->g.dim[1] != ref->rows || source->g.dim[2] != ref->n)
        return sp_fail(SP_ERR_USAGE, "%s: the labels are not on the series' grid", what);
    if (dp.series_number < 0)
        return sp_fail(SP_ERR_USAGE, "%s: the series number must be positive", what);
    if ((dp.description && (strlen(dp.description) > 64 || strpbrk(dp.description, "\\\r\n"))) ||
        (dp.creator && (strlen(dp.creator) > 64 || strpbrk(dp.creator, "\\\r\n"))))
        return sp_fail(SP_ERR_USAGE, "%s: the description and creator are at most 64 characters, without "
                       "backslash or line break", what);
    if (!dp.series_number)
        dp.series_number = dp.kind == SP_DICOM_RTSTRUCT ? 9002 : 9001;
    warn_references(ref, what);
    sp_dicom_structure *st = NULL;
    int n_st = 0;
    sp_status s = structures_of(labels, (size_t)ref->cols * ref->rows * ref->n, names, n_names, dp.codes_json,
                                &st, &n_st);
    char tmp[PATH_MAX], msg[1024];
    if (!s && snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof tmp)
        s = sp_fail(SP_ERR_USAGE, "output path too long");
    if (!s) {
        s = dp.kind == SP_DICOM_RTSTRUCT ? sp_dicom_rtstruct_write(tmp, ref, labels, st, n_st, &dp, msg, sizeof msg)
                                         : sp_dicom_seg_write(tmp, ref, labels, st, n_st, &dp, msg, sizeof msg);
        if (s)
            s = sp_fail(s, "%s: %s", path, msg);
        else if (rename(tmp, path))
            s = sp_fail(SP_ERR_IO, "%s: cannot rename the finished file into place", path);
        if (s)
            unlink(tmp);
    }
    free(st);
    return s;
}
#else
sp_status sp_labels_write_dicom(const char *path, const uint16_t *labels, const sp_volume *source,
                                const char *const *names, int n_names, const sp_dicom_params *p)
{
    return sp_fail(SP_ERR_USAGE, "this segpipe was built without DICOM (NO_DICOM=1)");
}
#endif

sp_status sp_labels_write_dicom_seg(const char *path, const uint16_t *labels, const sp_volume *source,
                                    const char *const *names, int n_names, const char *description)
{
    sp_dicom_params p = sp_dicom_default_params();
    p.description = description;
    return sp_labels_write_dicom(path, labels, source, names, n_names, &p);
}
