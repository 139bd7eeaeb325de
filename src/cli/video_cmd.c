/*
 * video_cmd.c — `segpipe video` (background replacement on a video or a
 * folder of frames) and `segpipe bench video` (batch x workers sweep against
 * inference alone). Ctrl-C / SIGTERM stop the pipeline cleanly: the signals
 * are blocked in every thread and one thread waits for them with sigwait,
 * then cancels the run (no partial output is left).
 */
#include "cli.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static char g_matte[4096];   /* the bundled demo-matte model */

typedef struct sigctx {
    pthread_mutex_t mu;
    sp_video *v;              /* set once the run exists */
    sigset_t set, old;
    pthread_t th;
    int got, started;
} sigctx;

static void *sig_main(void *arg)
{
    sigctx *c = arg;
    int sig = 0;
    sigwait(&c->set, &sig);
    if (sig != SIGUSR1) {
        pthread_mutex_lock(&c->mu);
        c->got = sig;
        if (c->v)
            sp_video_cancel(c->v);
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

/* Block INT/TERM before any thread exists (ONNX Runtime's pool included:
 * threads inherit the mask) and start the one thread that waits for them. */
static void sig_start(sigctx *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    sigemptyset(&c->set);
    sigaddset(&c->set, SIGINT);
    sigaddset(&c->set, SIGTERM);
    sigaddset(&c->set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &c->set, &c->old);
    c->started = pthread_create(&c->th, NULL, sig_main, c) == 0;
}

/* from now on a signal cancels v; returns 1 if one already came */
static int sig_attach(sigctx *c, sp_video *v)
{
    pthread_mutex_lock(&c->mu);
    c->v = v;
    int got = c->got;
    pthread_mutex_unlock(&c->mu);
    return got;
}

static void sig_stop(sigctx *c)
{
    if (c->started) {
        pthread_kill(c->th, SIGUSR1);
        pthread_join(c->th, NULL);
    }
    pthread_sigmask(SIG_SETMASK, &c->old, NULL);
    pthread_mutex_destroy(&c->mu);
}

static int parse_bg(const char *s, sp_video_params *p)
{
    unsigned r, g, b;
    if (!strncmp(s, "color:", 6) || !strncmp(s, "colour:", 7)) {
        const char *c = strchr(s, ':') + 1;
        if (*c == '#')
            c++;
        if (strlen(c) != 6 || sscanf(c, "%2x%2x%2x", &r, &g, &b) != 3)
            return -1;
        p->bg = SP_BG_COLOR;
        p->bg_color[0] = (uint8_t)r, p->bg_color[1] = (uint8_t)g, p->bg_color[2] = (uint8_t)b;
        return 0;
    }
    if (!strncmp(s, "image:", 6) && s[6]) {
        p->bg = SP_BG_IMAGE;
        p->bg_image = s + 6;
        return 0;
    }
    if (!strcmp(s, "blur") || !strncmp(s, "blur:", 5)) {
        p->bg = SP_BG_BLUR;
        char *end = NULL;
        long rad = s[4] ? strtol(s + 5, &end, 10) : 15;
        p->blur_radius = (int)rad;
        return (!s[4] || (end != s + 5 && !*end)) && rad >= 1 && rad <= 500 ? 0 : -1;
    }
    return -1;
}

typedef struct vargs {
    sp_video_params p;
    const char *model, *device, *json;
    int threads, quiet, alone, spin;
    char *batches, *workers;   /* bench: lists */
} vargs;

/* A number or a comma-separated list of numbers (bench video sweeps), each
 * an integer in lo..hi; *first gets the first. 0, or -1 after a message. */
static int check_list(const char *cmd, const char *opt, const char *text, long lo, long hi, int *first)
{
    char *c = strdup(text), *save = NULL;
    int n = 0, bad = !c;
    for (char *t = c ? strtok_r(c, ",", &save) : NULL; t && !bad; t = strtok_r(NULL, ",", &save), n++)
        bad = cli_int(cmd, opt, t, lo, hi, n ? &(int){0} : first) != 0;
    free(c);
    if (!bad && !n)
        bad = cli_int(cmd, opt, text, lo, hi, first) != 0;
    return bad ? -1 : 0;
}

static int opt_batch(const char *cmd, const char *v, void *ctx)
{
    vargs *a = ctx;
    a->batches = (char *)v;
    return check_list(cmd, "--batch", v, 1, 64, &a->p.batch) ? 2 : 0;
}

static int opt_workers(const char *cmd, const char *v, void *ctx)
{
    vargs *a = ctx;
    a->workers = (char *)v;
    return check_list(cmd, "--workers", v, 1, 256, &a->p.workers) ? 2 : 0;
}

static int opt_bg(const char *cmd, const char *v, void *ctx)
{
    return parse_bg(v, &((vargs *)ctx)->p) ? cli_usage_error(cmd, "--bg takes color:#RRGGBB, image:FILE or "
                                                                "blur[:RADIUS]") : 0;
}

static int opt_max_ram(const char *cmd, const char *v, void *ctx)
{
    double mb;
    if (cli_num(cmd, "--max-ram (MB)", v, 1e-6, 1e9, &mb))
        return 2;
    ((vargs *)ctx)->p.max_ram = (size_t)(mb * 1e6);
    return 0;
}

/* 0 after --help, -1 to go on, else an exit code */
static int parse_video_args(int argc, char **argv, vargs *a, const char *cmd)
{
    a->p = sp_video_default_params();
    a->model = getenv("SEGPIPE_VIDEO_MODEL");
    if ((!a->model || !*a->model) && !sp_bundled_model("demo-matte", g_matte, sizeof g_matte))
        a->model = g_matte;
    const cli_opt t[] = {
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &a->p.output, .value = "OUTPUT"},
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &a->model, .value = "DIR"},
        {.name = "batch", .letter = 'b', .kind = CLI_FN, .fn = opt_batch, .value = "N"},
        {.name = "workers", .letter = 'w', .kind = CLI_FN, .fn = opt_workers, .value = "W"},
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &a->threads, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "roi", .kind = CLI_STR, .dst = &a->p.roi_file, .value = "FILE"},
        {.name = "bg", .kind = CLI_FN, .fn = opt_bg, .value = "color:#RRGGBB, image:FILE or blur[:RADIUS]"},
        {.name = "max-ram", .kind = CLI_FN, .fn = opt_max_ram, .value = "MB"},
        {.name = "mask", .kind = CLI_STR, .dst = &a->p.mask, .value = "NAME"},
        {.name = "fps", .kind = CLI_NUM, .dst = &a->p.fps, .lo = 0.001, .hi = 1000, .value = "F"},
        {.name = "codec", .kind = CLI_STR, .dst = &a->p.codec, .value = "NAME"},
        {.name = "quality", .kind = CLI_INT, .dst = &a->p.quality, .lo = 1, .hi = 100, .value = "Q"},
        {.name = "device", .kind = CLI_STR, .dst = &a->device, .value = "cpu or cuda"},
        {.name = "json", .kind = CLI_STR, .dst = &a->json, .value = "FILE"},
        {.name = "infer-alone", .kind = CLI_FLAG, .dst = &a->alone},
        {.name = "decode-threads", .kind = CLI_INT, .dst = &a->p.decode_threads, .lo = 0, .hi = 256,
         .value = "N"},
        {.name = "ort-spin", .kind = CLI_FLAG, .dst = &a->spin},
        {.name = "quiet", .letter = 'q', .kind = CLI_FLAG, .dst = &a->quiet},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    cli_args pa = {0};
    int rc = cli_parse(cmd, t, NULL, argc, argv, a, &pa);
    if (rc == CLI_HELP_ASKED)
        return 0;
    if (rc)
        return rc;
    if (pa.n != 1)
        return cli_usage_error(cmd, "expected exactly one INPUT (video file or folder of frames)");
    a->p.input = pa.pos[0];
    return -1;
}

