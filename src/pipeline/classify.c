/*
 * classify.c — photo classification (task "classify", docs/classify.md):
 * each decoded photo is cropped or fitted per the manifest, resized
 * bilinearly to the model's input and normalised (the photo-masks row
 * preparation, sp_prep_row), the batch runs in one inference (in chunks
 * when the model's batch size is fixed), and the scores become
 * probabilities (softmax of logits, sigmoid for multi-label models, or as
 * given) with the top K labels.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

sp_classify_params sp_classify_default_params(void)
{
    sp_classify_params p = {0};
    p.top_k = 5;
    return p;
}

void sp_classify_result_free(sp_classify_result *r)
{
    if (r) {
        free(r->probs);
        free(r->top);
        free(r);
    }
}

/* The source rectangle of photo im and the content size on the canvas. */
static void geometry(const sp_manifest *mf, const sp_image *im, int rect[4], int *rw, int *rh)
{
    int W = mf->in_w, H = mf->in_h, w = im->width, h = im->height;
    rect[0] = rect[1] = 0;
    rect[2] = w;
    rect[3] = h;
    *rw = W;
    *rh = H;
    if (mf->crop) {   /* torchvision Resize(shorter side) + CenterCrop, in one resampling */
        double r = mf->crop_fraction * fmin(w, h) / fmin(W, H);
        int cw = (int)fmax(1, fmin(w, round(W * r))), ch = (int)fmax(1, fmin(h, round(H * r)));
        rect[0] = (w - cw) / 2;
        rect[1] = (h - ch) / 2;
        rect[2] = cw;
        rect[3] = ch;
    } else if (mf->letterbox) {
        double s = fmin((double)W / w, (double)H / h);
        *rw = (int)fmax(1, fmin(W, round(w * s)));
        *rh = (int)fmax(1, fmin(H, round(h * s)));
    }
}

typedef struct cprep {
    sp_image *const *imgs;
    sp_manifest mf;           /* mean/std in RGB order */
    float *in;
    int swap;                 /* model takes B, G, R */
} cprep;

static void prep_rows(void *vc, int64_t b, int64_t e, int w)
{
    cprep *c = vc;
    int H = c->mf.in_h, W = c->mf.in_w;
    size_t plane = (size_t)H * (size_t)W;
    for (int64_t job = b; job < e; job++) {
        int i = (int)(job / H), y = (int)(job % H), rect[4], rw, rh;
        const sp_image *im = c->imgs[i];
        geometry(&c->mf, im, rect, &rw, &rh);
        float *dst = c->in + (size_t)i * 3 * plane + (size_t)y * (size_t)W;
        sp_prep_row(&c->mf, im->rgb, im->width, rect[0], rect[1], rect[2], rect[3], dst, plane, W, rw, rh, y);
        if (c->swap)
            for (int x = 0; x < W; x++) {
                float t = dst[x];
                dst[x] = dst[2 * plane + (size_t)x];
                dst[2 * plane + (size_t)x] = t;
            }
    }
}

/* scores (C) -> probabilities, per the output kind */
static void probabilities(int kind, const float *s, int C, double *p)
{
    if (kind == SP_OUT_PROB) {
        for (int c = 0; c < C; c++)
            p[c] = s[c];
        return;
    }
    if (kind == SP_OUT_SIGMOID) {
        for (int c = 0; c < C; c++)
            p[c] = 1.0 / (1.0 + exp(-(double)s[c]));
        return;
    }
    double mx = -INFINITY, sum = 0;
    for (int c = 0; c < C; c++)
        mx = fmax(mx, s[c]);
    for (int c = 0; c < C; c++)
        sum += (p[c] = exp((double)s[c] - mx));
    for (int c = 0; c < C; c++)
        p[c] /= sum;
}

static sp_classify_result *result_of(const sp_manifest *mf, const float *s, int C, int k)
{
    sp_classify_result *r = calloc(1, sizeof *r);
    if (!r || !(r->probs = malloc((size_t)C * sizeof *r->probs)) || !(r->top = calloc((size_t)k, sizeof *r->top))) {
        sp_classify_result_free(r);
        return NULL;
    }
    r->n_classes = C;
    probabilities(mf->out_kind, s, C, r->probs);
    size_t *idx = malloc((size_t)k * sizeof *idx);
    if (!idx) {
        sp_classify_result_free(r);
        return NULL;
    }
    /* the probabilities are monotonic in the scores: rank the scores */
    r->k = sp_top_k(s, (size_t)C, k, idx);
    for (int i = 0; i < r->k; i++)
        r->top[i] = (sp_class_score){(int)idx[i], mf->labels[idx[i]], r->probs[idx[i]]};
    free(idx);
    return r;
}

