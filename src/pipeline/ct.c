/*
 * ct.c — the CT pipeline, stage by stage, as TotalSegmentator --fast runs
 * nnU-Net: reorient to the closest canonical orientation, resample to the
 * model spacing (linear), normalise, sliding-window inference with Gaussian
 * weighting and argmax, optional connected-component cleanup, labels back
 * to the canonical native grid (nearest), undo the reorientation, passport.
 * Every stage is timed into the result's sp_timings.
 */
#include "pipeline.h"
#include "../runtime/device.h"
#include "../runtime/meshnet.h"

#include <errno.h>
#include <math.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct sp_ct_result {
    sp_timings t;
    uint16_t *labels;
    int64_t dim[3];
    uint16_t *model_labels;
    int64_t mdim[3];
    double maffine[4][4];
    sp_passport *passport;
    float *probs;             /* keep_probabilities: classes x voxels, the input grid */
    int nprobs;
    int boxed;                /* crop_nonzero ran inside [box_lo, box_hi) (i, j, k) */
    int64_t box_lo[3], box_hi[3];
};

sp_ct_params sp_ct_default_params(void)
{
    sp_ct_params p;
    memset(&p, 0, sizeof p);
    p.tile_batch = 0;   /* auto */
    p.passport = 1;
    p.spill = 1;
    return p;
}

void sp_ct_result_free(sp_ct_result *r)
{
    if (!r)
        return;
    free(r->labels);
    free(r->model_labels);
    free(r->probs);
    sp_passport_free(r->passport);
    free(r);
}

const sp_timings *sp_ct_result_timings(const sp_ct_result *r) { return &r->t; }
const uint16_t *sp_ct_result_labels(const sp_ct_result *r, int64_t dim[3])
{
    if (dim)
        memcpy(dim, r->dim, sizeof r->dim);
    return r->labels;
}
int sp_ct_result_crop_box(const sp_ct_result *r, int64_t lo[3], int64_t hi[3])
{
    for (int a = 0; a < 3; a++) {
        lo[a] = r->boxed ? r->box_lo[a] : 0;
        hi[a] = r->boxed ? r->box_hi[a] : r->dim[a];
    }
    return r->boxed;
}

const float *sp_ct_result_probabilities(const sp_ct_result *r, int *classes)
{
    if (classes)
        *classes = r->probs ? r->nprobs : 0;
    return r->probs;
}

const uint16_t *sp_ct_result_model_labels(const sp_ct_result *r, int64_t dim[3], double affine[4][4])
{
    if (dim)
        memcpy(dim, r->mdim, sizeof r->mdim);
    if (affine)
        memcpy(affine, r->maffine, sizeof r->maffine);
    return r->model_labels;
}

const char *sp_ct_result_passport_json(const sp_ct_result *r)
{
    return r->passport ? sp_passport_json(r->passport) : NULL;
}
const sp_passport *sp_ct_result_passport(const sp_ct_result *r) { return r->passport; }

#define DEFAULT_MAX_MODEL_VOXELS (1ull << 27)
#define DEFAULT_MAX_TILES 100000
#define MAX_MODEL_AXIS 16384
#define MAX_UPSAMPLE 64.0          /* model grid / input voxels */
#define UPSAMPLE_FLOOR 4194304.0   /* small inputs may always reach 2^22 voxels */

/* The model grid (round(n * spacing / target) per axis, as nnU-Net), in
 * checked arithmetic: a header's spacing can ask for any size. */
static sp_status model_grid(const int64_t cdim[3], const double cs[3], const double target[3],
                            uint64_t max_voxels, int64_t mdim[3])
{
    if (!max_voxels)
        max_voxels = DEFAULT_MAX_MODEL_VOXELS;
    double total = 1;
    for (int a = 0; a < 3; a++) {
        double z = (double)cdim[a] * (cs[a] / target[a]);
        if (!(z < MAX_MODEL_AXIS))
            return sp_fail(SP_ERR_INPUT, "%lld voxels at %g mm on axis %d make %.4g voxels at the model's "
                           "%g mm (limit %d per axis): check the spacing in the header",
                           (long long)cdim[a], cs[a], a, z, target[a], MAX_MODEL_AXIS);
        mdim[a] = sp_zoom_size(cdim[a], cs[a] / target[a]);
        total *= (double)mdim[a];
    }
    /* upsampling a few voxels into a large grid is what a forged spacing
     * does; real scans are resampled down, or up a few times at most */
    double in = (double)cdim[0] * (double)cdim[1] * (double)cdim[2];
    double lim = fmin((double)max_voxels, fmax(in * MAX_UPSAMPLE, UPSAMPLE_FLOOR));
    if (total > lim)
        return sp_fail(SP_ERR_INPUT, "the model grid would be %lldx%lldx%lld = %.0f voxels from %.0f input voxels, "
                       "over the limit of %.0f (at most %gx the input, %llu in all): check the spacing in the header",
                       (long long)mdim[0], (long long)mdim[1], (long long)mdim[2], total, in, lim,
                       (double)MAX_UPSAMPLE, (unsigned long long)max_voxels);
    return SP_OK;
}

typedef struct finite_ctx {
    const float *x;
    _Atomic size_t bad;
} finite_ctx;

static void count_nonfinite(void *vc, int64_t b, int64_t e, int w)
{
    finite_ctx *c = vc;
    size_t bad = 0;
    (void)w;
    for (int64_t i = b; i < e; i++)
        bad += !isfinite(c->x[i]);
    if (bad)
        c->bad += bad;
}

/* NaN or infinite intensities have no meaning in CT: refuse them. Integer
 * files cannot hold NaN, and their range (kept by the reader) shows an
 * infinite scale; float files are scanned on the pool. */
static sp_status check_finite(const sp_volume *ct, sp_pool *pool)
{
    sp_dtype dt = ct->file_dtype;
    if (dt != SP_DT_F32 && dt != SP_DT_F64 && ct->range_valid && isfinite(ct->vmin) && isfinite(ct->vmax))
        return SP_OK;
    finite_ctx c = {ct->data, 0};
    sp_pool_for(pool, sp_geom_nvox(&ct->g), 1 << 18, count_nonfinite, &c);
    if (c.bad)
        return sp_fail(SP_ERR_INPUT, "%zu voxel(s) are NaN or infinite", (size_t)c.bad);
    return SP_OK;
}

/* The automatic tile batch. 4 tiles at a time was fastest here
 * (docs/performance.md), as long as their logits stay under 256 MB. Past
 * that (TotalSegmentator-sized heads: 990 MB a 128^3 tile), a CPU session
 * with 4+ threads still runs 4 tiles as concurrent single-tile calls
 * (window_calls.c: 0.73x PyTorch's window at 16 threads against 1.34x one
 * tile at a time, 0.83x against 1.16x at 4) when 3x their logits a call
 * (2.1x measured: the logits and the network's activations) fits in half
 * the memory the system has available. */
int sp_ct_tile_channels(const sp_package *pk)
{
    const sp_manifest *mf = &pk->mf;
    return mf->head_w ? mf->head_features : mf->n_regions ? mf->n_regions : mf->num_classes;
}

int sp_ct_auto_tile_batch(const sp_package *pk)
{
    const sp_manifest *mf = &pk->mf;
    double tile_bytes = 4.0 * sp_ct_tile_channels(pk) * (double)(mf->patch[0] * mf->patch[1] * mf->patch[2]);
    int b = (int)fmax(1, fmin(4, 256e6 / tile_bytes));
    const sp_runtime *rt = sp_package_runtime(pk);   /* also between an on-demand part's runs */
    if (b < 4 && rt && !strcmp(sp_runtime_device_name(rt), "cpu") && sp_runtime_threads(rt) >= 4) {
        int calls = (int)fmin(4, 0.5 * (double)sp_mem_available() / (3 * tile_bytes));
        b = calls > b ? calls : b;
    }
    return b;
}

/* The sliding window's parameters from the package's manifest (a part's
 * for a task package's part) and the run's options. */
static sp_window_params window_params(const sp_package *pk, const sp_ct_params *p)
{
    const sp_manifest *mf = &pk->mf;
    sp_window_params wp;
    memset(&wp, 0, sizeof wp);
    memcpy(wp.patch, mf->patch, sizeof wp.patch);
    memcpy(wp.axes, mf->axes, sizeof wp.axes);
    wp.step = p->step > 0 ? p->step : mf->step;
    wp.sigma_scale = mf->sigma_scale;
    wp.tile_batch = p->tile_batch > 0 ? p->tile_batch : sp_ct_auto_tile_batch(pk);
    wp.num_classes = mf->n_regions ? mf->n_regions : mf->num_classes;
    wp.region_order = mf->n_regions ? mf->region_order : NULL;
    wp.head_w = mf->head_w;
    wp.head_b = mf->head_b;
    wp.head_features = mf->head_features;
    wp.accum_fp16 = p->accum_fp16;
    wp.max_tiles = p->max_tiles > 0 ? p->max_tiles : DEFAULT_MAX_TILES;
    wp.cancel = p->cancel;
    wp.in_channels = mf->channels;
    return wp;
}

/* --roi-subset: keep[l] = 1 for the named structures (and background).
 * NULL keep when no subset is asked. Caller frees *keep. */
