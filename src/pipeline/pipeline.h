/*
 * pipeline.h — the CT pipeline's stages (internal).
 *
 * Volumes here are dense arrays with i fastest (NIfTI order) and dims[3].
 */
#ifndef SP_PIPELINE_H
#define SP_PIPELINE_H
#include "../io/volume.h"
#include "../runtime/package.h"

/* ---- reorient.c ---- */
/* An axis transform: output axis j reads input axis ax[j], flipped if fl[j]. */
typedef struct sp_ornt {
    int ax[3];
    int fl[3];
} sp_ornt;
/* nibabel's io_orientation for the closest canonical (RAS+) orientation. */
sp_status sp_ornt_to_canonical(const double affine[4][4], sp_ornt *o);
int sp_ornt_is_identity(const sp_ornt *o);
sp_ornt sp_ornt_inverse(const sp_ornt *o);
void sp_ornt_dims(const sp_ornt *o, const int64_t in[3], int64_t out[3]);
/* Output affine = in_affine @ M (M maps output voxels to input voxels). */
void sp_ornt_affine(const sp_ornt *o, const int64_t in_dim[3], const double in_aff[4][4],
                    double out_aff[4][4]);
/* Apply to data of element size es (1, 2, 4). dst has the output dims. */
void sp_ornt_apply(const sp_ornt *o, const void *src, const int64_t in_dim[3], void *dst,
                   size_t es, sp_pool *pool);

/* ---- resample.c ---- */
/* scipy.ndimage.zoom output size along one axis: round-half-even(n * zoom). */
int64_t sp_zoom_size(int64_t n, double zoom);
/* Linear (order 1, mode 'nearest', corners aligned) resampling of float data
 * from in_dim to out_dim, as scipy.ndimage.zoom(order=1). */
void sp_resample_linear(const float *src, const int64_t in_dim[3], float *dst,
                        const int64_t out_dim[3], sp_pool *pool);
/* ---- resample_nnunet.c ---- */
/* nnU-Net's resampling of image data (order 3; separate z, order 0, when
 * one axis is over 3x coarser), from in_dim at in_sp mm to out_dim at out_sp. */
sp_status sp_resample_nnunet(const float *src, const int64_t in_dim[3], const double in_sp[3],
                             const double out_sp[3], float *dst, const int64_t out_dim[3], sp_pool *pool);
/* Model-grid labels (canonical orientation, mdim) to the native grid ndim:
 * nearest resampling to the canonical grid, then orientation o undone, in
 * one pass (o: native -> canonical, as sp_ornt_to_canonical gives). */
sp_status sp_labels_to_native(const uint16_t *lab_m, const int64_t mdim[3], const sp_ornt *o,
                              const int64_t ndim[3], uint16_t *dst, sp_pool *pool);
/* Nearest neighbour (order 0) resampling of uint16 labels, as
 * scipy.ndimage.zoom(order=0, mode='nearest'). */
void sp_resample_nearest_u16(const uint16_t *src, const int64_t in_dim[3], uint16_t *dst,
                             const int64_t out_dim[3], sp_pool *pool);
void sp_resample_nearest_f32(const float *src, const int64_t in_dim[3], float *dst,
                             const int64_t out_dim[3], sp_pool *pool);

/* ---- conform.c ---- */
/* The affine of the conformed grid (n^3 voxels of mm, LIA) for a volume of
 * dims dim and affine aff, as nibabel.processing.conform. */
sp_status sp_conform_affine(const double aff[4][4], const int64_t dim[3], int64_t n, double mm, double out[4][4]);
/* src (dim, aff) -> dst (odim, caff): trilinear, 0 outside the input. */
sp_status sp_conform_volume(const float *src, const int64_t dim[3], const double aff[4][4], const double caff[4][4],
                            const int64_t odim[3], float *dst, sp_pool *pool);
/* labels on the conformed grid -> the input grid, nearest neighbour. */
sp_status sp_conform_labels_back(const uint16_t *lab, const int64_t odim[3], const double caff[4][4],
                                 const double aff[4][4], const int64_t dim[3], uint16_t *dst, sp_pool *pool);

/* ---- normalize.c ---- */
/* inverse(from) @ to: voxel of `to` -> voxel of `from` */
sp_status sp_affine_between(const double from[4][4], const double to[4][4], double m[4][4]);

