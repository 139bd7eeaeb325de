/*
 * image.c — photo decoding for the masks pipeline: JPEG (libjpeg-turbo, with
 * its scaled decoding so a huge photo never needs a full-size buffer), PNG
 * (libpng's simplified API), WebP (libwebp), HEIC/HEIF (libheif, which
 * applies the file's rotation itself), and the JPEG EXIF Orientation tag, read with a
 * bounds-checked parser of the JPEG's APP1 segment and applied so the result
 * is upright.
 *
 * Limits come first: dimensions are read from the header and checked
 * against max_pixels before any pixel buffer exists. libjpeg warnings
 * (premature end of data, corrupt segments) are treated as errors, so a
 * truncated file is refused instead of returned half grey.
 */
#include "../core/core.h"
#include "image.h"

#include <jpeglib.h>
#ifndef SP_NO_HEIF
#include <libheif/heif.h>
#endif
#include <png.h>
#include <webp/decode.h>
#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_PIXELS 50000000ull

sp_image_params sp_image_default_params(void)
{
    sp_image_params p = {DEFAULT_MAX_PIXELS, 0};
    return p;
}

void sp_image_free(sp_image *img)
{
    if (img) {
        free(img->rgb);
        free(img);
    }
}

sp_status sp_image_from_rgb(const uint8_t *rgb, int width, int height, sp_image **out)
{
    *out = NULL;
    if (!rgb || width <= 0 || height <= 0 || (uint64_t)width * (uint64_t)height > DEFAULT_MAX_PIXELS)
        return sp_fail(SP_ERR_INPUT, "image from memory: bad size %dx%d (at most %llu pixels) or no pixels",
                       width, height, (unsigned long long)DEFAULT_MAX_PIXELS);
    sp_image *img = calloc(1, sizeof *img);
    size_t n = (size_t)width * (size_t)height * 3;
    if (img)
        img->rgb = malloc(n);
    if (!img || !img->rgb) {
        sp_image_free(img);
        return sp_fail(SP_ERR_NOMEM, "image from memory: out of memory");
    }
    memcpy(img->rgb, rgb, n);
    img->width = img->out_width = img->file_width = width;
    img->height = img->out_height = img->file_height = height;
    img->orientation = 1;
    img->scale_denom = 1;
    img->format = "memory";
    *out = img;
    return SP_OK;
}

/* ------------------------------------------------------------------ EXIF */

static unsigned rd16(const uint8_t *p, int be) { return be ? (unsigned)(p[0] << 8 | p[1]) : (unsigned)(p[1] << 8 | p[0]); }
static uint32_t rd32(const uint8_t *p, int be)
{
    return be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* Orientation (1..8) from a TIFF-structured EXIF block, or 1. Every offset
 * is checked. */
static int tiff_orientation(const uint8_t *t, size_t tn)
{
    int be;
    if (tn < 8)
        return 1;
    if (!memcmp(t, "II", 2))
        be = 0;
    else if (!memcmp(t, "MM", 2))
        be = 1;
    else
        return 1;
    if (rd16(t + 2, be) != 42)
        return 1;
    uint32_t ifd = rd32(t + 4, be);
    if (ifd > tn || tn - ifd < 2)
        return 1;
    unsigned count = rd16(t + ifd, be);
    for (unsigned i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > tn)
            return 1;
        if (rd16(t + e, be) == 0x0112 && rd16(t + e + 2, be) == 3) {   /* SHORT */
            unsigned v = rd16(t + e + 8, be);
            return v >= 1 && v <= 8 ? (int)v : 1;
        }
    }
    return 1;
}

/* ... from a JPEG APP1 payload ("Exif\0\0" + TIFF), or 1. */
static int exif_orientation(const uint8_t *d, size_t n)
{
    if (n < 14 || memcmp(d, "Exif\0\0", 6) != 0)
        return 1;
    return tiff_orientation(d + 6, n - 6);
}

/* ... from a PNG eXIf or WebP EXIF chunk: TIFF, some writers prefix
 * "Exif\0\0" as in JPEG. */
static int chunk_orientation(const uint8_t *d, size_t n)
{
    return n >= 6 && !memcmp(d, "Exif\0\0", 6) ? tiff_orientation(d + 6, n - 6) : tiff_orientation(d, n);
}

