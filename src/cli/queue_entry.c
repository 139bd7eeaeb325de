/*
 * queue_entry.c — a job entry of the queue and the checks a worker makes
 * before trusting it (docs/scale-out.md, "Trust boundary"): every field
 * bounded and of the right shape, paths absolute, the model a name (never
 * a path), the ct options from a fixed list and validated by segpipe ct's
 * own parser, and optionally an HMAC-SHA256 over the fields with a key file
 * shared by `submit` and the workers. Reasons for a refusal name the field
 * and what is wrong with it, never its value.
 */
#include "queue.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int all_hex(const char *s, size_t n) { return strlen(s) == n && strspn(s, "0123456789abcdef") == n; }

/* printable text (and \x1f where sep) of at most cap - 1 bytes */
static int clean(const char *v, size_t len, size_t cap, int sep)
{
    if (len >= cap || strlen(v) != len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 32 && !(sep && c == 0x1f)) || c == 127)
            return 0;
    }
    return 1;
}

static int model_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n <= Q_MODEL_MAX && s[0] != '.' &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* one field k = v into j; 0 or -1 with why */
static int set_field(q_job *j, const char *k, const char *v, size_t len, char *why, size_t cap, unsigned *seen)
{
    static const char *const names[] = {"id", "input", "output", "model", "opts", "sig"};
    int f = -1;
    for (int i = 0; i < 6; i++)
        if (!strcmp(k, names[i]))
            f = i;
    if (f < 0)
        return snprintf(why, cap, "unknown field in the entry"), -1;
    if (*seen & (1u << f))
        return snprintf(why, cap, "field '%s' given twice", names[f]), -1;
    *seen |= 1u << f;
    char *dst[] = {j->id, j->input, j->output, j->model, j->opts, j->sig};
    size_t dcap[] = {sizeof j->id, sizeof j->input, sizeof j->output, sizeof j->model, sizeof j->opts, sizeof j->sig};
    if (!clean(v, len, dcap[f], f == 4))
        return snprintf(why, cap, "field '%s' too long or holds control characters", names[f]), -1;
    memcpy(dst[f], v, len + 1);
    if ((f == 1 || f == 2) && v[0] != '/')
        return snprintf(why, cap, "field '%s' is not an absolute path", names[f]), -1;
    if ((f == 1 || f == 2) && (strstr(v, "/../") || (len >= 3 && !strcmp(v + len - 3, "/.."))))
        return snprintf(why, cap, "field '%s' holds a '..' component", names[f]), -1;
    if (f == 3 && !model_name_ok(v))
        return snprintf(why, cap, "field 'model' is not a model name (letters, digits, '.', '_', '-'; never a "
                        "path)"), -1;
    if (f == 5 && !all_hex(v, 64))
        return snprintf(why, cap, "field 'sig' is not 64 hex digits"), -1;
    return 0;
}

int q_entry_parse(const redisReply *e, q_job *j, char *why, size_t cap)
{
    memset(j, 0, sizeof *j);
    snprintf(why, cap, "malformed stream entry");
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
        e->element[0]->len >= sizeof j->entry)
        return -1;
    snprintf(j->entry, sizeof j->entry, "%s", e->element[0]->str);
    const redisReply *f = e->element[1];
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2 || f->elements > 32)
        return -1;
    unsigned seen = 0;
    for (size_t i = 0; i < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len > 16)
            return -1;
        if (set_field(j, k->str, v->str, v->len, why, cap, &seen))
            return -1;
    }
    if (!(seen & 1) || !all_hex(j->id, 32))
        return snprintf(why, cap, "field 'id' missing or not 32 hex digits"), -1;
    if (!(seen & 2) || !(seen & 4))
        return snprintf(why, cap, "field 'input' or 'output' missing"), -1;
    return 0;
}

