/*
 * video.c — `segpipe video`: background replacement on a thread pipeline.
 *
 *   decode -> preprocess -> inference (batches) -> composite (W workers) -> write
 *
 * Stages are threads joined by bounded blocking queues (mutex + condition
 * variables; nothing polls). Memory:
 *   - frame slots (the cache): decoded RGB frame + the model's scores for it.
 *     As many as the RAM budget allows; when the whole video fits, every
 *     frame keeps its own slot and later runs read the frames from RAM.
 *     Otherwise the slots form a ring: the decoder waits for a slot a
 *     compositing worker has finished with.
 *   - NB batch buffers (model input tensors) between preprocess and
 *     inference, so the next batch is prepared while one runs.
 *   - K output buffers: a worker takes a free one BEFORE it takes the next
 *     frame, so frames are always taken in order and the frame the writer
 *     waits for is always being worked on (no deadlock with K >= W + 1).
 * Order: frames in flight have consecutive numbers inside a window smaller
 * than the ring, so `done[index % ring]` tells the writer when frame `next`
 * is ready.
 * Errors and cancellation set `stop`, wake every queue and condition, and
 * every thread returns; the sink then removes its partial output.
 */
#include "../io/video.h"
#include "pipeline.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NB 3                 /* batch buffers */

/* -------------------------------------------------------------------- job */

typedef struct slot {
    int64_t index;           /* frame number */
    uint8_t *rgb;            /* W x H x 3 */
    float *score;            /* C x h x w model output for this frame */
    size_t score_cap;
    int C, h, w;
} slot;

typedef struct vbatch {
    float *in;               /* B x 3 x Hc x Wc */
    int slots[64];
    int n;
} vbatch;

struct sp_video {
    sp_package *pk;
    sp_video_params p;
    char *output;
    sp_frame_src *src;
    sp_src_info info;
    int W, H;
    /* ROIs */
    int (*roi)[4];
    int64_t n_roi;
    /* background */
    uint8_t *bg_img;         /* W x H x 3, SP_BG_IMAGE */
    /* model */
    int Hc, Wc, C, fixed_batch;
    int fg[SP_MAX_MASK_CLASSES], n_fg;   /* logits models: foreground classes */
    /* cache */
    slot *slots;
    int64_t n_slots;         /* capacity from the budget */
    int64_t n_alloc;         /* slots allocated so far */
    int64_t total;           /* frames in the video, once known (-1) */
    int complete;            /* every frame is in its own slot (reusable) */
    size_t frame_bytes, slot_bytes, buffer_bytes, budget;
    /* per run */
    int batch, workers, K;
    vbatch b[NB];
    uint8_t **outbuf;
    void **encbuf;           /* per output buffer: the frame encoded by its worker (folders) */
    size_t *enclen;
    int par_encode;          /* the sink encodes on the workers */
    int warmed_batch;        /* batch size the model was warmed up with */
    sp_bq free_slots, q_pre, free_batch, q_inf, q_comp, free_out;
    int *done;               /* ring: frame index % n_ring -> out buffer + 1 */
    int64_t n_ring;
    pthread_mutex_t done_mu;
    pthread_cond_t done_cv;
    int64_t decoded;         /* frames decoded so far this run (or -1 before) */
    int eof;                 /* decoder reached the end */
    atomic_int stop;
    sp_status err;
    char errmsg[512];
    pthread_mutex_t err_mu;
    sp_frame_sink *sink;
    /* stats (seconds) */
    double t_decode, t_pre, t_inf, t_comp, t_save;
    double w_pre, w_inf, w_comp, w_save;
    double t_comp_worker[64], w_comp_worker[64], t_enc_worker[64];
};

sp_video_params sp_video_default_params(void)
{
    sp_video_params p;
    memset(&p, 0, sizeof p);
    p.batch = 4;
    p.workers = 2;
    p.bg = SP_BG_COLOR;
    p.bg_color[1] = 255;
    p.blur_radius = 15;
    return p;
}

/* record the first error (the calling thread's message) and stop everything */
static void fail_run(sp_video *v, sp_status st)
{
    pthread_mutex_lock(&v->err_mu);
    if (!v->err) {
        v->err = st;
        snprintf(v->errmsg, sizeof v->errmsg, "%s", st == SP_ERR_CANCELLED ? "cancelled" : sp_last_error());
    }
    pthread_mutex_unlock(&v->err_mu);
    atomic_store(&v->stop, 1);
    sp_bq *qs[] = {&v->free_slots, &v->q_pre, &v->free_batch, &v->q_inf, &v->q_comp, &v->free_out};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
        if (qs[i]->buf)
            sp_bq_wake(qs[i]);
    pthread_mutex_lock(&v->done_mu);
    pthread_cond_broadcast(&v->done_cv);
    pthread_mutex_unlock(&v->done_mu);
}

void sp_video_cancel(sp_video *v)
{
    if (v)
        fail_run(v, SP_ERR_CANCELLED);
}

/* ------------------------------------------------------------------ setup */

