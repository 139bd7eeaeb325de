/*
 * masks_cmd.c — `segpipe masks`: photos in, every requested mask out, one
 * inference per batch. Photos of a batch are decoded in parallel (sp_images_read);
 * outputs per photo: <stem>.<mask>.png (8-bit, 0/255, upright frame) and
 * <stem>.masks.json (per mask: area fraction, bounding box, PNG as base64).
 */
#include "cli.h"

#include <cjson/cJSON.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* Decoding of a batch: one thread runs sp_images_read (the photos in
 * parallel on the library's pool, as the service decodes them) while the
 * previous batch is inferred. */
typedef struct dec_batch {
    char **paths;
    int n, threaded;
    sp_image_params ip;
    sp_image *imgs[64];
    sp_status sts[64];
    char *errs[64];
    pthread_t th;
} dec_batch;

static void *dec_main(void *arg)
{
    dec_batch *d = arg;
    sp_images_read(d->n, (const char *const *)d->paths, NULL, NULL, &d->ip, d->imgs, d->sts, d->errs);
    return NULL;
}

static void dec_start(dec_batch *d, char **paths, int n, const sp_image_params *ip)
{
    d->paths = paths;
    d->n = n;
    d->ip = *ip;
    d->threaded = pthread_create(&d->th, NULL, dec_main, d) == 0;
    if (!d->threaded)
        dec_main(d);
}

static void dec_join(dec_batch *d)
{
    if (d->threaded)
        pthread_join(d->th, NULL);
    d->threaded = 0;
}

static char *stem_of(const char *path)
{
    const char *b = strrchr(path, '/');
    char *s = strdup(b ? b + 1 : path);
    char *dot = s ? strrchr(s, '.') : NULL;
    if (dot && dot != s)
        *dot = 0;
    return s;
}

typedef struct named {
    char *stem;
    const char *path;
} named;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const named *)a)->stem, ((const named *)b)->stem);
}

/* Two photos with the same stem (a/img.jpg and b/img.jpg, photo.jpg and
 * photo.png) would write the same outputs: refuse before writing anything
 * (the same path given twice writes the same outputs twice: allowed). */
static int check_unique_outputs(char **paths, int n, const char *dir)
{
    named *v = calloc((size_t)n, sizeof *v);
    int bad = !v;
    for (int i = 0; v && i < n; i++) {
        v[i].path = paths[i];
        bad |= !(v[i].stem = stem_of(paths[i]));
    }
    if (v && !bad) {
        qsort(v, (size_t)n, sizeof *v, cmp_named);
        for (int i = 1; i < n && !bad; i++)
            if (!strcmp(v[i - 1].stem, v[i].stem) && strcmp(v[i - 1].path, v[i].path)) {
                fprintf(stderr, "segpipe masks: %s and %s would both write %s/%s.*: give photos distinct names "
                                "(or run them into different folders)\n", v[i - 1].path, v[i].path, dir, v[i].stem);
                bad = 1;
            }
    }
    for (int i = 0; v && i < n; i++)
        free(v[i].stem);
    free(v);
    return bad;
}

/* write one photo's outputs: the masks' PNGs (encoded in parallel by
 * sp_masks_encode) and DIR/<stem>.masks.json, each through temp + rename */
static sp_status write_outputs(const char *dir, const char *path, const sp_image *img, const sp_masks_result *r,
                               int preview)
{
    void *png[64] = {0};
    size_t pn[64] = {0};
    char *masks = NULL;
    if (r->n_masks > 64)
        return SP_ERR_USAGE;
    sp_status st = sp_masks_encode(r, NULL, &masks, png, pn);
    char *stem = stem_of(path);
    for (int k = 0; k < r->n_masks && !st; k++) {
        char ppath[4096];
        snprintf(ppath, sizeof ppath, "%s/%s.%s.png", dir, stem, r->masks[k].name);
        st = sp_write_file_atomic(ppath, png[k], pn[k]);
    }
    if (!st) {
        cJSON *name = cJSON_CreateString(path);
        char *qpath = name ? cJSON_PrintUnformatted(name) : NULL;
        cJSON_Delete(name);
        size_t cap = strlen(masks) + (qpath ? strlen(qpath) : 0) + 200;
        char *doc = malloc(cap), jpath[4096];
        if (!qpath || !doc) {
            st = SP_ERR_NOMEM;
        } else {
            int len = snprintf(doc, cap, "{\"image\": %s, \"width\": %d, \"height\": %d, \"orientation\": %d, "
                                         "\"decoded_width\": %d, \"decoded_height\": %d, \"decode_scale\": %d, "
                                         "\"masks\": %s}\n", qpath, r->width, r->height, img->orientation,
                               img->width, img->height, img->scale_denom, masks);
            snprintf(jpath, sizeof jpath, "%s/%s.masks.json", dir, stem);
            st = sp_write_file_atomic(jpath, doc, (size_t)len);
        }
        free(qpath);
        free(doc);
    }
    if (!st && preview) {
        char vpath[4096];
        snprintf(vpath, sizeof vpath, "%s/%s.preview.png", dir, stem);
        st = sp_preview_masks_png(vpath, img, r);
    }
    for (int k = 0; k < r->n_masks; k++)
        free(png[k]);
    free(masks);
    free(stem);
    return st;
}

