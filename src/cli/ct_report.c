/*
 * ct_report.c — what `segpipe ct` / `mri` say about a run besides the
 * labels: the stage-time table, the --report JSON (stage times, memory,
 * input geometry) and the provenance added to passport.json (input, model,
 * options, versions, date, warnings).
 */
#include "cli.h"

#include <pthread.h>

#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* What each stage of the table does, in a user's words (the report JSON
 * keeps the stage keys). */
static const char *stage_words(const char *stage)
{
    static const char *const w[][2] = {
        {"load_model", "read the network"},  {"read", "read the scan"},
        {"reorient", "turn to RAS"},          {"conform", "conform to the network's grid"},
        {"resample", "to the network's spacing"}, {"normalize", "scale intensities"},
        {"roi_crop", "crop to the region"},  {"upload", "scan to the GPU"},
        {"window", "cut tiles, add their weighted scores"}, {"inference", "the network (ONNX Runtime)"},
        {"download", "labels from the GPU"}, {"merge", "merge the parts' labels"},
        {"postprocess", "the model's post-processing"}, {"largest_component", "keep the largest component"},
        {"labels_back", "labels onto the scan's grid"}, {"passport", "measure each structure"},
        {"write", "write the outputs"},
    };
    return cli_word(w, sizeof w / sizeof w[0], stage);
}

void cli_print_timings(FILE *f, const sp_timings *t, double wall)
{
    double total = sp_timings_total(t);
    fprintf(f, "%-17s %9s %7s\n", "stage", "seconds", "share");
    for (int i = 0; i < t->n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s", t->stage[i].name);
        for (char *c = name; *c; c++)
            *c = *c == '_' ? ' ' : *c;
        const char *w = stage_words(t->stage[i].name);
        fprintf(f, "%-17s %9.3f %6.1f%%%s%s\n", name, t->stage[i].seconds,
                total > 0 ? 100.0 * t->stage[i].seconds / total : 0, *w ? "  " : "", w);
    }
    fprintf(f, "%-17s %9.3f %6.1f%%\n", "total", total, 100.0);
    if (wall > 0)
        fprintf(f, "wall %.3f s, peak RSS %.1f MB\n", wall, (double)sp_peak_rss() / 1e6);
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

char *cli_run_report(const char *input, const sp_volume *v, const char *model, int threads,
                        const sp_timings *t, double wall, double overlapped)
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
    cJSON_AddNumberToObject(j, "overlapped_seconds", overlapped);   /* of the stages above (load_model beside read) */
    cJSON_AddNumberToObject(j, "wall_seconds", wall);
    cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)sp_peak_rss());
    if (sp_gpu_peak_memory())
        cJSON_AddNumberToObject(j, "gpu_memory_bytes", (double)sp_gpu_peak_memory());
    rss_parts(j);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}


/* said on stderr even with -q (a warning is never hidden: common.c) and
 * kept for the passport's "warnings" */
void cli_warn(cli_warnings *w, const char *cmd, const char *input, const char *msg)
{
    fprintf(stderr, "segpipe %s: warning: %s: %s\n", cmd, input, msg);
    if (w->n < CLI_MAX_WARNINGS)
        snprintf(w->msg[w->n++], sizeof w->msg[0], "%s", msg);
}

/* ---- provenance ---- */

typedef struct tree {
    char **rel;              /* file paths relative to the root, sorted */
    int n, cap;
    size_t root_len;
    int skip_cache;          /* leave out ONNX Runtime's <model>.opt.ort caches */
} tree;

static tree *g_tree;         /* nftw has no user pointer */

static int tree_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)ftw;
    tree *t = g_tree;
    size_t len = strlen(p);
    if (flag != FTW_F || (t->skip_cache && len > 8 && !strcmp(p + len - 8, ".opt.ort")))
        return 0;
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        char **r = realloc(t->rel, (size_t)cap * sizeof *r);
        if (!r)
            return 1;
        t->rel = r, t->cap = cap;
    }
    return (t->rel[t->n] = strdup(p + t->root_len + 1)) ? (t->n++, 0) : 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A file: name, size_bytes, sha256. A folder: name, files, size_bytes and
 * the sha256 of its files' `sha256sum` lines ("<hex>  <relative path>\n",
 * sorted by path), as `cd DIR && find . -type f | sort | xargs sha256sum`
 * would list them without the "./". */
