/*
 * ct_cmd.c — `segpipe ct` and `segpipe mri`: one volume (or a shard of a
 * list) through the CT pipeline. Each command has its own help; options go
 * through the table parser (args.c), which also answers TotalSegmentator's
 * spellings. The input is checked before any work (what it is, 2D, no
 * orientation, intensities that do not look like the modality), and
 * nothing is written when it is refused; the output's folder is made when
 * missing, before the network runs.
 */
#include "cli.h"

#include <limits.h>
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void ct_help(const ct_opts *o)
{
    if (o->mri)
        printf("usage: segpipe mri INPUT.nii[.gz] -o OUTPUT --model DIR [options]\n"
               "Brain MRI segmentation with a conformed model package (brainchop's MeshNet:\n"
               "tools/import/make_brainchop_package.py builds it). The passport reports intensities\n"
               "(not HU). Options as segpipe ct:\n"
               "  -o, --output PATH        labels .nii.gz (with --split: a folder)\n"
               "  -m, --model DIR          the MRI model package (required)\n");
    else
        printf("usage: segpipe ct INPUT.nii[.gz]|DICOM_FOLDER|SERIES.zip -o OUTPUT [options]\n"
               "  -o, --output PATH        labels .nii.gz (with --split: a folder); its folder is made\n"
               "  -m, --model DIR          model package (default: %s); mri: also a bundled name\n"
               "                           (dk104) or a chain A,B (A's brain mask before B; docs/mri.md)\n",
               sp_default_model_dir());
    printf("  -i INPUT                 the input (TotalSegmentator's spelling; or give it plainly)\n"
           "  -t, --threads N          CPU threads (default: all cores)\n"
           "      --device D           cpu, cuda, cuda:N, gpu or gpu:N (TotalSegmentator's spelling)\n"
           "      --precision P        auto (fp16 model on a GPU when the package has one), fp32, fp16,\n"
           "                           int8 (the package's onnx_int8 on the CPU; docs/performance.md)\n"
           "      --tta / --no-tta     mirroring test-time augmentation on or off (default: the\n"
           "                           package's, as nnU-Net's predictor; --disable-tta = --no-tta)\n"
           "      --series UID         a DICOM folder with several series: the one to read\n"
           "      --tile-batch N       tiles at a time (default: auto, 4 when the logits of 4\n"
           "                           tiles fit in 256 MB, else fewer; on 4+ CPU threads 4 when\n"
           "                           the memory allows); on the CPU they run as N\n"
           "                           concurrent calls, on a GPU as one batched call\n"
           "      --step F             sliding-window step (default: manifest, 0.5)\n"
           "      --split              one <class>.nii.gz per class in folder OUTPUT (TotalSegmentator's\n"
           "                           body task also body.nii.gz and skin.nii.gz, unless\n"
           "                           --no-derived-masks)\n"
           "      --smooth             labels back from linearly resampled logits (not nearest)\n"
           "      --largest-component  keep the largest component of each label\n"
           "      --min-component-ml X remove components smaller than X ml\n"
           "      --report FILE        JSON run report (stage times, memory, input geometry)\n"
           "      --no-passport        skip the passport and statistics\n"
           "      --statistics         accepted (TotalSegmentator's -s): statistics are written anyway\n"
           "      --preview FILE.png   axial/coronal/sagittal slices with the labels and a legend\n"
           "      --keep-border        statistics.json keeps structures that touch the scan's edge\n"
           "                           (TotalSegmentator reports them as 0)\n"
           "      --roi-subset A,B,... only these structures are labelled and measured\n"
           "                           (--roi_subset A B ... as TotalSegmentator spells it)\n"
           "      --crop-from PATH     crop with a prior result of the scan instead of running the\n"
           "                           package's crop model (a subtask, or --roi-subset): a label\n"
           "                           file (TotalSegmentator's --ml output, segpipe's) or a folder\n"
           "                           of <structure>.nii.gz masks (TotalSegmentator's --crop_path,\n"
           "                           also taken as --crop-path)\n"
           "      --accumulator fp32|fp16  sliding-window sums in float or half (half the memory)\n"
           "      --spill-dir DIR      while the network runs, the input waits in an unnamed file\n"
           "                           there (default: $TMPDIR, else /var/tmp; never on tmpfs)\n"
           "      --no-spill           keep the input in memory while the network runs\n"
           "      --inputs LIST        one input per line (relative lines: from LIST's folder);\n"
           "                           with -o OUTDIR: OUTDIR/<name>.nii.gz each\n"
           "      --jobs N             with --inputs: N cases at a time (1-8, default 1), sharing the\n"
           "                           model: one case is read/written while another's network runs\n"
           "      --shard I/N          with --inputs: only lines k with k mod N = I (job arrays);\n"
           "                           inputs already done are skipped; report OUTDIR/shard-I-of-N.json\n"
           "      --output-type T      nifti (default), or for a DICOM input dicom-seg (alias dicom) or\n"
           "                           dicom-rtstruct: a DICOM-SEG / RT Structure Set referencing the\n"
           "                           series, in its study (OUTPUT ends in .dcm; docs/dicom.md)\n"
           "      --dicom-description S  its SeriesDescription (default: segpipe MODEL)\n"
           "      --dicom-series-number N  its SeriesNumber (default: 9001 SEG, 9002 RTSTRUCT)\n"
           "      --dicom-creator NAME   ContentCreatorName / OperatorsName (DICOM person name, Family^Given)\n"
           "      --dicom-deflate      deflated transfer syntax (default: explicit VR little endian)\n"
           "      --no-cache-graph     do not keep ORT's optimised graph (default: kept in\n"
           "                           $XDG_CACHE_HOME/segpipe/graphs, keyed by model bytes, settings and\n"
           "                           ORT version, at most $SEGPIPE_CACHE_MAX_MB, default 1024)\n"
           "      --arena auto|on|off  ONNX Runtime's memory arena (auto: the model package's choice)\n"
           "      --parts on-demand|resident  a task package's part models: each loaded when it runs\n"
           "                           and released after its labels are merged (on-demand, the\n"
           "                           default: one part's memory at a time), or all loaded first\n"
           "                           (resident; --inputs and the service always hold them)\n"
           "      --save-model-labels F  also write the labels at model resolution (canonical grid)\n"
           "  -q, --quiet / -v, --verbose  no tables or notes (warnings still said) / more detail\n"
           "Writes OUTPUT, and beside it <stem>.passport.json and <stem>.statistics.json\n"
           "(with --split: passport.json and statistics.json inside the folder). Nothing is\n"
           "written when the input is refused. Exit codes: docs/cli.md.\n");
}