/* Asynchronous writer: batches of results are encoded and written on their
 * own thread while the next batch is decoded and inferred. The queue holds
 * at most 2 batches, so memory stays bounded by the batch size. */
typedef struct wjob {
    int n;
    const char *paths[64];
    sp_image *imgs[64];
    sp_masks_result *res[64];
} wjob;

typedef struct writer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    wjob *q[2];
    int n, closed;
    const char *dir;
    int preview;
    double enc;
    int failed, done, rc;
    pthread_t th;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->n && !w->closed)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->n) {
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        wjob *j = w->q[0];
        w->q[0] = w->q[1];
        w->n--;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        double t0 = sp_now();
        int failed = 0, done = 0;
        for (int k = 0; k < j->n; k++) {
            if (write_outputs(w->dir, j->paths[k], j->imgs[k], j->res[k], w->preview)) {
                cli_errf("%s: cannot write outputs in %s\n", j->paths[k], w->dir);
                failed++;
            } else {
                done++;
            }
            sp_masks_result_free(j->res[k]);
            sp_image_free(j->imgs[k]);
        }
        free(j);
        pthread_mutex_lock(&w->mu);
        w->enc += sp_now() - t0;
        w->failed += failed;
        w->done += done;
        if (failed)
            w->rc = 6;
        pthread_mutex_unlock(&w->mu);
    }
}

static void writer_push(writer *w, wjob *j)
{
    pthread_mutex_lock(&w->mu);
    while (w->n == 2)
        pthread_cond_wait(&w->cv, &w->mu);
    w->q[w->n++] = j;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void writer_close(writer *w)
{
    pthread_mutex_lock(&w->mu);
    w->closed = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
}

/* segpipe masks's options (masks_parse) */
typedef struct masks_opts {
    const char *out, *model, *maskarg, *arena, *precision;
    int batch, quiet, verbose, preview, cache_graph;
    sp_masks_params mp;
    sp_image_params ip;
} masks_opts;

static int opt_arena(const char *cmd, const char *v, void *ctx)
{
    if (strcmp(v, "auto") && strcmp(v, "on") && strcmp(v, "off"))
        return cli_usage_error(cmd, "--arena is auto, on or off");
    ((masks_opts *)ctx)->arena = v;
    return 0;
}

static int opt_precision(const char *cmd, const char *v, void *ctx)
{
    if (strcmp(v, "auto") && strcmp(v, "fp32") && strcmp(v, "int8"))
        return cli_usage_error(cmd, "--precision is auto, fp32 or int8");
    ((masks_opts *)ctx)->precision = v;
    return 0;
}

static void masks_help(const masks_opts *o)
{
    printf("usage: segpipe masks PHOTO... -o DIR [--model DIR] [--masks wall,floor] [--batch N]\n"
           "                     [--threads N] [--long-side N] [--max-pixels N] [--preview] [--quiet] [-v]\n"
           "                     [--arena auto|on|off] [--no-cache-graph] [--precision auto|fp32|int8]\n"
           "One inference per batch returns every mask (JPEG, PNG, WebP, HEIC; EXIF orientation\n"
           "applied; masks in the upright frame, at the photo's full size). Writes\n"
           "DIR/<photo>.<mask>.png and DIR/<photo>.masks.json; --preview also DIR/<photo>.preview.png\n"
           "(the masks over the photo, with a legend).\n"
           "Default model: %s (a demo trained on rendered rooms).\n", o->model);
}

/* -1: go on (the photos in a->all); else the exit code (help, usage errors) */
static int masks_parse(int argc, char **argv, masks_opts *o, cli_args *a)
{
    const cli_opt t[] = {
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &o->out, .value = "DIR"},
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &o->model, .value = "DIR"},
        {.name = "masks", .kind = CLI_STR, .dst = &o->maskarg, .value = "NAME,..."},
        {.name = "batch", .letter = 'b', .kind = CLI_INT, .dst = &o->batch, .lo = 1, .hi = 64, .value = "N"},
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &o->mp.threads, .lo = 0, .hi = 1024,
         .value = "N"},
        {.name = "long-side", .kind = CLI_INT, .dst = &o->mp.long_side, .lo = 32, .hi = 16384, .value = "N"},
        {.name = "max-pixels", .kind = CLI_SIZE, .dst = &o->ip.max_pixels, .lo = 1, .value = "N"},
        {.name = "quiet", .letter = 'q', .kind = CLI_FLAG, .dst = &o->quiet},
        {.name = "verbose", .letter = 'v', .kind = CLI_FLAG, .dst = &o->verbose},
        {.name = "preview", .kind = CLI_FLAG, .dst = &o->preview},
        {.name = "arena", .kind = CLI_FN, .fn = opt_arena, .value = "auto, on or off"},
        {.name = "cache-graph", .kind = CLI_FLAG, .dst = &o->cache_graph},
        {.name = "no-cache-graph", .kind = CLI_CLEAR, .dst = &o->cache_graph},
        {.name = "precision", .kind = CLI_FN, .fn = opt_precision, .value = "auto, fp32 or int8"},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    int rc = cli_parse("masks", t, NULL, argc, argv, o, a);
    if (rc == CLI_HELP_ASKED)
        return masks_help(o), 0;
    return rc ? rc : -1;
}

