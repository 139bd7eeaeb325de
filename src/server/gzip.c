/*
 * gzip.c — Content-Encoding: gzip on the KServe infer endpoint, as Triton
 * clients use it: request bodies inflated (never past a byte limit: a gzip
 * bomb is refused, not expanded), answers deflated as they are written
 * (Inference-Header-Content-Length keeps counting the uncompressed JSON).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int sp_gunzip(const char *in, size_t n, size_t cap, char **out, size_t *outn)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return 503;
    size_t have = 0, room = n * 4 + 4096 < cap ? n * 4 + 4096 : cap;
    char *buf = malloc(room + 1);
    int rc = buf ? Z_OK : Z_MEM_ERROR;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)(n < 0x7fffffff ? n : 0x7fffffff);
    while (rc == Z_OK) {
        if (have == room) {
            if (room >= cap) {
                rc = Z_BUF_ERROR;   /* past the limit */
                break;
            }
            room = room * 2 < cap ? room * 2 : cap;
            char *nb = realloc(buf, room + 1);
            if (!nb) {
                rc = Z_MEM_ERROR;
                break;
            }
            buf = nb;
        }
        z.next_out = (Bytef *)buf + have;
        z.avail_out = (uInt)(room - have);
        rc = inflate(&z, Z_NO_FLUSH);
        have = room - z.avail_out;
        if (rc == Z_BUF_ERROR && z.avail_in == 0)
            rc = Z_DATA_ERROR;   /* truncated */
    }
    inflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(buf);
        return rc == Z_MEM_ERROR ? 503 : rc == Z_BUF_ERROR ? 413 : 400;
    }
    buf[have] = 0;
    *out = buf;
    *outn = have;
    return 0;
}

typedef struct gz {
    void *inner;
    MHD_ContentReaderCallback read;
    MHD_ContentReaderFreeCallback release;
    z_stream z;
    char in[64 << 10];
    int in_end, done;
} gz;

static ssize_t gz_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    gz *g = cls;
    if (g->done)
        return MHD_CONTENT_READER_END_OF_STREAM;
    g->z.next_out = (Bytef *)buf;
    g->z.avail_out = (uInt)(max < 0x7fffffff ? max : 0x7fffffff);
    while (g->z.avail_out > 0 && !g->done) {
        if (g->z.avail_in == 0 && !g->in_end) {
            ssize_t n = g->read(g->inner, pos, g->in, sizeof g->in);
            if (n == MHD_CONTENT_READER_END_OF_STREAM || n <= 0)
                g->in_end = 1;
            else {
                g->z.next_in = (Bytef *)g->in;
                g->z.avail_in = (uInt)n;
            }
        }
        int rc = deflate(&g->z, g->in_end ? Z_FINISH : Z_NO_FLUSH);
        if (rc == Z_STREAM_END)
            g->done = 1;
        else if (rc != Z_OK && rc != Z_BUF_ERROR)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t w = (size_t)((char *)g->z.next_out - buf);
    return w ? (ssize_t)w : MHD_CONTENT_READER_END_OF_STREAM;
}

static void gz_free(void *cls)
{
    gz *g = cls;
    deflateEnd(&g->z);
    g->release(g->inner);
    free(g);
}

struct MHD_Response *sp_gzip_response(void *inner, MHD_ContentReaderCallback read, MHD_ContentReaderFreeCallback release)
{
    gz *g = calloc(1, sizeof *g);
    if (!g || deflateInit2(&g->z, 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(g);
        release(inner);
        return NULL;
    }
    g->inner = inner;
    g->read = read;
    g->release = release;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 << 10, gz_read, g, gz_free);
    if (!r) {
        gz_free(g);
        return NULL;
    }
    MHD_add_response_header(r, "Content-Encoding", "gzip");
    return r;
}
