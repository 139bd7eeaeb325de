/*
 * mri_chain.c — `segpipe mri --model mindgrab,dk104`: models run in a chain,
 * as brainchop does for parcellations that expect a skull-stripped brain.
 * Every model but the last is a brain extractor: its labels go back onto
 * the input grid and every voxel it labels 0 is set to 0 (the T1 times the
 * brain mask); the last model segments that brain. Model names without a
 * '/' that are not folders are looked up among the bundled models, first as
 * brainchop-<name> (tools/import/import_brainchop.py --zoo), then as <name>.
 * A front end over include/segpipe.h only.
 */
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* messages through common.c's cli_errf (the running command's name) */
static int usage(const char *msg)
{
    cli_errf("%s\n", msg);
    return sp_status_exit_code(SP_ERR_USAGE);
}

static int failed(sp_status st, const char *ctx)
{
    cli_errf("%s: %s\n", ctx, sp_last_error());
    return sp_status_exit_code(st);
}

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* one model name or folder -> a folder path; 0 or an exit code (printed) */
static int resolve(const char *name, char *out, size_t cap)
{
    if (!*name || strlen(name) >= cap)
        return usage("--model: an empty or too long model name in the list");
    if (is_dir(name) || strchr(name, '/')) {
        snprintf(out, cap, "%s", name);
        return 0;
    }
    char pre[PATH_MAX];
    snprintf(pre, sizeof pre, "brainchop-%.200s", name);
    if (!sp_bundled_model(pre, out, cap) && is_dir(out))
        return 0;
    if (!sp_bundled_model(name, out, cap) && is_dir(out))
        return 0;
    cli_errf("--model %s: no such model folder, nor a bundled model of that name (`segpipe models` lists "
             "them; tools/import/import_brainchop.py --zoo builds brainchop's MRI models)\n", name);
    return sp_status_exit_code(SP_ERR_MODEL);
}

int cli_chain_resolve(const char *models, char *last, size_t cap, char **pre)
{
    *pre = NULL;
    size_t n = strlen(models);
    if (n && (models[0] == ',' || models[n - 1] == ',' || strstr(models, ",,")))   /* before any lookup */
        return usage("--model: an empty model name in the list");
    const char *c = strrchr(models, ',');
    if (!c)
        return strchr(models, '/') || is_dir(models) ? (snprintf(last, cap, "%s", models), 0)
                                                     : resolve(models, last, cap);
    if (strlen(models) > 4096)
        return usage("--model: list too long");
    *pre = strndup(models, (size_t)(c - models));
    if (!*pre)
        return failed(SP_ERR_NOMEM, "model chain");
    return resolve(c + 1, last, cap);
}

/* v times the brain mask of one extractor: a new volume in *out */
static sp_status strip_once(sp_runtime *rt, const char *dir, const sp_volume *v, const sp_ct_params *cp,
                            sp_timings *tt, sp_volume **out, double *mask_mm3, void (*loaded)(void *), void *user)
{
    sp_package *pk = NULL;
    sp_ct_result *res = NULL;
    sp_ct_params p = *cp;
    p.passport = 0;
    p.keep_model_labels = 0;
    p.progress = NULL;
    double t0 = sp_now();
    sp_status st = sp_package_load(rt, dir, &pk);
    if (loaded)
        loaded(user);
    if (!st)
        st = sp_ct_run(pk, v, &p, &res);
    if (!st) {
        sp_volume_info info;
        sp_volume_get_info(v, &info);
        size_t n = (size_t)(info.dim[0] * info.dim[1] * info.dim[2]);
        const uint16_t *lab = sp_ct_result_labels(res, NULL);
        const float *src = sp_volume_data(v);
        float *m = malloc(n * sizeof *m);
        if (!m || !src || !lab)
            st = SP_ERR_NOMEM;
        size_t kept = 0;
        for (size_t i = 0; !st && i < n; i++) {
            m[i] = lab[i] ? src[i] : 0.0f;
            kept += lab[i] != 0;
        }
        const double (*A)[4] = info.affine;
        double det = A[0][0] * (A[1][1] * A[2][2] - A[1][2] * A[2][1]) - A[0][1] * (A[1][0] * A[2][2] - A[1][2] * A[2][0]) +
                     A[0][2] * (A[1][0] * A[2][1] - A[1][1] * A[2][0]);
        *mask_mm3 = (double)kept * (det < 0 ? -det : det);
        if (!st)
            st = sp_volume_from_array(m, info.dim, info.affine, out);
        free(m);
    }
    char name[96];
    snprintf(name, sizeof name, "chain:%s", pk ? sp_package_name(pk) : "model");
    sp_timings_add(tt, name, sp_now() - t0);
    sp_ct_result_free(res);
    sp_package_free(pk);
    return st;
}

int cli_chain_strip(sp_runtime *rt, const char *pre, const sp_volume *v, const sp_ct_params *cp, sp_timings *tt,
                    sp_volume **out, double *mask_mm3, void (*loaded)(void *), void *user)
{
    char *list = strdup(pre), *save = NULL;
    if (!list)
        return failed(SP_ERR_NOMEM, "model chain");
    sp_volume *cur = NULL;
    int rc = 0;
    for (char *tok = strtok_r(list, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        char dir[PATH_MAX];
        sp_volume *next = NULL;
        if (!(rc = resolve(tok, dir, sizeof dir))) {
            sp_status st = strip_once(rt, dir, cur ? cur : v, cp, tt, &next, mask_mm3, loaded, user);
            loaded = NULL;   /* once */
            rc = st ? failed(st, dir) : 0;
        }
        sp_volume_free(cur);
        cur = next;
    }
    free(list);
    if (rc) {
        sp_volume_free(cur);
        return rc;
    }
    *out = cur;
    return 0;
}
