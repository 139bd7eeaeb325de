/*
 * segpipe.h — the public API of libsegpipe.
 *
 * segpipe runs segmentation networks (ONNX, through ONNX Runtime's C API)
 * inside medical-imaging pipelines: NIfTI CT in, organ labels and a per-organ
 * "passport" out, with every stage timed.
 *
 * Conventions
 *   - Every exported name starts with sp_ / SP_. Handles are opaque.
 *   - Every fallible call returns sp_status. On failure a readable message is
 *     left for the calling thread: sp_last_error(). It is overwritten by the
 *     next failing call on that thread.
 *   - Ownership: a function that creates something (`_create`, `_load`,
 *     `_read`, `_run`) hands it to the caller, who releases it with the
 *     matching `_free`/`_release`. Pointers passed in stay owned by the caller
 *     unless the comment says otherwise. Strings returned as `const char *`
 *     live as long as the object they came from.
 *   - The library prints nothing unless asked: logs go through sp_log_*.
 */
#ifndef SEGPIPE_H
#define SEGPIPE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SP_VERSION_MAJOR 0
#define SP_VERSION_MINOR 1
#define SP_VERSION_PATCH 0
#define SP_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------ status */

typedef enum sp_status {
    SP_OK = 0,
    SP_ERR_USAGE,       /* invalid argument or option */
    SP_ERR_INPUT,       /* input data malformed, unsupported or out of limits */
    SP_ERR_MODEL,       /* model package missing, broken or inconsistent */
    SP_ERR_RUNTIME,     /* ONNX Runtime or execution failure */
    SP_ERR_IO,          /* file system error (open, read, write, rename) */
    SP_ERR_NOMEM,       /* allocation failed */
    SP_ERR_CANCELLED    /* stopped on request (Ctrl-C, sp_video_cancel) */
} sp_status;

/* Message of the last failure on this thread ("" if none). */
const char *sp_last_error(void);
/* Stable short name of a status ("ok", "input error", ...). */
const char *sp_status_str(sp_status st);
/* Exit code the CLI uses for a status (0, 2..7, 130 cancelled; see README). */
int sp_status_exit_code(sp_status st);

/* ----------------------------------------------------------------- logging */

typedef enum sp_log_level {
    SP_LOG_DEBUG = 0, SP_LOG_INFO, SP_LOG_WARN, SP_LOG_ERROR, SP_LOG_QUIET
} sp_log_level;

typedef void (*sp_log_fn)(sp_log_level level, const char *msg, void *user);
/* Messages below `level` are dropped. Default: SP_LOG_QUIET (library silent). */
void sp_log_set_level(sp_log_level level);
/* Route messages to fn (NULL: stderr). */
void sp_log_set_callback(sp_log_fn fn, void *user);

/* ------------------------------------------------------------------ timing */

#define SP_MAX_STAGES 24

typedef struct sp_stage_time {
    char name[32];
    double seconds;
} sp_stage_time;

/* Seconds per named stage, in the order stages first ran. */
typedef struct sp_timings {
    int n;
    sp_stage_time stage[SP_MAX_STAGES];
} sp_timings;

/* Monotonic clock in seconds. */
double sp_now(void);
/* Add `seconds` to stage `name` (created on first use). */
void sp_timings_add(sp_timings *t, const char *name, double seconds);
double sp_timings_total(const sp_timings *t);
/* Peak resident set size of this process in bytes (0 if unknown). */
size_t sp_peak_rss(void);

/* ----------------------------------------------------------------- runtime */

typedef struct sp_runtime sp_runtime;   /* OrtEnv + model manager */
typedef struct sp_model sp_model;       /* one loaded ONNX session (shared) */

typedef struct sp_runtime_params {
    int threads;            /* intra-op threads; 0 = number of cores */
    int inter_threads;      /* inter-op threads; 0 = 1 */
    const char *device;     /* "cpu" (default), "cuda", "cuda:N", "gpu", "gpu:N", "tensorrt"
                               (sp_device_parse) */
    int cache_optimized;    /* 1: ONNX Runtime's optimised graph cached per model in
                               $XDG_CACHE_HOME/segpipe/graphs, least recently used entries
                               removed past $SEGPIPE_CACHE_MAX_MB (default 1024); 0 here by
                               default, 1 in the CLI (docs/performance.md) */
    int no_spin;            /* 1: ORT threads sleep between ops instead of spinning
                               (leaves the cores to other pipeline threads) */
    const char *precision;  /* NULL/"auto": a CT package's fp16 model on a GPU when it
                               has one, else fp32; "fp32"; "fp16" (docs/gpu.md) */
    const char *arena;      /* NULL/"auto": each model package's choice (manifest "arena",
                               else by task, docs/performance.md); "on"; "off" */
    const char *tta;        /* NULL/"auto": a volume package's mirroring test-time
                               augmentation as its manifest's "tta.default" says (nnU-Net
                               imports: on when the checkpoint allows mirroring); "on";
                               "off" (docs/model-format.md, "Fold ensembles and mirroring") */
    int parts_on_demand;    /* 0 (default): a task package's part models (and its crop and
                               refine models) are loaded by sp_package_load and held until
                               sp_package_free: fast repeated runs (service, batches,
                               bindings). 1: sp_package_load reads and checks their
                               manifests and finds their ONNX files, and each run loads a
                               part's session when it is about to run and releases it
                               (session, arena, GPU memory) once its labels are merged: one
                               part's memory at a time, each run paying the set-up (the
                               CLI's one-input `ct`; docs/ct.md, "Task packages") */
    int one_shot;           /* 0 (default): the runtime serves many runs: on a GPU cuDNN times
                               every convolution algorithm on first use (its exhaustive
                               search: the fastest warm runs, a slower first one). 1: a
                               process that runs once (the CLI's one-input `ct`): cuDNN's
                               heuristics pick the algorithms, no search (docs/gpu.md,
                               "Provider defaults"); SEGPIPE_CUDA_OPTIONS still overrides */
} sp_runtime_params;

sp_runtime_params sp_runtime_default_params(void);

/* GPUs one process addresses (cuda:0 .. cuda:63). */
#define SP_MAX_GPUS 64
/* A device spelling: "cpu", "cuda", "cuda:N", "gpu" and "gpu:N"
 * (TotalSegmentator's), "tensorrt", "tensorrt:N". kind gets "cpu", "cuda" or
 * "tensorrt" (cap >= 9), *index N (0 when absent): CUDA's ordinal among the
 * GPUs CUDA_VISIBLE_DEVICES shows. SP_ERR_USAGE with a message otherwise. */
