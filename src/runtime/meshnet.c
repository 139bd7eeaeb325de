/* meshnet.c — brainchop's MeshNet run natively on the CPU (docs/mri.md,
 * "Native MeshNet").
 *
 * Why: on a 256^3 T1 ONNX Runtime spends its time in the dilated Conv3d
 * layers (im2col + GEMM) and, for the GELU models, in GELU's decomposition
 * into five element-wise ops over the whole volume (docs/performance.md,
 * "brainchop's zoo"). A MeshNet is a plain chain: 3x3x3 convolutions with
 * padding == dilation, each followed by an optional per-channel
 * normalisation (GroupNorm with one group per channel, no affine ==
 * InstanceNorm) and ReLU / ELU / GELU (tanh), then a 1x1 classifier. This
 * runs that chain with meshconv.c's direct convolution, the normalisation
 * and activation fused into one pass, and the classifier fused with the
 * argmax (the 104-class logits of 256^3 voxels, 7 GB, are never stored).
 *
 * The weights come from meshnet.bin beside model.onnx (written by
 * tools/import/meshnet_bin.py from the same tensors as the ONNX graph):
 *   "SPMESH01", int32 n_layers, n_layers x int32[7] {cin, cout, kernel
 *   (3, or 1 for the last layer), dilation, norm, act (0 none, 1 relu,
 *   2 elu, 3 gelu-tanh), has_bias}, then per layer float32 weights
 *   [cout][cin][k][k][k] and bias [cout]; little-endian, nothing after. */
#include "meshnet.h"
#include "meshconv.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MN_MAX_LAYERS 256
#define MN_MAX_CH 512
#define MN_MAX_DIL 128
#define MN_MAX_FILE (256u << 20)

typedef struct {
    int cin, cout, k, dil, norm, act;
    const float *w, *b;   /* into blob; b NULL: no bias */
} mn_layer;

struct sp_meshnet {
    int n, cmax;
    mn_layer l[MN_MAX_LAYERS];
    float *blob;
};

static int32_t le32(const unsigned char *p) { return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24); }

/* Layer i's header checked: sizes bounded, the chain consistent (1 input
 * channel, cin == previous cout), 3x3x3 layers then one 1x1 classifier. */
static sp_status check_layer(const int32_t *h, int i, int n, int prev)
{
    int cin = h[0], cout = h[1], k = h[2], dil = h[3], norm = h[4], act = h[5], bias = h[6];
    int last = i == n - 1;
    if (cin < 1 || cin > MN_MAX_CH || cout < 1 || cout > MN_MAX_CH || cin != prev ||
        k != (last ? 1 : 3) || dil < 1 || dil > MN_MAX_DIL || (norm != 0 && norm != 1) || act < 0 ||
        act > 3 || (bias != 0 && bias != 1) || (last && (norm || act)) || (last && cout > 65535))
        return sp_fail(SP_ERR_MODEL, "meshnet.bin: layer %d is not a MeshNet layer (%d->%d channels, kernel %d, "
                       "dilation %d)", i, cin, cout, k, dil);
    return SP_OK;
}

/* Layers from the file's bytes (n bytes at p); weights copied to one blob. */
static sp_status parse(const unsigned char *p, size_t n, sp_meshnet *net)
{
    if (n < 12 || memcmp(p, "SPMESH01", 8))
        return sp_fail(SP_ERR_MODEL, "meshnet.bin: not a MeshNet weights file");
    int32_t nl = le32(p + 8);
    if (nl < 2 || nl > MN_MAX_LAYERS || n < 12 + (size_t)nl * 28)
        return sp_fail(SP_ERR_MODEL, "meshnet.bin: bad layer count");
    size_t floats = 0, off = 12 + (size_t)nl * 28;
    int prev = 1, bias[MN_MAX_LAYERS];
    for (int i = 0; i < nl; i++) {
        int32_t h[7];
        for (int f = 0; f < 7; f++)
            h[f] = le32(p + 12 + (size_t)i * 28 + (size_t)f * 4);
        sp_status st = check_layer(h, i, nl, prev);
        if (st)
            return st;
        prev = h[1];
        net->l[i] = (mn_layer){h[0], h[1], h[2], h[3], h[4], h[5], NULL, NULL};
        floats += (size_t)h[1] * h[0] * h[2] * h[2] * h[2] + (h[6] ? (size_t)h[1] : 0);
        bias[i] = h[6];
        if (h[1] > net->cmax && i < nl - 1)
            net->cmax = h[1];
    }
    if (n - off != floats * 4)
        return sp_fail(SP_ERR_MODEL, "meshnet.bin: %zu bytes of weights, the layers need %zu", n - off, floats * 4);
    if (!(net->blob = malloc(floats * 4 + 4)))
        return sp_fail(SP_ERR_NOMEM, "meshnet.bin: out of memory");
    for (size_t i = 0; i < floats; i++) {
        uint32_t u = (uint32_t)le32(p + off + i * 4);
        memcpy(&net->blob[i], &u, 4);
    }
    const float *q = net->blob;
    for (int i = 0; i < nl; i++) {
        mn_layer *l = &net->l[i];
        l->w = q;
        q += (size_t)l->cout * l->cin * l->k * l->k * l->k;
        if (bias[i]) {
            l->b = q;
            q += l->cout;
        }
    }
    net->n = nl;
    return SP_OK;
}

