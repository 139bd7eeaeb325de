/*
 * batch.c — one CT input to an output folder, with models loaded once: the
 * common step of sharded batch runs (`segpipe ct --inputs LIST --shard I/N`)
 * and of queue workers (`segpipe worker`, queue_worker.c). Results are
 * idempotent: written under a temporary name and renamed, so a run killed
 * half-way leaves no partial output and a repeated run writes the same file.
 */
#include "cli.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const precisions[4] = {"auto", "fp32", "fp16", "int8"};

struct cli_batch {
    pthread_mutex_t mu;   /* rt[], models[]: cases may run on several threads (--jobs) */
    sp_runtime *rt[4];   /* one per precision (auto, fp32, fp16, int8), made on first use */
    sp_runtime_params rp;
    char device[16];
    sp_ct_params cp;
    struct {
        char dir[PATH_MAX];
        int prec;
        sp_package *pk;
    } models[8];
    int n_models;
};

cli_batch *cli_batch_new(int threads, const char *device)
{
    cli_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->rp = sp_runtime_default_params();
    b->rp.threads = threads;
    snprintf(b->device, sizeof b->device, "%s", device ? device : "cpu");
    b->rp.device = b->device;
    b->cp = sp_ct_default_params();
    b->cp.threads = threads;
    pthread_mutex_init(&b->mu, NULL);
    if (sp_runtime_create(&b->rp, &b->rt[0])) {
        pthread_mutex_destroy(&b->mu);
        free(b);
        return NULL;
    }
    return b;
}

const char *cli_batch_device(const cli_batch *b) { return b->device; }

void cli_batch_free(cli_batch *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->n_models; i++)
        sp_package_free(b->models[i].pk);
    for (int i = 0; i < 4; i++)
        sp_runtime_free(b->rt[i]);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* the package in dir at a precision (index into precisions), loaded on
 * first use (the 8 most recent kept; one model per run when cases run on
 * several threads, so none is evicted while in use) */
static sp_status model_locked(cli_batch *b, const char *dir, int prec, sp_package **pk)
{
    if (!dir || !*dir)
        dir = sp_default_model_dir();
    for (int i = 0; i < b->n_models; i++)
        if (!strcmp(b->models[i].dir, dir) && b->models[i].prec == prec)
            return *pk = b->models[i].pk, SP_OK;
    sp_status st;
    if (!b->rt[prec]) {
        sp_runtime_params rp = b->rp;
        rp.precision = precisions[prec];
        if ((st = sp_runtime_create(&rp, &b->rt[prec])))
            return st;
    }
    if (b->n_models == 8) {   /* the oldest goes */
        sp_package_free(b->models[0].pk);
        memmove(&b->models[0], &b->models[1], 7 * sizeof b->models[0]);
        b->n_models = 7;
    }
    if ((st = sp_package_load(b->rt[prec], dir, pk)))
        return st;
    snprintf(b->models[b->n_models].dir, PATH_MAX, "%s", dir);
    b->models[b->n_models].prec = prec;
    b->models[b->n_models++].pk = *pk;
    return SP_OK;
}

static sp_status model(cli_batch *b, const char *dir, int prec, sp_package **pk)
{
    pthread_mutex_lock(&b->mu);
    sp_status st = model_locked(b, dir, prec, pk);
    pthread_mutex_unlock(&b->mu);
    return st;
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
    cli_batch_job jo = {0};
    return cli_batch_run_job(b, model_dir, &jo, input, labels_path, passport_path, seconds, progress, user);
}

/* the labels as NIfTI, or a DICOM-SEG referencing a DICOM input */
static sp_status write_labels(const cli_batch_job *jo, const char *path, const sp_ct_result *res, const sp_volume *v,
                              const sp_package *pk)
{
    const uint16_t *lab = sp_ct_result_labels(res, NULL);
    if (!jo->dicom_out)
        return sp_labels_write_named(path, lab, v, sp_package_labels(pk), sp_package_num_classes(pk));
    /* a NIfTI input: SP_ERR_USAGE with the reason (a DICOM-SEG references its series) */
    char desc[128];
    snprintf(desc, sizeof desc, "segpipe %s", sp_package_name(pk));
    return sp_labels_write_dicom_seg(path, lab, v, sp_package_labels(pk), sp_package_num_classes(pk), desc);
}

sp_status cli_batch_run_job(cli_batch *b, const char *model_dir, const cli_batch_job *jo, const char *input,
                            const char *labels_path, const char *passport_path, double *seconds,
                            void (*progress)(const char *, int, int, void *), void *user)
{
    sp_package *pk;
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    double t0 = sp_now();
    int prec = 0;
    for (int i = 0; i < 4; i++)
        if (jo->precision && !strcmp(jo->precision, precisions[i]))
            prec = i;
    sp_status st = model(b, model_dir, prec, &pk);
    if (st)
        return st;
    sp_read_params rdp = sp_read_default_params();
    rdp.dicom_series = jo->series;
    sp_ct_check chk = {pk, jo->cp ? jo->cp : &b->cp};   /* the run's grid and tile limits, from the header */
    rdp.check_header = sp_ct_header_check;
    rdp.check_user = &chk;
    rdp.cancel = jo->cancel;   /* a DICOM reader stops with the job */
    double t1 = sp_now();
    if ((st = sp_volume_sniff(input)) || (st = sp_volume_read(input, &rdp, &v)))
        return st;
    if (jo->timings)
        sp_timings_add(jo->timings, "read", sp_now() - t1);
    sp_ct_params cp = jo->cp ? *jo->cp : b->cp;
    cp.threads = b->cp.threads;
    cp.progress = progress;
    cp.progress_user = user;
    cp.cancel = jo->cancel;
    cp.release_input = 1;   /* the writer reads only the geometry */
    if (!(st = sp_ct_run_inplace(pk, v, &cp, &res))) {
        const sp_timings *rt = sp_ct_result_timings(res);
        for (int i = 0; jo->timings && i < rt->n; i++)
            sp_timings_add(jo->timings, rt->stage[i].name, rt->stage[i].seconds);
        t1 = sp_now();
        st = write_labels(jo, labels_path, res, v, pk);
        const char *pj = sp_ct_result_passport_json(res);
        char *pv = !st && pj && passport_path
                       ? cli_passport_provenance(pj, input, model_dir ? model_dir : sp_default_model_dir(), "batch",
                                                 0, NULL, NULL)
                       : NULL;
        if (!st && pj && passport_path)
            st = pv ? sp_write_file_atomic(passport_path, pv, strlen(pv)) : SP_ERR_NOMEM;
        free(pv);
        if (jo->timings)
            sp_timings_add(jo->timings, "write", sp_now() - t1);
    }
    sp_ct_result_free(res);
    sp_volume_free(v);
    if (seconds)
        *seconds = sp_now() - t0;
    return st;
}