sp_status sp_device_parse(const char *spec, char *kind, size_t cap, int *index);
/* One device, or several GPUs for the service and workers: "cuda:0,cuda:1"
 * (CUDA GPUs, each once) or "cuda:all" / "gpu:all" (every GPU CUDA sees).
 * devs gets the names ("cuda:1"), *n their count (at most max). */
sp_status sp_device_list(const char *spec, char (*devs)[16], int max, int *n);
/* The GPUs CUDA sees (CUDA_VISIBLE_DEVICES applied), through the window
 * kernels library; 0 without it or without a GPU. */
int sp_gpu_count(void);

/* Create the process-wide runtime. Caller frees with sp_runtime_free, which
 * also releases every model still loaded. */
sp_status sp_runtime_create(const sp_runtime_params *p, sp_runtime **out);
void sp_runtime_free(sp_runtime *rt);

/* ONNX Runtime's version string ("1.29.0"). */
const char *sp_ort_version(void);
/* Comma-separated execution providers the loaded ONNX Runtime offers.
 * Writes into buf (NUL-terminated, truncated to cap). */
sp_status sp_ort_providers(char *buf, size_t cap);

/* GPU support in one line: the device, the provider and the sliding-window
 * kernels ("cuda: NVIDIA H100 80GB HBM3, window kernels loaded"), or why
 * there is none. Loads the CUDA provider to find out (about a second when
 * it is installed). Writes into buf (NUL-terminated, truncated to cap);
 * returns 1 when `--device cuda` runs CT windows on the GPU, else 0. */
int sp_gpu_status(char *buf, size_t cap);
/* Highest GPU memory in use (bytes, the whole device: this process's CUDA
 * context, ONNX Runtime's arena and the window's buffers) seen at the end of
 * a GPU sliding window in this process, the highest over its GPUs; 0 when
 * none ran. */
size_t sp_gpu_peak_memory(void);
/* The same for GPU cuda:gpu alone (the service's per-GPU metrics). */
size_t sp_gpu_peak_memory_of(int gpu);

typedef enum sp_dtype {
    SP_DT_UNKNOWN = 0, SP_DT_F32, SP_DT_F64, SP_DT_U8, SP_DT_I8, SP_DT_U16,
    SP_DT_I16, SP_DT_U32, SP_DT_I32, SP_DT_I64, SP_DT_F16, SP_DT_BOOL
} sp_dtype;
const char *sp_dtype_str(sp_dtype t);
size_t sp_dtype_size(sp_dtype t);

#define SP_MAX_RANK 8

/* A dense tensor. `data` is owned by whoever filled the struct. */
typedef struct sp_tensor {
    sp_dtype dtype;
    int rank;
    int64_t shape[SP_MAX_RANK];   /* -1 = dynamic (in model info only) */
    void *data;
} sp_tensor;

typedef struct sp_io_info {
    char name[256];               /* longer names are refused at load */
    sp_tensor meta;               /* dtype, rank, shape; data == NULL */
} sp_io_info;

/* Load (or reuse) the ONNX model at `path`. The runtime keeps one session per
 * path; every caller gets the same handle with a reference added. Release
 * with sp_model_release. Thread-safe. */
sp_status sp_model_load(sp_runtime *rt, const char *path, sp_model **out);
void sp_model_release(sp_model *m);
/* Input and output descriptions (pointer into the model; n via out params). */
const sp_io_info *sp_model_inputs(const sp_model *m, int *n);
const sp_io_info *sp_model_outputs(const sp_model *m, int *n);
/* Seconds the load took (session creation). */
double sp_model_load_seconds(const sp_model *m);
/* Stop m's runs in progress (ONNX Runtime's terminate flag), and every
 * later one: for a process shutting down (a service stopped during
 * warm-up). Safe from any thread. */
void sp_model_interrupt(sp_model *m);
/* Number of completed sp_model_run calls (for tests and metrics). */
uint64_t sp_model_run_count(const sp_model *m);

/* Run the model. inputs[i] are matched to the model inputs in order; their
 * dtype and shape are checked first (clear message on mismatch). On success
 * outputs[j] (n_out <= number of model outputs) are filled with data the
 * caller owns and frees with sp_tensor_free_data. Thread-safe. */
sp_status sp_model_run(sp_model *m, const sp_tensor *inputs, int n_in,
                       sp_tensor *outputs, int n_out);
void sp_tensor_free_data(sp_tensor *t);

/* ------------------------------------------------------- volumes (NIfTI) */

typedef struct sp_volume sp_volume;

typedef struct sp_read_params {
    uint64_t max_voxels;     /* refuse larger volumes; 0 = default (2^30) */
    const char *dicom_series; /* a DICOM folder with several series: the SeriesInstanceUID to read
                                 (NULL: SEGPIPE_DICOM_SERIES, else the only one; docs/dicom.md) */
    /* DICOM (read in a child process, docs/security.md): when non-NULL and
     * set by another thread, the read stops at once, its reader process
     * killed (SP_ERR_CANCELLED). Not owned. */
    const volatile int *cancel;
    uint64_t max_memory;     /* DICOM: refuse a series whose decoding needs more bytes (from its
                                headers, before decoding); 0 = no bound beyond the headers' own */
    /* NIfTI: called once the geometry is known from the header, before any
     * voxel is decompressed, with a volume of that geometry and no voxels
     * (only its geometry may be read: sp_volume_get_info, or
     * sp_ct_header_check below); another status than SP_OK refuses the
     * read with it. NULL: none. */
    sp_status (*check_header)(const sp_volume *header, void *user);
    void *check_user;
} sp_read_params;
sp_read_params sp_read_default_params(void);

typedef struct sp_volume_info {
    int64_t dim[3];          /* voxels along i, j, k */
    double spacing[3];       /* mm */
    double affine[4][4];     /* voxel (i,j,k,1) -> world mm (RAS+) */
    sp_dtype file_dtype;     /* datatype stored in the file */
    int qform_code, sform_code;
    const char *affine_source;  /* "sform", "qform" or "pixdim" */
    char axcodes[4];         /* orientation, e.g. "RAS", "LPS" */
} sp_volume_info;

/* Read a NIfTI-1/2 file (.nii or .nii.gz), or a DICOM series from a folder
 * (docs/dicom.md). Intensities are converted to float32 with
 * scl_slope/scl_inter (DICOM: RescaleSlope/Intercept) applied. Caller frees
 * with sp_volume_free. */
