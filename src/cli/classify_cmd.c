/*
 * classify_cmd.c — `segpipe classify`: photos in, top-K labels with their
 * probabilities out, one inference per batch; the masks command's decoding
 * (JPEG/PNG/WebP/HEIC, EXIF orientation, pixel limits, in parallel).
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void usage(const char *model)
{
    printf("usage: segpipe classify PHOTO... [--model DIR] [--top K] [--batch N] [--json FILE]\n"
           "                        [--threads N] [--device cpu|cuda] [--max-pixels N] [--quiet]\n"
           "Classifies each photo (JPEG, PNG, WebP, HEIC; EXIF orientation applied) with a \"classify\"\n"
           "model package: top K labels (default 5) with probabilities, per-stage timings, photos/s.\n"
           "--json FILE writes every result. Default model: %s.\n", model ? model : "(none bundled)");
}

typedef struct copts {
    const char *model, *json, *device;
    int top, batch, quiet;
    sp_classify_params cp;
    sp_image_params ip;
} copts;

/* 0: go on with the photos in a->all; 1 after --help; else an exit code */
static int parse(int argc, char **argv, copts *o, cli_args *a)
{
    const cli_opt t[] = {
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &o->model, .value = "DIR"},
        {.name = "top", .letter = 'k', .kind = CLI_INT, .dst = &o->top, .lo = 1, .hi = 100000, .value = "K"},
        {.name = "batch", .letter = 'b', .kind = CLI_INT, .dst = &o->batch, .lo = 1, .hi = 64, .value = "N"},
        {.name = "json", .kind = CLI_STR, .dst = &o->json, .value = "FILE"},
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &o->cp.threads, .lo = 0, .hi = 1024,
         .value = "N"},
        {.name = "max-pixels", .kind = CLI_SIZE, .dst = &o->ip.max_pixels, .lo = 1, .value = "N"},
        {.name = "device", .kind = CLI_STR, .dst = &o->device, .value = "cpu or cuda"},
        {.name = "quiet", .letter = 'q', .kind = CLI_FLAG, .dst = &o->quiet},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    int rc = cli_parse("classify", t, NULL, argc, argv, o, a);
    if (rc == CLI_HELP_ASKED)
        return usage(o->model), 1;
    if (rc)
        return rc;
    if (!a->n || !o->model)
        return cli_usage_error("classify", o->model ? "expected PHOTO..." : "no model: give --model DIR");
    o->cp.top_k = o->top;
    return 0;
}

/* one batch: decode, classify, print and record */
static int run_batch(sp_package *pk, const copts *o, char **paths, int n, cJSON *js, sp_timings *t, int *failed)
{
    sp_image *imgs[64], *ok[64];
    sp_status sts[64];
    char *errs[64];
    double t0 = sp_now();
    sp_images_read(n, (const char *const *)paths, NULL, NULL, &o->ip, imgs, sts, errs);
    sp_timings_add(t, "decode", sp_now() - t0);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (imgs[i])
            ok[m++] = imgs[i];
    sp_classify_result **res = NULL;
    sp_status st = m ? sp_classify_run(pk, ok, m, &o->cp, &res, t) : SP_OK;
    for (int i = 0, q = 0; i < n; i++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddItemToArray(js, item);
        cJSON_AddStringToObject(item, "file", paths[i]);
        if (!imgs[i] || st) {
            const char *e = !imgs[i] ? (errs[i] ? errs[i] : "cannot read") : sp_last_error();
            fprintf(stderr, "segpipe classify: %s\n", e);
            cJSON_AddStringToObject(item, "error", e);
            ++*failed;
            continue;
        }
        char *one = sp_classify_json(res[q]);
        cJSON *parsed = one ? cJSON_Parse(one) : NULL;
        free(one);
        cJSON_AddItemToObject(item, "top", parsed ? cJSON_DetachItemFromObject(parsed, "top") : cJSON_CreateNull());
        cJSON_Delete(parsed);
        if (!o->quiet) {
            printf("%s:", paths[i]);
            for (int k = 0; k < res[q]->k; k++)
                printf("%s %s %.4f", k ? "," : "", res[q]->top[k].label, res[q]->top[k].prob);
            printf("\n");
        }
        sp_classify_result_free(res[q++]);
    }
    free(res);
    for (int i = 0; i < n; i++) {
        sp_image_free(imgs[i]);
        free(errs[i]);
    }
    return st ? cli_fail(st, NULL) : 0;
}

int cmd_classify(int argc, char **argv)
{
    static char dflt[4096];
    copts o = {getenv("SEGPIPE_CLASSIFY_MODEL"), NULL, NULL, 5, 8, 0, sp_classify_default_params(),
               sp_image_default_params()};
    if ((!o.model || !*o.model) && !sp_bundled_model("demo-shapes", dflt, sizeof dflt))
        o.model = dflt;
    cli_args a = {.all = argv + 1};   /* the photos gathered in place */
    int rc = parse(argc, argv, &o, &a);
    if (rc)
        return rc == 1 ? 0 : rc;
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = o.cp.threads;
    if (o.device)
        rp.device = o.device;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_status st;
    if ((rc = cli_probe(o.model, o.device)))
        goto end;
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, o.model, &pk))) {
        rc = cli_fail(st, NULL);
        goto end;
    }
    cli_demo_note(pk, 0);
    uint64_t maxp = o.ip.max_pixels;
    o.ip = sp_masks_image_params(pk, 0);   /* the photo path's decoding rule */
    if (maxp)
        o.ip.max_pixels = maxp;
    sp_timings t = {0};
    cJSON *doc = cJSON_CreateObject(), *js = cJSON_AddArrayToObject(doc, "photos");
    cJSON_AddStringToObject(doc, "model", sp_package_name(pk));
    int n = a.n, failed = 0;
    double w0 = sp_now();
    for (int i = 0; i < n && !rc; i += o.batch)
        rc = run_batch(pk, &o, a.all + i, n - i < o.batch ? n - i : o.batch, js, &t, &failed);
    double wall = sp_now() - w0;
    if (!rc && o.json) {
        cJSON *sec = cJSON_AddObjectToObject(doc, "seconds");
        for (int i = 0; i < t.n; i++)
            cJSON_AddNumberToObject(sec, t.stage[i].name, t.stage[i].seconds);
        cJSON_AddNumberToObject(doc, "wall_seconds", wall);
        cJSON_AddNumberToObject(doc, "photos_per_second", (n - failed) / wall);
        char *text = cJSON_Print(doc);
        st = text ? sp_write_file_atomic(o.json, text, strlen(text)) : SP_ERR_NOMEM;
        free(text);
        if (st)
            rc = cli_fail(st, NULL);
    }
    cJSON_Delete(doc);
    if (!o.quiet) {
        for (int i = 0; i < t.n; i++)
            printf("%-12s %8.3f s\n", t.stage[i].name, t.stage[i].seconds);
        printf("%d photo(s) done, %d failed, %.1f photos/s\n", n - failed, failed, (n - failed) / wall);
    }
    if (!rc && failed)
        rc = 3;
end:
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}
