/*
 * masks.c — photo masks: one inference per batch returns every mask.
 *
 * Preprocess: each photo (already upright) is resized bilinearly (half-pixel
 * centres) into the model's canvas — fixed input size, or long_side x
 * long_side for dynamic models — stretched or letterboxed at the top-left,
 * normalised ((x * scale - mean) / std) into NCHW float; rows in parallel.
 * Inference: one ORT call for the whole batch.
 * Postprocess, per photo pixel: the model grid coordinate of its centre,
 * bilinear class scores, one argmax, then each mask is the set of pixels
 * whose class is in the mask's class set. To avoid holding photo-sized
 * per-class scores, only the best and second-best classes of the 4
 * surrounding grid points are interpolated (a class that is third or worse
 * at all four corners can still win between them, rarely: the tests bound
 * the disagreement with full interpolation). Mask2Former's query outputs are first combined into class
 * scores as its semantic inference does: sum over queries of
 * softmax(class logits without the null class) x sigmoid(mask logits).
 */
#include "pipeline.h"
#include "../io/encode.h"
#include "../io/image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

sp_masks_params sp_masks_default_params(void)
{
    sp_masks_params p;
    memset(&p, 0, sizeof p);
    return p;
}

void sp_masks_result_free(sp_masks_result *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_masks; i++)
        free(r->masks[i].pixels);
    free(r->masks);
    free(r);
}

typedef struct prep_ctx {
    sp_image *const *imgs;
    const sp_manifest *mf;
    float *in;
    int Hc, Wc;
    int *rw, *rh;
} prep_ctx;

/* Row y of the model canvas (NCHW planes `plane` floats apart) from the
 * rectangle (x0, y0, w, h) of a packed RGB image `stride` pixels wide:
 * bilinear with half-pixel centres into a rw x rh content rectangle at the
 * top-left of a Wc-wide canvas, normalised per the manifest; zeros outside
 * the content. Shared by photo masks and video. */
/* Corner-aligned bilinear (sample at x * src/dst, neighbours floor and
 * ceil clamped), each pixel's channels rounded to uint8 when asked: the
 * resize of @imgly/background-removal's tensorResizeBilinear, term by term
 * in double so that halves round the same way (Math.round: floor(v + 0.5)). */
static void prep_row_corner(const sp_manifest *mf, const uint8_t *rgb, int stride, int x0r, int y0r, int w, int h,
                            float *dst, size_t plane, int Wc, int rw, int rh, int y)
{
    double sy = (double)y * ((double)h / rh);
    int y1 = (int)floor(sy), y2 = (int)ceil(sy) < h - 1 ? (int)ceil(sy) : h - 1;
    double dy = sy - y1, kx = (double)w / rw;
    const uint8_t *r1 = rgb + ((size_t)(y0r + y1) * stride + x0r) * 3, *r2 = rgb + ((size_t)(y0r + y2) * stride + x0r) * 3;
    for (int x = 0; x < Wc; x++) {
        if (x >= rw) {
            for (int ch = 0; ch < 3; ch++)
                dst[ch * plane + (size_t)x] = 0;
            continue;
        }
        double sx = (double)x * kx;
        int x1 = (int)floor(sx), x2 = (int)ceil(sx) < w - 1 ? (int)ceil(sx) : w - 1;
        double dx = sx - x1;
        for (int ch = 0; ch < 3; ch++) {
            double v = (1 - dx) * (1 - dy) * r1[x1 * 3 + ch] + dx * (1 - dy) * r1[x2 * 3 + ch] +
                       (1 - dx) * dy * r2[x1 * 3 + ch] + dx * dy * r2[x2 * 3 + ch];
            if (mf->round_input)
                v = floor(v + 0.5);
            dst[ch * plane + (size_t)x] = (float)((v * mf->pix_scale - mf->mean[ch]) / mf->std[ch]);
        }
    }
}

