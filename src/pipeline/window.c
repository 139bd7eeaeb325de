/*
 * window.c — sliding-window inference with Gaussian weighting, as nnU-Net's
 * predictor does it, with a bounded accumulator.
 *
 * The volume (already normalised) is viewed in the network's axis order
 * (network dim d = volume axis axes[d]) and padded, centred, with zeros to
 * at least the patch size. Tile starts per axis come from nnU-Net's
 * compute_steps_for_sliding_window; tiles run dim 0 outermost, tile_batch at
 * a time: on the CPU as concurrent single-tile calls (window_calls.c), else
 * as one batched call. Each tile's logits, times the Gaussian importance
 * map, are added to an accumulator.
 *
 * Memory: the argmax of sum(w * logits) / sum(w) equals the argmax of
 * sum(w * logits) (the divisor is positive per voxel), so no weight sum is
 * kept, and the accumulator only covers the rows of network dim 0 that a
 * tile can still reach: a ring of patch[0] rows x N1 x N2 x classes. When
 * the window moves past rows along dim 0, those rows are final; their
 * argmax is written and the ring slots reused. For a 118-class model on a
 * 3 mm 512x512x280 CT this holds ~patch[0]/N0 of the full fp32
 * accumulator (see docs/performance.md), with labels identical to the
 * full accumulator's (same sums, same order of additions per voxel).
 *
 * The half accumulator (--accumulator fp16) does nnU-Net's own arithmetic
 * (predict_from_raw_data.py keeps predicted_logits and n_predictions in
 * torch.half, even on the CPU): the Gaussian rounded to half with its
 * zeros replaced by the smallest non-zero half, each sum rounded to half
 * after every addition, the weight sum kept in half too, and per voxel the
 * half quotient sum(w * logits) / sum(w) before the argmax (ties to the
 * first class, as torch.argmax). nnU-Net's labels come out where its half
 * sums tie or lose precision (tile corners, where the Gaussian is
 * subnormal), docs/model-format.md.
 */
#include "pipeline.h"
#include "../runtime/device.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sp_window_steps(int64_t image, int64_t tile, double step, int64_t *out, int cap)
{
    if (image < tile)
        image = tile;
    double target = (double)tile * step;
    double nd = ceil((double)(image - tile) / target) + 1;
    if (!(nd <= cap))
        return -1;   /* more steps than the caller has room for */
    int n = (int)nd;
    if (!out)
        return n;
    double actual = n > 1 ? (double)(image - tile) / (double)(n - 1) : 99999999999.0;
    for (int i = 0; i < n; i++)
        out[i] = (int64_t)nearbyint(actual * i);   /* np.round: half to even */
    return n;
}

typedef struct win {
    const float *vol;
    int64_t vst[3];              /* volume stride of network dim d */
    int64_t N[3], P[3], pad[3];  /* network dims, patch, low padding */
    int C;                       /* channels the network gives (and the accumulator holds) */
    int Cin;                     /* input channels: channel q's volume at vol + q * nvox */
    int64_t nvox;
    int K;                       /* classes of the argmax: C, or the split head's classes */
    const float *head_w, *head_b;   /* split head (K x C, K), or NULL */
    const int *regions;          /* region-based: label of region k, or NULL (argmax) */
    float *in;                   /* tile_batch x P */
    float *out;                  /* tile_batch x C x P */
    const float *gauss;
    void *acc;                   /* C x ring x N1 x N2, float or IEEE half (half = 1) */
    int half;
    int64_t ring;                /* rows of dim 0 held: P0, or N0 when keeping logits */
    float *wsum;                 /* ring x N1 x N2 weight sums (with logits kept or a head) */
    uint16_t *wsum_h;            /* the same in half, with the half accumulator */
    int64_t slab;                /* N1 * N2 */
    uint16_t *labels;
    int64_t lst[3];              /* label stride of network dim d */
    const sp_tile *batch;
    int nb;
    int calls;                   /* CPU: a batch as concurrent single-tile calls (window_calls.c) */
    _Atomic int overflow;        /* a half accumulator reached infinity */
} win;

