/*
 * segpipe — the command-line front end, a thin layer over segpipe.h.
 *
 * Subcommands are registered in one table. Each parses its own options and
 * maps the library's sp_status to the documented exit code:
 *   0 ok, 2 usage, 3 input, 4 model, 5 runtime, 6 I/O, 7 out of memory.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <execinfo.h>
#include <ftw.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SP_BUILD_FLAGS
#define SP_BUILD_FLAGS "unknown"
#endif

static int g_quiet, g_verbose;

#define fail cli_fail
#define usage_error cli_usage_error

int cli_fail(sp_status st, const char *ctx)
{
    fprintf(stderr, "segpipe: %s%s%s\n", ctx ? ctx : "", ctx ? ": " : "", sp_last_error());
    return sp_status_exit_code(st);
}

int cli_mkdir_p(const char *path)
{
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof dir, "%s", path);
    for (char *q = dir + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(dir, 0755);
            *q = '/';
        }
    mkdir(dir, 0755);
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p) != 0 && errno != ENOENT;
}

int cli_rm_rf(const char *path)
{
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT ? -1 : 0;
}

int cli_usage_error(const char *cmd, const char *msg)
{
    fprintf(stderr, "segpipe %s: %s (see 'segpipe %s --help')\n", cmd, msg, cmd);
    return 2;
}

static void set_logging(void)
{
    sp_log_set_level(g_verbose ? SP_LOG_DEBUG : g_quiet ? SP_LOG_ERROR : SP_LOG_WARN);
}

void cli_set_logging(int verbose)
{
    g_verbose |= verbose;
    set_logging();
}

static void print_timings(FILE *f, const sp_timings *t, double wall)
{
    double total = sp_timings_total(t);
    fprintf(f, "%-14s %9s %7s\n", "stage", "seconds", "share");
    for (int i = 0; i < t->n; i++)
        fprintf(f, "%-14s %9.3f %6.1f%%\n", t->stage[i].name, t->stage[i].seconds,
                total > 0 ? 100.0 * t->stage[i].seconds / total : 0);
    fprintf(f, "%-14s %9.3f %6.1f%%\n", "total", total, 100.0);
    if (wall > 0)
        fprintf(f, "wall %.3f s, peak RSS %.1f MB\n", wall, (double)sp_peak_rss() / 1e6);
}

/* ------------------------------------------------------------- version */

static int cmd_version(int argc, char **argv)
{
    char prov[512];
    (void)argc;
    (void)argv;
    printf("segpipe %s\n", SP_VERSION_STRING);
    printf("ONNX Runtime %s\n", sp_ort_version());
    if (sp_ort_providers(prov, sizeof prov) == SP_OK)
        printf("providers: %s\n", prov);
    sp_gpu_status(prov, sizeof prov);
    printf("gpu: %s\n", prov);
    printf("build: %s\n", SP_BUILD_FLAGS);
    printf("default model: %s\n", sp_default_model_dir());
    return 0;
}

/* ------------------------------------------------------------------ ct */

static void progress_cb(const char *stage, int done, int total, void *user)
{
    (void)user;
    fprintf(stderr, "\r%s: tile %d of %d", stage, done, total);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

static int write_text(const char *path, const char *text)
{
    sp_status st = sp_write_file_atomic(path, text, strlen(text));
    return st ? fail(st, NULL) : 0;
}

static char *path_stem(const char *path)
{
    char *s = strdup(path);
    size_t n = strlen(s);
    if (n > 7 && strcmp(s + n - 7, ".nii.gz") == 0)
        s[n - 7] = 0;
    else if (n > 4 && (strcmp(s + n - 4, ".nii") == 0 || strcmp(s + n - 4, ".dcm") == 0))
        s[n - 4] = 0;
    return s;
}

/* Resident memory at the end, split as the kernel counts it: anonymous
 * (heap: volumes, buffers) and file-backed (mapped libraries: ONNX Runtime,
 * CUDA, cuDNN), from /proc/self/status. */
static void rss_parts(cJSON *j)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long kb;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "RssAnon: %lu", &kb) == 1)
            cJSON_AddNumberToObject(j, "rss_anon_bytes", (double)kb * 1024);
        else if (sscanf(line, "RssFile: %lu", &kb) == 1)
            cJSON_AddNumberToObject(j, "rss_file_bytes", (double)kb * 1024);
    }
    if (f)
        fclose(f);
}