void sp_prep_row(const sp_manifest *mf, const uint8_t *rgb, int stride, int x0r, int y0r, int w, int h,
                 float *dst, size_t plane, int Wc, int rw, int rh, int y)
{
    if (mf->sample_corner && y < rh) {
        prep_row_corner(mf, rgb, stride, x0r, y0r, w, h, dst, plane, Wc, rw, rh, y);
        return;
    }
    if (y >= rh) {
        for (int ch = 0; ch < 3; ch++)
            memset(dst + ch * plane, 0, (size_t)Wc * sizeof(float));
        return;
    }
    float k[3], o[3];
    for (int ch = 0; ch < 3; ch++) {
        k[ch] = (float)(mf->pix_scale / mf->std[ch]);
        o[ch] = (float)(mf->mean[ch] / mf->std[ch]);
    }
    double sy = ((double)y + 0.5) * h / rh - 0.5;
    if (sy < 0) sy = 0;
    int y0 = (int)sy, y1 = y0 + 1 < h ? y0 + 1 : h - 1;
    float fy = (float)(sy - y0);
    const uint8_t *r0 = rgb + ((size_t)(y0r + y0) * stride + x0r) * 3, *r1 = rgb + ((size_t)(y0r + y1) * stride + x0r) * 3;
    double kx = (double)w / rw;
    for (int x = 0; x < Wc; x++) {
        if (x >= rw) {
            for (int ch = 0; ch < 3; ch++)
                dst[ch * plane + (size_t)x] = 0;
            continue;
        }
        double sx = ((double)x + 0.5) * kx - 0.5;
        if (sx < 0) sx = 0;
        int x0 = (int)sx, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
        float fx = (float)(sx - x0);
        const uint8_t *p00 = r0 + x0 * 3, *p01 = r0 + x1 * 3, *p10 = r1 + x0 * 3, *p11 = r1 + x1 * 3;
        for (int ch = 0; ch < 3; ch++) {
            float top = p00[ch] + fx * (p01[ch] - p00[ch]);
            float bot = p10[ch] + fx * (p11[ch] - p10[ch]);
            float v = top + fy * (bot - top);
            if (mf->round_input)
                v = floorf(v + 0.5f);
            dst[ch * plane + (size_t)x] = v * k[ch] - o[ch];
        }
    }
}

static void prep_rows(void *vc, int64_t b, int64_t e, int w)
{
    prep_ctx *c = vc;
    size_t plane = (size_t)c->Hc * (size_t)c->Wc;
    for (int64_t job = b; job < e; job++) {
        int i = (int)(job / c->Hc), y = (int)(job % c->Hc);
        const sp_image *im = c->imgs[i];
        float *dst = c->in + (size_t)i * 3 * plane + (size_t)y * (size_t)c->Wc;
        sp_prep_row(c->mf, im->rgb, im->width, 0, 0, im->width, im->height, dst, plane, c->Wc, c->rw[i], c->rh[i], y);
    }
}

typedef struct post_ctx {
    const sp_manifest *mf;
    const float *score;      /* C x h x w (one image) */
    const uint16_t *amax;    /* 2 x h x w: best and second-best class per grid point */
    int C, h, w;
    int W, H;                /* photo */
    double kx, ky;           /* photo pixel -> grid scale */
    const int *gx0;          /* per photo column: left and right grid columns */
    const float *gfx;        /* per photo column: weight of the right one */
    const int *xend;         /* per photo column: first column of the next grid span */
    /* the masks are cut from each label row as it is made (no photo-sized label map) */
    int nw;
    const uint8_t *const *lut;   /* per mask: class -> 0 or 255 */
    sp_mask *masks;
    uint32_t *rcnt;          /* nw x H: pixels on per row */
    int *rfirst, *rlast;     /* nw x H: first and last x on per row */
    int oom;
    const uint8_t *q;        /* probability x 255 truncated to uint8 (output.quantize "truncate"), or NULL */
} post_ctx;

/*
 * Exact shortcut: the interpolated scores are a convex combination of the
 * four corners' score vectors, so when class c is the best at all four
 * corners it is the best in between (and a probability above / below the
 * threshold at all four corners stays so). Only pixels whose corners
 * disagree — the class boundaries — need scores interpolated.
 */
static void cut_masks(post_ctx *c, const uint16_t *row, int64_t y)
{
    for (int k = 0; k < c->nw; k++) {
        const uint8_t *lut = c->lut[k];
        uint8_t *out = c->masks[k].pixels + (size_t)y * c->W;
        uint32_t rc = 0;
        for (int x = 0; x < c->W; x++) {
            out[x] = lut[row[x]];
            rc += out[x] & 1;
        }
        size_t r = (size_t)k * c->H + (size_t)y;
        c->rcnt[r] = rc;
        if (rc) {
            int f = 0, l = c->W - 1;
            while (!out[f])
                f++;
            while (!out[l])
                l--;
            c->rfirst[r] = f;
            c->rlast[r] = l;
        }
    }
}

/* the value at grid point g on the 0..255 scale the alpha is made on */
static inline double alpha_at(const post_ctx *c, size_t g)
{
    return c->q ? (double)c->q[g] : (double)c->score[g] * 255.0;
}

/* Probability models with upstream conventions: per photo pixel the 8-bit
 * alpha (bilinear, centre- or corner-sampled per output.resize, rounded as
 * Math.round), then per mask that alpha (output.alpha) or 0/255 by the
 * threshold; a mask of the background class takes 255 - alpha. A pixel
 * counts as "on" (area, bbox) from alpha >= 128, i.e. alpha / 255 > 0.5. */