/* ---- accumulator storage: float, or IEEE half through F16C ---- */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define SP_F16C __attribute__((target("f16c,avx")))
SP_F16C static void half_add(uint16_t *a, const float *l, const float *g, int64_t k0, int64_t k1)
{
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + k)));
        v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_loadu_ps(l + k), _mm256_loadu_ps(g + k)));
        _mm_storeu_si128((__m128i *)(a + k), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; k < k1; k++)
        a[k] = _cvtss_sh(_cvtsh_ss(a[k]) + l[k] * g[k], _MM_FROUND_TO_NEAREST_INT);
}
/* a[k] = half(a[k] + g[k]) for k in [k0, k1): a half weight sum */
SP_F16C static void half_add_w(uint16_t *a, const float *g, int64_t k0, int64_t k1)
{
    for (int64_t k = k0; k < k1; k++)
        a[k] = _cvtss_sh(_cvtsh_ss(a[k]) + g[k], _MM_FROUND_TO_NEAREST_INT);
}
/* x rounded to the nearest half, back as float */
SP_F16C static float half_round(float x)
{
    return _cvtsh_ss(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
}
SP_F16C static void half_load(const uint16_t *a, float *out, int64_t n)
{
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + k))));
    for (; k < n; k++)
        out[k] = _cvtsh_ss(a[k]);
}
/* CPUID leaf 1: F16C (ecx 29), AVX (ecx 28), OSXSAVE (ecx 27), and the OS
 * saving YMM state (XCR0 bits 1-2); clang 14's __builtin_cpu_supports has
 * no "f16c" */
int sp_window_half_available(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 29)) || !(c & (1u << 28)) || !(c & (1u << 27)))
        return 0;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}
#else
static void half_add(uint16_t *a, const float *l, const float *g, int64_t k0, int64_t k1) { abort(); }
static void half_load(const uint16_t *a, float *out, int64_t n) { abort(); }
static void half_add_w(uint16_t *a, const float *g, int64_t k0, int64_t k1) { abort(); }
static float half_round(float x) { abort(); }
int sp_window_half_available(void) { return 0; }
#endif

/* acc[at + k] += l[k] * g[k] for k in [k0, k1) */
static inline void acc_add(win *c, size_t at, const float *l, const float *g, int64_t k0, int64_t k1)
{
    if (c->half) {
        half_add((uint16_t *)c->acc + at, l, g, k0, k1);
        return;
    }
    float *a = (float *)c->acc + at;
    for (int64_t k = k0; k < k1; k++)
        a[k] += l[k] * g[k];
}

/* n accumulator values from at, as float: a pointer into the accumulator,
 * or into tmp after conversion */
static inline const float *acc_row(const win *c, size_t at, int64_t n, float *tmp)
{
    if (!c->half)
        return (const float *)c->acc + at;
    half_load((const uint16_t *)c->acc + at, tmp, n);
    return tmp;
}

/* n half weight sums as float, in tmp */
static inline const float *acc_row_h(const uint16_t *w, int64_t n, float *tmp)
{
    half_load(w, tmp, n);
    return tmp;
}

/* gather: one job per (tile, input channel, row of dims 0-1) */
static void gather_rows(void *vc, int64_t b, int64_t e, int w)
{
    win *c = vc;
    int64_t rows = c->P[0] * c->P[1];
    for (int64_t job = b; job < e; job++) {
        int t = (int)(job / (rows * c->Cin));
        int q = (int)(job / rows % c->Cin);
        int64_t r = job % rows, a = r / c->P[1], bb = r % c->P[1];
        float *dst = c->in + ((size_t)t * (size_t)c->Cin + (size_t)q) * (size_t)(rows * c->P[2]) +
                     (size_t)r * (size_t)c->P[2];
        int64_t n0 = c->batch[t].s[0] + a - c->pad[0], n1 = c->batch[t].s[1] + bb - c->pad[1];
        if (n0 < 0 || n0 >= c->N[0] || n1 < 0 || n1 >= c->N[1]) {
            memset(dst, 0, (size_t)c->P[2] * sizeof(float));
            continue;
        }
        const float *src = c->vol + (size_t)q * (size_t)c->nvox + n0 * c->vst[0] + n1 * c->vst[1];
        int64_t base2 = c->batch[t].s[2] - c->pad[2];
        for (int64_t k = 0; k < c->P[2]; k++) {
            int64_t n2 = base2 + k;
            dst[k] = (n2 >= 0 && n2 < c->N[2]) ? src[n2 * c->vst[2]] : 0.0f;
        }
    }
}

