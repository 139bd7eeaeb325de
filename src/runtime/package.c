/*
 * package.c — model packages: a folder with model.onnx and segpipe.json.
 *
 * The manifest (docs/model-format.md) is parsed with cJSON, every field
 * checked for type and range, then the ONNX model is loaded through the
 * model manager and its inputs and outputs are checked against the manifest
 * (channels, classes, spatial rank, dtypes, fixed patch dims) before the
 * first run. Errors name the file and the field. A task package's part,
 * crop and refine models may instead be loaded on demand
 * (sp_runtime_params.parts_on_demand): manifests checked and ONNX files
 * found at load, each session made, checked and released by the runs that
 * need it (sp_package_acquire / sp_package_unacquire), so that a one-shot
 * run holds one part's memory at a time.
 */
#include "package.h"
#include "device.h"
#include "runtime.h"
#include <dlfcn.h>
#include <pthread.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Bundled models are found relative to the module (the segpipe binary or
 * libsegpipe.so) that holds this code, never through a compiled-in path:
 * installed, <prefix>/bin or <prefix>/lib -> <prefix>/share/segpipe/models;
 * in the build tree, build/ -> models/. SEGPIPE_MODEL_PATH overrides. */
static char g_models[PATH_MAX];
static pthread_once_t g_models_once = PTHREAD_ONCE_INIT;

static void find_models(void)
{
    const char *e = getenv("SEGPIPE_MODEL_PATH");
    if (e && *e) {
        snprintf(g_models, sizeof g_models, "%s", e);
        return;
    }
    char dir[PATH_MAX];
    sp_module_dir(dir, sizeof dir);
    static const char *const rel[] = {"../share/segpipe/models", "../models", "models"};
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
        char p[PATH_MAX + 32];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", i < 2 ? dir : ".", rel[i]);
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode) && realpath(p, g_models))
            return;
    }
    snprintf(g_models, sizeof g_models, "models");
}

const char *sp_models_dir(void)
{
    pthread_once(&g_models_once, find_models);
    return g_models;
}

sp_status sp_bundled_model(const char *name, char *out, size_t size)
{
    if (!*name || strchr(name, '/') || name[0] == '.')   /* a bundled model is a plain name, never a path */
        return sp_fail(SP_ERR_MODEL, "'%s' is not a bundled model's name", name);
    int n = snprintf(out, size, "%s/%s", sp_models_dir(), name);
    return n > 0 && (size_t)n < size ? SP_OK : sp_fail(SP_ERR_USAGE, "model path too long");
}

static char g_default_ct[PATH_MAX + 16];
static void default_ct(void) { sp_bundled_model("demo-ct", g_default_ct, sizeof g_default_ct); }

const char *sp_default_model_dir(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    const char *e = getenv("SEGPIPE_MODEL");
    if (e && *e)
        return e;
    pthread_once(&once, default_ct);
    return g_default_ct;
}

static sp_status num_array(const cJSON *o, const char *key, double *out, int n,
                           const char *file, int positive)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
        return sp_fail(SP_ERR_MODEL, "%s: \"%s\" must be an array of %d numbers", file, key, n);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (positive && v->valuedouble <= 0))
            return sp_fail(SP_ERR_MODEL, "%s: \"%s\"[%d] must be a %snumber", file, key, i,
                           positive ? "positive " : "");
        out[i] = v->valuedouble;
    }
    return SP_OK;
}

static double num_or(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const char *str_or(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

/* The package's ONNX files: the model, and its fp16 and int8 copies. */
static sp_status parse_onnx_files(const cJSON *j, const char *file, sp_manifest *mf)
{
    snprintf(mf->onnx, sizeof mf->onnx, "%s", str_or(j, "onnx", "model.onnx"));
    snprintf(mf->onnx_fp16, sizeof mf->onnx_fp16, "%s", str_or(j, "onnx_fp16", ""));
    snprintf(mf->onnx_int8, sizeof mf->onnx_int8, "%s", str_or(j, "onnx_int8", ""));
    snprintf(mf->meshnet, sizeof mf->meshnet, "%s", str_or(j, "meshnet", ""));
    if (strchr(mf->onnx, '/') || strchr(mf->onnx_fp16, '/') || strchr(mf->onnx_int8, '/') || strchr(mf->meshnet, '/'))
        return sp_fail(SP_ERR_MODEL, "%s: \"onnx\", \"onnx_fp16\", \"onnx_int8\" and \"meshnet\" must be file names "
                       "inside the package", file);
    return SP_OK;
}

/* CT models: spacing, patch, axes, normalisation, sliding window. */
/* Brain MRI: "conform" (docs/model-format.md, docs/mri.md) and "postprocess". */
static sp_status parse_conform(const cJSON *j, const char *file, sp_manifest *mf)
{
    const cJSON *cf = cJSON_GetObjectItemCaseSensitive(j, "conform");
    if (cf) {   /* brain MRI: FreeSurfer-style conforming (docs/model-format.md) */
        double n = num_or(cf, "shape", 256), mm = num_or(cf, "voxel_mm", 1.0);
        const char *ori = str_or(cf, "orientation", "LIA");
        if (!(n >= 16 && n <= 1024) || n != floor(n) || !(mm > 0 && mm <= 10) || strcmp(ori, "LIA"))
            return sp_fail(SP_ERR_MODEL, "%s: conform needs shape 16..1024, voxel_mm in (0, 10] and orientation "
                           "\"LIA\"", file);
        mf->conform_n = (int64_t)n;
        mf->conform_mm = mm;
        const char *style = str_or(cf, "style", "nibabel");
        mf->conform_fhigh = num_or(cf, "f_high", 0.98);
        if (strcmp(style, "nibabel") && strcmp(style, "niimath"))
            return sp_fail(SP_ERR_MODEL, "%s: conform.style must be \"nibabel\" or \"niimath\"", file);
        if (!(mf->conform_fhigh > 0 && mf->conform_fhigh <= 1))
            return sp_fail(SP_ERR_MODEL, "%s: conform.f_high must be in (0, 1]", file);
        mf->conform_niimath = !strcmp(style, "niimath");
    }
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(j, "postprocess");
    if (pp) {
        const char *lc = str_or(pp, "largest_component", "none");
        if (strcmp(lc, "none") && strcmp(lc, "foreground"))
            return sp_fail(SP_ERR_MODEL, "%s: postprocess.largest_component must be \"none\" or \"foreground\"",
                           file);
        mf->largest_fg = !strcmp(lc, "foreground");
        const cJSON *nn = cJSON_GetObjectItemCaseSensitive(pp, "nnunet");
        int ok = !nn || (cJSON_IsArray(nn) && cJSON_GetArraySize(nn) <= 32);
        for (const cJSON *s = ok && nn ? nn->child : NULL; s && ok; s = s->next) {
            ok = cJSON_IsArray(s) && cJSON_GetArraySize(s) >= 1 && cJSON_GetArraySize(s) <= 64;
            for (const cJSON *e = ok ? s->child : NULL; e && ok; e = e->next) {
                ok = cJSON_IsNumber(e) && e->valuedouble >= 1 && e->valuedouble <= 65535 &&
                     e->valuedouble == (int)e->valuedouble;
                if (ok)
                    mf->pp_set[mf->pp_n][mf->pp_len[mf->pp_n]++] = (uint16_t)e->valuedouble;
            }
            mf->pp_n += ok;
        }
        if (!ok)
            return sp_fail(SP_ERR_MODEL, "%s: postprocess.nnunet must list up to 32 sets of 1 to 64 labels 1..65535",
                           file);
    }
    return SP_OK;
}

/* "tta": {"onnx": FILE, "onnx_fp16"?: FILE, "mirror_axes": [d, ...], "default": bool}:
 * the network with nnU-Net's mirroring test-time augmentation inside */
static sp_status parse_tta(const cJSON *j, const char *file, sp_manifest *mf)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "tta");
    if (!t)
        return SP_OK;
    const cJSON *ax = cJSON_GetObjectItemCaseSensitive(t, "mirror_axes");
    const cJSON *df = cJSON_GetObjectItemCaseSensitive(t, "default");
    const char *onnx = str_or(t, "onnx", ""), *o16 = str_or(t, "onnx_fp16", "");
    int ok = cJSON_IsObject(t) && *onnx && strlen(onnx) < sizeof mf->tta_onnx && strlen(o16) < sizeof mf->tta_onnx &&
             !strchr(onnx, '/') && !strchr(o16, '/') && (!df || cJSON_IsBool(df)) && cJSON_IsArray(ax) &&
             cJSON_GetArraySize(ax) >= 1 && cJSON_GetArraySize(ax) <= 3;
    int seen = 0;
    for (const cJSON *e = ok ? ax->child : NULL; e; e = e->next) {
        int d = cJSON_IsNumber(e) ? (int)e->valuedouble : -1;
        if (d < 0 || d > 2 || e->valuedouble != d || (seen & (1 << d)))
            ok = 0;
        else
            seen |= 1 << d, mf->tta_axes[mf->tta_naxes++] = d;
    }
    if (!ok)
        return sp_fail(SP_ERR_MODEL, "%s: \"tta\" needs \"onnx\" (a file name inside the package), \"mirror_axes\" "
                       "(distinct network dims 0..2) and optionally \"onnx_fp16\" and \"default\" (true or false)",
                       file);
    snprintf(mf->tta_onnx, sizeof mf->tta_onnx, "%s", onnx);
    snprintf(mf->tta_onnx_fp16, sizeof mf->tta_onnx_fp16, "%s", o16);
    mf->tta_default = !df || cJSON_IsTrue(df);
    return SP_OK;
}

