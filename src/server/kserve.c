/*
 * kserve.c — KServe v2 (Open Inference Protocol) model metadata, infer
 * requests (JSON tensors, or Triton's binary tensor extension: a JSON
 * header of Inference-Header-Content-Length bytes, then each input's
 * binary_data_size bytes in request order), output selection. Requests are
 * checked against the model before it runs: datatype, rank, fixed
 * dimensions, the element count in checked 64-bit arithmetic, binary sizes,
 * and every value finite. Answers: kserve_answer.c. ONNX Runtime's own messages (node
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

/* One request input's values: binary (bin, nbin bytes: raw little-endian
 * FP32) or the JSON "data" array. 0 or a message. */
static int input_values(const cJSON *in, const sp_io_info *io, sp_tensor *t, size_t n, const char *bin,
                        size_t nbin, char *msg, size_t msz)
{
    if (!(t->data = malloc(n ? n * sizeof(float) : 1)))
        return snprintf(msg, msz, "out of memory"), 503;
    float *f = t->data;
    if (bin) {
        if (nbin != n * sizeof(float))
            return snprintf(msg, msz, "input '%s': binary_data_size is %zu bytes, the shape holds %zu FP32 values",
                            io->name, nbin, n), 400;
        memcpy(f, bin, nbin);   /* the one copy (the body may be unaligned) */
        for (size_t k = 0; k < n; k++)
            if (!isfinite(f[k]))
                return snprintf(msg, msz, "input '%s': values must be finite FP32 numbers", io->name), 400;
        return 0;
    }
    const cJSON *data = cJSON_GetObjectItem(in, "data");
    if (!cJSON_IsArray(data))
        return snprintf(msg, msz, "input '%s': needs a \"data\" array or binary_data_size", io->name), 400;
    int bad = 0, inf = 0;
    size_t got = count_data(data, NULL, 0, 0, &bad, &inf);
    if (bad || got != n)
        return snprintf(msg, msz, "input '%s': shape holds %zu values, data has %zu%s", io->name, n, got,
                        bad ? " (non-numbers)" : ""), 400;
    if (inf)
        return snprintf(msg, msz, "input '%s': values must be finite FP32 numbers", io->name), 400;
    count_data(data, f, n, 0, &bad, &inf);
    return 0;
}

/* "parameters": {key: ...} of a request object; NULL when absent. */
static const cJSON *param(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItem(cJSON_GetObjectItem(o, "parameters"), key);
}

/* Where each request input's binary data starts (request order, as the
 * binary tensor extension appends them), -1 for JSON data; the total must
 * be the bytes after the JSON header. */
static int binary_offsets(const cJSON *inputs, size_t nbin, int64_t *off, size_t *size, char *msg, size_t msz)
{
    size_t pos = 0;
    int p = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, inputs) {
        const cJSON *b = param(e, "binary_data_size");
        off[p] = -1;
        size[p] = 0;
        if (b) {
            double v = cJSON_IsNumber(b) ? b->valuedouble : -1;
            if (!(v >= 0 && v <= 1e15) || v != floor(v) || (size_t)v > nbin - pos)
                return snprintf(msg, msz, "input %d: binary_data_size must be a byte count within the %zu binary "
                                "bytes after the JSON header", p, nbin), 400;
            off[p] = (int64_t)pos;
            size[p] = (size_t)v;
            pos += (size_t)v;
        }
        p++;
    }
    if (pos != nbin)
        return snprintf(msg, msz, "the inputs' binary_data_size add up to %zu bytes, %zu follow the JSON header",
                        pos, nbin), 400;
    return 0;
}

/* Parse and check every input; 0, or an HTTP status with msg. */
static int read_inputs(const cJSON *inputs, const char *bin, size_t nbin, const sp_io_info *ins, int ni,
                       sp_tensor *tin, char *msg, size_t msz)
{
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) != ni || ni > SP_MAX_RANK) {
        snprintf(msg, msz, "expected {\"inputs\": [...]} with %d input(s)", ni);
        return 400;
    }
    int64_t off[SP_MAX_RANK];
    size_t size[SP_MAX_RANK];
    int http = binary_offsets(inputs, nbin, off, size, msg, msz);
    for (int i = 0; i < ni && !http; i++) {
        const cJSON *in = NULL, *e;
        int p = 0, at = -1;
        cJSON_ArrayForEach(e, inputs) {
            const char *nm = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
            if (nm && !strcmp(nm, ins[i].name))
                in = e, at = p;
            p++;
        }
        if (!in)
            return snprintf(msg, msz, "input '%s' missing", ins[i].name), 400;
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItem(in, "datatype"));
        if (!dt || strcmp(dt, "FP32"))
            return snprintf(msg, msz, "input '%s': datatype must be FP32", ins[i].name), 400;
        const cJSON *shape = cJSON_GetObjectItem(in, "shape");
        if (!cJSON_IsArray(shape))
            return snprintf(msg, msz, "input '%s': needs a \"shape\" array", ins[i].name), 400;
        size_t n;
        if (read_shape(shape, &ins[i], &tin[i], &n, msg, msz))
            return 400;
        http = input_values(in, &ins[i], &tin[i], n, off[at] >= 0 ? bin + off[at] : NULL, size[at], msg, msz);
    }
    return http;
}

/* The requested outputs ("outputs": [{"name", "parameters": {"binary_data",
 * "classification"}}]; none: every output, binary when the request's
 * parameters say binary_data_output). 0 or an HTTP status with msg. */