static char *run_report(const char *input, const sp_volume *v, const char *model, int threads,
                        const sp_timings *t, double wall)
{
    sp_volume_info vi;
    sp_volume_get_info(v, &vi);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "segpipe_version", SP_VERSION_STRING);
    cJSON_AddStringToObject(j, "onnxruntime_version", sp_ort_version());
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddNumberToObject(j, "threads", threads);
    cJSON *in = cJSON_AddObjectToObject(j, "input");
    cJSON_AddStringToObject(in, "path", input);
    double d[3] = {(double)vi.dim[0], (double)vi.dim[1], (double)vi.dim[2]};
    cJSON_AddItemToObject(in, "shape", cJSON_CreateDoubleArray(d, 3));
    cJSON_AddItemToObject(in, "spacing", cJSON_CreateDoubleArray(vi.spacing, 3));
    cJSON_AddStringToObject(in, "orientation", vi.axcodes);
    cJSON_AddStringToObject(in, "affine_source", vi.affine_source ? vi.affine_source : "");
    cJSON_AddStringToObject(in, "dtype", sp_dtype_str(vi.file_dtype));
    cJSON *st = cJSON_AddObjectToObject(j, "seconds");
    for (int i = 0; i < t->n; i++)
        cJSON_AddNumberToObject(st, t->stage[i].name, t->stage[i].seconds);
    cJSON_AddNumberToObject(st, "total", sp_timings_total(t));
    cJSON_AddNumberToObject(j, "wall_seconds", wall);
    cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)sp_peak_rss());
    if (sp_gpu_peak_memory())
        cJSON_AddNumberToObject(j, "gpu_memory_bytes", (double)sp_gpu_peak_memory());
    rss_parts(j);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}

/* segpipe ct's options (parsed by ct_parse) */
typedef struct ct_opts {
    const char *series, *output, *model, *report, *mlab, *preview, *inputs;
    sp_runtime_params rp;
    sp_ct_params cp;
    int split, dicom_out, shard_i, shard_n;
} ct_opts;

static void ct_help(void)
{
    printf("usage: segpipe ct INPUT.nii[.gz]|DICOM_FOLDER -o OUTPUT [options]\n"
           "  -o, --output PATH        labels .nii.gz (with --split: a folder)\n"
           "  -m, --model DIR          model package (default: %s)\n"
           "  -t, --threads N          CPU threads (default: all cores)\n"
           "      --device cpu|cuda    execution provider\n"
           "      --precision P        auto (fp16 model on a GPU when the package has one), fp32, fp16\n"
           "      --series UID         a DICOM folder with several series: the one to read\n"
           "      --tile-batch N       tiles per inference call (default: auto, 4 when the\n"
           "                           logits of 4 tiles fit in 256 MB, else fewer)\n"
           "      --step F             sliding-window step (default: manifest, 0.5)\n"
           "      --split              one <class>.nii.gz per class in folder OUTPUT\n"
           "      --smooth             labels back from linearly resampled logits (not nearest)\n"
           "      --largest-component  keep the largest component of each label\n"
           "      --min-component-ml X remove components smaller than X ml\n"
           "      --report FILE        JSON run report\n"
           "      --no-passport        skip the passport\n"
           "      --preview FILE.png   axial/coronal/sagittal slices with the labels and a legend\n"
           "      --keep-border        statistics.json keeps structures that touch the scan's edge\n"
           "                           (TotalSegmentator reports them as 0)\n"
           "      --roi-subset A,B,... only these structures are labelled and measured\n"
           "      --accumulator fp32|fp16  sliding-window sums in float or half (half the memory)\n"
           "      --spill-dir DIR      while the network runs, the input waits in an unnamed file\n"
           "                           there (default: $TMPDIR, else /var/tmp; never on tmpfs)\n"
           "      --no-spill           keep the input in memory while the network runs\n"
           "      --inputs LIST        one input per line; with -o OUTDIR: OUTDIR/<name>.nii.gz each\n"
           "      --shard I/N          with --inputs: only lines k with k mod N = I (job arrays);\n"
           "                           inputs already done are skipped; report OUTDIR/shard-I-of-N.json\n"
           "      --output-type nifti|dicom  labels as NIfTI (default) or, for a DICOM input, as a\n"
           "                           DICOM-SEG referencing the series (OUTPUT ends in .dcm)\n"
           "      --cache-graph        keep ORT's optimised graph beside the model (<model>.opt.ort)\n"
           "      --save-model-labels F  also write the labels at model resolution (canonical grid)\n"
           "  -q, --quiet / -v, --verbose\n"
           "Writes OUTPUT, and beside it <stem>.passport.json and <stem>.statistics.json\n"
           "(with --split: passport.json and statistics.json inside the folder).\n",
           sp_default_model_dir());
}