static sp_status read_roi(sp_video *v, const char *path)
{
    void *data;
    size_t n;
    sp_status st = sp_read_file(path, (size_t)256 << 20, &data, &n);
    if (st)
        return st;
    char *text = data;   /* NUL-terminated */
    int64_t cap = 0, line = 0;
    char *save = NULL;
    st = SP_OK;
    for (char *l = strtok_r(text, "\n", &save); l && !st; l = strtok_r(NULL, "\n", &save)) {
        line++;
        char *h = strchr(l, '#');
        if (h)
            *h = 0;
        int r[4], used = 0;
        char tail;
        int k = sscanf(l, " %d %d %d %d %n%c", &r[0], &r[1], &r[2], &r[3], &used, &tail);
        if (k == EOF || (k <= 0 && strspn(l, " \t\r") == strlen(l)))
            continue;
        if (k != 4 || (l[used] && strspn(l + used, " \t\r") != strlen(l + used))) {
            st = sp_fail(SP_ERR_INPUT, "%s:%lld: expected 'x y width height'", path, (long long)line);
            break;
        }
        if (r[2] < 1 || r[3] < 1 || r[0] < 0 || r[1] < 0 || (int64_t)r[0] + r[2] > v->W ||
            (int64_t)r[1] + r[3] > v->H) {
            st = sp_fail(SP_ERR_INPUT, "%s:%lld: ROI %d %d %d %d is outside the %dx%d frame", path, (long long)line,
                         r[0], r[1], r[2], r[3], v->W, v->H);
            break;
        }
        if (v->n_roi == cap) {
            cap = cap ? cap * 2 : 1024;
            void *nr = realloc(v->roi, (size_t)cap * sizeof *v->roi);
            if (!nr) {
                st = sp_fail(SP_ERR_NOMEM, "out of memory");
                break;
            }
            v->roi = nr;
        }
        memcpy(v->roi[v->n_roi++], r, sizeof r);
    }
    free(text);
    if (!st && !v->n_roi)
        st = sp_fail(SP_ERR_INPUT, "%s: no rectangles", path);
    if (!st && v->info.frames > 0 && v->n_roi < v->info.frames)
        st = sp_fail(SP_ERR_INPUT, "%s: %lld rectangles for %lld frames (one per frame needed)", path,
                     (long long)v->n_roi, (long long)v->info.frames);
    return st;
}

/* bilinear (half-pixel centres) resize of packed RGB, rounded */
static void resize_rgb(const uint8_t *s, int sw, int sh, uint8_t *d, int dw, int dh)
{
    for (int y = 0; y < dh; y++) {
        double sy = ((double)y + 0.5) * sh / dh - 0.5;
        sy = sy < 0 ? 0 : sy;
        int y0 = (int)sy, y1 = y0 + 1 < sh ? y0 + 1 : sh - 1;
        double fy = sy - y0;
        for (int x = 0; x < dw; x++) {
            double sx = ((double)x + 0.5) * sw / dw - 0.5;
            sx = sx < 0 ? 0 : sx;
            int x0 = (int)sx, x1 = x0 + 1 < sw ? x0 + 1 : sw - 1;
            double fx = sx - x0;
            for (int c = 0; c < 3; c++) {
                double t = s[((size_t)y0 * sw + x0) * 3 + c] * (1 - fx) + s[((size_t)y0 * sw + x1) * 3 + c] * fx;
                double b = s[((size_t)y1 * sw + x0) * 3 + c] * (1 - fx) + s[((size_t)y1 * sw + x1) * 3 + c] * fx;
                d[((size_t)y * dw + x) * 3 + c] = (uint8_t)(t * (1 - fy) + b * fy + 0.5);
            }
        }
    }
}

static size_t default_budget(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
    return pages > 0 && ps > 0 ? (size_t)pages * (size_t)ps / 4 : (size_t)2 << 30;
}

static void free_run_buffers(sp_video *v)
{
    for (int i = 0; i < NB; i++) {
        free(v->b[i].in);
        v->b[i].in = NULL;
    }
    for (int i = 0; v->outbuf && i < v->K; i++)
        free(v->outbuf[i]);
    for (int i = 0; v->encbuf && i < v->K; i++)
        free(v->encbuf[i]);
    free(v->outbuf);
    free(v->encbuf);
    free(v->enclen);
    v->outbuf = NULL;
    v->encbuf = NULL;
    v->enclen = NULL;
    sp_bq *qs[] = {&v->free_slots, &v->q_pre, &v->free_batch, &v->q_inf, &v->q_comp, &v->free_out};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
        sp_bq_destroy(qs[i]);
    free(v->done);
    v->done = NULL;
}

void sp_video_free(sp_video *v)
{
    if (!v)
        return;
    free_run_buffers(v);
    for (int64_t i = 0; i < v->n_alloc; i++) {
        free(v->slots[i].rgb);
        free(v->slots[i].score);
    }
    free(v->slots);
    sp_src_close(v->src);
    free(v->roi);
    free(v->bg_img);
    free(v->output);
    pthread_mutex_destroy(&v->done_mu);
    pthread_cond_destroy(&v->done_cv);
    pthread_mutex_destroy(&v->err_mu);
    free(v);
}

/* bytes of the per-run buffers for batch B, W workers */
static size_t run_bytes(const sp_video *v, int B, int W)
{
    int K = 2 * W + 2;
    return (size_t)NB * B * 3 * (size_t)v->Hc * v->Wc * sizeof(float) + (size_t)K * v->frame_bytes;
}

sp_status sp_video_set(sp_video *v, int batch, int workers, const char *output)
{
    if (batch < 1 || batch > 64)
        return sp_fail(SP_ERR_USAGE, "--batch must be 1..64");
    if (workers < 1 || workers > 64)
        return sp_fail(SP_ERR_USAGE, "--workers must be 1..64");
    if (v->n_alloc && (size_t)v->n_slots * v->slot_bytes + run_bytes(v, batch, workers) > v->budget &&
        !v->complete)
        return sp_fail(SP_ERR_USAGE, "batch %d with %d workers does not fit the RAM budget", batch, workers);
    v->batch = batch;
    v->workers = workers;
    free(v->output);
    v->output = output ? strdup(output) : NULL;
    if (output && !v->output)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    return SP_OK;
}