static void report_json(FILE *f, const sp_video_report *r, const sp_video_report *alone)
{
    fprintf(f,
            "{\"frames\": %lld, \"width\": %d, \"height\": %d, \"batch\": %d, \"workers\": %d, \"seconds\": %.6f, "
            "\"fps\": %.4f, \"ms_per_frame\": {\"decode\": %.4f, \"preprocess\": %.4f, \"inference\": %.4f, "
            "\"composite\": %.4f, \"save\": %.4f}, \"wait_ms_per_frame\": {\"preprocess\": %.4f, \"inference\": %.4f, "
            "\"composite\": %.4f, \"save\": %.4f}, \"inference_busy\": %.4f, \"cached\": %d, \"cache_frames\": %lld, "
            "\"cache_bytes\": %zu, \"buffer_bytes\": %zu, \"budget_bytes\": %zu, \"peak_rss\": %zu",
            (long long)r->frames, r->width, r->height, r->batch, r->workers, r->seconds, r->fps, r->ms_decode,
            r->ms_preprocess, r->ms_inference, r->ms_composite, r->ms_save, r->wait_preprocess, r->wait_inference,
            r->wait_composite, r->wait_save, r->inference_busy, r->cached, (long long)r->cache_frames, r->cache_bytes,
            r->buffer_bytes, r->budget_bytes, sp_peak_rss());
    if (alone)
        fprintf(f, ", \"inference_alone_fps\": %.4f, \"pipeline_vs_inference\": %.4f", alone->fps,
                alone->fps > 0 ? r->fps / alone->fps : 0);
    fputs("}", f);
}