/* The EXIF orientation of a PNG (eXIf chunk) or 1; chunks walked with
 * bounds checks (libpng's simplified API does not expose eXIf). */
static int png_orientation(const uint8_t *b, size_t n)
{
    for (size_t p = 8; p + 12 <= n;) {
        uint32_t len = rd32(b + p, 1);
        if (len > n - p - 12)
            return 1;
        if (!memcmp(b + p + 4, "eXIf", 4))
            return chunk_orientation(b + p + 8, len);
        if (!memcmp(b + p + 4, "IEND", 4))
            return 1;
        p += 12 + (size_t)len;
    }
    return 1;
}

/* The EXIF orientation of a WebP (RIFF "EXIF" chunk) or 1. */
static int webp_orientation(const uint8_t *b, size_t n)
{
    for (size_t p = 12; p + 8 <= n;) {
        uint32_t len = rd32(b + p + 4, 0);
        if (len > n - p - 8)
            return 1;
        if (!memcmp(b + p, "EXIF", 4))
            return chunk_orientation(b + p + 8, len);
        p += 8 + (size_t)len + (len & 1);
    }
    return 1;
}

/* Apply an EXIF orientation to an RGB image (PIL's exif_transpose). */
static sp_status apply_orientation(sp_image *img)
{
    int o = img->orientation;
    if (o <= 1)
        return SP_OK;
    int w = img->width, h = img->height, swap = o >= 5;
    int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *dst = malloc((size_t)ow * (size_t)oh * 3);
    if (!dst)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            switch (o) {
            case 2: sx = w - 1 - x; sy = y; break;
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;
            case 4: sx = x; sy = h - 1 - y; break;
            case 5: sx = y; sy = x; break;
            case 6: sx = y; sy = h - 1 - x; break;
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;
            default: sx = w - 1 - y; sy = x; break;   /* 8 */
            }
            memcpy(dst + ((size_t)y * ow + x) * 3, img->rgb + ((size_t)sy * w + sx) * 3, 3);
        }
    free(img->rgb);
    img->rgb = dst;
    img->width = ow;
    img->height = oh;
    if (swap) {
        int t = img->out_width;
        img->out_width = img->out_height;
        img->out_height = t;
    }
    return SP_OK;
}

/* ------------------------------------------------------------------ JPEG */

/* CMYK pixels (4 bytes) to RGB (3 bytes) in place, as Pillow converts:
 * R = (255 - K) - C (255 - K) / 255 with its rounding; Adobe's JPEGs store
 * CMYK inverted. */
static void cmyk_to_rgb(uint8_t *px, size_t n, int adobe_inverted)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v[4];
        for (int k = 0; k < 4; k++)
            v[k] = adobe_inverted ? 255u - px[4 * i + k] : px[4 * i + k];
        unsigned nk = 255 - v[3];
        for (int k = 0; k < 3; k++) {
            unsigned t = v[k] * nk + 128;
            px[3 * i + k] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
        }
    }
}

typedef struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int warnings;
} jerr;