/* A logits model's foreground classes: those of mask p.mask (default the first). */
static sp_status video_foreground(sp_video *v, const sp_manifest *mf)
{
    int mi = 0;
    if (v->p.mask) {
        while (mi < mf->n_masks && strcmp(mf->mask_name[mi], v->p.mask))
            mi++;
        if (mi == mf->n_masks)
            return sp_fail(SP_ERR_USAGE, "model '%s' has no mask '%s'", mf->name, v->p.mask);
    } else if (!mf->n_masks) {
        return sp_fail(SP_ERR_MODEL, "model '%s' names no masks", mf->name);
    }
    v->n_fg = mf->mask_ncls[mi];
    memcpy(v->fg, mf->mask_cls[mi], sizeof v->fg);
    return SP_OK;
}

/* The source opened (frame size, rate), the ROI file and the background
 * image read. */
static sp_status video_inputs(sp_video *v)
{
    const sp_video_params *p = &v->p;
    sp_status st = sp_src_open(p->input, p->decode_threads > 0 ? p->decode_threads : 1, &v->src, &v->info);
    if (st)
        return st;
    v->W = v->info.width;
    v->H = v->info.height;
    v->frame_bytes = (size_t)v->W * v->H * 3;
    if (v->info.fps <= 0)
        v->info.fps = 25;
    if (p->roi_file && (st = read_roi(v, p->roi_file)))
        return st;
    if (p->bg == SP_BG_IMAGE) {
        sp_image *im;
        if ((st = sp_image_read(p->bg_image, NULL, &im)))
            return st;
        if (!(v->bg_img = malloc(v->frame_bytes)))
            st = sp_fail(SP_ERR_NOMEM, "out of memory");
        else
            resize_rgb(im->rgb, im->width, im->height, v->bg_img, v->W, v->H);
        sp_image_free(im);
    }
    return st;
}

/* The frame slots: one per frame (plus one) when the RAM budget allows,
 * never fewer than the pipeline needs to flow (a container may under-report
 * its frames), never more than the budget holds. */
static sp_status video_slots(sp_video *v, const sp_manifest *mf)
{
    int nin, nout;
    const sp_io_info *in = sp_model_inputs(v->pk->model, &nin);
    const sp_io_info *o = sp_model_outputs(v->pk->model, &nout);
    v->fixed_batch = in[0].meta.shape[0] > 0 ? (int)in[0].meta.shape[0] : 0;
    v->Hc = mf->in_h;
    v->Wc = mf->in_w;
    if (!v->Hc) {
        int ls = mf->long_side > 0 ? mf->long_side : 512;
        v->Hc = v->Wc = (ls + 31) / 32 * 32;
    }
    int64_t C = o[0].meta.rank == 4 && o[0].meta.shape[1] > 0 ? o[0].meta.shape[1] : 1;
    int64_t h = o[0].meta.rank == 4 && o[0].meta.shape[2] > 0 ? o[0].meta.shape[2] : v->Hc;
    int64_t w = o[0].meta.rank == 4 && o[0].meta.shape[3] > 0 ? o[0].meta.shape[3] : v->Wc;
    v->C = (int)C;
    v->slot_bytes = v->frame_bytes + (size_t)(C * h * w) * sizeof(float);
    v->budget = v->p.max_ram ? v->p.max_ram : default_budget();
    int B = v->p.batch > 0 ? v->p.batch : 4, Wk = v->p.workers > 0 ? v->p.workers : 2;
    sp_status st = sp_video_set(v, B, Wk, v->p.output);
    if (st)
        return st;
    size_t fixed = run_bytes(v, B, Wk);
    int64_t need = 2 * (int64_t)B + Wk + 2;   /* slots for the pipeline to flow */
    int64_t fit = v->budget > fixed ? (int64_t)((v->budget - fixed) / v->slot_bytes) : 0;
    if (fit < need)
        return sp_fail(SP_ERR_USAGE, "--max-ram %.2f MB is too small for batch %d of %dx%d frames with %d workers "
                       "(needs at least %.2f MB)",
                       v->budget / 1e6, B, v->W, v->H, Wk, (fixed + (size_t)need * v->slot_bytes) / 1e6);
    v->n_slots = v->info.frames > 0 && fit > v->info.frames ? v->info.frames + 1 : fit;
    if (v->n_slots < need)
        v->n_slots = need;
    if (v->n_slots > (int64_t)1 << 24)
        v->n_slots = (int64_t)1 << 24;
    if (!(v->slots = calloc((size_t)v->n_slots, sizeof *v->slots)))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    return SP_OK;
}

sp_status sp_video_open(sp_package *pk, const sp_video_params *pp, sp_video **out)
{
    *out = NULL;
    sp_video_params p = pp ? *pp : sp_video_default_params();
    const sp_manifest *mf = &pk->mf;
    if (!p.input)
        return sp_fail(SP_ERR_USAGE, "no input video or frame folder");
    sp_status st = p.output ? sp_sink_check(p.output, p.codec) : SP_OK;   /* before any work */
    if (st)
        return st;
    if (strcmp(mf->task, "masks"))
        return sp_fail(SP_ERR_MODEL, "model '%s' is a '%s' model; video needs a foreground (masks) model", mf->name,
                       mf->task);
    if (mf->out_kind == SP_OUT_M2F)
        return sp_fail(SP_ERR_MODEL, "model '%s': Mask2Former query outputs are not supported for video; export "
                                     "per-pixel logits or a probability output", mf->name);
    if (p.bg == SP_BG_IMAGE && !p.bg_image)
        return sp_fail(SP_ERR_USAGE, "background image: no file given");
    sp_video *v = calloc(1, sizeof *v);
    if (!v)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&v->done_mu, NULL);
    pthread_cond_init(&v->done_cv, NULL);
    pthread_mutex_init(&v->err_mu, NULL);
    v->pk = pk;
    v->p = p;
    v->total = -1;
    if (p.blur_radius <= 0)
        v->p.blur_radius = 15;
    if (mf->out_kind == SP_OUT_LOGITS)
        st = video_foreground(v, mf);
    if (!st)
        st = video_inputs(v);
    if (!st)
        st = video_slots(v, mf);
    if (st) {
        sp_video_free(v);
        return st;
    }
    *out = v;
    return SP_OK;
}