static void alpha_rows(void *vc, int64_t b, int64_t e, int wk)
{
    post_ctx *c = vc;
    double thr = c->mf->threshold * 255.0;
    uint8_t *a = malloc((size_t)c->W);
    if (!a) {
        c->oom = 1;
        return;
    }
    for (int64_t y = b; y < e; y++) {
        double sy = c->mf->out_corner ? (double)y * c->ky : ((double)y + 0.5) * c->ky - 0.5;
        sy = sy < 0 ? 0 : sy;
        int y1 = (int)floor(sy), y2 = (int)ceil(sy) < c->h - 1 ? (int)ceil(sy) : c->h - 1;
        y1 = y1 < c->h - 1 ? y1 : c->h - 1;
        double dy = sy - y1 > 1 ? 1 : sy - y1;
        for (int x = 0; x < c->W; x++) {
            double sx = c->mf->out_corner ? (double)x * c->kx : ((double)x + 0.5) * c->kx - 0.5;
            sx = sx < 0 ? 0 : sx;
            int x1 = (int)floor(sx), x2 = (int)ceil(sx) < c->w - 1 ? (int)ceil(sx) : c->w - 1;
            x1 = x1 < c->w - 1 ? x1 : c->w - 1;
            double dx = sx - x1 > 1 ? 1 : sx - x1;
            size_t r1 = (size_t)y1 * c->w, r2 = (size_t)y2 * c->w;
            double v = (1 - dx) * (1 - dy) * alpha_at(c, r1 + x1) + dx * (1 - dy) * alpha_at(c, r1 + x2) +
                       (1 - dx) * dy * alpha_at(c, r2 + x1) + dx * dy * alpha_at(c, r2 + x2);
            v = floor(v + 0.5);
            a[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        for (int k = 0; k < c->nw; k++) {
            const uint8_t *lut = c->lut[k];
            uint8_t *out = c->masks[k].pixels + (size_t)y * c->W;
            uint32_t rc = 0;
            int f = -1, l = -1;
            for (int x = 0; x < c->W; x++) {
                int al = lut[1] && lut[0] ? 255 : lut[1] ? a[x] : lut[0] ? 255 - a[x] : 0;
                out[x] = c->mf->out_alpha ? (uint8_t)al : (al > thr ? 255 : 0);
                if (out[x] >= 128) {
                    rc++;
                    f = f < 0 ? x : f;
                    l = x;
                }
            }
            size_t r = (size_t)k * c->H + (size_t)y;
            c->rcnt[r] = rc;
            c->rfirst[r] = f;
            c->rlast[r] = l;
        }
    }
    free(a);
}

static void post_rows(void *vc, int64_t b, int64_t e, int wk)
{
    post_ctx *c = vc;
    size_t plane = (size_t)c->h * (size_t)c->w;
    int prob = c->mf->out_kind == SP_OUT_PROB;
    float thr = (float)c->mf->threshold;
    uint16_t *out = malloc((size_t)c->W * sizeof *out);
    if (!out) {
        c->oom = 1;
        return;
    }
    for (int64_t y = b; y < e; y++) {
        double gy = ((double)y + 0.5) * c->ky - 0.5;
        gy = gy < 0 ? 0 : gy > c->h - 1 ? c->h - 1 : gy;
        int y0 = (int)gy, y1 = y0 + 1 < c->h ? y0 + 1 : c->h - 1;
        float fy = (float)(gy - y0);
        const uint16_t *a0 = c->amax + (size_t)y0 * c->w, *a1 = c->amax + (size_t)y1 * c->w;
        const float *s0 = c->score + (size_t)y0 * c->w, *s1 = c->score + (size_t)y1 * c->w;
        for (int x = 0; x < c->W; x++) {
            int x0 = c->gx0[2 * x], x1 = c->gx0[2 * x + 1];
            /* a whole span of columns between the same grid points at once
             * when its four corners agree (most of a photo) */
            if (x == 0 || x0 != c->gx0[2 * x - 2]) {
                int xe = c->xend[x], fill = -1;
                if (prob) {
                    int hi = (s0[x0] > thr) + (s0[x1] > thr) + (s1[x0] > thr) + (s1[x1] > thr);
                    fill = hi == 0 ? 0 : hi == 4 ? 1 : -1;
                } else if (a0[x0] == a0[x1] && a0[x0] == a1[x0] && a0[x0] == a1[x1]) {
                    fill = a0[x0];
                }
                if (fill >= 0) {
                    for (int k = x; k < xe; k++)
                        out[k] = (uint16_t)fill;
                    x = xe - 1;
                    continue;
                }
            }
            float fx = c->gfx[x];
            if (prob) {
                float v00 = s0[x0], v01 = s0[x1], v10 = s1[x0], v11 = s1[x1];
                int hi = (v00 > thr) + (v01 > thr) + (v10 > thr) + (v11 > thr);
                if (hi == 0 || hi == 4) {
                    out[x] = hi == 4;
                    continue;
                }
                float top = v00 + fx * (v01 - v00), bot = v10 + fx * (v11 - v10);
                out[x] = top + fy * (bot - top) > thr;
                continue;
            }
            uint16_t l00 = a0[x0];
            if (l00 == a0[x1] && l00 == a1[x0] && l00 == a1[x1]) {
                out[x] = l00;
                continue;
            }
            size_t idx[4] = {(size_t)y0 * c->w + x0, (size_t)y0 * c->w + x1, (size_t)y1 * c->w + x0,
                             (size_t)y1 * c->w + x1};
            float wt[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
            uint16_t cand[8];
            int nc = 0;
            for (int k = 0; k < 8; k++) {
                uint16_t l = c->amax[(k & 1) * plane + idx[k >> 1]];
                int seen = 0;
                for (int q = 0; q < nc; q++)
                    seen |= cand[q] == l;
                if (!seen)
                    cand[nc++] = l;
            }
            uint16_t lab = cand[0];
            float best = -INFINITY;
            for (int q = 0; q < nc; q++) {
                const float *sc = c->score + (size_t)cand[q] * plane;
                float v = wt[0] * sc[idx[0]] + wt[1] * sc[idx[1]] + wt[2] * sc[idx[2]] + wt[3] * sc[idx[3]];
                if (v > best || (v == best && cand[q] < lab))
                    best = v, lab = cand[q];
            }
            out[x] = lab;
        }
        cut_masks(c, out, y);
    }
    free(out);
}

static sp_status find_out(sp_model *m, const char *name, int *idx)
{
    int no;
    const sp_io_info *out = sp_model_outputs(m, &no);
    for (int i = 0; i < no; i++)
        if (!strcmp(out[i].name, name)) {
            *idx = i;
            return SP_OK;
        }
    return sp_fail(SP_ERR_MODEL, "the model has no output '%s'", name);
}

static sp_status masks_batch(sp_package *pk, sp_image *const *imgs, int n, const sp_masks_params *pp,
                             sp_masks_result ***results, sp_timings *t);

/* Models with a fixed batch size (ISNet: 1) get the photos in chunks of
 * that size; every other model gets them in one call. */
sp_status sp_masks_run(sp_package *pk, sp_image *const *imgs, int n, const sp_masks_params *pp,
                       sp_masks_result ***results, sp_timings *t)
{
    int nin;
    int64_t fixed = sp_model_inputs(pk->model, &nin)[0].meta.shape[0];
    if (fixed <= 0 || n <= fixed)
        return masks_batch(pk, imgs, n, pp, results, t);
    *results = NULL;
    sp_masks_result **all = calloc((size_t)n, sizeof *all);
    if (!all)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i += (int)fixed) {
        sp_masks_result **part;
        int k = n - i < fixed ? n - i : (int)fixed;
        sp_status st = masks_batch(pk, imgs + i, k, pp, &part, t);
        if (st) {
            for (int j = 0; j < i; j++)
                sp_masks_result_free(all[j]);
            free(all);
            return st;
        }
        memcpy(all + i, part, (size_t)k * sizeof *part);
        free(part);
    }
    *results = all;
    return SP_OK;
}

/* The state of one batch, shared by its steps. */
typedef struct batch {
    const sp_manifest *mf;
    sp_image *const *imgs;
    int n;
    int want[SP_MAX_MASKS], nw;   /* the requested masks (manifest indices) */
    uint8_t *luts;                /* nw x 65536: class -> 0 or 255 */
    int Hc, Wc;                   /* model canvas */
    int *rw, *rh;                 /* per photo: its content rectangle on the canvas */
    sp_tensor outs[2];            /* scores (Mask2Former: class logits, mask logits) */
    int C, h, w;                  /* classes and output grid */
    float *sem;                   /* Mask2Former: one photo's semantic scores */
    uint16_t *amax;               /* 2 x h x w: best and second-best class */
    sp_pool *pool;
} batch;

/* Step 1: which masks (all, or those named in p) and their class tables. */
static sp_status batch_masks(batch *b, const sp_masks_params *p)
{
    const sp_manifest *mf = b->mf;
    b->nw = 0;
    if (p->masks) {
        for (int i = 0; i < p->n_masks; i++) {
            int k = 0;
            while (k < mf->n_masks && strcmp(mf->mask_name[k], p->masks[i]))
                k++;
            if (k == mf->n_masks) {
                char have[512] = "";
                for (int j = 0; j < mf->n_masks; j++)   /* its masks, as many as fit */
                    snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", j ? ", " : "",
                             mf->mask_name[j]);
                return sp_fail(SP_ERR_USAGE, "model '%s' has no mask '%s' (it has: %s)", mf->name, p->masks[i], have);
            }
            if (b->nw < SP_MAX_MASKS)
                b->want[b->nw++] = k;
        }
    } else {
        for (int k = 0; k < mf->n_masks; k++)
            b->want[b->nw++] = k;
    }
    if (!(b->luts = calloc((size_t)b->nw * 65536, 1)))
        return sp_fail(SP_ERR_NOMEM, "masks: out of memory");
    for (int k = 0; k < b->nw; k++)
        for (int q = 0; q < mf->mask_ncls[b->want[k]]; q++)
            b->luts[(size_t)k * 65536 + mf->mask_cls[b->want[k]][q]] = 255;
    return SP_OK;
}

/* Step 2: every photo resized onto the model canvas (letterboxed or
 * stretched), normalised, in one NCHW tensor. */
static sp_status batch_prepare(batch *b, const sp_masks_params *p, float **in)
{
    const sp_manifest *mf = b->mf;
    b->Hc = mf->in_h, b->Wc = mf->in_w;
    if (!b->Hc) {
        int ls = p->long_side > 0 ? p->long_side : mf->long_side;
        b->Hc = b->Wc = (ls + 31) / 32 * 32;
    }
    size_t plane = (size_t)b->Hc * (size_t)b->Wc;
    *in = sp_big_alloc((size_t)b->n * 3 * plane * sizeof(float));
    b->rw = calloc((size_t)b->n, sizeof *b->rw);
    b->rh = calloc((size_t)b->n, sizeof *b->rh);
    if (!*in || !b->rw || !b->rh)
        return sp_fail(SP_ERR_NOMEM, "masks: out of memory for a batch of %d", b->n);
    for (int i = 0; i < b->n; i++) {
        if (!mf->letterbox) {
            b->rw[i] = b->Wc;
            b->rh[i] = b->Hc;
        } else {
            double s = fmin((double)b->Wc / b->imgs[i]->width, (double)b->Hc / b->imgs[i]->height);
            b->rw[i] = (int)fmax(1, fmin(b->Wc, round(b->imgs[i]->width * s)));
            b->rh[i] = (int)fmax(1, fmin(b->Hc, round(b->imgs[i]->height * s)));
        }
    }
    prep_ctx pc = {b->imgs, mf, *in, b->Hc, b->Wc, b->rw, b->rh};
    sp_pool_for(b->pool, (int64_t)b->n * b->Hc, 16, prep_rows, &pc);
    return SP_OK;
}

/* Step 3: one inference; keeps the score outputs (Mask2Former: the class
 * and mask logits), checks their shapes, sets C, h, w. */
static sp_status batch_infer(batch *b, sp_model *m, float *in)
{
    const sp_manifest *mf = b->mf;
    sp_tensor ti = {SP_DT_F32, 4, {b->n, 3, b->Hc, b->Wc}, in};
    int oi[2] = {0, 0}, nout = 1, m2f = mf->out_kind == SP_OUT_M2F;
    sp_status st;
    if (m2f) {
        if ((st = find_out(m, mf->class_output, &oi[0])) || (st = find_out(m, mf->mask_output, &oi[1])))
            return st;
        nout = (oi[0] > oi[1] ? oi[0] : oi[1]) + 1;
    }
    sp_tensor all[SP_MAX_RANK];
    memset(all, 0, sizeof all);
    if ((st = sp_model_run(m, &ti, 1, all, nout)))
        return st;
    b->outs[0] = all[oi[0]];
    if (m2f)
        b->outs[1] = all[oi[1]];
    for (int k = 0; k < nout; k++)
        if (k != oi[0] && (!m2f || k != oi[1]))
            sp_tensor_free_data(&all[k]);
    const sp_tensor *o = b->outs;
    if (m2f) {
        if (o[0].rank != 3 || o[1].rank != 4 || o[0].shape[1] != o[1].shape[1] ||
            o[0].shape[2] != mf->num_classes + 1)
            return sp_fail(SP_ERR_MODEL, "Mask2Former outputs have unexpected shapes");
        b->C = mf->num_classes;
        if (b->C > SP_MAX_MASK_CLASSES * 8)
            return sp_fail(SP_ERR_MODEL, "Mask2Former models with more than %d classes are not supported",
                           SP_MAX_MASK_CLASSES * 8);
        b->h = (int)o[1].shape[2], b->w = (int)o[1].shape[3];
    } else {
        if (o[0].rank != 4 || o[0].shape[0] != b->n)
            return sp_fail(SP_ERR_MODEL, "the model output is not [N, C, h, w]");
        b->C = (int)o[0].shape[1], b->h = (int)o[0].shape[2], b->w = (int)o[0].shape[3];
    }
    size_t gp = (size_t)b->h * (size_t)b->w;
    if (m2f && !(b->sem = malloc((size_t)b->C * gp * sizeof *b->sem)))
        return sp_fail(SP_ERR_NOMEM, "masks: out of memory");
    if (!(b->amax = malloc(2 * gp * sizeof *b->amax)))
        return sp_fail(SP_ERR_NOMEM, "masks: out of memory");
    return SP_OK;
}

/* Mask2Former's semantic inference for photo i (the image processor's
 * post_process_semantic_segmentation): sum over queries of the class
 * softmax (without the "no object" class) x the sigmoid of the query's mask. */
static void m2f_semantic(batch *b, int i)
{
    int C = b->C, Q = (int)b->outs[0].shape[1];
    size_t gp = (size_t)b->h * (size_t)b->w;
    const float *cl = (const float *)b->outs[0].data + (size_t)i * Q * (C + 1);
    const float *mk = (const float *)b->outs[1].data + (size_t)i * Q * gp;
    float *sem = b->sem;
    memset(sem, 0, (size_t)C * gp * sizeof *sem);
    for (int q = 0; q < Q; q++) {
        const float *r = cl + (size_t)q * (C + 1);
        float mx = r[0], sum = 0, prob[SP_MAX_MASK_CLASSES * 8];
        for (int c = 1; c <= C; c++)
            mx = r[c] > mx ? r[c] : mx;
        for (int c = 0; c <= C; c++)
            sum += expf(r[c] - mx);
        for (int c = 0; c < C && c < (int)(sizeof prob / sizeof *prob); c++)
            prob[c] = expf(r[c] - mx) / sum;
        for (size_t g = 0; g < gp; g++) {
            float sg = 1.0f / (1.0f + expf(-mk[(size_t)q * gp + g]));
            for (int c = 0; c < C; c++)
                sem[(size_t)c * gp + g] += prob[c] * sg;
        }
    }
}

/* The best and second-best class of every grid point (the upsampling only
 * interpolates scores where these disagree between corners). */
static void top2(const float *score, int C, size_t gp, uint16_t *amax)
{
    for (size_t g = 0; g < gp; g++) {
        int b1 = 0, b2 = C > 1 ? 1 : 0;
        if (C > 1 && score[gp + g] > score[g])
            b1 = 1, b2 = 0;
        for (int c = 2; c < C; c++) {
            float v = score[(size_t)c * gp + g];
            if (v > score[(size_t)b1 * gp + g])
                b2 = b1, b1 = c;
            else if (v > score[(size_t)b2 * gp + g])
                b2 = c;
        }
        amax[g] = (uint16_t)b1;
        amax[gp + g] = (uint16_t)b2;
    }
}

/* A result of nw masks of OW x OH pixels (NULL when out of memory). */
static sp_masks_result *result_new(const batch *b, int OW, int OH)
{
    sp_masks_result *r = calloc(1, sizeof *r);
    if (!r || !(r->masks = calloc((size_t)b->nw, sizeof *r->masks))) {
        free(r);
        return NULL;
    }
    r->width = OW;
    r->height = OH;
    r->n_masks = b->nw;
    size_t np = (size_t)OW * (size_t)OH;
    for (int k = 0; k < b->nw; k++) {
        r->masks[k].name = b->mf->mask_name[b->want[k]];
        if (!(r->masks[k].pixels = malloc(np ? np : 1))) {
            sp_masks_result_free(r);
            return NULL;
        }
    }
    return r;
}

/* Per photo column: the two grid columns it falls between, the weight of
 * the right one, and where the next grid span starts. 0, or -1 when out of memory. */
static int column_map(post_ctx *c, int OW, int w)
{
    int *gx0 = malloc((size_t)OW * 2 * sizeof *gx0), *xend = malloc((size_t)OW * sizeof *xend);
    float *gfx = malloc((size_t)OW * sizeof *gfx);
    c->gx0 = gx0, c->gfx = gfx, c->xend = xend;
    if (!gx0 || !gfx || !xend)
        return -1;
    for (int x = 0; x < OW; x++) {
        double gx = ((double)x + 0.5) * c->kx - 0.5;
        gx = gx < 0 ? 0 : gx > w - 1 ? w - 1 : gx;
        gx0[2 * x] = (int)gx;
        gx0[2 * x + 1] = (int)gx + 1 < w ? (int)gx + 1 : w - 1;
        gfx[x] = (float)(gx - (int)gx);
    }
    for (int x = OW - 1; x >= 0; x--)
        xend[x] = x + 1 < OW && gx0[2 * x + 2] == gx0[2 * x] ? xend[x + 1] : x + 1;
    return 0;
}

/* Area fraction and bounding box of each mask, from its per-row counts. */
static void mask_stats(sp_masks_result *r, const uint32_t *rcnt, const int *rfirst, const int *rlast)
{
    int OW = r->width, OH = r->height;
    for (int k = 0; k < r->n_masks; k++) {
        sp_mask *mk = &r->masks[k];
        size_t cnt = 0;
        int x0 = OW, y0 = OH, x1 = -1, y1 = -1;
        for (int y = 0; y < OH; y++) {
            size_t i = (size_t)k * OH + (size_t)y;
            if (!rcnt[i])
                continue;
            cnt += rcnt[i];
            x0 = rfirst[i] < x0 ? rfirst[i] : x0;
            x1 = rlast[i] > x1 ? rlast[i] : x1;
            y0 = y < y0 ? y : y0;
            y1 = y;
        }
        size_t np = (size_t)OW * OH;
        mk->area_fraction = np ? (double)cnt / (double)np : 0;
        if (!cnt)
            x0 = y0 = x1 = y1 = -1;
        mk->bbox[0] = x0, mk->bbox[1] = y0, mk->bbox[2] = x1, mk->bbox[3] = y1;
    }
}

/* Step 4, per photo: its scores upsampled onto the photo (or its requested
 * output size), the masks cut row by row, then their areas and boxes. */
static sp_status photo_masks(batch *b, int i, sp_masks_result **out)
{
    const sp_manifest *mf = b->mf;
    const sp_image *im = b->imgs[i];
    size_t gp = (size_t)b->h * (size_t)b->w;
    const float *score = mf->out_kind == SP_OUT_M2F ? b->sem
                         : (const float *)b->outs[0].data + (size_t)i * (size_t)b->C * gp;
    if (mf->out_kind == SP_OUT_M2F)
        m2f_semantic(b, i);
    if (mf->out_kind != SP_OUT_PROB)
        top2(score, b->C, gp, b->amax);
    int OW = im->out_width > 0 ? im->out_width : im->width, OH = im->out_height > 0 ? im->out_height : im->height;
    sp_masks_result *r = result_new(b, OW, OH);
    uint32_t *rcnt = malloc((size_t)b->nw * OH * sizeof *rcnt);
    int *rfl = malloc((size_t)b->nw * OH * 2 * sizeof *rfl);
    const uint8_t *lutp[SP_MAX_MASKS];
    for (int k = 0; k < b->nw; k++)
        lutp[k] = b->luts + (size_t)k * 65536;
    /* photo pixel -> model grid: photo -> content rect (rw/W) -> grid (w/Wc) */
    post_ctx c = {mf, score, b->amax, b->C, b->h, b->w, OW, OH,
                  (double)b->rw[i] / OW * b->w / b->Wc, (double)b->rh[i] / OH * b->h / b->Hc, NULL, NULL, NULL,
                  b->nw, lutp, r ? r->masks : NULL, rcnt, rfl, rfl ? rfl + (size_t)b->nw * OH : NULL, 0, NULL};
    uint8_t *q8 = NULL;
    int oom = !r || !rcnt || !rfl || column_map(&c, OW, b->w) != 0;
    if (!oom && mf->out_trunc8 && !(q8 = malloc(gp ? gp : 1)))
        oom = 1;
    if (!oom && q8)   /* JavaScript's Uint8Array store of probability x 255 (computed in double): truncation */
        for (size_t g = 0; g < gp; g++) {
            double v = (double)score[g] * 255.0;
            q8[g] = !(v > 0) ? 0 : v >= 256 ? (uint8_t)((int64_t)v & 255) : (uint8_t)v;
        }
    c.q = q8;
    if (!oom)
        sp_pool_for(b->pool, OH, 8, mf->out_trunc8 || mf->out_corner || mf->out_alpha ? alpha_rows : post_rows, &c);
    oom |= c.oom;
    if (!oom)
        mask_stats(r, rcnt, c.rfirst, c.rlast);
    free(q8);
    free((void *)c.gx0);
    free((void *)c.gfx);
    free((void *)c.xend);
    free(rcnt);
    free(rfl);
    if (oom) {
        sp_masks_result_free(r);
        return sp_fail(SP_ERR_NOMEM, "masks: out of memory for a %dx%d photo's masks", OW, OH);
    }
    *out = r;
    return SP_OK;
}

/* One batch through the model: masks chosen, photos prepared, one
 * inference, then every photo's masks. */
static sp_status masks_batch(sp_package *pk, sp_image *const *imgs, int n, const sp_masks_params *pp,
                             sp_masks_result ***results, sp_timings *t)
{
    sp_masks_params p = pp ? *pp : sp_masks_default_params();
    sp_timings scratch = {0};
    if (!t)
        t = &scratch;
    *results = NULL;
    if (strcmp(pk->mf.task, "masks"))
        return sp_fail(SP_ERR_MODEL, "model '%s' is a '%s' model, not a masks model", pk->mf.name, pk->mf.task);
    if (n < 1)
        return sp_fail(SP_ERR_USAGE, "no images");
    batch b = {.mf = &pk->mf, .imgs = imgs, .n = n};
    float *in = NULL;
    sp_masks_result **res = calloc((size_t)n, sizeof *res);
    sp_status st = res ? batch_masks(&b, &p) : sp_fail(SP_ERR_NOMEM, "masks: out of memory");
    if (!st) {
        b.pool = sp_pool_get(p.threads);
        double t0 = sp_now();
        st = batch_prepare(&b, &p, &in);
        double t1 = sp_now();
        sp_timings_add(t, "preprocess", t1 - t0);
        st = st ? st : batch_infer(&b, pk->model, in);
        double t2 = sp_now();
        if (!st)
            sp_timings_add(t, "inference", t2 - t1);
        for (int i = 0; i < n && !st; i++)
            st = photo_masks(&b, i, &res[i]);
        if (!st)
            sp_timings_add(t, "postprocess", sp_now() - t2);
        sp_pool_put(b.pool);
    }
    free(in);
    free(b.rw);
    free(b.rh);
    free(b.sem);
    free(b.amax);
    free(b.luts);
    sp_tensor_free_data(&b.outs[0]);
    sp_tensor_free_data(&b.outs[1]);
    if (st) {
        for (int i = 0; res && i < n; i++)
            sp_masks_result_free(res[i]);
        free(res);
        return st;
    }
    *results = res;
    return SP_OK;
}

/* is `name` in the comma-separated list (empty or NULL: every name)? */
static int name_listed(const char *list, const char *name)
{
    if (!list || !list[0])
        return 1;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !strncmp(p, name, n))
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

typedef struct enc_ctx {
    const sp_masks_result *r;
    const int *sel;
    void **png;
    size_t *n;
    sp_status *st;
} enc_ctx;

static void enc_masks(void *vc, int64_t b, int64_t e, int w)
{
    enc_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        int k = c->sel[i];
        c->st[i] = sp_mask_png(&c->r->masks[k], c->r->width, c->r->height, &c->png[i], &c->n[i]);
    }
}

