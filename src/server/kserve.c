/*
 * kserve.c — KServe v2 (Open Inference Protocol) model metadata and JSON
 * tensor inference. Requests are checked against the model before it runs:
 * datatype, rank, fixed dimensions, the element count in checked 64-bit
 * arithmetic, and every value finite. ONNX Runtime's own messages (node
 * names, source paths) stay in the log; the client gets a plain reason.
 */
#include "internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

char *sp_kserve_model_metadata(model_entry *me)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"name\": ");
    sp_buf_json_str(&b, me->name);
    sp_buf_puts(&b, ", \"versions\": [\"1\"], \"platform\": \"onnxruntime_onnx\"");
    sp_model *m = sp_package_model(me->pk);
    for (int k = 0; k < 2; k++) {
        int n;
        const sp_io_info *io = k ? sp_model_outputs(m, &n) : sp_model_inputs(m, &n);
        sp_buf_printf(&b, ", \"%s\": [", k ? "outputs" : "inputs");
        for (int i = 0; i < n; i++) {
            sp_buf_printf(&b, "%s{\"name\": ", i ? ", " : "");
            sp_buf_json_str(&b, io[i].name);
            sp_buf_printf(&b, ", \"datatype\": \"%s\", \"shape\": [",
                          io[i].meta.dtype == SP_DT_F32 ? "FP32" : sp_dtype_str(io[i].meta.dtype));
            for (int d = 0; d < io[i].meta.rank; d++)
                sp_buf_printf(&b, "%s%lld", d ? ", " : "", (long long)io[i].meta.shape[d]);
            sp_buf_puts(&b, "]}");
        }
        sp_buf_puts(&b, "]");
    }
    sp_buf_printf(&b, ", \"parameters\": {\"task\": \"%s\", \"classes\": %d}}\n", sp_package_task(me->pk),
                  sp_package_num_classes(me->pk));
    return sp_buf_take(&b);
}

/* Count (and with out, copy) the numbers of a nested data array. Sets *bad
 * for a non-number, *inf for a non-finite value (JSON 1e999). */
static size_t count_data(const cJSON *d, float *out, size_t cap, size_t pos, int *bad, int *inf)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, d) {
        if (cJSON_IsArray(e))
            pos = count_data(e, out, cap, pos, bad, inf);
        else if (cJSON_IsNumber(e)) {
            float f = (float)e->valuedouble;
            if (!isfinite(f))
                *inf = 1;
            if (out && pos < cap)
                out[pos] = f;
            pos++;
        } else
            *bad = 1;
    }
    return pos;
}

/* The shape of one request input, checked against the model's. 0 or a
 * message in msg. */
static int read_shape(const cJSON *shape, const sp_io_info *io, sp_tensor *t, size_t *count, char *msg,
                      size_t msz)
{
    int r = cJSON_GetArraySize(shape);
    if (r != io->meta.rank) {
        snprintf(msg, msz, "input '%s': shape has %d dimensions, the model takes %d", io->name, r, io->meta.rank);
        return -1;
    }
    uint64_t n = 1;
    t->dtype = SP_DT_F32;
    t->rank = r;
    for (int d = 0; d < r; d++) {
        const cJSON *e = cJSON_GetArrayItem(shape, d);
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(v >= 1 && v <= 1e12) || v != floor(v)) {
            snprintf(msg, msz, "input '%s': shape[%d] must be a positive integer", io->name, d);
            return -1;
        }
        if (io->meta.shape[d] > 0 && (int64_t)v != io->meta.shape[d]) {
            snprintf(msg, msz, "input '%s': shape[%d] is %.0f, the model takes %lld", io->name, d, v,
                     (long long)io->meta.shape[d]);
            return -1;
        }
        t->shape[d] = (int64_t)v;
        if (__builtin_mul_overflow(n, (uint64_t)v, &n) || n > ((uint64_t)1 << 40)) {
            snprintf(msg, msz, "input '%s': the shape's element count overflows (or passes 2^40)", io->name);
            return -1;
        }
    }
    *count = (size_t)n;
    return 0;
}