static int read_outputs(const cJSON *body, const sp_io_info *outs, int no, sp_kserve_req *q, char *msg, size_t msz)
{
    const cJSON *want = cJSON_GetObjectItem(body, "outputs"), *e;
    const cJSON *all = param(body, "binary_data_output");
    int bin_all = cJSON_IsTrue(all);
    q->n = 0;
    if (!want) {
        for (int k = 0; k < no && k < SP_MAX_RANK; k++)
            q->sel[q->n++] = (sp_kserve_out){k, bin_all, 0};
        return 0;
    }
    if (!cJSON_IsArray(want) || cJSON_GetArraySize(want) < 1 || cJSON_GetArraySize(want) > SP_MAX_RANK)
        return snprintf(msg, msz, "\"outputs\" must list 1 to %d of the model's outputs", no), 400;
    cJSON_ArrayForEach(e, want) {
        const char *nm = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
        int k = 0;
        while (nm && k < no && strcmp(outs[k].name, nm))
            k++;
        if (!nm || k == no || k >= SP_MAX_RANK)
            return snprintf(msg, msz, "unknown output '%.64s'", nm ? nm : "(no name)"), 400;
        for (int i = 0; i < q->n; i++)
            if (q->sel[i].index == k)
                return snprintf(msg, msz, "output '%.64s' asked twice", nm), 400;
        const cJSON *b = param(e, "binary_data"), *c = param(e, "classification");
        double cls = c ? (cJSON_IsNumber(c) ? c->valuedouble : -1) : 0;
        if (!(cls >= 0 && cls <= 100000) || cls != floor(cls))
            return snprintf(msg, msz, "output '%.64s': classification must be a count of classes", nm), 400;
        q->sel[q->n++] = (sp_kserve_out){k, b ? cJSON_IsTrue(b) : bin_all, (int)cls};
    }
    return 0;
}

int sp_kserve_parse(const char *text, size_t len, size_t header_len, const sp_io_info *ins, int ni,
                    const sp_io_info *outs, int no, sp_tensor *tin, sp_kserve_req *q, char *msg, size_t msz)
{
    size_t jl = header_len ? header_len : len;
    if (jl > len)
        return snprintf(msg, msz, "Inference-Header-Content-Length is past the body's %zu bytes", len), 400;
    const char *end = NULL;
    cJSON *body = cJSON_ParseWithLengthOpts(text, jl, &end, 0);
    while (body && end && end < text + jl && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
        end++;
    if (body && end != text + jl) {
        cJSON_Delete(body);
        return snprintf(msg, msz, "the %s has bytes after its JSON (binary tensors need "
                        "Inference-Header-Content-Length)", header_len ? "inference header" : "body"), 400;
    }
    if (!body)
        return snprintf(msg, msz, "the %s is not valid JSON", header_len ? "inference header" : "body"), 400;
    const cJSON *rid = cJSON_GetObjectItem(body, "id");
    snprintf(q->id, sizeof q->id, "%s", cJSON_IsString(rid) ? rid->valuestring : "");
    int http = read_inputs(cJSON_GetObjectItem(body, "inputs"), text + jl, len - jl, ins, ni, tin, msg, msz);
    if (!http)
        http = read_outputs(body, outs, no, q, msg, msz);
    cJSON_Delete(body);
    return http;
}

void sp_kserve_infer(server *s, job *j, sp_package *pk)
{
    sp_model *m = sp_package_model(pk);
    int ni, no;
    const sp_io_info *ins = sp_model_inputs(m, &ni), *outs = sp_model_outputs(m, &no);
    sp_tensor tin[SP_MAX_RANK], tout[SP_MAX_RANK];
    memset(tin, 0, sizeof tin);
    memset(tout, 0, sizeof tout);
    int nout = no < SP_MAX_RANK ? no : SP_MAX_RANK;
    char msg[256] = "";
    sp_kserve_req q;
    double t0 = sp_now();
    char *plain = NULL;
    size_t plen = 0;
    if (j->gzip_in && (j->http = sp_gunzip(j->body, j->len, s->p.max_json_body, &plain, &plen)))
        snprintf(msg, sizeof msg, j->http == 413 ? "the inflated body is larger than --max-json-body"
                                                 : "the body is not valid gzip");
    if (!j->http)
        j->http = sp_kserve_parse(plain ? plain : j->body, plain ? plen : j->len, j->header_len, ins, ni, outs, nout,
                                  tin, &q, msg, sizeof msg);
    free(plain);
    double t1 = sp_now();
    if (!j->http) {
        sp_status st = sp_model_run(m, tin, ni, tout, nout);
        if (st) {
            SP_WARN("infer on model '%s': %s", j->me->name, sp_last_error());
            /* a tensor the model rejects (its shape or values) is the client's error: 400, as Triton */
            j->http = st == SP_ERR_INPUT ? 400 : sp_http_status(st);
            snprintf(msg, sizeof msg, "inference failed on this input (%s)",
                     j->http == 503 ? "out of memory" : j->http == 400 ? "the model did not accept it"
                                                                        : "an internal error");
        } else {
            j->t_end = sp_now();
            j->response = sp_kserve_answer(s, j, &q, outs, tout);
            j->http = j->response ? 200 : 503;
        }
    }
    j->t_input = t1 - t0;
    if (j->http != 200)
        j->resp = sp_error_body(1, j->http, msg[0] ? msg : "out of memory");
    for (int i = 0; i < SP_MAX_RANK; i++) {
        free(tin[i].data);
        sp_tensor_free_data(&tout[i]);
    }
}