/* "cascade": image channels and the previous stage's labels made one-hot */
static sp_status parse_cascade(const cJSON *j, const char *file, sp_manifest *mf)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "cascade");
    if (!c)
        return SP_OK;
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(c, "labels");
    mf->casc_img = (int)num_or(c, "image_channels", 0);
    int ok = cJSON_IsArray(l) && cJSON_GetArraySize(l) >= 1 && cJSON_GetArraySize(l) <= 64;
    for (const cJSON *e = ok ? l->child : NULL; e && ok; e = e->next) {
        ok = cJSON_IsNumber(e) && e->valuedouble >= 1 && e->valuedouble <= 65535 &&
             e->valuedouble == (int)e->valuedouble;
        if (ok)
            mf->casc_lab[mf->casc_n++] = (uint16_t)e->valuedouble;
    }
    if (!ok || mf->casc_img < 1 || mf->casc_img + mf->casc_n != mf->channels)
        return sp_fail(SP_ERR_MODEL, "%s: \"cascade\" needs \"image_channels\" and \"labels\" (1 to 64) adding up "
                       "to input.channels (%d)", file, mf->channels);
    for (int q = mf->casc_img; q < mf->channels; q++)
        if (mf->norms[q].scheme != SP_NORM_NONE)
            return sp_fail(SP_ERR_MODEL, "%s: a cascade's label channels take normalization \"none\"", file);
    return SP_OK;
}

/* "resample": "linear" (default: scipy.ndimage.zoom order 1, as
 * TotalSegmentator resamples) or "nnunet" (nnU-Net's own: normalised, then
 * order 3 / separate z; src/pipeline/resample_nnunet.c). nnU-Net's order
 * needs the normalisation per channel at the input's resolution, which a
 * masked z-score (its mask), a cascade, "conform" and a truncation to int32
 * do not give. */
static sp_status parse_resample(const cJSON *j, const char *file, sp_manifest *mf)
{
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "resample");
    if (rs && (!cJSON_IsString(rs) || (strcmp(rs->valuestring, "linear") && strcmp(rs->valuestring, "nnunet"))))
        return sp_fail(SP_ERR_MODEL, "%s: \"resample\" is \"linear\" or \"nnunet\"", file);
    mf->resample_nnunet = rs && !strcmp(rs->valuestring, "nnunet");
    int masked = 0;
    for (int c = 0; c < mf->channels; c++)
        masked |= mf->norms[c].use_mask;
    if (mf->resample_nnunet && (masked || mf->casc_n || mf->conform_n || mf->resampled_int32))
        return sp_fail(SP_ERR_MODEL, "%s: \"resample\": \"nnunet\" goes with neither a masked zscore, a "
                       "\"cascade\", \"conform\" nor \"resampled_int32\"", file);
    return SP_OK;
}

/* one channel's "normalization" object */
static sp_status parse_norm(const cJSON *nm, const char *file, sp_norm *out)
{
    sp_status st = SP_OK;
    const char *scheme = str_or(nm, "scheme", "");
    if (strcmp(scheme, "ct") == 0) {
        out->scheme = SP_NORM_CT;
        const char *k[4] = {"lo", "hi", "mean", "std"};
        double *dst[4] = {&out->lo, &out->hi, &out->mean, &out->std};
        for (int i = 0; i < 4; i++) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(nm, k[i]);
            if (!cJSON_IsNumber(x)) {
                st = sp_fail(SP_ERR_MODEL, "%s: normalization \"ct\" needs number \"%s\"", file, k[i]);
                return st;
            }
            *dst[i] = x->valuedouble;
        }
        if (!(out->lo < out->hi) || !(out->std > 0)) {
            st = sp_fail(SP_ERR_MODEL, "%s: normalization needs lo < hi and std > 0", file);
            return st;
        }
    } else if (strcmp(scheme, "zscore") == 0) {
        out->scheme = SP_NORM_ZSCORE;
        const char *mask = str_or(nm, "mask", "none");
        if (strcmp(mask, "none") && strcmp(mask, "nonzero"))
            return sp_fail(SP_ERR_MODEL, "%s: normalization.mask must be \"none\" or \"nonzero\"", file);
        out->use_mask = !strcmp(mask, "nonzero");
    } else if (strcmp(scheme, "minmax") == 0) {
        out->scheme = SP_NORM_MINMAX;
    } else if (strcmp(scheme, "quantile") == 0) {   /* brainchop's qnormalize */
        out->scheme = SP_NORM_QUANTILE;
        out->lo = num_or(nm, "q_lo", 0.02);
        out->hi = num_or(nm, "q_hi", 0.98);
        out->mean = num_or(nm, "eps", 1e-3);
        if (!(out->lo >= 0 && out->lo < out->hi && out->hi <= 1) ||
            !(out->mean >= 0 && out->mean <= 1))
            return sp_fail(SP_ERR_MODEL, "%s: normalization \"quantile\" needs 0 <= q_lo < q_hi <= 1 and eps in "
                           "[0, 1]", file);
    } else if (strcmp(scheme, "none") == 0) {
        out->scheme = SP_NORM_NONE;
    } else {
        st = sp_fail(SP_ERR_MODEL, "%s: normalization.scheme must be \"ct\", \"zscore\", \"minmax\", "
                     "\"quantile\" or \"none\"", file);
        return st;
    }
    return SP_OK;
}

