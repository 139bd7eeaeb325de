/*
 * preview.c — a picture to check a CT segmentation at a glance: axial,
 * coronal and sagittal slices through the centre of the labelled region in
 * the canonical (RAS+) frame, shown in radiological convention (the
 * patient's right on the image's left, anterior and superior up), a soft
 * tissue window (level 40, width 400 HU), the labels overlaid in their
 * colours, and a legend of the structures present. Slices are sampled at
 * square pixels (nearest voxel), the largest extent drawn 320 px.
 */
#include "pipeline.h"
#include "font_data.h"
#include "../io/encode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PANEL 320
#define GAP 8
#define ROW 16

void sp_label_rgb(int label, uint8_t rgb[3])
{
    double h = fmod(label * 0.618033988749895, 1.0) * 6, f = h - floor(h);
    double v = 0.95, p = v * 0.1, q = v * (1 - 0.9 * f), t = v * (1 - 0.9 * (1 - f));
    const double tab[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
    for (int c = 0; c < 3; c++)
        rgb[c] = (uint8_t)lround(255 * tab[(int)h % 6][c]);
}

typedef struct view {
    const sp_volume *ct;
    const uint16_t *labels;
    sp_ornt o;
    int64_t cdim[3];          /* canonical dims */
    double cs[3];             /* canonical spacing */
    uint8_t *img;
    int W, H;
} view;

/* the input voxel of canonical coordinates c */
static size_t voxel(const view *v, const int64_t c[3])
{
    int64_t in[3];
    for (int j = 0; j < 3; j++) {
        int a = v->o.ax[j];
        in[a] = v->o.fl[j] ? v->ct->g.dim[a] - 1 - c[j] : c[j];
    }
    return (size_t)(in[0] + v->ct->g.dim[0] * (in[1] + v->ct->g.dim[1] * in[2]));
}

/* One panel at (x0, y0): canonical axes u (columns, drawn reversed when
 * flip_u) and w (rows, top = high), slice at index `at` along the third. */
static void panel(view *v, int x0, int y0, int u, int w, int flip_u, int third, int64_t at, double mm_px)
{
    int pw = (int)fmax(1, floor(v->cdim[u] * v->cs[u] / mm_px)), ph = (int)fmax(1, floor(v->cdim[w] * v->cs[w] / mm_px));
    for (int y = 0; y < ph && y0 + y < v->H; y++)
        for (int x = 0; x < pw && x0 + x < v->W; x++) {
            int64_t c[3];
            int64_t cu = (int64_t)((x + 0.5) * mm_px / v->cs[u]), cw = (int64_t)((y + 0.5) * mm_px / v->cs[w]);
            c[u] = flip_u ? v->cdim[u] - 1 - cu : cu;
            c[w] = v->cdim[w] - 1 - cw;
            c[third] = at;
            for (int k = 0; k < 3; k++)
                c[k] = c[k] < 0 ? 0 : c[k] >= v->cdim[k] ? v->cdim[k] - 1 : c[k];
            size_t i = voxel(v, c);
            double g = (v->ct->data[i] - (40 - 200)) / 400.0;
            uint8_t grey = (uint8_t)lround(255 * fmin(1, fmax(0, isfinite(g) ? g : 0)));
            uint8_t *px = v->img + 3 * ((size_t)(y0 + y) * v->W + x0 + x), rgb[3] = {grey, grey, grey};
            if (v->labels[i]) {
                uint8_t lc[3];
                sp_label_rgb(v->labels[i], lc);
                for (int k = 0; k < 3; k++)
                    rgb[k] = (uint8_t)((rgb[k] * 5 + lc[k] * 6) / 11);
            }
            memcpy(px, rgb, 3);
        }
}

static void text(view *v, int x0, int y0, const char *s)
{
    for (; *s && x0 + SP_FONT_W <= v->W; s++, x0 += SP_FONT_W) {
        int c = (unsigned char)*s;
        const unsigned char *gl = sp_font[c >= 32 && c < 127 ? c - 32 : '?' - 32];
        for (int y = 0; y < SP_FONT_H && y0 + y < v->H; y++)
            for (int x = 0; x < SP_FONT_W; x++) {
                uint8_t *px = v->img + 3 * ((size_t)(y0 + y) * v->W + x0 + x);
                for (int k = 0; k < 3; k++)
                    px[k] = (uint8_t)((px[k] * (255 - gl[y * SP_FONT_W + x]) + 230 * gl[y * SP_FONT_W + x]) / 255);
            }
    }
}

/* One legend line at (x, y): a swatch of colour `label`, then the text. */
static void legend_row(view *v, int x, int y, int label, const char *line)
{
    uint8_t rgb[3];
    sp_label_rgb(label, rgb);
    for (int yy = 2; yy < ROW - 3 && y + yy < v->H; yy++)
        for (int xx = 0; xx < 12 && x + xx < v->W; xx++)
            memcpy(v->img + 3 * ((size_t)(y + yy) * v->W + x + xx), rgb, 3);
    text(v, x + 16, y + 1, line);
}

/* centre of the labelled voxels in canonical coordinates (or the middle) */
static void centre(const view *v, int64_t out[3], int64_t *present, int n)
{
    double s[3] = {0}, cnt = 0;
    int64_t c[3];
    for (c[2] = 0; c[2] < v->cdim[2]; c[2]++)
        for (c[1] = 0; c[1] < v->cdim[1]; c[1]++)
            for (c[0] = 0; c[0] < v->cdim[0]; c[0]++) {
                uint16_t l = v->labels[voxel(v, c)];
                if (!l)
                    continue;
                if (l < n)
                    present[l]++;
                for (int k = 0; k < 3; k++)
                    s[k] += (double)c[k];
                cnt++;
            }
    for (int k = 0; k < 3; k++)
        out[k] = cnt > 0 ? (int64_t)lround(s[k] / cnt) : v->cdim[k] / 2;
}

sp_status sp_preview_ct_png(const char *path, const sp_volume *ct, const uint16_t *labels,
                            const char *const *names, int n)
{
    view v;
    memset(&v, 0, sizeof v);
    v.ct = ct;
    v.labels = labels;
    sp_status st = sp_ornt_to_canonical(ct->g.affine, &v.o);
    if (st)
        return st;
    sp_ornt_dims(&v.o, ct->g.dim, v.cdim);
    double ext = 0;
    for (int j = 0; j < 3; j++) {
        v.cs[j] = ct->g.spacing[v.o.ax[j]];
        ext = fmax(ext, v.cdim[j] * v.cs[j]);
    }
    double mm_px = ext / PANEL;
    int pw[3], ph[3];
    const int U[3] = {0, 0, 1}, Wd[3] = {1, 2, 2};   /* axial (x, y), coronal (x, z), sagittal (y, z) */
    int width = GAP, height = 0;
    for (int p = 0; p < 3; p++) {
        pw[p] = (int)fmax(1, floor(v.cdim[U[p]] * v.cs[U[p]] / mm_px));
        ph[p] = (int)fmax(1, floor(v.cdim[Wd[p]] * v.cs[Wd[p]] / mm_px));
        width += pw[p] + GAP;
        height = ph[p] > height ? ph[p] : height;
    }
    int64_t *present = calloc((size_t)(n > 1 ? n : 1), sizeof *present), c[3];
    if (!present)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    centre(&v, c, present, n);
    int rows = 0, longest = 0;
    for (int l = 1; l < n; l++)
        if (present[l]) {
            rows++;
            int len = (int)strlen(names && names[l] ? names[l] : "?") + 6;
            longest = len > longest ? len : longest;
        }
    int legend_w = longest * SP_FONT_W + 24;
    v.W = width + legend_w;
    v.H = (height > rows * ROW ? height : rows * ROW) + 2 * GAP;
    v.img = calloc((size_t)v.W * v.H, 3);
    if (!v.img) {
        free(present);
        return sp_fail(SP_ERR_NOMEM, "preview: out of memory");
    }
    int x = GAP;
    const int third[3] = {2, 1, 0};
    for (int p = 0; p < 3; p++) {
        panel(&v, x, GAP, U[p], Wd[p], p < 2, third[p], c[third[p]], mm_px);
        x += pw[p] + GAP;
    }
    int y = GAP;
    for (int l = 1; l < n && y + ROW <= v.H; l++) {
        if (!present[l])
            continue;
        char line[96];
        snprintf(line, sizeof line, "%3d %s", l, names && names[l] ? names[l] : "?");
        legend_row(&v, x, y, l, line);
        y += ROW;
    }
    void *png = NULL;
    size_t size = 0;
    st = sp_png_encode(v.img, v.W, v.H, 3, &png, &size);
    if (!st)
        st = sp_write_file_atomic(path, png, size);
    free(png);
    free(v.img);
    free(present);
    return st;
}

/* ------------------------------------------------------------------ photos */

sp_status sp_preview_masks_png(const char *path, const sp_image *img, const sp_masks_result *r)
{
    int ow = r->width, oh = r->height, longest = 0;
    double k = fmax(ow, oh) > 1024 ? 1024.0 / fmax(ow, oh) : 1.0;   /* at most 1024 px */
    int pw = (int)fmax(1, floor(ow * k)), ph = (int)fmax(1, floor(oh * k));
    for (int m = 0; m < r->n_masks; m++) {
        int len = (int)strlen(r->masks[m].name) + 10;
        longest = len > longest ? len : longest;
    }
    view v;
    memset(&v, 0, sizeof v);
    v.W = pw + 2 * GAP + longest * SP_FONT_W + 24;
    v.H = (ph > r->n_masks * ROW ? ph : r->n_masks * ROW) + 2 * GAP;
    if (!(v.img = calloc((size_t)v.W * v.H, 3)))
        return sp_fail(SP_ERR_NOMEM, "preview: out of memory");
    for (int y = 0; y < ph; y++)
        for (int x = 0; x < pw; x++) {
            int mx = (int)((x + 0.5) / k), my = (int)((y + 0.5) / k);   /* mask pixel */
            mx = mx < ow ? mx : ow - 1;
            my = my < oh ? my : oh - 1;
            int ix = (int)((mx + 0.5) * img->width / ow), iy = (int)((my + 0.5) * img->height / oh);
            uint8_t *px = v.img + 3 * ((size_t)(GAP + y) * v.W + GAP + x);
            memcpy(px, img->rgb + 3 * ((size_t)iy * img->width + ix), 3);
            for (int m = 0; m < r->n_masks; m++)
                if (r->masks[m].pixels[(size_t)my * ow + mx]) {
                    uint8_t c[3];
                    sp_label_rgb(m + 1, c);
                    for (int q = 0; q < 3; q++)
                        px[q] = (uint8_t)((px[q] + c[q]) / 2);
                }
        }
    for (int m = 0, y = GAP; m < r->n_masks; m++, y += ROW) {
        char line[96];
        snprintf(line, sizeof line, "%s %5.1f%%", r->masks[m].name, 100 * r->masks[m].area_fraction);
        legend_row(&v, pw + 2 * GAP, y, m + 1, line);
    }
    void *png = NULL;
    size_t size = 0;
    sp_status st = sp_png_encode(v.img, v.W, v.H, 3, &png, &size);
    if (!st)
        st = sp_write_file_atomic(path, png, size);
    free(png);
    free(v.img);
    return st;
}