static sp_status roi_parse(const sp_manifest *mf, const char *subset, uint8_t **keep)
{
    *keep = NULL;
    if (!subset || !*subset)
        return SP_OK;
    uint8_t *k = calloc((size_t)mf->num_classes, 1);
    if (!k)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    k[0] = 1;
    int n = 0;
    for (const char *p = subset; *p;) {
        size_t len = strcspn(p, ",");
        int found = 0;
        for (int l = 1; l < mf->num_classes && !found; l++)
            if (strlen(mf->labels[l]) == len && !strncmp(mf->labels[l], p, len))
                k[l] = 1, found = 1, n++;
        if (!found && len) {
            free(k);
            return sp_fail(SP_ERR_USAGE, "--roi-subset: model '%s' has no structure \"%.*s\" (%d structures, e.g. "
                           "\"%s\")", mf->name, (int)(len > 64 ? 64 : len), p, mf->num_classes - 1,
                           mf->num_classes > 1 ? mf->labels[1] : "");
        }
        p += len + (p[len] == ',');
    }
    if (!n) {
        free(k);
        return sp_fail(SP_ERR_USAGE, "--roi-subset names no structure");
    }
    *keep = k;
    return SP_OK;
}

/* labels outside the subset become background */
static void roi_apply(uint16_t *lab, size_t n, const uint8_t *keep)
{
    if (keep)
        for (size_t i = 0; i < n; i++)
            if (!keep[lab[i]])
                lab[i] = 0;
}

/* The native MeshNet executor (runtime/meshnet.c) for a package with
 * "meshnet" on the CPU, unless SEGPIPE_MESHNET=0 (ONNX Runtime's graph, the
 * same network; docs/mri.md, "Native MeshNet"). */
static int use_meshnet(const sp_package *pk)
{
    const char *e = getenv("SEGPIPE_MESHNET");
    return pk->mf.meshnet[0] && !(e && !strcmp(e, "0")) &&
           !strcmp(sp_runtime_device_name(sp_model_runtime(pk->model)), "cpu");
}

/* The network over the conformed volume into lab: natively (use_meshnet) or
 * ONNX Runtime's sliding window. */
static sp_status conform_network(sp_package *pk, const float *vol, const int64_t md[3], const sp_ct_params *p,
                                 uint16_t *lab, sp_ct_result *r, sp_pool *pool)
{
    const sp_manifest *mf = &pk->mf;
    if (!use_meshnet(pk)) {
        sp_window_params wp = window_params(pk, p);
        return sp_window_run(pk->model, vol, md, &wp, lab, NULL, pool, &r->t, p->progress, p->progress_user);
    }
    char path[PATH_MAX + 160];
    snprintf(path, sizeof path, "%s/%s", pk->dir, mf->meshnet);
    sp_meshnet *net = NULL;
    double t0 = sp_now();
    sp_status st = sp_meshnet_load(path, &net);
    if (!st && sp_meshnet_classes(net) != mf->num_classes)
        st = sp_fail(SP_ERR_MODEL, "%s: %d classes, the manifest names %d", mf->meshnet, sp_meshnet_classes(net),
                     mf->num_classes);
    sp_meshnet_ctl ctl = {p->cancel, p->progress, p->progress_user};
    if (!st)
        st = sp_meshnet_run(net, vol, md, mf->axes, pool, &ctl, lab, NULL);
    sp_meshnet_free(net);
    sp_timings_add(&r->t, "inference", sp_now() - t0);
    return st;
}

/* Brain MRI models ("conform" in the manifest): conform (conform.c),
 * normalise, the window over the conformed grid, optional cleanup, labels
 * back to the input grid. Fills r's labels (and model labels). */
static sp_status conform_path(sp_package *pk, const sp_volume *ct, const sp_ct_params *p, const uint8_t *keep,
                              sp_ct_result *r, sp_pool *pool)
{
    const sp_manifest *mf = &pk->mf;
    const sp_geom *g = &ct->g;
    int64_t n = mf->conform_n, md[3] = {n, n, n};
    size_t nm = (size_t)(n * n * n), nv = (size_t)sp_geom_nvox(g);
    double caff[4][4], t0 = sp_now();
    if (p->smooth || p->keep_probabilities)
        return sp_fail(SP_ERR_USAGE, "--smooth and probabilities are not available for conformed (brain MRI) models");
    float *vol = sp_big_alloc(nm * sizeof *vol);
    uint16_t *lab = sp_big_alloc(nm * sizeof *lab);
    r->labels = sp_big_alloc(nv * sizeof *r->labels);
    sp_status st = !vol || !lab || !r->labels ? sp_fail(SP_ERR_NOMEM, "conform: cannot allocate %zu voxels", nm)
                                              : SP_OK;
    if (mf->conform_niimath) {   /* brainchop's own conform (conform_niimath.c) */
        if (!st && !(st = sp_conform_niimath_affine(g->affine, g->dim, n, mf->conform_mm, caff)))
            st = sp_conform_niimath_volume(ct->data, g->dim, g->affine, caff, md, mf->conform_fhigh, vol, pool);
    } else if (!st && !(st = sp_conform_affine(g->affine, g->dim, n, mf->conform_mm, caff))) {
        st = sp_conform_volume(ct->data, g->dim, g->affine, caff, md, vol, pool);
    }
    sp_timings_add(&r->t, "conform", sp_now() - t0);
    if (!st) {
        t0 = sp_now();
        sp_normalize(vol, (int64_t)nm, &mf->norm, pool);
        sp_timings_add(&r->t, "normalize", sp_now() - t0);
        st = conform_network(pk, vol, md, p, lab, r, pool);
        roi_apply(lab, nm, keep);
    }
    if (!st && mf->largest_fg) {   /* brainchop: the largest component of the non-zero labels */
        t0 = sp_now();
        st = sp_components_largest_fg(lab, md);
        sp_timings_add(&r->t, "largest_component", sp_now() - t0);
    }
    if (!st && (p->largest_component || p->min_component_ml > 0)) {
        double vox_ml = mf->conform_mm * mf->conform_mm * mf->conform_mm / 1000.0;
        st = sp_components_filter(lab, md, p->largest_component,
                                  p->min_component_ml > 0 ? (int64_t)ceil(p->min_component_ml / vox_ml) : 0);
    }
    if (!st) {
        t0 = sp_now();
        st = sp_conform_labels_back(lab, md, caff, g->affine, g->dim, r->labels, pool);
        memcpy(r->dim, g->dim, sizeof r->dim);
        sp_timings_add(&r->t, "labels_back", sp_now() - t0);
    }
    free(vol);
    if (!st && p->keep_model_labels) {
        memcpy(r->maffine, caff, sizeof caff);
        memcpy(r->mdim, md, sizeof md);
        r->model_labels = lab;
        lab = NULL;
    }
    free(lab);
    return st;
}

/* ---- the input held as int16 while the network runs (sp_ct_run_inplace) ----
 * In place: float i -> int16 i going forward never overwrites an unread
 * float, and int16 -> float going backward never overwrites an unread
 * int16; the upper half's pages go back to the kernel (MADV_DONTNEED) and
 * are faulted in again, zeroed, by the widening. Exact for integer voxels
 * in int16's range (CT in HU); anything else is left as it is. Parked in a
 * file (spill.c), the voxels come back as a read-only mapping of it: the
 * passport reads them there, and the widening writes the floats from it. */
static int pack_int16(sp_volume *v)
{
    if (!v->range_valid || !v->integer_valued || v->vmin < -32768 || v->vmax > 32767)
        return 0;
    size_t n = (size_t)sp_geom_nvox(&v->g);
    float *f = v->data;
    int16_t *s = (int16_t *)(void *)f;
    for (size_t i = 0; i < n; i++)
        s[i] = (int16_t)f[i];
    sp_pages_release(s + n, f + n);   /* the upper half */
    return 1;
}

/* s: the int16 voxels, at v->data itself or elsewhere */
static void widen_int16(sp_volume *v, const int16_t *s)
{
    size_t n = (size_t)sp_geom_nvox(&v->g);
    float *f = v->data;
    for (size_t i = n; i-- > 0;)
        f[i] = (float)s[i];
}

/* The writable input of sp_ct_run_inplace while the network runs. */
typedef struct held_input {
    sp_volume *v;        /* NULL: sp_ct_run (the input is read-only) */
    int packed;          /* the voxels are int16 ... */
    const int16_t *hu;   /* ... here (v->data or the spill's mapping); NULL while parked */
    sp_spill spill;      /* parked in a temporary file */
} held_input;

/* After resampling: the native voxels wait as int16, parked when asked. */
static void hold_input(held_input *h, const sp_ct_params *p)
{
    if (!h->v || !(h->packed = pack_int16(h->v)))
        return;
    h->hu = (const int16_t *)(const void *)h->v->data;
    if (p->spill && sp_spill_out(h->v->data, (size_t)sp_geom_nvox(&h->v->g) * sizeof(int16_t), p->spill_dir,
                                 &h->spill))
        h->hu = NULL;
}

static void drop_voxels(held_input *h)
{
    sp_spill_drop(&h->spill);
    free(h->v->data);
    h->v->data = NULL;
    h->packed = 0;
    h->hu = NULL;
}