static sp_status parse_ct(const cJSON *j, const cJSON *in, const char *file, sp_manifest *mf)
{
    sp_status st = SP_OK;
    mf->channels = (int)num_or(in, "channels", 1);
    if (mf->channels < 1 || mf->channels > SP_MAX_CHANNELS) {
        st = sp_fail(SP_ERR_MODEL, "%s: input.channels is %d; a volume model takes 1 to %d", file, mf->channels,
                     SP_MAX_CHANNELS);
        return st;
    }
    double v[3];
    if ((st = num_array(j, "spacing", mf->spacing, 3, file, 0)) ||
        (st = num_array(j, "patch_size", v, 3, file, 1)))
        return st;
    for (int i = 0; i < 3; i++)   /* 0: the slices keep their spacing (a 2D model: patch 1 on that dim) */
        if (!(mf->spacing[i] > 0 || (mf->spacing[i] == 0 && i == 0 && v[0] == 1)))
            return sp_fail(SP_ERR_MODEL, "%s: \"spacing\"[%d] must be a positive number (0 only for dim 0 of a 2D "
                           "model, patch_size[0] 1)", file, i);
    for (int i = 0; i < 3; i++) {
        if (v[i] != floor(v[i]) || v[i] > 4096) {
            st = sp_fail(SP_ERR_MODEL, "%s: patch_size[%d] must be an integer <= 4096", file, i);
            return st;
        }
        mf->patch[i] = (int64_t)v[i];
    }
    if ((st = num_array(j, "axes", v, 3, file, 0)))
        return st;
    int seen = 0;
    for (int i = 0; i < 3; i++) {
        if (v[i] != 0 && v[i] != 1 && v[i] != 2) {
            st = sp_fail(SP_ERR_MODEL, "%s: axes must be a permutation of [0, 1, 2]", file);
            return st;
        }
        mf->axes[i] = (int)v[i];
        seen |= 1 << mf->axes[i];
    }
    if (seen != 7) {
        st = sp_fail(SP_ERR_MODEL, "%s: axes must be a permutation of [0, 1, 2]", file);
        return st;
    }
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(j, "normalization");
    if (mf->channels > 1 && (!cJSON_IsArray(nm) || cJSON_GetArraySize(nm) != mf->channels))
        return sp_fail(SP_ERR_MODEL, "%s: a %d-channel model needs \"normalization\" as an array of %d objects, one "
                       "per channel", file, mf->channels, mf->channels);
    if (mf->channels == 1 && (st = parse_norm(nm, file, &mf->norms[0])))
        return st;
    int q = 0;
    for (const cJSON *e = mf->channels > 1 ? nm->child : NULL; e; e = e->next, q++)
        if ((st = parse_norm(e, file, &mf->norms[q])))
            return st;
    mf->norm = mf->norms[0];
    if ((st = parse_conform(j, file, mf)) || (st = parse_tta(j, file, mf)))
        return st;
    const cJSON *co = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "regions"),
                                                       "class_order");
    if (cJSON_GetObjectItemCaseSensitive(j, "regions") &&
        (!cJSON_IsArray(co) || cJSON_GetArraySize(co) < 1 || cJSON_GetArraySize(co) > 64))
        return sp_fail(SP_ERR_MODEL, "%s: \"regions\" needs \"class_order\": 1 to 64 label indices", file);
    for (const cJSON *e = co ? co->child : NULL; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble > 65535 || e->valuedouble != (int)e->valuedouble)
            return sp_fail(SP_ERR_MODEL, "%s: regions.class_order holds label indices 1..65535", file);
        mf->region_order[mf->n_regions++] = (int)e->valuedouble;
    }
    if (mf->n_regions && (mf->head_features || mf->conform_n))
        return sp_fail(SP_ERR_MODEL, "%s: \"regions\" go with neither a split \"head\" nor \"conform\"", file);
    if ((st = parse_cascade(j, file, mf)))
        return st;
    const cJSON *cz = cJSON_GetObjectItemCaseSensitive(j, "crop_nonzero");
    if (cz && !cJSON_IsBool(cz))
        return sp_fail(SP_ERR_MODEL, "%s: \"crop_nonzero\" must be true or false", file);
    mf->crop_nonzero = cJSON_IsTrue(cz);
    for (int c = 0; c < mf->channels; c++)
        if (mf->norms[c].use_mask && !mf->crop_nonzero)
            return sp_fail(SP_ERR_MODEL, "%s: a zscore \"mask\": \"nonzero\" needs \"crop_nonzero\": true", file);
    const cJSON *fl = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "nnunet"), "folds");
    for (const cJSON *e = cJSON_IsArray(fl) ? fl->child : NULL; e; e = e->next) {
        size_t at = strlen(mf->folds);
        if (!cJSON_IsString(e) || strlen(e->valuestring) + at + 2 > sizeof mf->folds)
            return sp_fail(SP_ERR_MODEL, "%s: nnunet.folds must list fold names (\"0\", \"all\")", file);
        snprintf(mf->folds + at, sizeof mf->folds - at, "%s%s", at ? "," : "", e->valuestring);
    }
    if (mf->tta_onnx[0] && cJSON_GetObjectItemCaseSensitive(j, "head"))
        return sp_fail(SP_ERR_MODEL, "%s: a split \"head\" and \"tta\" do not go together", file);
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(j, "head");
    if (hd) {   /* the final 1x1x1 convolution, split out (tools/import/onnx_split_head.py) */
        double f = num_or(hd, "features", 0);
        snprintf(mf->head_file, sizeof mf->head_file, "%s", str_or(hd, "file", "head.bin"));
        if (!(f >= 1 && f <= 4096) || f != floor(f) || strchr(mf->head_file, '/'))
            return sp_fail(SP_ERR_MODEL, "%s: head needs \"features\" 1..4096 and a \"file\" inside the package",
                           file);
        mf->head_features = (int)f;
    }
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(j, "sliding_window");
    mf->step = num_or(sw, "step", 0.5);
    mf->sigma_scale = num_or(sw, "sigma_scale", 0.125);
    if (!(mf->step > 0 && mf->step <= 1) || !(mf->sigma_scale > 0 && mf->sigma_scale <= 1)) {
        st = sp_fail(SP_ERR_MODEL, "%s: sliding_window.step and sigma_scale must be in (0, 1]", file);
        return st;
    }
    return SP_OK;
}

/* Photo mask models: input size, preprocessing, output form. */
/* A photo model's input: 3 channels, optional fixed size, pixel scale,
 * mean and std (masks and classify models). */
static sp_status parse_pixels(const cJSON *in, const cJSON *pp, const char *file, sp_manifest *mf)
{
    sp_status st;
    mf->channels = (int)num_or(in, "channels", 3);
    if (mf->channels != 3)
        return sp_fail(SP_ERR_MODEL, "%s: input.channels must be 3 (RGB) for a photo model", file);
    if (cJSON_GetObjectItemCaseSensitive(in, "size")) {
        double hw[2];
        if ((st = num_array(in, "size", hw, 2, file, 1)))
            return st;
        mf->in_h = (int)hw[0];
        mf->in_w = (int)hw[1];
    }
    mf->pix_scale = num_or(pp, "scale", 1.0 / 255.0);
    double one[3] = {1, 1, 1};
    memcpy(mf->mean, (double[3]){0, 0, 0}, sizeof mf->mean);
    memcpy(mf->std, one, sizeof mf->std);
    if (cJSON_GetObjectItemCaseSensitive(pp, "mean") && (st = num_array(pp, "mean", mf->mean, 3, file, 0)))
        return st;
    if (cJSON_GetObjectItemCaseSensitive(pp, "std") && (st = num_array(pp, "std", mf->std, 3, file, 1)))
        return st;
    return SP_OK;
}

/* one of two words (0 for the first, 1 for the second), or -1 */
static int either(const cJSON *o, const char *key, const char *a, const char *b)
{
    const char *v = str_or(o, key, a);
    return !strcmp(v, a) ? 0 : !strcmp(v, b) ? 1 : -1;
}

/* A masks model's upstream conventions (defaults: segpipe's own) */
static sp_status parse_upstream(const cJSON *pp, const cJSON *outp, const char *file, sp_manifest *mf)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(pp, "round"), *a = cJSON_GetObjectItemCaseSensitive(outp, "alpha");
    mf->sample_corner = either(pp, "sampling", "center", "corner");
    mf->out_trunc8 = either(outp, "quantize", "none", "truncate");
    mf->out_corner = either(outp, "resize", "center", "corner");
    if (mf->sample_corner < 0 || mf->out_trunc8 < 0 || mf->out_corner < 0 || (r && !cJSON_IsBool(r)) ||
        (a && !cJSON_IsBool(a)))
        return sp_fail(SP_ERR_MODEL, "%s: preprocess.sampling is \"center\" or \"corner\", preprocess.round a boolean, "
                       "output.quantize \"none\" or \"truncate\", output.resize \"center\" or \"corner\", "
                       "output.alpha a boolean", file);
    mf->round_input = cJSON_IsTrue(r);
    mf->out_alpha = cJSON_IsTrue(a);
    if ((mf->out_trunc8 || mf->out_corner || mf->out_alpha) && mf->out_kind != SP_OUT_PROB)
        return sp_fail(SP_ERR_MODEL, "%s: output.quantize, output.resize and output.alpha are for \"probability\" "
                       "models", file);
    return SP_OK;
}