sp_status sp_volume_read(const char *path, const sp_read_params *p, sp_volume **out);
/* What `path` holds, judged from its first bytes (a folder: its listing)
 * before anything is decoded: SP_OK when it can be a volume input (NIfTI,
 * gzip-compressed NIfTI, a folder with DICOM files, a zip); else
 * SP_ERR_INPUT (SP_ERR_IO when it cannot be opened) with a message naming
 * what it is (a photo, a single DICOM file, a gzip of something else, a
 * folder of NIfTI files, a folder whose series is in a subfolder) and what
 * to give instead. The CLI and the Python package call it before loading a
 * model; sp_volume_read does not. */
sp_status sp_volume_sniff(const char *path);
/* Same, from bytes in memory (e.g. an HTTP body); `name` is used in messages. */
sp_status sp_volume_read_mem(const void *data, size_t size, const char *name,
                             const sp_read_params *p, sp_volume **out);
void sp_volume_free(sp_volume *v);
/* Resample to `shape` as scipy.ndimage.zoom (order 0: nearest, 1: linear);
 * the affine's columns are scaled by old/new size as TotalSegmentator's
 * change_spacing does (origin kept). Caller frees *out. */
sp_status sp_volume_resample(const sp_volume *v, const int64_t shape[3], int order, sp_volume **out);
/* Shape for a target spacing: round-half-even(n * old / new) per axis. */
void sp_volume_shape_for_spacing(const sp_volume *v, const double spacing[3], int64_t shape[3]);
/* Pad (centred) or crop to `shape` with `value`; world positions of kept
 * voxels are unchanged. Caller frees *out. */
sp_status sp_volume_pad(const sp_volume *v, const int64_t shape[3], float value, sp_volume **out);
/* Write as NIfTI-1 (.nii/.nii.gz): dtype SP_DT_I16 (values rounded and
 * clamped), SP_DT_U8 or SP_DT_F32. Atomic. */
sp_status sp_volume_write(const char *path, const sp_volume *v, sp_dtype dtype);
void sp_volume_get_info(const sp_volume *v, sp_volume_info *out);
/* Voxel data, float32, i fastest (NIfTI order). Owned by the volume. */
const float *sp_volume_data(const sp_volume *v);
/* A volume from memory (e.g. a numpy array): data holds dim[0]*dim[1]*dim[2]
 * float32 values, i fastest, copied; affine maps voxels to world mm (RAS+),
 * NULL for the identity; written back as sform. Non-finite values and
 * non-positive dims are refused. Caller frees *out with sp_volume_free. */
sp_status sp_volume_from_array(const float *data, const int64_t dim[3], const double affine[4][4],
                               sp_volume **out);

/* ---------------------------------------------------------- model package */

typedef struct sp_package sp_package;   /* model.onnx + segpipe.json */

/* Load the package in folder `dir`, validate the manifest, load the ONNX
 * model through the runtime and check it against the manifest. Caller
 * frees with sp_package_free. */
sp_status sp_package_load(sp_runtime *rt, const char *dir, sp_package **out);
/* sp_package_load in two steps, so that the ONNX Runtime sessions (0.1-0.5 s,
 * more on a GPU) can be made while the input is read: sp_package_open reads
 * and checks the manifest(s) and finds the ONNX files, making no session;
 * sp_package_prepare then makes (and checks against the manifest) the
 * sessions sp_package_load would have made, with its errors. prepare may
 * run on another thread, once, concurrently with the package's manifest
 * accessors and sp_ct_header_check (not with a run); it does nothing for a
 * loaded package. Prepare before the first run (sp_ct_run alone would make
 * an unprepared package's sessions for each run, and free them after). */
sp_status sp_package_open(sp_runtime *rt, const char *dir, sp_package **out);
sp_status sp_package_prepare(sp_package *pk);
void sp_package_free(sp_package *pk);
const char *sp_package_name(const sp_package *pk);
/* Number of output classes and the name of class `i` (NULL if out of range). */
int sp_package_num_classes(const sp_package *pk);
const char *sp_package_label(const sp_package *pk, int i);
/* All class names, indexed by label (sp_package_num_classes of them; owned
 * by the package). */
const char *const *sp_package_labels(const sp_package *pk);
/* The manifest's "dicom_codes" (codes per structure name, docs/dicom.md) as
 * JSON text, NULL when it has none; owned by pk. */
const char *sp_package_dicom_codes(const sp_package *pk);
/* The display colour of a label (golden-ratio hues): the NIfTI label
 * table, the preview images and the web page use it. */
void sp_label_rgb(int label, uint8_t rgb[3]);
/* The package's manifest as a JSON string (owned by the package). */
const char *sp_package_manifest_json(const sp_package *pk);
/* The package's ONNX model (borrowed; a task package's: its first part's;
 * NULL for a task package loaded with parts_on_demand, whose sessions live
 * only inside a run). */
sp_model *sp_package_model(const sp_package *pk);
/* The manifest's task ("ct", "mri", "masks" or "classify"; owned by the package). */
const char *sp_package_task(const sp_package *pk);
/* 1 for the volume tasks (a NIfTI or DICOM series in, labels out: ct, mri). */
int sp_package_is_volume(const sp_package *pk);
/* 1 when the manifest says "demo": true (a demonstration model: not for
 * real scans or photos); shown by the CLI, the passport and the service. */
int sp_package_demo(const sp_package *pk);
/* 1 when the package runs its mirrored graph (manifest "tta", chosen by
 * sp_runtime_params.tta at load), else 0. */
int sp_package_tta(const sp_package *pk);
/* A volume package's input channels (manifest input.channels: up to 8
 * images, and a cascade's previous labels one-hot). */
int sp_package_input_channels(const sp_package *pk);
/* The nnU-Net folds an imported package averages ("0,1,2,3,4", "all"),
 * from its manifest's "nnunet.folds"; "" when it says none. */
const char *sp_package_nnunet_folds(const sp_package *pk);
/* A cascade stage (nnU-Net's 3d_cascade_fullres, manifest "cascade"): the
 * number of previous-stage labels it takes as one-hot channels (0: not a
 * cascade); *image_channels the image channels it reads. Its
 * sp_ct_run_channels takes the image channels, then the previous stage's
 * label map (same grid) as one more volume. */
int sp_package_cascade(const sp_package *pk, int *image_channels);
/* Masks a "masks" package offers: count, and the name of mask i (NULL if
 * out of range; owned by the package). */