/* The parked int16 voxels readable again (h->hu), mapped or read back. */
static sp_status unpark_input(held_input *h)
{
    if (!h->packed || h->hu)
        return SP_OK;
    if ((h->hu = sp_spill_map(&h->spill)))
        return SP_OK;
    sp_status st = sp_spill_back(&h->spill, h->v->data);
    if (st)
        drop_voxels(h);
    else
        h->hu = (const int16_t *)(const void *)h->v->data;
    return st;
}

/* The end of the run: the float voxels restored, or freed (release). */
static void restore_input(held_input *h, int release)
{
    if (!h->v || !h->v->data)
        return;
    if (release) {
        drop_voxels(h);
        return;
    }
    if (h->packed && !unpark_input(h)) {
        widen_int16(h->v, h->hu);
        sp_spill_drop(&h->spill);
    }
    h->packed = 0;
    h->hu = NULL;
}

/* A volume model (task ct or mri), or the error naming the command that runs it */
static sp_status volume_task(const sp_manifest *mf)
{
    if (strcmp(mf->task, "ct") && strcmp(mf->task, "mri"))
        return sp_fail(SP_ERR_MODEL, "model '%s' is a '%s' model, not a CT or MRI volume model (segpipe %s runs it)",
                       mf->name, mf->task, mf->task);
    return SP_OK;
}

/* The spacing along each canonical axis (o: native -> canonical) */
static void canonical_spacing(const sp_geom *g, const sp_ornt *o, double cs[3])
{
    for (int j = 0; j < 3; j++)
        cs[j] = g->spacing[o->ax[j]];
}

/* The grid of steps a and b, from the geometry alone: the closest canonical
 * orientation (*o), the model spacing per canonical axis (target) and the
 * model grid (mdim, checked against the limits). */
static sp_status canonical_grid(const sp_manifest *mf, const sp_geom *g, const sp_ct_params *p, sp_ornt *o,
                                double target[3], int64_t mdim[3])
{
    sp_status st = sp_ornt_to_canonical(g->affine, o);
    if (st)
        return st;
    int64_t cdim[3];
    double cs[3];
    sp_ornt_dims(o, g->dim, cdim);
    canonical_spacing(g, o, cs);
    for (int d = 0; d < 3; d++)
        target[mf->axes[d]] = mf->spacing[d] > 0 ? mf->spacing[d] : cs[mf->axes[d]];   /* 0: kept (2D) */
    return model_grid(cdim, cs, target, p->max_model_voxels, mdim);
}

/* Step b as nnU-Net does it ("resample": "nnunet"): the canonical volume
 * (cvol, dims cdim; canon when it is segpipe's own copy) normalised by pre
 * at its own resolution, then nnU-Net's resampling (resample_nnunet.c) */
static sp_status nnunet_resample(const sp_geom *g, const sp_ornt *o, const float *cvol,
                                 float *canon, const int64_t cdim[3], const sp_norm *pre, const double target[3],
                                 const int64_t mdim[3], float *dst, sp_pool *pool)
{
    size_t nv = (size_t)(cdim[0] * cdim[1] * cdim[2]);
    float *x = canon ? canon : sp_big_alloc(nv * sizeof *x);
    if (!x)
        return sp_fail(SP_ERR_NOMEM, "normalize: cannot allocate %zu voxels", nv);
    if (!canon)
        memcpy(x, cvol, nv * sizeof *x);
    sp_normalize(x, (int64_t)nv, pre, pool);
    double cs[3];
    canonical_spacing(g, o, cs);
    sp_status st = sp_resample_nnunet(x, cdim, cs, target, dst, mdim, pool);
    if (!canon)
        free(x);
    return st;
}

/* Steps a and b: the input reoriented to the closest canonical orientation
 * (*o) and resampled to the model spacing (target, grid mdim) into
 * *model_vol (caller frees); with pre ("resample": "nnunet"), normalised by
 * it first, as nnU-Net's preprocessing normalises before it resamples. */
static sp_status to_model_grid(const sp_manifest *mf, const sp_volume *ct, const sp_ct_params *p, sp_pool *pool,
                               sp_timings *t, sp_ornt *o, double target[3], int64_t mdim[3], float **model_vol,
                               const sp_norm *pre)
{
    const sp_geom *g = &ct->g;
    double t0 = sp_now();
    sp_status st = canonical_grid(mf, g, p, o, target, mdim);
    if (st)
        return st;
    int64_t cdim[3];
    sp_ornt_dims(o, g->dim, cdim);
    size_t nv = (size_t)sp_geom_nvox(g), nm = (size_t)(mdim[0] * mdim[1] * mdim[2]);
    const float *cvol = ct->data;
    float *canon = NULL;
    if (!sp_ornt_is_identity(o)) {
        if (!(canon = sp_big_alloc(nv * sizeof *canon)))
            return sp_fail(SP_ERR_NOMEM, "reorient: cannot allocate %zu voxels", nv);
        sp_ornt_apply(o, ct->data, g->dim, canon, sizeof(float), pool);
        cvol = canon;
    }
    sp_timings_add(t, "reorient", sp_now() - t0);

    t0 = sp_now();
    if (!(*model_vol = sp_big_alloc(nm * sizeof **model_vol))) {
        free(canon);
        return sp_fail(SP_ERR_NOMEM, "resample: cannot allocate %zu voxels", nm);
    }
    if (pre)
        st = nnunet_resample(g, o, cvol, canon, cdim, pre, target, mdim, *model_vol, pool);
    else if (mdim[0] == cdim[0] && mdim[1] == cdim[1] && mdim[2] == cdim[2])
        memcpy(*model_vol, cvol, nm * sizeof **model_vol);
    else
        sp_resample_linear(cvol, cdim, *model_vol, mdim, pool);
    free(canon);
    if (st) {
        free(*model_vol);
        *model_vol = NULL;
        return st;
    }
    sp_timings_add(t, "resample", sp_now() - t0);
    return SP_OK;
}

/* Step e: model-grid labels to r->labels on the input grid; with logits
 * (--smooth) through a canonical copy, else in one gather. */
static sp_status labels_back(const sp_manifest *mf, const sp_geom *g, const sp_ornt *o, const int64_t mdim[3],
                             const uint16_t *lab_m, const float *logits, const uint8_t *keep, sp_ct_result *r,
                             sp_pool *pool)
{
    size_t nv = (size_t)sp_geom_nvox(g);
    memcpy(r->dim, g->dim, sizeof r->dim);
    if (!(r->labels = sp_big_alloc(nv * sizeof *r->labels)))
        return sp_fail(SP_ERR_NOMEM, "cannot allocate the label volume (%zu voxels)", nv);
    int64_t cdim[3];
    sp_ornt_dims(o, g->dim, cdim);
    if (!logits || (cdim[0] == mdim[0] && cdim[1] == mdim[1] && cdim[2] == mdim[2]))
        return sp_labels_to_native(lab_m, mdim, o, g->dim, r->labels, pool);
    uint16_t *lab_c = NULL;
    if (!sp_ornt_is_identity(o) && !(lab_c = sp_big_alloc(nv * sizeof *lab_c)))
        return sp_fail(SP_ERR_NOMEM, "cannot allocate the label volume (%zu voxels)", nv);
    uint16_t *dst = lab_c ? lab_c : r->labels;
    sp_smooth_labels(logits, lab_m, mf->num_classes, mdim, dst, cdim, pool);
    roi_apply(dst, nv, keep);
    if (lab_c) {
        sp_ornt inv = sp_ornt_inverse(o);
        sp_ornt_apply(&inv, lab_c, cdim, r->labels, sizeof(uint16_t), pool);
        free(lab_c);
    }
    return SP_OK;
}

/* keep_probabilities: the model grid's averaged logits (C x nm) to the
 * canonical grid (linear, per class, as nnU-Net resamples its logits), a
 * softmax per voxel, then back to the input's orientation in r->probs. */
static sp_status probabilities_back(const sp_manifest *mf, const sp_geom *g, const sp_ornt *o,
                                    const int64_t mdim[3], const float *logits, sp_ct_result *r, sp_pool *pool)
{
    int C = mf->n_regions ? mf->n_regions : mf->num_classes;
    int64_t cdim[3];
    sp_ornt_dims(o, g->dim, cdim);
    size_t nv = (size_t)sp_geom_nvox(g), nm = (size_t)(mdim[0] * mdim[1] * mdim[2]);
    int same = cdim[0] == mdim[0] && cdim[1] == mdim[1] && cdim[2] == mdim[2];
    float *canon = sp_big_alloc((size_t)C * nv * sizeof *canon);
    r->probs = sp_big_alloc((size_t)C * nv * sizeof *r->probs);
    if (!canon || !r->probs) {
        free(canon);
        return sp_fail(SP_ERR_NOMEM, "probabilities: cannot allocate %d x %zu floats", C, nv);
    }
    for (int k = 0; k < C; k++) {
        if (same)
            memcpy(canon + (size_t)k * nv, logits + (size_t)k * nm, nv * sizeof *canon);
        else
            sp_resample_linear(logits + (size_t)k * nm, mdim, canon + (size_t)k * nv, cdim, pool);
    }
    for (size_t i = 0; mf->n_regions && i < (size_t)C * nv; i++)   /* region-based: a sigmoid each */
        canon[i] = 1.0f / (1.0f + expf(-canon[i]));
    for (size_t i = 0; !mf->n_regions && i < nv; i++) {   /* softmax over the classes, in float as torch.softmax */
        float m = canon[i], s = 0;
        for (int k = 1; k < C; k++)
            m = fmaxf(m, canon[(size_t)k * nv + i]);
        for (int k = 0; k < C; k++)
            s += (canon[(size_t)k * nv + i] = expf(canon[(size_t)k * nv + i] - m));
        for (int k = 0; k < C; k++)
            canon[(size_t)k * nv + i] /= s;
    }
    sp_ornt inv = sp_ornt_inverse(o);
    for (int k = 0; k < C; k++)
        sp_ornt_apply(&inv, canon + (size_t)k * nv, cdim, r->probs + (size_t)k * nv, sizeof(float), pool);
    free(canon);
    r->nprobs = C;
    return SP_OK;
}