/* accumulate: one job per (channel, row of dim 0); tiles in order, so every
 * voxel receives its additions in the same order whatever the threads */
static void accum_rows(void *vc, int64_t b, int64_t e, int w)
{
    win *c = vc;
    int64_t psz = c->P[0] * c->P[1] * c->P[2];
    for (int64_t job = b; job < e; job++) {
        int cls = (int)(job / c->P[0]);
        int64_t a = job % c->P[0];
        for (int t = 0; t < c->nb; t++) {
            int64_t n0 = c->batch[t].s[0] + a - c->pad[0];
            if (n0 < 0 || n0 >= c->N[0])
                continue;
            const float *lg = c->out + ((size_t)t * (size_t)c->C + (size_t)cls) * (size_t)psz +
                              (size_t)(a * c->P[1] * c->P[2]);
            const float *gw = c->gauss + a * c->P[1] * c->P[2];
            size_t acc = ((size_t)cls * (size_t)c->ring + (size_t)(n0 % c->ring)) * (size_t)c->slab;
            float *ws = c->wsum && cls == 0 ? c->wsum + (size_t)(n0 % c->ring) * (size_t)c->slab : NULL;
            uint16_t *wh = c->wsum_h && cls == 0 ? c->wsum_h + (size_t)(n0 % c->ring) * (size_t)c->slab : NULL;
            for (int64_t bb = 0; bb < c->P[1]; bb++) {
                int64_t n1 = c->batch[t].s[1] + bb - c->pad[1];
                if (n1 < 0 || n1 >= c->N[1])
                    continue;
                int64_t k0 = 0, k1 = c->P[2], off = c->batch[t].s[2] - c->pad[2];
                if (off < 0)
                    k0 = -off;
                if (off + k1 > c->N[2])
                    k1 = c->N[2] - off;
                const float *lr = lg + bb * c->P[2];
                const float *gr = gw + bb * c->P[2];
                acc_add(c, acc + (size_t)(n1 * c->N[2] + off), lr, gr, k0, k1);
                if (ws) {
                    float *wr = ws + n1 * c->N[2] + off;
                    for (int64_t k = k0; k < k1; k++)
                        wr[k] += gr[k];
                }
                if (wh)
                    half_add_w(wh + n1 * c->N[2] + off, gr, k0, k1);
            }
        }
    }
}

typedef struct fin_ctx {
    win *c;
    int64_t row0;
    float *logits;       /* NULL, or K x nvox output (smooth mode) */
    int64_t nvox;
} fin_ctx;

/* Scratch of one finish_rows call: the row's channels as float (C x N2),
 * the logits of one class, the best value and class so far (N2 each). */
typedef struct fin_scratch {
    float *ch, *l, *best, *ws;
    int *bi;
    const float **chp;   /* C row pointers */
} fin_scratch;

/* the logits of class k along one row: the accumulated channel, or the
 * split head applied to the accumulated features (b_k * sum(w) + W_k f) */
static const float *class_row(const win *c, const fin_scratch *s, const float **ch, const float *ws, int k,
                              int64_t n)
{
    if (!c->head_w)
        return ch[k];
    const float *wk = c->head_w + (size_t)k * (size_t)c->C;
    float bk = c->head_b[k];
    float *restrict l = s->l;   /* restrict: lets -O2 vectorise without alias checks */
    const float *restrict w = ws;
    for (int64_t i = 0; i < n; i++)
        l[i] = bk * w[i];
    for (int f = 0; f < c->C; f++) {
        const float *restrict x = ch[f];
        float wf = wk[f];
        for (int64_t i = 0; i < n; i++)
            l[i] += wf * x[i];
    }
    return l;
}