/* -1: go on; else the exit code (help, usage errors) */
static int ct_parse(int argc, char **argv, ct_opts *o)
{
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"model", required_argument, 0, 'm'},
        {"threads", required_argument, 0, 't'}, {"device", required_argument, 0, 'd'},
        {"precision", required_argument, 0, 'p'}, {"series", required_argument, 0, 'D'},
        {"tile-batch", required_argument, 0, 'b'}, {"step", required_argument, 0, 's'},
        {"split", no_argument, 0, 'S'}, {"smooth", no_argument, 0, 'M'},
        {"largest-component", no_argument, 0, 'L'}, {"min-component-ml", required_argument, 0, 'n'},
        {"report", required_argument, 0, 'r'}, {"no-passport", no_argument, 0, 'P'},
        {"cache-graph", no_argument, 0, 'G'}, {"save-model-labels", required_argument, 0, 'K'},
        {"quiet", no_argument, 0, 'q'}, {"verbose", no_argument, 0, 'v'},
        {"keep-border", no_argument, 0, 'k'}, {"preview", required_argument, 0, 'V'},
        {"accumulator", required_argument, 0, 'A'}, {"roi-subset", required_argument, 0, 'R'},
        {"output-type", required_argument, 0, 'O'}, {"inputs", required_argument, 0, 'I'},
        {"shard", required_argument, 0, 'J'}, {"no-spill", no_argument, 0, 'N'},
        {"spill-dir", required_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:m:t:qvh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': o->output = optarg; break;
        case 'm': o->model = optarg; break;
        case 't':
            if (cli_int("ct", "--threads", optarg, 0, 1024, &o->cp.threads))
                return 2;
            o->rp.threads = o->cp.threads;
            break;
        case 'd': o->rp.device = optarg; break;
        case 'p': o->rp.precision = optarg; break;
        case 'D': o->series = optarg; break;
        case 'b':
            if (cli_int("ct", "--tile-batch", optarg, 1, 256, &o->cp.tile_batch))
                return 2;
            break;
        case 's':
            if (cli_num("ct", "--step", optarg, 1e-3, 1, &o->cp.step))
                return 2;
            break;
        case 'S': o->split = 1; break;
        case 'M': o->cp.smooth = 1; break;
        case 'L': o->cp.largest_component = 1; break;
        case 'n':
            if (cli_num("ct", "--min-component-ml", optarg, 0, 1e9, &o->cp.min_component_ml))
                return 2;
            break;
        case 'r': o->report = optarg; break;
        case 'P': o->cp.passport = 0; break;
        case 'k': o->cp.keep_border = 1; break;
        case 'V': o->preview = optarg; break;
        case 'G': o->rp.cache_optimized = 1; break;
        case 'K': o->mlab = optarg; o->cp.keep_model_labels = 1; break;
        case 'A':
            if (strcmp(optarg, "fp16") && strcmp(optarg, "fp32"))
                return usage_error("ct", "--accumulator is fp32 or fp16");
            o->cp.accum_fp16 = !strcmp(optarg, "fp16");
            break;
        case 'R': o->cp.roi_subset = optarg; break;
        case 'N': o->cp.spill = 0; break;
        case 'T': o->cp.spill_dir = optarg; break;
        case 'I': o->inputs = optarg; break;
        case 'J':
            if (cli_parse_shard(optarg, &o->shard_i, &o->shard_n))
                return usage_error("ct", "--shard is I/N with 0 <= I < N (e.g. 0/4)");
            break;
        case 'O':
            if (strcmp(optarg, "nifti") && strcmp(optarg, "dicom"))
                return usage_error("ct", "--output-type is nifti or dicom");
            o->dicom_out = !strcmp(optarg, "dicom");
            break;
        case 'q': g_quiet = 1; break;
        case 'v': g_verbose = 1; break;
        case 'h': ct_help(); return 0;
        default: return usage_error("ct", "unknown option");
        }
    }
    return -1;
}

/* Labels (NIfTI, per-class folder or DICOM-SEG), passport, statistics,
 * model-grid labels, preview; ppath/spath get the JSON files' paths. */