int sp_package_num_masks(const sp_package *pk);
const char *sp_package_mask_name(const sp_package *pk, int i);
/* Task packages (several part models merged under one class map, e.g.
 * TotalSegmentator's `total`; docs/model-format.md): the number of parts (0
 * for a single-model package), part i as a package (borrowed; NULL out of
 * range), and the low-resolution model --roi-subset crops with (NULL: none).
 * The package owns its parts and their sessions: all held from
 * sp_package_load to sp_package_free, or, with parts_on_demand
 * (sp_runtime_params), each loaded and released by the run that needs it;
 * such a package may still be run from several threads (a part's session is
 * shared by the runs that hold it and released after the last). */
int sp_package_num_parts(const sp_package *pk);
const sp_package *sp_package_part(const sp_package *pk, int i);
const sp_package *sp_package_roi_crop(const sp_package *pk);
/* 1 when the package writes TotalSegmentator's derived masks beside a
 * split output (its body task: body.nii.gz and skin.nii.gz;
 * sp_labels_write_derived), else 0. */
int sp_package_has_derived_masks(const sp_package *pk);
/* One inference on zeros of the package's input size (a CT patch, or a
 * model-sized photo canvas), so the first real request pays no set-up. It
 * also measures that inference's peak memory (sp_package_run_memory),
 * which resets the process's peak RSS (VmHWM) to its current RSS. */
sp_status sp_package_warm_up(sp_package *pk);
/* ONNX Runtime's working memory (activations) for one inference of the
 * package beyond its output, measured by sp_package_warm_up on a second
 * run (no set-up in it); 0 before it. */
size_t sp_package_run_memory(const sp_package *pk);
/* ONNX Runtime sessions the package's models hold now (a task package's
 * parts included; an on-demand part holds none between runs): one a model,
 * two once its one-thread session for concurrent CPU tile calls is made. */
int sp_package_sessions(const sp_package *pk);
/* The folder of the bundled models, found relative to the segpipe binary
 * or libsegpipe.so itself (installed: <prefix>/share/segpipe/models; build
 * tree: models/), or SEGPIPE_MODEL_PATH. Never a compiled-in path. */
const char *sp_models_dir(void);
/* <models dir>/<name> into out (size bytes); SP_ERR_MODEL for a name that
 * is a path (holds '/', starts with '.') or empty. */
sp_status sp_bundled_model(const char *name, char *out, size_t size);
/* Default CT model: SEGPIPE_MODEL, else the bundled demo-ct. */
const char *sp_default_model_dir(void);

/* -------------------------------------------------------------- CT pipeline */

typedef struct sp_ct_params {
    int tile_batch;          /* tiles per ORT call; 0 = auto (4, fewer for big outputs) */
    double step;             /* sliding-window step as a fraction; <=0: manifest */
    int smooth;              /* 1: resample logits linearly, then argmax */
    int largest_component;   /* 1: keep the largest 26-component per label */
    double min_component_ml; /* >0: drop components smaller than this */
    int threads;             /* CPU threads for the C stages; 0 = cores */
    int passport;            /* 1: compute the passport (default 1) */
    int keep_model_labels;   /* 1: keep the model-resolution labels in the result */
    void (*progress)(const char *stage, int done, int total, void *user);
    void *progress_user;
    /* When non-NULL, another thread may set *cancel to nonzero: the run then
     * stops at the next tile with SP_ERR_CANCELLED. Not owned. */
    const volatile int *cancel;
    uint64_t max_model_voxels; /* refuse a model grid larger than this; 0 = 2^27 (and
                                  never more than 64x the input voxels past 2^22) */
    int64_t max_tiles;       /* refuse more sliding-window tiles; 0 = 100000 */
    int keep_border;         /* statistics.json: keep the values of border-touching structures */
    int accum_fp16;          /* 1: sliding-window sums stored as IEEE half (half the memory; CPU with F16C) */
    /* Comma-separated structure names (TotalSegmentator's --roi_subset):
     * only these keep their labels and are measured; NULL or "": all. Not
     * owned; read during sp_ct_run only. A task package then runs only the
     * parts holding them and, when it has a roi_crop model, only on the box
     * that model finds around them (TotalSegmentator's way). */
    const char *roi_subset;
    /* sp_ct_run_inplace only. spill (default 1): while the network runs, the
     * input's voxels wait in an unnamed temporary file in spill_dir (NULL:
     * $TMPDIR, else /var/tmp; never on tmpfs/ramfs, where a file is memory
     * too) and their memory goes back to the kernel. Not owned. */
    int spill;
    const char *spill_dir;
    /* sp_ct_run_inplace only. 1: ct's voxels are freed once measured
     * (sp_volume_data(ct) is then NULL; the geometry stays) instead of being
     * restored: for callers that need only the geometry afterwards. */
    int release_input;
    /* 1: keep every class's probability on the input grid (softmax of the
     * Gaussian-averaged logits, resampled as logits first, as nnU-Net's
     * export): sp_ct_result_probabilities. classes x voxels float32 in
     * memory. */
    int keep_probabilities;
    /* TotalSegmentator's crop_path: a prior result (e.g. of the `total` task)
     * to take the crop box from instead of running the package's crop model,
     * for a subtask package that crops and for roi_subset on a task package.
     * crop_from: its labels, voxels as crop_from_grid (a volume from
     * sp_labels_read, which must be on ct's grid: dims and affine, else
     * SP_ERR_INPUT); crop_from_names[i]: the name of its label i
     * (crop_from_n of them, NULL entries allowed), or NULL: the ids of the
     * crop model's labels (TotalSegmentator's class_map["total"]), else the
     * task's. Every crop structure must be among the names (SP_ERR_INPUT).
     * The box and margin are as with the crop model. Not owned. */
    const uint16_t *crop_from;
    const sp_volume *crop_from_grid;
    const char *const *crop_from_names;
    int crop_from_n;
} sp_ct_params;

sp_ct_params sp_ct_default_params(void);

typedef struct sp_ct_result sp_ct_result;

/* Run the whole CT pipeline on `ct` with package `pk`. Caller frees the
 * result with sp_ct_result_free. */
sp_status sp_ct_run(sp_package *pk, const sp_volume *ct, const sp_ct_params *p,
                    sp_ct_result **out);
/* As sp_ct_run, with less memory: while the network runs, ct's voxels are
 * held in place as 16-bit integers when they are integers in that range
 * (CT in HU; half the input's memory), parked in a temporary file (p->spill)
 * and measured as integers; they are restored exactly before this returns
 * (also on error), or freed (p->release_input). An I/O error reading the
 * parked voxels back is reported and leaves ct without voxels. No other
 * thread may read ct during the call. */