static void j_error_exit(j_common_ptr c)
{
    jerr *e = (jerr *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

static void j_emit(j_common_ptr c, int level)
{
    jerr *e = (jerr *)c->err;
    if (level < 0 && !e->warnings++)   /* corrupt data warnings: remember the first */
        c->err->format_message(c, e->msg);
}

/* libjpeg's DCT downscaling (1/denom) for a w x h JPEG under p: down until
 * under max_pixels, and further while the long side stays >= min_long_side. */
static int jpeg_denom(uint64_t w, uint64_t h, const sp_image_params *p)
{
    uint64_t px = w * h, longside = w > h ? w : h, denom = 1;
    while (denom < 8 && px / (denom * denom) > p->max_pixels)
        denom *= 2;
    while (p->min_long_side > 0 && denom < 8 && longside / (denom * 2) >= (uint64_t)p->min_long_side)
        denom *= 2;
    return (int)denom;
}

static sp_status read_jpeg(const uint8_t *buf, size_t n, const char *name, const sp_image_params *p,
                           sp_image *img)
{
    struct jpeg_decompress_struct cinfo;
    jerr err;
    uint8_t *volatile rgb = NULL;
    memset(&err, 0, sizeof err);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = j_error_exit;
    err.pub.emit_message = j_emit;
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&cinfo);
        free(rgb);
        return sp_fail(SP_ERR_INPUT, "%s: corrupt JPEG: %s", name, err.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, buf, (unsigned long)n);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(&cinfo, TRUE);
    img->file_width = (int)cinfo.image_width;
    img->file_height = (int)cinfo.image_height;
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && img->orientation <= 1)
            img->orientation = exif_orientation(m->data, m->data_length);
    if (!img->orientation)
        img->orientation = 1;
    uint64_t px = (uint64_t)cinfo.image_width * cinfo.image_height;
    int denom = jpeg_denom(cinfo.image_width, cinfo.image_height, p);
    if (px > 4 * p->max_pixels) {   /* results come at full size */
        jpeg_destroy_decompress(&cinfo);
        return sp_fail(SP_ERR_INPUT, "%s: %ux%u JPEG is over the limit of %llu pixels for full-size results "
                       "(4 x --max-pixels)", name, cinfo.image_width, cinfo.image_height,
                       (unsigned long long)(4 * p->max_pixels));
    }
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned)denom;
    /* CMYK/YCCK JPEGs (print workflows) come out as CMYK, converted below */
    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * (cmyk ? 4 : 3);
    rgb = malloc(stride * cinfo.output_height);
    if (!rgb) {
        jpeg_destroy_decompress(&cinfo);
        return sp_fail(SP_ERR_NOMEM, "%s: out of memory", name);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = rgb + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    if (cmyk)
        cmyk_to_rgb(rgb, (size_t)cinfo.output_width * cinfo.output_height, cinfo.saw_Adobe_marker);
    jpeg_finish_decompress(&cinfo);
    unsigned cinfo_w = cinfo.image_width, cinfo_h = cinfo.image_height;
    img->width = (int)cinfo.output_width;
    img->height = (int)cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    if (err.warnings) {
        free(rgb);
        return sp_fail(SP_ERR_INPUT, "%s: corrupt or truncated JPEG: %s", name, err.msg);
    }
    img->rgb = rgb;
    img->scale_denom = denom;
    img->out_width = (int)cinfo_w;   /* results at the photo's size, whatever the decode scale */
    img->out_height = (int)cinfo_h;
    img->format = "jpeg";
    return SP_OK;
}

/* ------------------------------------------------------------------- PNG */

static sp_status read_png(const uint8_t *buf, size_t n, const char *name, const sp_image_params *p,
                          sp_image *img)
{
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&pi, buf, n))
        return sp_fail(SP_ERR_INPUT, "%s: corrupt PNG: %s", name, pi.message);
    img->file_width = (int)pi.width;
    img->file_height = (int)pi.height;
    img->orientation = png_orientation(buf, n);
    if ((uint64_t)pi.width * pi.height > p->max_pixels) {
        png_image_free(&pi);
        return sp_fail(SP_ERR_INPUT, "%s: %ux%u PNG is over the %llu-pixel limit (PNG cannot be decoded "
                       "downscaled)", name, pi.width, pi.height, (unsigned long long)p->max_pixels);
    }
    pi.format = PNG_FORMAT_RGBA;   /* alpha dropped below, as PIL's convert("RGB") */
    size_t np = (size_t)pi.width * pi.height;
    uint8_t *rgba = malloc(np * 4), *rgb = malloc(np * 3);
    if (!rgba || !rgb) {
        free(rgba);
        free(rgb);
        png_image_free(&pi);
        return sp_fail(SP_ERR_NOMEM, "%s: out of memory", name);
    }
    if (!png_image_finish_read(&pi, NULL, rgba, 0, NULL)) {
        free(rgba);
        free(rgb);
        return sp_fail(SP_ERR_INPUT, "%s: corrupt or truncated PNG: %s", name, pi.message);
    }
    for (size_t i = 0; i < np; i++)
        memcpy(rgb + 3 * i, rgba + 4 * i, 3);
    free(rgba);
    img->rgb = rgb;
    img->width = img->out_width = (int)pi.width;
    img->height = img->out_height = (int)pi.height;
    img->scale_denom = 1;
    img->format = "png";
    return SP_OK;
}

/* ------------------------------------------------------------------ WebP */