/* one inference for n photos (n within the model's batch size) */
static sp_status classify_batch(sp_package *pk, sp_image *const *imgs, int n, const sp_classify_params *p,
                                sp_classify_result **res, sp_timings *t)
{
    const sp_manifest *mf = &pk->mf;
    int H = mf->in_h, W = mf->in_w, C = mf->num_classes;
    int nin, fixed = (int)sp_model_inputs(pk->model, &nin)[0].meta.shape[0];
    int nb = fixed > 0 ? fixed : n;   /* a fixed batch is filled with blank canvases */
    cprep c = {imgs, *mf, sp_big_calloc((size_t)nb * 3 * (size_t)H * (size_t)W, sizeof(float)), mf->bgr};
    if (!c.in)
        return sp_fail(SP_ERR_NOMEM, "classify: out of memory for a batch of %d", n);
    if (mf->bgr)
        for (int ch = 0; ch < 3; ch++) {   /* mean/std are in the model's (B, G, R) order */
            c.mf.mean[ch] = mf->mean[2 - ch];
            c.mf.std[ch] = mf->std[2 - ch];
        }
    double t0 = sp_now();
    sp_pool *pool = sp_pool_get(p->threads);
    sp_pool_for(pool, (int64_t)n * H, 16, prep_rows, &c);
    sp_pool_put(pool);
    double t1 = sp_now();
    sp_tensor ti = {SP_DT_F32, 4, {nb, 3, H, W}, c.in}, all[SP_MAX_RANK];
    memset(all, 0, sizeof all);
    int no, oi = 0;
    const sp_io_info *outs = sp_model_outputs(pk->model, &no);
    while (mf->output_name[0] && oi < no && strcmp(outs[oi].name, mf->output_name))
        oi++;
    sp_status st = sp_model_run(pk->model, &ti, 1, all, oi + 1);
    double t2 = sp_now();
    if (!st && (all[oi].rank != 2 || all[oi].shape[0] != nb || all[oi].shape[1] != C))
        st = sp_fail(SP_ERR_MODEL, "classify: the model answered a tensor of rank %d, not [%d, %d]", all[oi].rank,
                     nb, C);
    int k = p->top_k > 0 && p->top_k < C ? p->top_k : C;
    for (int i = 0; i < n && !st; i++)
        if (!(res[i] = result_of(mf, (const float *)all[oi].data + (size_t)i * (size_t)C, C, k)))
            st = sp_fail(SP_ERR_NOMEM, "classify: out of memory");
    for (int q = 0; q <= oi; q++)
        sp_tensor_free_data(&all[q]);
    free(c.in);
    sp_timings_add(t, "preprocess", t1 - t0);
    sp_timings_add(t, "inference", t2 - t1);
    sp_timings_add(t, "postprocess", sp_now() - t2);
    return st;
}

sp_status sp_classify_run(sp_package *pk, sp_image *const *imgs, int n, const sp_classify_params *pp,
                          sp_classify_result ***results, sp_timings *t)
{
    sp_classify_params p = pp ? *pp : sp_classify_default_params();
    sp_timings scratch = {0};
    *results = NULL;
    if (strcmp(pk->mf.task, "classify"))
        return sp_fail(SP_ERR_MODEL, "model '%s' is a '%s' model, not a classify model", pk->mf.name, pk->mf.task);
    if (n < 1)
        return sp_fail(SP_ERR_USAGE, "no images");
    int nin, fixed = (int)sp_model_inputs(pk->model, &nin)[0].meta.shape[0];
    int chunk = fixed > 0 ? fixed : n;
    sp_classify_result **res = calloc((size_t)n, sizeof *res);
    if (!res)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_status st = SP_OK;
    for (int i = 0; i < n && !st; i += chunk)
        st = classify_batch(pk, imgs + i, n - i < chunk ? n - i : chunk, &p, res + i, t ? t : &scratch);
    if (st) {
        for (int i = 0; i < n; i++)
            sp_classify_result_free(res[i]);
        free(res);
        return st;
    }
    *results = res;
    return SP_OK;
}

char *sp_classify_json(const sp_classify_result *r)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"top\": [");
    for (int i = 0; i < r->k; i++) {
        sp_buf_puts(&b, i ? ", {\"label\": " : "{\"label\": ");
        sp_buf_json_str(&b, r->top[i].label);
        sp_buf_printf(&b, ", \"index\": %d, \"probability\": ", r->top[i].index);
        sp_buf_json_num(&b, r->top[i].prob);
        sp_buf_puts(&b, "}");
    }
    sp_buf_puts(&b, "]}");
    return sp_buf_take(&b);
}