static sp_status ct_write(const ct_opts *o, const sp_package *pk, const sp_volume *v, const sp_ct_result *res,
                          char *ppath, char *spath, size_t cap)
{
    sp_status st;
    const uint16_t *lab = sp_ct_result_labels(res, NULL);
    if (o->split) {
        st = sp_labels_write_split(o->output, lab, v, pk);
        snprintf(ppath, cap, "%s/passport.json", o->output);
        snprintf(spath, cap, "%s/statistics.json", o->output);
    } else {
        char desc[128];
        snprintf(desc, sizeof desc, "segpipe %s", sp_package_name(pk));
        st = o->dicom_out ? sp_labels_write_dicom_seg(o->output, lab, v, sp_package_labels(pk),
                                                      sp_package_num_classes(pk), desc)
                          : sp_labels_write_named(o->output, lab, v, sp_package_labels(pk), sp_package_num_classes(pk));
        char *stem = path_stem(o->output);
        snprintf(ppath, cap, "%s.passport.json", stem);
        snprintf(spath, cap, "%s.statistics.json", stem);
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

/* One CT: load, read, run, write, report. */
static int ct_run_one(ct_opts *o, const char *input)
{
    double w0 = sp_now(), t0 = w0;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    sp_timings tt = {0};
    sp_status st;
    int rc = 0;
    if ((st = sp_runtime_create(&o->rp, &rt)) || (st = sp_package_load(rt, o->model, &pk))) {
        rc = fail(st, NULL);
        goto out;
    }
    sp_timings_add(&tt, "load_model", sp_now() - t0);
    t0 = sp_now();
    sp_read_params rdp = sp_read_default_params();
    rdp.dicom_series = o->series;
    if ((st = sp_volume_read(input, &rdp, &v))) {
        rc = fail(st, NULL);
        goto out;
    }
    sp_timings_add(&tt, "read", sp_now() - t0);
    if (o->dicom_out && !sp_volume_from_dicom(v)) {
        rc = usage_error("ct", "--output-type dicom needs a DICOM input (a DICOM-SEG references the series it "
                         "was made from)");
        goto out;
    }
    o->cp.release_input = !o->preview;   /* afterwards only the geometry is read */
    if ((st = sp_ct_run_inplace(pk, v, &o->cp, &res))) {
        rc = fail(st, input);
        goto out;
    }
    const sp_timings *rt_t = sp_ct_result_timings(res);
    for (int i = 0; i < rt_t->n; i++)
        sp_timings_add(&tt, rt_t->stage[i].name, rt_t->stage[i].seconds);
    t0 = sp_now();
    char ppath[PATH_MAX], spath[PATH_MAX];
    if ((st = ct_write(o, pk, v, res, ppath, spath, sizeof ppath))) {
        rc = fail(st, NULL);
        goto out;
    }
    const sp_passport *ps = sp_ct_result_passport(res);
    if (ps && ((rc = write_text(ppath, sp_passport_json(ps))) ||
               (rc = write_text(spath, sp_passport_statistics_json(ps)))))
        goto out;
    sp_timings_add(&tt, "write", sp_now() - t0);
    double wall = sp_now() - w0;
    if (!g_quiet) {
        if (ps)
            printf("%s\n", sp_passport_table(ps));
        print_timings(stdout, &tt, wall);
        printf("labels: %s\n", o->output);
        if (ps)
            printf("passport: %s\nstatistics: %s\n", ppath, spath);
    }
    if (o->report) {
        int threads = o->rp.threads ? o->rp.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        char *s = run_report(input, v, o->model, threads, &tt, wall);
        rc = s ? write_text(o->report, s) : 7;
        free(s);
    }
out:
    sp_ct_result_free(res);
    sp_volume_free(v);
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}

static int cmd_ct(int argc, char **argv)
{
    int mri = argc > 0 && !strcmp(argv[0], "mri");   /* `segpipe mri`: the same pipeline, no default model */
    ct_opts o = {.model = mri ? NULL : sp_default_model_dir(), .rp = sp_runtime_default_params(),
                 .cp = sp_ct_default_params(), .shard_n = 1};
    int rc = ct_parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (o.inputs) {   /* a batch (a shard of a list) into folder -o */
        if (optind != argc || !o.output)
            return usage_error("ct", "--inputs LIST takes -o OUTDIR and no INPUT argument");
        set_logging();
        return cli_ct_shard(o.inputs, o.shard_i, o.shard_n, o.output, o.model, o.cp.threads, o.rp.device, g_quiet);
    }
    if (optind != argc - 1)
        return usage_error("ct", "expected one INPUT file");
    if (!o.output)
        return usage_error("ct", "missing -o OUTPUT");
    if (!o.model)
        return usage_error("mri", "give --model DIR (tools/import/make_brainchop_package.py builds brainchop's MeshNet "
                           "package)");
    if (o.cp.tile_batch < 0 || o.cp.tile_batch > 64 || o.rp.threads < 0 || o.cp.step < 0 || o.cp.step > 1)
        return usage_error("ct", "bad --tile-batch, --threads or --step");
    if (o.dicom_out && (o.split || strlen(o.output) < 4 || strcmp(o.output + strlen(o.output) - 4, ".dcm")))
        return usage_error("ct", "with --output-type dicom, OUTPUT must end in .dcm (and no --split)");
    if (!o.split && !o.dicom_out && !strstr(o.output, ".nii"))
        return usage_error("ct", "OUTPUT must end in .nii or .nii.gz (or use --split)");
    set_logging();
    if (!g_quiet && isatty(2))
        o.cp.progress = progress_cb;
    return ct_run_one(&o, argv[optind]);
}

/* ------------------------------------------------------------ passport */

/* Read a label map JSON {"1": "spleen", ...} into names[0..n). */
static sp_status read_label_map(const char *path, char ***names, int *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return SP_ERR_IO;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len < 0 || len > (16 << 20)) {
        fclose(f);
        return SP_ERR_INPUT;
    }
    char *s = malloc((size_t)len + 1);
    size_t got = s ? fread(s, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!s || got != (size_t)len) {
        free(s);
        return SP_ERR_IO;
    }
    s[len] = 0;
    cJSON *j = cJSON_Parse(s);
    free(s);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return SP_ERR_INPUT;
    }
    int mx = 0;
    for (cJSON *e = j->child; e; e = e->next) {
        int k = atoi(e->string);
        if (k < 0 || k > 65535 || !cJSON_IsString(e)) {
            cJSON_Delete(j);
            return SP_ERR_INPUT;
        }
        if (k > mx)
            mx = k;
    }
    *n = mx + 1;
    *names = calloc((size_t)*n, sizeof **names);
    for (cJSON *e = j->child; e && *names; e = e->next)
        (*names)[atoi(e->string)] = strdup(e->valuestring);
    cJSON_Delete(j);
    return *names ? SP_OK : SP_ERR_NOMEM;
}

