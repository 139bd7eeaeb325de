/*
 * masks_cmd.c — `segpipe masks`: photos in, every requested mask out, one
 * inference per batch. Photos of a batch are decoded on parallel threads;
 * outputs per photo: <stem>.<mask>.png (8-bit, 0/255, upright frame) and
 * <stem>.masks.json (per mask: area fraction, bounding box, PNG as base64).
 */
#include "cli.h"

#include <getopt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct dec_job {
    const char *path;
    sp_image_params ip;
    sp_image *img;
    sp_status st;
    char err[512];
    double secs;
} dec_job;

static void *dec_main(void *arg)
{
    dec_job *j = arg;
    double t0 = sp_now();
    j->st = sp_image_read(j->path, &j->ip, &j->img);
    if (j->st)
        snprintf(j->err, sizeof j->err, "%s", sp_last_error());
    j->secs = sp_now() - t0;
    return NULL;
}

static char *stem_of(const char *path)
{
    const char *b = strrchr(path, '/');
    char *s = strdup(b ? b + 1 : path);
    char *dot = strrchr(s, '.');
    if (dot && dot != s)
        *dot = 0;
    return s;
}

/* write one photo's outputs; PNG files and the JSON go through temp + rename */
static sp_status write_outputs(const char *dir, const char *path, const sp_image *img, const sp_masks_result *r,
                               double *enc_secs)
{
    double t0 = sp_now();
    char *stem = stem_of(path);
    char jpath[4096], tmp[4200];
    snprintf(jpath, sizeof jpath, "%s/%s.masks.json", dir, stem);
    snprintf(tmp, sizeof tmp, "%s.tmp", jpath);
    FILE *f = fopen(tmp, "w");
    sp_status st = SP_OK;
    if (!f) {
        free(stem);
        return SP_ERR_IO;
    }
    fprintf(f, "{\"image\": \"%s\", \"width\": %d, \"height\": %d, \"orientation\": %d, \"masks\": {", path,
            r->width, r->height, img->orientation);
    for (int k = 0; k < r->n_masks && !st; k++) {
        const sp_mask *m = &r->masks[k];
        void *png;
        size_t n;
        if ((st = sp_mask_png(m, r->width, r->height, &png, &n)))
            break;
        char ppath[4096];
        snprintf(ppath, sizeof ppath, "%s/%s.%s.png", dir, stem, m->name);
        st = sp_write_file_atomic(ppath, png, n);
        fprintf(f, "%s\n  \"%s\": {\"area_fraction\": %.6f, \"bbox\": [%d, %d, %d, %d], \"png_base64\": \"", k ? "," : "",
                m->name, m->area_fraction, m->bbox[0], m->bbox[1], m->bbox[2], m->bbox[3]);
        char *enc = sp_base64(png, n);
        fputs(enc ? enc : "", f);
        free(enc);
        fputs("\"}", f);
        free(png);
    }
    fputs("\n}}\n", f);
    if (fclose(f) != 0 && !st)
        st = SP_ERR_IO;
    if (st)
        remove(tmp);
    else
        rename(tmp, jpath);
    free(stem);
    *enc_secs += sp_now() - t0;
    return st;
}