static sp_status parse_masks(const cJSON *j, const cJSON *in, const cJSON *outp, const char *file,
                             sp_manifest *mf)
{
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(j, "preprocess");
    sp_status st = parse_pixels(in, pp, file, mf);
    if (st)
        return st;
    const char *rs = str_or(pp, "resize", "letterbox");
    if (strcmp(rs, "letterbox") && strcmp(rs, "stretch"))
        return sp_fail(SP_ERR_MODEL, "%s: preprocess.resize must be \"letterbox\" or \"stretch\"", file);
    mf->letterbox = !strcmp(rs, "letterbox");
    mf->long_side = (int)num_or(pp, "long_side", 768);
    if (mf->long_side < 16 || mf->long_side > 8192)
        return sp_fail(SP_ERR_MODEL, "%s: preprocess.long_side must be 16..8192", file);
    const char *kind = str_or(outp, "kind", "logits");
    mf->out_kind = !strcmp(kind, "logits") ? SP_OUT_LOGITS : !strcmp(kind, "probability") ? SP_OUT_PROB
                 : !strcmp(kind, "mask2former") ? SP_OUT_M2F : -1;
    if (mf->out_kind < 0)
        return sp_fail(SP_ERR_MODEL, "%s: output.kind must be \"logits\", \"probability\" or \"mask2former\"", file);
    mf->threshold = num_or(outp, "threshold", 0.5);
    snprintf(mf->class_output, sizeof mf->class_output, "%s", str_or(outp, "class_output", "class_queries_logits"));
    snprintf(mf->mask_output, sizeof mf->mask_output, "%s", str_or(outp, "mask_output", "masks_queries_logits"));
    return parse_upstream(pp, outp, file, mf);
}

/* task "classify": fixed input size, resize, normalisation, output kind */
static sp_status parse_classify(const cJSON *j, const cJSON *in, const cJSON *outp, const char *file,
                                sp_manifest *mf)
{
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(j, "preprocess");
    sp_status st = parse_pixels(in, pp, file, mf);
    if (st)
        return st;
    const char *rs = str_or(pp, "resize", "crop");
    if (strcmp(rs, "crop") && strcmp(rs, "stretch") && strcmp(rs, "letterbox"))
        return sp_fail(SP_ERR_MODEL, "%s: preprocess.resize must be \"crop\", \"stretch\" or \"letterbox\"", file);
    mf->crop = !strcmp(rs, "crop");
    mf->crop_fraction = num_or(pp, "crop_fraction", 0.875);
    if (!(mf->crop_fraction > 0.1 && mf->crop_fraction <= 1))
        return sp_fail(SP_ERR_MODEL, "%s: preprocess.crop_fraction must be in (0.1, 1]", file);
    const char *order = str_or(pp, "channel_order", "rgb");
    if (strcmp(order, "rgb") && strcmp(order, "bgr"))
        return sp_fail(SP_ERR_MODEL, "%s: preprocess.channel_order must be \"rgb\" or \"bgr\"", file);
    mf->bgr = !strcmp(order, "bgr");
    mf->letterbox = !strcmp(rs, "letterbox");
    if (!mf->in_h)
        return sp_fail(SP_ERR_MODEL, "%s: a classify model needs input.size [H, W]", file);
    const char *kind = str_or(outp, "kind", "logits");
    mf->out_kind = !strcmp(kind, "logits") ? SP_OUT_LOGITS : !strcmp(kind, "probability") ? SP_OUT_PROB
                 : !strcmp(kind, "sigmoid") ? SP_OUT_SIGMOID : -1;
    if (mf->out_kind < 0)
        return sp_fail(SP_ERR_MODEL, "%s: output.kind must be \"logits\" (softmax), \"probability\" or "
                       "\"sigmoid\" (multi-label)", file);
    return SP_OK;
}

/* "masks": {"wall": [0], ...} -> class sets (after labels are known) */
static sp_status parse_mask_sets(const cJSON *j, const char *file, sp_manifest *mf)
{
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "masks");
    if (!ms) {   /* default: one mask per non-background class */
        for (int c = 1; c < mf->num_classes && mf->n_masks < SP_MAX_MASKS; c++) {
            snprintf(mf->mask_name[mf->n_masks], sizeof mf->mask_name[0], "%s", mf->labels[c]);
            mf->mask_cls[mf->n_masks][0] = c;
            mf->mask_ncls[mf->n_masks++] = 1;
        }
        return SP_OK;
    }
    if (!cJSON_IsObject(ms))
        return sp_fail(SP_ERR_MODEL, "%s: \"masks\" must map names to arrays of class indices", file);
    for (const cJSON *e = ms->child; e; e = e->next) {
        if (mf->n_masks == SP_MAX_MASKS || !cJSON_IsArray(e) || cJSON_GetArraySize(e) < 1 ||
            cJSON_GetArraySize(e) > SP_MAX_MASK_CLASSES)
            return sp_fail(SP_ERR_MODEL, "%s: mask \"%s\" must list 1..%d class indices (at most %d masks)", file,
                           e->string, SP_MAX_MASK_CLASSES, SP_MAX_MASKS);
        int k = mf->n_masks;
        snprintf(mf->mask_name[k], sizeof mf->mask_name[0], "%s", e->string);
        const cJSON *c;
        cJSON_ArrayForEach(c, e) {
            if (!cJSON_IsNumber(c) || c->valueint < 0 || c->valueint >= mf->num_classes)
                return sp_fail(SP_ERR_MODEL, "%s: mask \"%s\" names class %g, outside the label map (0..%d)", file,
                               e->string, c->valuedouble, mf->num_classes - 1);
            mf->mask_cls[k][mf->mask_ncls[k]++] = c->valueint;
        }
        mf->n_masks++;
    }
    return SP_OK;
}

/* [scheme, value, meaning] within DICOM's lengths (SH 16, SH 16, LO 64), no backslash or line break */
static int dicom_code_ok(const cJSON *a)
{
    return cJSON_IsArray(a) && cJSON_GetArraySize(a) == 3 &&   /* GetStringValue: NULL unless a string */
           sp_dicom_code_text_ok(cJSON_GetStringValue(cJSON_GetArrayItem(a, 0)),
                                 cJSON_GetStringValue(cJSON_GetArrayItem(a, 1)),
                                 cJSON_GetStringValue(cJSON_GetArrayItem(a, 2)));
}

/* optional "dicom_codes": {"<structure name>": {"category": CODE, "type": CODE,
 * "modifier"?, "region"?, "region_modifier"?}}, CODE = [scheme, value, meaning];
 * kept as text for the DICOM writers */
static sp_status parse_dicom_codes(const cJSON *j, const char *file, sp_manifest *mf)
{
    static const char *const parts[] = {"category", "type", "modifier", "region", "region_modifier"};
    const cJSON *dc = cJSON_GetObjectItemCaseSensitive(j, "dicom_codes");
    if (!dc)
        return SP_OK;
    if (!cJSON_IsObject(dc))
        return sp_fail(SP_ERR_MODEL, "%s: \"dicom_codes\" must map structure names to codes", file);
    for (const cJSON *e = dc->child; e; e = e->next) {
        int ok = cJSON_IsObject(e) && dicom_code_ok(cJSON_GetObjectItemCaseSensitive(e, "category")) &&
                 dicom_code_ok(cJSON_GetObjectItemCaseSensitive(e, "type"));
        for (const cJSON *f = ok ? e->child : NULL; f; f = f->next) {
            int known = 0;
            for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
                known |= !strcmp(f->string, parts[k]);
            ok &= known && dicom_code_ok(f);
        }
        if (!ok)
            return sp_fail(SP_ERR_MODEL, "%s: \"dicom_codes\" entry \"%.64s\" needs \"category\" and \"type\" "
                           "(optional \"modifier\", \"region\", \"region_modifier\"), each [scheme, value, "
                           "meaning] of at most 16, 16 and 64 characters", file, e->string);
    }
    mf->dicom_codes = cJSON_PrintUnformatted(dc);
    return mf->dicom_codes ? SP_OK : sp_fail(SP_ERR_NOMEM, "out of memory");
}

