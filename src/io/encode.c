/*
 * encode.c — in-memory PNG (libpng) and JPEG (libjpeg-turbo) encoders, used
 * for mask PNGs and for video frames written as files.
 */
#include "encode.h"

#include <jpeglib.h>
#include <libdeflate.h>
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

/* ------------------------------------------------ mask PNGs: run-length deflate
 *
 * A mask is long runs of one byte. Its PNG is written directly: rows with
 * filter "none", one zlib stream of one fixed-Huffman deflate block in which
 * every run is a literal followed by matches at distance 1 (RFC 1951),
 * Adler-32 from libdeflate. Finding a run's end compares 8 bytes at a time,
 * so the cost follows the number of runs more than the number of pixels:
 * several times faster than zlib for 12 MP masks, at a similar size.
 */
typedef struct bitw {
    uint8_t *p;
    size_t n, cap;
    uint64_t acc;
    int nacc;
    int oom;
} bitw;

static void bw_flush(bitw *w)
{
    while (w->nacc >= 8) {
        if (w->n == w->cap) {
            size_t nc = w->cap * 2;
            uint8_t *np = realloc(w->p, nc);
            if (!np) {
                w->oom = 1;
                w->n = 0;        /* keep going without storing; the caller fails */
            } else {
                w->p = np;
                w->cap = nc;
            }
        }
        w->p[w->n++] = (uint8_t)w->acc;
        w->acc >>= 8;
        w->nacc -= 8;
    }
}

/* nbits of v, least significant first (deflate's bit order) */
static inline void bw_put(bitw *w, uint32_t v, int nbits)
{
    w->acc |= (uint64_t)v << w->nacc;
    w->nacc += nbits;
    if (w->nacc >= 32)
        bw_flush(w);
}

/* a Huffman code, most significant bit first */
static inline void bw_code(bitw *w, uint32_t code, int len)
{
    uint32_t r = 0;
    for (int i = 0; i < len; i++)
        r |= ((code >> i) & 1u) << (len - 1 - i);
    bw_put(w, r, len);
}

static inline void put_literal(bitw *w, unsigned lit)
{
    if (lit < 144)
        bw_code(w, 0x30 + lit, 8);
    else
        bw_code(w, 0x190 + (lit - 144), 9);
}

/* a match of length 3..258 at distance 1 */
static void put_match(bitw *w, unsigned len)
{
    static const uint16_t base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                      35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint8_t extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                      3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    int k = 28;
    while (base[k] > len)
        k--;
    unsigned sym = 257 + (unsigned)k;
    if (sym < 280)
        bw_code(w, sym - 256, 7);
    else
        bw_code(w, 0xc0 + (sym - 280), 8);
    if (extra[k])
        bw_put(w, len - base[k], extra[k]);
    bw_code(w, 0, 5);                      /* distance code 0: distance 1 */
}

/* a run of `len` copies of byte v, the previous byte (if any) not v */
static void put_run(bitw *w, unsigned v, size_t len)
{
    put_literal(w, v);
    len--;
    while (len >= 3) {
        unsigned m = len > 258 ? 258 : (unsigned)len;
        if (len - m > 0 && len - m < 3)    /* leave at least 3 for the next match */
            m = (unsigned)(len - 3 > 258 ? 258 : len - 3);
        put_match(w, m);
        len -= m;
    }
    while (len--)
        put_literal(w, v);
}

/* length of the run of byte v starting at p (at most n) */
static size_t run_len(const uint8_t *p, size_t n, uint8_t v)
{
    size_t i = 0;
    uint64_t pat = 0x0101010101010101ull * v;
    while (i + 8 <= n) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        x ^= pat;
        if (x)
            return i + (size_t)(__builtin_ctzll(x) >> 3);
        i += 8;
    }
    while (i < n && p[i] == v)
        i++;
    return i;
}