int cmd_masks(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"model", required_argument, 0, 'm'},
        {"masks", required_argument, 0, 'M'}, {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'}, {"long-side", required_argument, 0, 'L'},
        {"max-pixels", required_argument, 0, 'P'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
#ifndef SP_DEFAULT_MASKS_DIR
#define SP_DEFAULT_MASKS_DIR "models/demo-rooms"
#endif
    const char *out = NULL, *model = getenv("SEGPIPE_MASKS_MODEL");
    if (!model || !*model)
        model = SP_DEFAULT_MASKS_DIR;
    char *maskarg = NULL;
    const char *names[32];
    int nnames = 0, batch = 1, quiet = 0, c;
    sp_masks_params mp = sp_masks_default_params();
    sp_image_params ip = sp_image_default_params();
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:m:b:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'm': model = optarg; break;
        case 'M': maskarg = optarg; break;
        case 'b': batch = atoi(optarg); break;
        case 't': mp.threads = atoi(optarg); break;
        case 'L': mp.long_side = atoi(optarg); break;
        case 'P': ip.max_pixels = strtoull(optarg, NULL, 10); break;
        case 'q': quiet = 1; break;
        case 'h':
            printf("usage: segpipe masks PHOTO... -o DIR [--model DIR] [--masks wall,floor] [--batch N]\n"
                   "                     [--threads N] [--long-side N] [--max-pixels N] [--quiet]\n"
                   "One inference per batch returns every mask (JPEG, PNG; EXIF orientation applied;\n"
                   "masks in the upright frame). Writes DIR/<photo>.<mask>.png and DIR/<photo>.masks.json.\n"
                   "Default model: %s (a demo trained on rendered rooms).\n", model);
            return 0;
        default: return cli_usage_error("masks", "unknown option");
        }
    }
    if (optind >= argc || !out || !model || batch < 1 || batch > 64)
        return cli_usage_error("masks", "expected PHOTO... -o DIR (and --batch 1..64)");
    char *mcopy = maskarg ? strdup(maskarg) : NULL;
    for (char *tok = mcopy ? strtok(mcopy, ",") : NULL; tok && nnames < 32; tok = strtok(NULL, ","))
        names[nnames++] = tok;
    if (mcopy) {
        mp.masks = names;
        mp.n_masks = nnames;
    }
    if (!ip.min_long_side)
        ip.min_long_side = mp.long_side > 0 ? mp.long_side : 768;
    cli_mkdir_p(out);
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = mp.threads;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_status st;
    int rc = 0, failed = 0, done = 0;
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, model, &pk))) {
        rc = cli_fail(st, NULL);
        goto end;
    }
    sp_timings t = {0};
    double enc = 0, w0 = sp_now();
    for (int i = optind; i < argc; i += batch) {
        int nb = argc - i < batch ? argc - i : batch;
        dec_job jobs[64];
        pthread_t th[64];
        double t0 = sp_now();
        for (int k = 0; k < nb; k++) {
            memset(&jobs[k], 0, sizeof jobs[k]);
            jobs[k].path = argv[i + k];
            jobs[k].ip = ip;
            pthread_create(&th[k], NULL, dec_main, &jobs[k]);
        }
        for (int k = 0; k < nb; k++)
            pthread_join(th[k], NULL);
        sp_timings_add(&t, "decode", sp_now() - t0);
        sp_image *imgs[64];
        const char *paths[64];
        int ok = 0;
        for (int k = 0; k < nb; k++) {
            if (jobs[k].st) {
                fprintf(stderr, "segpipe: %s\n", jobs[k].err);
                rc = sp_status_exit_code(jobs[k].st);
                failed++;
                continue;
            }
            paths[ok] = jobs[k].path;
            imgs[ok++] = jobs[k].img;
        }
        if (ok) {
            sp_masks_result **res = NULL;
            if ((st = sp_masks_run(pk, imgs, ok, &mp, &res, &t))) {
                rc = cli_fail(st, NULL);
                failed += ok;
            } else {
                for (int k = 0; k < ok; k++) {
                    if (write_outputs(out, paths[k], imgs[k], res[k], &enc)) {
                        fprintf(stderr, "segpipe: %s: cannot write outputs in %s\n", paths[k], out);
                        rc = 6;
                        failed++;
                    } else {
                        done++;
                    }
                    sp_masks_result_free(res[k]);
                }
                free(res);
            }
        }
        for (int k = 0; k < ok; k++)
            sp_image_free(imgs[k]);
        if (rc == 2 || rc == 4)   /* usage/model errors repeat for every batch */
            break;
    }
    sp_timings_add(&t, "encode", enc);
    double wall = sp_now() - w0;
    if (!quiet) {
        double total = sp_timings_total(&t);
        printf("%-12s %9s %7s\n", "stage", "seconds", "share");
        for (int k = 0; k < t.n; k++)
            printf("%-12s %9.3f %6.1f%%\n", t.stage[k].name, t.stage[k].seconds,
                   total > 0 ? 100 * t.stage[k].seconds / total : 0);
        printf("%d photo(s) done, %d failed, %.2f images/s (wall %.3f s), %llu inference call(s)\n", done,
               failed, wall > 0 ? done / wall : 0, wall,
               pk ? (unsigned long long)sp_model_run_count(sp_package_model(pk)) : 0ull);
    }
end:
    free(mcopy);
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}
