/*
 * npz.c — one float32 array written as numpy.savez_compressed writes it:
 * a ZIP archive holding KEY.npy deflated (libzip; ZIP64 records where the
 * sizes need them, so arrays past 4 GB work), the .npy being format 1.0
 * (magic, a header dict padded to 64 bytes, then the C-order data) and
 * dated 1980-01-01 as numpy's entries are. nnU-Net's --save_probabilities
 * writes its probabilities this way (`probabilities` in CASE.npz); numpy,
 * and so nnU-Net's own tools, read it back with np.load.
 *
 * The entry's bytes come from a libzip source function (header, then the
 * caller's array: nothing copied); libzip writes a temporary file beside
 * the target and renames it into place when complete.
 */
#include "../core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }

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

/* the entry's bytes: the .npy header, then the array */
typedef struct npy_src {
    const char *hdr;
    size_t hlen;
    const unsigned char *data;
    uint64_t dlen, pos;
    zip_error_t err;
} npy_src;

static zip_int64_t npy_read(npy_src *s, unsigned char *out, zip_uint64_t len)
{
    zip_uint64_t done = 0;
    while (done < len && s->pos < s->hlen + s->dlen) {
        const unsigned char *from = s->pos < s->hlen ? (const unsigned char *)s->hdr + s->pos
                                                     : s->data + (s->pos - s->hlen);
        uint64_t left = s->pos < s->hlen ? s->hlen - s->pos : s->hlen + s->dlen - s->pos;
        zip_uint64_t take = len - done < left ? len - done : left;
        memcpy(out + done, from, (size_t)take);
        done += take;
        s->pos += take;
    }
    return (zip_int64_t)done;
}

/* libzip's source protocol (zip_source_function(3)): open, read, close, stat */
static zip_int64_t npy_cb(void *user, void *data, zip_uint64_t len, zip_source_cmd_t cmd)
{
    npy_src *s = user;
    switch (cmd) {
    case ZIP_SOURCE_OPEN: s->pos = 0; return 0;
    case ZIP_SOURCE_READ: return npy_read(s, data, len);
    case ZIP_SOURCE_CLOSE: return 0;
    case ZIP_SOURCE_FREE: return 0;
    case ZIP_SOURCE_STAT: {
        zip_stat_t *st = data;
        zip_stat_init(st);
        st->size = s->hlen + s->dlen;   /* known up front: libzip chooses ZIP64 records from it */
        st->valid |= ZIP_STAT_SIZE;
        return sizeof *st;
    }
    case ZIP_SOURCE_ERROR: return zip_error_to_data(&s->err, data, len);
    case ZIP_SOURCE_SUPPORTS:
        return zip_source_make_command_bitmap(ZIP_SOURCE_OPEN, ZIP_SOURCE_READ, ZIP_SOURCE_CLOSE, ZIP_SOURCE_STAT,
                                              ZIP_SOURCE_ERROR, ZIP_SOURCE_FREE, -1);
    default: zip_error_set(&s->err, ZIP_ER_OPNOTSUPP, 0); return -1;
    }
}

sp_status sp_npz_write_f32(const char *path, const char *key, const float *data, const int64_t *shape, int rank)
{
    char name[80], hdr[1024];
    if (rank < 1 || rank > 8 || !key || strlen(key) > 60 || strpbrk(key, "/\\"))
        return sp_fail(SP_ERR_USAGE, "npz: a key of at most 60 characters and rank 1..8");
    uint64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return sp_fail(SP_ERR_USAGE, "npz: negative dimension");
        n *= (uint64_t)shape[i];
    }
    snprintf(name, sizeof name, "%s.npy", key);
    npy_src src = {.hdr = hdr, .hlen = npy_header(hdr, sizeof hdr, shape, rank),
                   .data = (const unsigned char *)data, .dlen = n * sizeof(float)};
    zip_error_init(&src.err);
    int zerr = 0;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    if (!za) {
        zip_error_fini(&src.err);
        return sp_fail(SP_ERR_IO, "%s: cannot write the npz (libzip error %d)", path, zerr);
    }
    zip_source_t *zs = zip_source_function(za, npy_cb, &src);
    zip_int64_t i = zs ? zip_file_add(za, name, zs, ZIP_FL_ENC_UTF_8) : -1;
    if (i < 0)
        zip_source_free(zs);
    int bad = i < 0 || zip_set_file_compression(za, (zip_uint64_t)i, ZIP_CM_DEFLATE, 0) ||
              zip_file_set_dostime(za, (zip_uint64_t)i, 0, 0x21, 0);   /* 00:00, 1980-01-01 */
    if (!bad && !zip_close(za)) {   /* written under a temporary name, renamed when complete */
        zip_error_fini(&src.err);
        return SP_OK;
    }
    sp_status st = sp_fail(SP_ERR_IO, "%s: cannot write the npz: %s", path, zip_strerror(za));
    zip_discard(za);   /* a failed zip_close leaves the archive open, the target untouched */
    zip_error_fini(&src.err);
    return st;
}