sp_status sp_ct_run_inplace(sp_package *pk, sp_volume *ct, const sp_ct_params *p, sp_ct_result **out);
/* sp_ct_run_inplace for a model of several input channels (nnU-Net's
 * CASE_0000, CASE_0001, ...): ch[0..n), n the package's input channels
 * (sp_package_input_channels), every one on the same grid (dims, affine
 * within 1e-4), each normalised by its own scheme; labels and passport on
 * ch[0]'s grid, the passport measuring ch[0] (which is held as in
 * sp_ct_run_inplace; the others are only read). */
sp_status sp_ct_run_channels(sp_package *pk, sp_volume *const *ch, int n, const sp_ct_params *p, sp_ct_result **out);
/* sp_package_warm_up, then, for a volume package run on the CPU whose
 * sliding window runs a batch of tiles as concurrent calls on one-thread
 * sessions (its automatic tile batch is at least the runtime's threads),
 * one tile through that session, so the warm-up makes it and not the first
 * request. What `segpipe serve` warms its models with. */
sp_status sp_ct_warm_up(sp_package *pk);
/* Peak memory sp_ct_run_inplace(pk, ct, p) will take beyond what the
 * loaded model holds, in bytes: the largest of its phases (model grid,
 * window buffers, ONNX Runtime's working memory as measured by
 * sp_package_warm_up (0 before it), labels, the input held). An estimate
 * for admission control (allocator overheads are not in it). Fails as the
 * run would on a model grid past the limits. */
sp_status sp_ct_memory_estimate(const sp_package *pk, const sp_volume *ct, const sp_ct_params *p, size_t *bytes);
/* For sp_read_params.check_header (user: an sp_ct_check): what a CT run
 * refuses from the geometry alone (the model grid's size, the sliding
 * window's tile count) refused from the header, before the voxels are
 * decompressed (a 2 MB .nii.gz may declare 32767x32767 voxels). */
typedef struct sp_ct_check {
    const sp_package *pk;
    const sp_ct_params *params;   /* NULL: defaults */
} sp_ct_check;
sp_status sp_ct_header_check(const sp_volume *header, void *ct_check);
void sp_ct_result_free(sp_ct_result *r);
const sp_timings *sp_ct_result_timings(const sp_ct_result *r);
/* Label volume on the input grid (uint16 values, i fastest; owned by r). */
const uint16_t *sp_ct_result_labels(const sp_ct_result *r, int64_t dim[3]);
/* Labels at model resolution in the RAS-canonical grid (NULL unless
 * keep_model_labels), with that grid's dims and affine (TotalSegmentator's
 * change_spacing geometry). Owned by r. */
const uint16_t *sp_ct_result_model_labels(const sp_ct_result *r, int64_t dim[3], double affine[4][4]);
/* With keep_probabilities: *classes x the input's voxels (class k's volume
 * at k x voxels, i fastest, the input's grid), owned by r; else NULL. */
const float *sp_ct_result_probabilities(const sp_ct_result *r, int *classes);
/* The box [lo, hi) (voxels i, j, k of the input) the run was cropped to
 * (nnU-Net imports: crop to the non-zero voxels): 1; else 0 with the
 * whole grid. */
int sp_ct_result_crop_box(const sp_ct_result *r, int64_t lo[3], int64_t hi[3]);
/* nnU-Net's CASE.pkl for the case `input` that gave r: the properties dict
 * its readers and preprocessing make (sitk_stuff, nibabel_stuff, spacing,
 * shape_before_cropping, bbox_used_for_cropping,
 * shape_after_cropping_and_before_resampling) as a pickle of plain Python
 * values, which nnUNetv2_ensemble reads beside CASE.npz (docs/cli.md). */
sp_status sp_ct_result_write_nnunet_pkl(const sp_ct_result *r, const sp_volume *input, const char *path);
/* An .npz as numpy.savez_compressed writes it: one float32 array `key`
 * (C order, shape[0..rank), rank 1..8) deflated in a ZIP64 archive. */
sp_status sp_npz_write_f32(const char *path, const char *key, const float *data, const int64_t *shape, int rank);
/* Write labels (uint8, int16 past 255) with dims and affine (sform). */
sp_status sp_labels_write_affine(const char *path, const uint16_t *labels, const int64_t dim[3],
                                 const double affine[4][4]);
/* Passport JSON text (NULL if not computed; owned by r). */
const char *sp_ct_result_passport_json(const sp_ct_result *r);
typedef struct sp_passport sp_passport;
/* The passport itself (NULL if not computed; owned by r). */
const sp_passport *sp_ct_result_passport(const sp_ct_result *r);

/* Write the labels as NIfTI with the geometry of `like` (its original
 * affine, qform/sform codes). uint8 when max label <= 255, else int16.
 * Written to a temporary name and renamed. */
sp_status sp_labels_write(const char *path, const uint16_t *labels,
                          const sp_volume *like);
/* Write one binary NIfTI per class present, `<dir>/<class>.nii.gz`
 * (TotalSegmentator's --ml false layout). */
sp_status sp_labels_write_split(const char *dir, const uint16_t *labels,
                                const sp_volume *like, const sp_package *pk);
/* Beside a split output, TotalSegmentator's derived masks of a package that
 * has them (sp_package_has_derived_masks; its body task: `body.nii.gz`, the
 * body structures together, and `skin.nii.gz`, its extract_skin from the
 * CT's values); nothing for other packages. ct must still hold its voxels
 * (not released by sp_ct_run_inplace): else SP_ERR_USAGE. */
sp_status sp_labels_write_derived(const char *dir, const uint16_t *labels, const sp_volume *ct,
                                  const sp_package *pk);
/* Labels as DICOM objects that reference the series they were made from
 * (docs/dicom.md): a binary DICOM Segmentation (DCMTK dcmseg) or an RT
 * Structure Set (closed planar contours per structure and slice). Each
 * structure present gets SNOMED CT codes from segpipe's table (derived from
 * TotalSegmentator's mapping), the manifest's "dicom_codes", or else
 * segpipe's private code (99SEGPIPE, with a warning); its display name
 * ("Rib left 7") and colour. */