/* Parse and check every input; 0, or an HTTP status with msg. */
static int read_inputs(const cJSON *inputs, const sp_io_info *ins, int ni, sp_tensor *tin, char *msg, size_t msz)
{
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) != ni) {
        snprintf(msg, msz, "expected {\"inputs\": [...]} with %d input(s)", ni);
        return 400;
    }
    for (int i = 0; i < ni && i < SP_MAX_RANK; i++) {
        const cJSON *in = NULL, *e;
        cJSON_ArrayForEach(e, inputs) {
            const char *nm = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
            if (nm && !strcmp(nm, ins[i].name))
                in = e;
        }
        if (!in)
            return snprintf(msg, msz, "input '%s' missing", ins[i].name), 400;
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItem(in, "datatype"));
        if (!dt || strcmp(dt, "FP32"))
            return snprintf(msg, msz, "input '%s': datatype must be FP32", ins[i].name), 400;
        const cJSON *shape = cJSON_GetObjectItem(in, "shape"), *data = cJSON_GetObjectItem(in, "data");
        if (!cJSON_IsArray(shape) || !cJSON_IsArray(data))
            return snprintf(msg, msz, "input '%s': needs \"shape\" and \"data\" arrays", ins[i].name), 400;
        size_t n;
        if (read_shape(shape, &ins[i], &tin[i], &n, msg, msz))
            return 400;
        int bad = 0, inf = 0;
        size_t got = count_data(data, NULL, 0, 0, &bad, &inf);
        if (bad || got != n)
            return snprintf(msg, msz, "input '%s': shape holds %zu values, data has %zu%s", ins[i].name, n, got,
                            bad ? " (non-numbers)" : ""), 400;
        if (inf)
            return snprintf(msg, msz, "input '%s': values must be finite FP32 numbers", ins[i].name), 400;
        if (!(tin[i].data = malloc(n * sizeof(float))))
            return snprintf(msg, msz, "out of memory"), 503;
        count_data(data, tin[i].data, n, 0, &bad, &inf);
    }
    return 0;
}

/* The answer, written as libmicrohttpd sends it: a JSON head per output,
 * then its values formatted a chunk at a time from the tensor, so a 62 MB
 * tensor is never held again as 200 MB of text. */
typedef struct answer {
    char *heads[SP_MAX_RANK];     /* '{"name": ..., "data": [' per output; [0] has the preamble */
    sp_tensor t[SP_MAX_RANK];
    int n, k;                     /* outputs, the one being written */
    size_t q, count;              /* next value of output k (count: its values; -1 while in the head) */
    char pend[64];                /* one formatted value */
    const char *pp;               /* text made and not yet sent (into heads or pend) */
    size_t plen;
    int done;
} answer;

static void answer_free(void *cls)
{
    answer *a = cls;
    for (int k = 0; k < SP_MAX_RANK; k++) {
        free(a->heads[k]);
        sp_tensor_free_data(&a->t[k]);
    }
    free(a);
}

