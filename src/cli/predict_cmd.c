/*
 * predict_cmd.c — `segpipe predict -i IN_DIR -o OUT_DIR -m PKG`: the folder
 * contract of nnUNetv2_predict over an imported package, so scripts written
 * for nnU-Net run unchanged. Every file of IN_DIR named CASE_XXXX.nii.gz
 * (or .nii) is channel XXXX of case CASE; a case needs exactly the
 * package's channels 0000..C-1. All cases are checked before the first one
 * runs (a missing channel, a stray file: exit 3, nothing written); each
 * case's channels are read, checked to share one grid, run through the
 * package (sp_ct_run_channels) and written as OUT_DIR/CASE.nii.gz (with
 * --save_probabilities also CASE.npz and nnU-Net's CASE.pkl properties;
 * the package's dataset.json and plans.json are copied to OUT_DIR, so
 * nnUNetv2_ensemble takes the folder).
 * nnU-Net's spellings: -f (the package's folds, checked: the folds are
 * chosen at import), --disable_tta, -step_size, -device,
 * --continue_prediction; -npp/-nps are accepted and do nothing (one
 * process reads, runs and writes).
 */
#include "cli.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PR_MAX_FILES 100000
#define PR_MAX_CH 9   /* 8 channels, and a cascade's previous labels */

typedef struct pr_opts {
    const char *in, *out, *model, *folds, *device, *prev;
    int threads, tta, quiet, verbose, skip_done, ignored, save_prob, half;
    double step;
    sp_runtime_params rp;
} pr_opts;

typedef struct pr_case {
    char *id;                 /* CASE */
    const char *ending;       /* ".nii.gz" or ".nii", of its channel 0 */
    char *file[PR_MAX_CH];    /* channel q's file name, or NULL */
} pr_case;

static void pr_help(void)
{
    printf("usage: segpipe predict -i IN_DIR -o OUT_DIR -m PKG [options]\n"
           "nnUNetv2_predict's folder contract: IN_DIR holds CASE_0000.nii.gz (and CASE_0001... for a\n"
           "multi-channel model); OUT_DIR/CASE.nii.gz receives each case's labels (and OUT_DIR the\n"
           "package's dataset.json and plans.json, for nnUNetv2_ensemble).\n"
           "  -i DIR                   input folder (CASE_XXXX.nii.gz, XXXX the channel)\n"
           "  -o DIR                   output folder (made when missing)\n"
           "  -m, --model PKG          the package (tools/import/import_nnunet.py MODEL_FOLDER -o PKG --fold ...)\n"
           "  -f F [F ...]             folds: must be the package's (they are chosen at import)\n"
           "      --tta / --no-tta     mirroring test-time augmentation (default: the package's, as\n"
           "                           nnUNetv2_predict); --disable_tta = --no-tta\n"
           "  -step_size F, --step F   sliding-window step (default 0.5)\n"
           "  -device D, --device D    cpu (default) or cuda\n"
           "  -t, --threads N          CPU threads (default: all cores)\n"
           "      --continue_prediction  skip cases whose output exists\n"
           "  -prev_stage_predictions DIR  a cascade stage: the previous stage's DIR/CASE.nii.gz labels\n"
           "      --save_probabilities  also OUT_DIR/CASE.npz (`probabilities`, float32 (classes, z, y, x))\n"
           "                           and CASE.pkl (its properties), as nnU-Net writes them (docs/cli.md)\n"
           "      --accumulator fp16   nnU-Net's own half-precision sums (default fp32; docs/model-format.md)\n"
           "  -npp N, -nps N           accepted (nnU-Net's worker counts); no effect\n"
           "  -q, --quiet / -v, --verbose\n"
           "Exit codes: docs/cli.md (3: a case's files are missing or do not fit together).\n");
}

static int opt_acc(const char *cmd, const char *v, void *ctx)
{
    if (strcmp(v, "fp32") && strcmp(v, "fp16"))
        return cli_usage_error(cmd, "--accumulator is fp32 or fp16");
    ((pr_opts *)ctx)->half = !strcmp(v, "fp16");
    return 0;
}

static int opt_folds(const char *cmd, const char *v, void *ctx)
{
    (void)cmd;
    ((pr_opts *)ctx)->folds = v;
    return 0;
}

