/* dicom.h — the C view of dicom.cc (GDCM, C++): a series folder read into
 * plain arrays; dicom_volume.c turns them into an sp_volume. */
#ifndef SP_DICOM_H
#define SP_DICOM_H
#include "segpipe.h"

/* What a DICOM-SEG of labels on this series must reference and copy: the
 * sorted slices' instances and positions, the plane geometry, and the
 * patient/study/frame-of-reference attributes of the first slice (as
 * strings, with its character set). Never logged. */
#define SP_DICOM_UID 65
/* Limits checked before any pixel is decoded (docs/security.md): a slice
 * wider or taller than this is refused from its header; a folder walk
 * reads at most SP_DICOM_MAX_ENTRIES entries, SP_DICOM_MAX_DEPTH deep. */
#define SP_DICOM_MAX_SIDE 8192
#define SP_DICOM_MAX_ENTRIES 100000
#define SP_DICOM_MAX_DEPTH 32
#define SP_DICOM_ATTRS 16
typedef struct sp_dicom_ref {
    int n, rows, cols;
    char (*sop_uid)[SP_DICOM_UID], (*sop_class)[SP_DICOM_UID];   /* n, in volume (k) order */
    double (*ipp)[3];                                             /* n */
    double iop[6], ps[2], step;
    char series_uid[SP_DICOM_UID], study_uid[SP_DICOM_UID], patient_id[SP_DICOM_UID];
    int n_attrs;
    uint16_t attr_tag[SP_DICOM_ATTRS][2];                         /* group, element */
    char attr_val[SP_DICOM_ATTRS][256];
} sp_dicom_ref;

typedef struct sp_dicom_vol {
    int64_t dim[3];
    double affine[4][4];      /* RAS+, NIfTI convention */
    double spacing[3];
    float *data;              /* dim[0]*dim[1]*dim[2], i fastest; malloc'd, caller frees */
    sp_dicom_ref *ref;        /* malloc'd, caller frees with sp_dicom_ref_free */
} sp_dicom_vol;

#ifdef __cplusplus
extern "C" {
#endif
/* dicom.cc is built as its own shared object, libsegpipe_gdcm.so, opened
 * when a series is first read (gdcm_load.c): GDCM loads its data
 * dictionary when it is mapped, about 28 ms that every process paid at
 * start when libsegpipe linked it. The library's code calls the reader
 * through this table; its functions are the ones declared below. */
typedef struct sp_dicom_reader {
    sp_status (*load)(const char *dir, const char *uid, uint64_t max_voxels, struct sp_dicom_vol *v, char *msg,
                      size_t cap);
    void (*limits)(uint64_t max_memory, int bound_process);
    const char *(*notes)(void);
} sp_dicom_reader;
/* The reader (opened once, thread-safe), or NULL with the reason in msg:
 * libsegpipe_gdcm.so is looked for beside the module holding this code
 * (build/), in its segpipe/ folder (PREFIX/lib/segpipe/ beside
 * libsegpipe.so.0) and in ../lib/segpipe/ (beside PREFIX/bin/segpipe).
 * A program that links dicom.cc itself (the fuzzers) uses that. */
const sp_dicom_reader *sp_dicom_reader_open(char *msg, size_t cap);

/* SP_OK with *v filled, or a status with the reason in msg. */
sp_status sp_dicom_load(const char *dir, const char *uid, uint64_t max_voxels, sp_dicom_vol *v, char *msg,
                        size_t cap);
void sp_dicom_ref_free(sp_dicom_ref *r);
/* the writers (DICOM-SEG, RTSTRUCT): dicom_out.h */
/* The reader process's bounds, set before sp_dicom_load: a series whose
 * decoding needs more than max_memory bytes (from its headers; 0: no
 * bound) is refused before decoding; bound_process = 1 (the forked reader
 * only) sets this process's RLIMIT_AS to what the headers declare. */
void sp_dicom_reader_limits(uint64_t max_memory, int bound_process);
/* What the last sp_dicom_load on this thread skipped in the folder walk
 * (non-regular files, links met twice): one line, "" if nothing. */
const char *sp_dicom_notes(void);
#ifdef __cplusplus
}
#endif
#endif