/* --------------------------------------------------------------- decoder */

static void *decode_main(void *arg)
{
    sp_video *v = arg;
    int64_t i = 0;
    double busy = 0;
    for (;; i++) {
        int s;
        if (v->complete) {                      /* frames already in RAM */
            if (i >= v->total)
                break;
            s = (int)i;
        } else {
            if (i < v->n_slots && i >= v->n_alloc) {
                slot *sl = &v->slots[i];
                if (!(sl->rgb = malloc(v->frame_bytes))) {
                    fail_run(v, sp_fail(SP_ERR_NOMEM, "out of memory for frame %lld", (long long)i));
                    break;
                }
                v->n_alloc = i + 1;
                s = (int)i;
            } else if ((s = sp_bq_pop(&v->free_slots, NULL)) < 0) {
                break;
            }
            double t0 = sp_now();
            int eof;
            sp_status st = sp_src_read(v->src, v->slots[s].rgb, &eof);
            busy += sp_now() - t0;
            if (st) {
                fail_run(v, sp_fail_prefix(st, "frame %lld", (long long)i + 1));
                break;
            }
            if (eof)
                break;
            if (v->roi && i >= v->n_roi) {
                fail_run(v, sp_fail(SP_ERR_INPUT, "the ROI file has %lld rectangles but the video has more frames",
                                    (long long)v->n_roi));
                break;
            }
        }
        v->slots[s].index = i;
        if (sp_bq_push(&v->q_pre, s, NULL) < 0)
            break;
    }
    if (!atomic_load(&v->stop)) {
        if (i == 0)
            fail_run(v, sp_fail(SP_ERR_INPUT, "%s: no frames", v->p.input));
        pthread_mutex_lock(&v->done_mu);
        v->decoded = i;
        v->eof = 1;
        pthread_cond_broadcast(&v->done_cv);
        pthread_mutex_unlock(&v->done_mu);
        sp_bq_close(&v->q_pre);
    }
    v->t_decode = busy;
    return NULL;
}

/* ------------------------------------------------------------- preprocess */

static void roi_of(const sp_video *v, int64_t i, int r[4])
{
    if (v->roi) {
        memcpy(r, v->roi[i], 4 * sizeof *r);
    } else {
        r[0] = r[1] = 0;
        r[2] = v->W;
        r[3] = v->H;
    }
}

/* content rectangle of an ROI inside the model canvas */
static void content_rect(const sp_video *v, const int r[4], int *cw, int *ch)
{
    if (!v->pk->mf.letterbox) {
        *cw = v->Wc;
        *ch = v->Hc;
    } else {
        double s = fmin((double)v->Wc / r[2], (double)v->Hc / r[3]);
        *cw = (int)fmax(1, fmin(v->Wc, round(r[2] * s)));
        *ch = (int)fmax(1, fmin(v->Hc, round(r[3] * s)));
    }
}

/* rows of the frames of a batch, on the pool */
typedef struct prep_job {
    const sp_video *v;
    const int *slots;
    float *in;
} prep_job;

static void prep_rows_job(void *vc, int64_t b, int64_t e, int w)
{
    prep_job *c = vc;
    const sp_video *v = c->v;
    size_t plane = (size_t)v->Hc * v->Wc;
    for (int64_t job = b; job < e; job++) {
        int i = (int)(job / v->Hc), y = (int)(job % v->Hc);
        const slot *sl = &v->slots[c->slots[i]];
        int r[4], cw, ch;
        roi_of(v, sl->index, r);
        content_rect(v, r, &cw, &ch);
        sp_prep_row(&v->pk->mf, sl->rgb, v->W, r[0], r[1], r[2], r[3],
                    c->in + (size_t)i * 3 * plane + (size_t)y * v->Wc, plane, v->Wc, cw, ch, y);
    }
}

/* Gathers a batch (waiting for decoded frames), then preprocesses all its
 * frames at once, rows spread over the pool: one thread alone could not
 * keep up with a GPU running a small model. */
static void *prep_main(void *arg)
{
    sp_video *v = arg;
    int end = 0;
    sp_pool *pool = sp_pool_get(0);
    while (!end) {
        int bi = sp_bq_pop(&v->free_batch, NULL);
        if (bi < 0)
            break;
        vbatch *b = &v->b[bi];
        b->n = 0;
        while (b->n < v->batch) {
            int s = sp_bq_pop(&v->q_pre, &v->w_pre);
            if (s == SP_BQ_EOF) {
                end = 1;
                break;
            }
            if (s < 0)
                goto out;
            b->slots[b->n++] = s;
        }
        double t0 = sp_now();
        prep_job pj = {v, b->slots, b->in};
        sp_pool_for(pool, (int64_t)b->n * v->Hc, 8, prep_rows_job, &pj);
        v->t_pre += sp_now() - t0;
        if (b->n && sp_bq_push(&v->q_inf, bi, NULL) < 0)
            goto out;
    }
    sp_bq_close(&v->q_inf);
out:
    sp_pool_put(pool);
    return NULL;
}

/* -------------------------------------------------------------- inference */

/* run the model on n preprocessed frames at `in` (chunks of a fixed batch
 * size); each frame's scores are copied into its slot (ids NULL: dropped) */