/* the hints for nnUNetv2_predict's options that name a results folder */
static const cli_hint pr_hints[] = {
    {"-d", "segpipe predict runs an imported package: tools/import/import_nnunet.py MODEL_FOLDER -o PKG --fold "
           "0,1,2,3,4, then -m PKG"},
    {"-c", "the configuration is chosen at import (tools/import/import_nnunet.py --configuration); give -m PKG"},
    {"-tr", "the trainer's folder is imported (tools/import/import_nnunet.py MODEL_FOLDER -o PKG); give -m PKG"},
    {"-p", "the plans are imported with the model (tools/import/import_nnunet.py); give -m PKG"},
    {"-chk", "the checkpoint is chosen at import (tools/import/import_nnunet.py --checkpoint); give -m PKG"},
    {NULL, NULL}};

static int pr_parse(int argc, char **argv, pr_opts *o)
{
    const cli_opt t[] = {
        {.name = "input", .letter = 'i', .kind = CLI_STR, .dst = &o->in, .value = "IN_DIR"},
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &o->out, .value = "OUT_DIR"},
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &o->model, .value = "PKG"},
        {.name = "folds", .letter = 'f', .kind = CLI_FN, .fn = opt_folds, .value = "F [F ...]", .multi = 2},
        {.name = "tta", .kind = CLI_FLAG, .dst = &o->tta},
        {.name = "no-tta", .kind = CLI_CLEAR, .dst = &o->tta},
        {.name = "disable-tta", .kind = CLI_CLEAR, .dst = &o->tta},
        {.name = "step", .kind = CLI_NUM, .dst = &o->step, .lo = 1e-3, .hi = 1, .value = "F"},
        {.name = "step-size", .kind = CLI_NUM, .dst = &o->step, .lo = 1e-3, .hi = 1, .value = "F"},
        {.name = "device", .kind = CLI_STR, .dst = &o->device, .value = "cpu or cuda"},
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &o->threads, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "continue-prediction", .kind = CLI_FLAG, .dst = &o->skip_done},
        {.name = "prev-stage-predictions", .kind = CLI_STR, .dst = &o->prev, .value = "DIR"},
        {.name = "save-probabilities", .kind = CLI_FLAG, .dst = &o->save_prob},
        {.name = "accumulator", .kind = CLI_FN, .fn = opt_acc, .value = "fp32 or fp16"},
        {.name = "npp", .kind = CLI_INT, .dst = &o->ignored, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "nps", .kind = CLI_INT, .dst = &o->ignored, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "quiet", .letter = 'q', .kind = CLI_FLAG, .dst = &o->quiet},
        {.name = "verbose", .letter = 'v', .kind = CLI_FLAG, .dst = &o->verbose},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    /* nnU-Net spells some long options with one dash */
    static const char *const one_dash[] = {"-step_size", "-device", "-npp", "-nps", "-prev_stage_predictions"};
    static char buf[5][32];
    for (int i = 1; i < argc; i++)
        for (int k = 0; k < 5; k++)
            if (!strcmp(argv[i], one_dash[k])) {
                snprintf(buf[k], sizeof buf[k], "-%s", one_dash[k]);
                argv[i] = buf[k];
            }
    cli_args a = {0};
    int rc = cli_parse("predict", t, pr_hints, argc, argv, o, &a);
    if (rc == CLI_HELP_ASKED) {
        pr_help();
        return 0;
    }
    if (rc)
        return rc;
    cli_set_quiet(o->quiet);
    cli_set_logging(o->verbose);
    if (a.n)
        return cli_usage_error("predict", "no positional arguments: -i IN_DIR -o OUT_DIR -m PKG");
    if (!o->in || !o->out || !o->model)
        return cli_usage_error("predict", "-i IN_DIR, -o OUT_DIR and -m PKG are required");
    if (o->tta >= 0)
        o->rp.tta = o->tta ? "on" : "off";
    if (o->device)
        o->rp.device = o->device;
    o->rp.threads = o->threads;
    return -1;
}