/* argmax (and kept logits) of one finished row (n0, n1) */
static void finish_row(fin_ctx *f, fin_scratch *s, int64_t n0, int64_t n1)
{
    win *c = f->c;
    int64_t n = c->N[2];
    size_t cstride = (size_t)c->ring * (size_t)c->slab;
    size_t base = (size_t)(n0 % c->ring) * (size_t)c->slab + (size_t)(n1 * c->N[2]);
    const float **ch = s->chp;
    for (int k = 0; k < c->C; k++)
        ch[k] = acc_row(c, (size_t)k * cstride + base, n, s->ch + (size_t)k * (size_t)n);
    const float *ws = c->wsum ? c->wsum + base : NULL;
    if (c->wsum_h)   /* nnU-Net's half weight sum, as float */
        ws = acc_row_h(c->wsum_h + base, n, s->ws);
    for (int k = 0; k < c->K; k++) {
        const float *l = class_row(c, s, ch, ws, k, n);
        if (c->wsum_h) {   /* torch.div of two half tensors: the quotient rounded to half */
            for (int64_t i = 0; i < n; i++)
                s->l[i] = half_round(l[i] / ws[i]);
            l = s->l;
        }
        if (c->regions) {   /* sigmoid > 0.5: the last region holding the voxel wins */
            for (int64_t i = 0; i < n; i++) {
                if (k == 0)
                    s->best[i] = 0, s->bi[i] = 0;
                if (l[i] > 0)
                    s->bi[i] = c->regions[k];
            }
        } else {
            for (int64_t i = 0; i < n; i++)
                if (k == 0 || l[i] > s->best[i])
                    s->best[i] = l[i], s->bi[i] = k;
        }
        if (f->logits) {   /* keep sum(w * logits) / sum(w), volume layout */
            float *dst = f->logits + (size_t)k * (size_t)f->nvox;
            for (int64_t i = 0; i < n; i++)
                dst[n0 * c->lst[0] + n1 * c->lst[1] + i * c->lst[2]] = c->wsum_h ? l[i] : l[i] * (1.0f / ws[i]);
        }
    }
    for (int64_t i = 0; i < n; i++) {
        if (c->half && !isfinite(s->best[i]))
            c->overflow = 1;
        c->labels[n0 * c->lst[0] + n1 * c->lst[1] + i * c->lst[2]] = (uint16_t)s->bi[i];
    }
}

/* argmax of finished rows, then clear their ring slots */
static void finish_rows(void *vf, int64_t b, int64_t e, int w)
{
    fin_ctx *f = vf;
    win *c = f->c;
    size_t n = (size_t)c->N[2], cstride = (size_t)c->ring * (size_t)c->slab;
    size_t esz = c->half ? sizeof(uint16_t) : sizeof(float);
    fin_scratch s = {malloc(((size_t)c->C + 3) * n * sizeof(float)), NULL, NULL, NULL, malloc(n * sizeof(int)),
                     malloc((size_t)c->C * sizeof(float *))};
    if (!s.ch || !s.bi || !s.chp) {   /* a few KB: treat as fatal like the pool's own allocations */
        fprintf(stderr, "segpipe: out of memory in the sliding window's argmax\n");
        abort();
    }
    s.l = s.ch + (size_t)c->C * n;
    s.best = s.l + n;
    s.ws = s.best + n;
    for (int64_t job = b; job < e; job++) {
        int64_t n0 = f->row0 + job / c->N[1], n1 = job % c->N[1];
        finish_row(f, &s, n0, n1);
        if (f->logits)
            continue;
        size_t base = (size_t)(n0 % c->ring) * (size_t)c->slab + (size_t)(n1 * c->N[2]);
        for (int k = 0; k < c->C; k++)
            memset((char *)c->acc + ((size_t)k * cstride + base) * esz, 0, n * esz);
        if (c->wsum)
            memset(c->wsum + base, 0, n * sizeof(float));
        if (c->wsum_h)
            memset(c->wsum_h + base, 0, n * sizeof(uint16_t));
    }
    free(s.ch);
    free(s.bi);
    free(s.chp);
}