static sp_status infer(sp_video *v, float *in, int n, const int *ids)
{
    size_t per = (size_t)3 * v->Hc * v->Wc;
    int chunk = v->fixed_batch > 0 ? v->fixed_batch : n;
    for (int i = 0; i < n; i += chunk) {
        int k = n - i < chunk ? n - i : chunk;
        if (v->fixed_batch > 0 && k != v->fixed_batch)
            return sp_fail(SP_ERR_MODEL, "model takes batches of exactly %d", v->fixed_batch);
        sp_tensor ti = {SP_DT_F32, 4, {k, 3, v->Hc, v->Wc}, in + (size_t)i * per};
        sp_tensor o[1];
        memset(o, 0, sizeof o);
        sp_status st = sp_model_run(v->pk->model, &ti, 1, o, 1);
        if (st)
            return st;
        if (o[0].rank != 4 || o[0].shape[0] != k || o[0].dtype != SP_DT_F32) {
            sp_tensor_free_data(&o[0]);
            return sp_fail(SP_ERR_MODEL, "the model output is not float [N, C, h, w]");
        }
        size_t pf = (size_t)(o[0].shape[1] * o[0].shape[2] * o[0].shape[3]);
        if (ids) {
            for (int j = 0; j < k; j++) {
                slot *sl = &v->slots[ids[i + j]];
                if (sl->score_cap < pf) {
                    float *ns = realloc(sl->score, pf * sizeof(float));
                    if (!ns) {
                        sp_tensor_free_data(&o[0]);
                        return sp_fail(SP_ERR_NOMEM, "out of memory");
                    }
                    sl->score = ns;
                    sl->score_cap = pf;
                }
                memcpy(sl->score, (float *)o[0].data + (size_t)j * pf, pf * sizeof(float));
                sl->C = (int)o[0].shape[1];
                sl->h = (int)o[0].shape[2];
                sl->w = (int)o[0].shape[3];
            }
        }
        sp_tensor_free_data(&o[0]);
    }
    return SP_OK;
}

static void *infer_main(void *arg)
{
    sp_video *v = arg;
    for (;;) {
        int bi = sp_bq_pop(&v->q_inf, &v->w_inf);
        if (bi == SP_BQ_EOF)
            break;
        if (bi < 0)
            return NULL;
        vbatch *b = &v->b[bi];
        double t0 = sp_now();
        sp_status st = infer(v, b->in, b->n, b->slots);
        v->t_inf += sp_now() - t0;
        if (st) {
            fail_run(v, st);
            return NULL;
        }
        int n = b->n, ids[64];
        memcpy(ids, b->slots, (size_t)n * sizeof *ids);
        if (sp_bq_push(&v->free_batch, bi, NULL) < 0)
            return NULL;
        for (int j = 0; j < n; j++)
            if (sp_bq_push(&v->q_comp, ids[j], NULL) < 0)
                return NULL;
    }
    sp_bq_close(&v->q_comp);
    return NULL;
}

/* ------------------------------------------------------------- compositing */

typedef struct worker_arg {
    sp_video *v;
    int id;
} worker_arg;

/* alpha at the model grid from the scores: the probability itself, or the
 * softmax mass of the foreground classes of a logits model */
static void alpha_grid(const sp_video *v, const float *score, int C, size_t gp, float *a)
{
    if (v->pk->mf.out_kind == SP_OUT_PROB || C == 1) {
        memcpy(a, score, gp * sizeof *a);
        return;
    }
    for (size_t g = 0; g < gp; g++) {
        float mx = score[g];
        for (int c = 1; c < C; c++)
            mx = score[(size_t)c * gp + g] > mx ? score[(size_t)c * gp + g] : mx;
        float sum = 0, fg = 0;
        for (int c = 0; c < C; c++) {
            float e = expf(score[(size_t)c * gp + g] - mx);
            sum += e;
            for (int k = 0; k < v->n_fg; k++)
                if (v->fg[k] == c)
                    fg += e;
        }
        a[g] = fg / sum;
    }
}

/* box blur (radius r, edges clamped to the frame) of the ROI of f into out
 * (ROI-sized, packed): integer sums, rounded once */
static sp_status box_blur_roi(const uint8_t *f, int W, int H, const int roi[4], int r, uint8_t *out)
{
    int rx = roi[0], ry = roi[1], rw = roi[2], rh = roi[3];
    int rows = rh + 2 * r;
    uint32_t *hs = malloc((size_t)rows * rw * 3 * sizeof *hs);
    if (!hs)
        return sp_fail(SP_ERR_NOMEM, "out of memory for the blur");
    for (int j = 0; j < rows; j++) {
        int y = ry - r + j;
        y = y < 0 ? 0 : y >= H ? H - 1 : y;
        const uint8_t *row = f + (size_t)y * W * 3;
        uint32_t *o = hs + (size_t)j * rw * 3;
        uint32_t s[3] = {0, 0, 0};
        for (int dx = -r; dx <= r; dx++) {
            int x = rx + dx;
            x = x < 0 ? 0 : x >= W ? W - 1 : x;
            for (int c = 0; c < 3; c++)
                s[c] += row[x * 3 + c];
        }
        for (int x = 0; x < rw; x++) {
            for (int c = 0; c < 3; c++)
                o[x * 3 + c] = s[c];
            int xo = rx + x - r, xi = rx + x + r + 1;
            xo = xo < 0 ? 0 : xo >= W ? W - 1 : xo;
            xi = xi < 0 ? 0 : xi >= W ? W - 1 : xi;
            for (int c = 0; c < 3; c++)
                s[c] += (uint32_t)row[xi * 3 + c] - row[xo * 3 + c];
        }
    }
    uint32_t n = (uint32_t)(2 * r + 1) * (uint32_t)(2 * r + 1);
    size_t rowlen = (size_t)rw * 3;
    uint32_t *acc = calloc(rowlen, sizeof *acc);
    if (!acc) {
        free(hs);
        return sp_fail(SP_ERR_NOMEM, "out of memory for the blur");
    }
    for (int j = 0; j <= 2 * r; j++)
        for (size_t k = 0; k < rowlen; k++)
            acc[k] += hs[(size_t)j * rowlen + k];
    for (int y = 0; y < rh; y++) {
        uint8_t *o = out + (size_t)y * rowlen;
        for (size_t k = 0; k < rowlen; k++)
            o[k] = (uint8_t)((acc[k] + n / 2) / n);
        if (y + 1 < rh)
            for (size_t k = 0; k < rowlen; k++)
                acc[k] += hs[(size_t)(y + 2 * r + 1) * rowlen + k] - hs[(size_t)y * rowlen + k];
    }
    free(acc);
    free(hs);
    return SP_OK;
}