/* --masks a,b: names[] points into *copy (caller frees); 2 on a repeated name */
static int masks_names(masks_opts *o, const char **names, char **copy)
{
    int n = 0;
    *copy = o->maskarg ? strdup(o->maskarg) : NULL;
    for (char *tok = *copy ? strtok(*copy, ",") : NULL; tok && n < 32; tok = strtok(NULL, ",")) {
        for (int k = 0; k < n; k++)
            if (!strcmp(names[k], tok)) {
                fprintf(stderr, "segpipe masks: --masks names '%s' twice\n", tok);
                return 2;
            }
        names[n++] = tok;
    }
    if (*copy) {
        o->mp.masks = names;
        o->mp.n_masks = n;
    }
    return 0;
}

/* Every batch of photos[0..n): decoding of batch i+1 runs (sp_images_read,
 * on the pool) while batch i is inferred; the writer thread encodes batch
 * i-1 meanwhile. Returns the exit code; *failed counts photos. */
static int masks_batches(const masks_opts *o, sp_package *pk, char **photos, int n, writer *wr, sp_timings *t,
                         int *failed)
{
    static dec_batch dec[2];
    int cur = 0, rc = 0, batch = o->batch;
    sp_status st;
    double t0 = sp_now();
    dec_start(&dec[0], photos, n < batch ? n : batch, &o->ip);
    for (int i = 0; i < n; i += batch) {
        int nb = n - i < batch ? n - i : batch;
        dec_batch *d = &dec[cur];
        dec_join(d);
        sp_timings_add(t, "decode", sp_now() - t0);   /* the part not hidden behind inference */
        int ni = i + nb, nn = n - ni < batch ? n - ni : batch;
        if (ni < n)
            dec_start(&dec[!cur], photos + ni, nn, &o->ip);
        wjob *j = calloc(1, sizeof *j);
        if (!j)
            return 7;
        for (int k = 0; k < nb; k++) {
            if (!d->imgs[k]) {
                cli_errf("%s\n", d->errs[k] ? d->errs[k] : "out of memory");
                free(d->errs[k]);
                rc = sp_status_exit_code(d->sts[k]);
                (*failed)++;
                continue;
            }
            j->paths[j->n] = d->paths[k];
            j->imgs[j->n++] = d->imgs[k];
        }
        sp_masks_result **res = NULL;
        if (j->n && (st = sp_masks_run(pk, j->imgs, j->n, &o->mp, &res, t))) {
            rc = cli_fail(st, NULL);
            *failed += j->n;
        }
        if (!res) {
            for (int k = 0; k < j->n; k++)
                sp_image_free(j->imgs[k]);
            free(j);
        } else {
            memcpy(j->res, res, (size_t)j->n * sizeof *res);
            free(res);
            writer_push(wr, j);      /* the writer frees images and results */
        }
        cur = !cur;
        t0 = sp_now();
        if (rc == 2 || rc == 4) {  /* usage/model errors repeat for every batch */
            if (ni < n) {
                dec_join(&dec[cur]);
                for (int k = 0; k < nn; k++) {
                    sp_image_free(dec[cur].imgs[k]);
                    free(dec[cur].errs[k]);
                }
            }
            break;
        }
    }
    return rc;
}