static sp_status read_webp(const uint8_t *buf, size_t n, const char *name, const sp_image_params *p,
                           sp_image *img)
{
    int w = 0, h = 0;
    if (!WebPGetInfo(buf, n, &w, &h) || w <= 0 || h <= 0)
        return sp_fail(SP_ERR_INPUT, "%s: corrupt WebP header", name);
    img->file_width = w;
    img->file_height = h;
    img->orientation = webp_orientation(buf, n);
    /* over the limit: libwebp scales while decoding (no full-size buffer) */
    int ow = w, oh = h;
    if ((uint64_t)w * (uint64_t)h > 4 * p->max_pixels)
        return sp_fail(SP_ERR_INPUT, "%s: %dx%d WebP is over the limit of %llu pixels for full-size results "
                       "(4 x --max-pixels)", name, w, h, (unsigned long long)(4 * p->max_pixels));
    if ((uint64_t)w * (uint64_t)h > p->max_pixels) {
        double k = sqrt((double)p->max_pixels / ((double)w * (double)h));
        ow = (int)fmax(1, floor(w * k));
        oh = (int)fmax(1, floor(h * k));
    }
    size_t bytes = (size_t)ow * (size_t)oh * 3;
    img->rgb = malloc(bytes);
    if (!img->rgb)
        return sp_fail(SP_ERR_NOMEM, "%s: out of memory", name);
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg))
        return sp_fail(SP_ERR_RUNTIME, "libwebp version mismatch");
    if (ow != w || oh != h) {
        cfg.options.use_scaling = 1;
        cfg.options.scaled_width = ow;
        cfg.options.scaled_height = oh;
    }
    cfg.output.colorspace = MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = img->rgb;
    cfg.output.u.RGBA.stride = ow * 3;
    cfg.output.u.RGBA.size = bytes;
    VP8StatusCode vs = WebPDecode(buf, n, &cfg);
    WebPFreeDecBuffer(&cfg.output);
    if (vs != VP8_STATUS_OK)
        return sp_fail(SP_ERR_INPUT, "%s: corrupt or truncated WebP (libwebp status %d)", name, (int)vs);
    img->width = ow;
    img->height = oh;
    img->out_width = w;   /* results at the photo's size */
    img->out_height = h;
    img->scale_denom = ow != w ? (int)lround((double)w / ow) : 1;
    img->format = "webp";
    return SP_OK;
}

/* ------------------------------------------------------------------ HEIC */

#ifdef SP_NO_HEIF
static sp_status read_heif(const uint8_t *buf, size_t n, const char *name, const sp_image_params *p,
                           sp_image *img)
{
    return sp_fail(SP_ERR_INPUT, "%s: HEIF image, but this segpipe was built without libheif (make NO_HEIF=1)", name);
}
#else
/* libheif applies the file's rotation and mirroring (irot/imir) itself, so
 * the decoded image is upright already. */
static sp_status read_heif(const uint8_t *buf, size_t n, const char *name, const sp_image_params *p,
                           sp_image *img)
{
    struct heif_context *ctx = heif_context_alloc();
    struct heif_image_handle *hd = NULL;
    struct heif_image *hi = NULL;
    sp_status st = SP_OK;
    struct heif_error e = heif_context_read_from_memory_without_copy(ctx, buf, n, NULL);
    if (e.code == heif_error_Ok)
        e = heif_context_get_primary_image_handle(ctx, &hd);
    if (e.code != heif_error_Ok) {
        st = sp_fail(SP_ERR_INPUT, "%s: corrupt HEIF: %s", name, e.message);
        goto out;
    }
    int w = heif_image_handle_get_width(hd), h = heif_image_handle_get_height(hd);
    img->file_width = w;
    img->file_height = h;
    img->orientation = webp_orientation(buf, n);
    if (w <= 0 || h <= 0 || (uint64_t)w * (uint64_t)h > p->max_pixels) {
        st = sp_fail(SP_ERR_INPUT, "%s: %dx%d HEIF is %s", name, w, h, w <= 0 || h <= 0 ? "empty" : "over the pixel limit");
        goto out;
    }
    /* strict: damaged HEVC data is an error, not a concealed picture
     * (libheif's default hides libde265's warnings in the decoded image) */
    struct heif_decoding_options *dopt = heif_decoding_options_alloc();
    if (dopt && dopt->version >= 3)
        dopt->strict_decoding = 1;
    e = heif_decode_image(hd, &hi, heif_colorspace_RGB, heif_chroma_interleaved_RGB, dopt);
    heif_decoding_options_free(dopt);
    if (e.code != heif_error_Ok) {
        st = sp_fail(SP_ERR_INPUT, "%s: cannot decode HEIF: %s", name, e.message);
        goto out;
    }
    if (heif_image_get_decoding_warnings(hi, 0, NULL, 0) > 0) {
        struct heif_error warn;
        heif_image_get_decoding_warnings(hi, 0, &warn, 1);
        st = sp_fail(SP_ERR_INPUT, "%s: damaged HEIF image data (%s)", name,
                     warn.message ? warn.message : "decoder warning");
        goto out;
    }
    int stride = 0;
    const uint8_t *px = heif_image_get_plane_readonly(hi, heif_channel_interleaved, &stride);
    w = heif_image_get_width(hi, heif_channel_interleaved);
    h = heif_image_get_height(hi, heif_channel_interleaved);
    if (!px || w <= 0 || h <= 0) {
        st = sp_fail(SP_ERR_INPUT, "%s: HEIF decoded to no pixels", name);
        goto out;
    }
    img->rgb = malloc((size_t)w * (size_t)h * 3);
    if (!img->rgb) {
        st = sp_fail(SP_ERR_NOMEM, "%s: out of memory", name);
        goto out;
    }
    for (int y = 0; y < h; y++)
        memcpy(img->rgb + (size_t)y * w * 3, px + (size_t)y * stride, (size_t)w * 3);
    img->width = img->out_width = w;
    img->height = img->out_height = h;
    img->scale_denom = 1;
    img->format = "heif";
out:
    if (hi)
        heif_image_release(hi);
    if (hd)
        heif_image_handle_release(hd);
    heif_context_free(ctx);
    return st;
}
#endif