/* "labels": index -> name, the class count, gaps named label_<n> */
static sp_status parse_labels(const cJSON *j, const char *file, sp_manifest *mf)
{
    sp_status st;
    const cJSON *lab = cJSON_GetObjectItemCaseSensitive(j, "labels");
    if (!cJSON_IsObject(lab) || cJSON_GetArraySize(lab) < 2) {
        st = sp_fail(SP_ERR_MODEL, "%s: \"labels\" must map at least two indices to names", file);
        return st;
    }
    int maxi = -1;
    for (const cJSON *e = lab->child; e; e = e->next) {
        char *endp;
        long idx = strtol(e->string, &endp, 10);
        if (*endp || idx < 0 || idx > 65535 || !cJSON_IsString(e)) {
            st = sp_fail(SP_ERR_MODEL, "%s: label key \"%s\" must be an index 0..65535 with a name",
                         file, e->string);
            return st;
        }
        if (idx > maxi)
            maxi = (int)idx;
    }
    mf->num_classes = maxi + 1;
    mf->labels = calloc((size_t)mf->num_classes, sizeof *mf->labels);
    if (!mf->labels) {
        st = sp_fail(SP_ERR_NOMEM, "out of memory");
        return st;
    }
    for (const cJSON *e = lab->child; e; e = e->next) {
        int idx = atoi(e->string);
        free(mf->labels[idx]);
        mf->labels[idx] = strdup(e->valuestring);
    }
    for (int i = 0; i < mf->num_classes; i++)
        if (!mf->labels[i]) {
            char b[32];
            snprintf(b, sizeof b, "label_%d", i);
            mf->labels[i] = strdup(b);
        }
    return SP_OK;
}

/* The task's own fields: a task package's parts (task_package.c), a volume
 * model's grid, a photo model's input and output. */
static sp_status parse_task(const cJSON *j, const cJSON *in, const cJSON *outp, const char *file, sp_manifest *mf)
{
    int vol = !strcmp(mf->task, "ct") || !strcmp(mf->task, "mri");   /* volume models: the same pipeline */
    if (cJSON_HasObjectItem(j, "parts")) {
        sp_status st = vol ? sp_manifest_parse_parts(j, file, mf)
                           : sp_fail(SP_ERR_MODEL, "%s: \"parts\" (a task package) needs task \"ct\" or \"mri\"", file);
        if (!st && !(st = parse_resample(j, file, mf)) && mf->resample_nnunet && mf->n_parts != 1)
            st = sp_fail(SP_ERR_MODEL, "%s: \"resample\": \"nnunet\" in a task package needs exactly one part "
                         "(each part would normalise before its own resampling)", file);
        return st;
    }
    if (vol) {
        sp_status st = parse_ct(j, in, file, mf);
        return st ? st : parse_resample(j, file, mf);
    }
    if (!strcmp(mf->task, "masks"))
        return parse_masks(j, in, outp, file, mf);
    if (!strcmp(mf->task, "classify"))
        return parse_classify(j, in, outp, file, mf);
    return sp_fail(SP_ERR_MODEL, "%s: unknown task \"%s\" (ct, mri, masks, classify)", file, mf->task);
}

sp_status sp_manifest_parse(const char *text, const char *file, sp_manifest *mf)
{
    sp_status st = SP_OK;
    memset(mf, 0, sizeof *mf);
    cJSON *j = cJSON_Parse(text);
    if (!j)
        return sp_fail(SP_ERR_MODEL, "%s: not valid JSON (near \"%.20s\")", file,
                       cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    if (!cJSON_IsObject(j)) {
        st = sp_fail(SP_ERR_MODEL, "%s: the manifest must be a JSON object", file);
        goto out;
    }
    if (strcmp(str_or(j, "format", ""), "segpipe-model") != 0) {
        st = sp_fail(SP_ERR_MODEL, "%s: \"format\" must be \"segpipe-model\"", file);
        goto out;
    }
    mf->version = (int)num_or(j, "version", 0);
    if (mf->version != 1) {
        st = sp_fail(SP_ERR_MODEL, "%s: manifest version %d is not supported (this segpipe reads 1)",
                     file, mf->version);
        goto out;
    }
    snprintf(mf->name, sizeof mf->name, "%s", str_or(j, "name", "unnamed"));
    snprintf(mf->task, sizeof mf->task, "%s", str_or(j, "task", "ct"));
    const cJSON *demo = cJSON_GetObjectItemCaseSensitive(j, "demo");
    if (demo && !cJSON_IsBool(demo)) {
        st = sp_fail(SP_ERR_MODEL, "%s: \"demo\" must be true or false", file);
        goto out;
    }
    mf->demo = cJSON_IsTrue(demo);
    if ((st = parse_onnx_files(j, file, mf)))
        goto out;
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(j, "arena");
    if (ar && !cJSON_IsBool(ar)) {
        st = sp_fail(SP_ERR_MODEL, "%s: \"arena\" must be true or false", file);
        goto out;
    }
    mf->arena = ar ? cJSON_IsTrue(ar) : -1;
    const cJSON *ri = cJSON_GetObjectItemCaseSensitive(j, "resampled_int32");
    if (ri && !cJSON_IsBool(ri)) {
        st = sp_fail(SP_ERR_MODEL, "%s: \"resampled_int32\" must be true or false", file);
        goto out;
    }
    mf->resampled_int32 = cJSON_IsTrue(ri);
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(j, "input");
    const cJSON *outp = cJSON_GetObjectItemCaseSensitive(j, "output");
    snprintf(mf->input_name, sizeof mf->input_name, "%s", str_or(in, "name", ""));
    snprintf(mf->output_name, sizeof mf->output_name, "%s", str_or(outp, "name", ""));
    if ((st = parse_task(j, in, outp, file, mf)))
        goto out;
    if ((st = parse_labels(j, file, mf)))
        goto out;
    for (int i = 0; i < mf->n_regions && !st; i++)
        if (mf->region_order[i] >= mf->num_classes)
            st = sp_fail(SP_ERR_MODEL, "%s: regions.class_order's %d is not in the label map (0..%d)", file,
                         mf->region_order[i], mf->num_classes - 1);
    if (!st && !strcmp(mf->task, "masks"))
        st = parse_mask_sets(j, file, mf);
    if (!st)
        st = parse_dicom_codes(j, file, mf);
out:
    cJSON_Delete(j);
    if (st)
        sp_manifest_clear(mf);
    return st;
}

void sp_manifest_clear(sp_manifest *mf)
{
    if (mf->labels)
        for (int i = 0; i < mf->num_classes; i++)
            free(mf->labels[i]);
    free(mf->labels);
    mf->labels = NULL;
    free(mf->dicom_codes);
    mf->dicom_codes = NULL;
    free(mf->head_w);
    mf->head_w = mf->head_b = NULL;
    for (int i = 0; i < SP_MAX_PARTS; i++) {
        free(mf->part_map[i]);
        mf->part_map[i] = NULL;
    }
    for (int i = 0; i < mf->n_outside; i++)
        free(mf->outside_names[i]);
    free(mf->outside_names);
    mf->outside_names = NULL;
    mf->n_outside = 0;
    for (int i = 0; i < mf->n_crop_names; i++)
        free(mf->crop_names[i]);
    free(mf->crop_names);
    free(mf->crop_want);
    mf->crop_names = NULL;
    mf->crop_want = NULL;
    mf->n_crop_names = 0;
    mf->n_parts = 0;
}

/* head.bin: num_classes x features weights, then num_classes biases
 * (float32, little-endian), exactly that many bytes. */
static sp_status load_head(sp_manifest *mf, const char *dir)
{
    char path[PATH_MAX];
    void *data;
    size_t n, want = (size_t)mf->num_classes * (size_t)(mf->head_features + 1) * sizeof(float);
    snprintf(path, sizeof path, "%s/%s", dir, mf->head_file);
    if (sp_read_file(path, want + 1, &data, &n))
        return sp_fail_prefix(SP_ERR_MODEL, "model package %s: head", dir);
    if (n != want) {
        free(data);
        return sp_fail(SP_ERR_MODEL, "model package %s: %s has %zu bytes; %d classes x (%d features + bias) "
                       "as float32 are %zu", dir, mf->head_file, n, mf->num_classes, mf->head_features, want);
    }
    mf->head_w = data;
    mf->head_b = mf->head_w + (size_t)mf->num_classes * (size_t)mf->head_features;
    return SP_OK;
}

static int find_output(const sp_io_info *out, int no, const char *name)
{
    for (int i = 0; i < no; i++)
        if (!strcmp(out[i].name, name))
            return i;
    return -1;
}

static sp_status check_masks_model(const sp_manifest *mf, const sp_model *m, const char *dir)
{
    int ni, no;
    const sp_io_info *in = sp_model_inputs(m, &ni), *out = sp_model_outputs(m, &no);
    if (ni != 1 || no < 1)
        return sp_fail(SP_ERR_MODEL, "%s: a masks model takes 1 input and has outputs (has %d, %d)", dir, ni, no);
    const sp_tensor *ti = &in[0].meta;
    if (ti->dtype != SP_DT_F32 || ti->rank != 4 || (ti->shape[1] > 0 && ti->shape[1] != 3))
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX input must be float32 [N, 3, H, W]", dir);
    if (mf->in_h && ((ti->shape[2] > 0 && ti->shape[2] != mf->in_h) || (ti->shape[3] > 0 && ti->shape[3] != mf->in_w)))
        return sp_fail(SP_ERR_MODEL, "%s: input.size [%d, %d] differs from the ONNX input", dir, mf->in_h, mf->in_w);
    if (!mf->in_h && (ti->shape[2] > 0 || ti->shape[3] > 0))
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX input has a fixed size: give input.size", dir);
    if (mf->out_kind == SP_OUT_M2F) {
        int c = find_output(out, no, mf->class_output), k = find_output(out, no, mf->mask_output);
        if (c < 0 || k < 0)
            return sp_fail(SP_ERR_MODEL, "%s: Mask2Former outputs \"%s\" and \"%s\" not both in the model", dir,
                           mf->class_output, mf->mask_output);
        if (out[c].meta.rank != 3 || out[k].meta.rank != 4)
            return sp_fail(SP_ERR_MODEL, "%s: class queries must be [N, Q, C+1] and mask queries [N, Q, h, w]", dir);
        if (out[c].meta.shape[2] > 0 && out[c].meta.shape[2] != mf->num_classes + 1)
            return sp_fail(SP_ERR_MODEL, "%s: class queries have %lld classes (with the null class); the label map "
                           "has %d", dir, (long long)out[c].meta.shape[2] - 1, mf->num_classes);
        return SP_OK;
    }
    const sp_tensor *to = &out[0].meta;
    if (to->dtype != SP_DT_F32 || to->rank != 4)
        return sp_fail(SP_ERR_MODEL, "%s: the first output must be float32 [N, C, h, w]", dir);
    int want = mf->out_kind == SP_OUT_PROB ? 1 : mf->num_classes;
    if (to->shape[1] > 0 && to->shape[1] != want)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX output has %lld channels; expected %d", dir,
                       (long long)to->shape[1], want);
    return SP_OK;
}