/* --keep-model-labels: the model grid's labels and affine kept in r (takes lab_m) */
static void keep_model_labels(const sp_geom *g, const sp_ornt *o, const int64_t mdim[3], uint16_t *lab_m,
                              sp_ct_result *r)
{
    int64_t cdim[3];
    double ca[4][4];
    sp_ornt_dims(o, g->dim, cdim);
    sp_ornt_affine(o, g->dim, g->affine, ca);
    for (int col = 0; col < 3; col++)
        for (int row = 0; row < 3; row++)
            ca[row][col] *= (double)cdim[col] / (double)mdim[col];
    memcpy(r->maffine, ca, sizeof ca);
    memcpy(r->mdim, mdim, sizeof r->mdim);
    r->model_labels = lab_m;
}

/* Each channel by its scheme; a masked z-score over nnU-Net's non-zero mask
 * (any channel non-zero, holes filled), taken before any channel changes */
static sp_status normalize_channels(const sp_manifest *mf, float *vol, const int64_t mdim[3], sp_pool *pool)
{
    size_t nm = (size_t)(mdim[0] * mdim[1] * mdim[2]);
    uint8_t *mask = NULL;
    for (int q = 0; q < mf->channels && !mask; q++)
        if (mf->norms[q].use_mask) {
            if (!(mask = calloc(nm, 1)))
                return sp_fail(SP_ERR_NOMEM, "cannot allocate the non-zero mask (%zu voxels)", nm);
            int nimg = mf->casc_n ? mf->casc_img : mf->channels;
            for (int c = 0; c < nimg; c++)
                for (size_t i = 0; i < nm; i++)
                    mask[i] |= vol[(size_t)c * nm + i] != 0;
            if (sp_fill_holes(mask, mdim)) {
                free(mask);
                return sp_fail(SP_ERR_NOMEM, "cannot fill the non-zero mask's holes (%zu voxels)", nm);
            }
            for (int c = nimg; c < mf->channels; c++)   /* crop_to_nonzero: seg >= 0 keeps previous labels */
                for (size_t i = 0; i < nm; i++)
                    mask[i] |= vol[(size_t)c * nm + i] != 0;
        }
    for (int q = 0; q < mf->channels; q++) {
        if (mf->norms[q].use_mask)
            sp_zscore_masked(vol + (size_t)q * nm, mask, nm);
        else
            sp_normalize(vol + (size_t)q * nm, (int64_t)nm, &mf->norms[q], pool);
    }
    free(mask);
    return SP_OK;
}

/* A cascade's previous-stage labels (lab, the same grid) as one 0/1
 * channel per listed label on the model grid, from dst: each label's mask
 * resampled linearly and kept over 0.5 (nnU-Net's resampling of a
 * segmentation, then convert_labelmap_to_one_hot) */
static sp_status onehot_channels(const sp_manifest *mf, const sp_volume *lab, const sp_ct_params *p, sp_pool *pool,
                                 sp_timings *t, size_t nm, float *dst)
{
    sp_volume *m = sp_volume_alloc(&lab->g);
    size_t nv = (size_t)sp_geom_nvox(&lab->g);
    if (!m)
        return sp_fail(SP_ERR_NOMEM, "cannot allocate the previous stage's label masks");
    sp_status st = SP_OK;
    for (int i = 0; i < mf->casc_n && !st; i++) {
        for (size_t k = 0; k < nv; k++)
            m->data[k] = lab->data[k] == (float)mf->casc_lab[i];
        sp_ornt o;
        double target[3];
        int64_t mdim[3];
        float *v = NULL;
        if ((st = to_model_grid(mf, m, p, pool, t, &o, target, mdim, &v, NULL)))
            break;
        for (size_t k = 0; k < nm; k++)
            dst[(size_t)i * nm + k] = v[k] > 0.5f;
        free(v);
    }
    sp_volume_free(m);
    return st;
}

/* Channels 1.. of a multi-channel model (extra[q - 1]) on the model grid
 * after channel 0: *model_vol grows to channels x nm voxels; a cascade's
 * last volume is its previous stage's labels, made one-hot. */
static sp_status more_channels(const sp_manifest *mf, sp_volume *const *extra, const sp_ct_params *p, sp_pool *pool,
                               sp_timings *t, size_t nm, float **model_vol)
{
    float *all = sp_big_alloc((size_t)mf->channels * nm * sizeof *all);
    if (!all)
        return sp_fail(SP_ERR_NOMEM, "cannot allocate %d channels of %zu voxels", mf->channels, nm);
    memcpy(all, *model_vol, nm * sizeof *all);
    free(*model_vol);
    *model_vol = all;
    int nimg = mf->casc_n ? mf->casc_img : mf->channels;
    if (mf->casc_n) {
        sp_status st = onehot_channels(mf, extra[nimg - 1], p, pool, t, nm, all + (size_t)nimg * nm);
        if (st)
            return st;
    }
    for (int q = 1; q < nimg; q++) {
        sp_ornt o;
        double target[3];
        int64_t mdim[3];
        float *v = NULL;
        sp_status st = to_model_grid(mf, extra[q - 1], p, pool, t, &o, target, mdim, &v,
                                     mf->resample_nnunet ? &mf->norms[q] : NULL);
        if (st)
            return st;
        memcpy(all + (size_t)q * nm, v, nm * sizeof *all);
        free(v);
    }
    return SP_OK;
}

/* Task packages (runtime/task_package.c): steps c and d for each part the
 * run needs, in the package's order, on the one resampled volume (each part
 * normalised by its own manifest); each part's labels mapped to the task's
 * and merged as TotalSegmentator merges its part models: a later part
 * overwrites wherever it predicts anything but background. model_vol is
 * used up (the last part normalises it in place). */
static sp_status run_parts(sp_package *pk, float *model_vol, const int64_t mdim[3], const sp_ct_params *p,
                           const uint8_t *keep, uint16_t *lab_m, sp_pool *pool, sp_timings *t)
{
    const sp_manifest *mf = &pk->mf;
    size_t nm = (size_t)(mdim[0] * mdim[1] * mdim[2]);
    int sel[SP_MAX_PARTS], ns = 0;
    for (int i = 0; i < mf->n_parts; i++)
        if (sp_task_part_needed(mf, i, keep))
            sel[ns++] = i;
    memset(lab_m, 0, nm * sizeof *lab_m);
    float *copy = ns > 1 ? sp_big_alloc(nm * sizeof *copy) : NULL;
    uint16_t *lab_p = sp_big_alloc(nm * sizeof *lab_p);
    sp_status st = (ns > 1 && !copy) || !lab_p ? sp_fail(SP_ERR_NOMEM, "cannot allocate %zu voxels for the parts", nm)
                                               : SP_OK;
    for (int k = 0; k < ns && !st; k++) {
        sp_package *part = pk->part[sel[k]];
        float *x = k == ns - 1 ? model_vol : copy;
        double t0 = sp_now();
        if ((st = sp_package_acquire(part))) {   /* on demand: this part's session, for this part only */
            st = sp_fail_prefix(st, "task '%s': part %d of %d ('%s')", mf->name, sel[k] + 1, mf->n_parts,
                                mf->part_dir[sel[k]]);
            break;
        }
        if (part->on_demand)
            sp_timings_add(t, "load_model", sp_now() - t0), t0 = sp_now();
        if (x == copy)
            memcpy(copy, model_vol, nm * sizeof *copy);
        if (!mf->resample_nnunet)   /* else normalised before nnU-Net's resampling (grid_path) */
            sp_normalize(x, (int64_t)nm, &part->mf.norm, pool);
        sp_timings_add(t, "normalize", sp_now() - t0);
        sp_window_params wp = window_params(part, p);
        st = sp_window_run(part->model, x, mdim, &wp, lab_p, NULL, pool, t, p->progress, p->progress_user);
        if (st) {
            sp_package_unacquire(part);
            break;
        }
        t0 = sp_now();
        const uint16_t *map = mf->part_map[sel[k]];
        uint16_t n = (uint16_t)mf->part_map_n[sel[k]];
        for (size_t v = 0; v < nm; v++) {   /* lut[part_seg], copyto where != 0 */
            uint16_t g = lab_p[v] < n ? map[lab_p[v]] : 0;
            if (g)
                lab_m[v] = g;
        }
        sp_timings_add(t, "merge", sp_now() - t0);
        sp_package_unacquire(part);   /* merged: an on-demand part's session, arena and GPU memory go */
    }
    free(copy);
    free(lab_p);
    return st;
}

