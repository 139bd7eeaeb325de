/* package.h — model package internals (manifest, see docs/model-format.md). */
#ifndef SP_PACKAGE_H
#define SP_PACKAGE_H
#include "../core/core.h"
#include <limits.h>
#include <pthread.h>

/* A manifest's intensity normalisation (applied by pipeline/normalize.c). */
typedef enum { SP_NORM_NONE, SP_NORM_CT, SP_NORM_ZSCORE, SP_NORM_MINMAX, SP_NORM_QUANTILE } sp_norm_scheme;
typedef struct sp_norm {
    sp_norm_scheme scheme;
    double lo, hi, mean, std; /* quantile: lo, hi = the quantiles (0..1), mean = eps */
    int use_mask;             /* zscore "mask": "nonzero": over nnU-Net's non-zero mask only */
} sp_norm;

#define SP_MAX_CHANNELS 72   /* input channels of a volume model: 8 images (CASE_0000 ... _0007), a cascade's 64 labels */
#define SP_MAX_MASKS 32
#define SP_MAX_PARTS 16
#define SP_MAX_MASK_CLASSES 64
enum { SP_OUT_LOGITS, SP_OUT_PROB, SP_OUT_M2F, SP_OUT_SIGMOID };

typedef struct sp_manifest {
    int version;
    char name[64], task[16], onnx[128], onnx_fp16[128], onnx_int8[128], input_name[64], output_name[64];
    int demo;                 /* "demo": true: a demonstration model, not for real scans or photos */
    /* "tta": the same network with mirroring test-time augmentation baked in
     * (tools/import/import_nnunet.py): its ONNX files, whether it runs by
     * default, and the mirrored network dims (informative). tta_onnx[0] 0: none */
    char tta_onnx[128], tta_onnx_fp16[128];
    int tta_default, tta_axes[3], tta_naxes;
    int tta_used;             /* set at load: the package's session is the mirrored graph */
    char folds[64];           /* "nnunet": {"folds": [...]} joined by commas, or "" */
    int channels;
    int arena;                /* "arena": 1 on, 0 off, -1 not said (by task) */
    int resampled_int32;      /* "resampled_int32": the model-grid CT truncated toward zero, as
                                 TotalSegmentator's change_spacing(dtype=np.int32) before nnU-Net */
    int resample_nnunet;      /* "resample": "nnunet": normalised, then nnU-Net's order-3 resampling */
    double spacing[3];        /* mm, network axis order */
    int64_t patch[3];         /* network axis order */
    int axes[3];              /* network dim d <- canonical volume axis axes[d] */
    sp_norm norm;             /* channel 0's (the only one of a 1-channel model) */
    sp_norm norms[SP_MAX_CHANNELS];   /* each input channel's: "normalization" as an array */
    double step, sigma_scale;
    int64_t conform_n;        /* >0: conform to conform_n^3 voxels of conform_mm, LIA (brain MRI) */
    double conform_mm;
    int conform_niimath;      /* conform.style "niimath": brainchop's conform (conform_niimath.c) */
    double conform_fhigh;     /* its robust-range fraction (0.98) */
    /* "regions": {"class_order": [c0, c1, ...]} (nnU-Net's region-based
     * models): the network gives one logit per region; a voxel gets c_i of
     * the last region i whose sigmoid is over 0.5 (logit > 0), else 0 */
    int n_regions;
    int region_order[64];
    /* "postprocess": {"nnunet": [[labels], ...]}: nnU-Net's postprocessing.pkl,
     * each set's largest component kept (in order), after the labels are final */
    int pp_n, pp_len[32];
    uint16_t pp_set[32][64];
    /* "cascade": {"image_channels": C, "labels": [l, ...]}: a 3d_cascade_fullres
     * stage: inputs are C image channels and the previous stage's label map,
     * which becomes one channel (0/1) per listed label after the images */
    int casc_img, casc_n;
    uint16_t casc_lab[64];
    int crop_nonzero;         /* "crop_nonzero": true: predict inside the box of voxels non-zero in any
                                 channel, label 0 outside (nnU-Net's crop_to_nonzero) */
    int largest_fg;           /* postprocess.largest_component "foreground": keep the largest
                                 26-connected component of all non-zero labels together */
    int num_classes;
    char **labels;            /* num_classes names */
    char *dicom_codes;        /* "dicom_codes" as JSON text (docs/dicom.md), NULL: none */
    /* "head" (tools/import/onnx_split_head.py): the network ends at head_features
     * channels; logits = head_w (num_classes x head_features) f + head_b,
     * applied by the window after accumulation. head_w NULL: no head. */
    char head_file[128];
    int head_features;
    /* "meshnet": brainchop's MeshNet weights for the native CPU executor
     * (runtime/meshnet.c, tools/import/meshnet_bin.py); "" none */
    char meshnet[128];
    float *head_w, *head_b;
    /* task "masks" */
    int in_h, in_w;           /* fixed model input (0: dynamic) */
    int letterbox, long_side;
    /* upstream conventions (docs/masks.md, "Same masks as the model's own
     * library"): resize sampling at x * src/dst (corner) instead of pixel
     * centres; the resized photo rounded to uint8 before normalising; the
     * probability truncated to uint8 (x 255) before the corner-sampled
     * resize back; masks as 8-bit alpha instead of 0/255 */
    int sample_corner, round_input;
    int out_trunc8, out_corner, out_alpha;
    /* task "classify": resize "crop" (centre crop_fraction of the shorter
     * side, as torchvision's Resize + CenterCrop), "stretch" or "letterbox" */
    int crop;
    double crop_fraction;
    int bgr;                  /* channels in B, G, R order */
    double pix_scale, mean[3], std[3];
    int out_kind;
    double threshold;
    char class_output[64], mask_output[64];
    /* task packages (docs/model-format.md, "Task packages"): parts run on the
     * shared model grid and merged, later parts overwriting where they
     * predict anything but background; part_map[i][j] = task label of part
     * i's label j. crop_dir: the low-resolution model --roi-subset crops with. */
    int n_parts;
    char part_dir[SP_MAX_PARTS][64];
    uint16_t *part_map[SP_MAX_PARTS];
    int part_map_n[SP_MAX_PARTS];
    char crop_dir[64];
    double crop_addon[3];     /* mm added on each side of the crop's box */
    /* "crop" (a subtask's rule, instead of "roi_crop"): every run is cropped
     * to the box of these crop-model structures; crop_want[l]: the crop
     * model's label l is one of them (set when the package loads) */
    int n_crop_names;
    char **crop_names;
    uint8_t *crop_want;
    /* "crop"."remove_outside" (TotalSegmentator's remove_outside): after the
     * run, labels outside these crop-model structures, dilated by
     * outside_mm / mean voxel size (6-connected steps), become 0 */
    int n_outside;
    char **outside_names;
    double outside_mm;
    /* "blobs": TotalSegmentator's task cleanups on the model grid after the
     * merge, in order: label blob_label[i], its largest 6-connected blob
     * kept (blob_largest) or its blobs of at most blob_max_mm3 removed */
    int n_blobs;
    uint16_t blob_label[16];
    int blob_largest[16];
    double blob_max_mm3[16];
    /* "vertebrae_pp": TotalSegmentator's postprocess_vertebrae_pp after the
     * blobs (vpp set): labels vpp_c1 (vertebrae_C1), vpp_l5 (vertebrae_L5),
     * components under vpp_min_mm3 dropped, dilation of vpp_mm */
    int vpp;
    /* "derived_masks": "body": TotalSegmentator's derived masks of its body
     * task beside a split output (body = body_trunc + body_extremities, skin) */
    int derived_body;
    /* "refine" (TotalSegmentator's refine_vertebrae_pp_with_body_mask): the
     * model in refine_dir runs on the whole input; on the input grid the
     * labels are dilated by refine_mm, then kept where its labels are
     * refine_keep */
    char refine_dir[64];
    uint16_t refine_keep;
    double refine_mm;
    uint16_t vpp_c1, vpp_l5;
    double vpp_min_mm3, vpp_mm;
    int n_masks;
    char mask_name[SP_MAX_MASKS][64];
    int mask_cls[SP_MAX_MASKS][SP_MAX_MASK_CLASSES], mask_ncls[SP_MAX_MASKS];
} sp_manifest;