/* "CASE_0003.nii.gz" -> 1 with *case_len the length of CASE, *ch 3, *ending */
static int split_name(const char *name, size_t *case_len, int *ch, const char **ending)
{
    size_t n = strlen(name), e;
    if (n > 7 && !strcmp(name + n - 7, ".nii.gz"))
        e = 7, *ending = ".nii.gz";
    else if (n > 4 && !strcmp(name + n - 4, ".nii"))
        e = 4, *ending = ".nii";
    else
        return 0;
    if (n < e + 6 || name[n - e - 5] != '_')
        return 0;
    for (size_t k = n - e - 4; k < n - e; k++)
        if (name[k] < '0' || name[k] > '9')
            return 0;
    *ch = atoi(name + n - e - 4);
    *case_len = n - e - 5;
    return 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void cases_free(pr_case *c, int n)
{
    for (int i = 0; i < n; i++) {
        free(c[i].id);
        for (int q = 0; q < PR_MAX_CH; q++)
            free(c[i].file[q]);
    }
    free(c);
}

/* IN_DIR's NIfTI files (sorted) into *names; 0 or an exit code */
static int list_inputs(const char *dir, char ***names, int *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return fprintf(stderr, "segpipe predict: %s: cannot open the input folder\n", dir), 6;
    char **v = NULL;
    int k = 0, cap = 0, rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || !((len > 4 && !strcmp(e->d_name + len - 4, ".nii")) ||
                                     (len > 7 && !strcmp(e->d_name + len - 7, ".nii.gz"))))
            continue;
        if (k == PR_MAX_FILES) {
            rc = (fprintf(stderr, "segpipe predict: %s holds over %d NIfTI files\n", dir, PR_MAX_FILES), 3);
            break;
        }
        if (k == cap) {
            char **w = realloc(v, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *v);
            if (!w) {
                rc = 7;
                break;
            }
            v = w;
        }
        if (!(v[k] = strdup(e->d_name))) {
            rc = 7;
            break;
        }
        k++;
    }
    closedir(d);
    if (v)
        qsort(v, (size_t)k, sizeof *v, by_name);
    *names = v;
    *n = k;
    return rc;
}

/* The files grouped into cases, each with exactly channels 0..C-1; 0 or an
 * exit code after naming the first file or case that does not fit */
static int group_cases(const char *dir, char **names, int n, int C, pr_case **out, int *ncases)
{
    pr_case *c = calloc((size_t)(n ? n : 1), sizeof *c);
    int k = 0;
    if (!c)
        return 7;
    for (int i = 0; i < n; i++) {
        size_t len;
        int ch;
        const char *ending;
        if (!split_name(names[i], &len, &ch, &ending)) {
            fprintf(stderr, "segpipe predict: %s/%s is not named CASE_XXXX.nii.gz (XXXX: the channel, 0000 for "
                    "the first), nnU-Net's input convention\n", dir, names[i]);
            return cases_free(c, k), 3;
        }
        if (!k || strlen(c[k - 1].id) != len || strncmp(c[k - 1].id, names[i], len))
            if (!(c[k++].id = strndup(names[i], len)))
                return cases_free(c, k), 7;
        if (ch >= C) {
            fprintf(stderr, "segpipe predict: %s/%s is channel %d, but the model takes %d channel%s (0000%s)\n", dir,
                    names[i], ch, C, C == 1 ? "" : "s", C == 1 ? " only" : " and up");
            return cases_free(c, k), 3;
        }
        if (!ch)
            c[k - 1].ending = ending;
        c[k - 1].file[ch] = strdup(names[i]);
    }
    for (int i = 0; i < k; i++)
        for (int q = 0; q < C; q++)
            if (!c[i].file[q]) {
                fprintf(stderr, "segpipe predict: case %s has no channel %04d (%s/%s_%04d.nii.gz): the model "
                        "takes %d channel%s\n", c[i].id, q, dir, c[i].id, q, C, C == 1 ? "" : "s");
                return cases_free(c, k), 3;
            }
    *out = c;
    *ncases = k;
    return 0;
}