static sp_status check_classify_model(const sp_manifest *mf, const sp_model *m, const char *dir)
{
    int ni, no;
    const sp_io_info *in = sp_model_inputs(m, &ni), *out = sp_model_outputs(m, &no);
    if (ni != 1 || no < 1)
        return sp_fail(SP_ERR_MODEL, "%s: a classify model takes 1 input and has outputs (has %d, %d)", dir, ni, no);
    const sp_tensor *ti = &in[0].meta;
    if (ti->dtype != SP_DT_F32 || ti->rank != 4 || (ti->shape[1] > 0 && ti->shape[1] != 3))
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX input must be float32 [N, 3, H, W]", dir);
    if ((ti->shape[2] > 0 && ti->shape[2] != mf->in_h) || (ti->shape[3] > 0 && ti->shape[3] != mf->in_w))
        return sp_fail(SP_ERR_MODEL, "%s: input.size [%d, %d] differs from the ONNX input", dir, mf->in_h, mf->in_w);
    int oi = mf->output_name[0] ? find_output(out, no, mf->output_name) : 0;
    if (oi < 0)
        return sp_fail(SP_ERR_MODEL, "%s: manifest output \"%s\" is not an ONNX output", dir, mf->output_name);
    const sp_tensor *to = &out[oi].meta;
    if (to->dtype != SP_DT_F32 || to->rank != 2 || (to->shape[1] > 0 && to->shape[1] != mf->num_classes))
        return sp_fail(SP_ERR_MODEL, "%s: the classify output must be float32 [N, %d] (one score per label)", dir,
                       mf->num_classes);
    return SP_OK;
}

sp_status sp_manifest_check_model(const sp_manifest *mf, const sp_model *m, const char *dir)
{
    if (!strcmp(mf->task, "masks"))
        return check_masks_model(mf, m, dir);
    if (!strcmp(mf->task, "classify"))
        return check_classify_model(mf, m, dir);
    int ni, no;
    const sp_io_info *in = sp_model_inputs(m, &ni), *out = sp_model_outputs(m, &no);
    if (ni != 1)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX model has %d inputs; the CT pipeline needs 1", dir, ni);
    if (no < 1)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX model has no outputs", dir);
    if (mf->input_name[0] && strcmp(mf->input_name, in[0].name) != 0)
        return sp_fail(SP_ERR_MODEL, "%s: manifest input \"%s\" but the ONNX input is \"%s\"", dir,
                       mf->input_name, in[0].name);
    int oi = 0;
    if (mf->output_name[0]) {
        for (oi = 0; oi < no && strcmp(out[oi].name, mf->output_name) != 0; oi++)
            ;
        if (oi == no)
            return sp_fail(SP_ERR_MODEL, "%s: manifest output \"%s\" is not an ONNX output", dir,
                           mf->output_name);
        if (oi != 0)
            return sp_fail(SP_ERR_MODEL, "%s: the logits must be the model's first output", dir);
    }
    const sp_tensor *ti = &in[0].meta, *to = &out[oi].meta;
    if (!(ti->dtype == SP_DT_F32 || ti->dtype == SP_DT_F16) || to->dtype != ti->dtype)
        return sp_fail(SP_ERR_MODEL, "%s: input and output must be float32 (or both float16) (got %s -> %s)", dir,
                       sp_dtype_str(ti->dtype), sp_dtype_str(to->dtype));
    if (ti->rank != 5 || to->rank != 5)
        return sp_fail(SP_ERR_MODEL, "%s: a 3D model takes [N, C, D0, D1, D2] tensors; the ONNX "
                       "input has rank %d and the output rank %d", dir, ti->rank, to->rank);
    if (ti->shape[1] > 0 && ti->shape[1] != mf->channels)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX input has %lld channels, the manifest says %d", dir,
                       (long long)ti->shape[1], mf->channels);
    if (mf->head_features && to->shape[1] > 0 && to->shape[1] != mf->head_features)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX output has %lld channels but the head takes %d features", dir,
                       (long long)to->shape[1], mf->head_features);
    if (mf->n_regions && to->shape[1] > 0 && to->shape[1] != mf->n_regions)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX output has %lld channels but regions.class_order lists %d "
                       "regions", dir, (long long)to->shape[1], mf->n_regions);
    if (!mf->head_features && !mf->n_regions && to->shape[1] > 0 && to->shape[1] != mf->num_classes)
        return sp_fail(SP_ERR_MODEL, "%s: the ONNX output has %lld classes but the manifest's label "
                       "map has %d (indices 0..%d)", dir, (long long)to->shape[1], mf->num_classes,
                       mf->num_classes - 1);
    for (int d = 0; d < 3; d++)
        if ((ti->shape[2 + d] > 0 && ti->shape[2 + d] != mf->patch[d]) ||
            (to->shape[2 + d] > 0 && to->shape[2 + d] != mf->patch[d]))
            return sp_fail(SP_ERR_MODEL, "%s: the ONNX model's spatial dim %d is fixed to %lld but "
                           "patch_size[%d] is %lld", dir, d,
                           (long long)(ti->shape[2 + d] > 0 ? ti->shape[2 + d] : to->shape[2 + d]), d,
                           (long long)mf->patch[d]);
    return SP_OK;
}

/* The package's ONNX file for the runtime's precision and test-time
 * augmentation: "fp16" needs the manifest's onnx_fp16, "int8" its
 * onnx_int8; "auto" takes the fp16 one on a GPU device for CT models (never
 * the int8 one: opt-in). TTA "on", or "auto" with the manifest's
 * tta.default, takes the mirrored graph when the package has one (a package
 * without mirror axes runs plain, as nnU-Net's predictor does); it sets
 * mf->tta_used. */
