/*
 * gaussian.c — the Gaussian importance map of nnU-Net's sliding window
 * (nnunetv2/inference/sliding_window_prediction.py, compute_gaussian):
 * a separable Gaussian with sigma = patch size x sigma_scale (1/8), cut at
 * 4 sigma as scipy's gaussian_filter does, scaled so its centre is 10, and
 * its zeros replaced by its smallest non-zero value. Shared by the CPU
 * window (window.c) and the GPU window (window_gpu.c), which otherwise
 * do not call each other's internals.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>

typedef struct gauss_ctx {
    float *g;
    const double *k[3];
    int64_t p[3];
    double mx;
    double *wmin;            /* per worker: the smallest non-zero value */
    float mn;
} gauss_ctx;

/* planes [b, e) along axis 0: the product of the three kernels, centre 10 */
static void gauss_rows(void *vc, int64_t b, int64_t e, int w)
{
    gauss_ctx *c = vc;
    double mn = c->wmin[w];
    for (int64_t a = b; a < e; a++) {
        size_t i = (size_t)(a * c->p[1] * c->p[2]);
        for (int64_t y = 0; y < c->p[1]; y++)
            for (int64_t z = 0; z < c->p[2]; z++, i++) {
                double v = c->k[0][a] * c->k[1][y] * c->k[2][z] / (c->mx / 10.0);
                c->g[i] = (float)v;
                if (c->g[i] > 0 && c->g[i] < mn)
                    mn = c->g[i];
            }
    }
    c->wmin[w] = mn;
}

/* zeros (past 4 sigma) replaced by the smallest non-zero value */
static void gauss_fill(void *vc, int64_t b, int64_t e, int w)
{
    (void)w;
    gauss_ctx *c = vc;
    for (int64_t i = b; i < e; i++)
        if (c->g[i] == 0)
            c->g[i] = c->mn;
}

float *sp_gaussian_map(const int64_t patch[3], double sigma_scale)
{
    double *k[3];
    size_t n = (size_t)(patch[0] * patch[1] * patch[2]);
    float *g = malloc(n * sizeof *g);
    for (int d = 0; d < 3; d++) {
        k[d] = calloc((size_t)patch[d], sizeof(double));
        if (!k[d] || !g) {
            for (int j = 0; j <= d; j++)
                free(k[j]);
            free(g);
            return NULL;
        }
        double sigma = (double)patch[d] * sigma_scale;
        int64_t c = patch[d] / 2;
        int64_t r = (int64_t)(4.0 * sigma + 0.5);   /* scipy: truncate = 4 */
        double sum = 0;
        for (int64_t x = -r; x <= r; x++)
            sum += exp(-0.5 * (double)(x * x) / (sigma * sigma));
        for (int64_t p = 0; p < patch[d]; p++) {
            int64_t x = p - c;
            k[d][p] = (x >= -r && x <= r) ? exp(-0.5 * (double)(x * x) / (sigma * sigma)) / sum : 0;
        }
    }
    gauss_ctx c = {g, {k[0], k[1], k[2]}, {patch[0], patch[1], patch[2]},
                   k[0][patch[0] / 2] * k[1][patch[1] / 2] * k[2][patch[2] / 2], NULL, 0};
    sp_pool *pool = sp_default_pool();   /* 16.7 M values for a 256^3 patch: over the pool, each as before */
    int nw = sp_pool_size(pool);
    c.wmin = malloc((size_t)nw * sizeof *c.wmin);
    if (!c.wmin) {
        for (int d = 0; d < 3; d++)
            free(k[d]);
        free(g);
        return NULL;
    }
    for (int w = 0; w < nw; w++)
        c.wmin[w] = INFINITY;
    sp_pool_for(pool, patch[0], 1, gauss_rows, &c);
    double mn = INFINITY;
    for (int w = 0; w < nw; w++)
        mn = c.wmin[w] < mn ? c.wmin[w] : mn;
    free(c.wmin);
    c.mn = (float)mn;
    sp_pool_for(pool, (int64_t)n, 1 << 16, gauss_fill, &c);
    for (int d = 0; d < 3; d++)
        free(k[d]);
    return g;
}
