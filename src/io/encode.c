/*
 * encode.c — in-memory PNG (libpng) and JPEG (libjpeg-turbo) encoders, used
 * for mask PNGs and for video frames written as files.
 */
#include "encode.h"

#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_mem {
    unsigned char *d;
    size_t n, cap;
    int oom;
} png_mem;

static void png_mem_write(png_structp p, png_bytep data, png_size_t len)
{
    png_mem *m = png_get_io_ptr(p);
    if (m->oom)
        return;
    if (m->n + len > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 65536;
        while (nc < m->n + len)
            nc *= 2;
        unsigned char *nd = realloc(m->d, nc);
        if (!nd) {
            m->oom = 1;
            return;
        }
        m->d = nd;
        m->cap = nc;
    }
    memcpy(m->d + m->n, data, len);
    m->n += len;
}

static void png_mem_flush(png_structp p) { (void)p; }

/* zlib level 1 with the RLE strategy and no row filter: masks are long runs
 * of 0 and 255, so this is several times faster than the default settings
 * at a similar size; frames lose some compression for a large speed-up. */
sp_status sp_png_encode(const uint8_t *px, int width, int height, int channels, void **png, size_t *size)
{
    png_mem mem = {0};
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!p || !info) {
        png_destroy_write_struct(&p, NULL);
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        free(mem.d);
        return sp_fail(SP_ERR_RUNTIME, "PNG encoding failed");
    }
    png_set_write_fn(p, &mem, png_mem_write, png_mem_flush);
    png_set_IHDR(p, info, (png_uint_32)width, (png_uint_32)height, 8, channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(p, 1);
    png_set_compression_strategy(p, 3);   /* Z_RLE */
    png_set_filter(p, 0, PNG_FILTER_NONE);
    png_write_info(p, info);
    for (int y = 0; y < height; y++)
        png_write_row(p, (png_bytep)px + (size_t)y * (size_t)width * (size_t)channels);
    png_write_end(p, info);
    png_destroy_write_struct(&p, &info);
    if (mem.oom) {
        free(mem.d);
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    *png = mem.d;
    *size = mem.n;
    return SP_OK;
}

typedef struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
} jerr;

static void jerr_exit(j_common_ptr c)
{
    longjmp(((jerr *)c->err)->jb, 1);
}

sp_status sp_jpeg_encode(const uint8_t *rgb, int width, int height, int quality, void **out, size_t *size)
{
    struct jpeg_compress_struct c;
    jerr je;
    unsigned char *buf = NULL;
    unsigned long n = 0;
    c.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jerr_exit;
    if (setjmp(je.jb)) {
        jpeg_destroy_compress(&c);
        free(buf);
        return sp_fail(SP_ERR_RUNTIME, "JPEG encoding failed");
    }
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &buf, &n);
    c.image_width = (JDIMENSION)width;
    c.image_height = (JDIMENSION)height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality > 0 && quality <= 100 ? quality : 92, TRUE);
    c.dct_method = JDCT_ISLOW;
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * (size_t)width * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *out = buf;
    *size = n;
    return SP_OK;
}