static void finish(win *c, int64_t from, int64_t to, sp_pool *pool, float *logits)
{
    if (from < 0)
        from = 0;
    if (to > c->N[0])
        to = c->N[0];
    if (to <= from)
        return;
    fin_ctx f = {c, from, logits, c->N[0] * c->N[1] * c->N[2]};
    sp_pool_for(pool, (to - from) * c->N[1], 4, finish_rows, &f);
}

/* tiles in order, dim 0 outermost */
static void make_tiles(sp_tile *tiles, int64_t *const steps[3], const int ns[3])
{
    int nt = 0;
    for (int a = 0; a < ns[0]; a++)
        for (int b = 0; b < ns[1]; b++)
            for (int k = 0; k < ns[2]; k++, nt++) {
                tiles[nt].s[0] = steps[0][a];
                tiles[nt].s[1] = steps[1][b];
                tiles[nt].s[2] = steps[2][k];
            }
}

/* Where the window runs: on the GPU when the model's session does and the
 * kernels load. An fp16 model needs the GPU path (the host loops are fp32). */
static sp_status check_precision(sp_model *m, int *use_gpu)
{
    int n;
    const sp_io_info *in = sp_model_inputs(m, &n);
    int half = n > 0 && in[0].meta.dtype == SP_DT_F16;
    *use_gpu = sp_model_on_device(m) && sp_window_gpu_available();
    if (half && !*use_gpu)
        return sp_fail(SP_ERR_MODEL, "this model is fp16: it runs with --device cuda and the GPU window kernels "
                       "(%s); use --precision fp32 here", sp_model_on_device(m) ? sp_window_gpu_error()
                       : "not on a GPU");
    if (!half && n > 0 && in[0].meta.dtype != SP_DT_F32)
        return sp_fail(SP_ERR_MODEL, "the CT model's input must be float32 or float16, not %s",
                       sp_dtype_str(in[0].meta.dtype));
    return SP_OK;
}

size_t sp_window_memory(const sp_window_params *wp, const int64_t vdim[3], int keep_logits)
{
    int64_t N[3], P[3];
    for (int d = 0; d < 3; d++) {
        N[d] = vdim[wp->axes[d]];
        P[d] = wp->patch[d];
    }
    double C = wp->head_w ? wp->head_features : wp->num_classes;
    double B = wp->tile_batch > 0 ? wp->tile_batch : 1, psz = (double)(P[0] * P[1] * P[2]);
    double ring = keep_logits ? (double)N[0] : (double)(P[0] < N[0] ? P[0] : N[0]);
    double slab = (double)N[1] * (double)N[2];
    double Cin = wp->in_channels > 1 ? wp->in_channels : 1;
    double b = B * Cin * psz * 4 + B * C * psz * 4 + psz * 4;   /* input, output tiles, Gaussian */
    b += C * ring * slab * (wp->accum_fp16 ? 2 : 4);        /* the accumulator */
    if (keep_logits || wp->head_w || wp->accum_fp16)
        b += ring * slab * (wp->accum_fp16 ? 2 : 4);        /* the weight sum */
    return b < 1e18 ? (size_t)b : (size_t)1e18;
}

/* The window's geometry on the network's axes: sizes, strides, the padding
 * nnU-Net's pad_nd_image adds below (diff // 2), and each axis's steps
 * (caller frees steps[d]). */