/* A JPEG's size from its first SOFn marker (markers walked, lengths checked). */
static int jpeg_dims(const uint8_t *b, size_t n, uint64_t *w, uint64_t *h)
{
    size_t i = 2;
    while (i + 4 <= n) {
        if (b[i] != 0xff)
            return -1;
        uint8_t m = b[i + 1];
        if (m == 0xff) {   /* fill byte */
            i++;
            continue;
        }
        size_t len = (size_t)b[i + 2] << 8 | b[i + 3];
        if (len < 2 || i + 2 + len > n)
            return -1;
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) {
            if (len < 7)
                return -1;
            *h = (uint64_t)b[i + 5] << 8 | b[i + 6];
            *w = (uint64_t)b[i + 7] << 8 | b[i + 8];
            return 0;
        }
        if (m == 0xd9 || m == 0xda)   /* end, or scan data before any frame header */
            return -1;
        i += 2 + len;
    }
    return -1;
}

static int heif_dims(const uint8_t *b, size_t n, uint64_t *w, uint64_t *h)
{
#ifdef SP_NO_HEIF
    (void)b, (void)n, (void)w, (void)h;
    return -1;
#else
    struct heif_context *ctx = heif_context_alloc();
    struct heif_image_handle *hd = NULL;
    int rc = -1;
    if (ctx && heif_context_read_from_memory_without_copy(ctx, b, n, NULL).code == heif_error_Ok &&
        heif_context_get_primary_image_handle(ctx, &hd).code == heif_error_Ok) {
        int iw = heif_image_handle_get_width(hd), ih = heif_image_handle_get_height(hd);
        if (iw > 0 && ih > 0)
            *w = (uint64_t)iw, *h = (uint64_t)ih, rc = 0;
    }
    if (hd)
        heif_image_handle_release(hd);
    if (ctx)
        heif_context_free(ctx);
    return rc;
#endif
}

