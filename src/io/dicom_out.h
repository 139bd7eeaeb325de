/* dicom_out.h — what the DICOM writers share: a structure's codes (the
 * shipped SNOMED CT table, a manifest's overrides, or segpipe's private
 * fallback), its display name, and the contours of a binary slice.
 * dicom_codes.c and contours.c are plain C; dicom_seg.cc and
 * dicom_rtstruct.cc (DCMTK) write the files; dicom_out.c ties them to the
 * public sp_labels_write_dicom(). */
#ifndef SP_DICOM_OUT_H
#define SP_DICOM_OUT_H
#include "dicom.h"

#define SP_DICOM_PRIVATE_SCHEME "99SEGPIPE"

/* one code: DICOM's Code Sequence Macro (SH, SH, LO); empty value = none */
typedef struct sp_dicom_coded {
    char scheme[17], value[17], meaning[65];
} sp_dicom_coded;

/* a structure as the writers code it */
typedef struct sp_dicom_structure {
    int label;                    /* its value in the label map */
    char name[65];                /* the model's name ("rib_left_7") */
    char display[65];             /* SegmentLabel / ROIName ("Rib left 7") */
    sp_dicom_coded category, type, modifier, region, region_modifier;
    int standard;                 /* 1: from the table or the manifest; 0: private fallback */
    uint8_t rgb[3];               /* display colour (sp_label_rgb) */
} sp_dicom_structure;

/* a row of the generated table (dicom_codes_table.h) */
typedef struct sp_dicom_codes_row {
    const char *name;
    struct { const char *scheme, *value, *meaning; } category, type, modifier, region, region_modifier;
} sp_dicom_codes_row;

#ifdef __cplusplus
extern "C" {
#endif
/* Fill s for structure `name` (label value `label`): the manifest's codes
 * (codes_json: a manifest's "dicom_codes" object as text, may be NULL)
 * first, then the shipped table, else segpipe's private code (type
 * 99SEGPIPE "S" + 8 hex digits of the name's FNV-1a hash, meaning = name;
 * category Anatomical Structure). Returns s->standard. */
int sp_dicom_structure_codes(const char *name, int label, const char *codes_json, sp_dicom_structure *s);
/* "rib_left_7" -> "Rib left 7" (underscores to spaces, first letter upper case) */
void sp_dicom_display_name(const char *name, char *out, size_t cap);
/* Number of rows in the shipped table, and row i (tests, docs). */
int sp_dicom_codes_count(void);
const sp_dicom_codes_row *sp_dicom_codes_at(int i);

/* contours.c: the boundaries of a binary slice (mask[r * w + c] != 0) as
 * closed polygons through the midpoints between inside and outside pixel
 * centres (marching squares at level 0.5, diagonal foreground pixels
 * joined), collinear points dropped. Points are (column, row) in pixels;
 * loop i is xy[2 * start[i] .. 2 * start[i + 1]). Outer boundaries and
 * holes run in opposite directions, so either the even-odd or the nonzero
 * rule fills exactly the pixels whose centres are inside. */
typedef struct sp_contours {
    int n;          /* loops */
    int *start;     /* n + 1 */
    double *xy;     /* 2 * start[n] */
} sp_contours;
sp_status sp_mask_contours(const uint8_t *mask, int w, int h, sp_contours *c);
void sp_contours_free(sp_contours *c);

/* the DCMTK writers; structures: those present, in label order */
sp_status sp_dicom_seg_write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels,
                             const sp_dicom_structure *st, int n_st, const sp_dicom_params *p, char *msg,
                             size_t cap);
sp_status sp_dicom_rtstruct_write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels,
                                  const sp_dicom_structure *st, int n_st, const sp_dicom_params *p, char *msg,
                                  size_t cap);
#ifdef __cplusplus
}
#endif
#endif