/* ---- conform_niimath.c: brainchop's conform (niimath -conform -odt char) ---- */
sp_status sp_conform_niimath_affine(const double aff[4][4], const int64_t dim[3], int64_t n, double mm,
                                    double out[4][4]);
sp_status sp_conform_niimath_volume(const float *src, const int64_t dim[3], const double aff[4][4],
                                    const double caff[4][4], const int64_t odim[3], double f_high, float *dst,
                                    sp_pool *pool);
/* keep the largest 26-connected component of all non-zero labels together */
sp_status sp_components_largest_fg(uint16_t *labels, const int64_t dim[3]);

void sp_normalize(float *x, int64_t n, const sp_norm *nm, sp_pool *pool);

/* ---- window.c ---- */
typedef struct sp_window_params {
    int64_t patch[3];        /* network axis order */
    int axes[3];             /* network dim d <- volume axis axes[d] */
    double step;             /* fraction of the patch, e.g. 0.5 */
    double sigma_scale;      /* 1/8 */
    int tile_batch;
    int num_classes;
    /* A split head (tools/import/onnx_split_head.py): the network gives
     * head_features channels, accumulated as they are; the argmax takes
     * head_w (num_classes x head_features) times them plus head_b times the
     * weight sum. head_w NULL: the network gives the logits. */
    const float *head_w, *head_b;
    int head_features;
    int accum_fp16;          /* 1: accumulator stored as IEEE half (F16C) */
    int64_t max_tiles;       /* refuse more tiles than this; 0 = no limit */
    const volatile int *cancel;   /* non-NULL and set: stop at the next tile */
    int in_channels;         /* input channels, each a whole volume after the previous (0 = 1) */
    /* region-based (nnU-Net): num_classes region logits; a voxel's label is
     * region_order[i] of the last i whose averaged logit is > 0, else 0 */
    const int *region_order;
} sp_window_params;
sp_status sp_components_keep_largest_of(uint16_t *labels, const int64_t dim[3], const uint16_t *set, int n);

/* ---- crop.c: nnU-Net's crop to the non-zero region and its mask ---- */
int sp_nonzero_box(sp_volume *const *v, int n, int64_t lo[3], int64_t hi[3]);
sp_volume *sp_volume_crop(const sp_volume *v, const int64_t lo[3], const int64_t hi[3]);
int sp_fill_holes(uint8_t *mask, const int64_t d[3]);
void sp_zscore_masked(float *x, const uint8_t *mask, size_t n);

/* nnU-Net's compute_steps_for_sliding_window for one axis: the count (the
 * steps written to out unless it is NULL), or -1 when it would exceed cap. */
int sp_window_steps(int64_t image, int64_t tile, double step, int64_t *out, int cap);
/* nnU-Net's Gaussian importance map (value scaling 10, zeros -> min). */
float *sp_gaussian_map(const int64_t patch[3], double sigma_scale);
/* 1 when this CPU can hold the accumulator in IEEE half (F16C + AVX). */
int sp_window_half_available(void);
/* Bytes sp_window_run allocates for a volume of vdim (tiles in and out,
 * the accumulator, the weight sum), ONNX Runtime's own working memory not
 * included; keep_logits: the caller keeps every class's logits (--smooth). */
size_t sp_window_memory(const sp_window_params *wp, const int64_t vdim[3], int keep_logits);
/* Sliding-window inference over vol (dims vdim, i fastest) with model m;
 * labels (vdim, i fastest) receive the argmax. With logits non-NULL (C x
 * nvox, volume layout) the full accumulator is kept and the Gaussian-
 * averaged logits are written there too. Adds "inference" (ORT) and
 * "window" (tiling, accumulation, argmax) times to t. */
sp_status sp_window_run(sp_model *m, const float *vol, const int64_t vdim[3],
                        const sp_window_params *wp, uint16_t *labels, float *logits, sp_pool *pool,
                        sp_timings *t, void (*progress)(const char *, int, int, void *),
                        void *progress_user);

/* ---- window_calls.c: a CPU batch of tiles as concurrent single-tile calls ---- */
#define SP_WINDOW_MAX_CALLS 64
/* 0 when SEGPIPE_TILE_CALLS=batched (one batched call, as before) or an
 * INT8 calibration run (SEGPIPE_CALIBRATE) asks for one call per batch. */