/* Step b': TotalSegmentator casts the resampled CT to int32 (numpy's astype:
 * toward zero) before nnU-Net reads it. Its resampling runs in float64 and
 * segpipe's in float32, so a value within a few float32 ulps of an integer
 * is taken as that integer (scipy's exact weights 0 and 1 give integers). */
static void truncate_int32(float *v, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        float r = nearbyintf(v[k]), tol = fmaxf(1e-5f, fabsf(v[k]) * 4.8e-7f);
        v[k] = fabsf(v[k] - r) <= tol ? r : truncf(v[k]);
    }
}

/* Steps a-f: model grid, normalisation, sliding window and argmax, optional
 * cleanup, labels back to the input grid. extra: channels 1.. of a
 * multi-channel model (same grid as ct), else NULL. */
static sp_status grid_path(sp_package *pk, const sp_volume *ct, sp_volume *const *extra, const sp_ct_params *p,
                           const uint8_t *keep, sp_ct_result *r, sp_pool *pool, held_input *h)
{
    const sp_manifest *mf = &pk->mf;
    sp_timings *t = &r->t;
    float *model_vol = NULL, *logits = NULL;
    uint16_t *lab_m = NULL;
    sp_ornt o;
    int64_t mdim[3];
    double target[3];
    /* nnU-Net's resampling normalises first: by the channel's scheme, or a
     * one-part task's part's (package.c allows no other task package) */
    const sp_norm *pre = !mf->resample_nnunet ? NULL : mf->n_parts ? &pk->part[0]->mf.norms[0] : &mf->norms[0];
    sp_status st = to_model_grid(mf, ct, p, pool, t, &o, target, mdim, &model_vol, pre);
    size_t nm = (size_t)(mdim[0] * mdim[1] * mdim[2]);
    if (!st && mf->resampled_int32)
        truncate_int32(model_vol, nm);
    if (!st && mf->channels > 1)
        st = more_channels(mf, extra, p, pool, t, nm, &model_vol);
    if (st) {
        free(model_vol);
        return st;
    }
    hold_input(h, p);   /* the native voxels are not read again until the passport */

    double t0;
    lab_m = sp_big_alloc(nm * sizeof *lab_m);
    if (mf->n_parts) {   /* c, d for each part, merged */
        st = p->keep_probabilities ? sp_fail(SP_ERR_USAGE, "probabilities: not for a task package (several part "
                                             "models)")
             : lab_m ? run_parts(pk, model_vol, mdim, p, keep, lab_m, pool, t)
                     : sp_fail(SP_ERR_NOMEM, "cannot allocate %zu model-grid labels", nm);
        if (st)
            goto done;
        goto merged;
    }

    /* c. normalise, each channel by its scheme (nnU-Net's resampling did it first) */
    t0 = sp_now();
    if (!mf->resample_nnunet && (st = normalize_channels(mf, model_vol, mdim, pool)))
        goto done;
    sp_timings_add(t, "normalize", sp_now() - t0);

    /* d. sliding window + argmax */
    sp_window_params wp = window_params(pk, p);
    int want_logits = p->smooth || p->keep_probabilities;
    if (p->smooth && mf->n_regions)
        st = sp_fail(SP_ERR_USAGE, "--smooth takes class logits: not for a region-based model");
    else if (want_logits && lab_m && !(logits = sp_big_alloc((size_t)wp.num_classes * nm * sizeof *logits)))
        st = sp_fail(SP_ERR_NOMEM, "--smooth/probabilities: cannot allocate %d x %zu logits", wp.num_classes, nm);
    else if (!lab_m)
        st = sp_fail(SP_ERR_NOMEM, "cannot allocate %zu model-grid labels", nm);
    if (st || (st = sp_window_run(pk->model, model_vol, mdim, &wp, lab_m, logits, pool, t, p->progress,
                                  p->progress_user)))
        goto done;
merged:
    free(model_vol);
    model_vol = NULL;
    for (int b = 0; b < mf->n_blobs && !st; b++) {   /* TotalSegmentator's task cleanups, on its grid */
        double vox = target[0] * target[1] * target[2];   /* remove_small_blobs drops sizes <= max_mm3 / vox */
        int64_t minv = mf->blob_largest[b] ? 0 : (int64_t)floor(mf->blob_max_mm3[b] / vox) + 1;
        st = sp_components_label_blobs(lab_m, mdim, mf->blob_label[b], mf->blob_largest[b], minv);
    }
    if (!st && mf->vpp) {   /* TotalSegmentator's postprocess_vertebrae_pp, on its grid */
        t0 = sp_now();
        st = sp_vertebrae_pp(lab_m, mdim, target, mf->num_classes, mf->vpp_c1, mf->vpp_l5, mf->vpp_min_mm3,
                             mf->vpp_mm);
        sp_timings_add(t, "postprocess", sp_now() - t0);
    }
    if (st)
        goto done;
    roi_apply(lab_m, nm, keep);

    /* f. optional cleanup, at model resolution */
    if (p->largest_component || p->min_component_ml > 0) {
        t0 = sp_now();
        double vox_ml = target[0] * target[1] * target[2] / 1000.0;
        int64_t minv = p->min_component_ml > 0 ? (int64_t)ceil(p->min_component_ml / vox_ml) : 0;
        if ((st = sp_components_filter(lab_m, mdim, p->largest_component, minv)))
            goto done;
        sp_timings_add(t, "postprocess", sp_now() - t0);
    }

    /* e. labels back to the native grid */
    t0 = sp_now();
    if ((st = labels_back(mf, &ct->g, &o, mdim, lab_m, p->smooth ? logits : NULL, keep, r, pool)))
        goto done;
    if (p->keep_probabilities && (st = probabilities_back(mf, &ct->g, &o, mdim, logits, r, pool)))
        goto done;
    sp_timings_add(t, "labels_back", sp_now() - t0);
    if (p->keep_model_labels) {
        keep_model_labels(&ct->g, &o, mdim, lab_m, r);
        lab_m = NULL;
    }
done:
    free(model_vol);
    free(logits);
    free(lab_m);
    return st;
}

/* The passport, at native resolution (of the subset, if one was asked).
 * Components are counted first, from the labels alone, while the input is
 * still parked; then the input comes back and is measured. */
static sp_status measure(const sp_manifest *mf, const sp_volume *ct, held_input *h, const sp_ct_params *p,
                         const uint8_t *keep, sp_ct_result *r)
{
    double t0 = sp_now();
    sp_passport_params pp = sp_passport_default_params();
    pp.threads = p->threads;
    pp.source = mf->name;
    pp.keep_border = p->keep_border;
    pp.not_hu = !strcmp(mf->task, "mri");
    int nc = mf->num_classes;
    sp_comp_counts cc = {nc, calloc((size_t)nc, sizeof(int64_t)), calloc((size_t)nc, sizeof(int64_t))};
    const char **names = calloc((size_t)nc, sizeof *names);
    sp_status st = !names || !cc.counts || !cc.largest ? sp_fail(SP_ERR_NOMEM, "out of memory") : SP_OK;
    for (int l = 0; !st && l < nc; l++)
        names[l] = !keep || keep[l] ? mf->labels[l] : NULL;
    if (!st)
        st = sp_components_count(r->labels, r->dim, nc, cc.counts, cc.largest);
    if (!st)
        st = unpark_input(h);
    if (!st)
        st = sp_passport_compute_ext(ct, h->packed ? h->hu : NULL, r->labels,
                                     names, nc, &pp, &cc, &r->passport);
    if (!st && mf->demo)
        st = sp_passport_mark_demo(r->passport);
    free(names);
    free(cc.counts);
    free(cc.largest);
    if (!st)
        sp_timings_add(&r->t, "passport", sp_now() - t0);
    return st;
}

/* The cropped run's labels (and probabilities) into the whole input grid:
 * label 0 and background probability 1 outside the box lo + r->dim */
static sp_status uncrop(sp_ct_result *r, const int64_t full[3], const int64_t lo[3], int regions)
{
    size_t nv = (size_t)(full[0] * full[1] * full[2]), nc = (size_t)(r->dim[0] * r->dim[1] * r->dim[2]);
    int K = r->probs ? r->nprobs : 0;
    uint16_t *lab = sp_big_calloc(nv, sizeof *lab);
    float *pr = K ? sp_big_calloc((size_t)K * nv, sizeof *pr) : NULL;
    if (!lab || (K && !pr)) {
        free(lab);
        return sp_fail(SP_ERR_NOMEM, "cannot allocate the label volume (%zu voxels)", nv);
    }
    for (size_t i = 0; K && !regions && i < nv; i++)   /* regions: all 0 outside, as nnU-Net's */
        pr[i] = 1;
    const int64_t *d = r->dim;
    for (int64_t k = 0; k < d[2]; k++)
        for (int64_t j = 0; j < d[1]; j++) {
            size_t src = (size_t)((k * d[1] + j) * d[0]);
            size_t dst = (size_t)(((k + lo[2]) * full[1] + j + lo[1]) * full[0] + lo[0]);
            memcpy(lab + dst, r->labels + src, (size_t)d[0] * sizeof *lab);
            for (int c = 0; c < K; c++)
                memcpy(pr + (size_t)c * nv + dst, r->probs + (size_t)c * nc + src, (size_t)d[0] * sizeof *pr);
        }
    free(r->labels);
    free(r->probs);
    r->labels = lab;
    r->probs = pr;
    memcpy(r->dim, full, sizeof r->dim);
    return SP_OK;
}

