/* serve_cmd.c — `segpipe serve`: options in, sp_serve out. */
#include "cli.h"

#include <arpa/inet.h>
#include <getopt.h>
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

/* one option into sp; 0, 1 for --help, or -1 (message printed) */
static int serve_opt(int c, const char *a, sp_serve_params *sp, int *verbose)
{
    const char *cmd = "serve";
    switch (c) {
    case 'H': sp->host = a; return 0;
    case 'p': return cli_int(cmd, "--port", a, 0, 65535, &sp->port);
    case 'w': return cli_int(cmd, "--workers", a, 1, 256, &sp->workers);
    case 'Q': return cli_int(cmd, "--queue", a, 1, 100000, &sp->queue);
    case 'B': return cli_size(cmd, "--max-body", a, &sp->max_body);
    case 'J': return cli_size(cmd, "--max-json-body", a, &sp->max_json_body);
    case 'U': return cli_size(cmd, "--max-buffered", a, &sp->max_buffered);
    case 'Y': return cli_size(cmd, "--max-memory", a, &sp->max_memory);
    case 'S': return cli_size(cmd, "--max-stored", a, &sp->max_stored);
    case 'T': return cli_num(cmd, "--timeout", a, 0.001, 1e6, &sp->timeout);
    case 'R': return cli_num(cmd, "--read-timeout", a, 1, 3600, &sp->read_timeout);
    case 'D': return cli_num(cmd, "--body-timeout", a, 1, 86400, &sp->body_timeout);
    case 'L': return cli_num(cmd, "--result-ttl", a, 1, 1e7, &sp->result_ttl);
    case 't': return cli_int(cmd, "--threads", a, 0, 1024, &sp->threads);
    case 'd': sp->device = a; return 0;
    case 'y': sp->precision = a; return 0;
    case 'W': return cli_num(cmd, "--batch-window-ms", a, 0, 10000, &sp->batch_window_ms);
    case 'b': {          /* CT tiles per inference call, read by the service from the environment */
        int v;
        if (cli_int(cmd, "--tile-batch", a, 1, 32, &v))
            return -1;
        char buf[16];
        snprintf(buf, sizeof buf, "%d", v);
        setenv("SEGPIPE_TILE_BATCH", buf, 1);
        return 0;
    }
    case 'X': return cli_int(cmd, "--max-batch", a, 1, 64, &sp->max_batch);
    case 'C': return cli_int(cmd, "--max-connections", a, 16, 1000000, &sp->max_connections);
    case 'I': return cli_int(cmd, "--max-connections-per-ip", a, 1, 1000000, &sp->max_per_ip);
    case 'G': return cli_num(cmd, "--header-timeout", a, 1, 3600, &sp->header_timeout);
    case 'j': return cli_int(cmd, "--max-jobs", a, 1, 1000000, &sp->max_jobs);
    case 'x': {
        size_t v;
        if (cli_size(cmd, "--max-pixels", a, &v) || !v)
            return -1;
        sp->max_pixels = v;
        return 0;
    }
    case 'K': sp->api_key_file = a; return 0;
    case 'P': sp->protect_health = 1; return 0;
    case 'c': sp->tls_cert = a; return 0;
    case 'k': sp->tls_key = a; return 0;
    case 'N': sp->no_ui = 1; return 0;
    case 'v': *verbose = 1; return 0;
    case 'h': serve_help(); return 1;
    default: return -2;
    }
}

int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'}, {"workers", required_argument, 0, 'w'},
        {"queue", required_argument, 0, 'Q'}, {"max-body", required_argument, 0, 'B'},
        {"max-json-body", required_argument, 0, 'J'}, {"max-buffered", required_argument, 0, 'U'},
        {"max-memory", required_argument, 0, 'Y'},
        {"max-stored", required_argument, 0, 'S'}, {"timeout", required_argument, 0, 'T'},
        {"read-timeout", required_argument, 0, 'R'}, {"body-timeout", required_argument, 0, 'D'},
        {"header-timeout", required_argument, 0, 'G'},
        {"result-ttl", required_argument, 0, 'L'}, {"threads", required_argument, 0, 't'},
        {"device", required_argument, 0, 'd'}, {"verbose", no_argument, 0, 'v'},
        {"precision", required_argument, 0, 'y'},
        {"batch-window-ms", required_argument, 0, 'W'}, {"max-batch", required_argument, 0, 'X'},
        {"tile-batch", required_argument, 0, 'b'},
        {"max-connections", required_argument, 0, 'C'}, {"max-connections-per-ip", required_argument, 0, 'I'},
        {"max-jobs", required_argument, 0, 'j'}, {"api-key-file", required_argument, 0, 'K'},
        {"protect-health", no_argument, 0, 'P'}, {"tls-cert", required_argument, 0, 'c'},
        {"tls-key", required_argument, 0, 'k'}, {"max-pixels", required_argument, 0, 'x'},
        {"no-ui", no_argument, 0, 'N'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    sp_serve_params sp = sp_serve_default_params();
    sp_serve_model models[32];
    char *owned[32];
    int nm = 0, c, rc = 0, verbose = 0;
    optind = 1;
    while (!rc && (c = getopt_long(argc, argv, "m:p:t:vh", opts, NULL)) != -1) {
        if (c == 'm') {
            if (add_model(optarg, models, owned, &nm))
                rc = cli_usage_error("serve", "--model NAME=DIR (at most 32, names under 64 characters)");
            continue;
        }
        int r = serve_opt(c, optarg, &sp, &verbose);
        rc = r == 1 ? -1 : r == -2 ? cli_usage_error("serve", "unknown option") : r ? 2 : 0;
    }
    if (!rc && (!nm || optind != argc))
        rc = cli_usage_error("serve", "at least one --model NAME=DIR, and no other arguments");
    char devs[SP_MAX_GPUS][16];
    int nd = 0;
    if (!rc && sp.device && sp_device_list(sp.device, devs, SP_MAX_GPUS, &nd))
        rc = cli_usage_error("serve", sp_last_error());
    /* a model that crashes the GPU provider is refused at start (probed on the first GPU of a list) */
    for (int i = 0; !rc && i < nm; i++)
        rc = cli_probe(models[i].dir, sp.device ? devs[0] : NULL);
    if (!rc) {
        cli_set_logging(verbose);
        sp.models = models;
        sp.n_models = nm;
        sp.on_ready = serve_ready;
        warn_exposed(&sp);
        sp_status st = sp_serve(&sp);
        rc = st ? cli_fail(st, "serve") : 0;
    }
    for (int i = 0; i < nm; i++)
        free(owned[i]);
    return rc < 0 ? 0 : rc;
}
