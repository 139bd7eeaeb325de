/*
 * volume_cmd.c — the small volume and model commands: `segpipe resample`
 * (benchmark inputs as TotalSegmentator's resampling makes them), `segpipe
 * model check|probe`, `segpipe models` and `segpipe tasks`.
 */
#include "cli.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define fail cli_fail
#define usage_error cli_usage_error

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

/* segpipe resample's options */
typedef struct rs_opts {
    const char *out, *dts, *in;
    double sp3[3], shp[3], pad[3], padv;
    int order, have_sp, have_shape, have_pad, have_padv;
} rs_opts;

/* a,b,c into dst (have set); 0 or 2 after printing msg */
static int triple(const char *cmd, const char *v, double *dst, int *have, const char *msg)
{
    *have = 1;
    return parse3(v, dst) ? usage_error(cmd, msg) : 0;
}

static int opt_spacing(const char *cmd, const char *v, void *ctx)
{
    return triple(cmd, v, ((rs_opts *)ctx)->sp3, &((rs_opts *)ctx)->have_sp, "--spacing a,b,c");
}

static int opt_shape(const char *cmd, const char *v, void *ctx)
{
    return triple(cmd, v, ((rs_opts *)ctx)->shp, &((rs_opts *)ctx)->have_shape, "--shape x,y,z");
}

static int opt_pad(const char *cmd, const char *v, void *ctx)
{
    return triple(cmd, v, ((rs_opts *)ctx)->pad, &((rs_opts *)ctx)->have_pad, "--pad x,y,z");
}

static int opt_pad_value(const char *cmd, const char *v, void *ctx)
{
    rs_opts *o = ctx;
    o->have_padv = 1;
    return cli_num(cmd, "--pad-value", v, -1e30, 1e30, &o->padv) ? 2 : 0;
}

/* -1: go on; else the exit code (help, usage errors) */
static int resample_parse(int argc, char **argv, rs_opts *o)
{
    const cli_opt t[] = {
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &o->out, .value = "OUT"},
        {.name = "spacing", .kind = CLI_FN, .fn = opt_spacing, .value = "a,b,c"},
        {.name = "shape", .kind = CLI_FN, .fn = opt_shape, .value = "x,y,z"},
        {.name = "order", .kind = CLI_INT, .dst = &o->order, .lo = 0, .hi = 1, .value = "0 or 1"},
        {.name = "pad", .kind = CLI_FN, .fn = opt_pad, .value = "x,y,z"},
        {.name = "pad-value", .kind = CLI_FN, .fn = opt_pad_value, .value = "V"},
        {.name = "dtype", .kind = CLI_STR, .dst = &o->dts, .value = "int16, uint8 or float32"},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    cli_args a = {0};
    int rc = cli_parse("resample", t, NULL, argc, argv, o, &a);
    if (rc == CLI_HELP_ASKED) {
        printf("usage: segpipe resample IN -o OUT (--spacing a,b,c | --shape x,y,z) [--order 0|1]\n"
               "                        [--pad x,y,z [--pad-value V]] [--dtype int16|uint8|float32]\n"
               "Resamples as scipy.ndimage.zoom (order 1 linear, order 0 nearest; TotalSegmentator's\n"
               "shape rule), then optionally pads (centred) or crops to --pad. Default dtype: int16\n"
               "for order 1, uint8 for order 0; pad value: -1024 for order 1, 0 for order 0.\n");
        return 0;
    }
    if (rc)
        return rc;
    if (a.n != 1 || !o->out || o->have_sp == o->have_shape || (o->order != 0 && o->order != 1))
        return usage_error("resample", "expected IN -o OUT and one of --spacing/--shape");
    o->in = a.pos[0];
    return -1;
}