typedef enum sp_dicom_kind { SP_DICOM_SEG = 0, SP_DICOM_RTSTRUCT = 1 } sp_dicom_kind;
typedef struct sp_dicom_params {
    sp_dicom_kind kind;
    const char *description;   /* SeriesDescription (NULL: "segpipe labels") */
    int series_number;         /* SeriesNumber (0: 9001 for a SEG, 9002 for an RTSTRUCT) */
    const char *creator;       /* ContentCreatorName / OperatorsName, a DICOM person name
                                  ("Family^Given"; NULL: empty) */
    int deflate;               /* 1: deflated explicit VR little endian (default 0: explicit VR
                                  little endian, what every viewer and PACS reads) */
    const char *codes_json;    /* codes overriding the table: a manifest's "dicom_codes" object as
                                  JSON text (sp_package_dicom_codes; NULL: none) */
} sp_dicom_params;
sp_dicom_params sp_dicom_default_params(void);
/* Write the labels (on source's grid) as p->kind at path: patient, study and
 * frame of reference copied from the series, a new series in its study,
 * every source instance referenced. SP_ERR_USAGE when source was not read
 * from DICOM. Written to a temporary name and renamed. */
sp_status sp_labels_write_dicom(const char *path, const uint16_t *labels, const sp_volume *source,
                                const char *const *names, int n_names, const sp_dicom_params *p);
/* sp_labels_write_dicom with default params, a DICOM-SEG, `description`
 * as its SeriesDescription (may be NULL). */
sp_status sp_labels_write_dicom_seg(const char *path, const uint16_t *labels, const sp_volume *source,
                                    const char *const *names, int n_names, const char *description);
/* 1 when v was read from a DICOM series (so a DICOM-SEG can reference it). */
int sp_volume_from_dicom(const sp_volume *v);

/* --------------------------------------------------------------- passport */

typedef struct sp_passport_params {
    int threads;             /* 0 = cores */
    int components;          /* 1: count 26-connected components (default 1) */
    int keep_border;         /* statistics.json: keep border-touching values */
    const char *source;      /* free text: where labels came from */
    int not_hu;              /* 1: the intensities are not Hounsfield units (an MRI): the passport
                                says "intensity" where it says "hu" (sp_ct_run sets it for "mri"
                                packages) */
} sp_passport_params;
sp_passport_params sp_passport_default_params(void);

/* Measure every label of `labels` (uint16, geometry of `ct`) in one pass.
 * names[i] names label i (NULL or missing entries: "label_<i>"). */
sp_status sp_passport_compute(const sp_volume *ct, const uint16_t *labels,
                              const char *const *names, int n_names,
                              const sp_passport_params *p, sp_passport **out);
void sp_passport_free(sp_passport *ps);
/* passport.json text (owned by ps). */
const char *sp_passport_json(const sp_passport *ps);
/* TotalSegmentator-format statistics.json text (owned by ps). */
const char *sp_passport_statistics_json(const sp_passport *ps);
/* Human-readable table (owned by ps). */
const char *sp_passport_table(const sp_passport *ps);
/* Number of structures present / touching the border. */
int sp_passport_count(const sp_passport *ps, int *touching_border);

/* Label names stored in a label volume's NIfTI header extension (the label
 * table TotalSegmentator writes in its multilabel files): (*names)[i] is the
 * name of label i or NULL. Returns the count (largest key + 1), 0 when the
 * file has none. Caller frees each name and the array. */
int sp_volume_label_names(const sp_volume *v, char ***names);
/* As sp_labels_write, with label names (names[i] for label i, n of them,
 * NULL entries skipped) written as that same NIfTI extension. */
sp_status sp_labels_write_named(const char *path, const uint16_t *labels, const sp_volume *like,
                                const char *const *names, int n);

/* A picture to check a segmentation at a glance (PNG, written atomically):
 * axial, coronal and sagittal slices of ct through the centre of the
 * labelled region (radiological convention, window 40/400 HU), the labels
 * overlaid in colour, and a legend of the structures present (names[i] for
 * label i, n of them; NULL: numbers only). labels: ct's grid. */
sp_status sp_preview_ct_png(const char *path, const sp_volume *ct, const uint16_t *labels,
                            const char *const *names, int n);

/* Read a label volume (integer values) from NIfTI; float files with
 * non-integer values are refused. Caller frees *labels with free(). */
sp_status sp_labels_read(const char *path, const sp_read_params *p,
                         uint16_t **labels, sp_volume **geometry);

/* ----------------------------------------------------------------- images */

/* A decoded photo: 8-bit RGB, rows top to bottom, in the upright frame (EXIF
 * orientation applied). */
typedef struct sp_image {
    int width, height;
    uint8_t *rgb;             /* width * height * 3 bytes */
    int orientation;          /* EXIF orientation found in the file (1..8; 1 if none) */
    int file_width, file_height;  /* as stored, before scaling and orientation */
    int scale_denom;          /* JPEG decoded at 1/scale_denom (1, 2, 4, 8) */
    int out_width, out_height;  /* upright size results are given at: always the photo's
                                   (a photo decoded downscaled still gets full-size masks) */
    const char *format;       /* "jpeg", "png", "webp", "heif"; "memory" (sp_image_from_rgb) */
} sp_image;

typedef struct sp_image_params {
    uint64_t max_pixels;      /* decode JPEG/WebP downscaled past this (others: refuse); 0 = 50 MP.
                                 Results stay at the photo's full size, which may be at most
                                 4 x max_pixels (refused past it) */
    int min_long_side;        /* JPEG: decode downscaled while the long side stays >= this (0: full size) */
} sp_image_params;
sp_image_params sp_image_default_params(void);
/* The decoding rule for photos given to masks package pk (the CLI and the
 * service both use it): JPEGs decoded downscaled while the long side stays
 * at or above the model's input (long_side > 0 overrides it), 768 at least. */
sp_image_params sp_masks_image_params(const sp_package *pk, int long_side);

/* Decode a JPEG, PNG, WebP or HEIC/HEIF (by content, not name) with
 * libjpeg-turbo, libpng, libwebp or libheif. The pixel count is checked from
 * the header before any pixel buffer is allocated; JPEGs over max_pixels are
 * decoded at 1/2, 1/4 or 1/8 scale when that brings them under (WebP at the
 * scale that fits), other images are refused (SP_ERR_INPUT). Corrupt,
 * truncated, empty and unsupported files give SP_ERR_INPUT with a message.
 * Caller frees with sp_image_free. */
sp_status sp_image_read(const char *path, const sp_image_params *p, sp_image **out);
sp_status sp_image_read_mem(const void *data, size_t size, const char *name,
                            const sp_image_params *p, sp_image **out);
void sp_image_free(sp_image *img);
/* A photo from memory: width x height RGB pixels (3 bytes each, rows top to
 * bottom), copied; refused past the default pixel limit. Caller frees *out
 * with sp_image_free. */