sp_status sp_masks_encode(const sp_masks_result *r, const char *only, char **json, void **pngs, size_t *png_sizes)
{
    int sel[SP_MAX_MASKS], ns = 0;
    void *png[SP_MAX_MASKS] = {0};
    size_t pn[SP_MAX_MASKS] = {0};
    sp_status sts[SP_MAX_MASKS] = {0}, st = SP_OK;
    *json = NULL;
    for (int k = 0; k < r->n_masks && ns < SP_MAX_MASKS; k++) {
        if (pngs) {
            pngs[k] = NULL;
            png_sizes[k] = 0;
        }
        if (name_listed(only, r->masks[k].name))
            sel[ns++] = k;
    }
    enc_ctx c = {r, sel, png, pn, sts};
    sp_pool *pool = sp_pool_get(0);
    sp_pool_for(pool, ns, 1, enc_masks, &c);
    sp_pool_put(pool);
    sp_buf b = {0};
    sp_buf_puts(&b, "{");
    for (int i = 0; i < ns && !st; i++) {
        const sp_mask *m = &r->masks[sel[i]];
        if ((st = sts[i]))
            break;
        sp_buf_puts(&b, i ? ",\n  " : "\n  ");
        sp_buf_json_str(&b, m->name);
        sp_buf_printf(&b, ": {\"area_fraction\": %.6f, \"bbox\": [%d, %d, %d, %d], \"png_base64\": \"",
                      m->area_fraction, m->bbox[0], m->bbox[1], m->bbox[2], m->bbox[3]);
        char *enc = sp_base64(png[i], pn[i]);
        if (!enc)
            st = sp_fail(SP_ERR_NOMEM, "out of memory");
        sp_buf_puts(&b, enc ? enc : "");
        free(enc);
        sp_buf_puts(&b, "\"}");
    }
    sp_buf_puts(&b, "}");
    for (int i = 0; i < ns; i++) {
        if (!st && pngs) {
            pngs[sel[i]] = png[i];
            png_sizes[sel[i]] = pn[i];
        } else {
            free(png[i]);
        }
    }
    if (!st && !(*json = sp_buf_take(&b)))
        st = sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_buf_free(&b);
    return st;
}

