/*
 * queue_admit.c — a worker's trust boundary (docs/scale-out.md): a job is
 * run only when its input resolves (symlinks followed) inside one of the
 * worker's --input-root folders, is a regular file or a folder whose links
 * all stay inside the roots, its output folder resolves inside an
 * --output-root, its model is a name on the worker's --model list, and its
 * ct options pass segpipe ct's parser. Everything else is refused before a
 * byte of any file is read, with a reason that quotes none of the entry's
 * values.
 */
#include "queue_worker.h"

#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int under_any(char roots[][PATH_MAX], int n, const char *p)
{
    for (int i = 0; i < n; i++)
        if (q_under(p, roots[i]))
            return 1;
    return 0;
}

/* nftw has no user pointer: the walk's state (one walk at a time) */
static struct {
    const q_worker_cfg *o;
    long entries;
    int escapes;
} walk;

static int walk_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)ftw;
    if (++walk.entries > 100000)
        return 1;
    if (flag == FTW_SL) {
        char t[PATH_MAX];
        if (realpath(p, t) && !under_any((char(*)[PATH_MAX])walk.o->in_roots, walk.o->n_in, t))
            return walk.escapes = 1, 1;
    }
    return 0;
}

/* the input resolved into real: Q_OK, Q_REJECT (outside the roots) or
 * Q_INPUT (missing, unreadable, not a file or folder) with why */
static int admit_input(const q_worker_cfg *o, const char *in, char *real, char *why, size_t cap)
{
    if (!realpath(in, real))
        return snprintf(why, cap, "input not found or not accessible"), Q_INPUT;
    if (!under_any((char(*)[PATH_MAX])o->in_roots, o->n_in, real))
        return snprintf(why, cap, "input outside the worker's --input-root"), Q_REJECT;
    struct stat st;
    if (stat(real, &st) || (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)))
        return snprintf(why, cap, "input is not a regular file or a folder"), Q_INPUT;
    if (access(real, R_OK) || (S_ISDIR(st.st_mode) && access(real, X_OK)))
        return snprintf(why, cap, "input not readable by the worker"), Q_INPUT;
    if (S_ISDIR(st.st_mode)) {
        walk.o = o, walk.entries = 0, walk.escapes = 0;
        int rc = nftw(real, walk_one, 16, FTW_PHYS);
        if (walk.escapes)
            return snprintf(why, cap, "input folder holds a link leading outside the worker's --input-root"),
                   Q_REJECT;
        if (rc)
            return snprintf(why, cap, "input folder unreadable or with more than 100000 entries"), Q_INPUT;
    }
    return Q_OK;
}

/* the output folder resolved (its missing tail made) into real */
static int admit_output(const q_worker_cfg *o, const char *out, char *real, char *why, size_t cap)
{
    char head[PATH_MAX], tail[PATH_MAX] = "", t2[PATH_MAX];
    snprintf(head, sizeof head, "%s", out);
    for (size_t n = strlen(head); n > 1 && head[n - 1] == '/'; n--)
        head[n - 1] = 0;
    while (!realpath(head, real)) {
        char *s = strrchr(head, '/');
        if (errno != ENOENT || !s || s == head)
            return snprintf(why, cap, "output folder not accessible"), Q_REJECT;
        snprintf(t2, sizeof t2, "%s%s", s, tail);
        memcpy(tail, t2, sizeof tail);
        *s = 0;
    }
    if (strlen(real) + strlen(tail) >= PATH_MAX)
        return snprintf(why, cap, "output path too long"), Q_REJECT;
    strcat(real, tail);
    if (!under_any((char(*)[PATH_MAX])o->out_roots, o->n_out, real))
        return snprintf(why, cap, "output outside the worker's --output-root"), Q_REJECT;
    if (cli_mkdir_p(real))
        return snprintf(why, cap, "cannot make the output folder"), Q_INPUT;
    if (!realpath(real, t2) || !under_any((char(*)[PATH_MAX])o->out_roots, o->n_out, t2))
        return snprintf(why, cap, "output folder left the worker's --output-root while being made"), Q_REJECT;
    memcpy(real, t2, PATH_MAX);
    return Q_OK;
}

int q_admit(const q_worker_cfg *o, const cli_batch *b, const q_job *j, q_plan *pl, char *why, size_t cap)
{
    memset(pl, 0, sizeof *pl);
    pl->model = NULL;
    for (int i = 0; i < o->n_models; i++)
        if ((!j->model[0] && i == 0) || !strcmp(j->model, o->models[i].name))
            pl->model = o->models[i].dir;
    if (!pl->model)
        return snprintf(why, cap, "unknown model: not on this worker's --model list"), Q_REJECT;
    if (q_opts_parse(j->opts, &pl->ct, pl->args, why, cap))
        return Q_REJECT;
    const char *dev = pl->ct.rp.device;
    char want[16], have[16];
    int wi, hi;
    if (dev && (sp_device_parse(dev, want, sizeof want, &wi) ||
                sp_device_parse(cli_batch_device(b), have, sizeof have, &hi) || strcmp(want, have)))
        return snprintf(why, cap, "the job wants device %s; this worker runs %s (a queue per device kind: "
                        "--prefix)", dev, cli_batch_device(b)), Q_REJECT;
    pl->ct.cp.spill_dir = NULL;
    pl->ct.cp.keep_model_labels = 0;
    int rc = admit_input(o, j->input, pl->input, why, cap);
    if (rc == Q_OK)
        rc = admit_output(o, j->output, pl->outdir, why, cap);
    if (rc != Q_OK)
        return rc;
    char name[PATH_MAX];
    cli_batch_name(j->input, name, sizeof name);
    const char *ext = pl->ct.dicom_out ? "dcm" : "nii.gz";
    if (snprintf(pl->labels, sizeof pl->labels, "%s/%s.%s.%s", pl->outdir, name, j->id, ext) >= PATH_MAX ||
        snprintf(pl->passport, sizeof pl->passport, "%s/%s.%s.passport.json", pl->outdir, name, j->id) >= PATH_MAX)
        return snprintf(why, cap, "output path too long"), Q_REJECT;
    return Q_OK;
}
