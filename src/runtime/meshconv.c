/* meshconv.c — a direct dilated 3x3x3 convolution for brainchop's MeshNet.
 *
 * Why: MeshNet layers are Conv3d with few channels (5..30), kernel 3, zero
 * padding == dilation (1..16) on a 256^3 volume. ONNX Runtime's CPU Conv
 * runs them as im2col + GEMM (Cin*27 values copied per voxel before each
 * GEMM); this computes them directly: for each output row (z, y) it takes
 * the 9 dilated input rows of every input channel in place (rows outside
 * the volume: one shared row of zeros; along x the input carries a margin
 * of zeros at least the dilation wide, so no row is copied), then
 * accumulates W_tap (a block of output channels) times the shifted rows
 * over the 27 taps in registers, a block of output channels by a few
 * vectors of x at a time. The pool's threads take output planes (z).
 *
 * Vector code: GCC vector extensions, one body (meshconv_body.h) compiled
 * three times: 16 lanes with AVX-512F, 8 with AVX2+FMA, 4 generic (SSE2 on
 * any x86-64, NEON or scalar elsewhere), picked at run time on x86-64
 * (__builtin_cpu_supports); other architectures build the generic one only.
 *
 * Layout: input [Cin][D][H][pitch] with x at margin + x, weights
 * [Cout][Cin][3][3][3] (ONNX and PyTorch order), bias [Cout] or NULL,
 * output likewise [Cout][D][H][pitch'] with its own margin, float32. */
#include "meshconv.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define COB_MAX 8        /* output channels per register tile */
#define MC_XV_MAX 4      /* vectors of x per register tile */
#define MC_MAX_CH 4096   /* channels, either side */
#define MC_MAX_DIM 65536 /* voxels along an axis */

typedef struct mc_job mc_job;
typedef void (*mc_row_fn)(const mc_job *j, const float *const *rows, float *out);
struct mc_job {
    const float *in, *bias, *zero;   /* zero: a row of zeros for rows outside the volume */
    float *out;
    float *wt;                /* [Cin][27][coutp], zero-padded output channels */
    int cin, cout, coutp, cob, d, D, H, W, act;
    int im, ip, om, op;       /* margins and pitches of input and output rows */
    int wr;                   /* output row length, x rounded up to a tile, plus a tile */
    mc_row_fn row;
    float **bufs;             /* per pool worker: Coutp output rows, then 9*Cin row pointers */
};

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MC_VL 16
#define MC_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define MC_SET1(x) _mm512_set1_ps(x)
#ifndef MC_XV512
#define MC_XV512(cob) ((cob) <= 6 ? 4 : 3)   /* 32 registers */
#endif
#define MC_XV(cob) MC_XV512(cob)
#define MC_NAME(x) x##_avx512
#define MC_ATTR __attribute__((target("avx512f,fma")))
#include "meshconv_body.h"
#define MC_VL 8
#define MC_XV(cob) ((cob) <= 4 ? 3 : 2)   /* 16 registers */
#define MC_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define MC_SET1(x) _mm256_set1_ps(x)
#define MC_NAME(x) x##_avx2
#define MC_ATTR __attribute__((target("avx2,fma")))
#include "meshconv_body.h"
#endif
#define MC_VL 4
#define MC_XV(cob) 2
#define MC_FMA(a, b, c) ((a) * (b) + (c))
#define MC_SET1(x) ((MC_NAME(vt)){x, x, x, x})
#define MC_NAME(x) x##_generic
#define MC_ATTR
#include "meshconv_body.h"

/* The body this CPU runs and its tile width in floats (lanes * vectors).
 * SEGPIPE_MESHCONV_ISA=avx2|generic caps it (tests of every body on one machine). */
static mc_row_fn pick(int *tile, const char **isa)
{
#if defined(__x86_64__) || defined(__i386__)
    const char *cap = getenv("SEGPIPE_MESHCONV_ISA");
    int max = cap && !strcmp(cap, "generic") ? 0 : cap && !strcmp(cap, "avx2") ? 1 : 2;
    __builtin_cpu_init();
    if (max >= 2 && __builtin_cpu_supports("avx512f")) {
        *tile = 16 * MC_XV_MAX, *isa = "avx512";
        return row_avx512;
    }
    if (max >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *tile = 8 * MC_XV_MAX, *isa = "avx2";
        return row_avx2;
    }
#endif
    *tile = 4 * MC_XV_MAX, *isa = "generic";
    return row_generic;
}

const char *sp_meshconv_isa(void)
{
    int t;
    const char *isa;
    pick(&t, &isa);
    return isa;
}

/* Output planes [z0, z1) on pool worker `worker` (its own buffers). */
static void planes(void *ctx, int64_t z0, int64_t z1, int worker)
{
    mc_job *j = ctx;
    float *orow = j->bufs[worker];
    const float **rows = (const float **)(orow + (size_t)j->coutp * j->wr);
    size_t ipl = (size_t)j->H * j->ip, ivol = ipl * j->D, opl = (size_t)j->H * j->op, ovol = opl * j->D;
    for (int64_t z = z0; z < z1; z++)
        for (int y = 0; y < j->H; y++) {
            for (int t = 0; t < 9; t++) {
                int zz = (int)z + (t / 3 - 1) * j->d, yy = y + (t % 3 - 1) * j->d;
                int in = zz >= 0 && zz < j->D && yy >= 0 && yy < j->H;
                for (int ci = 0; ci < j->cin; ci++)
                    rows[ci * 9 + t] = in ? j->in + ci * ivol + (size_t)zz * ipl + (size_t)yy * j->ip + j->im - j->d
                                          : j->zero;
            }
            j->row(j, rows, orow);
            for (int co = 0; co < j->cout; co++)
                memcpy(j->out + co * ovol + (size_t)z * opl + (size_t)y * j->op + j->om, orow + (size_t)co * j->wr,
                       sizeof(float) * j->W);
        }
}

