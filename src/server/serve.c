/*
 * serve.c — sp_serve: load and warm up the models, start the workers, the
 * housekeeper and libmicrohttpd (epoll, optionally TLS), wait for SIGTERM
 * or SIGINT, then stop gracefully: no new connections or requests, every
 * accepted request answered, running work given until --timeout, then
 * cancelled; exit within the longest job's time.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

sp_serve_params sp_serve_default_params(void)
{
    sp_serve_params p;
    memset(&p, 0, sizeof p);
    p.host = "127.0.0.1";
    p.port = 8555;
    p.workers = 1;
    p.queue = 8;
    p.max_body = (size_t)512 << 20;
    p.timeout = 600;
    p.batch_window_ms = 10;
    p.max_batch = 8;
    p.device = "cpu";
    return p;
}

static void fill_defaults(sp_serve_params *p)
{
    if (p->max_batch < 1)
        p->max_batch = 1;
    if (!p->max_connections)
        p->max_connections = 4096;
    if (!p->read_timeout)
        p->read_timeout = 15;
    if (!p->header_timeout)
        p->header_timeout = 20;
    if (!p->max_per_ip)
        p->max_per_ip = 64;
    if (!p->body_timeout)
        p->body_timeout = 120;
    if (!p->max_buffered)
        p->max_buffered = (size_t)768 << 20;
    if (!p->max_json_body)
        p->max_json_body = (size_t)16 << 20;
    if (!p->max_jobs)
        p->max_jobs = 64;
    if (!p->max_stored)
        p->max_stored = (size_t)256 << 20;
    if (!p->result_ttl)
        p->result_ttl = 900;
}

/* The machine's memory, or its cgroup's limit when lower (containers). */
static size_t machine_memory(void)
{
    double total = 0, lim = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            total = (double)kb * 1024;
    if (f)
        fclose(f);
    const char *files[] = {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (int i = 0; i < 2; i++) {
        unsigned long long v;
        if ((f = fopen(files[i], "r"))) {
            if (fscanf(f, "%llu", &v) == 1 && v > 0 && (lim == 0 || (double)v < lim))
                lim = (double)v;
            fclose(f);
        }
    }
    if (lim > 0 && (total == 0 || lim < total))
        total = lim;
    return total > 0 ? (size_t)total : (size_t)4 << 30;
}

/* Time out waiting requests (504, job cancelled) and expire stored results. */
static void *housekeeper_main(void *arg)
{
    server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping || s->qtotal || s->running) {
        struct MHD_Connection *late[64 + MAX_WATCHERS];
        double now = sp_now();
        int nl = sp_watchers_take(s, NULL, s->stopping ? INFINITY : now, late, MAX_WATCHERS);
        for (job *j = s->live; j; j = j->lnext)
            if (now > j->deadline && (!j->cancel || j->conn)) {
                j->cancel = 1;   /* the CT run stops at its next tile */
                if (j->conn && nl < 64 + MAX_WATCHERS) {
                    j->timed_out = 1;
                    late[nl++] = j->conn;
                    j->conn = NULL;
                }
            }
        sp_store_expire(s, now);
        pthread_mutex_unlock(&s->mu);
        sp_conn_reap(s, now);
        for (int i = 0; i < nl; i++)
            MHD_resume_connection(late[i]);
        pthread_mutex_lock(&s->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->hcv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---------------------------------------------------------------- startup */

static sp_status load_models(server *s)
{
    s->models = calloc((size_t)s->p.n_models, sizeof *s->models);
    if (!s->models)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    s->n_models = s->p.n_models;
    for (int i = 0; i < s->n_models; i++) {
        snprintf(s->models[i].name, sizeof s->models[i].name, "%s", s->p.models[i].name);
        snprintf(s->models[i].dir, sizeof s->models[i].dir, "%s", s->p.models[i].dir);
        for (int k = 0; k < i; k++)
            if (!strcmp(s->models[k].name, s->models[i].name))
                return sp_fail(SP_ERR_USAGE, "model name '%s' given twice", s->models[i].name);
    }
    sp_status st = sp_device_list(s->p.device, s->devs, SP_MAX_GPUS, &s->ndev);
    const char *tb = getenv("SEGPIPE_TILE_BATCH");   /* serve --tile-batch N; 0/unset: auto */
    s->tile_batch = tb && *tb ? atoi(tb) : 0;
    if (!st && (s->tile_batch < 0 || s->tile_batch > 32))
        st = sp_fail(SP_ERR_USAGE, "SEGPIPE_TILE_BATCH is 1 to 32 (0: auto)");
    for (int g = 0; !st && g < s->ndev; g++) {
        sp_runtime_params rp = sp_runtime_default_params();
        rp.threads = s->p.threads;
        rp.device = s->devs[g];
        rp.precision = s->p.precision;
        if ((st = sp_runtime_create(&rp, &s->rts[g])))
            break;
        for (int i = 0; !st && i < s->n_models; i++)
            if ((st = sp_package_load(s->rts[g], s->models[i].dir, &s->models[i].gpk[g])))
                sp_fail_prefix(st, s->ndev > 1 ? "model '%s' on %s" : "model '%s'", s->models[i].name, s->devs[g]);
    }
    s->rt = s->rts[0];
    for (int i = 0; i < s->n_models; i++)
        s->models[i].pk = s->models[i].gpk[0];
    if (!st && s->ndev > 1 && s->p.workers < s->ndev)
        s->p.workers = s->ndev;      /* at least one worker per GPU */
    return st;
}

static sp_status read_pem(const char *path, const char *what, char **out)
{
    void *data;
    size_t n;
    sp_status st = sp_read_file(path, 1 << 20, &data, &n);
    if (st)
        return sp_fail_prefix(st, "%s", what);
    *out = data;   /* NUL-terminated */
    return SP_OK;
}

/* Room for --max-connections sockets (the soft limit is often 1024). */
static void raise_fd_limit(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want + 64) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)want + 64 ? (rlim_t)want + 64
                                                                                      : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct MHD_Daemon *start_http(server *s, struct sockaddr_in *addr, char *cert, char *key)
{
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    if (cert)
        flags |= MHD_USE_TLS;
    raise_fd_limit(s->p.max_connections);
    struct MHD_OptionItem tls[] = {
        {cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, cert},
        {cert ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, key},
        {MHD_OPTION_END, 0, NULL}};
    return MHD_start_daemon(flags, 0, NULL, NULL, sp_access_cb, s,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)addr,
                            MHD_OPTION_NOTIFY_COMPLETED, sp_completed_cb, s,
                            MHD_OPTION_UNESCAPE_CALLBACK, sp_unescape_cb, s,
                            MHD_OPTION_NOTIFY_CONNECTION, sp_conn_notify, s,
                            MHD_OPTION_THREAD_POOL_SIZE, 2u,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->p.max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)s->p.max_per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(s->p.read_timeout + 0.999),
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 << 10,
                            MHD_OPTION_ARRAY, tls,
                            MHD_OPTION_END);
}