static int opt_threads(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    if (cli_int(cmd, "--threads", v, 0, 1024, &o->cp.threads))
        return 2;
    o->rp.threads = o->cp.threads;
    return 0;
}

/* cpu, cuda, tensorrt; TotalSegmentator's gpu and gpu:N (and cuda:N): the
 * library's spellings (sp_device_parse), checked here so that a bad one is
 * a usage error before any work */
static int opt_device(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    char kind[16];
    int idx;
    if (strlen(v) >= sizeof o->device || sp_device_parse(v, kind, sizeof kind, &idx))
        return cli_usage_error(cmd, "--device is cpu, cuda, cuda:N, gpu or gpu:N");
    snprintf(o->device, sizeof o->device, "%s", v);
    o->rp.device = o->device;
    return 0;
}

static int opt_accumulator(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    if (strcmp(v, "fp16") && strcmp(v, "fp32"))
        return cli_usage_error(cmd, "--accumulator is fp32 or fp16");
    o->cp.accum_fp16 = !strcmp(v, "fp16");
    return 0;
}

static int opt_arena(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    if (strcmp(v, "auto") && strcmp(v, "on") && strcmp(v, "off"))
        return cli_usage_error(cmd, "--arena is auto, on or off");
    o->rp.arena = v;
    return 0;
}

static int opt_parts(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    if (strcmp(v, "on-demand") && strcmp(v, "resident"))
        return cli_usage_error(cmd, "--parts is on-demand or resident");
    o->parts_resident = !strcmp(v, "resident") ? 1 : 0;
    return 0;
}

static int opt_shard(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    return cli_parse_shard(v, &o->shard_i, &o->shard_n) ? cli_usage_error(cmd, "--shard is I/N with 0 <= I < N "
                                                                           "(e.g. 0/4)") : 0;
}

static int opt_output_type(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    if (strcmp(v, "nifti") && strcmp(v, "dicom") && strcmp(v, "dicom-seg") && strcmp(v, "dicom-rtstruct"))
        return cli_usage_error(cmd, "--output-type is nifti, dicom-seg (or dicom) or dicom-rtstruct");
    o->dicom_out = strcmp(v, "nifti") != 0;
    o->dp.kind = !strcmp(v, "dicom-rtstruct") ? SP_DICOM_RTSTRUCT : SP_DICOM_SEG;
    return 0;
}

/* a DICOM LO / PN value from the command line: at most 64 characters, no backslash or line break */
static int dicom_text(const char *cmd, const char *opt, const char *v)
{
    if (strlen(v) <= 64 && !strpbrk(v, "\\\n\r"))
        return 0;
    char msg[128];
    snprintf(msg, sizeof msg, "%s: at most 64 characters, no backslash", opt);
    return cli_usage_error(cmd, msg);
}

static int opt_dicom_description(const char *cmd, const char *v, void *ctx)
{
    ((ct_opts *)ctx)->dp.description = v;
    return dicom_text(cmd, "--dicom-description", v);
}

static int opt_dicom_creator(const char *cmd, const char *v, void *ctx)
{
    ((ct_opts *)ctx)->dp.creator = v;
    return dicom_text(cmd, "--dicom-creator", v);
}