sp_status sp_meshnet_load(const char *path, sp_meshnet **out)
{
    *out = NULL;
    size_t n = 0;
    unsigned char *p = NULL;
    sp_status st = sp_read_file(path, MN_MAX_FILE, (void **)&p, &n);
    if (st)
        return st;
    sp_meshnet *net = calloc(1, sizeof *net);
    st = net ? parse(p, n, net) : sp_fail(SP_ERR_NOMEM, "meshnet: out of memory");
    free(p);
    if (st) {
        sp_meshnet_free(net);
        return st;
    }
    *out = net;
    return SP_OK;
}

void sp_meshnet_free(sp_meshnet *net)
{
    if (net)
        free(net->blob);
    free(net);
}

int sp_meshnet_classes(const sp_meshnet *net) { return net->l[net->n - 1].cout; }

/* ------------------------------------------------------------ element-wise */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MN_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define MN_CLONES
#endif
/* (-O2's vectoriser takes only loops without a remainder; these element-wise
 * loops need the dynamic cost model to be vectorised at all) */

/* tanh as a 13/6 rational function of x clamped to +-7.9 (the form of
 * Eigen's and MLAS's float tanh; within a few ulp), branch-free so that
 * the loops below vectorise. */
static inline float fast_tanh(float x)
{
    x = x > 7.90531110763549805f ? 7.90531110763549805f : x;
    x = x < -7.90531110763549805f ? -7.90531110763549805f : x;
    float x2 = x * x;
    float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p / q;
}

/* x[0..n) normalised ((x - mean) * inv; mean 0, inv 1 without a norm) and
 * activated in place, one pass. */
MN_CLONES static void activate(float *x, size_t n, float mean, float inv, int act)
{
    if (act == MN_RELU)
        for (size_t i = 0; i < n; i++) {
            float y = (x[i] - mean) * inv;
            x[i] = y > 0 ? y : 0.0f;
        }
    else if (act == MN_GELU)
        for (size_t i = 0; i < n; i++) {
            float y = (x[i] - mean) * inv;
            x[i] = 0.5f * y * (1.0f + fast_tanh(0.7978845608028654f * (y + 0.044715f * y * y * y)));
        }
    else if (act == MN_ELU)
        for (size_t i = 0; i < n; i++) {
            float y = (x[i] - mean) * inv;
            x[i] = y > 0 ? y : expm1f(y);
        }
    else
        for (size_t i = 0; i < n; i++)
            x[i] = (x[i] - mean) * inv;
}

/* ------------------------------------------------------------ passes */
/* Activations live as [C][D][H][pitch] rows with `margin` zeros on both
 * sides of each row's W voxels (margin: the largest dilation), which
 * meshconv reads in place; the passes below touch the W voxels only, so
 * the margins stay zero. */
typedef struct {
    const mn_layer *l;
    float *x;             /* activations */
    int64_t rows;         /* D*H */
    int w, pitch, margin;
    double *mean, *inv;   /* per channel */
    uint16_t *lab;        /* network order, dense */
    float *logits;        /* [K][D*H*W] or NULL */
} mn_pass;

/* Sum and sum of squares of x[0..n), in 16 float partial sums (lanes the
 * vectoriser can keep without reordering a single sum). */
