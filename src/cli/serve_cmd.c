/* serve_cmd.c — `segpipe serve`: options in, sp_serve out. */
#include "cli.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

static void serve_ready(const char *url, void *user)
{
    (void)user;
    printf("segpipe serve: ready on %s\n", url);
    fflush(stdout);
}

static void serve_help(void)
{
    printf("usage: segpipe serve --model NAME=DIR [--model ...] [--host 127.0.0.1] [--port 8555]\n"
           "         [--workers N] [--queue N] [--timeout S] [--threads N] [--device D]\n"
           "         [--precision auto|fp32|fp16] [--tile-batch N]\n"
           "         [--batch-window-ms MS] [--max-batch N]\n"
           "         [--api-key-file FILE] [--protect-health] [--tls-cert PEM --tls-key PEM]\n"
           "         [--max-body BYTES] [--max-json-body BYTES] [--max-buffered BYTES] [--max-memory BYTES]\n"
           "         [--max-connections N] [--max-connections-per-ip N] [--read-timeout S] [--body-timeout S]\n"
           "         [--header-timeout S]\n"
           "         [--max-jobs N] [--max-stored BYTES] [--result-ttl S] [--max-pixels N] [--no-ui]\n"
           "--device: cpu, cuda, cuda:N, gpu:N; several GPUs: cuda:0,cuda:1 or cuda:all (one worker and one copy\n"
           "of each model per GPU, docs/gpu.md). --tile-batch N: CT tiles per inference call (default auto; 4 on a\n"
           "GPU: 11%% faster warm for 2x the GPU memory, docs/gpu.md)\n"
           "HTTP service: KServe v2 (/v2/...), POST /v1/ct and /v1/segment-batch, asynchronous /v1/jobs,\n"
           "/v1/status, /metrics, and a web page on / (docs/ui.md). See docs/service.md. SIGTERM/SIGINT: finish accepted requests, exit 0.\n");
}

static int add_model(const char *arg, sp_serve_model *models, char **owned, int *nm)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1] || *nm == 32 || eq - arg >= 64)
        return -1;
    owned[*nm] = strdup(arg);
    if (!owned[*nm])
        return -1;
    owned[*nm][eq - arg] = 0;
    models[*nm].name = owned[*nm];
    models[*nm].dir = owned[*nm] + (eq - arg) + 1;
    (*nm)++;
    return 0;
}

/* Beyond loopback without a key, anyone who reaches the port may run the
 * models and read results: said on stderr at start (not an error, as a
 * closed network or a proxy may stand in front). */
static void warn_exposed(const sp_serve_params *sp)
{
    struct in_addr a;
    if (!sp->host || inet_pton(AF_INET, sp->host, &a) != 1 || (ntohl(a.s_addr) >> 24) == 127)
        return;
    if (!sp->api_key_file)
        fprintf(stderr, "segpipe serve: warning: listening on %s, beyond loopback, without an API key: anyone who "
                        "can reach port %d may run the models and fetch results (set --api-key-file; "
                        "docs/service.md)\n", sp->host, sp->port);
    if (!sp->tls_cert)
        fprintf(stderr, "segpipe serve: warning: listening on %s without TLS: scans, results%s cross the network "
                        "in clear text (set --tls-cert/--tls-key or put a TLS proxy in front)\n", sp->host,
                sp->api_key_file ? " and API keys" : "");
}

/* what the options fill */
typedef struct serve_ctx {
    sp_serve_params sp;
    sp_serve_model models[32];
    char *owned[32];
    int nm, verbose;
} serve_ctx;

static int opt_model(const char *cmd, const char *v, void *ctx)
{
    serve_ctx *c = ctx;
    return add_model(v, c->models, c->owned, &c->nm)
               ? cli_usage_error(cmd, "--model NAME=DIR (at most 32, names under 64 characters)") : 0;
}

/* CT tiles per inference call, read by the service from the environment */
static int opt_tile_batch(const char *cmd, const char *v, void *ctx)
{
    int n;
    (void)ctx;
    if (cli_int(cmd, "--tile-batch", v, 1, 32, &n))
        return 2;
    char buf[16];
    snprintf(buf, sizeof buf, "%d", n);
    setenv("SEGPIPE_TILE_BATCH", buf, 1);
    return 0;
}