static int opt_model_labels(const char *cmd, const char *v, void *ctx)
{
    ct_opts *o = ctx;
    (void)cmd;
    o->mlab = v;
    o->cp.keep_model_labels = 1;
    return 0;
}

static int opt_roi(const char *cmd, const char *v, void *ctx)
{
    (void)cmd;
    ((ct_opts *)ctx)->cp.roi_subset = v;
    return 0;
}

/* TotalSegmentator's options that segpipe answers rather than takes */
static const cli_hint ct_hints[] = {
    {"--fast", "TotalSegmentator's --fast is its 3 mm model; segpipe runs the package given with --model DIR "
               "at that package's own resolution"},
    {"-f", "TotalSegmentator's --fast is its 3 mm model; give --model DIR the package to run"},
    {"--ml", "segpipe writes one multilabel file by default; --split writes one file per structure"},
    {"--task", "the command and the package choose the task: segpipe mri for brain MRI, --model DIR for "
               "another package"},
    {"-ta", "the command and the package choose the task: segpipe mri for brain MRI, --model DIR for another "
            "package"},
    {"--nr_thr_resamp", "did you mean --threads N?"},
    {"--nr_thr_saving", "did you mean --threads N?"},
    {"-nr", "did you mean --threads N?"},
    {"-ns", "did you mean --threads N?"},
    {"-rs", "did you mean --roi-subset A,B,...?"},
    {"-cp", "did you mean --crop-from PATH (a prior result to crop with; --crop_path works too)?"},
    {"-p", "did you mean --preview FILE.png?"},
    {"-ndm", "did you mean --no-derived-masks (--no_derived_masks works too)?"},
    {NULL, NULL}};

