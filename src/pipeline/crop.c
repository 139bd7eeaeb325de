/*
 * crop.c — nnU-Net's crop to the non-zero region and its mask
 * (nnunetv2/preprocessing/cropping/cropping.py, crop_to_nonzero; and
 * ZScoreNormalization with use_mask_for_norm). nnU-Net predicts only
 * inside the bounding box of the voxels that are non-zero in any channel
 * (label 0 outside), which moves the sliding window's tiles when a border
 * is all zeros (skull-stripped MRI); its masked z-score takes the mean and
 * standard deviation over that non-zero mask with its holes filled
 * (scipy's binary_fill_holes: background not 6-connected to the border)
 * and normalises only the voxels inside.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* the bounding box [lo, hi) of voxels non-zero in any of the n volumes;
 * 0 when some voxel is non-zero, else -1 (nothing to crop to) */
int sp_nonzero_box(sp_volume *const *v, int n, int64_t lo[3], int64_t hi[3])
{
    const int64_t *d = v[0]->g.dim;
    for (int a = 0; a < 3; a++)
        lo[a] = d[a], hi[a] = 0;
    for (int64_t k = 0; k < d[2]; k++)
        for (int64_t j = 0; j < d[1]; j++)
            for (int64_t i = 0; i < d[0]; i++) {
                size_t at = (size_t)((k * d[1] + j) * d[0] + i);
                int nz = 0;
                for (int q = 0; q < n && !nz; q++)
                    nz = v[q]->data[at] != 0;
                if (!nz)
                    continue;
                int64_t x[3] = {i, j, k};
                for (int a = 0; a < 3; a++) {
                    lo[a] = x[a] < lo[a] ? x[a] : lo[a];
                    hi[a] = x[a] + 1 > hi[a] ? x[a] + 1 : hi[a];
                }
            }
    return hi[0] > 0 ? 0 : -1;
}

/* a copy of v's box [lo, hi): voxels and a geometry whose affine maps the
 * box's voxel 0 to where v's voxel lo is (NULL: out of memory) */
sp_volume *sp_volume_crop(const sp_volume *v, const int64_t lo[3], const int64_t hi[3])
{
    sp_geom g = v->g;
    for (int a = 0; a < 3; a++)
        g.dim[a] = hi[a] - lo[a];
    for (int r = 0; r < 3; r++)
        for (int a = 0; a < 3; a++)
            g.affine[r][3] += v->g.affine[r][a] * (double)lo[a];
    sp_volume *c = sp_volume_alloc(&g);
    if (!c)
        return NULL;
    for (int64_t k = 0; k < g.dim[2]; k++)
        for (int64_t j = 0; j < g.dim[1]; j++)
            memcpy(c->data + (size_t)((k * g.dim[1] + j) * g.dim[0]),
                   v->data + (size_t)(((k + lo[2]) * v->g.dim[1] + j + lo[1]) * v->g.dim[0] + lo[0]),
                   (size_t)g.dim[0] * sizeof(float));
    c->file_dtype = v->file_dtype;
    sp_volume_scan(c);
    return c;
}

/* mask (dims d, i fastest, 0/1): background voxels not 6-connected to the
 * border become 1 (binary_fill_holes); 0, or -1 out of memory */
int sp_fill_holes(uint8_t *mask, const int64_t d[3])
{
    size_t n = (size_t)(d[0] * d[1] * d[2]), top = 0;
    size_t *stack = malloc(n * sizeof *stack);
    if (!stack)
        return -1;
    /* 2: background reached from the border */
    for (int64_t k = 0; k < d[2]; k++)
        for (int64_t j = 0; j < d[1]; j++)
            for (int64_t i = 0; i < d[0]; i++) {
                size_t at = (size_t)((k * d[1] + j) * d[0] + i);
                int border = !i || !j || !k || i == d[0] - 1 || j == d[1] - 1 || k == d[2] - 1;
                if (border && !mask[at])
                    mask[at] = 2, stack[top++] = at;
            }
    int64_t step[3] = {1, d[0], d[0] * d[1]};
    while (top) {
        size_t at = stack[--top];
        int64_t x[3] = {(int64_t)(at % (size_t)d[0]), (int64_t)(at / (size_t)d[0] % (size_t)d[1]),
                        (int64_t)(at / (size_t)(d[0] * d[1]))};
        for (int a = 0; a < 3; a++)
            for (int s = -1; s <= 1; s += 2) {
                if (x[a] + s < 0 || x[a] + s >= d[a])
                    continue;
                size_t nb = (size_t)((int64_t)at + s * step[a]);
                if (!mask[nb])
                    mask[nb] = 2, stack[top++] = nb;
            }
    }
    free(stack);
    for (size_t i = 0; i < n; i++)
        mask[i] = mask[i] != 2;
    return 0;
}

/* ZScoreNormalization with a mask: mean and standard deviation over the
 * mask's voxels (float32 data, sums in double), those voxels set to
 * (x - mean) / max(std, 1e-8), the others left as they are */
void sp_zscore_masked(float *x, const uint8_t *mask, size_t n)
{
    double s = 0, ss = 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (mask[i])
            s += x[i], m++;
    if (!m)
        return;
    double mean = s / (double)m;
    for (size_t i = 0; i < n; i++)
        if (mask[i])
            ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    double sd = sqrt(ss / (double)m);
    float fm = (float)mean, inv = (float)(1.0 / fmax(sd, 1e-8));
    for (size_t i = 0; i < n; i++)
        if (mask[i])
            x[i] = (x[i] - fm) * inv;
}