static sp_status composite(sp_video *v, const slot *sl, int C, int h, int w, uint8_t *out)
{
    int r[4], cw, ch;
    roi_of(v, sl->index, r);
    content_rect(v, r, &cw, &ch);
    size_t gp = (size_t)h * w;
    float *a = malloc(gp * sizeof *a);
    int *x0 = malloc((size_t)r[2] * 2 * sizeof *x0);
    float *fx = malloc((size_t)r[2] * sizeof *fx);
    uint8_t *blur = v->p.bg == SP_BG_BLUR ? malloc((size_t)r[2] * r[3] * 3) : NULL;
    sp_status st = SP_OK;
    if (!a || !x0 || !fx || (v->p.bg == SP_BG_BLUR && !blur))
        st = sp_fail(SP_ERR_NOMEM, "out of memory compositing");
    if (!st && blur)
        st = box_blur_roi(sl->rgb, v->W, v->H, r, v->p.blur_radius, blur);
    if (!st) {
        alpha_grid(v, sl->score, C, gp, a);
        memcpy(out, sl->rgb, v->frame_bytes);
        /* ROI pixel -> content rectangle -> output grid, half-pixel centres */
        double kx = (double)cw / r[2] * w / v->Wc, ky = (double)ch / r[3] * h / v->Hc;
        for (int x = 0; x < r[2]; x++) {
            double gx = ((double)x + 0.5) * kx - 0.5;
            gx = gx < 0 ? 0 : gx > w - 1 ? w - 1 : gx;
            x0[2 * x] = (int)gx;
            x0[2 * x + 1] = (int)gx + 1 < w ? (int)gx + 1 : w - 1;
            fx[x] = (float)(gx - (int)gx);
        }
        const uint8_t *col = v->p.bg_color;
        for (int y = 0; y < r[3]; y++) {
            double gy = ((double)y + 0.5) * ky - 0.5;
            gy = gy < 0 ? 0 : gy > h - 1 ? h - 1 : gy;
            int y0 = (int)gy, y1 = y0 + 1 < h ? y0 + 1 : h - 1;
            float fy = (float)(gy - y0);
            const float *a0 = a + (size_t)y0 * w, *a1 = a + (size_t)y1 * w;
            size_t off = ((size_t)(r[1] + y) * v->W + r[0]) * 3;
            const uint8_t *f = sl->rgb + off;
            uint8_t *o = out + off;
            const uint8_t *bgrow = v->p.bg == SP_BG_IMAGE ? v->bg_img + off
                                   : blur               ? blur + (size_t)y * r[2] * 3
                                                        : NULL;
            for (int x = 0; x < r[2]; x++) {
                int xa = x0[2 * x], xb = x0[2 * x + 1];
                float top = a0[xa] + fx[x] * (a0[xb] - a0[xa]);
                float bot = a1[xa] + fx[x] * (a1[xb] - a1[xa]);
                float al = top + fy * (bot - top);
                al = al < 0 ? 0 : al > 1 ? 1 : al;
                uint32_t a8 = (uint32_t)(al * 255.0f + 0.5f);
                const uint8_t *b = bgrow ? bgrow + x * 3 : col;
                for (int c = 0; c < 3; c++)
                    o[x * 3 + c] = (uint8_t)((a8 * f[x * 3 + c] + (255 - a8) * b[c] + 127) / 255);
            }
        }
    }
    free(a);
    free(x0);
    free(fx);
    free(blur);
    return st;
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    sp_video *v = wa->v;
    for (;;) {
        int ob = sp_bq_pop(&v->free_out, &v->w_comp_worker[wa->id]);   /* buffer first: see the top comment */
        if (ob < 0)
            return NULL;
        int s = sp_bq_pop(&v->q_comp, &v->w_comp_worker[wa->id]);
        if (s == SP_BQ_EOF)
            break;
        if (s < 0)
            return NULL;
        slot *sl = &v->slots[s];
        double t0 = sp_now();
        sp_status st = composite(v, sl, sl->C, sl->h, sl->w, v->outbuf[ob]);
        int64_t idx = sl->index;
        v->t_comp_worker[wa->id] += sp_now() - t0;
        if (st) {
            fail_run(v, st);
            return NULL;
        }
        if (!v->complete && sp_bq_push(&v->free_slots, s, NULL) < 0)
            return NULL;
        if (v->par_encode) {              /* frame folders: encode here, in parallel */
            double t1 = sp_now();
            st = sp_sink_encode(v->sink, v->outbuf[ob], &v->encbuf[ob], &v->enclen[ob]);
            v->t_enc_worker[wa->id] += sp_now() - t1;
            if (st) {
                fail_run(v, st);
                return NULL;
            }
        }
        pthread_mutex_lock(&v->done_mu);
        v->done[idx % v->n_ring] = ob + 1;
        pthread_cond_broadcast(&v->done_cv);
        pthread_mutex_unlock(&v->done_mu);
    }
    return NULL;
}

/* ----------------------------------------------------------------- writer */