/* 8-bit grey PNG, run-length deflate (see sp_png_encode_mask) */
sp_status sp_mask_png(const sp_mask *m, int width, int height, void **png, size_t *size)
{
    return sp_png_encode_mask(m->pixels, width, height, png, size);
}

/* the long side of the model's input: fixed, or the manifest's for dynamic models */
static int model_side(const sp_manifest *mf)
{
    return mf->in_h ? (mf->in_h > mf->in_w ? mf->in_h : mf->in_w) : mf->long_side;
}

sp_image_params sp_masks_image_params(const sp_package *pk, int long_side)
{
    const sp_manifest *mf = &pk->mf;
    sp_image_params ip = sp_image_default_params();
    int ls = long_side > 0 ? long_side : model_side(mf);
    ip.min_long_side = ls > 768 ? ls : 768;
    return ip;
}

sp_status sp_masks_memory_estimate(const sp_package *pk, const void *photo, size_t size, const sp_image_params *ip,
                                   int n_masks, size_t *bytes)
{
    const sp_manifest *mf = &pk->mf;
    uint64_t px = 0, dec = 0;
    *bytes = 0;
    sp_status st = sp_image_probe(photo, size, ip, &px, &dec);
    if (st)
        return st;
    if (n_masks <= 0)
        n_masks = mf->n_masks;
    double side = model_side(mf);
    double plane = side * side, k = mf->num_classes;
    /* decoded pixels (and their upright copy); the network's input, output,
     * class scores and argmax at its size and its working memory; the masks
     * at the photo's size and their PNG answer */
    double b = 6.0 * (double)dec + plane * (3 + 2 * k + 2) * 4 + (double)pk->run_bytes +
               (double)px * (n_masks + 2);
    b *= 1.25;
    *bytes = b < 1e18 ? (size_t)b : (size_t)1e18;
    return SP_OK;
}