/* argv into c; 0 to serve, -1 after --help, else an exit code */
static int serve_parse(int argc, char **argv, serve_ctx *c)
{
    sp_serve_params *sp = &c->sp;
#define I_(n, d, l, h) {.name = n, .kind = CLI_INT, .dst = d, .lo = l, .hi = h, .value = "N"}
#define N_(n, d, l, h) {.name = n, .kind = CLI_NUM, .dst = d, .lo = l, .hi = h, .value = "S"}
#define Z_(n, d) {.name = n, .kind = CLI_SIZE, .dst = d, .value = "BYTES"}
    const cli_opt t[] = {
        {.name = "model", .letter = 'm', .kind = CLI_FN, .fn = opt_model, .value = "NAME=DIR"},
        {.name = "host", .kind = CLI_STR, .dst = &sp->host, .value = "ADDRESS"},
        {.name = "port", .letter = 'p', .kind = CLI_INT, .dst = &sp->port, .lo = 0, .hi = 65535, .value = "N"},
        I_("workers", &sp->workers, 1, 256), I_("queue", &sp->queue, 1, 100000),
        Z_("max-body", &sp->max_body), Z_("max-json-body", &sp->max_json_body),
        Z_("max-buffered", &sp->max_buffered), Z_("max-memory", &sp->max_memory),
        Z_("max-stored", &sp->max_stored), N_("timeout", &sp->timeout, 0.001, 1e6),
        N_("read-timeout", &sp->read_timeout, 1, 3600), N_("body-timeout", &sp->body_timeout, 1, 86400),
        N_("header-timeout", &sp->header_timeout, 1, 3600), N_("result-ttl", &sp->result_ttl, 1, 1e7),
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &sp->threads, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "device", .kind = CLI_STR, .dst = &sp->device, .value = "cpu, cuda, cuda:N, gpu:N or a list"},
        {.name = "verbose", .letter = 'v', .kind = CLI_FLAG, .dst = &c->verbose},
        {.name = "precision", .kind = CLI_STR, .dst = &sp->precision, .value = "auto, fp32 or fp16"},
        {.name = "batch-window-ms", .kind = CLI_NUM, .dst = &sp->batch_window_ms, .lo = 0, .hi = 10000,
         .value = "MS"},
        I_("max-batch", &sp->max_batch, 1, 64),
        {.name = "tile-batch", .kind = CLI_FN, .fn = opt_tile_batch, .value = "N"},
        I_("max-connections", &sp->max_connections, 16, 1000000),
        I_("max-connections-per-ip", &sp->max_per_ip, 1, 1000000), I_("max-jobs", &sp->max_jobs, 1, 1000000),
        {.name = "api-key-file", .kind = CLI_STR, .dst = &sp->api_key_file, .value = "FILE"},
        {.name = "protect-health", .kind = CLI_FLAG, .dst = &sp->protect_health},
        {.name = "tls-cert", .kind = CLI_STR, .dst = &sp->tls_cert, .value = "PEM"},
        {.name = "tls-key", .kind = CLI_STR, .dst = &sp->tls_key, .value = "PEM"},
        {.name = "max-pixels", .kind = CLI_SIZE, .dst = &sp->max_pixels, .lo = 1, .value = "N"},
        {.name = "no-ui", .kind = CLI_FLAG, .dst = &sp->no_ui},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
#undef I_
#undef N_
#undef Z_
    cli_args a = {0};
    int rc = cli_parse("serve", t, NULL, argc, argv, c, &a);
    if (rc == CLI_HELP_ASKED)
        return serve_help(), -1;
    if (!rc && (!c->nm || a.n))
        rc = cli_usage_error("serve", "at least one --model NAME=DIR, and no other arguments");
    return rc;
}

int cmd_serve(int argc, char **argv)
{
    static serve_ctx c;
    memset(&c, 0, sizeof c);
    c.sp = sp_serve_default_params();
    int rc = serve_parse(argc, argv, &c), nm = c.nm;
    sp_serve_params sp = c.sp;
    char devs[SP_MAX_GPUS][16];
    int nd = 0;
    if (!rc && sp.device && sp_device_list(sp.device, devs, SP_MAX_GPUS, &nd))
        rc = cli_usage_error("serve", sp_last_error());
    /* a model that crashes the GPU provider is refused at start (probed on the first GPU of a list) */
    for (int i = 0; !rc && i < nm; i++)
        rc = cli_probe(c.models[i].dir, sp.device ? devs[0] : NULL);
    if (!rc) {
        cli_set_logging(c.verbose);
        sp.models = c.models;
        sp.n_models = nm;
        sp.on_ready = serve_ready;
        warn_exposed(&sp);
        sp_status st = sp_serve(&sp);
        rc = st ? cli_fail(st, NULL) : 0;
    }
    for (int i = 0; i < nm; i++)
        free(c.owned[i]);
    return rc < 0 ? 0 : rc;
}