static sp_status pick_onnx(const sp_runtime *rt, sp_manifest *mf, const char *dir, const char **onnx)
{
    const char *prec = sp_runtime_precision(rt), *tta = sp_runtime_tta(rt);
    int mirror = mf->tta_onnx[0] && (!strcmp(tta, "on") || (!strcmp(tta, "auto") && mf->tta_default));
    const char *plain = mirror ? mf->tta_onnx : mf->onnx, *half = mirror ? mf->tta_onnx_fp16 : mf->onnx_fp16;
    int has16 = half[0] != 0, gpu = strcmp(sp_runtime_device_name(rt), "cpu") != 0;
    *onnx = plain;
    mf->tta_used = mirror;
    if (!strcmp(prec, "fp16")) {
        if (!has16)
            return sp_fail(SP_ERR_MODEL, "model package %s has no fp16 model%s (no \"%s\" in its manifest; "
                           "tools/import/onnx_fp16.py adds one)", dir, mirror ? " with mirroring" : "",
                           mirror ? "tta.onnx_fp16" : "onnx_fp16");
        *onnx = half;
    } else if (!strcmp(prec, "int8")) {   /* opt-in only: "auto" never picks it */
        if (!mf->onnx_int8[0] || mirror)
            return sp_fail(SP_ERR_MODEL, "model package %s has no int8 model%s (no \"onnx_int8\" in its manifest; "
                           "tools/import/onnx_int8.py adds one)", dir, mirror ? " with mirroring (--no-tta)" : "");
        *onnx = mf->onnx_int8;
    } else if (!strcmp(prec, "auto") && has16 && gpu && !strcmp(mf->task, "ct")) {
        *onnx = half;
    }
    return SP_OK;
}

/* Whether the package's model runs with ONNX Runtime's arena and memory
 * pattern: the manifest's "arena" when it says, else by task, as measured
 * (docs/performance.md, "Arena"): on for photo models, where per-tensor
 * allocations cost up to 3x the inference, ... */
static int package_arena(const sp_manifest *mf)
{
    if (mf->arena >= 0)
        return mf->arena;
    return !strcmp(mf->task, "masks") || !strcmp(mf->task, "classify");
}

static sp_status load_package(sp_runtime *rt, const char *dir, int on_demand, sp_package **out);

/* A part, crop or refine model: on demand when the runtime says so
 * (sp_runtime_params.parts_on_demand) or the package is opened
 * (sp_package_open: every session deferred) */
static sp_status load_sub(sp_runtime *rt, const sp_package *pk, const char *sub, int defer, sp_package **out)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", pk->dir, sub) >= (int)sizeof path)
        return sp_fail(SP_ERR_MODEL, "%s: path too long", pk->dir);
    return load_package(rt, path, defer || sp_runtime_parts_on_demand(rt), out);
}

/* A task package's parts and crop model, each a package of its own. */
static sp_status load_parts(sp_runtime *rt, sp_package *pk, int defer)
{
    sp_status st = SP_OK;
    for (int i = 0; i < pk->mf.n_parts && !st; i++)
        st = load_sub(rt, pk, pk->mf.part_dir[i], defer, &pk->part[i]);
    if (!st && pk->mf.refine_dir[0])
        st = load_sub(rt, pk, pk->mf.refine_dir, defer, &pk->refine);
    return !st && pk->mf.crop_dir[0] ? load_sub(rt, pk, pk->mf.crop_dir, defer, &pk->crop) : st;
}

static void free_parts(sp_package *pk)
{
    for (int i = 0; i < SP_MAX_PARTS; i++)
        sp_package_free(pk->part[i]);
    sp_package_free(pk->crop);
    sp_package_free(pk->refine);
    if (pk->mf.n_parts)
        pk->model = NULL;   /* the first part's */
}

/* An on-demand model's ONNX file (path), found now; its session is made by
 * the runs (sp_package_acquire). */
static sp_status defer_model(sp_runtime *rt, sp_package *pk, const char *path)
{
    if (!realpath(path, pk->onnx_path) || access(pk->onnx_path, R_OK) != 0)
        return sp_fail(SP_ERR_MODEL, "model package %s: its ONNX file %s is missing or unreadable", pk->dir,
                       strrchr(path, '/') + 1);
    pthread_mutex_init(&pk->mu, NULL);
    pk->on_demand = 1;
    pk->rt = rt;
    return SP_OK;
}

/* An on-demand model's session for one more holder; errors as
 * sp_package_load gives them */
static sp_status acquire(sp_package *pk)
{
    sp_status st = SP_OK;
    pthread_mutex_lock(&pk->mu);
    if (!pk->users) {
        st = sp_model_load_arena(pk->rt, pk->onnx_path, package_arena(&pk->mf), &pk->model);
        if (!st && (st = sp_manifest_check_model(&pk->mf, pk->model, pk->dir))) {
            sp_model_release(pk->model);
            pk->model = NULL;
        }
    }
    pk->users += !st;
    pthread_mutex_unlock(&pk->mu);
    return st;
}

sp_status sp_package_acquire(sp_package *pk)
{
    if (!pk->on_demand)
        return SP_OK;
    sp_status st = acquire(pk);
    return st ? sp_fail_prefix(st, "model %s, loaded when the run reached it", pk->dir) : SP_OK;
}

void sp_package_unacquire(sp_package *pk)
{
    if (!pk->on_demand)
        return;
    pthread_mutex_lock(&pk->mu);
    if (pk->users > 0 && --pk->users == 0) {   /* the session, its arena and device memory go */
        sp_model_release(pk->model);
        pk->model = NULL;
    }
    pthread_mutex_unlock(&pk->mu);
}

const sp_runtime *sp_package_runtime(const sp_package *pk)
{
    if (pk->on_demand)   /* its model's runtime, read without racing a concurrent sp_package_prepare */
        return pk->rt;
    if (pk->mf.n_parts)
        return pk->part[0] ? sp_package_runtime(pk->part[0]) : NULL;
    return pk->model ? sp_model_runtime(pk->model) : pk->rt;
}

sp_status sp_package_load(sp_runtime *rt, const char *dir, sp_package **out)
{
    return load_package(rt, dir, 0, out);
}

sp_status sp_package_open(sp_runtime *rt, const char *dir, sp_package **out)
{
    return load_package(rt, dir, 1, out);
}

/* A deferred model's session, made and held as sp_package_load holds it */
static sp_status prepare_one(sp_package *pk)
{
    if (!pk->on_demand || pk->prepared)
        return SP_OK;
    sp_status st = acquire(pk);
    pk->prepared = !st;
    return st;
}

sp_status sp_package_prepare(sp_package *pk)
{
    if (!pk || !pk->mf.n_parts)
        return pk ? prepare_one(pk) : SP_OK;
    const sp_runtime *rt = sp_package_runtime(pk);
    if (!rt || sp_runtime_parts_on_demand(rt))   /* the runs make them, as after sp_package_load */
        return SP_OK;
    sp_status st = SP_OK;
    for (int i = 0; i < pk->mf.n_parts && !st; i++)
        st = sp_package_prepare(pk->part[i]);
    if (!st && !(st = sp_package_prepare(pk->refine)) && !(st = sp_package_prepare(pk->crop)))
        pk->model = pk->part[0]->model;   /* as sp_task_check_parts sets it for resident parts */
    return st;
}

/* on_demand: a part, crop or refine model whose session each run loads; for
 * a task package (sp_package_open), its parts are all deferred */
