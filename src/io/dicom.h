/* dicom.h — the C view of dicom.cc (GDCM, C++): a series folder read into
 * plain arrays; dicom_volume.c turns them into an sp_volume. */
#ifndef SP_DICOM_H
#define SP_DICOM_H
#include "segpipe.h"

typedef struct sp_dicom_vol {
    int64_t dim[3];
    double affine[4][4];      /* RAS+, NIfTI convention */
    double spacing[3];
    float *data;              /* dim[0]*dim[1]*dim[2], i fastest; malloc'd, caller frees */
} sp_dicom_vol;

#ifdef __cplusplus
extern "C" {
#endif
/* SP_OK with *v filled, or a status with the reason in msg. */
sp_status sp_dicom_load(const char *dir, const char *uid, uint64_t max_voxels, sp_dicom_vol *v, char *msg,
                        size_t cap);
#ifdef __cplusplus
}
#endif
#endif