static int open_all(vargs *a, sp_runtime **rt, sp_package **pk, sp_video **v)
{
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = a->threads;
    rp.no_spin = !a->spin;
    if (a->device)
        rp.device = a->device;
    sp_status st;
    int rc = cli_probe(a->model, a->device);
    if (rc)
        return rc;
    if ((st = sp_runtime_create(&rp, rt)) || (st = sp_package_load(*rt, a->model, pk)) ||
        (st = sp_video_open(*pk, &a->p, v)))
        return cli_fail(st, NULL);
    cli_demo_note(*pk, a->quiet);
    return 0;
}

int cmd_video(int argc, char **argv)
{
    vargs a;
    memset(&a, 0, sizeof a);
    int r = parse_video_args(argc, argv, &a, "video");
    if (r == 0) {
        printf("usage: segpipe video INPUT -o OUTPUT [--model DIR] [--batch N] [--workers W]\n"
               "         [--roi FILE] [--bg color:#RRGGBB|image:FILE|blur[:R]] [--max-ram MB]\n"
               "         [--mask NAME] [--fps F] [--codec NAME] [--quality Q] [--threads N]\n"
               "         [--device cpu|cuda] [--json FILE] [--infer-alone] [--quiet]\n"
               "Background replacement: out = alpha * frame + (1 - alpha) * background inside\n"
               "the ROI (one 'x y w h' line per frame; default the whole frame).\n"
               "INPUT: a video file (FFmpeg) or a folder of PNG/JPEG frames (natural order).\n"
               "OUTPUT: .mp4/.mkv/.mov (H.264), .avi (MJPEG), .webm (VP9), .nut (FFV1, lossless)\n"
               "or a folder of numbered PNG frames (JPEG if it ends in .jpg); written under\n"
               "OUTPUT.part and renamed when complete. Default model: %s (a demo).\n"
               "--infer-alone also times inference alone on the same frames and batch size.\n"
               "Exit codes: 0 ok, 2 usage, 3 input, 4 model, 5 runtime, 6 I/O, 7 memory, 130 stopped.\n",
               g_matte[0] ? g_matte : "models/demo-matte");
        return 0;
    }
    if (r > 0)
        return r;
    if (!a.p.output && !a.alone)
        return cli_usage_error("video", "expected -o OUTPUT (or --infer-alone for a measurement)");
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_video *v = NULL;
    sigctx sc;
    sig_start(&sc);
    int rc = open_all(&a, &rt, &pk, &v);
    sp_video_report rep, alone;
    int have_alone = 0;
    if (!rc) {
        sp_status st = sig_attach(&sc, v) ? SP_ERR_CANCELLED : sp_video_run(v, &rep);
        if (st == SP_ERR_CANCELLED && sc.got)
            cli_errf("%s: stopping\n", strsignal(sc.got));
        if (st) {
            rc = cli_fail(st, NULL);
        } else {
            if (a.alone) {
                if ((st = sp_video_infer_alone(v, &alone)))
                    rc = cli_fail(st, "inference alone");
                else
                    have_alone = 1;
            }
            if (!a.quiet) {
                sp_video_report_print(&rep, stdout);
                if (have_alone)
                    printf("  inference alone: %.1f FPS on the same frames and batch; the pipeline reaches %.1f%%\n",
                           alone.fps, alone.fps > 0 ? 100 * rep.fps / alone.fps : 0);
                printf("  peak RSS %.1f MB%s%s\n", sp_peak_rss() / 1e6, a.p.output ? "; wrote " : "",
                       a.p.output ? a.p.output : "");
            }
            if (a.json) {
                FILE *f = fopen(a.json, "w");
                if (!f) {
                    cli_errf("%s: cannot write\n", a.json);
                    rc = 6;
                } else {
                    report_json(f, &rep, have_alone ? &alone : NULL);
                    fputs("\n", f);
                    fclose(f);
                }
            }
        }
    }
    sig_attach(&sc, NULL);
    sp_video_free(v);
    sp_package_free(pk);
    sp_runtime_free(rt);
    sig_stop(&sc);
    return rc;
}

static int parse_list(const char *s, int *out, int cap)
{
    int n = 0;
    char *c = strdup(s), *save = NULL;
    for (char *t = strtok_r(c, ",", &save); t && n < cap; t = strtok_r(NULL, ",", &save))
        if ((out[n] = atoi(t)) > 0)
            n++;
    free(c);
    return n;
}