static sp_status load_package(sp_runtime *rt, const char *dir, int on_demand, sp_package **out)
{
    char path[PATH_MAX];
    void *text;
    size_t n;
    sp_status st;
    *out = NULL;
    snprintf(path, sizeof path, "%s/segpipe.json", dir);
    struct stat sd;
    if (stat(dir, &sd) != 0)
        return sp_fail(SP_ERR_MODEL, "model %s: no such folder (a model is a folder holding segpipe.json; "
                       "`segpipe models` lists the bundled ones)", dir);
    if (!S_ISDIR(sd.st_mode))
        return sp_fail(SP_ERR_MODEL, "model %s: not a folder (a model is a folder holding segpipe.json and "
                       "its .onnx)", dir);
    if (access(path, F_OK) != 0)
        return sp_fail(SP_ERR_MODEL, "model %s: not a segpipe model folder (it has no segpipe.json; "
                       "tools/import/ makes one from nnU-Net, TotalSegmentator or brainchop weights)", dir);
    if ((st = sp_read_file(path, 16 << 20, &text, &n)))
        return sp_fail_prefix(SP_ERR_MODEL, "model package %s", dir);
    char *s = text;   /* NUL-terminated */
    sp_package *pk = calloc(1, sizeof *pk);
    if (!pk) {
        free(s);
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    pk->json = s;
    snprintf(pk->dir, sizeof pk->dir, "%s", dir);
    if ((st = sp_manifest_parse(s, path, &pk->mf)) ||
        (pk->mf.head_features && (st = load_head(&pk->mf, dir)))) {
        sp_package_free(pk);
        return st;
    }
    if (pk->mf.n_parts) {   /* a task package: its parts are packages, checked by task_package.c */
        if ((st = load_parts(rt, pk, on_demand)) || (st = sp_task_check_parts(pk))) {
            sp_package_free(pk);
            return st;
        }
        *out = pk;
        return SP_OK;
    }
    const char *onnx;
    if ((st = pick_onnx(rt, &pk->mf, dir, &onnx))) {
        sp_package_free(pk);
        return st;
    }
    snprintf(path, sizeof path, "%s/%s", dir, onnx);
    if (on_demand && (st = defer_model(rt, pk, path))) {
        sp_package_free(pk);
        return st;
    }
    if (!on_demand && ((st = sp_model_load_arena(rt, path, package_arena(&pk->mf), &pk->model)) ||
        (st = sp_manifest_check_model(&pk->mf, pk->model, dir)))) {
        sp_package_free(pk);
        return st;
    }
    *out = pk;
    return SP_OK;
}

void sp_package_free(sp_package *pk)
{
    if (!pk)
        return;
    free_parts(pk);
    sp_model_release(pk->model);   /* NULL for an on-demand model between runs */
    if (pk->on_demand)
        pthread_mutex_destroy(&pk->mu);
    sp_manifest_clear(&pk->mf);
    free(pk->json);
    free(pk);
}

const char *sp_package_name(const sp_package *pk) { return pk->mf.name; }
int sp_package_num_classes(const sp_package *pk) { return pk->mf.num_classes; }
const char *sp_package_label(const sp_package *pk, int i)
{
    return i >= 0 && i < pk->mf.num_classes ? pk->mf.labels[i] : NULL;
}
const char *const *sp_package_labels(const sp_package *pk) { return (const char *const *)pk->mf.labels; }
const char *sp_package_manifest_json(const sp_package *pk) { return pk->json; }
const char *sp_package_dicom_codes(const sp_package *pk) { return pk->mf.dicom_codes; }
sp_model *sp_package_model(const sp_package *pk) { return pk->model; }

const char *sp_package_task(const sp_package *pk) { return pk->mf.task; }
int sp_package_is_volume(const sp_package *pk) { return !strcmp(pk->mf.task, "ct") || !strcmp(pk->mf.task, "mri"); }
int sp_package_demo(const sp_package *pk) { return pk->mf.demo; }
int sp_package_tta(const sp_package *pk) { return pk->mf.tta_used; }
int sp_package_input_channels(const sp_package *pk) { return pk->mf.channels; }
int sp_package_cascade(const sp_package *pk, int *image_channels)
{
    if (image_channels)
        *image_channels = pk->mf.casc_n ? pk->mf.casc_img : pk->mf.channels;
    return pk->mf.casc_n;
}
const char *sp_package_nnunet_folds(const sp_package *pk) { return pk->mf.folds; }
int sp_package_num_masks(const sp_package *pk) { return pk->mf.n_masks; }
const char *sp_package_mask_name(const sp_package *pk, int i)
{
    return i >= 0 && i < pk->mf.n_masks ? pk->mf.mask_name[i] : NULL;
}

size_t sp_package_run_memory(const sp_package *pk) { return pk->run_bytes; }

int sp_package_sessions(const sp_package *pk)
{
    if (!pk->mf.n_parts)
        return pk->model ? sp_model_sessions(pk->model) : 0;
    int n = 0;
    for (int i = 0; i < pk->mf.n_parts; i++)
        n += sp_package_sessions(pk->part[i]);
    n += pk->crop ? sp_package_sessions(pk->crop) : 0;
    return n + (pk->refine ? sp_package_sessions(pk->refine) : 0);
}

/* A task package: each part warmed up; the largest working memory counts. */
static sp_status warm_up_parts(sp_package *pk)
{
    sp_status st = SP_OK;
    pk->run_bytes = 0;
    for (int i = 0; i < pk->mf.n_parts && !st; i++)
        if (!(st = sp_package_warm_up(pk->part[i])) && pk->part[i]->run_bytes > pk->run_bytes)
            pk->run_bytes = pk->part[i]->run_bytes;
    if (!st && pk->refine)
        st = sp_package_warm_up(pk->refine);
    return st ? st : pk->crop ? sp_package_warm_up(pk->crop) : SP_OK;
}

static sp_status warm_up_model(sp_package *pk);

sp_status sp_package_warm_up(sp_package *pk)
{
    if (pk->mf.n_parts)
        return warm_up_parts(pk);
    sp_status st = sp_package_acquire(pk);   /* an on-demand part: loaded for the warm-up only */
    if (st)
        return st;
    st = warm_up_model(pk);
    sp_package_unacquire(pk);
    return st;
}

static sp_status warm_up_model(sp_package *pk)
{
    const sp_manifest *mf = &pk->mf;
    sp_tensor ti;
    if (!strcmp(mf->task, "masks") || !strcmp(mf->task, "classify")) {   /* one canvas-sized photo */
        int hc = mf->in_h ? mf->in_h : (mf->long_side + 31) / 32 * 32, wc = mf->in_w ? mf->in_w : hc;
        int nin;
        int64_t nb = sp_model_inputs(pk->model, &nin)[0].meta.shape[0];
        ti = (sp_tensor){SP_DT_F32, 4, {nb > 0 ? nb : 1, 3, hc, wc}, NULL};
    } else {
        int ni;
        sp_dtype dt = sp_model_inputs(pk->model, &ni)[0].meta.dtype;   /* fp32, or fp16 packages */
        ti = (sp_tensor){dt, 5, {1, mf->channels, mf->patch[0], mf->patch[1], mf->patch[2]}, NULL};
    }
    size_t n = 1;
    for (int d = 0; d < ti.rank; d++)
        n *= (size_t)ti.shape[d];
    void *in = calloc(n, sp_dtype_size(ti.dtype));   /* zeros, whatever the type */
    if (!in)
        return sp_fail(SP_ERR_NOMEM, "warm-up: out of memory");
    ti.data = in;
    sp_tensor to[SP_MAX_RANK];
    memset(to, 0, sizeof to);
    int no;
    sp_model_outputs(pk->model, &no);
    no = no < SP_MAX_RANK ? no : SP_MAX_RANK;
    /* twice: the first run sets up, the second is measured (steady state) */
    sp_status st = SP_OK;
    for (int r = 0; r < 2 && !st; r++) {
        size_t rss0 = sp_current_rss();
        int measured = r == 1 && sp_peak_rss_reset() == 0;
        st = sp_model_run(pk->model, &ti, 1, to, no);
        size_t peak = sp_peak_rss(), out = 0;
        for (int k = 0; !st && k < no; k++) {
            size_t e = sp_dtype_size(to[k].dtype);
            for (int d = 0; d < to[k].rank; d++)
                e *= (size_t)to[k].shape[d];
            out += e;
        }
        /* less the output, held twice here (ONNX Runtime's and the copy) */
        if (!st && measured && peak > rss0 + 2 * out)
            pk->run_bytes = peak - rss0 - 2 * out;
        for (int k = 0; k < no; k++)
            sp_tensor_free_data(&to[k]);
    }
    free(in);
    return st;
}