/* -1: go on; else the exit code (help, usage errors) */
int cli_ct_parse(int argc, char **argv, ct_opts *o)
{
    const cli_opt t[] = {
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &o->output,
         .value = "the labels file (or folder with --split)"},
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &o->model, .value = "a model package folder"},
        {.name = "input", .letter = 'i', .kind = CLI_POS, .value = "the input volume"},
        {.name = "threads", .letter = 't', .kind = CLI_FN, .fn = opt_threads, .value = "N"},
        {.name = "device", .letter = 'd', .kind = CLI_FN, .fn = opt_device, .value = "cpu, cuda, gpu or gpu:N"},
        {.name = "precision", .kind = CLI_STR, .dst = &o->rp.precision, .value = "auto, fp32, fp16 or int8"},
        {.name = "tta", .kind = CLI_FLAG, .dst = &o->tta},
        {.name = "no-tta", .kind = CLI_CLEAR, .dst = &o->tta},
        {.name = "disable-tta", .kind = CLI_CLEAR, .dst = &o->tta},
        {.name = "series", .kind = CLI_STR, .dst = &o->series, .value = "a SeriesInstanceUID"},
        {.name = "tile-batch", .kind = CLI_INT, .dst = &o->cp.tile_batch, .lo = 1, .hi = 256, .value = "N"},
        {.name = "step", .kind = CLI_NUM, .dst = &o->cp.step, .lo = 1e-3, .hi = 1, .value = "F"},
        {.name = "split", .kind = CLI_FLAG, .dst = &o->split},
        {.name = "no-derived-masks", .kind = CLI_FLAG, .dst = &o->no_derived},
        {.name = "smooth", .kind = CLI_FLAG, .dst = &o->cp.smooth},
        {.name = "largest-component", .kind = CLI_FLAG, .dst = &o->cp.largest_component},
        {.name = "min-component-ml", .kind = CLI_NUM, .dst = &o->cp.min_component_ml, .lo = 0, .hi = 1e9, .value = "X"},
        {.name = "report", .kind = CLI_STR, .dst = &o->report, .value = "FILE"},
        {.name = "no-passport", .kind = CLI_CLEAR, .dst = &o->cp.passport},
        {.name = "statistics", .letter = 's', .kind = CLI_FLAG, .dst = &o->statistics},
        {.name = "cache-graph", .kind = CLI_FLAG, .dst = &o->rp.cache_optimized},
        {.name = "no-cache-graph", .kind = CLI_CLEAR, .dst = &o->rp.cache_optimized},
        {.name = "save-model-labels", .kind = CLI_FN, .fn = opt_model_labels, .value = "FILE"},
        {.name = "quiet", .letter = 'q', .kind = CLI_FLAG, .dst = &o->quiet},
        {.name = "verbose", .letter = 'v', .kind = CLI_FLAG, .dst = &o->verbose},
        {.name = "keep-border", .kind = CLI_FLAG, .dst = &o->cp.keep_border},
        {.name = "preview", .kind = CLI_STR, .dst = &o->preview, .value = "FILE.png"},
        {.name = "accumulator", .kind = CLI_FN, .fn = opt_accumulator, .value = "fp32 or fp16"},
        {.name = "roi-subset", .kind = CLI_FN, .fn = opt_roi, .value = "A,B,...", .multi = 1},
        {.name = "crop-from", .kind = CLI_STR, .dst = &o->crop_from, .value = "a prior result (file or folder)"},
        {.name = "crop-path", .kind = CLI_STR, .dst = &o->crop_from, .value = "a prior result (file or folder)"},
        {.name = "output-type", .kind = CLI_FN, .fn = opt_output_type,
         .value = "nifti, dicom-seg (or dicom) or dicom-rtstruct"},
        {.name = "dicom-description", .kind = CLI_FN, .fn = opt_dicom_description, .value = "TEXT"},
        {.name = "dicom-series-number", .kind = CLI_INT, .dst = &o->dp.series_number, .lo = 1, .hi = 999999,
         .value = "N"},
        {.name = "dicom-creator", .kind = CLI_FN, .fn = opt_dicom_creator, .value = "Family^Given"},
        {.name = "dicom-deflate", .kind = CLI_FLAG, .dst = &o->dp.deflate},
        {.name = "inputs", .kind = CLI_STR, .dst = &o->inputs, .value = "LIST"},
        {.name = "shard", .kind = CLI_FN, .fn = opt_shard, .value = "I/N"},
        {.name = "jobs", .kind = CLI_INT, .dst = &o->jobs, .lo = 1, .hi = 8, .value = "N"},
        {.name = "arena", .kind = CLI_FN, .fn = opt_arena, .value = "auto, on or off"},
        {.name = "parts", .kind = CLI_FN, .fn = opt_parts, .value = "on-demand or resident"},
        {.name = "no-spill", .kind = CLI_CLEAR, .dst = &o->cp.spill},
        {.name = "spill-dir", .kind = CLI_STR, .dst = &o->cp.spill_dir, .value = "DIR"},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    cli_args a = {0};
    int rc = cli_parse(o->cmd, t, ct_hints, argc, argv, o, &a);
    if (rc == CLI_HELP_ASKED) {
        ct_help(o);
        return 0;
    }
    if (rc)
        return rc;
    cli_set_quiet(o->quiet);
    cli_set_logging(o->verbose);
    if (o->tta >= 0)
        o->rp.tta = o->tta ? "on" : "off";
    if (o->inputs) {
        if (a.n || !o->output)
            return cli_usage_error(o->cmd, "--inputs LIST takes -o OUTDIR and no INPUT argument");
        if (o->tta >= 0)
            return cli_usage_error(o->cmd, "--tta/--no-tta take one INPUT; with --inputs each case runs as the "
                                   "package's default says");
        if (o->crop_from)
            return cli_usage_error(o->cmd, "--crop-from takes one INPUT (a prior result of that scan), not --inputs");
        if (o->parts_resident >= 0)
            return cli_usage_error(o->cmd, "--parts takes one INPUT; with --inputs a task package's parts stay "
                                   "loaded for all cases");
        return -1;
    }
    o->rp.parts_on_demand = o->parts_resident != 1;   /* one input: each part's session only while it runs */
    o->rp.one_shot = 1;   /* one input, one run: cuDNN's heuristics instead of its first-run search (docs/gpu.md) */
    if (a.n != 1)
        return cli_usage_error(o->cmd, a.n ? "expected one INPUT (a NIfTI file, a DICOM folder or a zip of one)"
                                           : "missing INPUT (a NIfTI file, a DICOM folder or a zip of one)");
    o->input = a.pos[0];
    return -1;
}

/* The checks of the options together, before anything is read */
static int ct_check(const ct_opts *o)
{
    if (!o->output)
        return cli_usage_error(o->cmd, "missing -o OUTPUT");
    if (!o->model)
        return cli_usage_error(o->cmd, "give --model DIR, NAME or a chain A,B (tools/import/make_brainchop_package.py "
                               "and import_brainchop.py build brainchop's models; docs/mri.md)");
    if (o->dicom_out && (o->split || strlen(o->output) < 4 || strcmp(o->output + strlen(o->output) - 4, ".dcm")))
        return cli_usage_error(o->cmd, "with --output-type dicom-seg/dicom-rtstruct, OUTPUT must end in .dcm (and no "
                               "--split)");
    if (!o->split && !o->dicom_out && !strstr(o->output, ".nii"))
        return cli_usage_error(o->cmd, "OUTPUT must end in .nii or .nii.gz (or use --split; for a DICOM-SEG or "
                               "RTSTRUCT, OUTPUT.dcm with --output-type dicom-seg|dicom-rtstruct)");
    return 0;
}

