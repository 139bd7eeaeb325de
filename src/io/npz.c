/*
 * npz.c — one float32 array written as numpy.savez_compressed writes it:
 * a ZIP archive (ZIP64 records, so arrays past 4 GB work) holding
 * KEY.npy deflated, the .npy being format 1.0 (magic, a header dict padded
 * to 64 bytes, then the C-order data). nnU-Net's --save_probabilities
 * writes its probabilities this way (`probabilities` in CASE.npz); numpy,
 * and so nnU-Net's own tools, read it back with np.load.
 *
 * The deflated stream goes straight to the file (zlib, raw deflate, 1 MB at
 * a time); the local header's CRC and sizes are written after it, in place.
 */
#include "../core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* the .npy header: magic, version 1.0, length, dict padded with spaces to a
 * multiple of 64 bytes ending in '\n'; returns its length */
static size_t npy_header(char *h, size_t cap, const int64_t *shape, int rank)
{
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < rank; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i], i + 1 < rank ? " " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1;
    total = (total + 63) / 64 * 64;
    if (total > cap)
        return 0;
    memcpy(h, "\x93NUMPY\x01\x00", 8);
    put16((unsigned char *)h + 8, (unsigned)(total - 10));
    memcpy(h + 10, dict, (size_t)n);
    memset(h + 10 + n, ' ', total - 10 - (size_t)n - 1);
    h[total - 1] = '\n';
    return total;
}

/* deflate `len` bytes through z into f, updating crc and the counts */
static int deflate_to(z_stream *z, FILE *f, const void *src, size_t len, int finish, uLong *crc, uint64_t *out)
{
    static const size_t chunk = 1 << 20;
    unsigned char buf[1 << 16];
    const unsigned char *p = src;
    do {
        size_t take = len < chunk ? len : chunk;
        *crc = crc32(*crc, p, (uInt)take);
        z->next_in = (Bytef *)p;
        z->avail_in = (uInt)take;
        len -= take;
        p += take;
        int flush = finish && !len ? Z_FINISH : Z_NO_FLUSH, r;
        do {
            z->next_out = buf;
            z->avail_out = sizeof buf;
            r = deflate(z, flush);
            if (r == Z_STREAM_ERROR)
                return -1;
            size_t have = sizeof buf - z->avail_out;
            if (have && fwrite(buf, 1, have, f) != have)
                return -1;
            *out += have;
        } while (z->avail_out == 0 || (flush == Z_FINISH && r != Z_STREAM_END));
    } while (len);
    return 0;
}

/* local header (sizes and CRC patched later), central directory, ZIP64 end records */
static void local_header(unsigned char *h, const char *name, size_t nlen, uint32_t crc, uint64_t comp, uint64_t raw)
{
    put32(h, 0x04034b50);
    put16(h + 4, 45);
    put16(h + 6, 0);
    put16(h + 8, 8);               /* deflate */
    put16(h + 10, 0);
    put16(h + 12, 0x21);           /* 1980-01-01 */
    put32(h + 14, crc);
    put32(h + 18, 0xFFFFFFFFu);
    put32(h + 22, 0xFFFFFFFFu);
    put16(h + 26, (unsigned)nlen);
    put16(h + 28, 20);
    memcpy(h + 30, name, nlen);
    put16(h + 30 + nlen, 1);       /* ZIP64 extra: raw and compressed sizes */
    put16(h + 32 + nlen, 16);
    put64(h + 34 + nlen, raw);
    put64(h + 42 + nlen, comp);
}