static sp_status win_geometry(win *c, const int64_t vdim[3], const sp_window_params *wp, int64_t *steps[3],
                              int ns[3])
{
    int64_t vst[3] = {1, vdim[0], vdim[0] * vdim[1]};
    for (int d = 0; d < 3; d++) {
        c->N[d] = vdim[wp->axes[d]];
        c->vst[d] = vst[wp->axes[d]];
        c->lst[d] = vst[wp->axes[d]];
        c->P[d] = wp->patch[d];
        int64_t padded = c->N[d] > c->P[d] ? c->N[d] : c->P[d];
        c->pad[d] = (padded - c->N[d]) / 2;
        if (c->P[d] == 1) {   /* a 2D model's slices: each once, as nnU-Net's 2D slicers */
            ns[d] = (int)padded;
            if ((steps[d] = malloc((size_t)padded * sizeof **steps)))
                for (int64_t k = 0; k < padded; k++)
                    steps[d][k] = k;
            if (!steps[d])
                return sp_fail(SP_ERR_NOMEM, "sliding window: cannot allocate %lld steps", (long long)padded);
            continue;
        }
        ns[d] = sp_window_steps(padded, c->P[d], wp->step, NULL, 1 << 24);
        steps[d] = ns[d] > 0 ? malloc((size_t)ns[d] * sizeof **steps) : NULL;
        if (!steps[d] || sp_window_steps(padded, c->P[d], wp->step, steps[d], ns[d]) != ns[d])
            return sp_fail(SP_ERR_INPUT, "sliding window: cannot tile %lld voxels with patch %lld at step %g",
                           (long long)c->N[d], (long long)c->P[d], wp->step);
    }
    c->slab = c->N[1] * c->N[2];
    return SP_OK;
}

/* Every tile's origin, dim 0 outermost, within wp->max_tiles. */
static sp_status win_tiles(int64_t *const steps[3], const int ns[3], const sp_window_params *wp,
                           sp_tile **tiles, int *ntiles)
{
    int64_t n = (int64_t)ns[0] * ns[1] * ns[2];
    if (wp->max_tiles > 0 && n > wp->max_tiles)
        return sp_fail(SP_ERR_INPUT, "sliding window: %lld tiles (%dx%dx%d) are over the limit of %lld",
                       (long long)n, ns[0], ns[1], ns[2], (long long)wp->max_tiles);
    if (!(*tiles = malloc((size_t)n * sizeof **tiles)))
        return sp_fail(SP_ERR_NOMEM, "sliding window: cannot allocate %lld tiles", (long long)n);
    make_tiles(*tiles, steps, ns);
    *ntiles = (int)n;
    return SP_OK;
}

/* The accumulator options that do not go together (measured reasons). */
static sp_status win_options(const win *c, int use_gpu)
{
    if (use_gpu && c->regions)
        return sp_fail(SP_ERR_USAGE, "the GPU window kernels take an argmax: a region-based model runs with "
                       "--device cpu");
    if (use_gpu && c->Cin > 1)
        return sp_fail(SP_ERR_USAGE, "the GPU window kernels feed one input channel: a %d-channel model runs with "
                       "--device cpu", c->Cin);
    if (use_gpu && (c->head_w || c->half))
        return sp_fail(SP_ERR_USAGE, "on a GPU the window keeps the logits in device memory: a split head and "
                       "the fp16 accumulator are CPU options (use the unsplit package, or --device cpu)");
    if (c->half && c->head_w)   /* measured: rounded features, then W, flip labels inside the air too */
        return sp_fail(SP_ERR_USAGE, "--accumulator fp16 is for logits: a split head's features rounded to half "
                       "change labels far from any boundary (the split package's fp32 features take less memory "
                       "than half logits already)");
    if (c->half && !sp_window_half_available())
        return sp_fail(SP_ERR_USAGE, "the fp16 accumulator needs a CPU with F16C and AVX");
    return SP_OK;
}

/* compute_gaussian(dtype=torch.float16): the map rounded to half, then
 * its zeros replaced by its smallest non-zero value */
static void half_gauss(float *g, size_t n)
{
    float mn = INFINITY;
    for (size_t i = 0; i < n; i++) {
        g[i] = half_round(g[i]);
        if (g[i] > 0 && g[i] < mn)
            mn = g[i];
    }
    for (size_t i = 0; i < n; i++)
        if (g[i] == 0)
            g[i] = mn;
}

/* The host window's buffers: Gaussian, input and output tiles, the ring of
 * accumulated scores (the whole volume when the logits are kept) and the
 * weight sum. A split head's output tile is left in ORT's buffer
 * (borrowed): allocated when the graph ends, never beside the network's
 * activations. */
