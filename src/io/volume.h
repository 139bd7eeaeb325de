/*
 * volume.h — internal layout of sp_volume and the NIfTI helpers.
 *
 * A volume is float32 voxels with i fastest (NIfTI order), its voxel-to-world
 * affine, and the header fields needed to write a label map back with the
 * input's exact geometry (qform and sform with their codes).
 */
#ifndef SP_VOLUME_H
#define SP_VOLUME_H
#include "../core/core.h"

typedef struct sp_geom {
    int64_t dim[3];
    double spacing[3];
    double affine[4][4];          /* the affine nibabel would use */
    /* header fields, as read (written back unchanged) */
    int qform_code, sform_code;
    double quatern[3], qoffset[3], qfac;
    double pixdim[8];
    double srow[3][4];
    int xyzt_units;
    const char *affine_source;
} sp_geom;

struct sp_volume {
    sp_geom g;
    float *data;
    sp_dtype file_dtype;
    int integer_valued;           /* every voxel holds an integer value */
    int range_valid;              /* vmin/vmax hold the value range (set by the reader) */
    float vmin, vmax;
    char *label_xml;              /* TotalSegmentator's label table (NIfTI extension), or NULL */
    struct sp_dicom_ref *dicom;   /* read from a DICOM series: what a DICOM-SEG references, or NULL */
    void (*dicom_free)(struct sp_dicom_ref *);
};

#define SP_DEFAULT_MAX_VOXELS (1ull << 30)

/* nifti.c: a NIfTI-1/2 file (optionally gzipped) of n bytes at buf; name
 * names it in messages. */
sp_status sp_nifti_read_mem(const uint8_t *buf, size_t n, const char *name, const sp_read_params *rp,
                            sp_volume **out);

/* dicom_volume.c (dicom.cc in a child process): the DICOM series in folder
 * dir, under p's limits (series: p->dicom_series, else SEGPIPE_DICOM_SERIES,
 * else the only one). */
sp_status sp_dicom_read_dir(const char *dir, const sp_read_params *p, sp_volume **out);
/* A zip of a DICOM series: size bytes at data (path names it in messages). */
sp_status sp_dicom_read_zip(const void *data, size_t size, const char *path, const sp_read_params *p,
                            sp_volume **out);
/* Remove this user's segpipe-dicom-PID-* temporary folders whose process
 * is gone (a reader killed with its parent); called before each unpack. */
void sp_dicom_clean_stale(void);
int sp_is_zip(const void *data, size_t n);

/* Scan v's data once: vmin/vmax, range_valid, integer_valued. Returns the
 * index of the first non-finite voxel, or -1. */
int64_t sp_volume_scan(sp_volume *v);

/* Allocate a volume of geometry g with uninitialised data (or NULL). */
sp_volume *sp_volume_alloc(const sp_geom *g);
int64_t sp_geom_nvox(const sp_geom *g);
/* Axis codes ("RAS", "LPI"...) of an affine, nibabel's aff2axcodes. */
void sp_affine_axcodes(const double a[4][4], char out[4]);

/* Write a 3D volume of dtype (SP_DT_U8, SP_DT_I16 or SP_DT_F32, data i fastest) as
 * NIfTI-1 (.nii or .nii.gz by suffix) with geometry g; atomic. */
/* As sp_nifti_write, with one NIfTI-1 header extension (code 0) holding ext
 * (NUL-terminated; NULL: none). */
sp_status sp_nifti_write_ext(const char *path, const sp_geom *g, sp_dtype dtype, const void *data, int threads,
                             const char *ext);
sp_status sp_nifti_write(const char *path, const sp_geom *g, sp_dtype dtype,
                         const void *data, int threads);
/* n bytes as ONE gzip member (zlib level; rle: Z_RLE, for label volumes),
 * chunks deflated on `threads` cores (0 = all), malloc'ed into *out (caller
 * frees). */
sp_status sp_gzip_parallel(const void *data, size_t n, int level, int rle, int threads, void **out, size_t *out_n);
#endif