int sp_window_calls_wanted(void);
/* 1 when a batch of nb tiles through m runs as concurrent single-tile calls
 * (a CPU session, calls wanted, 2..SP_WINDOW_MAX_CALLS tiles) */
int sp_window_calls_used(const sp_model *m, int nb);
/* 1 when those nb calls run on the model's one-thread session: at least as
 * many calls as threads, and more than one thread (on one, the model's own
 * session already runs each call on its caller) */
int sp_window_calls_solo(const sp_model *m, int nb);
/* nb tiles (in: nb x Cin x P, out: nb x C x P, contiguous) through the
 * model, one call per tile, all at once. */
sp_status sp_window_run_calls(sp_model *m, float *in, float *out, int nb, int Cin, int C, const int64_t P[3]);

/* ct.c: the tile batch of a run that sets none (4, fewer for big heads),
 * and the channels a tile's output holds (classes, regions, or a split
 * head's features) */
int sp_ct_auto_tile_batch(const sp_package *pk);
int sp_ct_tile_channels(const sp_package *pk);

/* ---- window_gpu.c ---- */
typedef struct sp_tile {
    int64_t s[3];            /* start in padded network coordinates */
} sp_tile;
/* What window.c planned, for the GPU path: network dims, patch, low
 * padding, volume strides per network dim, classes, tiles per run. */
typedef struct sp_window_plan {
    int64_t N[3], P[3], pad[3], vst[3];
    int C, batch, ntiles;
    const sp_tile *tiles;
} sp_window_plan;
/* 1 when libsegpipe_cuda.so loaded and found a device (loaded once). */
int sp_window_gpu_available(void);
/* Why the kernels are not available ("" when they are). */
const char *sp_window_gpu_error(void);
/* The GPU device's name ("" when none). */
const char *sp_window_gpu_name(void);
/* The sliding window with the volume, tiles, logits, accumulator and argmax
 * on the GPU; only the labels come back. Times "upload", "window",
 * "inference", "download". */
sp_status sp_window_run_gpu(sp_model *m, const float *vol, const sp_window_plan *pl, const sp_window_params *wp,
                            uint16_t *labels, sp_timings *t, void (*progress)(const char *, int, int, void *),
                            void *progress_user);

/* Smooth labels: argmax of the class logits (C x model grid) resampled
 * linearly to the native grid, computed per native voxel over the classes
 * that win at its 8 model-grid neighbours (never holding native-resolution
 * per-class logits). */
void sp_smooth_labels(const float *logits, const uint16_t *lab_m, int C, const int64_t mdim[3],
                      uint16_t *dst, const int64_t odim[3], sp_pool *pool);

/* ---- components.c ---- */
/* Keep only the largest 26-connected component of each label (keep_largest)
 * and/or remove components smaller than min_voxels. */
sp_status sp_components_filter(uint16_t *labels, const int64_t dim[3], int keep_largest,
                               int64_t min_voxels);
/* The 6-connected components (scipy.ndimage.label's default) of label l
 * only: its largest kept (keep_largest; TotalSegmentator's
 * keep_largest_blob) and/or those under min_voxels removed (its
 * remove_small_blobs); the dropped voxels become 0. */
sp_status sp_components_label_blobs(uint16_t *labels, const int64_t dim[3], uint16_t l, int keep_largest,
                                    int64_t min_voxels);
/* ---- body_skin.c ---- */
/* TotalSegmentator's derived masks of its body task: body = labels l with
 * is_body[l] (l < nlab), skin = extract_skin(ct, body); both nv bytes. */
sp_status sp_body_skin(const uint16_t *labels, const float *ct, const int64_t dim[3], const uint8_t *is_body,
                       int nlab, uint8_t *body, uint8_t *skin);
/* ---- vertebrae_pp.c ---- */
/* TotalSegmentator's postprocess_vertebrae_pp on model-grid labels (labels
 * 1..nlab-1 the task's, c1/l5 its vertebrae_C1/_L5, spacing in mm per axis of
 * the RAS-canonical grid, k the superior axis): touching labels relabelled
 * by component height, components under min_mm3 dropped, every label then
 * dilated by dilation_mm into background. */