/* crop_nonzero (nnU-Net imports): steps a-f on the box of voxels non-zero
 * in any channel, label 0 outside; the whole grid when the box is all */
static sp_status crop_path(sp_package *pk, const sp_volume *ct, sp_volume *const *extra, int n,
                           const sp_ct_params *p, const uint8_t *keep, sp_ct_result *r, sp_pool *pool, held_input *h)
{
    sp_volume *all[SP_MAX_CHANNELS], *cut[SP_MAX_CHANNELS] = {0};
    int64_t lo[3], hi[3];
    all[0] = (sp_volume *)ct;
    for (int q = 1; q < n; q++)
        all[q] = extra[q - 1];
    if (sp_nonzero_box(all, pk->mf.casc_n ? pk->mf.casc_img : n, lo, hi) ||
        (!lo[0] && !lo[1] && !lo[2] && hi[0] == ct->g.dim[0] && hi[1] == ct->g.dim[1] && hi[2] == ct->g.dim[2]))
        return grid_path(pk, ct, extra, p, keep, r, pool, h);
    sp_status st = SP_OK;
    for (int q = 0; q < n && !st; q++)
        if (!(cut[q] = sp_volume_crop(all[q], lo, hi)))
            st = sp_fail(SP_ERR_NOMEM, "cannot crop channel %d to its non-zero box", q);
    if (!st)
        st = grid_path(pk, cut[0], cut + 1, p, keep, r, pool, h);
    if (!st)
        st = uncrop(r, ct->g.dim, lo, pk->mf.n_regions > 0);
    if (!st) {
        r->boxed = 1;
        memcpy(r->box_lo, lo, sizeof r->box_lo);
        memcpy(r->box_hi, hi, sizeof r->box_hi);
    }
    for (int q = 0; q < n; q++)
        sp_volume_free(cut[q]);
    return st;
}

/* A multi-channel model's inputs: as many as it takes, one grid (dims
 * equal, affines equal within 1e-4 mm: nnU-Net checks spacing, origin and
 * direction alike), voxels present. */
static sp_status check_channels(const sp_manifest *mf, const sp_volume *ct, sp_volume *const *extra, int n)
{
    /* a cascade: the images and the labels; a task package (parts) reads one */
    int want = mf->casc_n ? mf->casc_img + 1 : mf->channels > 0 ? mf->channels : 1;
    if (n != want)
        return sp_fail(SP_ERR_INPUT, "model '%s' takes %d input volume%s; %d given%s", mf->name, want,
                       want == 1 ? "" : "s", n, n < want ? (mf->casc_n ? " (segpipe predict "
                       "-prev_stage_predictions DIR gives a cascade its previous stage's labels)" :
                       " (segpipe predict -i FOLDER reads nnU-Net's CASE_0000, CASE_0001, ... files of a case "
                       "together)") : "");
    if (n > 1 && mf->conform_n)
        return sp_fail(SP_ERR_MODEL, "model '%s': a conformed model takes one channel", mf->name);
    for (int q = 1; q < n; q++) {
        const sp_geom *a = &ct->g, *b = &extra[q - 1]->g;
        int same = a->dim[0] == b->dim[0] && a->dim[1] == b->dim[1] && a->dim[2] == b->dim[2];
        for (int i = 0; i < 4 && same; i++)
            for (int j = 0; j < 4; j++)
                same &= fabs(a->affine[i][j] - b->affine[i][j]) <= 1e-4;
        if (!same)
            return sp_fail(SP_ERR_INPUT, "channel %d's grid (%lldx%lldx%lld, its affine) differs from channel 0's "
                           "(%lldx%lldx%lld): every channel of a case must share one grid", q, (long long)b->dim[0],
                           (long long)b->dim[1], (long long)b->dim[2], (long long)a->dim[0], (long long)a->dim[1],
                           (long long)a->dim[2]);
        if (!extra[q - 1]->data)
            return sp_fail(SP_ERR_USAGE, "channel %d's voxels were released by an earlier run", q);
    }
    return SP_OK;
}

static sp_status ct_run(sp_package *pk, const sp_volume *ct, sp_volume *mut, sp_volume *const *extra, int n,
                        const sp_ct_params *pp, sp_ct_result **out);

/* The mask of the "remove_outside" structures in src (NULL when the package
 * has none) */
static sp_status outside_mask(const sp_manifest *mf, const uint16_t *src, size_t nv, const char *const *names,
                              int n, int strict, uint8_t **om)
{
    uint8_t *w = NULL;
    *om = NULL;
    sp_status st = mf->n_outside ? sp_outside_want(mf, names, n, strict, &w) : SP_OK;
    if (st || !mf->n_outside)
        return st;
    if (!(*om = sp_big_alloc(nv ? nv : 1)))
        st = sp_fail(SP_ERR_NOMEM, "remove_outside: cannot allocate %zu voxels", nv);
    for (size_t v = 0; !st && v < nv; v++)
        (*om)[v] = src[v] < n && w[src[v]];
    free(w);
    return st;
}

/* The run parameters of a package's helper model (crop, refine). */
static sp_ct_params helper_params(const sp_ct_params *p)
{
    sp_ct_params cp = sp_ct_default_params();
    cp.threads = p->threads;
    cp.tile_batch = p->tile_batch;
    cp.passport = 0;
    cp.cancel = p->cancel;
    cp.max_model_voxels = p->max_model_voxels;
    cp.max_tiles = p->max_tiles;
    cp.accum_fp16 = p->accum_fp16;
    return cp;
}

/* The crop model's labels on the whole input (*cr), or the prior result the
 * caller gave (p->crop_from, checked to be on the input's grid), want[]
 * over its labels' names (the crop structures) and *om the mask of the
 * remove_outside structures (or NULL). */
static sp_status crop_source(sp_package *pk, const sp_volume *ct, const sp_ct_params *p, const uint8_t *keep,
                             sp_ct_result **cr, const uint16_t **src, uint8_t **want, int *nwant, uint8_t **om)
{
    const sp_manifest *mf = &pk->mf, *cm = pk->crop ? &pk->crop->mf : mf;
    const char *const *names = p->crop_from_names ? p->crop_from_names : (const char *const *)cm->labels;
    size_t nv = (size_t)sp_geom_nvox(&ct->g);
    *nwant = p->crop_from_names ? p->crop_from_n : cm->num_classes;
    if (p->crop_from) {
        *src = p->crop_from;
        sp_status st = sp_crop_from_check(ct, p->crop_from_grid);
        if (!st)
            st = sp_crop_want_names(mf, keep, names, *nwant, 1, want);
        return st ? st : outside_mask(mf, *src, nv, names, *nwant, 1, om);
    }
    sp_ct_params cp = helper_params(p);
    sp_status st = sp_crop_want_names(mf, keep, names, *nwant, 2, want);   /* refused before the model runs */
    if (st || (st = ct_run(pk->crop, ct, NULL, NULL, 1, &cp, cr)))
        return st;
    *src = (*cr)->labels;
    return outside_mask(mf, *src, nv, names, *nwant, 0, om);
}

/* "refine": TotalSegmentator's vertebrae_pp_refined. The refine model's
 * labels of the whole input (*mask, run before the task's models, while the
 * input is still float), then refine_after on the task's final labels. */
static sp_status refine_before(sp_package *pk, const sp_volume *ct, const sp_ct_params *p, sp_ct_result **mask)
{
    sp_ct_params cp = helper_params(p);
    *mask = NULL;
    return pk->refine ? ct_run(pk->refine, ct, NULL, NULL, 1, &cp, mask) : SP_OK;
}

static sp_status refine_after(const sp_package *pk, const sp_volume *ct, const sp_ct_result *mask, sp_ct_result *r)
{
    if (!mask)
        return SP_OK;
    double zooms[3];   /* TotalSegmentator reads the input header's zooms */
    for (int a = 0; a < 3; a++)
        zooms[a] = ct->g.pixdim[a + 1] > 0 ? ct->g.pixdim[a + 1] : ct->g.spacing[a];
    return sp_vertebrae_refine(r->labels, r->dim, zooms, pk->mf.num_classes, mask->labels, pk->mf.refine_keep,
                               pk->mf.refine_mm);
}

/* --roi-subset on a task package with a roi_crop model, and every run of a
 * subtask package ("crop"), as TotalSegmentator does it: the low-resolution
 * model segments the whole input (or the caller gives a prior result), the
 * box around the requested structures (or the subtask's crop structures)
 * plus the package's margin is cropped from the input (roi_crop.c), the
 * needed parts run on the crop only, and their labels go back into the full
 * grid. None found: all background (TotalSegmentator: "Crop is empty"). */