int q_key_load(const char *path, unsigned char *key, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        cli_errf("--key-file: cannot read %s\n", path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (st.st_mode & 077) {
        close(fd);
        cli_errf("--key-file %s is readable by others: chmod 600 it\n", path);
        return -1;
    }
    ssize_t n = read(fd, key, 1025);
    close(fd);
    while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r' || key[n - 1] == ' '))
        n--;
    if (n < 16 || n > 1024) {
        cli_errf("--key-file %s: the key must be 16 to 1024 bytes (e.g. openssl rand -hex 32)\n",
                path);
        return -1;
    }
    *len = (size_t)n;
    return 0;
}

void q_sign(const unsigned char *key, size_t klen, const q_job *j, char out[65])
{
    char msg[3 * PATH_MAX + Q_OPTS_MAX + 256];
    int n = snprintf(msg, sizeof msg, "segpipe-job-v1\n%s\n%s\n%s\n%s\n%s", j->id, j->input, j->output, j->model,
                     j->opts);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned ml = 0;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, (size_t)n, mac, &ml);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

int q_sig_ok(const unsigned char *key, size_t klen, const q_job *j)
{
    char want[65];
    q_sign(key, klen, j, want);
    return strlen(j->sig) == 64 && CRYPTO_memcmp(want, j->sig, 64) == 0;
}

/* ct options a job may carry: name, takes a value */
static const struct {
    const char *name;
    int value;
} allowed[] = {{"roi-subset", 1}, {"output-type", 1}, {"precision", 1}, {"device", 1}, {"step", 1},
               {"tile-batch", 1}, {"smooth", 0}, {"largest-component", 0}, {"min-component-ml", 1},
               {"keep-border", 0}, {"accumulator", 1}, {"no-passport", 0}, {"series", 1}};

/* argv[0..n): only allowed options, each by its exact name; --device's
 * value one of cpu, cuda, tensorrt (checked before the parser, which would
 * act on cuda:N) */
static int opts_allowed(int n, char **argv, char *why, size_t cap)
{
    for (int i = 0; i < n; i++) {
        const char *a = argv[i];
        size_t nl = strcspn(a + 2, "=");
        int k = -1;
        for (size_t m = 0; a[0] == '-' && a[1] == '-' && m < sizeof allowed / sizeof *allowed; m++)
            if (strlen(allowed[m].name) == nl && !strncmp(a + 2, allowed[m].name, nl))
                k = (int)m;
        if (k < 0)
            return snprintf(why, cap, "option %d is not one a queued job may carry (--roi-subset, --output-type, "
                            "--precision, --device, --step, --tile-batch, --smooth, --largest-component, "
                            "--min-component-ml, --keep-border, --accumulator, --no-passport, --series)", i + 1), -1;
        const char *v = a[2 + nl] ? a + 3 + nl : i + 1 < n ? argv[i + 1] : "";
        if (!strcmp(allowed[k].name, "device") && strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "tensorrt"))
            return snprintf(why, cap, "--device is cpu, cuda or tensorrt"), -1;
        if (allowed[k].value && !a[2 + nl])
            i++;   /* its value is the next argument */
    }
    return 0;
}

/* the allowed options through segpipe ct's parser (with a stand-in for
 * its INPUT), then nothing set that names a file or a worker's resource */
static int opts_check(int n, char **argv, ct_opts *o, char *why, size_t cap)
{
    if (n > 64)
        return snprintf(why, cap, "more than 64 ct option words"), -1;
    if (opts_allowed(n, argv, why, cap))
        return -1;
    char *av[67] = {"ct"};
    memcpy(av + 1, argv, (size_t)n * sizeof *av);
    av[n + 1] = "job-input";
    *o = (ct_opts){.cmd = "ct", .rp = sp_runtime_default_params(), .cp = sp_ct_default_params(), .shard_n = 1, .tta = -1,
                   .parts_resident = -1};
    o->rp.device = NULL;   /* only what the job names: the worker's own device otherwise */
    sp_ct_params d = sp_ct_default_params();
    if (cli_ct_parse(n + 2, av, o) != -1 || strcmp(o->input, "job-input"))
        return snprintf(why, cap, "ct options rejected by segpipe ct's parser (a value out of range or missing)"), -1;
    if (o->output || o->model || o->report || o->mlab || o->preview || o->inputs || o->split || o->shard_n != 1 ||
        o->rp.cache_optimized || o->cp.spill_dir || o->cp.spill != d.spill || o->cp.keep_model_labels ||
        o->crop_from)
        return snprintf(why, cap, "ct options set something a queued job may not carry"), -1;
    const char *p = o->rp.precision;
    if (p && strcmp(p, "auto") && strcmp(p, "fp32") && strcmp(p, "fp16") && strcmp(p, "int8"))
        return snprintf(why, cap, "--precision is auto, fp32, fp16 or int8"), -1;
    return 0;
}

int q_opts_join(int n, char **argv, char *out, size_t cap, char *why, size_t wcap)
{
    ct_opts o;
    if (opts_check(n, argv, &o, why, wcap))
        return -1;
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(argv[i]);
        if (!clean(argv[i], l, cap, 0) || len + l + 2 > cap)
            return snprintf(why, wcap, "ct options too long or with control characters"), -1;
        if (i)
            out[len++] = 0x1f;
        memcpy(out + len, argv[i], l + 1);
        len += l;
    }
    return 0;
}

int q_opts_parse(const char *opts, ct_opts *o, char *args, char *why, size_t cap)
{
    char *av[65];
    int n = 0;
    snprintf(args, Q_OPTS_MAX, "%s", opts);
    for (char *p = args; *p && n < 65; n++) {
        av[n] = p;
        p += strcspn(p, "\x1f");
        if (*p)
            *p++ = 0;
    }
    return opts_check(n, av, o, why, cap);
}

int q_under(const char *path, const char *root)
{
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/')
        return path[0] == '/';
    return !strncmp(path, root, n) && (path[n] == '/' || path[n] == 0);
}