static sp_status check_params(server *s)
{
    fill_defaults(&s->p);
    if (s->p.workers < 1 || s->p.queue < 1 || s->p.timeout <= 0 || s->p.n_models < 1)
        return sp_fail(SP_ERR_USAGE, "serve needs at least one --model NAME=DIR, workers >= 1, queue >= 1, "
                       "timeout > 0");
    if (!s->p.tls_cert != !s->p.tls_key)
        return sp_fail(SP_ERR_USAGE, "--tls-cert and --tls-key go together");
    if (s->p.tls_cert && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        return sp_fail(SP_ERR_USAGE, "this libmicrohttpd has no TLS support; use a reverse proxy (docs/service.md)");
    if (s->p.api_key_file)
        return sp_keys_load(s, s->p.api_key_file);
    return SP_OK;
}

/* The warm-up thread: one model after the other, each serving as soon as it
 * is warm, the memory budget counting what is loaded so far; the main
 * thread meanwhile waits for signals (a stop interrupts the model warming). */
static void *warm_main(void *arg)
{
    server *s = arg;
    for (int i = 0; i < s->n_models && !atomic_load(&s->warm_stop); i++) {
        model_entry *me = &s->models[i];
        sp_status st = SP_OK;
        for (int g = 0; !st && g < s->ndev; g++)
            st = sp_ct_warm_up(me->gpk[g]);
        size_t rss = sp_current_rss();
        pthread_mutex_lock(&s->mu);
        s->mem_base = rss;
        if (st && !atomic_load(&s->warm_stop)) {
            snprintf(me->error, sizeof me->error, "%s", sp_last_error());
            s->warm_st = st;
            snprintf(s->warm_msg, sizeof s->warm_msg, "warm-up of model '%s': %s", me->name, me->error);
        }
        me->ready = !st;
        me->settled = 1;
        pthread_mutex_unlock(&s->mu);
        if (st)
            break;
        pthread_cond_broadcast(&s->qcv);   /* its queued jobs can run */
    }
    atomic_store(&s->warm_done, 1);
    return NULL;
}

/* Wait for the warm-up, or a signal (returned; 0: none) that stops it: the
 * model warming now has its run interrupted (ONNX Runtime's terminate). */
static int warm_up_all(server *s, const sigset_t *sigs, sp_status *st)
{
    pthread_t wt;
    if (pthread_create(&wt, NULL, warm_main, s) != 0) {
        *st = sp_fail(SP_ERR_RUNTIME, "cannot start the warm-up thread");
        return 0;
    }
    int sig = 0;
    const struct timespec tick = {0, 50 * 1000000L};
    while (!atomic_load(&s->warm_done) && sig <= 0)
        sig = sigtimedwait(sigs, NULL, &tick);
    if (sig > 0) {
        atomic_store(&s->warm_stop, 1);
        for (int i = 0; i < s->n_models; i++)
            for (int g = 0; g < s->ndev && !atomic_load(&s->models[i].settled); g++)
                sp_model_interrupt(sp_package_model(s->models[i].gpk[g]));
        SP_WARN("signal %d during warm-up: stopping (the model warming is interrupted)", sig);
    }
    pthread_join(wt, NULL);
    if (sig <= 0 && s->warm_st)
        *st = sp_fail(s->warm_st, "%s", s->warm_msg);
    return sig > 0 ? sig : 0;
}

/* Graceful stop: refuse new work, let queued and running jobs finish within
 * --timeout (then they are cancelled), answer every suspended request. */
static void drain(server *s, struct MHD_Daemon *d)
{
    sp_http_closing();
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->qcv);
    pthread_mutex_unlock(&s->mu);
    MHD_socket lsock = MHD_quiesce_daemon(d);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    double until = sp_now() + s->p.timeout + 1;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int busy = s->qtotal + s->running;
        if (busy && sp_now() > until)
            for (job *j = s->live; j; j = j->lnext)
                j->cancel = 1;
        pthread_mutex_unlock(&s->mu);
        if (!busy)
            break;
        usleep(10000);
    }
    struct MHD_Connection *polls[MAX_WATCHERS];   /* long polls still waiting: answer them now */
    pthread_mutex_lock(&s->mu);
    int np = sp_watchers_take(s, NULL, INFINITY, polls, MAX_WATCHERS);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < np; i++)
        MHD_resume_connection(polls[i]);
    /* answers of the last jobs: give their connections a moment to be written */
    for (int i = 0; i < 200 && atomic_load(&s->inflight) > 0; i++)
        usleep(10000);
}