int cmd_resample(int argc, char **argv)
{
    rs_opts o = {.order = 1};
    cli_set_logging(0);   /* the readers' warnings (e.g. what a DICOM folder walk skipped) */
    int rc0 = resample_parse(argc, argv, &o);
    if (rc0 >= 0)
        return rc0;
    const char *out = o.out, *dts = o.dts;
    int order = o.order, have_sp = o.have_sp, have_pad = o.have_pad, have_padv = o.have_padv;
    double *sp3 = o.sp3, *shp = o.shp, *pad = o.pad, padv = o.padv;
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
    if ((st = sp_volume_read(o.in, NULL, &v))) {
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

int cmd_model(int argc, char **argv)
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
    if (sp_package_tta(pk)) {   /* the mirrored graph was checked: the plain one too */
        sp_runtime *rt2 = NULL;
        sp_package *pk2 = NULL;
        rp.tta = "off";
        st = sp_runtime_create(&rp, &rt2);
        if (!st)
            st = sp_package_load(rt2, argv[2], &pk2);
        sp_package_free(pk2);
        sp_runtime_free(rt2);
        if (st) {
            sp_package_free(pk);
            sp_runtime_free(rt);
            return fail(st, NULL);
        }
    }
    int ni, no;
    const sp_io_info *in = sp_model_inputs(sp_package_model(pk), &ni);
    const sp_io_info *out = sp_model_outputs(sp_package_model(pk), &no);
    printf("%s: OK — model '%s', %d classes%s\n", argv[2], sp_package_name(pk), sp_package_num_classes(pk),
           sp_package_tta(pk) ? " (plain and mirrored graphs)" : "");
    for (int i = 0; i < sp_package_num_parts(pk); i++)   /* a task package: its parts are checked too */
        printf("  part %d: '%s', %d classes\n", i + 1, sp_package_name(sp_package_part(pk, i)),
               sp_package_num_classes(sp_package_part(pk, i)));
    if (sp_package_roi_crop(pk))
        printf("  roi crop model: '%s'\n", sp_package_name(sp_package_roi_crop(pk)));
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

/* The models folder's packages, one line each: the photo and CT models
 * (brain 0) or brainchop's imported MRI models (brain 1, docs/mri.md) */
static void list_bundled(sp_runtime *rt, int brain)
{
    DIR *d = opendir(sp_models_dir());
    struct dirent *e;
    int first = 1;
    while (d && (e = readdir(d))) {
        char dir[PATH_MAX];
        sp_package *pk;
        if (e->d_name[0] == '.' || brain != !strncmp(e->d_name, "brainchop-", 10) ||
            sp_bundled_model(e->d_name, dir, sizeof dir))
            continue;
        if (first)
            printf(brain ? "brain MRI models (segpipe mri --model NAME, chains as A,B; docs/mri.md):\n"
                         : "bundled models (--model NAME):\n");
        first = 0;
        if (sp_package_load(rt, dir, &pk)) {   /* a fetched model not fetched yet: its README says how */
            char readme[PATH_MAX + 16];
            snprintf(readme, sizeof readme, "%s/README.md", dir);
            int has = access(readme, R_OK) == 0;
            printf("  %-20s not usable here: %s%s%s%s\n", e->d_name, sp_last_error(), has ? " (how to get it: " : "",
                   has ? readme : "", has ? ")" : "");
            continue;
        }
        printf("  %-20s %-8s %3d classes%s\n", e->d_name + (brain ? 10 : 0), sp_package_task(pk),
               sp_package_num_classes(pk), sp_package_demo(pk) ? "  (demo)" : "");
        sp_package_free(pk);
    }
    if (d)
        closedir(d);
}

/* the runtime `models` and `tasks` load packages with, only to list them */
static sp_status listing_runtime(sp_runtime **rt)
{
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = 1;
    return sp_runtime_create(&rp, rt);
}

int cmd_models(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: segpipe models [DIR]\n"
               "Lists the default model (and the package in DIR): name, classes, labels;\n"
               "without DIR also every bundled model, one line each.\n");
        return 0;
    }
    if (argc > 2 || (argc > 1 && argv[1][0] == '-'))
        return usage_error("models", "expected at most one model folder");
    const char *dirs[2] = {sp_default_model_dir(), argc > 1 ? argv[1] : NULL};
    sp_runtime *rt = NULL;
    sp_status st = listing_runtime(&rt);
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
        printf("%s%s\n  name: %s\n  task: %s%s\n  classes: %d\n  labels:", dirs[i], i == 0 ? " (default)" : "",
               sp_package_name(pk), sp_package_task(pk),
               sp_package_demo(pk) ? "\n  demo: yes (a demonstration model, not for real scans)" : "",
               sp_package_num_classes(pk));
        for (int l = 1; l < sp_package_num_classes(pk); l++)
            printf("%s%d=%s", l % 6 == 1 ? "\n    " : "  ", l, sp_package_label(pk, l));
        printf("\n");
        sp_package_free(pk);
    }
    if (!dirs[1]) {
        list_bundled(rt, 0);
        list_bundled(rt, 1);
    }
    sp_runtime_free(rt);
    return rc;
}


/* -------------------------------------------------------------- tasks */

/* One line per task package (docs/model-format.md, "Task packages"); a
 * folder that is not a task package is skipped when scanning, reported when
 * named. Returns 0, or the exit code of a named folder that failed. */
static int list_task(sp_runtime *rt, const char *dir, int named, int *found)
{
    sp_package *pk;
    sp_status st = sp_package_load(rt, dir, &pk);
    if (st) {
        if (named)
            cli_errf("%s\n", sp_last_error());
        return named ? sp_status_exit_code(st) : 0;
    }
    int n = sp_package_num_parts(pk);
    *found += n > 0;
    if (n) {
        printf("%-28s %3d classes  %d part%s:", sp_package_name(pk), sp_package_num_classes(pk) - 1, n,
               n > 1 ? "s" : "");
        for (int i = 0; i < n; i++)
            printf(" %s", sp_package_name(sp_package_part(pk, i)));
        printf("%s\n  %s\n", sp_package_roi_crop(pk) ? "  (+ crop model)" : "", dir);
    } else if (named) {
        printf("%-28s %3d classes  single model (not a task package)\n  %s\n", sp_package_name(pk),
               sp_package_num_classes(pk) - 1, dir);
    }
    sp_package_free(pk);
    return 0;
}

int cmd_tasks(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: segpipe tasks [DIR...]\n"
               "Lists the task packages (several part models under one class map, e.g. TotalSegmentator's\n"
               "'total' imported by tools/import/import_totalseg.py) in the models folder, or the given ones.\n");
        return 0;
    }
    for (int i = 1; i < argc; i++)
        if (argv[i][0] == '-')
            return usage_error("tasks", "unknown option (usage: segpipe tasks [DIR...])");
    sp_runtime *rt = NULL;
    sp_status st = listing_runtime(&rt);
    if (st)
        return fail(st, NULL);
    int rc = 0, found = 0;
    for (int i = 1; i < argc; i++) {
        int r = list_task(rt, argv[i], 1, &found);
        rc = rc ? rc : r;
    }
    if (argc == 1) {
        DIR *d = opendir(sp_models_dir());
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char dir[PATH_MAX];
            if (e->d_name[0] != '.' && !sp_bundled_model(e->d_name, dir, sizeof dir))
                list_task(rt, dir, 0, &found);
        }
        if (d)
            closedir(d);
        if (!found)
            printf("no task packages in %s (import one with segpipe's source tree: tools/import/import_totalseg.py "
                   "TOTALSEG_HOME -o DIR, then segpipe tasks DIR or copy DIR there; docs/model-format.md)\n",
                   sp_models_dir());
    }
    sp_runtime_free(rt);
    return rc;
}