static sp_status roi_crop_path(sp_package *pk, const sp_volume *ct, const sp_ct_params *p, const uint8_t *keep,
                               sp_ct_result *r, sp_pool *pool, held_input *h)
{
    const sp_manifest *mf = &pk->mf;
    double t0 = sp_now();
    sp_ct_result *cr = NULL;
    const uint16_t *src = NULL;
    uint8_t *want = NULL, *om = NULL;
    int nwant = 0;
    sp_status st = crop_source(pk, ct, p, keep, &cr, &src, &want, &nwant, &om);
    int64_t lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
    int found = !st && sp_roi_box(src, ct->g.dim, want, nwant, mf->crop_addon, ct->g.spacing, lo, hi);
    free(want);
    sp_ct_result_free(cr);
    sp_timings_add(&r->t, "roi_crop", sp_now() - t0);
    memcpy(r->dim, ct->g.dim, sizeof r->dim);
    if (st || !found) {
        free(om);
        return st ? st : sp_labels_uncrop(NULL, lo, lo, ct->g.dim, &r->labels);
    }
    sp_volume *sub = NULL;
    if (!(st = sp_volume_crop_box(ct, lo, hi, &sub)))
        st = grid_path(pk, sub, NULL, p, keep, r, pool, h);
    sp_volume_free(sub);
    uint16_t *full = NULL;
    if (!st && !(st = sp_labels_uncrop(r->labels, lo, hi, ct->g.dim, &full))) {
        free(r->labels);
        r->labels = full;
        memcpy(r->dim, ct->g.dim, sizeof r->dim);
    }
    if (!st && om) {   /* remove_outside: int(mm / mean voxel size) dilations, as TotalSegmentator */
        const double *sp = ct->g.spacing;
        st = sp_remove_outside(r->labels, om, ct->g.dim, (int)(mf->outside_mm / ((sp[0] + sp[1] + sp[2]) / 3)));
    }
    free(om);
    return st;
}

/* mut: the same volume, writable (sp_ct_run_inplace), or NULL; extra:
 * channels 1..n-1 of a multi-channel model, or NULL (n = 1) */
static sp_status ct_run(sp_package *pk, const sp_volume *ct, sp_volume *mut, sp_volume *const *extra, int n,
                        const sp_ct_params *pp, sp_ct_result **out)
{
    sp_ct_params p = pp ? *pp : sp_ct_default_params();
    const sp_manifest *mf = &pk->mf;
    uint8_t *keep = NULL;
    *out = NULL;
    sp_status vt = volume_task(mf);
    if (vt)
        return vt;
    if (p.step != 0 && !(p.step > 0 && p.step <= 1))
        return sp_fail(SP_ERR_USAGE, "the sliding-window step must be in (0, 1], got %g", p.step);
    if (!ct->data)
        return sp_fail(SP_ERR_USAGE, "the volume's voxels were released by an earlier run");
    if ((ct->g.dim[0] < 2) + (ct->g.dim[1] < 2) + (ct->g.dim[2] < 2) == 1)   /* one flat axis: a slice */
        return sp_fail(SP_ERR_INPUT, "the volume is %lldx%lldx%lld: a single 2D slice, and '%s' segments 3D "
                       "volumes (give the whole series)", (long long)ct->g.dim[0], (long long)ct->g.dim[1],
                       (long long)ct->g.dim[2], mf->name);
    if (mf->n_parts && p.smooth)
        return sp_fail(SP_ERR_USAGE, "--smooth is not available for task packages ('%s' merges %d part models' "
                       "labels; their scores are not compared)", mf->name, mf->n_parts);
    sp_status st = check_channels(mf, ct, extra, n);
    if (!st)
        st = roi_parse(mf, p.roi_subset, &keep);
    if (!st && p.crop_from && (!mf->n_parts || !(keep || mf->crop_want)))
        st = sp_fail(SP_ERR_USAGE, "a prior result to crop from needs a task package that crops (a subtask such "
                     "as liver_vessels) or --roi-subset on a task package; '%s' is neither", mf->name);
    if (st) {
        free(keep);
        return st;
    }
    sp_pool *pool = sp_pool_get(p.threads);
    sp_ct_result *r = NULL;
    held_input h = {mut, 0, NULL, {-1, 0, NULL}};
    st = check_finite(ct, pool);
    for (int q = 1; q < n && !st; q++)
        st = check_finite(extra[q - 1], pool);
    if (!st && !(r = calloc(1, sizeof *r)))
        st = sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_ct_result *mask = NULL;
    int held = !st && pk->on_demand;   /* an on-demand crop or refine model: loaded for this run */
    double t0 = sp_now();
    if (held && (st = sp_package_acquire(pk)))
        held = 0;
    else if (held)
        sp_timings_add(&r->t, "load_model", sp_now() - t0);
    if (!st)
        st = refine_before(pk, ct, &p, &mask);
    if (!st)   /* brain MRI: a conformed grid instead of steps a, b and e */
        st = mf->conform_n                       ? conform_path(pk, ct, &p, keep, r, pool)
             : (pk->crop || p.crop_from) && (keep || mf->crop_want) ? roi_crop_path(pk, ct, &p, keep, r, pool, &h)
             : mf->crop_nonzero                    ? crop_path(pk, ct, extra, n, &p, keep, r, pool, &h)
                                                   : grid_path(pk, ct, extra, &p, keep, r, pool, &h);
    if (held)
        sp_package_unacquire(pk);
    if (!st)
        st = refine_after(pk, ct, mask, r);
    sp_ct_result_free(mask);
    for (int s = 0; !st && s < mf->pp_n; s++)   /* nnU-Net's postprocessing.pkl, on the final labels */
        st = sp_components_keep_largest_of(r->labels, r->dim, mf->pp_set[s], mf->pp_len[s]);
    if (!st && p.passport)
        st = measure(mf, ct, &h, &p, keep, r);
    restore_input(&h, p.release_input);
    sp_pool_put(pool);
    free(keep);
    if (st) {
        sp_ct_result_free(r);
        return st;
    }
    *out = r;
    return SP_OK;
}

/* The model grid a volume gets (steps a and b, or the conformed grid). */
static sp_status grid_of(const sp_manifest *mf, const sp_volume *ct, const sp_ct_params *p, int64_t mdim[3],
                         int *reoriented)
{
    *reoriented = 0;
    sp_status vt = volume_task(mf);   /* a photo model has no grid */
    if (vt)
        return vt;
    if (mf->conform_n) {
        mdim[0] = mdim[1] = mdim[2] = mf->conform_n;
        return SP_OK;
    }
    sp_ornt o;
    double target[3];
    sp_status st = canonical_grid(mf, &ct->g, p, &o, target, mdim);
    *reoriented = !st && !sp_ornt_is_identity(&o);
    return st;
}

sp_status sp_ct_memory_estimate(const sp_package *pk, const sp_volume *ct, const sp_ct_params *pp, size_t *bytes)
{
    sp_ct_params p = pp ? *pp : sp_ct_default_params();
    const sp_manifest *mf = &pk->mf;
    int64_t mdim[3];
    int reoriented;
    *bytes = 0;
    sp_status st = grid_of(mf, ct, &p, mdim, &reoriented);
    if (st)
        return st;
    double nv = (double)sp_geom_nvox(&ct->g), nm = (double)mdim[0] * (double)mdim[1] * (double)mdim[2];
    sp_window_params wp = window_params(pk, &p);
    int packs = ct->range_valid && ct->integer_valued && ct->vmin >= -32768 && ct->vmax <= 32767;
    double held = packs ? 2 * nv : 4 * nv;   /* parked in a file when it can be: counted anyway */
    double prep = 4 * nv + (reoriented ? 4 * nv : 0) + 4 * nm;
    int keep = p.smooth || p.keep_probabilities;
    double window = held + 6 * nm + (double)sp_window_memory(&wp, mdim, keep) +
                    (double)pk->run_bytes * (wp.tile_batch > 0 ? wp.tile_batch : 1) +
                    (keep ? 4.0 * wp.num_classes * nm : 0) +
                    (mf->n_parts > 1 ? 6 * nm : 0);   /* a task package: the volume's copy, a part's labels */
    /* labels, the model grid's, a canonical copy (--smooth), the components' runs (~4 bytes a voxel for a
     * fragmented map), then the input back for the passport */
    double end = 2 * nv + 2 * nm + (p.smooth && reoriented ? 2 * nv : 0) + fmax(4 * nv, held) +
                 (p.keep_probabilities ? 8.0 * wp.num_classes * nv : 0);   /* canonical and native copies */
    /* +25% for what the buffers above leave out (allocator and thread
     * overheads): the raw sums came to 0.87-1.12 of the measured peaks */
    double b = 1.25 * fmax(prep, fmax(window, end));
    *bytes = b < 1e18 ? (size_t)b : (size_t)1e18;
    return SP_OK;
}

sp_status sp_ct_header_check(const sp_volume *header, void *ct_check)
{
    const sp_ct_check *c = ct_check;
    sp_ct_params p = c->params ? *c->params : sp_ct_default_params();
    int64_t mdim[3];
    int reoriented;
    sp_status st = grid_of(&c->pk->mf, header, &p, mdim, &reoriented);
    if (st)
        return st;
    sp_window_params wp = window_params(c->pk, &p);
    double tiles = 1;   /* as sp_window_run counts them: each axis padded to the patch */
    for (int d = 0; d < 3; d++) {
        int64_t n = mdim[wp.axes[d]], t = wp.patch[d];
        tiles *= t == 1 ? (double)n : (double)sp_window_steps(n > t ? n : t, t, wp.step, NULL, 1 << 24);
    }
    if (tiles > (double)wp.max_tiles)
        return sp_fail(SP_ERR_INPUT, "the header's %lldx%lldx%lld voxels make %.0f sliding-window tiles, over the "
                       "limit of %lld: refused before reading the voxels", (long long)header->g.dim[0],
                       (long long)header->g.dim[1], (long long)header->g.dim[2], tiles, (long long)wp.max_tiles);
    return SP_OK;
}