/* segpipe bench video INPUT [--batch 1,2,4,8] [--workers 1,2,4] [--out DIR] [--save EXT] */
/* A bench video sweep: batch x workers pairs, their reports */
typedef struct vsweep {
    int bl[16], wl[16], nb, nw, save_on;
    const char *outdir, *save;
    char outpath[4096];
    sp_video_report warm, *grid, *alone;
} vsweep;

/* Options (--out and --save are bench-only: taken out before the shared
 * parser); -1 to go on, else an exit code */
static int bench_video_args(int argc, char **argv, vargs *a, vsweep *w)
{
    char **av = calloc((size_t)argc + 1, sizeof *av);
    int ac = 0;
    for (int i = 0; av && i < argc; i++) {
        if ((!strcmp(argv[i], "--out") || !strcmp(argv[i], "--save")) && i + 1 < argc) {
            if (argv[i][2] == 'o')
                w->outdir = argv[++i];
            else
                w->save = argv[++i];
        } else {
            av[ac++] = argv[i];
        }
    }
    int r = av ? parse_video_args(ac, av, a, "bench video") : 7;
    free(av);
    if (r == 0) {
        printf("usage: segpipe bench video INPUT [--model DIR] [--batch 1,2,4,8] [--workers 1,2,4]\n"
               "         [--out DIR] [--save mp4|mkv|nut|avi|png|none] [--bg ...] [--roi FILE] [--threads N]\n"
               "Decodes INPUT into RAM once, then runs the pipeline for every batch x workers\n"
               "pair (output encoded to DIR/sweep.EXT unless --save none) and inference alone\n"
               "for every batch; prints the FPS grid, the best pair and writes DIR/bench-video.json\n"
               "and DIR/bench-video.md.\n");
        return 0;
    }
    if (r > 0)
        return r;
    if (a->batches)
        w->nb = parse_list(a->batches, w->bl, 16);
    if (a->workers)
        w->nw = parse_list(a->workers, w->wl, 16);
    if (!w->nb || !w->nw)
        return cli_usage_error("bench video", "--batch and --workers take lists like 1,2,4");
    if (cli_mkdir_p(w->outdir) != 0) {
        cli_errf("%s: cannot create\n", w->outdir);
        return 6;
    }
    w->save_on = strcmp(w->save, "none") != 0;
    snprintf(w->outpath, sizeof w->outpath, "%s/sweep%s%s", w->outdir, strcmp(w->save, "png") ? "." : "-frames",
             strcmp(w->save, "png") ? w->save : "");
    a->p.output = NULL;
    a->p.batch = a->p.workers = 1;
    for (int i = 0; i < w->nb; i++)
        a->p.batch = w->bl[i] > a->p.batch ? w->bl[i] : a->p.batch;
    for (int i = 0; i < w->nw; i++)
        a->p.workers = w->wl[i] > a->p.workers ? w->wl[i] : a->p.workers;
    return -1;
}

/* The decode pass (into RAM), then inference alone per batch and the
 * pipeline per pair; 0 or an exit code */
static int bench_video_sweep(sp_video *v, const sp_package *pk, vsweep *w)
{
    sp_status st;
    if ((st = sp_video_set(v, w->bl[0], w->wl[0], NULL)) || (st = sp_video_run(v, &w->warm)))
        return cli_fail(st, "decode pass");
    if (!w->warm.cache_frames || w->warm.cache_frames < w->warm.frames)
        return cli_fail(SP_ERR_USAGE, "the video does not fit --max-ram; bench needs every frame in RAM");
    printf("bench video: %s, %lld frames %dx%d, model %s; decode %.2f ms/frame (once, into %.1f MB of RAM)\n",
           w->warm.input_desc, (long long)w->warm.frames, w->warm.width, w->warm.height, sp_package_name(pk),
           w->warm.ms_decode, w->warm.cache_bytes / 1e6);
    for (int i = 0; i < w->nb; i++) {
        if ((st = sp_video_set(v, w->bl[i], 1, NULL)) || (st = sp_video_infer_alone(v, &w->alone[i])))
            return cli_fail(st, "inference alone");
        for (int j = 0; j < w->nw; j++) {
            if (w->save_on && cli_rm_rf(w->outpath) != 0)     /* the previous pair's output */
                cli_errf("could not remove %s\n", w->outpath);
            st = sp_video_set(v, w->bl[i], w->wl[j], w->save_on ? w->outpath : NULL);
            if (st || (st = sp_video_run(v, &w->grid[i * w->nw + j])))
                return cli_fail(st, "pipeline");
        }
    }
    return 0;
}