static sp_status win_buffers(win *c, const sp_window_params *wp, int B, int keep_logits)
{
    size_t psz = (size_t)(c->P[0] * c->P[1] * c->P[2]);
    c->gauss = sp_gaussian_map(c->P, wp->sigma_scale);
    c->in = sp_big_alloc((size_t)B * (size_t)c->Cin * psz * sizeof(float));
    if (!c->head_w || c->calls)
        c->out = sp_big_alloc((size_t)B * (size_t)c->C * psz * sizeof(float));
    c->ring = keep_logits ? c->N[0] : (c->P[0] < c->N[0] ? c->P[0] : c->N[0]);
    c->acc = sp_big_calloc((size_t)c->C * (size_t)c->ring * (size_t)c->slab,
                           c->half ? sizeof(uint16_t) : sizeof(float));
    int need_wsum = (keep_logits || c->head_w) && !c->half;
    if (need_wsum)
        c->wsum = sp_big_calloc((size_t)(c->ring * c->slab), sizeof(float));
    if (c->half)
        c->wsum_h = sp_big_calloc((size_t)(c->ring * c->slab), sizeof(uint16_t));
    if (c->gauss && c->half)   /* nnU-Net's torch.half Gaussian: rounded, its zeros the smallest non-zero */
        half_gauss((float *)c->gauss, psz);
    if (!c->gauss || !c->in || ((!c->head_w || c->calls) && !c->out) || !c->acc || (need_wsum && !c->wsum) ||
        (c->half && !c->wsum_h))
        return sp_fail(SP_ERR_NOMEM, "sliding window: cannot allocate buffers (%d classes, "
                       "ring %lldx%lldx%lld)", c->C, (long long)c->P[0], (long long)c->N[1], (long long)c->N[2]);
    return SP_OK;
}

/* One batch of nb tiles (c->batch): gathered, through the network, and
 * accumulated with the Gaussian weights. */
static sp_status win_batch(win *c, sp_model *m, int nb, sp_pool *pool, sp_timings *t)
{
    int borrow = c->head_w != NULL && !c->calls;
    double t0 = sp_now();
    c->nb = nb;
    sp_pool_for(pool, (int64_t)nb * c->Cin * c->P[0] * c->P[1], 8, gather_rows, c);
    double t1 = sp_now();
    sp_tensor in = {SP_DT_F32, 5, {nb, c->Cin, c->P[0], c->P[1], c->P[2]}, c->in};
    sp_tensor out = {SP_DT_F32, 5, {nb, c->C, c->P[0], c->P[1], c->P[2]}, borrow ? NULL : c->out};
    void *hold = NULL;
    sp_status st;
    if (c->calls && nb > 1)
        st = sp_window_run_calls(m, c->in, c->out, nb, c->Cin, c->C, c->P);
    else
        st = borrow ? sp_model_run_borrow(m, &in, 1, &out, 1, &hold) : sp_model_run(m, &in, 1, &out, 1);
    double t2 = sp_now();
    if (st)
        return st;
    if (borrow && (out.rank != 5 || out.shape[0] != nb || out.shape[1] != c->C || out.shape[2] != c->P[0] ||
                   out.shape[3] != c->P[1] || out.shape[4] != c->P[2])) {
        sp_model_outputs_release(hold);
        return sp_fail(SP_ERR_MODEL, "the network's output is not [%d, %d, %lld, %lld, %lld] features", nb, c->C,
                       (long long)c->P[0], (long long)c->P[1], (long long)c->P[2]);
    }
    if (borrow)
        c->out = out.data;
    sp_pool_for(pool, (int64_t)c->C * c->P[0], 1, accum_rows, c);
    if (borrow) {
        sp_model_outputs_release(hold);
        c->out = NULL;
    }
    sp_timings_add(t, "window", (t1 - t0) + (sp_now() - t2));
    sp_timings_add(t, "inference", t2 - t1);
    return SP_OK;
}

/* The tiles in order, B at a time (a batch never crosses a dim-0 step: the
 * ring holds one window); rows behind the window are finished as it moves. */
