/*
 * gzip_write.c — one gzip member compressed on every core, as pigz does.
 *
 * Some readers (niivue and the browser tools built on it, several
 * JavaScript inflaters) stop after the first member of a multi-member gzip
 * file, so segpipe's .nii.gz must be a single member. The input is cut into
 * 1 MiB chunks; each is deflated on its own (raw deflate, the previous
 * 32 KiB as its dictionary so the ratio matches one sequential stream) and
 * ends on a byte boundary (Z_SYNC_FLUSH: an empty stored block), the last
 * with Z_FINISH. The chunks' streams then concatenate into one deflate
 * stream, framed by one gzip header and a trailer whose CRC-32 is combined
 * from the chunks' (crc32_combine) and whose ISIZE is the length mod 2^32.
 * zlib rather than libdeflate: libdeflate always ends a stream with a final
 * block and cannot flush to a byte boundary. zlib level 1 is as fast as
 * libdeflate level 4 was (faster on labels), and Z_RLE (runs only, no hash
 * chains) suits label volumes: as fast again, half the size of level 1's
 * output there (docs/performance.md).
 */
#include "volume.h"

#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define GZ_CHUNK ((size_t)1 << 20)
#define GZ_DICT 32768

typedef struct gz_part {
    const uint8_t *src;
    size_t n;
    uint8_t *out;
    size_t out_n;
    uLong crc;
} gz_part;

typedef struct gz_job {
    gz_part *part;
    int64_t nparts;
    int level, strategy;
    int failed;
} gz_job;

/* Deflate one chunk into k->out (z already reset, its dictionary set). */
static int gz_deflate_part(z_stream *z, gz_part *k, int last)
{
    size_t cap = deflateBound(z, (uLong)k->n) + 16;
    k->out = malloc(cap);
    if (!k->out)
        return -1;
    z->next_in = (Bytef *)k->src;
    z->avail_in = (uInt)k->n;
    z->next_out = k->out;
    z->avail_out = (uInt)cap;
    int rc = deflate(z, last ? Z_FINISH : Z_SYNC_FLUSH);
    if (last ? rc != Z_STREAM_END : (rc != Z_OK || z->avail_in))
        return -1;
    k->out_n = cap - z->avail_out;
    k->crc = libdeflate_crc32(0, k->src, k->n);   /* 5x zlib's crc32 here */
    return 0;
}

static void gz_range(void *vctx, int64_t b, int64_t e, int worker)
{
    (void)worker;
    gz_job *j = vctx;
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, j->level, Z_DEFLATED, -MAX_WBITS, 8, j->strategy) != Z_OK) {
        j->failed = 1;
        return;
    }
    for (int64_t i = b; i < e && !j->failed; i++) {
        gz_part *k = &j->part[i];
        int err = deflateReset(&z) != Z_OK;
        if (!err && i > 0)   /* the 32 KiB before this chunk: back-references across the cut */
            err = deflateSetDictionary(&z, k->src - GZ_DICT, GZ_DICT) != Z_OK;
        if (err || gz_deflate_part(&z, k, i == j->nparts - 1))
            j->failed = 1;
    }
    deflateEnd(&z);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

sp_status sp_gzip_parallel(const void *data, size_t n, int level, int rle, int threads, void **out, size_t *out_n)
{
    const uint8_t *src = data;
    int64_t nparts = n ? (int64_t)((n + GZ_CHUNK - 1) / GZ_CHUNK) : 1;
    gz_part *part = calloc((size_t)nparts, sizeof *part);
    if (!part)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < nparts; i++) {
        part[i].src = src + (size_t)i * GZ_CHUNK;
        part[i].n = i == nparts - 1 ? n - (size_t)i * GZ_CHUNK : GZ_CHUNK;
    }
    gz_job job = {part, nparts, level, rle ? Z_RLE : Z_DEFAULT_STRATEGY, 0};
    sp_pool *pool = sp_pool_get(threads);
    sp_pool_for(pool, nparts, 1, gz_range, &job);
    sp_pool_put(pool);
    size_t total = 10 + 8;
    uLong crc = crc32(0, NULL, 0);
    for (int64_t i = 0; i < nparts && !job.failed; i++) {
        total += part[i].out_n;
        crc = crc32_combine(crc, part[i].crc, (z_off_t)part[i].n);
    }
    uint8_t *gz = job.failed ? NULL : malloc(total);
    if (gz) {   /* header: no name, mtime 0 (reproducible bytes), OS unknown */
        static const uint8_t head[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255};
        memcpy(gz, head, 10);
        size_t pos = 10;
        for (int64_t i = 0; i < nparts; i++) {
            memcpy(gz + pos, part[i].out, part[i].out_n);
            pos += part[i].out_n;
        }
        put_le32(gz + pos, (uint32_t)crc);
        put_le32(gz + pos + 4, (uint32_t)n);
    }
    for (int64_t i = 0; i < nparts; i++)
        free(part[i].out);
    free(part);
    if (!gz)
        return sp_fail(SP_ERR_NOMEM, "compression failed (out of memory)");
    *out = gz;
    *out_n = total;
    return SP_OK;
}