sp_status sp_vertebrae_pp(uint16_t *labels, const int64_t dim[3], const double spacing[3], int nlab, uint16_t c1,
                          uint16_t l5, double min_mm3, double dilation_mm);
/* TotalSegmentator's refine_vertebrae_pp_with_body_mask on the input grid:
 * labels 1..nlab-1 dilated by dilation_mm (as above, with the input's
 * spacing), then 0 wherever mask is not keep. */
sp_status sp_vertebrae_refine(uint16_t *labels, const int64_t dim[3], const double spacing[3], int nlab,
                              const uint16_t *mask, uint16_t keep, double dilation_mm);
/* Connected components counted beforehand: counts[l], largest[l] for l < n. */
typedef struct sp_comp_counts {
    int n;
    int64_t *counts, *largest;
} sp_comp_counts;
/* sp_passport_compute with the voxels read from hu (int16, the volume's
 * grid) instead of ct->data when hu is not NULL (ct gives the geometry and
 * value range), and the components taken from pre when not NULL. */
sp_status sp_passport_compute_ext(const sp_volume *ct, const int16_t *hu, const uint16_t *labels,
                                  const char *const *names, int n_names, const sp_passport_params *p,
                                  const sp_comp_counts *pre, sp_passport **out);
/* Mark a passport as made by a demo model ("demo_model": true and a note,
 * before "structures"). */
sp_status sp_passport_mark_demo(sp_passport *ps);
/* Count 26-connected components per label; counts[l], largest[l] sized
 * nlabels. */
sp_status sp_components_count(const uint16_t *labels, const int64_t dim[3], int nlabels,
                              int64_t *counts, int64_t *largest);
/* ---- preview.c ---- */
/* One row of a model input from an RGB rectangle (masks.c; used by video.c). */
void sp_prep_row(const sp_manifest *mf, const uint8_t *rgb, int stride, int x0, int y0, int w, int h,
                 float *dst, size_t plane, int Wc, int rw, int rh, int y);
/* ---- roi_crop.c (TotalSegmentator's crop for --roi-subset) ---- */
/* The box [lo, hi) around the voxels whose label l has want[l] (l < nwant),
 * widened by addon_mm / spacing voxels per side and clipped; 0: none found. */
int sp_roi_box(const uint16_t *labels, const int64_t dim[3], const uint8_t *want, int nwant,
               const double addon_mm[3], const double spacing[3], int64_t lo[3], int64_t hi[3]);
/* A copy of v's voxels in the box, its affine moved to the box's first voxel. */
sp_status sp_volume_crop_box(const sp_volume *v, const int64_t lo[3], const int64_t hi[3], sp_volume **out);
/* Labels of the box (NULL: none) back into a zeroed dim-sized map (*out, caller frees). */
sp_status sp_labels_uncrop(const uint16_t *crop, const int64_t lo[3], const int64_t hi[3], const int64_t dim[3],
                           uint16_t **out);
/* A prior result given to crop from (sp_ct_params.crop_from) on the input's
 * grid: the same dims and affine, else SP_ERR_INPUT. */
sp_status sp_crop_from_check(const sp_volume *ct, const sp_volume *grid);
/* *want (n entries, caller frees): want[l] when names[l] is a crop
 * structure: the subtask's crop.structures, else a task label kept by
 * --roi-subset (keep). strict (1: a prior result's names, 2: the crop
 * model's): every crop structure must be among names, else SP_ERR_INPUT
 * (SP_ERR_USAGE for 2) naming it. */
sp_status sp_crop_want_names(const sp_manifest *mf, const uint8_t *keep, const char *const *names, int n,
                             int strict, uint8_t **want);
/* As sp_crop_want_names for the structures of "crop.remove_outside". */
sp_status sp_outside_want(const sp_manifest *mf, const char *const *names, int n, int strict, uint8_t **want);
/* TotalSegmentator's remove_outside_of_mask: labels outside mask dilated
 * `iterations` times with 6-neighbour steps (scipy's binary_dilation) become
 * 0; iterations < 1 dilates until nothing changes (an empty mask removes all). */
sp_status sp_remove_outside(uint16_t *labels, const uint8_t *mask, const int64_t dim[3], int iterations);
#endif