/* -f must name the package's folds (any order) */
static int check_folds(const char *asked, const sp_package *pk)
{
    const char *have = sp_package_nnunet_folds(pk);
    char a[256], b[256];
    if (!*have) {
        fprintf(stderr, "segpipe predict: -f %s: the package records no nnU-Net folds (import it with "
                "tools/import/import_nnunet.py --fold)\n", asked);
        return 2;
    }
    /* as sorted lists of words */
    const char *src[2] = {asked, have};
    char *dst[2] = {a, b};
    for (int s = 0; s < 2; s++) {
        char buf[256], *words[64], *save = NULL;
        int n = 0;
        snprintf(buf, sizeof buf, "%s", src[s]);
        for (char *w = strtok_r(buf, ", ", &save); w && n < 64; w = strtok_r(NULL, ", ", &save))
            words[n++] = w;
        qsort(words, (size_t)n, sizeof *words, by_name);
        dst[s][0] = 0;
        for (int i = 0; i < n; i++)
            snprintf(dst[s] + strlen(dst[s]), 256 - strlen(dst[s]), "%s%s", i ? "," : "", words[i]);
    }
    if (strcmp(a, b)) {
        fprintf(stderr, "segpipe predict: -f %s: this package averages folds %s (folds are chosen at import: "
                "tools/import/import_nnunet.py MODEL_FOLDER -o PKG --fold %s)\n", asked, have, a);
        return 2;
    }
    return 0;
}

/* nnU-Net's CASE.npz ((classes, z, y, x), i fastest) and CASE.pkl (the
 * case's properties); the .npz is removed when the .pkl fails, so that
 * nnUNetv2_ensemble never finds one without the other */
static sp_status save_probabilities(const pr_opts *o, const pr_case *c, const sp_ct_result *res, const sp_volume *v0)
{
    char npz[4096], pkl[4096];
    int64_t dim[3];
    int ncls;
    sp_ct_result_labels(res, dim);
    const float *pr = sp_ct_result_probabilities(res, &ncls);
    int64_t shape[4] = {ncls, dim[2], dim[1], dim[0]};
    snprintf(npz, sizeof npz, "%s/%s.npz", o->out, c->id);
    snprintf(pkl, sizeof pkl, "%s/%s.pkl", o->out, c->id);
    sp_status st = sp_npz_write_f32(npz, "probabilities", pr, shape, 4);
    if (!st && (st = sp_ct_result_write_nnunet_pkl(res, v0, pkl)))
        remove(npz);
    return st;
}

/* One case: its channels read (header-checked), run, labels written */
static int run_case(const pr_opts *o, sp_package *pk, const pr_case *c, int C, const sp_ct_params *cp)
{
    char path[4096], out[4096];
    sp_volume *v[PR_MAX_CH] = {0};
    sp_ct_result *res = NULL;
    sp_status st = SP_OK;
    int rc = 0;
    snprintf(out, sizeof out, "%s/%s%s", o->out, c->id, c->ending);
    sp_read_params rdp = sp_read_default_params();
    sp_ct_check chk = {pk, cp};
    rdp.check_header = sp_ct_header_check;
    rdp.check_user = &chk;
    int nv = C + (o->prev != NULL);   /* a cascade: its previous stage's labels after the images */
    for (int q = 0; q < nv && !st; q++) {
        if (q < C)
            snprintf(path, sizeof path, "%s/%s", o->in, c->file[q]);
        else
            snprintf(path, sizeof path, "%s/%s%s", o->prev, c->id, c->ending);
        if ((rc = cli_check_input("predict", path)))
            break;
        st = sp_volume_read(path, &rdp, &v[q]);
    }
    if (!rc && !st)
        st = sp_ct_run_channels(pk, v, nv, cp, &res);
    if (!rc && !st)
        st = sp_labels_write_named(out, sp_ct_result_labels(res, NULL), v[0], sp_package_labels(pk),
                                   sp_package_num_classes(pk));
    if (!rc && !st && o->save_prob)
        st = save_probabilities(o, c, res, v[0]);
    if (!rc && st) {
        char ctx[300];
        snprintf(ctx, sizeof ctx, "case %s", c->id);
        rc = cli_fail(st, ctx);
    }
    if (!rc && !cli_quiet())
        printf("%s: %s\n", c->id, out);
    sp_ct_result_free(res);
    for (int q = 0; q < nv; q++)
        sp_volume_free(v[q]);
    return rc;
}

/* PKG/nnunet/NAME (the trained folder's dataset.json or plans.json, kept
 * at import) to OUT_DIR/NAME, as nnUNetv2_predict writes them there for
 * nnUNetv2_ensemble; none kept (an older import): nothing. 0 or exit 6 */