sp_status sp_image_probe(const void *data, size_t size, const sp_image_params *pp, uint64_t *file_px,
                         uint64_t *decoded_px)
{
    const uint8_t *b = data;
    sp_image_params p = pp ? *pp : sp_image_default_params();
    if (!p.max_pixels)
        p.max_pixels = DEFAULT_MAX_PIXELS;
    uint64_t w = 0, h = 0;
    int rc = -1, jpeg = 0;
    if (size >= 12 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        rc = jpeg_dims(b, size, &w, &h), jpeg = 1;
    else if (size >= 24 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8) && !memcmp(b + 12, "IHDR", 4)) {
        w = (uint64_t)b[16] << 24 | (uint64_t)b[17] << 16 | (uint64_t)b[18] << 8 | b[19];
        h = (uint64_t)b[20] << 24 | (uint64_t)b[21] << 16 | (uint64_t)b[22] << 8 | b[23];
        rc = 0;
    } else if (size >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) {
        int iw, ih;
        if (WebPGetInfo(b, size, &iw, &ih))
            w = (uint64_t)iw, h = (uint64_t)ih, rc = 0;
    } else if (size >= 12 && !memcmp(b + 4, "ftyp", 4))
        rc = heif_dims(b, size, &w, &h);
    if (rc || !w || !h)
        return sp_fail(SP_ERR_INPUT, "not a JPEG, PNG, WebP or HEIF image with a readable size");
    uint64_t px = w * h;
    if (px > 4 * p.max_pixels)
        return sp_fail(SP_ERR_INPUT, "%llux%llu image is over the limit of %llu pixels for full-size results "
                       "(4 x --max-pixels)", (unsigned long long)w, (unsigned long long)h,
                       (unsigned long long)(4 * p.max_pixels));
    uint64_t dec = px > p.max_pixels ? p.max_pixels : px;
    if (jpeg) {   /* as read_jpeg decodes it */
        uint64_t denom = (uint64_t)jpeg_denom(w, h, &p);
        dec = px / (denom * denom);
    }
    *file_px = px;
    *decoded_px = dec;
    return SP_OK;
}

sp_status sp_image_read_mem(const void *data, size_t size, const char *name, const sp_image_params *pp,
                            sp_image **out)
{
    const uint8_t *b = data;
    sp_image_params p = pp ? *pp : sp_image_default_params();
    if (!p.max_pixels)
        p.max_pixels = DEFAULT_MAX_PIXELS;
    *out = NULL;
    if (size < 12)
        return sp_fail(SP_ERR_INPUT, "%s: empty or too short to be an image (%zu bytes)", name, size);
    sp_image *img = calloc(1, sizeof *img);
    if (!img)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_status st;
    if (b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        st = read_jpeg(b, size, name, &p, img);
    else if (!memcmp(b, "\x89PNG\r\n\x1a\n", 8))
        st = read_png(b, size, name, &p, img);
    else if (!memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4))
        st = read_webp(b, size, name, &p, img);
    else if (!memcmp(b + 4, "ftyp", 4))
        st = read_heif(b, size, name, &p, img);
    else
        st = sp_fail(SP_ERR_INPUT, "%s: not a JPEG, PNG, WebP or HEIF image", name);
    if (!st && (img->width <= 0 || img->height <= 0))
        st = sp_fail(SP_ERR_INPUT, "%s: zero-sized image", name);
    if (!st)
        st = apply_orientation(img);
    if (st) {
        sp_image_free(img);
        return st;
    }
    *out = img;
    return SP_OK;
}

sp_status sp_image_read(const char *path, const sp_image_params *p, sp_image **out)
{
    void *buf;
    size_t n;
    sp_status st = sp_read_file(path, (size_t)1 << 30, &buf, &n);
    *out = NULL;
    if (st)
        return st;
    st = sp_image_read_mem(buf, n, path, p, out);
    free(buf);
    return st;
}

typedef struct batch_ctx {
    const char *const *paths;
    const void *const *bufs;
    const size_t *sizes;
    const sp_image_params *p;
    sp_image **imgs;
    sp_status *sts;
    char **errs;
} batch_ctx;

static void batch_one(void *vc, int64_t b, int64_t e, int w)
{
    batch_ctx *c = vc;
    (void)w;
    for (int64_t i = b; i < e; i++) {
        const char *name = c->paths && c->paths[i] ? c->paths[i] : "request body";
        sp_status st = c->bufs ? sp_image_read_mem(c->bufs[i], c->sizes[i], name, c->p, &c->imgs[i])
                               : sp_image_read(name, c->p, &c->imgs[i]);
        if (c->sts)
            c->sts[i] = st;
        if (c->errs)
            c->errs[i] = st ? strdup(sp_last_error()) : NULL;
    }
}

int sp_images_read(int n, const char *const *paths, const void *const *bufs, const size_t *sizes,
                   const sp_image_params *p, sp_image **imgs, sp_status *sts, char **errs)
{
    batch_ctx c = {paths, bufs, sizes, p, imgs, sts, errs};
    sp_pool_for(sp_default_pool(), n, 1, batch_one, &c);
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += imgs[i] != NULL;
    return ok;
}