static int cmd_passport(int argc, char **argv)
{
    static const struct option opts[] = {
        {"ct", required_argument, 0, 'c'}, {"labels", required_argument, 0, 'l'},
        {"label-map", required_argument, 0, 'm'}, {"output", required_argument, 0, 'o'},
        {"statistics", required_argument, 0, 's'}, {"keep-border", no_argument, 0, 'k'},
        {"no-components", no_argument, 0, 'N'}, {"threads", required_argument, 0, 't'},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *ctp = NULL, *labp = NULL, *mapp = NULL, *out = NULL, *stats = NULL;
    sp_passport_params pp = sp_passport_default_params();
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': ctp = optarg; break;
        case 'l': labp = optarg; break;
        case 'm': mapp = optarg; break;
        case 'o': out = optarg; break;
        case 's': stats = optarg; break;
        case 'k': pp.keep_border = 1; break;
        case 'N': pp.components = 0; break;
        case 't':
            if (cli_int("passport", "--threads", optarg, 0, 1024, &pp.threads))
                return 2;
            break;
        case 'q': g_quiet = 1; break;
        case 'h':
            printf("usage: segpipe passport --ct CT.nii.gz --labels LABELS.nii.gz|FOLDER [--label-map map.json]\n"
                   "                        [-o passport.json] [--statistics statistics.json]\n"
                   "                        [--keep-border] [--no-components] [--threads N] [--quiet]\n"
                   "Measures every structure of LABELS (any tool's output) on CT in one pass. Names come\n"
                   "from --label-map, else from the label table in the file's NIfTI extension\n"
                   "(TotalSegmentator's multilabel output, segpipe's own). FOLDER: one <name>.nii.gz mask\n"
                   "per class (TotalSegmentator without --ml).\n");
            return 0;
        default: return usage_error("passport", "unknown option");
        }
    }
    if (!ctp || !labp || optind != argc)
        return usage_error("passport", "--ct and --labels are required");
    set_logging();
    sp_volume *ct = NULL, *lg = NULL;
    uint16_t *lab = NULL;
    char **names = NULL;
    int nn = 0, rc = 0;
    sp_passport *ps = NULL;
    sp_status st;
    double t0 = sp_now();
    if (mapp && (st = read_label_map(mapp, &names, &nn))) {
        fprintf(stderr, "segpipe: %s: cannot read the label map (a JSON object {\"1\": \"name\", ...})\n", mapp);
        return sp_status_exit_code(st);
    }
    struct stat lsb;
    int folder = stat(labp, &lsb) == 0 && S_ISDIR(lsb.st_mode);
    if ((st = sp_volume_read(ctp, NULL, &ct)) || (!folder && (st = sp_labels_read(labp, NULL, &lab, &lg)))) {
        rc = fail(st, NULL);
        goto out;
    }
    if (folder && (rc = cli_read_label_folder(labp, &names, &nn, &lab, &lg)))
        goto out;
    if (!names)   /* names stored in the file (TotalSegmentator's multilabel output, segpipe's own) */
        nn = sp_volume_label_names(lg, &names);
    sp_volume_info a, b;
    sp_volume_get_info(ct, &a);
    sp_volume_get_info(lg, &b);
    for (int i = 0; i < 3; i++)
        if (a.dim[i] != b.dim[i]) {
            fprintf(stderr, "segpipe: %s is %lldx%lldx%lld but %s is %lldx%lldx%lld: the labels must be "
                    "on the CT's grid\n", ctp, (long long)a.dim[0], (long long)a.dim[1], (long long)a.dim[2],
                    labp, (long long)b.dim[0], (long long)b.dim[1], (long long)b.dim[2]);
            rc = 3;
            goto out;
        }
    for (int r = 0; r < 3; r++)
        for (int q = 0; q < 4; q++) {
            double tol = q < 3 ? 1e-3 * (a.spacing[q] > 0 ? a.spacing[q] : 1) : 1e-2;
            double d = a.affine[r][q] - b.affine[r][q];
            if (d > tol || d < -tol) {
                fprintf(stderr, "segpipe: %s and %s have different affines (element [%d][%d]: %g vs %g)\n",
                        ctp, labp, r, q, a.affine[r][q], b.affine[r][q]);
                rc = 3;
                goto out;
            }
        }
    double t1 = sp_now();
    pp.source = labp;
    if ((st = sp_passport_compute(ct, lab, (const char *const *)names, nn, &pp, &ps))) {
        rc = fail(st, NULL);
        goto out;
    }
    double t2 = sp_now();
    if (out && (rc = write_text(out, sp_passport_json(ps))))
        goto out;
    if (stats && (rc = write_text(stats, sp_passport_statistics_json(ps))))
        goto out;
    if (!out && !stats)
        fputs(sp_passport_json(ps), stdout);
    if (!g_quiet) {
        fputs(sp_passport_table(ps), out || stats ? stdout : stderr);
        fprintf(out || stats ? stdout : stderr, "read %.3f s, passport %.3f s\n", t1 - t0, t2 - t1);
    }