static void *writer_main(void *arg)
{
    sp_video *v = arg;
    for (int64_t next = 0;; next++) {
        pthread_mutex_lock(&v->done_mu);
        double t0 = sp_now();
        while (!atomic_load(&v->stop) && !v->done[next % v->n_ring] && !(v->eof && next >= v->decoded))
            pthread_cond_wait(&v->done_cv, &v->done_mu);
        v->w_save += sp_now() - t0;
        int ob = v->done[next % v->n_ring] - 1;
        int finished = v->eof && next >= v->decoded;
        if (ob >= 0)
            v->done[next % v->n_ring] = 0;
        pthread_mutex_unlock(&v->done_mu);
        if (atomic_load(&v->stop) || finished)
            break;
        double t1 = sp_now();
        if (v->sink) {
            sp_status st = v->encbuf[ob] ? sp_sink_write_encoded(v->sink, v->encbuf[ob], v->enclen[ob])
                                         : sp_sink_write(v->sink, v->outbuf[ob]);
            free(v->encbuf[ob]);
            v->encbuf[ob] = NULL;
            if (st) {
                fail_run(v, st);
                break;
            }
        }
        v->t_save += sp_now() - t1;
        if (sp_bq_push(&v->free_out, ob, NULL) < 0)
            break;
    }
    return NULL;
}

/* -------------------------------------------------------------------- run */

static sp_status alloc_run(sp_video *v)
{
    free_run_buffers(v);
    size_t per = (size_t)3 * v->Hc * v->Wc;
    v->K = 2 * v->workers + 2;
    /* frames between the one the writer waits for and the newest finished
     * one each hold a slot or an output buffer */
    v->n_ring = (v->complete ? v->total : v->n_slots) + v->K + 1;
    int ok = sp_bq_init(&v->free_slots, (int)(v->n_slots < 1 ? 1 : v->n_slots), &v->stop) &&
             sp_bq_init(&v->q_pre, (int)(v->n_slots < 1 ? 1 : v->n_slots), &v->stop) &&
             sp_bq_init(&v->free_batch, NB, &v->stop) && sp_bq_init(&v->q_inf, NB, &v->stop) &&
             sp_bq_init(&v->q_comp, (int)(v->n_slots < 1 ? 1 : v->n_slots), &v->stop) &&
             sp_bq_init(&v->free_out, v->K, &v->stop);
    v->done = ok ? calloc((size_t)v->n_ring, sizeof *v->done) : NULL;
    v->outbuf = v->done ? calloc((size_t)v->K, sizeof *v->outbuf) : NULL;
    v->encbuf = calloc((size_t)v->K, sizeof *v->encbuf);
    v->enclen = calloc((size_t)v->K, sizeof *v->enclen);
    if (!v->outbuf || !v->encbuf || !v->enclen)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < NB; i++) {
        if (!(v->b[i].in = malloc((size_t)v->batch * per * sizeof(float))))
            return sp_fail(SP_ERR_NOMEM, "out of memory for batch buffers");
        sp_bq_push(&v->free_batch, i, NULL);
    }
    for (int i = 0; i < v->K; i++) {
        if (!(v->outbuf[i] = malloc(v->frame_bytes)))
            return sp_fail(SP_ERR_NOMEM, "out of memory for output buffers");
        sp_bq_push(&v->free_out, i, NULL);
    }
    v->buffer_bytes = run_bytes(v, v->batch, v->workers);
    return SP_OK;
}

static void fill_report(const sp_video *v, sp_video_report *r, double secs, int cached)
{
    memset(r, 0, sizeof *r);
    int64_t n = v->decoded > 0 ? v->decoded : 1;
    r->frames = v->decoded;
    r->width = v->W;
    r->height = v->H;
    r->batch = v->batch;
    r->workers = v->workers;
    r->seconds = secs;
    r->fps = secs > 0 ? v->decoded / secs : 0;
    r->ms_decode = 1e3 * v->t_decode / n;
    r->ms_preprocess = 1e3 * v->t_pre / n;
    r->ms_inference = 1e3 * v->t_inf / n;
    r->ms_composite = 1e3 * v->t_comp / n;
    r->ms_save = 1e3 * v->t_save / n;
    r->wait_preprocess = 1e3 * v->w_pre / n;
    r->wait_inference = 1e3 * v->w_inf / n;
    r->wait_composite = 1e3 * v->w_comp / n;
    r->wait_save = 1e3 * v->w_save / n;
    r->inference_busy = secs > 0 ? v->t_inf / secs : 0;
    r->cached = cached;
    r->cache_frames = v->n_alloc;
    r->cache_bytes = (size_t)v->n_alloc * v->slot_bytes;
    r->buffer_bytes = v->buffer_bytes;
    r->budget_bytes = v->budget;
    snprintf(r->input_desc, sizeof r->input_desc, "%s", v->info.desc);
}

/* One untimed inference at the run's batch size before the clock starts:
 * the first runs of a shape pay for allocations and, on a GPU, kernel
 * selection (the service warms its models the same way). */
static sp_status warm_up(sp_video *v)
{
    if (v->warmed_batch == v->batch)
        return SP_OK;
    int n = v->fixed_batch > 0 ? v->fixed_batch : v->batch;
    float *in = calloc((size_t)n * 3 * v->Hc * v->Wc, sizeof(float));
    if (!in)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_status st = infer(v, in, n, NULL);
    free(in);
    if (!st)
        v->warmed_batch = v->batch;
    return st;
}

