/*
 * pickle.c — plain Python values (dict, list, tuple, int, float, str,
 * bool, None) as a pickle of protocol 2, which every Python 3 reads with
 * pickle.load. nnU-Net writes each case's properties (its reader's
 * geometry, the crop box) as CASE.pkl beside CASE.npz with
 * --save_probabilities, and its ensembling (nnUNetv2_ensemble) reads them
 * back to write the ensemble's labels; segpipe predict writes the same
 * file (src/pipeline/nnunet_props.c) with this writer.
 *
 * Containers are written the stackless way: a dict is EMPTY_DICT MARK
 * key value ... SETITEMS, a list EMPTY_LIST MARK ... APPENDS, a tuple
 * MARK ... TUPLE. No memo: nothing is shared.
 */
#include "pickle.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put(sp_pkl *p, const void *b, size_t n)
{
    if (p->bad)
        return;
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap : 256;
        while (cap < p->len + n)
            cap *= 2;
        unsigned char *q = realloc(p->buf, cap);
        if (!q) {
            p->bad = 1;
            return;
        }
        p->buf = q, p->cap = cap;
    }
    memcpy(p->buf + p->len, b, n);
    p->len += n;
}

static void op(sp_pkl *p, unsigned char c) { put(p, &c, 1); }

static void le(sp_pkl *p, uint64_t v, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put(p, b, (size_t)n);
}

void sp_pkl_begin(sp_pkl *p)
{
    memset(p, 0, sizeof *p);
    op(p, 0x80);   /* PROTO 2 */
    op(p, 2);
}

void sp_pkl_dict(sp_pkl *p) { op(p, '}'), op(p, '('); }
void sp_pkl_dict_end(sp_pkl *p) { op(p, 'u'); }
void sp_pkl_list(sp_pkl *p) { op(p, ']'), op(p, '('); }
void sp_pkl_list_end(sp_pkl *p) { op(p, 'e'); }
void sp_pkl_tuple(sp_pkl *p) { op(p, '('); }
void sp_pkl_tuple_end(sp_pkl *p) { op(p, 't'); }
void sp_pkl_bool(sp_pkl *p, int v) { op(p, v ? 0x88 : 0x89); }
void sp_pkl_none(sp_pkl *p) { op(p, 'N'); }

/* BININT (4 bytes, signed) when it fits, else LONG1 of 8 bytes */
void sp_pkl_int(sp_pkl *p, int64_t v)
{
    if (v >= INT32_MIN && v <= INT32_MAX) {
        op(p, 'J');
        le(p, (uint64_t)(uint32_t)(int32_t)v, 4);
    } else {
        op(p, 0x8a);
        op(p, 8);
        le(p, (uint64_t)v, 8);
    }
}

/* BINFLOAT: the IEEE double, big-endian */
void sp_pkl_float(sp_pkl *p, double v)
{
    uint64_t u;
    unsigned char b[8];
    memcpy(&u, &v, 8);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(u >> (56 - 8 * i));
    op(p, 'G');
    put(p, b, 8);
}

/* BINUNICODE: UTF-8 bytes after their 4-byte length */
void sp_pkl_str(sp_pkl *p, const char *s)
{
    size_t n = strlen(s);
    op(p, 'X');
    le(p, n, 4);
    put(p, s, n);
}

void sp_pkl_free(sp_pkl *p)
{
    free(p->buf);
    memset(p, 0, sizeof *p);
}

sp_status sp_pkl_write(sp_pkl *p, const char *path)
{
    op(p, '.');   /* STOP */
    if (p->bad) {
        sp_pkl_free(p);
        return sp_fail(SP_ERR_NOMEM, "pickle: out of memory");
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        sp_status st = sp_fail(SP_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
        sp_pkl_free(p);
        return st;
    }
    int bad = fwrite(p->buf, 1, p->len, f) != p->len;
    bad |= fclose(f) != 0;
    sp_pkl_free(p);
    if (bad) {
        remove(path);
        return sp_fail(SP_ERR_IO, "%s: cannot write the pickle", path);
    }
    return SP_OK;
}