static size_t values_of(const sp_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->rank; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* The next piece of text: a head, one value, or an output's end. */
static const char *answer_next(answer *a, size_t *len)
{
    if (a->count == (size_t)-1) {
        a->count = values_of(&a->t[a->k]);
        a->q = 0;
        *len = strlen(a->heads[a->k]);
        return a->heads[a->k];
    }
    if (a->q < a->count) {   /* JSON has no NaN: null */
        float v = ((const float *)a->t[a->k].data)[a->q];
        int m = isfinite(v) ? snprintf(a->pend, sizeof a->pend, a->q ? ", %.9g" : "%.9g", (double)v)
                            : snprintf(a->pend, sizeof a->pend, a->q ? ", null" : "null");
        a->q++;
        *len = (size_t)m;
        return a->pend;
    }
    int last = ++a->k == a->n;
    a->count = (size_t)-1;
    a->done = last;
    *len = last ? 5 : 4;
    return last ? "]}]}\n" : "]}, ";
}

static ssize_t answer_write(void *cls, uint64_t pos, char *buf, size_t max)
{
    answer *a = cls;
    size_t w = 0;
    (void)pos;
    while (w < max) {
        if (!a->plen) {   /* nothing pending: the next piece (stable until the next call) */
            if (a->done)
                break;
            a->pp = answer_next(a, &a->plen);
        }
        size_t m = a->plen < max - w ? a->plen : max - w;
        memcpy(buf + w, a->pp, m);
        a->pp += m;
        a->plen -= m;
        w += m;
    }
    if (!w && a->done)
        return MHD_CONTENT_READER_END_OF_STREAM;
    return (ssize_t)w;
}

static struct MHD_Response *outputs_answer(job *j, const char *id, const sp_io_info *outs, sp_tensor *tout,
                                           int nout)
{
    answer *a = nout > 0 ? calloc(1, sizeof *a) : NULL;
    if (!a)
        return NULL;
    for (int k = 0; k < nout; k++) {
        sp_buf b = {0};
        if (!k) {
            sp_buf_puts(&b, "{\"model_name\": ");
            sp_buf_json_str(&b, j->me->name);
            if (id[0]) {   /* the request's id, echoed */
                sp_buf_puts(&b, ", \"id\": ");
                sp_buf_json_str(&b, id);
            }
            sp_buf_printf(&b, ", \"model_version\": \"1\", \"parameters\": {\"queue_wait_seconds\": %.6f, "
                              "\"processing_seconds\": %.6f}, \"outputs\": [",
                          j->t_start - j->t_enq, j->t_end - j->t_start);
        }
        sp_buf_puts(&b, "{\"name\": ");
        sp_buf_json_str(&b, outs[k].name);
        sp_buf_puts(&b, ", \"datatype\": \"FP32\", \"shape\": [");
        for (int d = 0; d < tout[k].rank; d++)
            sp_buf_printf(&b, "%s%lld", d ? ", " : "", (long long)tout[k].shape[d]);
        sp_buf_puts(&b, "], \"data\": [");
        a->heads[k] = sp_buf_take(&b);
        a->t[k] = tout[k];   /* the answer owns the tensors now */
        memset(&tout[k], 0, sizeof tout[k]);
    }
    a->n = nout;
    a->count = (size_t)-1;   /* start with the first head */
    for (int k = 0; k < nout; k++)
        if (!a->heads[k]) {
            answer_free(a);
            return NULL;
        }
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 << 10, answer_write, a,
                                                               answer_free);
    if (!r)
        answer_free(a);
    return r;
}

int sp_kserve_parse(const char *text, size_t len, const sp_io_info *ins, int ni, sp_tensor *tin, char *id,
                    size_t idsz, char *msg, size_t msz)
{
    cJSON *body = cJSON_ParseWithLength(text, len);
    if (!body)
        return snprintf(msg, msz, "the body is not valid JSON"), 400;
    const cJSON *rid = cJSON_GetObjectItem(body, "id");
    if (id && idsz)
        snprintf(id, idsz, "%s", cJSON_IsString(rid) ? rid->valuestring : "");
    int http = read_inputs(cJSON_GetObjectItem(body, "inputs"), ins, ni, tin, msg, msz);
    cJSON_Delete(body);
    return http;
}

void sp_kserve_infer(server *s, job *j)
{
    (void)s;
    sp_model *m = sp_package_model(j->me->pk);
    int ni, no;
    const sp_io_info *ins = sp_model_inputs(m, &ni), *outs = sp_model_outputs(m, &no);
    sp_tensor tin[SP_MAX_RANK], tout[SP_MAX_RANK];
    memset(tin, 0, sizeof tin);
    memset(tout, 0, sizeof tout);
    int nout = no < SP_MAX_RANK ? no : SP_MAX_RANK;
    char msg[256] = "";
    char id[128];
    j->http = sp_kserve_parse(j->body, j->len, ins, ni, tin, id, sizeof id, msg, sizeof msg);
    if (!j->http) {
        sp_status st = sp_model_run(m, tin, ni, tout, nout);
        if (st) {
            SP_WARN("infer on model '%s': %s", j->me->name, sp_last_error());
            j->http = sp_http_status(st);
            snprintf(msg, sizeof msg, "inference failed on this input (%s)",
                     j->http == 503 ? "out of memory" : "the model did not accept it");
        } else {
            j->t_end = sp_now();
            j->response = outputs_answer(j, id, outs, tout, nout);
            j->http = j->response ? 200 : 503;
        }
    }
    if (j->http != 200)
        j->resp = sp_error_body(1, j->http, msg[0] ? msg : "out of memory");
    for (int i = 0; i < SP_MAX_RANK; i++) {
        free(tin[i].data);
        sp_tensor_free_data(&tout[i]);
    }
}