sp_status sp_video_run(sp_video *v, sp_video_report *rep)
{
    sp_video_report scratch;
    if (!rep)
        rep = &scratch;
    memset(rep, 0, sizeof *rep);
    if (v->n_alloc && !v->complete)
        return sp_fail(SP_ERR_USAGE, "the frames are not all in RAM (the video did not fit the cache, or the last "
                                     "run failed): open it again to run again");
    atomic_store(&v->stop, 0);
    v->err = SP_OK;
    v->errmsg[0] = 0;
    v->eof = 0;
    v->decoded = 0;
    v->t_decode = v->t_pre = v->t_inf = v->t_comp = v->t_save = 0;
    v->w_pre = v->w_inf = v->w_comp = v->w_save = 0;
    memset(v->t_comp_worker, 0, sizeof v->t_comp_worker);
    memset(v->w_comp_worker, 0, sizeof v->w_comp_worker);
    memset(v->t_enc_worker, 0, sizeof v->t_enc_worker);
    int cached = v->complete;
    sp_status st = alloc_run(v);
    if (st)
        return st;
    double fps = v->p.fps > 0 ? v->p.fps : v->info.fps;
    v->sink = NULL;
    if (v->output) {
        sp_sink_params sp = {fps, v->p.codec, v->p.quality, 1};
        if ((st = sp_sink_open(v->output, v->W, v->H, &sp, &v->sink)))
            return st;
    }
    v->par_encode = v->sink && sp_sink_parallel(v->sink);
    if ((st = warm_up(v))) {
        sp_sink_abort(v->sink);
        v->sink = NULL;
        return st;
    }
    double t0 = sp_now();
    pthread_t th[4 + 64];
    worker_arg wa[64];
    int nt = 0, started = 1;
    started &= !pthread_create(&th[nt++], NULL, decode_main, v);
    started &= !pthread_create(&th[nt++], NULL, prep_main, v);
    started &= !pthread_create(&th[nt++], NULL, infer_main, v);
    started &= !pthread_create(&th[nt++], NULL, writer_main, v);
    for (int i = 0; i < v->workers && started; i++) {
        wa[i] = (worker_arg){v, i};
        started &= !pthread_create(&th[nt++], NULL, worker_main, &wa[i]);
    }
    if (!started) {
        nt--;
        fail_run(v, sp_fail(SP_ERR_RUNTIME, "cannot start the pipeline threads"));
    }
    for (int i = 0; i < nt; i++)
        pthread_join(th[i], NULL);
    double secs = sp_now() - t0;
    for (int i = 0; i < v->workers; i++) {
        v->t_comp += v->t_comp_worker[i];
        v->w_comp += v->w_comp_worker[i];
        v->t_save += v->t_enc_worker[i];
    }
    if (!v->err && !cached) {
        v->total = v->decoded;
        v->complete = v->decoded <= v->n_slots && v->n_alloc >= v->decoded;   /* +1: the slot that found the end */
    }
    if (v->err) {
        sp_sink_abort(v->sink);
        v->sink = NULL;
        v->complete = 0;
        if (v->err == SP_ERR_CANCELLED)
            return sp_fail(SP_ERR_CANCELLED, "cancelled");
        return sp_fail(v->err, "%s", v->errmsg);
    }
    if (v->sink) {
        double ts = sp_now();
        st = sp_sink_finish(v->sink);
        v->sink = NULL;
        v->t_save += sp_now() - ts;
        secs = sp_now() - t0;
        if (st)
            return st;
    }
    fill_report(v, rep, secs, cached);
    return SP_OK;
}

sp_status sp_video_infer_alone(sp_video *v, sp_video_report *rep)
{
    if (!v->complete)
        return sp_fail(SP_ERR_USAGE, "inference alone needs the frames in RAM: run the pipeline once first "
                                     "(and give --max-ram room for the whole video)");
    size_t per = (size_t)3 * v->Hc * v->Wc;
    sp_status st = warm_up(v);
    if (st)
        return st;
    float *in = malloc((size_t)v->batch * per * sizeof(float));
    if (!in)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    double busy = 0;
    int64_t done = 0;
    int ids[64];
    sp_pool *pool = sp_pool_get(0);
    /* whole passes over the video until at least half a second was timed,
     * so fast models are measured over enough runs */
    do {
        for (int64_t i = 0; i < v->total && !st; i += v->batch) {
            int n = v->total - i < v->batch ? (int)(v->total - i) : v->batch;
            for (int j = 0; j < n; j++)
                ids[j] = (int)(i + j);            /* every frame has its own slot here */
            prep_job pj = {v, ids, in};
            sp_pool_for(pool, (int64_t)n * v->Hc, 8, prep_rows_job, &pj);
            double t0 = sp_now();
            st = infer(v, in, n, NULL);
            busy += sp_now() - t0;
            done += n;
        }
    } while (!st && busy < 0.5);
    sp_pool_put(pool);
    free(in);
    if (st)
        return st;
    double keep_inf = v->t_inf;
    v->t_inf = busy;
    v->decoded = done;
    fill_report(v, rep, busy, 1);
    v->t_inf = keep_inf;
    v->decoded = v->total;
    rep->inference_busy = 1;
    return SP_OK;
}

void sp_video_report_print(const sp_video_report *r, FILE *f)
{
    fprintf(f, "video: %lld frames %dx%d (%s), batch %d, %d workers\n", (long long)r->frames, r->width, r->height,
            r->input_desc, r->batch, r->workers);
    fprintf(f, "  frame cache: %lld frames, %.1f MB%s; buffers %.1f MB; budget %.0f MB\n",
            (long long)r->cache_frames, r->cache_bytes / 1e6,
            r->cached ? " (frames from RAM, no decoding)" : "", r->buffer_bytes / 1e6, r->budget_bytes / 1e6);
    fprintf(f, "  %-12s %10s %14s\n", "stage", "ms/frame", "wait ms/frame");
    fprintf(f, "  %-12s %10.2f %14s\n", "decode", r->ms_decode, "-");
    fprintf(f, "  %-12s %10.2f %14.2f\n", "preprocess", r->ms_preprocess, r->wait_preprocess);
    fprintf(f, "  %-12s %10.2f %14.2f\n", "inference", r->ms_inference, r->wait_inference);
    fprintf(f, "  %-12s %10.2f %14.2f\n", "composite", r->ms_composite, r->wait_composite);
    fprintf(f, "  %-12s %10.2f %14.2f\n", "save", r->ms_save, r->wait_save);
    fprintf(f, "  overall: %.1f FPS (%.2f s); inference busy %.1f%% of the time\n", r->fps, r->seconds,
            100 * r->inference_busy);
}