/* The photo stages in a user's words */
static const char *masks_stage_words(const char *stage)
{
    static const char *const w[][2] = {
        {"decode", "read the photos"}, {"preprocess", "resize and scale"},
        {"inference", "the network (ONNX Runtime)"}, {"postprocess", "masks from the scores"},
        {"encode", "write PNG + JSON, while the next photos run"},
    };
    return cli_word(w, sizeof w / sizeof w[0], stage);
}

static void masks_summary(const sp_timings *t, int done, int failed, double wall, const sp_package *pk)
{
    double total = sp_timings_total(t);
    printf("%-12s %9s %7s\n", "stage", "seconds", "share");
    for (int k = 0; k < t->n; k++)
        printf("%-12s %9.3f %6.1f%%  %s\n", t->stage[k].name, t->stage[k].seconds,
               total > 0 ? 100 * t->stage[k].seconds / total : 0, masks_stage_words(t->stage[k].name));
    printf("%d photo(s) done, %d failed, %.2f images/s (wall %.3f s), %llu inference call(s)\n", done, failed,
           wall > 0 ? done / wall : 0, wall, pk ? (unsigned long long)sp_model_run_count(sp_package_model(pk)) : 0ull);
}

int cmd_masks(int argc, char **argv)
{
    static char rooms[4096];
    masks_opts o = {.model = getenv("SEGPIPE_MASKS_MODEL"), .batch = 1, .cache_graph = 1,
                    .mp = sp_masks_default_params(), .ip = sp_image_default_params()};
    if ((!o.model || !*o.model) && !sp_bundled_model("demo-rooms", rooms, sizeof rooms))
        o.model = rooms;
    cli_args a = {.all = argv + 1};   /* the photos gathered in place */
    int rc = masks_parse(argc, argv, &o, &a);
    if (rc >= 0)
        return rc;
    if (!a.n || !o.out || !o.model || o.batch < 1 || o.batch > 64)
        return cli_usage_error("masks", "expected PHOTO... -o DIR (and --batch 1..64)");
    if (check_unique_outputs(a.all, a.n, o.out))
        return 2;
    const char *names[32];
    char *mcopy = NULL;
    if (masks_names(&o, names, &mcopy)) {
        free(mcopy);
        return 2;
    }
    int existed = access(o.out, F_OK) == 0;
    cli_mkdir_p(o.out);
    if (o.verbose)
        cli_set_logging(1);   /* the model load line (and its graph cache) on stderr */
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = o.mp.threads;
    if (o.arena)
        rp.arena = o.arena;
    rp.cache_optimized = o.cache_graph;
    rp.precision = o.precision;   /* int8: the package's onnx_int8 (docs/performance.md) */
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_status st;
    int failed = 0;
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, o.model, &pk))) {
        rc = cli_fail(st, NULL);
        goto end;
    }
    cli_demo_note(pk, o.quiet);
    uint64_t maxp = o.ip.max_pixels;   /* the package's decoding rule (the service's too); --max-pixels kept */
    o.ip = sp_masks_image_params(pk, o.mp.long_side);
    if (maxp)
        o.ip.max_pixels = maxp;
    sp_timings t = {0};
    double w0 = sp_now();
    writer wr = {.dir = o.out, .preview = o.preview};
    pthread_mutex_init(&wr.mu, NULL);
    pthread_cond_init(&wr.cv, NULL);
    if (pthread_create(&wr.th, NULL, writer_main, &wr) != 0) {
        cli_errf("cannot start the writer thread\n");
        rc = 5;
        goto end;
    }
    rc = masks_batches(&o, pk, a.all, a.n, &wr, &t, &failed);
    writer_close(&wr);
    pthread_mutex_destroy(&wr.mu);
    pthread_cond_destroy(&wr.cv);
    failed += wr.failed;
    if (wr.rc && !rc)
        rc = wr.rc;
    sp_timings_add(&t, "encode", wr.enc);
    if (!o.quiet && (wr.done || failed < a.n))   /* no table when every photo was refused */
        masks_summary(&t, wr.done, failed, sp_now() - w0, pk);
end:
    if (rc && !existed)
        rmdir(o.out);   /* a refused run leaves no empty folder (kept when any photo was written) */
    free(mcopy);
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}