struct sp_package {
    char dir[PATH_MAX];
    char *json;
    sp_manifest mf;
    sp_model *model;          /* task packages: the first part's (not owned) */
    struct sp_package *part[SP_MAX_PARTS], *crop;
    struct sp_package *refine;   /* "refine": the mask model (TotalSegmentator's vertebrae_body) */
    size_t run_bytes;   /* ONNX Runtime's working memory for one inference beyond its output, measured by
                           sp_package_warm_up (0: not measured) */
    /* A task package's part, crop or refine model loaded with parts_on_demand:
     * model is NULL between runs; sp_package_acquire loads it from onnx_path
     * through rt (borrowed) for a run, sp_package_unacquire releases it after
     * the last run holding it (users, under mu). A package opened with
     * sp_package_open defers its own (or its parts') sessions the same way;
     * prepared: sp_package_prepare holds one use until sp_package_free. */
    int on_demand, users, prepared;
    sp_runtime *rt;
    char onnx_path[PATH_MAX];
    pthread_mutex_t mu;
};

sp_status sp_manifest_parse(const char *text, const char *file, sp_manifest *mf);
void sp_manifest_clear(sp_manifest *mf);
sp_status sp_manifest_check_model(const sp_manifest *mf, const sp_model *m, const char *dir);

/* The session of an on-demand model (struct sp_package.on_demand) for one
 * run: loaded by the first holder and checked against the manifest, released
 * by the last; both do nothing for a package whose session is always held. */
sp_status sp_package_acquire(sp_package *pk);
void sp_package_unacquire(sp_package *pk);
/* The runtime the package's sessions are (or will be) made with: its
 * model's, an on-demand model's rt, a task package's first part's. */
const sp_runtime *sp_package_runtime(const sp_package *pk);

/* task packages (task_package.c) */
struct cJSON;
sp_status sp_manifest_parse_parts(const struct cJSON *j, const char *file, sp_manifest *mf);
/* After package.c loaded the parts and crop model: what merging needs of
 * them; then the top manifest takes the first part's grid. */
sp_status sp_task_check_parts(sp_package *pk);
int sp_task_part_needed(const sp_manifest *mf, int i, const uint8_t *keep);
/* The label named name in the package's class map, -1 if none. */
int sp_package_label_of(const sp_package *pk, const char *name);
#endif