sp_status sp_image_from_rgb(const uint8_t *rgb, int width, int height, sp_image **out);
/* Decode n photos in parallel on the library's thread pool (the one batch
 * decoding path of the CLI and the service): from files paths[i], or with
 * bufs non-NULL from memory bufs[i]/sizes[i] (paths, if given, name them in
 * messages). imgs[i] receives the photo or NULL; sts[i] (sts may be NULL)
 * its status, errs[i] (errs may be NULL) a copy of the error message or
 * NULL (caller frees). Returns how many were decoded. */
int sp_images_read(int n, const char *const *paths, const void *const *bufs, const size_t *sizes,
                   const sp_image_params *p, sp_image **imgs, sp_status *sts, char **errs);

/* ------------------------------------------------------------ photo masks */

typedef struct sp_masks_params {
    int long_side;            /* model input long side (dynamic models); 0 = manifest */
    const char *const *masks; /* mask names to return; NULL = all of the manifest's */
    int n_masks;
    int threads;              /* 0 = cores */
} sp_masks_params;
sp_masks_params sp_masks_default_params(void);

typedef struct sp_mask {
    const char *name;         /* owned by the package */
    uint8_t *pixels;          /* width * height, 0 or 255, upright photo frame */
    double area_fraction;
    int bbox[4];              /* x0, y0, x1, y1 inclusive; all -1 when empty */
} sp_mask;

typedef struct sp_masks_result {
    int width, height, n_masks;
    sp_mask *masks;
} sp_masks_result;

/* Peak memory one photo (size bytes at photo, read with ip) will take in
 * sp_masks_run with pk and n_masks masks (0: all), from its header alone:
 * decoded pixels, the network's tensors and working memory
 * (sp_package_run_memory), the masks at the photo's size and their PNG
 * answer, +25%. Fails on what the reader would refuse for its size or
 * could not name. An estimate for admission control. */
sp_status sp_masks_memory_estimate(const sp_package *pk, const void *photo, size_t size, const sp_image_params *ip,
                                   int n_masks, size_t *bytes);
/* Every requested mask of every image from ONE inference of the batch:
 * resize (letterbox or stretch) and normalise per the manifest, run the
 * model once on all n images, then per image upsample the class scores
 * (logits, probability, or Mask2Former queries combined as its semantic
 * inference does) bilinearly to the photo's size (out_width x out_height:
 * full size even when the JPEG was decoded smaller for speed), take one argmax, and cut
 * each mask from it (models with a fixed batch size get the photos in
 * chunks of that size). results[i] (caller frees each with
 * sp_masks_result_free, and the array with free) belong to imgs[i]. Stage
 * times are added to t (may be NULL). */
sp_status sp_masks_run(sp_package *pk, sp_image *const *imgs, int n, const sp_masks_params *p,
                       sp_masks_result ***results, sp_timings *t);
void sp_masks_result_free(sp_masks_result *r);
/* A picture of r's masks over the photo they came from (each in its colour,
 * half blended; at most 1024 px wide or high) with a legend of the masks
 * and their area shares. PNG, written atomically. */
sp_status sp_preview_masks_png(const char *path, const sp_image *img, const sp_masks_result *r);
/* A mask as an 8-bit grey PNG in memory (caller frees *png). */
sp_status sp_mask_png(const sp_mask *m, int width, int height, void **png, size_t *size);
/* The masks of r named in `only` (comma-separated; NULL or "": all) as PNGs,
 * encoded in parallel, and as the JSON object the CLI and the service answer
 * with: {"name": {"area_fraction", "bbox": [x0, y0, x1, y1], "png_base64"}, ...}.
 * *json: caller frees. pngs/png_sizes (both NULL, or arrays of r->n_masks):
 * receive each selected mask's PNG (NULL for the others); caller frees each. */
sp_status sp_masks_encode(const sp_masks_result *r, const char *only, char **json, void **pngs, size_t *png_sizes);

/* -------------------------------------------------------- classification */

typedef struct sp_classify_params {
    int top_k;                /* labels to keep, best first (default 5; 0 = all) */
    int threads;              /* preprocessing threads; 0 = cores */
} sp_classify_params;
sp_classify_params sp_classify_default_params(void);

typedef struct sp_class_score {
    int index;
    const char *label;        /* owned by the package */
    double prob;
} sp_class_score;

typedef struct sp_classify_result {
    int n_classes;
    double *probs;            /* n_classes probabilities: softmax of logits, sigmoid
                                 (multi-label models), or the model's own */
    int k;
    sp_class_score *top;      /* the k best, highest first (ties: lower index first) */
} sp_classify_result;

/* Classify n photos with a "classify" package: crop/resize/normalise per the
 * manifest, one inference per batch (chunks of the model's fixed batch
 * size), probabilities and the top K. results[i] (caller frees each with
 * sp_classify_result_free, and the array with free) belong to imgs[i].
 * Stage times ("preprocess", "inference", "postprocess") are added to t
 * (may be NULL). */
sp_status sp_classify_run(sp_package *pk, sp_image *const *imgs, int n, const sp_classify_params *p,
                          sp_classify_result ***results, sp_timings *t);
void sp_classify_result_free(sp_classify_result *r);
/* {"top": [{"label", "index", "probability"}, ...]} (caller frees). */
char *sp_classify_json(const sp_classify_result *r);

/* ------------------------------------------------------------------ video */

typedef struct sp_video sp_video;

typedef enum sp_bg_kind { SP_BG_COLOR = 0, SP_BG_IMAGE, SP_BG_BLUR } sp_bg_kind;

typedef struct sp_video_params {
    const char *input;        /* video file (FFmpeg) or folder of PNG/JPEG frames */
    const char *output;       /* video file (.mp4 .mkv .mov .avi .webm .nut) or folder of
                                 numbered frames (PNG; JPEG if it ends in .jpg); NULL: none */
    const char *roi_file;     /* one "x y w h" per frame; NULL: the whole frame */
    int batch;                /* frames per inference (0: 4) */
    int workers;              /* compositing threads (0: 2) */
    size_t max_ram;           /* frame cache + buffers budget in bytes (0: 1/4 of RAM) */
    sp_bg_kind bg;
    uint8_t bg_color[3];      /* SP_BG_COLOR */
    const char *bg_image;     /* SP_BG_IMAGE: resized to the frame size */
    int blur_radius;          /* SP_BG_BLUR: box blur radius in pixels (0: 15) */
    const char *mask;         /* logits models: the manifest mask kept as foreground (NULL: first) */
    double fps;               /* output frame rate (0: the input's; 25 for folders) */
    const char *codec;        /* encoder (NULL: by extension) */
    int quality;              /* JPEG frames / MJPEG quality (0: 92) */
    int decode_threads;       /* FFmpeg decoder threads (0: 1) */
} sp_video_params;
sp_video_params sp_video_default_params(void);