static void progress_cb(const char *stage, int done, int total, void *user)
{
    (void)user;
    fprintf(stderr, "\r%s: tile %d of %d", stage, done, total);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

static char *path_stem(const char *path)
{
    char *s = strdup(path);
    size_t n = s ? strlen(s) : 0;
    if (n > 7 && strcmp(s + n - 7, ".nii.gz") == 0)
        s[n - 7] = 0;
    else if (n > 4 && (strcmp(s + n - 4, ".nii") == 0 || strcmp(s + n - 4, ".dcm") == 0))
        s[n - 4] = 0;
    return s;
}

/* Labels (NIfTI, per-class folder or DICOM-SEG), model-grid labels,
 * preview; ppath/spath get the JSON files' paths. */
static sp_status ct_write(const ct_opts *o, const sp_package *pk, const sp_volume *v, const sp_ct_result *res,
                          char *ppath, char *spath, size_t cap)
{
    sp_status st;
    const uint16_t *lab = sp_ct_result_labels(res, NULL);
    if (o->split) {
        st = sp_labels_write_split(o->output, lab, v, pk);
        if (!st && !o->no_derived)   /* TotalSegmentator's body task: body.nii.gz, skin.nii.gz */
            st = sp_labels_write_derived(o->output, lab, v, pk);
        int n = (int)strlen(o->output);
        while (n > 1 && o->output[n - 1] == '/')   /* "out/" and "out" name one folder */
            n--;
        snprintf(ppath, cap, "%.*s/passport.json", n, o->output);
        snprintf(spath, cap, "%.*s/statistics.json", n, o->output);
    } else {
        char desc[128];
        snprintf(desc, sizeof desc, "segpipe %.56s", sp_package_name(pk));
        sp_dicom_params dp = o->dp;
        dp.description = dp.description ? dp.description : desc;
        dp.codes_json = sp_package_dicom_codes(pk);
        st = o->dicom_out ? sp_labels_write_dicom(o->output, lab, v, sp_package_labels(pk), sp_package_num_classes(pk),
                                                  &dp)
                          : sp_labels_write_named(o->output, lab, v, sp_package_labels(pk), sp_package_num_classes(pk));
        char *stem = path_stem(o->output);
        snprintf(ppath, cap, "%s.passport.json", stem ? stem : o->output);
        snprintf(spath, cap, "%s.statistics.json", stem ? stem : o->output);
        free(stem);
    }
    if (!st && o->mlab) {
        int64_t md[3];
        double ma[4][4];
        const uint16_t *ml = sp_ct_result_model_labels(res, md, ma);
        st = sp_labels_write_affine(o->mlab, ml, md, ma);
    }
    if (!st && o->preview)
        st = sp_preview_ct_png(o->preview, v, lab, sp_package_labels(pk), sp_package_num_classes(pk));
    return st;
}

/* Warnings when the values do not look like the task's modality: a label
 * map (few whole numbers) or an MRI (no air below -500 HU) given to `ct`, a CT
 * (much air below -500) given to `mri`. */
static void modality_warnings(const ct_opts *o, const float *d, size_t n, const char *task, cli_warnings *w)
{
    size_t air = 0, whole = 1, distinct = 0;
    unsigned char seen[256] = {0};
    float lo = INFINITY, hi = -INFINITY;
    for (size_t k = 0; k < n; k++) {
        float x = d[k];
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        air += x < -500;
        whole &= x == floorf(x);
        if (whole && x >= 0 && x <= 255 && !seen[(int)x]) {
            seen[(int)x] = 1;
            distinct++;
        }
    }
    int labels = whole && lo >= 0 && hi <= 255 && distinct <= 64;
    if (!strcmp(task, "ct") && labels)
        cli_warn(w, o->cmd, o->input, "the values are a few whole numbers in 0..255: this looks like a label map, "
                 "not a CT in HU");
    else if (!strcmp(task, "ct") && air * 100 < n)
        cli_warn(w, o->cmd, o->input, "less than 1% of the voxels are below -500: no air in Hounsfield units, so "
                 "this does not look like a CT (an MRI? use segpipe mri)");
    else if (!strcmp(task, "mri") && air * 20 > n)
        cli_warn(w, o->cmd, o->input, "more than 5% of the voxels are below -500: this looks like a CT in "
                 "Hounsfield units, not an MRI (use segpipe ct)");
}

/* The read volume checked before the network runs: 3D, oriented, values
 * that look like the modality. Returns an exit code for a refusal (after
 * printing why), else 0 with the warnings printed and kept in w. */
static int ct_check_volume(const ct_opts *o, const sp_volume *v, const sp_package *pk, cli_warnings *w)
{
    sp_volume_info vi;
    sp_volume_get_info(v, &vi);
    if ((vi.dim[0] < 2) + (vi.dim[1] < 2) + (vi.dim[2] < 2) == 1) {   /* one flat axis: a slice */
        fprintf(stderr, "segpipe %s: %s is %lldx%lldx%lld: a single 2D slice, and the model segments 3D "
                "volumes (give the whole series)\n", o->cmd, o->input, (long long)vi.dim[0],
                (long long)vi.dim[1], (long long)vi.dim[2]);
        return 3;
    }
    if (vi.qform_code == 0 && vi.sform_code == 0 && !sp_volume_from_dicom(v))
        cli_warn(w, o->cmd, o->input, "no orientation (NIfTI qform and sform codes are 0): read as RAS at its pixdim "
                 "spacing; check the labels' left and right");
    const char *task = sp_package_task(pk);
    int other = strcmp(task, o->cmd) && (!strcmp(task, "ct") || !strcmp(task, "mri"));   /* ct's model to mri */
    if (other)
        cli_warn(w, o->cmd, o->input, !strcmp(task, "mri") ? "the model is an MRI model (its task is mri): "
                 "segpipe mri runs it with the MRI checks" : "the model is a CT model (its task is ct): segpipe ct "
                 "runs it with the CT checks");
    const float *d = sp_volume_data(v);
    if (d && !other)   /* the values against the model's modality: said above already */
        modality_warnings(o, d, (size_t)vi.dim[0] * (size_t)vi.dim[1] * (size_t)vi.dim[2], task, w);
    return 0;
}

/* The model's sessions (sp_package_prepare), made on a thread of their own
 * while the input is read; the thread's error message kept for the caller */
typedef struct prepare_job {
    sp_package *pk;
    sp_status st;
    double seconds;
    char err[1024];
} prepare_job;

/* What a run holds, so its steps can be apart and freed in one place */
typedef struct ct_run {
    sp_runtime *rt;
    sp_package *pk;
    sp_volume *v;
    sp_ct_result *res;
    sp_timings tt;
    cli_warnings warn;
    double w0;
    double overlap;          /* seconds of load_model and read that ran at the same time */
    prepare_job job;         /* the last model's sessions, made beside the read */
    pthread_t th;            /* its thread, while pending */
    int deferred;            /* a chain: the sessions made beside the extractors (ct_start, ct_join) */
    int pending;             /* th started and not joined yet */
    double t1;               /* when th started */
    sp_volume *run_v;        /* v times the brain mask of a chain's extractors (mri_chain.c) */
    char *pre;               /* the chain's models before the last, or NULL */
    double mask_mm3;         /* the last extractor's mask volume (eTIV estimate) */
    char last[PATH_MAX];     /* the folder of the (last) model */
    uint16_t *crop_lab;      /* --crop-from: the prior result's labels, geometry, names */
    sp_volume *crop_g;
    char **crop_names;
    int crop_nn;
} ct_run;

static void ct_run_free(ct_run *r)
{
    if (r->pending)
        pthread_join(r->th, NULL);
    sp_ct_result_free(r->res);
    sp_volume_free(r->run_v);
    free(r->pre);
    sp_volume_free(r->v);
    sp_package_free(r->pk);
    sp_runtime_free(r->rt);
    free(r->crop_lab);
    sp_volume_free(r->crop_g);
    for (int i = 0; i < r->crop_nn; i++)
        free(r->crop_names[i]);
    free(r->crop_names);
}

/* --crop-from: the prior result handed to the run (TotalSegmentator's
 * crop_path): a label file, named by its label table when it has one (else
 * the ids of TotalSegmentator's class map), or a folder of <structure>.nii.gz
 * masks. Its grid is checked by the library. 0 or an exit code (printed;
 * messages name only the user's own argument). */
static int ct_crop_from(ct_opts *o, ct_run *r)
{
    struct stat sb;
    sp_status st;
    int rc = 0;
    if (stat(o->crop_from, &sb))
        return fprintf(stderr, "segpipe %s: --crop-from %s: no such file or folder\n", o->cmd, o->crop_from), 6;
    char who[64];
    snprintf(who, sizeof who, "%s: --crop-from", o->cmd);
    if (S_ISDIR(sb.st_mode))
        rc = cli_read_label_folder(who, o->crop_from, &r->crop_names, &r->crop_nn, &r->crop_lab, &r->crop_g);
    else if ((st = sp_labels_read(o->crop_from, NULL, &r->crop_lab, &r->crop_g)))
        return cli_fail(st, "--crop-from");
    else
        r->crop_nn = sp_volume_label_names(r->crop_g, &r->crop_names);
    if (rc)
        return rc;
    o->cp.crop_from = r->crop_lab;
    o->cp.crop_from_grid = r->crop_g;
    o->cp.crop_from_names = r->crop_nn ? (const char *const *)r->crop_names : NULL;
    o->cp.crop_from_n = r->crop_nn;
    return 0;
}

static void *prepare_run(void *arg)
{
    prepare_job *j = arg;
    double t0 = sp_now();
    if ((j->st = sp_package_prepare(j->pk)))
        snprintf(j->err, sizeof j->err, "%s", sp_last_error());
    j->seconds = sp_now() - t0;
    return NULL;
}

/* The input, its header checked against the opened package's manifest
 * first (the run's grid and tile limits) */
static sp_status ct_read(const ct_opts *o, ct_run *r)
{
    sp_read_params rdp = sp_read_default_params();
    rdp.dicom_series = o->series;
    sp_ct_check chk = {r->pk, &o->cp};
    rdp.check_header = sp_ct_header_check;
    rdp.check_user = &chk;
    return sp_volume_read(o->input, &rdp, &r->v);
}

/* A chain's last model: its sessions' thread, started once the first
 * extractor's package is loaded (cli_chain_strip's hook), so that the
 * extractor's own sessions come first; it then runs beside the extractor. */
static void ct_start(void *arg)
{
    ct_run *r = arg;
    r->t1 = sp_now();
    r->pending = !pthread_create(&r->th, NULL, prepare_run, &r->job);
}

/* The chain's last model ready: its thread joined (or, never started, its
 * sessions made here); the main thread was busy all the while, so the
 * overlap is its time plus the thread's less the time both took. 0 or an
 * exit code. */
static int ct_join(ct_run *r)
{
    if (!r->deferred)
        return 0;
    r->deferred = 0;
    double busy = sp_now() - r->t1;
    if (r->pending)
        pthread_join(r->th, NULL);
    else
        prepare_run(&r->job);
    if (r->job.st)
        return r->pending = 0, cli_errf("%s\n", r->job.err), sp_status_exit_code(r->job.st);
    sp_timings_add(&r->tt, "load_model", r->job.seconds);
    r->overlap = r->pending ? fmax(0, r->job.seconds + busy - (sp_now() - r->t1)) : 0;
    r->pending = 0;
    return 0;
}

/* Model and input loaded and checked; 0 or an exit code. The manifest is
 * read first, then the sessions are made on a second thread while this one
 * reads the input (SEGPIPE_SERIAL_LOAD=1: one after the other, the input
 * only after the model). A bad model wins over a bad input (exit 4, as when
 * the model was loaded first); the thread is joined on every path. */
static int ct_load(const ct_opts *o, ct_run *r)
{
    double t0 = sp_now();
    sp_status st;
    int rc = cli_chain_resolve(o->model, r->last, sizeof r->last, &r->pre);
    if (rc)
        return rc;
    if ((st = sp_runtime_create(&o->rp, &r->rt)) || (st = sp_package_open(r->rt, r->last, &r->pk)))
        return cli_fail(st, NULL);
    cli_demo_note(r->pk, cli_quiet());
    prepare_job *j = &r->job;
    j->pk = r->pk;
    const char *serial = getenv("SEGPIPE_SERIAL_LOAD");
    int ser = serial && !strcmp(serial, "1");
    double t1 = sp_now(), opened = t1 - t0;   /* before the thread starts: the overlap is at most either stage */
    r->deferred = !ser && r->pre;   /* a chain: after the first extractor's load (ct_start) */
    int threaded = !ser && !r->deferred && !pthread_create(&r->th, NULL, prepare_run, j);
    if (!threaded && !r->deferred)
        prepare_run(j);
    double t2 = sp_now();
    st = threaded || r->deferred || !j->st ? ct_read(o, r) : SP_OK;
    double read = sp_now() - t2;
    sp_timings_add(&r->tt, "load_model", opened);
    if (threaded)
        pthread_join(r->th, NULL);
    if (st && r->deferred)   /* a bad input: a bad model still wins */
        return (rc = ct_join(r)) ? rc : cli_fail(st, NULL);
    if (!r->deferred && j->st)
        return cli_errf("%s\n", j->err), sp_status_exit_code(j->st);   /* as cli_fail says it */
    if (!r->deferred)
        sp_timings_add(&r->tt, "load_model", j->seconds);
    if (st)
        return cli_fail(st, NULL);
    sp_timings_add(&r->tt, "read", read);
    r->overlap = threaded ? fmax(0, j->seconds + read - (sp_now() - t1)) : 0;
    if (o->dicom_out && !sp_volume_from_dicom(r->v))
        return cli_usage_error(o->cmd, "--output-type dicom-seg/dicom-rtstruct needs a DICOM input (a DICOM-SEG or "
                               "RTSTRUCT references the series it was made from)");
    if ((rc = ct_check_volume(o, r->v, r->pk, &r->warn)) && r->deferred) {
        int mrc = ct_join(r);   /* a bad model still wins */
        rc = mrc ? mrc : rc;
    }
    return rc;
}

/* Labels, passport (with its provenance), statistics, report; messages */
static int ct_finish(const ct_opts *o, ct_run *r, int argc, char **argv)
{
    double t0 = sp_now();
    char ppath[PATH_MAX], spath[PATH_MAX];
    sp_status st;
    int rc = 0;
    if ((st = ct_write(o, r->pk, r->v, r->res, ppath, spath, sizeof ppath)))
        return cli_fail(st, NULL);
    const sp_passport *ps = sp_ct_result_passport(r->res);
    if (ps) {
        char *pj = cli_passport_provenance(sp_passport_json(ps), o->input, o->model, o->cmd, argc - 1, argv + 1,
                                           &r->warn);
        rc = pj ? cli_write_text(ppath, pj) : 7;
        free(pj);
        if (rc || (rc = cli_write_text(spath, sp_passport_statistics_json(ps))))
            return rc;
        if (!o->split && !strcmp(sp_package_task(r->pk), "mri")) {   /* FreeSurfer-style tables (brain_stats.c) */
            char stem[PATH_MAX];
            snprintf(stem, sizeof stem, "%.*s", (int)(strlen(ppath) - strlen(".passport.json")), ppath);
            if ((rc = cli_brain_stats(sp_passport_json(ps), stem, o->model, r->mask_mm3)))
                return rc;
        }
    }
    sp_timings_add(&r->tt, "write", sp_now() - t0);
    double wall = sp_now() - r->w0;
    if (!cli_quiet()) {
        if (ps)
            printf("%s\n", sp_passport_table(ps));
        cli_print_timings(stdout, &r->tt, wall);
        if (r->overlap >= 0.0005)
            printf("(load model and read%s ran at the same time: %.3f s of the total overlapped)\n",
                   r->pre ? ", the chain's extractors," : "", r->overlap);
        printf("labels: %s\n", o->output);
        if (ps)
            printf("passport: %s\nstatistics: %s\n", ppath, spath);
        if (o->preview)
            printf("preview: %s\n", o->preview);
        if (o->mlab)
            printf("model-grid labels: %s\n", o->mlab);
        if (o->report)
            printf("report: %s\n", o->report);
    }
    if (o->report) {
        int threads = o->rp.threads ? o->rp.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        char *s = cli_run_report(o->input, r->v, o->model, threads, &r->tt, wall, r->overlap);
        rc = s ? cli_write_text(o->report, s) : 7;
        free(s);
    }
    return rc;
}

/* One volume: checked, loaded, run, written. */
static int ct_run_one(ct_opts *o, int argc, char **argv)
{
    ct_run r = {.w0 = sp_now()};
    int rc = cli_check_input(o->cmd, o->input);
    if (!rc)
        rc = ct_load(o, &r);
    /* the outputs' folders, before the long part (TotalSegmentator makes them too) */
    if (!rc && o->split && cli_mkdir_p(o->output))
        rc = (fprintf(stderr, "segpipe %s: cannot make the output folder %s\n", o->cmd, o->output), 6);
    const char *files[] = {o->split ? NULL : o->output, o->preview, o->report, o->mlab};
    for (int i = 0; i < 4 && !rc; i++)
        rc = files[i] ? cli_output_folder(o->cmd, files[i]) : 0;
    if (!rc && o->crop_from)
        rc = ct_crop_from(o, &r);
    if (!rc && r.pre)   /* a chain: the extractors' brain first (mri_chain.c) */
        rc = cli_chain_strip(r.rt, r.pre, r.v, &o->cp, &r.tt, &r.run_v, &r.mask_mm3, r.deferred ? ct_start : NULL,
                             &r);
    if (!rc)
        rc = ct_join(&r);
    if (!rc) {
        /* afterwards only the geometry is read (and the CT by a split output's skin mask) */
        o->cp.release_input = !o->preview && !(o->split && !o->no_derived && sp_package_has_derived_masks(r.pk));
        sp_status st = sp_ct_run_inplace(r.pk, r.run_v ? r.run_v : r.v, &o->cp, &r.res);
        if (st)
            rc = cli_fail(st, NULL);
    }
    if (!rc) {
        const sp_timings *t = sp_ct_result_timings(r.res);
        for (int i = 0; i < t->n; i++)
            sp_timings_add(&r.tt, t->stage[i].name, t->stage[i].seconds);
        rc = ct_finish(o, &r, argc, argv);
    }
    ct_run_free(&r);
    return rc;
}

static int ct_main(int argc, char **argv, int mri)
{
    ct_opts o = {.cmd = mri ? "mri" : "ct", .mri = mri, .model = mri ? NULL : sp_default_model_dir(),
                 .rp = sp_runtime_default_params(), .cp = sp_ct_default_params(), .shard_n = 1, .jobs = 1, .tta = -1,
                 .parts_resident = -1, .dp = sp_dicom_default_params()};
    o.rp.cache_optimized = 1;   /* the CLI caches optimised graphs unless --no-cache-graph (docs/performance.md) */
    int rc = cli_ct_parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (o.inputs)   /* a batch (a shard of a list) into folder -o */
        return cli_ct_shard(o.inputs, o.shard_i, o.shard_n, o.output, o.model, o.cp.threads, o.rp.device,
                            o.jobs, o.quiet);
    if ((rc = ct_check(&o)))
        return rc;
    if (!o.quiet && isatty(2))
        o.cp.progress = progress_cb;
    return ct_run_one(&o, argc, argv);
}

int cmd_ct(int argc, char **argv)
{
    return ct_main(argc, argv, 0);
}

int cmd_mri(int argc, char **argv)
{
    return ct_main(argc, argv, 1);
}