MN_CLONES static void row_sums(const float *x, int n, float *s, float *s2)
{
    float a[16] = {0}, b[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            a[l] += x[i + l], b[l] += x[i + l] * x[i + l];
    for (; i < n; i++)
        a[0] += x[i], b[0] += x[i] * x[i];
    float fs = 0, fs2 = 0;
    for (int l = 0; l < 16; l++)
        fs += a[l], fs2 += b[l];
    *s = fs, *s2 = fs2;
}

/* Mean and 1/sqrt(var + 1e-5) of channels [c0, c1) (GroupNorm's biased variance). */
static void stats(void *ctx, int64_t c0, int64_t c1, int worker)
{
    (void)worker;
    mn_pass *p = ctx;
    for (int64_t c = c0; c < c1; c++) {
        double s = 0, s2 = 0;
        for (int64_t r = 0; r < p->rows; r++) {   /* float sums per row, in double across rows */
            float fs, fs2;
            row_sums(p->x + ((size_t)c * p->rows + r) * p->pitch + p->margin, p->w, &fs, &fs2);
            s += fs, s2 += fs2;
        }
        double n = (double)p->rows * p->w, m = s / n, v = s2 / n - m * m;
        p->mean[c] = m;
        p->inv[c] = 1.0 / sqrt((v > 0 ? v : 0) + 1e-5);
    }
}

/* Normalisation and activation of rows [a, b) (over channels x D*H). */
static void norm_act(void *ctx, int64_t a, int64_t b, int worker)
{
    (void)worker;
    mn_pass *p = ctx;
    for (int64_t r = a; r < b; r++) {
        size_t c = (size_t)(r / p->rows);
        activate(p->x + (size_t)r * p->pitch + p->margin, (size_t)p->w, p->l->norm ? (float)p->mean[c] : 0.0f,
                 p->l->norm ? (float)p->inv[c] : 1.0f, p->l->act);
    }
}

#define MN_CLS_CHUNK 512
/* The 1x1 classifier and its argmax over m voxels whose channel c is at f + c*cs. */
MN_CLONES static void classify_run(const mn_layer *l, const float *f, size_t cs, size_t m, uint16_t *lab,
                                   float *logits, size_t ls)
{
    float best[MN_CLS_CHUNK], z[MN_CLS_CHUNK];
    uint16_t arg[MN_CLS_CHUNK];
    for (int o = 0; o < l->cout; o++) {
        float bo = l->b ? l->b[o] : 0.0f;
        for (size_t i = 0; i < m; i++)
            z[i] = bo;
        for (int c = 0; c < l->cin; c++) {
            float w = l->w[(size_t)o * l->cin + c];
            const float *fc = f + (size_t)c * cs;
            for (size_t i = 0; i < m; i++)
                z[i] += w * fc[i];
        }
        for (size_t i = 0; i < m; i++) {
            int gt = o == 0 || z[i] > best[i];
            best[i] = gt ? z[i] : best[i];
            arg[i] = gt ? (uint16_t)o : arg[i];
        }
        if (logits)
            memcpy(logits + (size_t)o * ls, z, m * sizeof(float));
    }
    memcpy(lab, arg, m * sizeof(uint16_t));
}

/* The classifier over rows [a, b) of the volume. */
static void classify(void *ctx, int64_t a, int64_t b, int worker)
{
    (void)worker;
    mn_pass *p = ctx;
    size_t cs = (size_t)p->rows * p->pitch, n = (size_t)p->rows * p->w;
    for (int64_t r = a; r < b; r++)
        for (int x0 = 0; x0 < p->w; x0 += MN_CLS_CHUNK) {
            size_t m = p->w - x0 < MN_CLS_CHUNK ? (size_t)(p->w - x0) : MN_CLS_CHUNK, o = (size_t)r * p->w + x0;
            classify_run(p->l, p->x + (size_t)r * p->pitch + p->margin + x0, cs, m, p->lab + o,
                         p->logits ? p->logits + o : NULL, n);
        }
}

/* Element (i0, i1, i2) of the network tensor is vol[i0*st[0] + i1*st[1] + i2*st[2]]. */
static void strides(const int64_t vdim[3], const int axes[3], int64_t nd[3], int64_t st[3])
{
    int64_t vst[3] = {1, vdim[0], vdim[0] * vdim[1]};
    for (int d = 0; d < 3; d++)
        nd[d] = vdim[axes[d]], st[d] = vst[axes[d]];
}

/* Layers 0..n-2 (3x3x3 conv, norm, activation) from buffer a, ping-ponging
 * with b; *feat: the last one's output. */
static sp_status body(const sp_meshnet *net, const int64_t nd[3], int margin, sp_pool *pool,
                      const sp_meshnet_ctl *ctl, float *a, float *b, float **feat)
{
    int pitch = (int)nd[2] + 2 * margin;
    double mean[MN_MAX_CH], inv[MN_MAX_CH];
    for (int i = 0; i < net->n - 1; i++) {
        const mn_layer *l = &net->l[i];
        if (ctl && ctl->cancel && __atomic_load_n(ctl->cancel, __ATOMIC_RELAXED))
            return sp_fail(SP_ERR_CANCELLED, "cancelled after %d of %d layers", i, net->n);
        if (ctl && ctl->progress)
            ctl->progress("inference", i, net->n, ctl->progress_user);
        int fuse = !l->norm && l->act == MN_RELU;   /* ReLU in the convolution's store */
        sp_status st = sp_meshconv3d_rows(a, margin, pitch, l->cin, (int)nd[0], (int)nd[1], (int)nd[2], l->w, l->b,
                                          l->cout, l->dil, fuse, pool, b, margin, pitch);
        if (st)
            return st;
        mn_pass p = {.l = l, .x = b, .rows = nd[0] * nd[1], .w = (int)nd[2], .pitch = pitch, .margin = margin,
                     .mean = mean, .inv = inv};
        if (l->norm)
            sp_pool_for(pool, l->cout, 1, stats, &p);
        if (l->norm || (l->act && !fuse))
            sp_pool_for(pool, l->cout * p.rows, 64, norm_act, &p);
        float *t = a;
        a = b, b = t;
    }
    *feat = a;
    return SP_OK;
}

sp_status sp_meshnet_run(const sp_meshnet *net, const float *vol, const int64_t vdim[3], const int axes[3],
                         sp_pool *pool, const sp_meshnet_ctl *ctl, uint16_t *labels, float *logits)
{
    int64_t nd[3], st3[3];
    strides(vdim, axes, nd, st3);
    for (int d = 0; d < 3; d++)
        if (nd[d] < 1 || nd[d] > 65536)
            return sp_fail(SP_ERR_USAGE, "meshnet: bad volume size");
    int margin = 1;
    for (int i = 0; i < net->n - 1; i++)
        margin = net->l[i].dil > margin ? net->l[i].dil : margin;
    size_t rows = (size_t)(nd[0] * nd[1]), pitch = (size_t)nd[2] + 2 * (size_t)margin;
    size_t n = rows * (size_t)nd[2], cm = (size_t)(net->cmax > 1 ? net->cmax : 1);
    size_t floats = cm * rows * pitch + (size_t)sp_meshconv_slack(margin);
    float *a = sp_big_calloc(floats, sizeof(float)), *b = sp_big_calloc(floats, sizeof(float));
    uint16_t *lab = sp_big_alloc(n * sizeof *lab);
    sp_status st = SP_OK;
    if (!a || !b || !lab)
        st = sp_fail(SP_ERR_NOMEM, "meshnet: cannot allocate 2 x %zu channels of %zu voxels", cm, n);
    float *feat = NULL;
    if (!st) {
        for (int64_t i0 = 0; i0 < nd[0]; i0++)   /* the input in network order, rows with margins */
            for (int64_t i1 = 0; i1 < nd[1]; i1++) {
                float *row = a + (size_t)(i0 * nd[1] + i1) * pitch + margin;
                for (int64_t i2 = 0; i2 < nd[2]; i2++)
                    row[i2] = vol[i0 * st3[0] + i1 * st3[1] + i2 * st3[2]];
            }
        st = body(net, nd, margin, pool, ctl, a, b, &feat);
    }
    if (!st) {
        mn_pass p = {.l = &net->l[net->n - 1], .x = feat, .rows = (int64_t)rows, .w = (int)nd[2],
                     .pitch = (int)pitch, .margin = margin, .lab = lab, .logits = logits};
        sp_pool_for(pool, (int64_t)rows, 16, classify, &p);
        if (ctl && ctl->progress)
            ctl->progress("inference", net->n, net->n, ctl->progress_user);
        size_t i = 0;
        for (int64_t i0 = 0; i0 < nd[0]; i0++)
            for (int64_t i1 = 0; i1 < nd[1]; i1++)
                for (int64_t i2 = 0; i2 < nd[2]; i2++)
                    labels[i0 * st3[0] + i1 * st3[1] + i2 * st3[2]] = lab[i++];
    }
    free(a);
    free(b);
    free(lab);
    return st;
}