/* Output channels per tile: the size <= 8 that wastes the fewest padded
 * channels (the larger on a tie). */
static int block_size(int cout)
{
    int best = COB_MAX, waste = 1 << 30;
    for (int b = COB_MAX; b >= 1; b--) {
        int w = (cout + b - 1) / b * b - cout;
        if (w < waste)
            best = b, waste = w;
    }
    return best;
}

int sp_meshconv_slack(int dil)
{
    int tile;
    const char *isa;
    pick(&tile, &isa);
    return tile + 2 * dil;
}

sp_status sp_meshconv3d_rows(const float *in, int in_margin, int in_pitch, int cin, int D, int H, int W,
                             const float *w, const float *bias, int cout, int dil, int relu, sp_pool *pool,
                             float *out, int out_margin, int out_pitch)
{
    if (!in || !w || !out || cin < 1 || cout < 1 || cin > MC_MAX_CH || cout > MC_MAX_CH || D < 1 || H < 1 ||
        W < 1 || D > MC_MAX_DIM || H > MC_MAX_DIM || W > MC_MAX_DIM || dil < 1 || dil > MC_MAX_DIM ||
        in_margin < dil || in_pitch < W + 2 * in_margin || out_margin < 0 || out_pitch < W + out_margin)
        return sp_fail(SP_ERR_USAGE, "meshconv: bad sizes (%d->%d channels, %dx%dx%d, dilation %d)", cin, cout,
                       D, H, W, dil);
    mc_job j = {.in = in, .bias = bias, .out = out, .cin = cin, .cout = cout, .d = dil, .D = D, .H = H,
                .W = W, .act = relu != 0, .im = in_margin, .ip = in_pitch, .om = out_margin, .op = out_pitch};
    const char *isa;
    int tile;
    j.row = pick(&tile, &isa);
    j.cob = block_size(cout);
    j.coutp = (cout + j.cob - 1) / j.cob * j.cob;
    j.wr = (W + tile - 1) / tile * tile + tile;   /* any tile starting below W ends inside */
    j.wt = calloc((size_t)cin * 27 * j.coutp, sizeof(float));
    float *zero = calloc((size_t)j.wr + 2 * (size_t)dil, sizeof(float));
    j.zero = zero;
    int nw = sp_pool_size(pool);
    j.bufs = calloc((size_t)nw, sizeof *j.bufs);
    sp_status st = j.wt && zero && j.bufs ? SP_OK : SP_ERR_NOMEM;
    for (int co = 0; !st && co < cout; co++)
        for (int ci = 0; ci < cin; ci++)
            for (int t = 0; t < 27; t++)
                j.wt[((size_t)ci * 27 + t) * j.coutp + co] = w[((size_t)co * cin + ci) * 27 + t];
    size_t words = (size_t)j.coutp * j.wr + ((size_t)cin * 9 * sizeof(float *) + sizeof(float) - 1) / sizeof(float);
    for (int i = 0; !st && i < nw; i++)
        if (!(j.bufs[i] = malloc(sizeof(float) * words)))
            st = SP_ERR_NOMEM;
    if (!st)
        sp_pool_for(pool, D, 1, planes, &j);
    for (int i = 0; j.bufs && i < nw; i++)
        free(j.bufs[i]);
    free(j.bufs);
    free(j.wt);
    free(zero);
    return st ? sp_fail(st, "meshconv: out of memory") : SP_OK;
}

sp_status sp_meshconv3d(const float *in, int cin, int D, int H, int W, const float *w, const float *bias,
                        int cout, int dil, int relu, sp_pool *pool, float *out)
{
    if (!in || cin < 1 || cin > MC_MAX_CH || D < 1 || H < 1 || W < 1 || D > MC_MAX_DIM || H > MC_MAX_DIM ||
        W > MC_MAX_DIM || dil < 1 || dil > MC_MAX_DIM)
        return sp_fail(SP_ERR_USAGE, "meshconv: bad sizes (%d channels, %dx%dx%d, dilation %d)", cin, D, H, W, dil);
    size_t pitch = (size_t)W + 2 * (size_t)dil, rows = (size_t)cin * D * H;
    float *pad = calloc(rows * pitch + (size_t)sp_meshconv_slack(dil), sizeof(float));
    if (!pad)
        return sp_fail(SP_ERR_NOMEM, "meshconv: out of memory");
    for (size_t r = 0; r < rows; r++)
        memcpy(pad + r * pitch + dil, in + r * W, sizeof(float) * W);
    sp_status st = sp_meshconv3d_rows(pad, dil, (int)pitch, cin, D, H, W, w, bias, cout, dil, relu, pool, out, 0, W);
    free(pad);
    return st;
}