out:
    sp_passport_free(ps);
    sp_volume_free(ct);
    sp_volume_free(lg);
    free(lab);
    for (int i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* ------------------------------------------------------------ resample */

static int parse3(const char *s, double v[3])
{
    char *e;
    for (int i = 0; i < 3; i++) {
        v[i] = strtod(s, &e);
        if (e == s || !(v[i] > 0) || (i < 2 && *e != ','))
            return -1;
        s = e + (i < 2);
    }
    return *e ? -1 : 0;
}

static int cmd_resample(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"spacing", required_argument, 0, 's'},
        {"shape", required_argument, 0, 'S'}, {"order", required_argument, 0, 'r'},
        {"pad", required_argument, 0, 'p'}, {"pad-value", required_argument, 0, 'v'},
        {"dtype", required_argument, 0, 'd'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL, *dts = NULL;
    double sp3[3] = {0}, shp[3] = {0}, pad[3] = {0}, padv = 0;
    int order = 1, have_sp = 0, have_shape = 0, have_pad = 0, have_padv = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 's': if (parse3(optarg, sp3)) return usage_error("resample", "--spacing a,b,c"); have_sp = 1; break;
        case 'S': if (parse3(optarg, shp)) return usage_error("resample", "--shape x,y,z"); have_shape = 1; break;
        case 'p': if (parse3(optarg, pad)) return usage_error("resample", "--pad x,y,z"); have_pad = 1; break;
        case 'v':
            if (cli_num("resample", "--pad-value", optarg, -1e30, 1e30, &padv))
                return 2;
            have_padv = 1;
            break;
        case 'r':
            if (cli_int("resample", "--order", optarg, 0, 1, &order))
                return 2;
            break;
        case 'd': dts = optarg; break;
        case 'h':
            printf("usage: segpipe resample IN -o OUT (--spacing a,b,c | --shape x,y,z) [--order 0|1]\n"
                   "                        [--pad x,y,z [--pad-value V]] [--dtype int16|uint8|float32]\n"
                   "Resamples as scipy.ndimage.zoom (order 1 linear, order 0 nearest; TotalSegmentator's\n"
                   "shape rule), then optionally pads (centred) or crops to --pad. Default dtype: int16\n"
                   "for order 1, uint8 for order 0; pad value: -1024 for order 1, 0 for order 0.\n");
            return 0;
        default: return usage_error("resample", "unknown option");
        }
    }
    if (optind != argc - 1 || !out || have_sp == have_shape || (order != 0 && order != 1))
        return usage_error("resample", "expected IN -o OUT and one of --spacing/--shape");
    sp_dtype dt = order ? SP_DT_I16 : SP_DT_U8;
    if (dts)
        dt = !strcmp(dts, "int16") ? SP_DT_I16 : !strcmp(dts, "uint8") ? SP_DT_U8
           : !strcmp(dts, "float32") ? SP_DT_F32 : SP_DT_UNKNOWN;
    if (dt == SP_DT_UNKNOWN)
        return usage_error("resample", "--dtype int16, uint8 or float32");
    sp_volume *v = NULL, *r = NULL, *p = NULL;
    sp_status st;
    int rc = 0;
    double t0 = sp_now();
    if ((st = sp_volume_read(argv[optind], NULL, &v))) {
        rc = fail(st, NULL);
        goto out;
    }
    int64_t shape[3];
    if (have_sp)
        sp_volume_shape_for_spacing(v, sp3, shape);
    else
        for (int i = 0; i < 3; i++)
            shape[i] = (int64_t)shp[i];
    double t1 = sp_now();
    if ((st = sp_volume_resample(v, shape, order, &r))) {
        rc = fail(st, NULL);
        goto out;
    }
    if (have_pad) {
        int64_t ps[3] = {(int64_t)pad[0], (int64_t)pad[1], (int64_t)pad[2]};
        if ((st = sp_volume_pad(r, ps, (float)(have_padv ? padv : order ? -1024 : 0), &p))) {
            rc = fail(st, NULL);
            goto out;
        }
    }
    double t2 = sp_now();
    if ((st = sp_volume_write(out, p ? p : r, dt))) {
        rc = fail(st, NULL);
        goto out;
    }
    sp_volume_info vi;
    sp_volume_get_info(p ? p : r, &vi);
    printf("%s: %lldx%lldx%lld, spacing %.4g x %.4g x %.4g mm (read %.3f s, resample %.3f s, write %.3f s)\n",
           out, (long long)vi.dim[0], (long long)vi.dim[1], (long long)vi.dim[2], vi.spacing[0],
           vi.spacing[1], vi.spacing[2], t1 - t0, t2 - t1, sp_now() - t2);
