/*
 * batch.c — one CT input to an output folder, with models loaded once: the
 * common step of sharded batch runs (`segpipe ct --inputs LIST --shard I/N`)
 * and of queue workers (`segpipe worker`, worker_cmd.c). Results are
 * idempotent: written under a temporary name and renamed, so a run killed
 * half-way leaves no partial output and a repeated run writes the same file.
 */
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct cli_batch {
    sp_runtime *rt;
    sp_ct_params cp;
    struct {
        char dir[PATH_MAX];
        sp_package *pk;
    } models[8];
    int n_models;
};

cli_batch *cli_batch_new(int threads, const char *device)
{
    cli_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = threads;
    if (device)
        rp.device = device;
    b->cp = sp_ct_default_params();
    b->cp.threads = threads;
    if (sp_runtime_create(&rp, &b->rt)) {
        free(b);
        return NULL;
    }
    return b;
}

void cli_batch_free(cli_batch *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->n_models; i++)
        sp_package_free(b->models[i].pk);
    sp_runtime_free(b->rt);
    free(b);
}

/* the package in dir, loaded on first use (the 8 most recent kept) */
static sp_status model(cli_batch *b, const char *dir, sp_package **pk)
{
    if (!dir || !*dir)
        dir = sp_default_model_dir();
    for (int i = 0; i < b->n_models; i++)
        if (!strcmp(b->models[i].dir, dir))
            return *pk = b->models[i].pk, SP_OK;
    if (b->n_models == 8) {   /* the oldest goes */
        sp_package_free(b->models[0].pk);
        memmove(&b->models[0], &b->models[1], 7 * sizeof b->models[0]);
        b->n_models = 7;
    }
    sp_status st = sp_package_load(b->rt, dir, pk);
    if (st)
        return st;
    snprintf(b->models[b->n_models].dir, PATH_MAX, "%s", dir);
    b->models[b->n_models++].pk = *pk;
    return SP_OK;
}

void cli_batch_name(const char *input, char *out, size_t cap)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", input);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/')
        tmp[--n] = 0;
    const char *b = strrchr(tmp, '/');
    b = b ? b + 1 : tmp;
    snprintf(out, cap, "%s", b);
    n = strlen(out);
    const char *ext[] = {".nii.gz", ".nii", ".zip"};
    for (int i = 0; i < 3; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && !strcmp(out + n - e, ext[i])) {
            out[n - e] = 0;
            break;
        }
    }
}

int cli_batch_done(const char *labels_path)
{
    struct stat st;
    return stat(labels_path, &st) == 0 && st.st_size > 0;
}

sp_status cli_batch_run(cli_batch *b, const char *model_dir, const char *input, const char *labels_path,
                        const char *passport_path, double *seconds,
                        void (*progress)(const char *, int, int, void *), void *user)
{
    sp_package *pk;
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    double t0 = sp_now();
    sp_status st = model(b, model_dir, &pk);
    if (st)
        return st;
    sp_read_params rdp = sp_read_default_params();
    if ((st = sp_volume_sniff(input)) || (st = sp_volume_read(input, &rdp, &v)))
        return st;
    sp_ct_params cp = b->cp;
    cp.progress = progress;
    cp.progress_user = user;
    cp.release_input = 1;   /* the writer reads only the geometry */
    if (!(st = sp_ct_run_inplace(pk, v, &cp, &res)) &&
        !(st = sp_labels_write_named(labels_path, sp_ct_result_labels(res, NULL), v, sp_package_labels(pk),
                                     sp_package_num_classes(pk)))) {
        const char *pj = sp_ct_result_passport_json(res);
        char *pv = pj && passport_path ? cli_passport_provenance(pj, input, model_dir ? model_dir
                                                                 : sp_default_model_dir(), "batch", 0, NULL, NULL)
                                       : NULL;
        if (pj && passport_path)
            st = pv ? sp_write_file_atomic(passport_path, pv, strlen(pv)) : SP_ERR_NOMEM;
        free(pv);
    }
    sp_ct_result_free(res);
    sp_volume_free(v);
    if (seconds)
        *seconds = sp_now() - t0;
    return st;
}