sp_status sp_ct_run(sp_package *pk, const sp_volume *ct, const sp_ct_params *p, sp_ct_result **out)
{
    return ct_run(pk, ct, NULL, NULL, 1, p, out);
}

sp_status sp_ct_run_inplace(sp_package *pk, sp_volume *ct, const sp_ct_params *p, sp_ct_result **out)
{
    return ct_run(pk, ct, ct, NULL, 1, p, out);
}

sp_status sp_ct_run_channels(sp_package *pk, sp_volume *const *ch, int n, const sp_ct_params *p, sp_ct_result **out)
{
    *out = NULL;
    if (n < 1 || n > SP_MAX_CHANNELS || !ch || !ch[0])
        return sp_fail(SP_ERR_USAGE, "sp_ct_run_channels: 1 to %d channels, got %d", SP_MAX_CHANNELS, n);
    return ct_run(pk, ch[0], ch[0], ch + 1, n, p, out);
}

/* ------------------------------------------------------------ label I/O */

static sp_status labels_write(const char *path, const uint16_t *labels, const sp_volume *like, const char *xml);

/* TotalSegmentator's label table (a CaretExtension XML), each label in its
 * display colour (sp_label_rgb). Caller frees. */
static char *label_table_xml(const char *const *names, int n)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?> <CaretExtension>  <VolumeInformation Index=\"0\">"
                    "   <LabelTable>\n");
    for (int i = 1; i < n; i++) {
        if (!names[i])
            continue;
        uint8_t rgb[3];
        sp_label_rgb(i, rgb);
        sp_buf_printf(&b, "<Label Key=\"%d\" Red=\"%.4f\" Green=\"%.4f\" Blue=\"%.4f\" Alpha=\"1\"><![CDATA[%s]]>"
                          "</Label>\n", i, rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, names[i]);
    }
    sp_buf_puts(&b, "  </LabelTable>  <VolumeType><![CDATA[Label]]></VolumeType>   </VolumeInformation>"
                    "</CaretExtension>\n");
    return sp_buf_take(&b);
}

int sp_volume_label_names(const sp_volume *v, char ***names)
{
    *names = NULL;
    const char *x = v->label_xml;
    int n = 0;
    for (const char *p = x ? strstr(x, "<Label ") : NULL; p; p = strstr(p + 1, "<Label ")) {
        const char *k = strstr(p, "Key=\""), *end = strstr(p, "</Label>");
        if (!k || !end || k > end)
            continue;
        long key = strtol(k + 5, NULL, 10);
        if (key < 0 || key > 65535)
            continue;
        const char *c = strstr(p, "<![CDATA["), *s0, *s1;
        if (c && c < end)
            s0 = c + 9, s1 = strstr(s0, "]]>");
        else
            s0 = strchr(p, '>') + 1, s1 = end;
        if (!s1 || s1 > end || s0 > s1)
            continue;
        if (key >= n) {
            char **nn = realloc(*names, (size_t)(key + 1) * sizeof *nn);
            if (!nn)
                break;
            memset(nn + n, 0, (size_t)(key + 1 - n) * sizeof *nn);
            *names = nn;
            n = (int)key + 1;
        }
        free((*names)[key]);
        (*names)[key] = strndup(s0, (size_t)(s1 - s0));
    }
    return n;
}

sp_status sp_labels_write_named(const char *path, const uint16_t *labels, const sp_volume *like,
                                const char *const *names, int n)
{
    char *xml = names && n > 1 ? label_table_xml(names, n) : NULL;
    sp_status st = labels_write(path, labels, like, xml);
    free(xml);
    return st;
}

sp_status sp_labels_write(const char *path, const uint16_t *labels, const sp_volume *like)
{
    return labels_write(path, labels, like, NULL);
}

static sp_status labels_write(const char *path, const uint16_t *labels, const sp_volume *like, const char *xml)
{
    size_t nv = (size_t)sp_geom_nvox(&like->g);
    uint16_t mx = 0;
    for (size_t i = 0; i < nv; i++)
        if (labels[i] > mx)
            mx = labels[i];
    if (mx > 32767)
        return sp_fail(SP_ERR_USAGE, "%s: label %u does not fit int16", path, mx);
    if (mx <= 255) {
        uint8_t *b = malloc(nv ? nv : 1);
        if (!b)
            return sp_fail(SP_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < nv; i++)
            b[i] = (uint8_t)labels[i];
        sp_status st = sp_nifti_write_ext(path, &like->g, SP_DT_U8, b, 0, xml);
        free(b);
        return st;
    }
    return sp_nifti_write_ext(path, &like->g, SP_DT_I16, labels, 0, xml);
}

sp_status sp_labels_write_affine(const char *path, const uint16_t *labels, const int64_t dim[3],
                                 const double affine[4][4])
{
    sp_volume v;
    memset(&v, 0, sizeof v);
    for (int i = 0; i < 3; i++) {
        v.g.dim[i] = dim[i];
        v.g.spacing[i] = sqrt(affine[0][i] * affine[0][i] + affine[1][i] * affine[1][i] +
                              affine[2][i] * affine[2][i]);
        v.g.pixdim[i + 1] = v.g.spacing[i];
        for (int c = 0; c < 4; c++)
            v.g.srow[i][c] = affine[i][c];
    }
    memcpy(v.g.affine, affine, sizeof v.g.affine);
    v.g.sform_code = 1;
    v.g.qfac = 1;
    v.g.xyzt_units = 2;
    return sp_labels_write(path, labels, &v);
}

sp_status sp_labels_write_split(const char *dir, const uint16_t *labels, const sp_volume *like,
                                const sp_package *pk)
{
    size_t nv = (size_t)sp_geom_nvox(&like->g);
    int nc = pk->mf.num_classes;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return sp_fail(SP_ERR_IO, "%s: cannot create folder: %s", dir, strerror(errno));
    uint8_t *b = malloc(nv ? nv : 1);
    if (!b)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_status st = SP_OK;
    for (int c = 1; c < nc && !st; c++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.nii.gz", dir, pk->mf.labels[c]);
        for (size_t i = 0; i < nv; i++)
            b[i] = labels[i] == c;
        st = sp_nifti_write(path, &like->g, SP_DT_U8, b, 0);
    }
    free(b);
    return st;
}

sp_status sp_labels_write_derived(const char *dir, const uint16_t *labels, const sp_volume *ct,
                                  const sp_package *pk)
{
    if (!pk->mf.derived_body)
        return SP_OK;
    if (!ct->data)
        return sp_fail(SP_ERR_USAGE, "derived masks: the input's voxels were released (skin reads the CT)");
    size_t nv = (size_t)sp_geom_nvox(&ct->g);
    int nc = pk->mf.num_classes;
    uint8_t *body = malloc(nv ? nv : 1), *skin = malloc(nv ? nv : 1), *is_body = calloc((size_t)nc, 1);
    sp_status st = !body || !skin || !is_body ? sp_fail(SP_ERR_NOMEM, "derived masks: out of memory") : SP_OK;
    if (!st) {   /* libs.py's combine_masks(dir, "body") */
        is_body[sp_package_label_of(pk, "body_trunc")] = 1;
        is_body[sp_package_label_of(pk, "body_extremities")] = 1;
        st = sp_body_skin(labels, ct->data, ct->g.dim, is_body, nc, body, skin);
    }
    char path[4096];
    if (!st && (size_t)snprintf(path, sizeof path, "%s/body.nii.gz", dir) < sizeof path)
        st = sp_nifti_write(path, &ct->g, SP_DT_U8, body, 0);
    if (!st && (size_t)snprintf(path, sizeof path, "%s/skin.nii.gz", dir) < sizeof path)
        st = sp_nifti_write(path, &ct->g, SP_DT_U8, skin, 0);
    free(body);
    free(skin);
    free(is_body);
    return st;
}

sp_status sp_labels_read(const char *path, const sp_read_params *p, uint16_t **labels,
                         sp_volume **geometry)
{
    sp_volume *v;
    sp_status st = sp_volume_read(path, p, &v);
    *labels = NULL;
    *geometry = NULL;
    if (st)
        return st;
    size_t nv = (size_t)sp_geom_nvox(&v->g);
    uint16_t *l = sp_big_alloc((nv ? nv : 1) * sizeof *l);
    if (!l) {
        sp_volume_free(v);
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < nv; i++) {
        float x = v->data[i];
        if (!(x >= 0 && x <= 65535) || x != floorf(x)) {
            free(l);
            sp_volume_free(v);
            return sp_fail(SP_ERR_INPUT, "%s: not a label map: voxel %zu holds %g (labels must be "
                           "integers 0..65535)", path, i, (double)x);
        }
        l[i] = (uint16_t)x;
    }
    *labels = l;
    *geometry = v;
    return SP_OK;
}