out:
    sp_volume_free(v);
    sp_volume_free(r);
    sp_volume_free(p);
    return rc;
}

/* -------------------------------------------------------------- model */

/* `segpipe model probe DIR --device D`: load and run one inference (the
 * package's warm-up) on D; used by cli_probe in a child process. */
static int model_probe(const char *dir, const char *device)
{
    sp_runtime_params rp = sp_runtime_default_params();
    rp.device = device;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_status st;
    int rc = 0;
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, dir, &pk)) || (st = sp_package_warm_up(pk)))
        rc = fail(st, NULL);
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}

static int cmd_model(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "probe") && !strcmp(argv[3], "--device"))
        return model_probe(argv[2], argv[4]);
    if (argc != 3 || strcmp(argv[1], "check") != 0) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            printf("usage: segpipe model check DIR | segpipe model probe DIR --device cpu|cuda\n"
                   "check: validates a model package: the manifest (docs/model-format.md) and the ONNX\n"
                   "model's inputs and outputs against it. probe: loads it on the device and runs one\n"
                   "inference (what video, classify and serve do first on a GPU, in a child process).\n");
            return 0;
        }
        return usage_error("model", "usage: segpipe model check DIR");
    }
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = 1;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_status st;
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, argv[2], &pk))) {
        int rc = fail(st, NULL);
        sp_runtime_free(rt);
        return rc;
    }
    int ni, no;
    const sp_io_info *in = sp_model_inputs(sp_package_model(pk), &ni);
    const sp_io_info *out = sp_model_outputs(sp_package_model(pk), &no);
    printf("%s: OK — model '%s', %d classes\n", argv[2], sp_package_name(pk), sp_package_num_classes(pk));
    for (int k = 0; k < 2; k++) {
        const sp_io_info *io = k ? out : in;
        for (int i = 0; i < (k ? no : ni); i++) {
            printf("  %s %s: %s [", k ? "output" : "input", io[i].name, sp_dtype_str(io[i].meta.dtype));
            for (int d = 0; d < io[i].meta.rank; d++)
                printf("%s%lld", d ? ", " : "", (long long)io[i].meta.shape[d]);
            printf("]\n");
        }
    }
    sp_package_free(pk);
    sp_runtime_free(rt);
    return 0;
}

static int cmd_models(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: segpipe models [DIR]\n"
               "Lists the default model (and the package in DIR): name, classes, labels.\n");
        return 0;
    }
    if (argc > 2 || (argc > 1 && argv[1][0] == '-'))
        return usage_error("models", "expected at most one model folder");
    const char *dirs[2] = {sp_default_model_dir(), argc > 1 ? argv[1] : NULL};
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = 1;
    sp_runtime *rt = NULL;
    sp_status st = sp_runtime_create(&rp, &rt);
    if (st)
        return fail(st, NULL);
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        if (!dirs[i])
            continue;
        sp_package *pk;
        if ((st = sp_package_load(rt, dirs[i], &pk))) {
            fprintf(stderr, "%s: %s\n", dirs[i], sp_last_error());
            rc = sp_status_exit_code(st);
            continue;
        }
        printf("%s%s\n  name: %s\n  classes: %d\n  labels:", dirs[i], i == 0 ? " (default)" : "",
               sp_package_name(pk), sp_package_num_classes(pk));
        for (int l = 1; l < sp_package_num_classes(pk); l++)
            printf("%s%d=%s", l % 6 == 1 ? "\n    " : "  ", l, sp_package_label(pk, l));
        printf("\n");
        sp_package_free(pk);
    }
    sp_runtime_free(rt);
    return rc;
}

/* --------------------------------------------------------------- table */

