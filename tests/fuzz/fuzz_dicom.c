/* libFuzzer target: the DICOM series reader (GDCM, src/io/dicom.cc) and,
 * for a volume that reads, the DICOM-SEG and RTSTRUCT writers (DCMTK) on its labels.
 * The input is one file of a one-slice series in a private folder, or,
 * when it starts with "PK", a zip of a series (sp_volume_read_mem unpacks
 * it). Any input must give SP_OK or a clean error: never a crash, a hang,
 * an escaped C++ exception or a leak (voxel limit 2^20). */
#include "segpipe.h"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], file[96], seg[96];

static void once(void)
{
    if (dir[0])
        return;
    snprintf(dir, sizeof dir, "/tmp/segpipe-fuzz-dicom-XXXXXX");
    if (!mkdtemp(dir))
        abort();
    snprintf(file, sizeof file, "%s/slice.dcm", dir);
    snprintf(seg, sizeof seg, "%s.seg.dcm", dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    once();
    sp_read_params p = sp_read_default_params();
    p.max_voxels = 1u << 20;
    sp_volume *v = NULL;
    sp_status st;
    if (size >= 2 && !memcmp(data, "PK", 2)) {
        st = sp_volume_read_mem(data, size, "fuzz.zip", &p, &v);
    } else {
        FILE *f = fopen(file, "wb");
        if (!f)
            abort();
        fwrite(data, 1, size, f);
        fclose(f);
        st = sp_volume_read(dir, &p, &v);
    }
    if (st == SP_OK) {
        sp_volume_info vi;
        sp_volume_get_info(v, &vi);
        size_t n = (size_t)(vi.dim[0] * vi.dim[1] * vi.dim[2]);
        uint16_t *lab = calloc(n, sizeof *lab);
        const float *x = sp_volume_data(v);
        for (size_t i = 0; lab && i < n; i++)
            lab[i] = x[i] > 0;   /* something to segment */
        const char *names[2] = {"background", "positive"};
        if (lab && sp_volume_from_dicom(v)) {
            sp_labels_write_dicom_seg(seg, lab, v, names, 2, "fuzz");
            sp_dicom_params dp = sp_dicom_default_params();
            dp.kind = SP_DICOM_RTSTRUCT;   /* the contours of whatever the input holds */
            sp_labels_write_dicom(seg, lab, v, names, 2, &dp);
        }
        free(lab);
        unlink(seg);
        sp_volume_free(v);
    }
    return 0;
}