static void shutdown_all(server *s, struct MHD_Daemon *d)
{
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->qcv);
    pthread_cond_broadcast(&s->hcv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->nworkers; i++)
        pthread_join(s->workers[i], NULL);
    if (d)
        MHD_stop_daemon(d);
    pthread_mutex_lock(&s->mu);
    while (s->store)
        sp_job_unstore(s, s->store);
    pthread_mutex_unlock(&s->mu);
    free(s->workers);
    for (int i = 0; s->models && i < s->n_models; i++)
        for (int g = 0; g < SP_MAX_GPUS; g++)
            sp_package_free(s->models[i].gpk[g]);
    free(s->models);
    for (int g = 0; g < SP_MAX_GPUS; g++)
        sp_runtime_free(s->rts[g]);
    sp_keys_free(s);
    if (s->tmpdir[0])
        rmdir(s->tmpdir);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->qcv);
    pthread_cond_destroy(&s->hcv);
    pthread_cond_destroy(&s->mem_cv);
}

sp_status sp_serve(const sp_serve_params *pp)
{
    server *s = calloc(1, sizeof *s);
    if (!s)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    s->p = pp ? *pp : sp_serve_default_params();
    s->hooks = (sp_http_hooks){sp_route_ep, sp_handle, sp_job_release};
    s->t0 = sp_now();
    /* Buffers of 1 MiB and more straight from the kernel and back at free:
     * glibc's default threshold climbs to 32 MiB and keeps what jobs freed
     * in per-thread arenas, so RSS drifted above the jobs' live memory
     * (mixed load: 1.09 GB, with this 0.84 GB at the same speed). */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->conn_mu, NULL);
    pthread_cond_init(&s->qcv, NULL);
    pthread_cond_init(&s->hcv, NULL);
    pthread_cond_init(&s->mem_cv, NULL);
    /* SIGTERM/SIGINT go to sigwait below: block them before any thread exists */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct MHD_Daemon *d = NULL;
    char *cert = NULL, *key = NULL;
    pthread_t hk;
    int hk_started = 0;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->p.port);
    sp_status st = check_params(s);
    if (!st && inet_pton(AF_INET, s->p.host, &addr.sin_addr) != 1)
        st = sp_fail(SP_ERR_USAGE, "--host must be an IPv4 address, got '%s'", s->p.host);
    if (!st && s->p.tls_cert && !(st = read_pem(s->p.tls_cert, "--tls-cert", &cert)))
        st = read_pem(s->p.tls_key, "--tls-key", &key);
    const char *tmp = getenv("TMPDIR");
    if (snprintf(s->tmpdir, sizeof s->tmpdir, "%s/segpipe-serve-XXXXXX", tmp && tmp[0] ? tmp : "/tmp") >=
        (int)sizeof s->tmpdir)
        st = sp_fail(SP_ERR_USAGE, "TMPDIR is too long");
    if (!st && !mkdtemp(s->tmpdir))
        st = sp_fail(SP_ERR_IO, "cannot create a temporary folder: %s", strerror(errno));
    int dfd = st ? -1 : open(s->tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0 && sp_fd_in_memory(dfd))
        SP_WARN("%s is in memory (tmpfs): request bodies waiting there take the machine's memory; set TMPDIR to "
                "a folder on disk", s->tmpdir);
    if (dfd >= 0)
        close(dfd);
    if (st)
        s->tmpdir[0] = 0;
    if (!st)
        st = load_models(s);   /* a broken package fails start-up */
    if (!st) {
        s->workers = calloc((size_t)s->p.workers, sizeof *s->workers);
        for (int i = 0; s->workers && i < s->p.workers; i++, s->nworkers++)
            if (pthread_create(&s->workers[i], NULL, sp_worker_main, s) != 0)
                break;
        hk_started = pthread_create(&hk, NULL, housekeeper_main, s) == 0;
        if (!s->nworkers || !hk_started)
            st = sp_fail(SP_ERR_RUNTIME, "cannot start the worker threads");
    }
    if (!st && !(d = start_http(s, &addr, cert, key)))
        st = sp_fail(SP_ERR_IO, "cannot listen on %s:%d (in use?%s)", s->p.host, s->p.port,
                     cert ? " or a bad TLS certificate/key" : "");
    if (key)
        explicit_bzero(key, strlen(key));
    free(cert);
    free(key);
    s->max_memory = s->p.max_memory ? s->p.max_memory : machine_memory() / 5 * 4;
    s->mem_base = sp_current_rss();
    int stopped = st ? 0 : warm_up_all(s, &sigs, &st);   /* live now; ready after every warm-up */
    if (stopped)
        drain(s, d);
    if (!st && !stopped && s->mem_base >= s->max_memory)
        st = sp_fail(SP_ERR_USAGE, "--max-memory %.2f GB is below what the loaded models take (%.2f GB)",
                     s->max_memory / 1e9, s->mem_base / 1e9);
    if (!st && !stopped) {
        atomic_store(&s->ready, 1);
        if (s->p.on_ready) {
            char url[128];
            snprintf(url, sizeof url, "%s://%s:%d", s->p.tls_cert ? "https" : "http", s->p.host, s->p.port);
            s->p.on_ready(url, s->p.user);
        }
        int sig = 0;
        sigwait(&sigs, &sig);
        SP_INFO("signal %d: draining", sig);
        drain(s, d);
    }
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->hcv);
    pthread_mutex_unlock(&s->mu);
    if (hk_started)
        pthread_join(hk, NULL);
    shutdown_all(s, d);
    free(s);
    return st;
}