typedef struct sp_video_report {
    int64_t frames;
    int width, height, batch, workers;
    double seconds, fps;      /* wall time of the run, frames / seconds */
    /* busy milliseconds per frame, per stage (compositing summed over workers) */
    double ms_decode, ms_preprocess, ms_inference, ms_composite, ms_save;
    /* milliseconds per frame each stage waited on its input queue */
    double wait_preprocess, wait_inference, wait_composite, wait_save;
    double inference_busy;    /* share of the wall time inference was running */
    int cached;               /* 1: every frame was already in RAM (no decoding this run) */
    int64_t cache_frames;     /* frame slots (the whole video when it fits) */
    size_t cache_bytes, buffer_bytes, budget_bytes;
    char input_desc[160];
} sp_video_report;

/* Prepare a run: open the input, read and check the ROI file against the
 * frame size, load the background, size the frame cache from max_ram.
 * The package must be a "masks" model with probability or logits output
 * (the foreground probability is its alpha). Caller frees with
 * sp_video_free; pk must outlive v. */
sp_status sp_video_open(sp_package *pk, const sp_video_params *p, sp_video **out);
/* Run the threaded pipeline: decode -> preprocess -> batched inference ->
 * compositing on `workers` threads -> writer, joined by bounded queues,
 * frames written in order. `out = a * frame + (1 - a) * background` inside
 * the ROI (a: the model's alpha, bilinear to the ROI, 8-bit), the frame
 * unchanged outside. On any error or sp_video_cancel every stage stops and
 * no output file is left. When the whole video fitted in the cache, a
 * later run (e.g. with another batch or worker count, set with
 * sp_video_set) takes the frames from RAM without decoding. */
sp_status sp_video_run(sp_video *v, sp_video_report *rep);
/* Inference alone on the same frames and batch size (preprocessed before
 * the clock starts): the upper bound the pipeline is measured against.
 * Fills rep->fps, rep->seconds, rep->ms_inference. */
sp_status sp_video_infer_alone(sp_video *v, sp_video_report *rep);
/* Change batch size, workers and output between runs (output NULL: none). */
sp_status sp_video_set(sp_video *v, int batch, int workers, const char *output);
/* Ask a running sp_video_run to stop (thread-safe; from any thread, not
 * from a signal handler). The run returns SP_ERR_CANCELLED. */
void sp_video_cancel(sp_video *v);
void sp_video_free(sp_video *v);
/* The report as the seed's table (stage, ms per frame, waits, FPS). */
void sp_video_report_print(const sp_video_report *r, FILE *f);

/* ---------------------------------------------------------------- service */

typedef struct sp_serve_model {
    const char *name;        /* URL name, e.g. "demo" */
    const char *dir;         /* model package folder */
} sp_serve_model;

typedef struct sp_serve_params {
    const char *host;        /* default "127.0.0.1" (loopback) */
    int port;                /* default 8555 */
    int workers;             /* inference workers (default 1) */
    int queue;               /* bounded queue length (default 8) */
    size_t max_body;         /* bytes (default 512 MiB) */
    double timeout;          /* seconds a request may wait + run (default 600) */
    double batch_window_ms;  /* /v1/segment-batch: gather requests this long into one inference (default 10) */
    int max_batch;           /* ... at most this many (default 8, capped by the model) */
    int threads;             /* ONNX Runtime intra-op threads (0 = cores) */
    const char *device;      /* "cpu" (default) */
    const char *precision;   /* NULL/"auto", "fp32", "fp16": as sp_runtime_params */
    const sp_serve_model *models;
    int n_models;
    /* limits on what clients control (0 = the default in brackets) */
    int max_connections;     /* open connections in all [4096] */
    int max_per_ip;          /* open connections per client address [64] */
    double read_timeout;     /* seconds a connection may stay silent [15] */
    double header_timeout;   /* seconds from a connection's start (or its last answer) to a
                                request's complete headers; then it is closed [20] */
    double body_timeout;     /* seconds to receive a whole request body [120] */
    size_t max_buffered;     /* request bytes held in memory across all requests [768 MiB] */
    size_t max_json_body;    /* bytes of a JSON tensor request [16 MiB] */
    int max_jobs;            /* stored jobs and results [64] */
    size_t max_stored;       /* bytes of stored results [256 MiB] */
    double result_ttl;       /* seconds a finished job or result is kept [900] */
    uint64_t max_pixels;     /* photos: as sp_image_params.max_pixels [50 MP] */
    size_t max_memory;       /* the service's memory: CT runs wait until their estimated peak
                                (sp_ct_memory_estimate) fits, and are refused (413) when it never
                                can [80% of the machine's or the cgroup's memory] */
    /* access */
    const char *api_key_file;  /* one key per line: every request needs "Authorization: Bearer KEY" */
    int protect_health;      /* 1: health endpoints need a key too (default: open) */
    const char *tls_cert, *tls_key;   /* PEM files: serve HTTPS */
    int no_ui;               /* 1: no web page on / (docs/ui.md) */
    /* called once every model is loaded and warmed up (may be NULL) */
    void (*on_ready)(const char *url, void *user);
    void *user;
} sp_serve_params;

sp_serve_params sp_serve_default_params(void);
/* Run the HTTP service (KServe v2 + /v1/ct, see docs/service.md) until
 * SIGTERM or SIGINT: then stop accepting, finish what is in flight, return
 * SP_OK. Blocks those signals in the calling process. */
sp_status sp_serve(const sp_serve_params *p);

/* Base64 (RFC 4648) of n bytes, NUL-terminated; caller frees. NULL when out of memory. */
char *sp_base64(const void *data, size_t n);

/* Write `size` bytes to `path` atomically (temporary name + rename). */
sp_status sp_write_file_atomic(const char *path, const void *data, size_t size);

/* SHA-256 (FIPS 180-4), for provenance: an incremental hash (sp_hash_new,
 * sp_hash_add any number of times, sp_hash_hex writes 64 hex digits and a
 * NUL and frees the hash; NULL from sp_hash_new when out of memory), and a
 * whole file's hash and size (SP_ERR_IO when it cannot be read). */
typedef struct sp_hash sp_hash;
sp_hash *sp_hash_new(void);
void sp_hash_add(sp_hash *h, const void *data, size_t n);
void sp_hash_hex(sp_hash *h, char hex[65]);
sp_status sp_file_sha256(const char *path, char hex[65], uint64_t *size);

#ifdef __cplusplus
}
#endif
#endif /* SEGPIPE_H */