static sp_status win_loop(win *c, sp_model *m, const sp_tile *tiles, int ntiles, int B, float *logits,
                          sp_pool *pool, sp_timings *t, const sp_window_params *wp,
                          void (*progress)(const char *, int, int, void *), void *progress_user)
{
    if (progress)
        progress("inference", 0, ntiles, progress_user);
    int64_t finished = 0;   /* rows of dim 0 (network coords) already final */
    for (int i = 0; i < ntiles;) {
        if (wp->cancel && __atomic_load_n(wp->cancel, __ATOMIC_RELAXED))
            return sp_fail(SP_ERR_CANCELLED, "cancelled after %d of %d tiles", i, ntiles);
        int nb = 0;
        while (nb < B && i + nb < ntiles && tiles[i + nb].s[0] == tiles[i].s[0])
            nb++;
        if (!logits) {   /* rows before this window's first row are final */
            double t0 = sp_now();
            finish(c, finished, tiles[i].s[0] - c->pad[0], pool, NULL);
            if (tiles[i].s[0] - c->pad[0] > finished)
                finished = tiles[i].s[0] - c->pad[0];
            sp_timings_add(t, "window", sp_now() - t0);
        }
        c->batch = &tiles[i];
        sp_status st = win_batch(c, m, nb, pool, t);
        if (st)
            return st;
        i += nb;
        if (progress)
            progress("inference", i, ntiles, progress_user);
    }
    double t0 = sp_now();
    finish(c, finished, c->N[0], pool, logits);
    sp_timings_add(t, "window", sp_now() - t0);
    if (c->overflow)
        return sp_fail(SP_ERR_MODEL, "the fp16 accumulator overflowed (sums past 65504): use the fp32 accumulator");
    return SP_OK;
}

sp_status sp_window_run(sp_model *m, const float *vol, const int64_t vdim[3],
                        const sp_window_params *wp, uint16_t *labels, float *logits, sp_pool *pool,
                        sp_timings *t, void (*progress)(const char *, int, int, void *),
                        void *progress_user)
{
    win c;
    memset(&c, 0, sizeof c);
    int64_t *steps[3] = {NULL, NULL, NULL};
    int ns[3], ntiles = 0, use_gpu = 0, B = wp->tile_batch > 0 ? wp->tile_batch : 1;
    sp_tile *tiles = NULL;
    c.vol = vol;
    c.labels = labels;
    c.K = wp->num_classes;
    c.C = wp->head_w ? wp->head_features : wp->num_classes;
    c.head_w = wp->head_w;
    c.head_b = wp->head_b;
    c.regions = wp->region_order;
    c.half = wp->accum_fp16;
    c.Cin = wp->in_channels > 1 ? wp->in_channels : 1;
    c.nvox = vdim[0] * vdim[1] * vdim[2];
    sp_status st = win_geometry(&c, vdim, wp, steps, ns);
    if (!st)
        st = win_tiles(steps, ns, wp, &tiles, &ntiles);
    if (!st)
        st = check_precision(m, &use_gpu);
    if (!st)
        st = win_options(&c, use_gpu);
    if (!st && use_gpu && !logits) {
        sp_window_plan pl = {{c.N[0], c.N[1], c.N[2]}, {c.P[0], c.P[1], c.P[2]}, {c.pad[0], c.pad[1], c.pad[2]},
                             {c.vst[0], c.vst[1], c.vst[2]}, c.C, B, ntiles, tiles};
        st = sp_window_run_gpu(m, vol, &pl, wp, labels, t, progress, progress_user);
    } else if (!st) {
        /* CPU sessions only: a GPU without the window kernels keeps one batched call */
        c.calls = sp_window_calls_used(m, B);
        SP_INFO("sliding window: %d tiles of %lldx%lldx%lld, %d at a time%s", ntiles, (long long)c.P[0],
                (long long)c.P[1], (long long)c.P[2], B, B < 2 ? "" : c.calls ? " (concurrent calls)" : " (one call)");
        st = win_buffers(&c, wp, B, logits != NULL);
        if (!st)
            st = win_loop(&c, m, tiles, ntiles, B, logits, pool, t, wp, progress, progress_user);
    }
    for (int d = 0; d < 3; d++)
        free(steps[d]);
    free(tiles);
    free((void *)c.gauss);
    free(c.in);
    free(c.out);
    free(c.acc);
    free(c.wsum);
    free(c.wsum_h);
    return st;
}