typedef struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"ct", cmd_ct, "CT organ segmentation: NIfTI in, labels + passport out"},
    {"passport", cmd_passport, "measure every structure of a label map (any tool's)"},
    {"model", cmd_model, "model check DIR: validate a model package"},
    {"masks", cmd_masks, "photo masks: every requested mask from one inference per batch"},
    {"mri", cmd_ct, "brain MRI segmentation (conformed models such as brainchop's MeshNet): as ct"},
    {"classify", cmd_classify, "photo classification: top-K labels per photo, one inference per batch"},
    {"video", cmd_video, "video background replacement: RAM cache, batches, compositing workers"},
    {"serve", cmd_serve, "HTTP service: KServe v2, /v1/ct, status, metrics"},
    {"submit", cmd_submit, "queue CT jobs on Redis Streams (for segpipe worker)"},
    {"worker", cmd_worker, "run queued CT jobs from Redis Streams (any number, any machines)"},
    {"jobs", cmd_jobs, "queued/running/done/failed counts and job states on Redis"},
    {"bench", cmd_bench, "benchmark the CT pipeline on cases; 'bench video' sweeps the video pipeline"},
    {"resample", cmd_resample, "resample (and pad) a volume, e.g. to make benchmark inputs"},
    {"models", cmd_models, "list the bundled (and a given) model with its labels"},
    {"version", cmd_version, "versions, ONNX Runtime providers, build flags"},
};

static void help(FILE *f)
{
    fprintf(f, "segpipe %s — segmentation pipelines on ONNX Runtime\n\nusage: segpipe COMMAND [options]\n\n",
            SP_VERSION_STRING);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'segpipe COMMAND --help' for a command's options.\n"
               "Exit codes: 0 ok, 2 usage, 3 input, 4 model, 5 runtime, 6 I/O, 7 out of memory, 130 stopped.\n");
}

/*
 * Long command lines (thousands of photo paths) are moved off the process's
 * command line: ONNX Runtime reads /proc/self/cmdline at start-up and its
 * parser recursed past the 8 MB stack on a 36 KB command line (1,000
 * photos). segpipe re-executes itself with the arguments in a memfd and
 * reads them back from there.
 */
#define SP_ARGV_LIMIT 8192
#define SP_ARGV_FLAG "--argv-from-fd"

static void reexec_short(int argc, char **argv)
{
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += strlen(argv[i]) + 1;
    if (total <= SP_ARGV_LIMIT || getenv("SEGPIPE_NO_REEXEC"))
        return;
    int fd = memfd_create("segpipe-argv", 0);
    if (fd < 0)
        return;
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        if (write(fd, argv[i], n) != (ssize_t)n) {
            close(fd);
            return;
        }
    }
    char fds[16];
    snprintf(fds, sizeof fds, "%d", fd);
    char *nargv[] = {argv[0], (char *)SP_ARGV_FLAG, fds, NULL};
    execv("/proc/self/exe", nargv);
    close(fd);                /* exec failed: carry on with the long command line */
}

/* SEGPIPE_BACKTRACE=1: on a crash, print the stack (glibc backtrace) for
 * diagnosis on machines without a debugger; resolve with addr2line. */
static void crash_trace(int sig)
{
    void *frames[64];
    int n = backtrace(frames, 64);
    const char msg[] = "segpipe: fatal signal, backtrace:\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(128 + sig);
    backtrace_symbols_fd(frames, n, 2);
    _exit(128 + sig);
}

static char **g_argv;       /* arguments read back from the memfd, kept until exit */

static void free_argv(void)
{
    if (g_argv) {
        free(g_argv[0]);        /* the buffer all arguments point into */
        free(g_argv);
    }
}

/* argv back from the memfd */
static int argv_from_fd(const char *fds, char ***out)
{
    int fd = atoi(fds);
    off_t n = lseek(fd, 0, SEEK_END);
    if (n <= 0 || lseek(fd, 0, SEEK_SET) != 0)
        return -1;
    char *buf = malloc((size_t)n + 1);
    if (!buf || read(fd, buf, (size_t)n) != n) {
        free(buf);
        return -1;
    }
    close(fd);
    buf[n] = 0;
    int argc = 0;
    for (off_t i = 0; i < n; i++)
        argc += buf[i] == 0;
    char **av = calloc((size_t)argc + 1, sizeof *av);
    if (!av) {
        free(buf);
        return -1;
    }
    for (int i = 0, k = 0; i < n && k < argc; k++) {
        av[k] = buf + i;
        i += (int)strlen(buf + i) + 1;
    }
    g_argv = av;
    atexit(free_argv);
    *out = av;
    return argc;
}

int main(int argc, char **argv)
{
    if (getenv("SEGPIPE_BACKTRACE")) {
        signal(SIGSEGV, crash_trace);
        signal(SIGBUS, crash_trace);
        signal(SIGABRT, crash_trace);
    }
    if (argc == 3 && !strcmp(argv[1], SP_ARGV_FLAG)) {
        if ((argc = argv_from_fd(argv[2], &argv)) < 2) {
            fprintf(stderr, "segpipe: cannot read the arguments back\n");
            return 2;
        }
    } else {
        reexec_short(argc, argv);
    }
    if (argc < 2) {
        help(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        help(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version"))
        return cmd_version(0, NULL);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "segpipe: unknown command '%s'\n", argv[1]);
    help(stderr);
    return 2;
}