static cJSON *checksum_json(const char *given, int skip_cache)
{
    cJSON *j = cJSON_CreateObject();
    char path[4096], name[4096];
    snprintf(path, sizeof path, "%s", given);
    for (size_t n = strlen(path); n > 1 && path[n - 1] == '/'; n--)
        path[n - 1] = 0;
    const char *slash = strrchr(path, '/');
    snprintf(name, sizeof name, "%s", slash && slash[1] ? slash + 1 : path);
    cJSON_AddStringToObject(j, "name", name);
    struct stat st;
    char hex[65];
    uint64_t size = 0;
    if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) {
        if (sp_file_sha256(path, hex, &size) == SP_OK) {
            cJSON_AddNumberToObject(j, "size_bytes", (double)size);
            cJSON_AddStringToObject(j, "sha256", hex);
        }
        return j;
    }
    tree t = {.root_len = strlen(path), .skip_cache = skip_cache};
    g_tree = &t;
    int bad = nftw(path, tree_entry, 16, FTW_PHYS) != 0;
    qsort(t.rel, (size_t)t.n, sizeof *t.rel, by_name);
    sp_hash *all = sp_hash_new();
    bad |= all == NULL;
    uint64_t total = 0;
    for (int i = 0; i < t.n && !bad; i++) {
        char full[8192];
        snprintf(full, sizeof full, "%s/%s", path, t.rel[i]);
        bad = sp_file_sha256(full, hex, &size) != SP_OK;
        total += size;
        sp_hash_add(all, hex, 64);   /* sha256sum's lines */
        sp_hash_add(all, "  ", 2);
        sp_hash_add(all, t.rel[i], strlen(t.rel[i]));
        sp_hash_add(all, "\n", 1);
    }
    if (all)
        sp_hash_hex(all, hex);   /* frees it */
    if (!bad) {
        cJSON_AddNumberToObject(j, "files", t.n);
        cJSON_AddNumberToObject(j, "size_bytes", (double)total);
        cJSON_AddStringToObject(j, "sha256", hex);
    }
    for (int i = 0; i < t.n; i++)
        free(t.rel[i]);
    free(t.rel);
    return j;
}

/* passport_json with "provenance" added as its last member: the input and
 * the model package (name, size, SHA-256), the command and its arguments,
 * segpipe's and ONNX Runtime's versions, the UTC date, the warnings (w may
 * be NULL).
 * Caller frees; NULL when out of memory. */
char *cli_passport_provenance(const char *passport_json, const char *input, const char *model, const char *command,
                              int argc, char **argv, const cli_warnings *w)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddItemToObject(p, "input", checksum_json(input, 0));
    /* a worker runs many jobs with one package: its checksum is computed
     * once; cases on several threads (--jobs) share the cache */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static char last[4096];
    static cJSON *last_m;
    pthread_mutex_lock(&mu);
    if (!last_m || strcmp(last, model)) {
        cJSON_Delete(last_m);
        last_m = checksum_json(model, 1);
        snprintf(last, sizeof last, "%s", model);
    }
    cJSON_AddItemToObject(p, "model", cJSON_Duplicate(last_m, 1));
    pthread_mutex_unlock(&mu);
    cJSON_AddStringToObject(p, "command", command);
    cJSON *args = cJSON_AddArrayToObject(p, "arguments");
    for (int i = 0; i < argc; i++)
        cJSON_AddItemToArray(args, cJSON_CreateString(argv[i]));
    cJSON_AddStringToObject(p, "segpipe_version", SP_VERSION_STRING);
    cJSON_AddStringToObject(p, "onnxruntime_version", sp_ort_version());
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    cJSON_AddStringToObject(p, "date", date);
    cJSON *ws = cJSON_AddArrayToObject(p, "warnings");
    for (int i = 0; w && i < w->n; i++)
        cJSON_AddItemToArray(ws, cJSON_CreateString(w->msg[i]));
    char *pj = cJSON_Print(p);
    cJSON_Delete(p);
    size_t n = strlen(passport_json);
    while (n && (passport_json[n - 1] == '\n' || passport_json[n - 1] == ' '))
        n--;
    char *out = pj && n && passport_json[n - 1] == '}' ? malloc(n + strlen(pj) + 32) : NULL;
    if (out)    /* the library's text kept as it is; the object's last '}' moved after provenance */
        sprintf(out, "%.*s,\n \"provenance\": %s\n}\n", (int)(n - 1), passport_json, pj);
    free(pj);
    return out;
}
