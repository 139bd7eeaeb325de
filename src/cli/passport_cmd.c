/*
 * passport_cmd.c — `segpipe passport`: every structure of any tool's label
 * map (a multilabel file or TotalSegmentator's one-file-per-class folder)
 * measured on its CT in one pass.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

typedef struct pp_opts {
    const char *ct, *labels, *map, *out, *stats;
    sp_passport_params pp;
    int quiet;
} pp_opts;

static void pp_help(void)
{
    printf("usage: segpipe passport --ct CT.nii.gz --labels LABELS.nii.gz|FOLDER [--label-map map.json]\n"
           "                        [-o passport.json] [--statistics statistics.json]\n"
           "                        [--keep-border] [--no-components] [--threads N] [--quiet]\n"
           "Measures every structure of LABELS (any tool's output) on CT in one pass. Names come\n"
           "from --label-map, else from the label table in the file's NIfTI extension\n"
           "(TotalSegmentator's multilabel output, segpipe's own). FOLDER: one <name>.nii.gz mask\n"
           "per class (TotalSegmentator without --ml). The folders of -o and --statistics are\n"
           "made when missing.\n");
}

/* -1: go on; else the exit code */
static int pp_parse(int argc, char **argv, pp_opts *o)
{
    const cli_opt t[] = {
        {.name = "ct", .kind = CLI_STR, .dst = &o->ct, .value = "CT.nii.gz"},
        {.name = "labels", .kind = CLI_STR, .dst = &o->labels, .value = "LABELS.nii.gz or a folder"},
        {.name = "label-map", .kind = CLI_STR, .dst = &o->map, .value = "map.json"},
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &o->out, .value = "passport.json"},
        {.name = "statistics", .kind = CLI_STR, .dst = &o->stats, .value = "statistics.json"},
        {.name = "keep-border", .kind = CLI_FLAG, .dst = &o->pp.keep_border},
        {.name = "no-components", .kind = CLI_CLEAR, .dst = &o->pp.components},
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &o->pp.threads, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "quiet", .letter = 'q', .kind = CLI_FLAG, .dst = &o->quiet},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    cli_args a = {0};
    int rc = cli_parse("passport", t, NULL, argc, argv, o, &a);
    if (rc == CLI_HELP_ASKED) {
        pp_help();
        return 0;
    }
    if (rc)
        return rc;
    if (!o->ct || !o->labels || a.n)
        return cli_usage_error("passport", "--ct and --labels are required");
    cli_set_quiet(o->quiet);
    return -1;
}

/* the labels on the CT's grid (same dims, affines within tolerance); 0 or 3 */
static int same_grid(const pp_opts *o, const sp_volume *ct, const sp_volume *lg)
{
    sp_volume_info a, b;
    sp_volume_get_info(ct, &a);
    sp_volume_get_info(lg, &b);
    for (int i = 0; i < 3; i++)
        if (a.dim[i] != b.dim[i]) {
            cli_errf("%s is %lldx%lldx%lld but %s is %lldx%lldx%lld: the labels must be "
                    "on the CT's grid\n", o->ct, (long long)a.dim[0], (long long)a.dim[1], (long long)a.dim[2],
                    o->labels, (long long)b.dim[0], (long long)b.dim[1], (long long)b.dim[2]);
            return 3;
        }
    for (int r = 0; r < 3; r++)
        for (int q = 0; q < 4; q++) {
            double tol = q < 3 ? 1e-3 * (a.spacing[q] > 0 ? a.spacing[q] : 1) : 1e-2;
            double d = a.affine[r][q] - b.affine[r][q];
            if (d > tol || d < -tol) {
                cli_errf("%s and %s have different affines (element [%d][%d]: %g vs %g)\n",
                        o->ct, o->labels, r, q, a.affine[r][q], b.affine[r][q]);
                return 3;
            }
        }
    return 0;
}

/* the passport written (or printed) and its table shown */
static int pp_output(const pp_opts *o, const sp_passport *ps, double read_s, double pass_s)
{
    int rc;
    if (o->out && ((rc = cli_output_folder("passport", o->out)) || (rc = cli_write_text(o->out, sp_passport_json(ps)))))
        return rc;
    if (o->stats && ((rc = cli_output_folder("passport", o->stats)) ||
                     (rc = cli_write_text(o->stats, sp_passport_statistics_json(ps)))))
        return rc;
    if (!o->out && !o->stats)
        fputs(sp_passport_json(ps), stdout);
    if (!o->quiet) {
        FILE *f = o->out || o->stats ? stdout : stderr;
        fputs(sp_passport_table(ps), f);
        fprintf(f, "read %.3f s, passport %.3f s\n", read_s, pass_s);
    }
    return 0;
}

int cmd_passport(int argc, char **argv)
{
    pp_opts o = {.pp = sp_passport_default_params()};
    int rc = pp_parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    rc = 0;
    sp_volume *ct = NULL, *lg = NULL;
    uint16_t *lab = NULL;
    char **names = NULL;
    int nn = 0;
    sp_passport *ps = NULL;
    sp_status st;
    double t0 = sp_now();
    if (o.map && (st = read_label_map(o.map, &names, &nn))) {
        cli_errf("%s: cannot read the label map (a JSON object {\"1\": \"name\", ...})\n", o.map);
        return sp_status_exit_code(st);
    }
    struct stat lsb;
    int folder = stat(o.labels, &lsb) == 0 && S_ISDIR(lsb.st_mode);
    if ((st = sp_volume_read(o.ct, NULL, &ct)) || (!folder && (st = sp_labels_read(o.labels, NULL, &lab, &lg))))
        rc = cli_fail(st, NULL);
    else if (folder)
        rc = cli_read_label_folder("passport: --labels", o.labels, &names, &nn, &lab, &lg);
    if (!rc && !names)   /* names stored in the file (TotalSegmentator's multilabel output, segpipe's own) */
        nn = sp_volume_label_names(lg, &names);
    if (!rc)
        rc = same_grid(&o, ct, lg);
    double t1 = sp_now();
    o.pp.source = o.labels;
    if (!rc && (st = sp_passport_compute(ct, lab, (const char *const *)names, nn, &o.pp, &ps)))
        rc = cli_fail(st, NULL);
    if (!rc)
        rc = pp_output(&o, ps, t1 - t0, sp_now() - t1);
    sp_passport_free(ps);
    sp_volume_free(ct);
    sp_volume_free(lg);
    free(lab);
    for (int i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    return rc;
}
