/*
 * kserve_answer.c — KServe v2 infer answers, written as libmicrohttpd sends
 * them, never held whole:
 *  - JSON: a head per output, then its values formatted a few at a time
 *    from the tensor (a 62 MB tensor never becomes 200 MB of text at once);
 *  - binary tensor extension (Triton's): the JSON header, then each binary
 *    output's raw little-endian bytes straight from the tensor (one copy,
 *    into the socket buffer), with Inference-Header-Content-Length and the
 *    total Content-Length known before the first byte.
 * The classification extension turns an output into BYTES strings
 * "score:index[:label]" of its top K values per batch item.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { P_TEXT, P_VALUES, P_RAW };

typedef struct piece {
    int kind;
    char *text;                   /* P_TEXT (owned) */
    size_t len;
    const sp_tensor *t;           /* P_VALUES, P_RAW: one of the answer's tensors */
} piece;

typedef struct answer {
    piece p[3 * SP_MAX_RANK + 2];
    int np, k;                    /* pieces, the one being written */
    size_t q;                     /* P_VALUES: the next value */
    char pend[64];
    const char *pp;               /* bytes made and not yet sent */
    size_t plen;
    sp_tensor t[SP_MAX_RANK];     /* owned */
    server *s;                    /* held: bytes counted in s->answer_bytes until freed */
    size_t held;
} answer;

static void answer_free(void *cls)
{
    answer *a = cls;
    if (a->held) {   /* may run under s->mu (a job's last reference): no lock here */
        atomic_fetch_sub(&a->s->answer_bytes, a->held);
        pthread_cond_broadcast(&a->s->qcv);
    }
    for (int i = 0; i < a->np; i++)
        free(a->p[i].text);
    for (int k = 0; k < SP_MAX_RANK; k++)
        sp_tensor_free_data(&a->t[k]);
    free(a);
}