static int copy_nnunet_json(const pr_opts *o, const char *name)
{
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/nnunet/%s", o->model, name);
    snprintf(dst, sizeof dst, "%s/%s", o->out, name);
    FILE *in = fopen(src, "rb");
    if (!in)
        return 0;
    FILE *out = fopen(dst, "wb");
    char buf[1 << 16];
    size_t n, total = 0;
    int bad = !out;
    while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0 && (total += n) <= (64u << 20))
        bad = fwrite(buf, 1, n, out) != n;
    bad |= ferror(in) || total > (64u << 20);
    fclose(in);
    if (out && fclose(out))
        bad = 1;
    if (bad) {
        remove(dst);
        return fprintf(stderr, "segpipe predict: cannot copy the package's nnunet/%s to %s\n", name, dst), 6;
    }
    return 0;
}

static int pr_run(pr_opts *o)
{
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    char **names = NULL;
    pr_case *cases = NULL;
    int n = 0, nc = 0, rc;
    sp_status st;
    if ((st = sp_runtime_create(&o->rp, &rt)) || (st = sp_package_load(rt, o->model, &pk))) {
        rc = cli_fail(st, NULL);
        goto done;
    }
    if (!sp_package_is_volume(pk)) {
        rc = cli_usage_error("predict", "the package is not a volume (ct/mri) model");
        goto done;
    }
    int C, casc = sp_package_cascade(pk, &C);
    if (casc && !o->prev) {
        rc = cli_usage_error("predict", "this package is a cascade stage: give -prev_stage_predictions DIR (the "
                             "previous stage's OUT_DIR)");
        goto done;
    }
    if (!casc && o->prev) {
        rc = cli_usage_error("predict", "-prev_stage_predictions is for a cascade stage; this package is not one");
        goto done;
    }
    if ((o->folds && (rc = check_folds(o->folds, pk))) || (rc = list_inputs(o->in, &names, &n)) ||
        (rc = group_cases(o->in, names, n, C, &cases, &nc)))
        goto done;
    if (!nc) {
        rc = (fprintf(stderr, "segpipe predict: %s holds no CASE_XXXX.nii.gz file\n", o->in), 3);
        goto done;
    }
    for (int i = 0; o->prev && i < nc; i++) {   /* every case's previous-stage labels, before any run */
        char prev[4096];
        struct stat sb;
        snprintf(prev, sizeof prev, "%s/%s%s", o->prev, cases[i].id, cases[i].ending);
        if (stat(prev, &sb)) {
            rc = (fprintf(stderr, "segpipe predict: case %s has no previous-stage labels %s\n", cases[i].id, prev), 3);
            goto done;
        }
    }
    if (cli_mkdir_p(o->out)) {
        rc = (fprintf(stderr, "segpipe predict: cannot make the output folder %s\n", o->out), 6);
        goto done;
    }
    if ((rc = copy_nnunet_json(o, "dataset.json")) || (rc = copy_nnunet_json(o, "plans.json")))
        goto done;
    sp_ct_params cp = sp_ct_default_params();
    cp.passport = 0;
    cp.threads = o->threads;
    cp.step = o->step;
    cp.release_input = 1;
    cp.keep_probabilities = o->save_prob;
    cp.accum_fp16 = o->half;
    if (!cli_quiet())
        fprintf(stderr, "segpipe predict: %d case%s, %d channel%s, mirroring %s\n", nc, nc == 1 ? "" : "s", C,
                C == 1 ? "" : "s", sp_package_tta(pk) ? "on" : "off");
    for (int i = 0; i < nc && !rc; i++) {
        char out[4096];
        struct stat sb;
        snprintf(out, sizeof out, "%s/%s%s", o->out, cases[i].id, cases[i].ending);
        if (o->skip_done && !stat(out, &sb))
            continue;
        rc = run_case(o, pk, &cases[i], C, &cp);
    }
done:
    cases_free(cases, nc);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}

int cmd_predict(int argc, char **argv)
{
    pr_opts o = {.tta = -1, .rp = sp_runtime_default_params()};
    int rc = pr_parse(argc, argv, &o);
    return rc >= 0 ? rc : pr_run(&o);
}