sp_status sp_png_encode_mask(const uint8_t *px, int width, int height, void **png, size_t *size)
{
    bitw w = {malloc(65536), 0, 65536, 0, 0, 0};
    if (!w.p)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    static const uint8_t head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    memcpy(w.p, head, sizeof head);
    uint8_t *ih = w.p + sizeof head;
    ih[0] = (uint8_t)(width >> 24), ih[1] = (uint8_t)(width >> 16), ih[2] = (uint8_t)(width >> 8), ih[3] = (uint8_t)width;
    ih[4] = (uint8_t)(height >> 24), ih[5] = (uint8_t)(height >> 16), ih[6] = (uint8_t)(height >> 8),
    ih[7] = (uint8_t)height;
    ih[8] = 8, ih[9] = 0, ih[10] = 0, ih[11] = 0, ih[12] = 0;   /* 8-bit grey, deflate, no interlace */
    uint32_t crc = libdeflate_crc32(0, w.p + 12, 17);
    size_t o = sizeof head + 13;
    w.p[o++] = (uint8_t)(crc >> 24), w.p[o++] = (uint8_t)(crc >> 16), w.p[o++] = (uint8_t)(crc >> 8),
    w.p[o++] = (uint8_t)crc;
    size_t idat = o;                        /* length, filled in at the end */
    memcpy(w.p + o + 4, "IDAT", 4);
    w.p[o + 8] = 0x78, w.p[o + 9] = 0x01;   /* zlib header: deflate, 32K window, fastest */
    w.n = o + 10;
    bw_put(&w, 1, 1);                       /* final block */
    bw_put(&w, 1, 2);                       /* fixed Huffman codes */
    uint32_t adler = 1;
    static const uint8_t zero = 0;
    int prev = -1;                          /* last byte emitted (a run never repeats it) */
    size_t pending = 0;                     /* length of the run being built, of byte prev */
    for (int y = 0; y < height; y++) {
        const uint8_t *row = px + (size_t)y * (size_t)width;
        adler = libdeflate_adler32(adler, &zero, 1);
        adler = libdeflate_adler32(adler, row, (size_t)width);
        /* filter byte 0, then the row: runs continue across rows */
        if (prev == 0) {
            pending++;
        } else {
            if (pending)
                put_run(&w, (unsigned)prev, pending);
            prev = 0;
            pending = 1;
        }
        size_t x = 0;
        while (x < (size_t)width) {
            uint8_t v = row[x];
            size_t r = run_len(row + x, (size_t)width - x, v);
            if (v == prev) {
                pending += r;
            } else {
                if (pending)
                    put_run(&w, (unsigned)prev, pending);
                prev = v;
                pending = r;
            }
            x += r;
        }
    }
    if (pending)
        put_run(&w, (unsigned)prev, pending);
    bw_code(&w, 0, 7);                      /* end of block (256) */
    bw_put(&w, 0, 7);                       /* pad to a byte */
    bw_flush(&w);
    w.nacc = 0;
    /* zlib trailer, IDAT CRC, IEND */
    uint8_t tail[4 + 4 + 12];
    tail[0] = (uint8_t)(adler >> 24), tail[1] = (uint8_t)(adler >> 16), tail[2] = (uint8_t)(adler >> 8),
    tail[3] = (uint8_t)adler;
    if (!w.oom && w.n + sizeof tail > w.cap) {
        uint8_t *np = realloc(w.p, w.n + sizeof tail);
        if (!np)
            w.oom = 1;
        else
            w.p = np, w.cap = w.n + sizeof tail;
    }
    if (w.oom) {
        free(w.p);
        return sp_fail(SP_ERR_NOMEM, "out of memory encoding a mask PNG");
    }
    memcpy(w.p + w.n, tail, 4);
    w.n += 4;
    size_t dlen = w.n - idat - 8;
    w.p[idat] = (uint8_t)(dlen >> 24), w.p[idat + 1] = (uint8_t)(dlen >> 16), w.p[idat + 2] = (uint8_t)(dlen >> 8),
    w.p[idat + 3] = (uint8_t)dlen;
    crc = libdeflate_crc32(0, w.p + idat + 4, dlen + 4);
    uint8_t end[16] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc,
                       0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    memcpy(w.p + w.n, end, 16);
    w.n += 16;
    *png = w.p;
    *size = w.n;
    return SP_OK;
}