static size_t values_of(const sp_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->rank; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* b's bytes as the next piece (b is emptied) */
static int add_text(answer *a, sp_buf *b)
{
    size_t n = b->len;
    char *s = b->oom ? NULL : sp_buf_take(b);
    if (!s)
        return -1;
    a->p[a->np++] = (piece){P_TEXT, s, n, NULL};
    return 0;
}

/* The next bytes to send (NULL at the end). */
static const char *next_chunk(answer *a, size_t *len)
{
    while (a->k < a->np) {
        piece *p = &a->p[a->k];
        if (p->kind == P_TEXT) {
            a->k++;
            *len = p->len;
            return p->text;
        }
        if (p->kind == P_RAW) {
            a->k++;
            *len = values_of(p->t) * sizeof(float);
            return p->t->data;
        }
        if (a->q < values_of(p->t)) {   /* JSON has no NaN: null */
            float v = ((const float *)p->t->data)[a->q];
            int m = isfinite(v) ? snprintf(a->pend, sizeof a->pend, a->q ? ", %.9g" : "%.9g", (double)v)
                                : snprintf(a->pend, sizeof a->pend, a->q ? ", null" : "null");
            a->q++;
            *len = (size_t)m;
            return a->pend;
        }
        a->k++;
        a->q = 0;
    }
    return NULL;
}

static ssize_t answer_write(void *cls, uint64_t pos, char *buf, size_t max)
{
    answer *a = cls;
    size_t w = 0;
    (void)pos;
    while (w < max) {
        if (!a->plen && !(a->pp = next_chunk(a, &a->plen)))
            break;
        size_t m = a->plen < max - w ? a->plen : max - w;
        memcpy(buf + w, a->pp, m);
        a->pp += m;
        a->plen -= m;
        w += m;
    }
    return w ? (ssize_t)w : MHD_CONTENT_READER_END_OF_STREAM;
}

/* The classification extension for output t: per batch item, its top K
 * values as "score:index[:label]" (labels when an item has one value per
 * class of the package). JSON: the "data" array text; binary: Triton's
 * BYTES encoding (4-byte little-endian length, then the bytes). */
static int classify(const sp_tensor *t, int K, const sp_package *pk, int binary, sp_buf *out, int64_t *rows,
                    int *kk)
{
    int64_t B = t->rank >= 1 ? t->shape[0] : 1;
    size_t per = B > 0 ? values_of(t) / (size_t)B : 0;
    int k = per < (size_t)K ? (int)per : K;
    size_t *idx = malloc((size_t)(k ? k : 1) * sizeof *idx);
    if (!idx)
        return -1;
    int labelled = per == (size_t)sp_package_num_classes(pk);
    for (int64_t b = 0; b < B; b++) {
        const float *v = (const float *)t->data + (size_t)b * per;
        int got = sp_top_k(v, per, k, idx);
        for (int i = 0; i < got; i++) {
            char s[192];
            int n = snprintf(s, sizeof s, "%.6g:%zu", (double)v[idx[i]], idx[i]);
            if (labelled && n < (int)sizeof s)
                snprintf(s + n, sizeof s - (size_t)n, ":%s", sp_package_label(pk, (int)idx[i]));
            if (binary) {
                uint32_t len = (uint32_t)strlen(s);
                unsigned char le[4] = {len & 255, (len >> 8) & 255, (len >> 16) & 255, len >> 24};
                sp_buf_append(out, le, 4);
                sp_buf_append(out, s, len);
            } else {
                sp_buf_puts(out, b || i ? ", " : "");
                sp_buf_json_str(out, s);
            }
        }
    }
    free(idx);
    *rows = B;
    *kk = k;
    return 0;
}

static void head(sp_buf *b, const char *name, const char *dtype, const int64_t *shape, int rank)
{
    sp_buf_puts(b, "{\"name\": ");
    sp_buf_json_str(b, name);
    sp_buf_printf(b, ", \"datatype\": \"%s\", \"shape\": [", dtype);
    for (int d = 0; d < rank; d++)
        sp_buf_printf(b, "%s%lld", d ? ", " : "", (long long)shape[d]);
    sp_buf_puts(b, "]");
}

/* Values as JSON text into b (binary answers with a JSON output: their
 * header must be whole before the binary part). */
static void values_text(sp_buf *b, const sp_tensor *t)
{
    size_t n = values_of(t);
    const float *v = t->data;
    for (size_t i = 0; i < n; i++) {
        if (isfinite(v[i]))
            sp_buf_printf(b, i ? ", %.9g" : "%.9g", (double)v[i]);
        else
            sp_buf_puts(b, i ? ", null" : "null");
    }
}

/* One output into b (and the answer's pieces): returns -1 on failure. */
static int one_output(answer *a, sp_buf *b, const sp_kserve_out *o, const sp_io_info *io, const sp_tensor *t,
                      const sp_package *pk, int binary_answer, sp_buf *blob)
{
    if (o->classification > 0) {
        sp_buf cls = {0};
        int64_t rows;
        int k;
        if (classify(t, o->classification, pk, o->binary, &cls, &rows, &k))
            return -1;
        int64_t shape[2] = {rows, k};
        head(b, io->name, "BYTES", shape, 2);
        if (o->binary) {
            sp_buf_printf(b, ", \"parameters\": {\"binary_data_size\": %zu}}", cls.len);
            *blob = cls;   /* sent after the header, in output order */
            return 0;
        } else {
            sp_buf_puts(b, ", \"data\": [");
            sp_buf_append(b, cls.s ? cls.s : "", cls.len);
            sp_buf_puts(b, "]}");
        }
        sp_buf_free(&cls);
        return 0;
    }
    head(b, io->name, "FP32", t->shape, t->rank);
    if (o->binary) {
        sp_buf_printf(b, ", \"parameters\": {\"binary_data_size\": %zu}}", values_of(t) * sizeof(float));
        return 0;
    }
    sp_buf_puts(b, ", \"data\": [");
    if (binary_answer) {
        values_text(b, t);
    } else {   /* streamed: the text so far, then the values, then the rest */
        if (add_text(a, b))
            return -1;
        a->p[a->np++] = (piece){P_VALUES, NULL, 0, t};
    }
    sp_buf_puts(b, "]}");
    return 0;
}

struct MHD_Response *sp_kserve_answer(server *s, job *j, const sp_kserve_req *q, const sp_io_info *outs,
                                      sp_tensor *tout)
{
    answer *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    int binary = 0;
    for (int i = 0; i < q->n; i++) {
        binary |= q->sel[i].binary;
        a->t[q->sel[i].index] = tout[q->sel[i].index];   /* the answer owns the tensors now */
        memset(&tout[q->sel[i].index], 0, sizeof tout[0]);
    }
    sp_buf b = {0}, blob[SP_MAX_RANK];
    memset(blob, 0, sizeof blob);
    sp_buf_puts(&b, "{\"model_name\": ");
    sp_buf_json_str(&b, j->me->name);
    if (q->id[0]) {   /* the request's id, echoed */
        sp_buf_puts(&b, ", \"id\": ");
        sp_buf_json_str(&b, q->id);
    }
    sp_buf_printf(&b, ", \"model_version\": \"1\", \"parameters\": {\"queue_wait_seconds\": %.6f, "
                      "\"processing_seconds\": %.6f}, \"outputs\": [",
                  j->t_start - j->t_enq, j->t_end - j->t_start);
    int bad = 0;
    for (int i = 0; i < q->n && !bad; i++) {
        sp_buf_puts(&b, i ? ", " : "");
        const sp_kserve_out *o = &q->sel[i];
        bad = one_output(a, &b, o, &outs[o->index], &a->t[o->index], j->me->pk, binary, &blob[i]);
    }
    sp_buf_puts(&b, "]}\n");
    size_t header_len = b.len, total = b.len;
    bad = bad || add_text(a, &b);
    for (int i = 0; i < q->n && binary && !bad; i++) {   /* the binary part, in output order */
        const sp_kserve_out *o = &q->sel[i];
        if (!o->binary)
            continue;
        if (o->classification > 0) {   /* its BYTES, made above */
            total += blob[i].len;
            bad = add_text(a, &blob[i]);
            continue;
        }
        a->p[a->np++] = (piece){P_RAW, NULL, 0, &a->t[o->index]};
        total += values_of(&a->t[o->index]) * sizeof(float);
    }
    for (int i = 0; i < SP_MAX_RANK; i++)
        sp_buf_free(&blob[i]);
    if (bad) {
        answer_free(a);
        return NULL;
    }
    /* what a client that does not read holds: counted against --max-memory */
    for (int k = 0; k < SP_MAX_RANK; k++)
        a->held += a->t[k].data ? values_of(&a->t[k]) * sp_dtype_size(a->t[k].dtype) : 0;
    for (int i = 0; i < a->np; i++)
        a->held += a->p[i].len;
    a->s = s;
    atomic_fetch_add(&s->answer_bytes, a->held);
    j->me->infer_need = a->held;
    struct MHD_Response *r = j->gzip_out ? sp_gzip_response(a, answer_write, answer_free)
                           : MHD_create_response_from_callback(binary ? total : MHD_SIZE_UNKNOWN, 64 << 10,
                                                               answer_write, a, answer_free);
    if (!r) {
        if (!j->gzip_out)
            answer_free(a);
        return NULL;
    }
    if (binary) {
        char n[32];
        snprintf(n, sizeof n, "%zu", header_len);
        MHD_add_response_header(r, "Inference-Header-Content-Length", n);
        j->resp_ctype = "application/octet-stream";
    }
    return r;
}