static int central(FILE *f, const char *name, size_t nlen, uint32_t crc, uint64_t comp, uint64_t raw, uint64_t at)
{
    unsigned char c[46 + 64 + 28], e[56 + 20 + 22];
    put32(c, 0x02014b50);
    put16(c + 4, 45);
    put16(c + 6, 45);
    put16(c + 8, 0);
    put16(c + 10, 8);
    put16(c + 12, 0);
    put16(c + 14, 0x21);
    put32(c + 16, crc);
    put32(c + 20, 0xFFFFFFFFu);
    put32(c + 24, 0xFFFFFFFFu);
    put16(c + 28, (unsigned)nlen);
    put16(c + 30, 28);
    memset(c + 32, 0, 10);         /* comment, disk, internal and external attributes */
    put32(c + 42, 0xFFFFFFFFu);
    memcpy(c + 46, name, nlen);
    put16(c + 46 + nlen, 1);
    put16(c + 48 + nlen, 24);
    put64(c + 50 + nlen, raw);
    put64(c + 58 + nlen, comp);
    put64(c + 66 + nlen, 0);       /* the local header's offset */
    size_t clen = 46 + nlen + 28;
    uint64_t cd_at = at;
    put32(e, 0x06064b50);          /* ZIP64 end of central directory */
    put64(e + 4, 44);
    put16(e + 12, 45);
    put16(e + 14, 45);
    put32(e + 16, 0);
    put32(e + 20, 0);
    put64(e + 24, 1);
    put64(e + 32, 1);
    put64(e + 40, clen);
    put64(e + 48, cd_at);
    put32(e + 56, 0x07064b50);     /* its locator */
    put32(e + 60, 0);
    put64(e + 64, cd_at + clen);
    put32(e + 72, 1);
    put32(e + 76, 0x06054b50);     /* end of central directory */
    put16(e + 80, 0);
    put16(e + 82, 0);
    put16(e + 84, 1);
    put16(e + 86, 1);
    put32(e + 88, (uint32_t)clen);
    put32(e + 92, 0xFFFFFFFFu);
    put16(e + 96, 0);
    return fwrite(c, 1, clen, f) == clen && fwrite(e, 1, 98, f) == 98 ? 0 : -1;
}

sp_status sp_npz_write_f32(const char *path, const char *key, const float *data, const int64_t *shape, int rank)
{
    char name[80], hdr[1024];
    unsigned char lh[30 + 80 + 20];
    if (rank < 1 || rank > 8 || !key || strlen(key) > 60 || strpbrk(key, "/\\"))
        return sp_fail(SP_ERR_USAGE, "npz: a key of at most 60 characters and rank 1..8");
    uint64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return sp_fail(SP_ERR_USAGE, "npz: negative dimension");
        n *= (uint64_t)shape[i];
    }
    size_t nlen = (size_t)snprintf(name, sizeof name, "%s.npy", key), hlen = npy_header(hdr, sizeof hdr, shape, rank);
    FILE *f = fopen(path, "wb");
    if (!f)
        return sp_fail(SP_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    z_stream z;
    memset(&z, 0, sizeof z);
    uLong crc = crc32(0, NULL, 0);
    uint64_t comp = 0, raw = hlen + n * sizeof(float);
    local_header(lh, name, nlen, 0, 0, raw);
    int bad = deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK;
    bad = bad || fwrite(lh, 1, 50 + nlen, f) != 50 + nlen;
    bad = bad || deflate_to(&z, f, hdr, hlen, 0, &crc, &comp);
    bad = bad || deflate_to(&z, f, data, (size_t)n * sizeof(float), 1, &crc, &comp);
    deflateEnd(&z);
    uint64_t cd_at = 50 + nlen + comp;
    bad = bad || central(f, name, nlen, (uint32_t)crc, comp, raw, cd_at);
    local_header(lh, name, nlen, (uint32_t)crc, comp, raw);   /* the CRC and sizes, now known */
    bad = bad || fseek(f, 0, SEEK_SET) || fwrite(lh, 1, 50 + nlen, f) != 50 + nlen;
    if (fclose(f) || bad) {
        remove(path);
        return sp_fail(SP_ERR_IO, "%s: cannot write the npz", path);
    }
    return SP_OK;
}