/* The FPS grid (rows batch, columns workers) and the best pair, to f */
static void bench_video_table(FILE *f, const vsweep *w, int bi, int bj)
{
    int nw = w->nw;
    fprintf(f, "\nPipeline FPS (frames from RAM, output %s), rows batch, columns workers:\n\n",
            w->save_on ? w->save : "not written");
    fprintf(f, "| batch | inference alone |");
    for (int j = 0; j < nw; j++)
        fprintf(f, " W=%d |", w->wl[j]);
    fprintf(f, " best / alone |\n|---:|---:|");
    for (int j = 0; j <= nw; j++)
        fprintf(f, "---:|");
    fprintf(f, "\n");
    for (int i = 0; i < w->nb; i++) {
        double best = 0;
        fprintf(f, "| %d | %.1f |", w->bl[i], w->alone[i].fps);
        for (int j = 0; j < nw; j++) {
            fprintf(f, " %.1f |", w->grid[i * nw + j].fps);
            best = w->grid[i * nw + j].fps > best ? w->grid[i * nw + j].fps : best;
        }
        fprintf(f, " %.1f%% |\n", w->alone[i].fps > 0 ? 100 * best / w->alone[i].fps : 0);
    }
    const sp_video_report *b = &w->grid[bi * nw + bj];
    fprintf(f, "\nBest: batch %d, %d workers: %.1f FPS = %.1f%% of inference alone at batch %d (%.1f FPS).\n",
            w->bl[bi], w->wl[bj], b->fps, w->alone[bi].fps > 0 ? 100 * b->fps / w->alone[bi].fps : 0, w->bl[bi],
            w->alone[bi].fps);
    fprintf(f, "\n```\n");
    sp_video_report_print(b, f);
    fprintf(f, "```\n");
}

/* stdout, DIR/bench-video.md and DIR/bench-video.json */
static void bench_video_write(const vsweep *w, const vargs *a, const sp_package *pk)
{
    char mdp[4200], jsp[4200];
    snprintf(mdp, sizeof mdp, "%s/bench-video.md", w->outdir);
    snprintf(jsp, sizeof jsp, "%s/bench-video.json", w->outdir);
    FILE *md = fopen(mdp, "w"), *js = fopen(jsp, "w");
    int bi = 0, bj = 0, nw = w->nw;
    for (int i = 0; i < w->nb; i++)
        for (int j = 0; j < nw; j++)
            if (w->grid[i * nw + j].fps > w->grid[bi * nw + bj].fps)
                bi = i, bj = j;
    bench_video_table(stdout, w, bi, bj);
    if (md) {
        bench_video_table(md, w, bi, bj);
        fclose(md);
    }
    if (js) {
        fprintf(js, "{\"input\": \"%s\", \"model\": \"%s\", \"frames\": %lld, \"decode_ms_per_frame\": %.4f, "
                    "\"save\": \"%s\", \"runs\": [",
                a->p.input, sp_package_name(pk), (long long)w->warm.frames, w->warm.ms_decode, w->save);
        for (int i = 0; i < w->nb; i++)
            for (int j = 0; j < nw; j++) {
                fprintf(js, "%s\n ", i + j ? "," : "");
                report_json(js, &w->grid[i * nw + j], &w->alone[i]);
            }
        fprintf(js, "\n], \"best\": {\"batch\": %d, \"workers\": %d}}\n", w->bl[bi], w->wl[bj]);
        fclose(js);
    }
    printf("wrote %s/bench-video.md and bench-video.json\n", w->outdir);
}

int cmd_bench_video(int argc, char **argv)
{
    vargs a;
    memset(&a, 0, sizeof a);
    vsweep w = {.bl = {1, 2, 4, 8}, .wl = {1, 2, 4}, .nb = 4, .nw = 3, .outdir = "bench-video", .save = "mp4"};
    int rc = bench_video_args(argc, argv, &a, &w);
    if (rc >= 0)
        return rc;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_video *v = NULL;
    rc = open_all(&a, &rt, &pk, &v);
    w.grid = calloc((size_t)w.nb * w.nw, sizeof *w.grid);
    w.alone = calloc((size_t)w.nb, sizeof *w.alone);
    if (!rc && (!w.grid || !w.alone))
        rc = cli_fail(SP_ERR_NOMEM, "bench video");
    if (!rc)
        rc = bench_video_sweep(v, pk, &w);
    if (!rc)
        bench_video_write(&w, &a, pk);
    free(w.grid);
    free(w.alone);
    sp_video_free(v);
    sp_package_free(pk);
    sp_runtime_free(rt);
    return rc;
}
