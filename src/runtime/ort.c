/*
 * ort.c — the ONNX Runtime layer: one process-wide OrtEnv, a model manager
 * and tensor I/O.
 *
 * The manager keeps one OrtSession per model path, reference counted: every
 * caller and thread gets the same session (OrtApi::Run is thread-safe), so a
 * model is loaded once per process whatever the number of users. Sessions
 * use intra-op threads = cores by default, graph optimisation "all" and
 * sequential execution. With cache_optimized (the CLI's default), the
 * optimised graph is kept in a per-user cache folder keyed by ORT version,
 * settings and model bytes, bounded in size, and later loads map it in
 * place (create_session). SEGPIPE_CALIBRATE runs record the ranges of a
 * model's extra outputs for INT8 calibration (calib.c).
 *
 * Execution providers: "cpu" always; "cuda"/"tensorrt" when the loaded ONNX
 * Runtime lists them, or, for CUDA, as a plugin library named by the
 * SEGPIPE_ORT_CUDA_EP environment variable (see docs/gpu.md). Any other
 * request is refused with the list of what the loaded ORT offers.
 */
#include "runtime.h"
#include "device.h"
#include "calib.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const OrtApi *sp_ort;

struct sp_model {
    sp_runtime *rt;
    char path[PATH_MAX];
    OrtSession *session;
    OrtRunOptions *run_opts;      /* every run's: sp_model_interrupt sets its terminate flag; arena
                                   * sessions also shrink the arena after each run */
    int refs;
    int n_in, n_out;
    sp_io_info *in, *out;
    const char **in_names, **out_names;
    double load_seconds;
    int arena;                  /* the session allocates from the runtime's arena */
    atomic_ullong runs;
    sp_calib *calib;            /* SEGPIPE_CALIBRATE runs only (calib.c) */
    void *map;                  /* a graph-cache entry mapped for the session's life (create_session) */
    size_t map_len;
    OrtSession *solo;           /* CPU: a one-thread session for concurrent tile calls (solo_session) */
    int solo_state;             /* 0 not made yet, 1 made, -1 could not be made */
    pthread_mutex_t solo_mu;
    sp_model *next;
};

struct sp_runtime {
    OrtEnv *env;
    sp_runtime_params p;
    char device[16], precision[8], arena[8], tta[8];
    pthread_mutex_t mu;
    int arena_registered;             /* the env's shared CPU arena exists */
    sp_model *models;
    OrtMemoryInfo *cpu_mem;
    int cuda_plugin;
    int device_id;                    /* the N of cuda:N (CUDA's ordinal among the visible GPUs) */
    const OrtMemoryInfo *dev_mem;     /* GPU memory the session's provider uses */
    OrtMemoryInfo *dev_mem_owned;
};

/* Turn an OrtStatus into an sp_status with ORT's message (releases it). */
sp_status sp_ort_check(OrtStatus *s, sp_status code, const char *what)
{
    if (!s)
        return SP_OK;
    sp_status st = sp_fail(code, "%s: %s", what, sp_ort->GetErrorMessage(s));
    sp_ort->ReleaseStatus(s);
    return st;
}

/* What a failed Run says about its input. The model ran at load or warm-up
 * and the inputs passed the declared dtype and shape checks, so a node that
 * fails on the data (ORT's INVALID_ARGUMENT, or FAIL "while running" a node:
 * a broadcast or reshape the tensor's dynamic sizes do not allow) is the
 * input's fault (the service's KServe answer: 400); memory and the
 * execution provider's own failures stay the runtime's. */
static sp_status run_failure(OrtStatus *s)
{
    if (!s)
        return SP_OK;
    OrtErrorCode c = sp_ort->GetErrorCode(s);
    const char *m = sp_ort->GetErrorMessage(s);
    if (strstr(m, "alloc") || strstr(m, "memory") || strstr(m, "CUDA") || strstr(m, "cuda"))
        return SP_ERR_RUNTIME;
    if (c == ORT_INVALID_ARGUMENT || (c == ORT_FAIL && strstr(m, "while running")))
        return SP_ERR_INPUT;
    return SP_ERR_RUNTIME;
}

/* For ORT calls whose failure leaves nothing to do (cleanup, best effort). */
static void ort_ignore(OrtStatus *s)
{
    if (s)
        sp_ort->ReleaseStatus(s);
}

static sp_status ort_init(void)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!sp_ort) {
        const OrtApiBase *base = OrtGetApiBase();
        sp_ort = base ? base->GetApi(ORT_API_VERSION) : NULL;
    }
    pthread_mutex_unlock(&mu);
    if (!sp_ort)
        return sp_fail(SP_ERR_RUNTIME, "the loaded ONNX Runtime (%s) does not provide C API version %d",
                       OrtGetApiBase() ? OrtGetApiBase()->GetVersionString() : "?", ORT_API_VERSION);
    return SP_OK;
}

const char *sp_ort_version(void)
{
    return OrtGetApiBase()->GetVersionString();
}

sp_status sp_ort_providers(char *buf, size_t cap)
{
    char **names;
    int n;
    sp_status st = ort_init();
    if (st)
        return st;
    if ((st = sp_ort_check(sp_ort->GetAvailableProviders(&names, &n), SP_ERR_RUNTIME,
                           "GetAvailableProviders")))
        return st;
    size_t len = 0;
    if (cap)
        buf[0] = 0;
    for (int i = 0; i < n; i++) {
        int w = snprintf(buf + len, cap > len ? cap - len : 0, "%s%s", i ? "," : "", names[i]);
        if (w > 0)
            len += (size_t)w;
    }
    ort_ignore(sp_ort->ReleaseAvailableProviders(names, n));
    return SP_OK;
}

/* Folder of the loaded ONNX Runtime core library, with a trailing '/'. */
static void ort_dir(char *buf, size_t cap)
{
    Dl_info di;
    const char *from = dladdr((void *)OrtGetApiBase, &di) && di.dli_fname ? di.dli_fname : "";
    char real[PATH_MAX];
    if (*from && realpath(from, real))   /* no "build/../" in what is shown */
        from = real;
    const char *slash = strrchr(from, '/');
    snprintf(buf, cap, "%.*s", slash ? (int)(slash - from + 1) : 0, from);
}

/* ONNX Runtime's CUDA provider as a plugin (docs/gpu.md): the library named
 * by SEGPIPE_ORT_CUDA_EP, else libonnxruntime_providers_cuda.so beside the
 * core library (where a checkout's `SP_CUDA=1 scripts/install-deps.sh` puts
 * it; the message names no checkout script, as installed copies have none).
 * providers_shared is loaded first, and it must be the core library's own
 * copy: the plugin package's copy crashed the plugin's initialisation. */
static sp_status register_cuda_plugin(sp_runtime *rt, const char *avail)
{
    char dir[PATH_MAX], lib[PATH_MAX + 64], shared[PATH_MAX + 64];
    const char *env = getenv("SEGPIPE_ORT_CUDA_EP");
    ort_dir(dir, sizeof dir);
    if (env && *env)
        snprintf(lib, sizeof lib, "%s", env);
    else
        snprintf(lib, sizeof lib, "%slibonnxruntime_providers_cuda.so", dir);
    if (access(lib, R_OK) != 0)
        return sp_fail(SP_ERR_USAGE, "device 'cuda' needs CUDAExecutionProvider, which this ONNX Runtime (%s) "
                       "does not offer (available: %s), and the CUDA provider plugin %s is not there: put ONNX "
                       "Runtime's CUDA provider plugin (libonnxruntime_providers_cuda.so, same version) beside "
                       "ONNX Runtime or name it in SEGPIPE_ORT_CUDA_EP (gpu.md in segpipe's documentation)",
                       sp_ort_version(), avail, lib);
    snprintf(shared, sizeof shared, "%slibonnxruntime_providers_shared.so", dir);
    if (!dlopen(shared, RTLD_NOW | RTLD_GLOBAL))
        SP_WARN("cannot preload %s: %s", shared, dlerror());
    sp_status st = sp_ort_check(sp_ort->RegisterExecutionProviderLibrary(rt->env, "cuda", lib),
                                SP_ERR_RUNTIME, "registering the CUDA execution provider");
    if (!st)
        rt->cuda_plugin = 1;
    return st;
}

/* A --device spelling: cpu, cuda, cuda:N, gpu, gpu:N (TotalSegmentator's),
 * tensorrt, tensorrt:N. kind gets "cpu", "cuda" or "tensorrt", *index N
 * (0 when absent): CUDA's ordinal among the GPUs CUDA_VISIBLE_DEVICES shows. */
sp_status sp_device_parse(const char *spec, char *kind, size_t cap, int *index)
{
    const char *s = spec && *spec ? spec : "cpu", *colon = strchr(s, ':');
    size_t n = colon ? (size_t)(colon - s) : strlen(s);
    *index = 0;
    if (n == 3 && !strncmp(s, "gpu", 3))
        snprintf(kind, cap, "cuda");
    else if ((n == 3 && !strncmp(s, "cpu", 3)) || (n == 4 && !strncmp(s, "cuda", 4)) ||
             (n == 8 && !strncmp(s, "tensorrt", 8)))
        snprintf(kind, cap, "%.*s", (int)n, s);
    else
        return sp_fail(SP_ERR_USAGE, "unknown device '%.40s' (use cpu, cuda, cuda:N, gpu, gpu:N or tensorrt)", s);
    if (!colon)
        return SP_OK;
    const char *d = colon + 1;
    size_t nd = strspn(d, "0123456789");
    if (!strcmp(kind, "cpu") || nd == 0 || nd > 2 || d[nd] || atoi(d) > SP_MAX_GPUS - 1)
        return sp_fail(SP_ERR_USAGE, "device '%.40s': the GPU number after ':' is 0 to %d, and only for cuda, "
                       "gpu or tensorrt", s, SP_MAX_GPUS - 1);
    *index = atoi(d);
    return SP_OK;
}

int sp_runtime_device_id(const sp_runtime *rt) { return rt->device_id; }

/* Why --device tensorrt cannot run here, naming what is missing (no paths):
 * NVIDIA's TensorRT 10 libraries, ONNX Runtime's TensorRT provider beside
 * ONNX Runtime (the CUDA plugin package ships one), or an ONNX Runtime that
 * lists TensorrtExecutionProvider. */
static sp_status tensorrt_refusal(const char *avail)
{
    char dir[PATH_MAX], lib[PATH_MAX + 64];
    ort_dir(dir, sizeof dir);
    snprintf(lib, sizeof lib, "%slibonnxruntime_providers_tensorrt.so", dir);
    void *nv = dlopen("libnvinfer.so.10", RTLD_LAZY | RTLD_LOCAL);
    int has_nv = nv != NULL, has_ep = access(lib, R_OK) == 0;
    if (nv)
        dlclose(nv);
    if (!has_nv || !has_ep)
        return sp_fail(SP_ERR_USAGE, "device 'tensorrt': %s%s%s not installed (ONNX Runtime %s offers: %s); use "
                       "--device cuda or cpu (gpu.md in segpipe's documentation)",
                       has_nv ? "" : "NVIDIA's TensorRT 10 libraries (libnvinfer.so.10)",
                       !has_nv && !has_ep ? " and " : "",
                       has_ep ? "" : "ONNX Runtime's TensorRT provider (libonnxruntime_providers_tensorrt.so)",
                       sp_ort_version(), avail);
    return sp_fail(SP_ERR_USAGE, "device 'tensorrt': TensorRT and ONNX Runtime's TensorRT provider are installed, but "
                   "this ONNX Runtime (%s) does not list TensorrtExecutionProvider (offers: %s): segpipe runs "
                   "TensorRT through an ONNX Runtime built with it; use --device cuda", sp_ort_version(), avail);
}

sp_runtime_params sp_runtime_default_params(void)
{
    sp_runtime_params p = {0};
    p.device = "cpu";
    p.arena = "auto";
    return p;
}

sp_status sp_runtime_create(const sp_runtime_params *p, sp_runtime **out)
{
    sp_status st = ort_init();
    *out = NULL;
    if (st)
        return st;
    sp_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    rt->p = p ? *p : sp_runtime_default_params();
    if ((st = sp_device_parse(rt->p.device, rt->device, sizeof rt->device, &rt->device_id))) {
        free(rt);
        return st;
    }
    rt->p.device = rt->device;
    const char *prec = rt->p.precision ? rt->p.precision : "auto";
    if (strcmp(prec, "auto") && strcmp(prec, "fp32") && strcmp(prec, "fp16") && strcmp(prec, "int8")) {
        free(rt);
        return sp_fail(SP_ERR_USAGE, "unknown precision '%s' (use auto, fp32, fp16 or int8)", prec);
    }
    if (!strcmp(prec, "int8") && rt->p.device && strcmp(rt->p.device, "cpu")) {
        free(rt);
        return sp_fail(SP_ERR_USAGE, "--precision int8 runs on the CPU (ONNX Runtime's int8 kernels); "
                       "use --device cpu, or fp16 on a GPU");
    }
    snprintf(rt->precision, sizeof rt->precision, "%s", prec);
    rt->p.precision = rt->precision;
    const char *tta = rt->p.tta ? rt->p.tta : "auto";
    if (strcmp(tta, "auto") && strcmp(tta, "on") && strcmp(tta, "off")) {
        free(rt);
        return sp_fail(SP_ERR_USAGE, "unknown test-time augmentation setting '%s' (use auto, on or off)", tta);
    }
    snprintf(rt->tta, sizeof rt->tta, "%s", tta);
    rt->p.tta = rt->tta;
    const char *arena = rt->p.arena ? rt->p.arena : "auto", *env = getenv("SEGPIPE_ARENA");
    if (!strcmp(arena, "auto") && env && *env)   /* for front ends without --arena (serve, workers) */
        arena = env;
    if (strcmp(arena, "auto") && strcmp(arena, "on") && strcmp(arena, "off")) {
        free(rt);
        return sp_fail(SP_ERR_USAGE, "unknown arena setting '%s' (use auto, on or off)", arena);
    }
    snprintf(rt->arena, sizeof rt->arena, "%s", arena);
    rt->p.arena = rt->arena;
    if (rt->p.threads <= 0)
        rt->p.threads = sp_num_cores();
    if (rt->p.inter_threads <= 0)
        rt->p.inter_threads = 1;
    pthread_mutex_init(&rt->mu, NULL);
    /* ONNX Runtime 1.29's Linux build starts Microsoft's 1DS telemetry in
     * CreateEnv: an uploader thread, $TMPDIR/mat-debug-<pid>.log, $TMPDIR/.ses
     * (a session GUID) and ~/.cache/Microsoft/DeveloperTools/.onnxruntime/
     * (found with strace -k). Its switch is read in CreateEnv, so it is set
     * first; DisableTelemetryEvents then stops any event. docs/security.md. */
    setenv("ORT_DISABLE_TELEMETRY", "1", 1);
    if ((st = sp_ort_check(sp_ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "segpipe", &rt->env),
                           SP_ERR_RUNTIME, "CreateEnv")) ||
        (st = sp_ort_check(sp_ort->DisableTelemetryEvents(rt->env), SP_ERR_RUNTIME, "DisableTelemetryEvents")) ||
        (st = sp_ort_check(sp_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault,
                                                       &rt->cpu_mem),
                           SP_ERR_RUNTIME, "CreateCpuMemoryInfo"))) {
        sp_runtime_free(rt);
        return st;
    }
    /* Validate the device now, so a bad --device fails before any work. */
    if (strcmp(rt->device, "cpu") != 0) {
        char avail[512];
        const char *want = strcmp(rt->device, "cuda") == 0 ? "CUDAExecutionProvider" : "TensorrtExecutionProvider";
        if (sp_ort_providers(avail, sizeof avail) != SP_OK)
            snprintf(avail, sizeof avail, "?");
        if (!strstr(avail, want)) {
            if (strcmp(rt->device, "cuda") == 0)
                st = register_cuda_plugin(rt, avail);
            else
                st = tensorrt_refusal(avail);
            if (st) {
                sp_runtime_free(rt);
                return st;
            }
        }
    }
    *out = rt;
    return SP_OK;
}

static void model_destroy(sp_model *m)
{
    sp_calib_close(m->calib);
    if (m->session)
        sp_ort->ReleaseSession(m->session);
    if (m->solo)
        sp_ort->ReleaseSession(m->solo);
    pthread_mutex_destroy(&m->solo_mu);
    if (m->map)
        munmap(m->map, m->map_len);
    if (m->run_opts)
        sp_ort->ReleaseRunOptions(m->run_opts);
    free(m->in);
    free(m->out);
    free(m->in_names);
    free(m->out_names);
    free(m);
}

void sp_runtime_free(sp_runtime *rt)
{
    if (!rt)
        return;
    for (sp_model *m = rt->models, *nx; m; m = nx) {
        nx = m->next;
        model_destroy(m);
    }
    if (rt->cpu_mem)
        sp_ort->ReleaseMemoryInfo(rt->cpu_mem);
    if (rt->dev_mem_owned)
        sp_ort->ReleaseMemoryInfo(rt->dev_mem_owned);
    if (rt->env)
        sp_ort->ReleaseEnv(rt->env);
    pthread_mutex_destroy(&rt->mu);
    free(rt);
}

static sp_dtype from_ort(ONNXTensorElementDataType t)
{
    switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return SP_DT_F32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return SP_DT_F64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return SP_DT_U8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return SP_DT_I8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return SP_DT_U16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return SP_DT_I16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return SP_DT_U32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return SP_DT_I32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return SP_DT_I64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return SP_DT_F16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return SP_DT_BOOL;
    default: return SP_DT_UNKNOWN;
    }
}

static ONNXTensorElementDataType to_ort(sp_dtype t)
{
    switch (t) {
    case SP_DT_F32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case SP_DT_F64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
    case SP_DT_U8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case SP_DT_I8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case SP_DT_U16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
    case SP_DT_I16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
    case SP_DT_U32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32;
    case SP_DT_I32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case SP_DT_I64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case SP_DT_F16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case SP_DT_BOOL: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
}

static sp_status describe(OrtTypeInfo *ti, sp_io_info *io)
{
    const OrtTensorTypeAndShapeInfo *tsi;
    ONNXTensorElementDataType et;
    size_t nd;
    sp_status st;
    if ((st = sp_ort_check(sp_ort->CastTypeInfoToTensorInfo(ti, &tsi), SP_ERR_MODEL, "type info")))
        return st;
    if (!tsi)
        return sp_fail(SP_ERR_MODEL, "input/output '%s' is not a tensor", io->name);
    if ((st = sp_ort_check(sp_ort->GetTensorElementType(tsi, &et), SP_ERR_MODEL, "element type")) ||
        (st = sp_ort_check(sp_ort->GetDimensionsCount(tsi, &nd), SP_ERR_MODEL, "rank")))
        return st;
    if (nd > SP_MAX_RANK)
        return sp_fail(SP_ERR_MODEL, "'%s' has rank %zu (max %d)", io->name, nd, SP_MAX_RANK);
    io->meta.dtype = from_ort(et);
    io->meta.rank = (int)nd;
    return sp_ort_check(sp_ort->GetDimensions(tsi, io->meta.shape, nd), SP_ERR_MODEL, "dims");
}

static sp_status introspect(sp_model *m)
{
    OrtAllocator *al;
    size_t n;
    sp_status st;
    if ((st = sp_ort_check(sp_ort->GetAllocatorWithDefaultOptions(&al), SP_ERR_RUNTIME, "allocator")))
        return st;
    for (int pass = 0; pass < 2; pass++) {
        OrtStatus *s = pass == 0 ? sp_ort->SessionGetInputCount(m->session, &n)
                                 : sp_ort->SessionGetOutputCount(m->session, &n);
        if ((st = sp_ort_check(s, SP_ERR_MODEL, "io count")))
            return st;
        sp_io_info *io = calloc(n ? n : 1, sizeof *io);
        const char **names = calloc(n ? n : 1, sizeof *names);
        if (!io || !names) {
            free(io);
            free(names);
            return sp_fail(SP_ERR_NOMEM, "out of memory");
        }
        if (pass == 0) {
            m->in = io, m->n_in = (int)n, m->in_names = names;
        } else {
            m->out = io, m->n_out = (int)n, m->out_names = names;
        }
        for (size_t i = 0; i < n; i++) {
            char *name;
            OrtTypeInfo *ti;
            s = pass == 0 ? sp_ort->SessionGetInputName(m->session, i, al, &name)
                          : sp_ort->SessionGetOutputName(m->session, i, al, &name);
            if ((st = sp_ort_check(s, SP_ERR_MODEL, "io name")))
                return st;
            int fits = strlen(name) < sizeof io[i].name;
            snprintf(io[i].name, sizeof io[i].name, "%s", name);
            ort_ignore(sp_ort->AllocatorFree(al, name));
            if (!fits)   /* a cut name would be refused by Run later, less clearly */
                return sp_fail(SP_ERR_MODEL, "%s: an %s name is longer than %zu characters", m->path,
                               pass ? "output" : "input", sizeof io[i].name - 1);
            names[i] = io[i].name;
            s = pass == 0 ? sp_ort->SessionGetInputTypeInfo(m->session, i, &ti)
                          : sp_ort->SessionGetOutputTypeInfo(m->session, i, &ti);
            if ((st = sp_ort_check(s, SP_ERR_MODEL, "io type")))
                return st;
            st = describe(ti, &io[i]);
            sp_ort->ReleaseTypeInfo(ti);
            if (st)
                return st;
        }
    }
    return SP_OK;
}

/* The CUDA provider's options (device.h): segpipe's defaults, CUDA_DEFAULTS
 * for every CUDA runtime (none: no option beat ONNX Runtime's own on an
 * H100, docs/gpu.md "Provider defaults") and ONE_SHOT_DEFAULTS for a
 * runtime that runs once (sp_runtime_params.one_shot: cuDNN's heuristic
 * algorithm choice, since its exhaustive search costs a cold run more than
 * it saves), then user's pairs, whose keys replace the defaults'. */
#define CUDA_DEFAULTS ""
#define ONE_SHOT_DEFAULTS "cudnn_conv_algo_search=HEURISTIC"
int sp_provider_options(const char *device, int one_shot, const char *user, char *buf, size_t cap, const char **keys,
                        const char **vals, int max)
{
    int cuda = strcmp(device, "cuda") == 0;
    snprintf(buf, cap, "%s,%s,%s", cuda ? CUDA_DEFAULTS : "", cuda && one_shot ? ONE_SHOT_DEFAULTS : "",
             user ? user : "");
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok) {
            SP_WARN("SEGPIPE_CUDA_OPTIONS: ignoring '%s' (want key=value)", tok);
            continue;
        }
        *eq = 0;
        int k = 0;
        while (k < n && strcmp(keys[k], tok))
            k++;
        keys[k] = tok;             /* a later value of a key replaces the earlier one */
        vals[k] = eq + 1;
        n += k == n;
    }
    return n;
}

/* sp_provider_options for rt (SEGPIPE_CUDA_OPTIONS the user's pairs), and
 * device_id (cuda:N) for the built-in provider. At most 24 pairs, split
 * into buf. Returns the count. */
static int provider_options(const sp_runtime *rt, char *buf, size_t cap, const char **keys, const char **vals)
{
    int n = sp_provider_options(rt->device, rt->p.one_shot, getenv("SEGPIPE_CUDA_OPTIONS"), buf, cap, keys, vals, 23);
    static const char *const ids[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14",
                                      "15", "16", "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27",
                                      "28", "29", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39", "40",
                                      "41", "42", "43", "44", "45", "46", "47", "48", "49", "50", "51", "52", "53",
                                      "54", "55", "56", "57", "58", "59", "60", "61", "62", "63"};
    int has_id = 0;
    for (int k = 0; k < n; k++)
        has_id |= !strcmp(keys[k], "device_id");
    if (!rt->cuda_plugin && !has_id && rt->device_id > 0 && rt->device_id < SP_MAX_GPUS) {
        keys[n] = "device_id";
        vals[n++] = ids[rt->device_id];
    }
    return n;
}

/* Append the GPU provider to so and remember its device memory (for
 * sp_model_run_device). A failure that is not ORT's is left in *st. */
static OrtStatus *append_provider(sp_runtime *rt, OrtSessionOptions *so, sp_status *st)
{
    char buf[1024];
    const char *keys[24], *vals[24];
    int nk = provider_options(rt, buf, sizeof buf, keys, vals);
    for (int k = 0; k < nk; k++)
        SP_DEBUG("%s provider option %s=%s", rt->device, keys[k], vals[k]);
    if (!rt->cuda_plugin) {
        const char *name = strcmp(rt->device, "cuda") == 0 ? "CUDA" : "TensorRT";
        OrtStatus *s = sp_ort->SessionOptionsAppendExecutionProvider(so, name, keys, vals, (size_t)nk);
        if (!s && !rt->dev_mem && strcmp(rt->device, "cuda") == 0)
            s = sp_ort->CreateMemoryInfo("Cuda", OrtDeviceAllocator, rt->device_id, OrtMemTypeDefault,
                                         &rt->dev_mem_owned);
        if (!s && !rt->dev_mem)
            rt->dev_mem = rt->dev_mem_owned;
        return s;
    }
    const OrtEpDevice *const *devs;
    size_t nd;
    OrtStatus *s = sp_ort->GetEpDevices(rt->env, &devs, &nd);
    const OrtEpDevice *pick = NULL;
    int seen = 0;
    for (size_t i = 0; !s && i < nd && !pick; i++)
        if (strcmp(sp_ort->EpDevice_EpName(devs[i]), "CUDAExecutionProvider") == 0 && seen++ == rt->device_id)
            pick = devs[i];
    if (!s && !pick) {
        *st = seen ? sp_fail(SP_ERR_USAGE, "device cuda:%d: the CUDA provider sees %d GPU(s) (cuda:0 to cuda:%d)",
                             rt->device_id, seen, seen - 1)
                   : sp_fail(SP_ERR_RUNTIME, "the CUDA provider plugin found no CUDA device");
        return NULL;
    }
    if (!s)
        s = sp_ort->SessionOptionsAppendExecutionProvider_V2(so, rt->env, &pick, 1, keys, vals, (size_t)nk);
    if (!s)
        rt->dev_mem = sp_ort->EpDevice_MemoryInfo(pick, OrtDeviceMemoryType_DEFAULT);
    return s;
}

/* The runtime's shared CPU arena (ONNX Runtime's BFC arena registered in the
 * env, used by every session whose model runs with the arena). Growth is
 * bounded: each extension is the size asked for (kSameAsRequested), not the
 * next power of two, and the runs shrink it back (model_run_options), so
 * what it holds between runs is what sp_package_warm_up measures as the
 * run's working memory. Called with rt->mu held. */
static sp_status shared_arena(sp_runtime *rt)
{
    if (rt->arena_registered)
        return SP_OK;
    const char *keys[] = {"arena_extend_strategy", "initial_chunk_size_bytes", "max_dead_bytes_per_chunk"};
    const size_t vals[] = {1, 1 << 20, 1 << 20};
    OrtArenaCfg *cfg;
    sp_status st = sp_ort_check(sp_ort->CreateArenaCfgV2(keys, vals, 3, &cfg), SP_ERR_RUNTIME, "arena config");
    if (st)
        return st;
    st = sp_ort_check(sp_ort->CreateAndRegisterAllocator(rt->env, rt->cpu_mem, cfg), SP_ERR_RUNTIME,
                      "registering the CPU arena");
    sp_ort->ReleaseArenaCfg(cfg);
    if (!st)
        rt->arena_registered = 1;
    return st;
}

static sp_status make_options(sp_runtime *rt, const char *opt_path, int arena, int threads, OrtSessionOptions **out)
{
    OrtSessionOptions *so;
    sp_status st;
    if ((st = sp_ort_check(sp_ort->CreateSessionOptions(&so), SP_ERR_RUNTIME, "session options")))
        return st;
    OrtStatus *s = NULL;
    if (!s) s = sp_ort->SetIntraOpNumThreads(so, threads > 0 ? threads : rt->p.threads);
    if (!s) s = sp_ort->SetInterOpNumThreads(so, rt->p.inter_threads);
    if (!s) s = sp_ort->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL);
    if (!s) s = sp_ort->SetSessionExecutionMode(so, ORT_SEQUENTIAL);
    /* ORT's pool threads spin between ops by default: right when inference
     * owns the cores, wasteful when pipeline threads or other processes need
     * them (video; a machine shared by several jobs: SEGPIPE_ORT_SPIN=0). */
    const char *spin = getenv("SEGPIPE_ORT_SPIN");
    int no_spin = rt->p.no_spin || (spin && !strcmp(spin, "0"));
    if (!s && no_spin) s = sp_ort->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0");
    if (!s && opt_path) s = sp_ort->SetOptimizedModelFilePath(so, opt_path);
    /* SEGPIPE_ORT_PROFILE=PREFIX: ONNX Runtime's per-op profile (a JSON
     * trace, PREFIX_<date>.json, written when the session ends), for
     * measuring which ops dominate (docs/performance.md, brainchop's zoo). */
    const char *prof = getenv("SEGPIPE_ORT_PROFILE");
    if (!s && prof && *prof) s = sp_ort->EnableProfiling(so, prof);
    /* Arena and memory pattern (docs/performance.md, "Arena"): the shared,
     * bounded arena where the model gains from it; else plain malloc per
     * tensor, which held a 118-class 128^3 network at 3.6 GB instead of 4.7
     * (ORT's own arena, which keeps every power of two it ever held). */
    if (!s && arena) s = sp_ort->AddSessionConfigEntry(so, "session.use_env_allocators", "1");
    if (!s && !arena) s = sp_ort->DisableCpuMemArena(so);
    if (!s && !arena) s = sp_ort->DisableMemPattern(so);
    if (!s && strcmp(rt->device, "cpu") != 0)
        s = append_provider(rt, so, &st);
    if (st || (st = sp_ort_check(s, SP_ERR_RUNTIME, "session options"))) {
        sp_ort->ReleaseSessionOptions(so);
        return st;
    }
    *out = so;
    return SP_OK;
}

/* The optimised-graph cache's folder: $SEGPIPE_CACHE_DIR, else
 * $XDG_CACHE_HOME/segpipe/graphs, else ~/.cache/segpipe/graphs; created
 * 0700 and used only when it is a real folder of this user that nobody else
 * can write (never a world-writable temporary folder). 0: no cache. */
static int cache_dir(char *buf, size_t cap)
{
    const char *env = getenv("SEGPIPE_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char base[PATH_MAX];
    if (env && *env)
        snprintf(buf, cap, "%s", env);
    else if (xdg && *xdg == '/')
        snprintf(buf, cap, "%s/segpipe/graphs", xdg);
    else if (home && *home == '/')
        snprintf(buf, cap, "%s/.cache/segpipe/graphs", home);
    else
        return 0;
    /* create each missing level with 0700 */
    snprintf(base, sizeof base, "%s", buf);
    for (char *q = base + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(base, 0700);
            *q = '/';
        }
    mkdir(base, 0700);
    struct stat st;
    if (lstat(buf, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        SP_DEBUG("graph cache: %s is not a private folder of this user; not caching", buf);
        return 0;
    }
    return 1;
}

static void hex32(const uint8_t *d, char *hex)
{
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* The memo of a model file's key: <dir>/<sha256(ORT version, settings,
 * path, device, inode, size, mtime and ctime in ns)>.key holds the entry's
 * 64 hex digits, so an unchanged file is not hashed again (0.2-0.3 s for
 * ISNet's 44 MB). A changed file has a new ctime (set by the kernel on any
 * write, never by a user), hence a new memo and a hash of its bytes. */
static void memo_path(const char *dir, const char *path, const char *opts, const struct stat *sb, char *out,
                      size_t cap)
{
    char meta[PATH_MAX + 256];
    int n = snprintf(meta, sizeof meta, "%s%c%s%c%s%c%llu:%llu:%lld:%lld.%09ld:%lld.%09ld", sp_ort_version(), 0, opts,
                     0, path, 0, (unsigned long long)sb->st_dev, (unsigned long long)sb->st_ino,
                     (long long)sb->st_size, (long long)sb->st_mtim.tv_sec, sb->st_mtim.tv_nsec,
                     (long long)sb->st_ctim.tv_sec, sb->st_ctim.tv_nsec);
    sp_sha256 h;
    uint8_t d[32];
    char hex[65];
    sp_sha256_init(&h);
    sp_sha256_update(&h, meta, n > 0 && (size_t)n < sizeof meta ? (size_t)n : strlen(meta));
    sp_sha256_final(&h, d);
    hex32(d, hex);
    snprintf(out, cap, "%s/%s.key", dir, hex);
}

/* The cache entry's path for model `path` under session settings `opts`:
 * <dir>/<sha256(ORT version, settings, model bytes)>.ort, from the memo
 * when the file is unchanged. 0: none. */
static int cache_entry(const char *path, const char *opts, char *out, size_t cap)
{
    char dir[PATH_MAX], memo[PATH_MAX + 80], hex[65] = "";
    struct stat sb;
    if (!cache_dir(dir, sizeof dir))
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    if (fstat(fileno(f), &sb) != 0) {
        fclose(f);
        return 0;
    }
    memo_path(dir, path, opts, &sb, memo, sizeof memo);
    FILE *mf = fopen(memo, "rb");
    if (mf) {
        size_t got = fread(hex, 1, 64, mf);
        hex[got == 64 ? 64 : 0] = 0;
        fclose(mf);
        if (strspn(hex, "0123456789abcdef") != 64)
            hex[0] = 0;
    }
    int ok = 1;
    if (!hex[0]) {
        sp_sha256 h;
        sp_sha256_init(&h);
        const char *ver = sp_ort_version();
        sp_sha256_update(&h, ver, strlen(ver) + 1);
        sp_sha256_update(&h, opts, strlen(opts) + 1);
        static char buf[1 << 16];
        static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        pthread_mutex_lock(&mu);
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            sp_sha256_update(&h, buf, n);
        pthread_mutex_unlock(&mu);
        ok = !ferror(f);
        uint8_t d[32];
        sp_sha256_final(&h, d);
        hex32(d, hex);
        char tmp[PATH_MAX + 120];
        snprintf(tmp, sizeof tmp, "%s.%ld.tmp", memo, (long)getpid());
        int fd = ok ? open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
        if (fd >= 0) {
            int w = write(fd, hex, 64) == 64;
            if (close(fd) != 0 || !w || rename(tmp, memo) != 0)
                unlink(tmp);
        }
    }
    fclose(f);
    return ok && snprintf(out, cap, "%s/%s.ort", dir, hex) < (int)cap;
}

/* One cache file: a name of 64 hex digits and ".ort" (a graph) or ".key"
 * (a memo, cache_entry). */
static int cache_name(const char *n)
{
    size_t len = strlen(n);
    return len == 68 && (!strcmp(n + 64, ".ort") || !strcmp(n + 64, ".key")) && strspn(n, "0123456789abcdef") == 64;
}

/* Keep the cache within $SEGPIPE_CACHE_MAX_MB (default 1024): the least
 * recently used entries (access time, set on every use) go first, never
 * `keep`, the entry just written. Best effort: a failure leaves files. */
static void cache_prune(const char *dir, const char *keep)
{
    const char *e = getenv("SEGPIPE_CACHE_MAX_MB");
    long long max = e && *e ? atoll(e) : 1024;
    max = (max < 0 ? 0 : max) << 20;
    for (int round = 0; round < 4096; round++) {
        DIR *d = opendir(dir);
        if (!d)
            return;
        long long total = 0;
        time_t oldest = 0;
        char victim[PATH_MAX] = "", path[PATH_MAX];
        struct dirent *de;
        while ((de = readdir(d))) {
            struct stat st;
            if (!cache_name(de->d_name) || snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path ||
                lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            total += st.st_size;
            if (strcmp(path, keep) && (!victim[0] || st.st_atime < oldest)) {
                oldest = st.st_atime;
                snprintf(victim, sizeof victim, "%s", path);
            }
        }
        closedir(d);
        if (total <= max || !victim[0])
            return;
        SP_DEBUG("graph cache: %lld bytes > %lld: removing the least recently used entry", total, max);
        if (unlink(victim) != 0)
            return;
    }
}

/* Everything that shapes the optimised graph, for the cache key: the
 * graph-level settings and the CPU's vector extensions (the layout
 * transforms pick kernels for them). */
static void cache_opts(const sp_runtime *rt, char *buf, size_t cap)
{
    __builtin_cpu_init();
    snprintf(buf, cap, "level=all;exec=sequential;device=%s;avx2=%d;avx512f=%d;avx512vnni=%d;fma=%d",
             rt->device, __builtin_cpu_supports("avx2") != 0, __builtin_cpu_supports("avx512f") != 0,
             __builtin_cpu_supports("avx512vnni") != 0, __builtin_cpu_supports("fma") != 0);
}

/* m's session from cache entry `entry`, mapped read-only and used in place
 * (ORT's use_ort_model_bytes_directly / _for_initializers: no copy of the
 * weights; the mapping lives as long as the session). Loading ISNet this
 * way took 0.44-0.51 s against 0.76-0.93 s reading the same entry and
 * 1.05-1.38 s optimising the ONNX file (docs/performance.md). Entries are
 * only ever replaced by rename, never rewritten in place, so the mapped
 * bytes cannot change under the session. */
static OrtStatus *cache_session(sp_runtime *rt, sp_model *m, const char *entry, OrtSessionOptions *so)
{
    int fd = open(entry, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    void *p = MAP_FAILED;
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0)
        p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (fd >= 0)
        close(fd);
    if (p == MAP_FAILED)
        return sp_ort->CreateStatus(ORT_FAIL, "cannot map the cache entry");
    OrtStatus *s = sp_ort->AddSessionConfigEntry(so, "session.use_ort_model_bytes_directly", "1");
    if (!s)
        s = sp_ort->AddSessionConfigEntry(so, "session.use_ort_model_bytes_for_initializers", "1");
    if (!s)
        s = sp_ort->CreateSessionFromArray(rt->env, p, (size_t)sb.st_size, so, &m->session);
    if (s) {
        munmap(p, (size_t)sb.st_size);
        return s;
    }
    m->map = p;
    m->map_len = (size_t)sb.st_size;
    return NULL;
}

/* Create m's session: from the graph cache when it holds this model under
 * these settings, else from the model (saving the optimised graph to a
 * private temporary name and renaming it into the cache when done, so a
 * reader never sees half a file). A cache entry ORT refuses is removed and
 * the model loaded from its own file. Sets *from_cache. */
static sp_status create_session(sp_runtime *rt, sp_model *m, int *from_cache)
{
    char entry[PATH_MAX], tmp[PATH_MAX + 32], opts[256];
    OrtSessionOptions *so = NULL;
    sp_status st;
    int use_cache = rt->p.cache_optimized > 0 && strcmp(rt->device, "cpu") == 0;
    *from_cache = 0;
    if (use_cache) {
        cache_opts(rt, opts, sizeof opts);
        use_cache = cache_entry(m->path, opts, entry, sizeof entry);
    }
    if (use_cache && access(entry, R_OK) == 0) {
        /* the entry is the optimised graph: running the optimisers on it
         * again cost ISNet 0.25 s of its 0.9 s load (docs/performance.md) */
        if (!(st = make_options(rt, NULL, m->arena, 0, &so)) &&
            (st = sp_ort_check(sp_ort->SetSessionGraphOptimizationLevel(so, ORT_DISABLE_ALL), SP_ERR_RUNTIME,
                               "session options")))
            sp_ort->ReleaseSessionOptions(so);
        if (!st) {
            OrtStatus *s = cache_session(rt, m, entry, so);
            sp_ort->ReleaseSessionOptions(so);
            if (!s) {
                *from_cache = 1;
                utimensat(AT_FDCWD, entry, (struct timespec[2]){{0, UTIME_NOW}, {0, UTIME_OMIT}}, 0);  /* LRU */
                return SP_OK;
            }
            SP_WARN("graph cache entry for %s refused (%s); loading the model", m->path,
                    sp_ort->GetErrorMessage(s));
            sp_ort->ReleaseStatus(s);
            unlink(entry);
        }
    }
    if (use_cache)
        snprintf(tmp, sizeof tmp, "%.*s.%ld.tmp.ort", (int)strlen(entry) - 4, entry, (long)getpid());
    if ((st = make_options(rt, use_cache ? tmp : NULL, m->arena, 0, &so)))
        return st;
    st = sp_ort_check(sp_ort->CreateSession(rt->env, m->path, so, &m->session), SP_ERR_MODEL, m->path);
    sp_ort->ReleaseSessionOptions(so);
    if (use_cache && (st || rename(tmp, entry) != 0))
        unlink(tmp);
    else if (use_cache) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(entry, '/') - entry), entry);
        cache_prune(dir, entry);
    }
    return st;
}

/* Load (or share) the model at path; arena: its arena default (1 on, 0
 * off), which the runtime's "on"/"off" setting overrides. */
sp_status sp_model_load_arena(sp_runtime *rt, const char *path, int arena, sp_model **out)
{
    char real[PATH_MAX];
    sp_status st;
    *out = NULL;
    if (!realpath(path, real))
        return sp_fail(SP_ERR_MODEL, "%s: model file not found", path);
    pthread_mutex_lock(&rt->mu);
    for (sp_model *m = rt->models; m; m = m->next) {
        if (strcmp(m->path, real) == 0) {
            m->refs++;
            pthread_mutex_unlock(&rt->mu);
            *out = m;
            return SP_OK;
        }
    }
    sp_model *m = calloc(1, sizeof *m);
    if (!m) {
        pthread_mutex_unlock(&rt->mu);
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    m->rt = rt;
    m->refs = 1;
    pthread_mutex_init(&m->solo_mu, NULL);
    snprintf(m->path, sizeof m->path, "%s", real);
    m->arena = strcmp(rt->device, "cpu") != 0 ? 0 : !strcmp(rt->arena, "on") ? 1
             : !strcmp(rt->arena, "off") ? 0 : arena;
    int from_cache = 0;
    double t0 = sp_now();
    st = m->arena ? shared_arena(rt) : SP_OK;
    if (!st)   /* always: sp_model_interrupt terminates a run through them */
        st = sp_ort_check(sp_ort->CreateRunOptions(&m->run_opts), SP_ERR_RUNTIME, "run options");
    if (!st && m->arena)
        st = sp_ort_check(sp_ort->AddRunConfigEntry(m->run_opts, "memory.enable_memory_arena_shrinkage",
                                                    "cpu:0"), SP_ERR_RUNTIME, "run options");
    if (!st)
        st = create_session(rt, m, &from_cache);
    m->load_seconds = sp_now() - t0;
    if (!st)
        st = introspect(m);
    if (!st)
        m->calib = sp_calib_open(m->n_out, m->out_names);
    if (st) {
        model_destroy(m);
        pthread_mutex_unlock(&rt->mu);
        return st;
    }
    SP_INFO("loaded %s in %.3f s%s%s", real, m->load_seconds, from_cache ? " (optimised graph cache)" : "",
            m->arena ? ", arena on" : "");
    m->next = rt->models;
    rt->models = m;
    pthread_mutex_unlock(&rt->mu);
    *out = m;
    return SP_OK;
}

sp_status sp_model_load(sp_runtime *rt, const char *path, sp_model **out)
{
    return sp_model_load_arena(rt, path, 0, out);
}

int sp_model_arena(const sp_model *m) { return m->arena; }

void sp_model_release(sp_model *m)
{
    if (!m)
        return;
    sp_runtime *rt = m->rt;
    pthread_mutex_lock(&rt->mu);
    if (--m->refs == 0) {
        sp_model **pp = &rt->models;
        while (*pp && *pp != m)
            pp = &(*pp)->next;
        if (*pp)
            *pp = m->next;
        model_destroy(m);
    }
    pthread_mutex_unlock(&rt->mu);
}

const sp_io_info *sp_model_inputs(const sp_model *m, int *n) { *n = m->n_in; return m->in; }
const sp_io_info *sp_model_outputs(const sp_model *m, int *n) { *n = m->n_out; return m->out; }
double sp_model_load_seconds(const sp_model *m) { return m->load_seconds; }
uint64_t sp_model_run_count(const sp_model *m) { return atomic_load(&m->runs); }

static size_t numel(const sp_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->rank; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static void shape_str(const int64_t *s, int r, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < r && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? "x" : "", (long long)s[i]);
}

/* A SEGPIPE_CALIBRATE run (calib.c): every output is computed, the first
 * n_out into ov as usual, the others' float32 ranges recorded and freed. */
static sp_status calib_run(sp_model *m, OrtValue **iv, int n_in, OrtValue **ov, int n_out)
{
    OrtValue **all = calloc((size_t)m->n_out, sizeof *all);
    if (!all)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    memcpy(all, ov, (size_t)n_out * sizeof *all);
    OrtStatus *rs = sp_ort->Run(m->session, m->run_opts, m->in_names, (const OrtValue *const *)iv,
                                (size_t)n_in, m->out_names, (size_t)m->n_out, all);
    sp_status st = sp_ort_check(rs, run_failure(rs), "inference");
    if (!st)
        memcpy(ov, all, (size_t)n_out * sizeof *all);
    for (int j = n_out; j < m->n_out; j++) {
        OrtTensorTypeAndShapeInfo *tsi = NULL;
        ONNXTensorElementDataType et = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        size_t cnt = 0;
        void *src = NULL;
        OrtStatus *e = !st && all[j] ? sp_ort->GetTensorTypeAndShape(all[j], &tsi) : NULL;
        if (!st && all[j] && !e) {
            ort_ignore(sp_ort->GetTensorElementType(tsi, &et));
            ort_ignore(sp_ort->GetTensorShapeElementCount(tsi, &cnt));
            sp_ort->ReleaseTensorTypeAndShapeInfo(tsi);
            if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
                ort_ignore(sp_ort->GetTensorMutableData(all[j], &src));
            if (src)
                sp_calib_update(m->calib, j, src, cnt);
        }
        ort_ignore(e);
        if (all[j])
            sp_ort->ReleaseValue(all[j]);
    }
    free(all);
    return st;
}

/* Run with the bound tensors' data in memory `mem` (host or device). With
 * keep non-NULL, unbound outputs stay ORT's: their values are handed over
 * in keep[] (SP_MAX_RANK entries) instead of being copied. */
static sp_status model_run(sp_model *m, const OrtMemoryInfo *mem, const sp_tensor *inputs, int n_in,
                           sp_tensor *outputs, int n_out, OrtValue **keep, OrtSession *session)
{
    OrtValue *iv[SP_MAX_RANK] = {0}, *ov[SP_MAX_RANK] = {0};
    sp_status st = SP_OK;
    if (n_in != m->n_in)
        return sp_fail(SP_ERR_USAGE, "model takes %d input(s), %d given", m->n_in, n_in);
    if (n_out < 1 || n_out > m->n_out || n_in > SP_MAX_RANK || n_out > SP_MAX_RANK)
        return sp_fail(SP_ERR_USAGE, "bad output count %d (model has %d)", n_out, m->n_out);
    for (int i = 0; i < n_in; i++) {
        const sp_io_info *want = &m->in[i];
        const sp_tensor *t = &inputs[i];
        char a[128], b[128];
        if (t->dtype != want->meta.dtype)
            return sp_fail(SP_ERR_INPUT, "input '%s' must be %s, got %s", want->name,
                           sp_dtype_str(want->meta.dtype), sp_dtype_str(t->dtype));
        int bad = t->rank != want->meta.rank;
        for (int d = 0; !bad && d < t->rank; d++)
            bad = t->shape[d] <= 0 || (want->meta.shape[d] > 0 && want->meta.shape[d] != t->shape[d]);
        if (bad) {
            shape_str(want->meta.shape, want->meta.rank, a, sizeof a);
            shape_str(t->shape, t->rank, b, sizeof b);
            return sp_fail(SP_ERR_INPUT, "input '%s' must have shape %s (-1 = any), got %s",
                           want->name, a, b);
        }
        if (!t->data)
            return sp_fail(SP_ERR_USAGE, "input '%s' has no data", want->name);
    }
    for (int i = 0; i < n_in && !st; i++)
        st = sp_ort_check(sp_ort->CreateTensorWithDataAsOrtValue(
                              mem, inputs[i].data, numel(&inputs[i]) * sp_dtype_size(inputs[i].dtype),
                              inputs[i].shape, (size_t)inputs[i].rank, to_ort(inputs[i].dtype), &iv[i]),
                          SP_ERR_RUNTIME, "input tensor");
    /* Caller-provided output buffers are bound directly (no copy). */
    for (int j = 0; j < n_out && !st; j++)
        if (outputs[j].data)
            st = sp_ort_check(sp_ort->CreateTensorWithDataAsOrtValue(
                                  mem, outputs[j].data,
                                  numel(&outputs[j]) * sp_dtype_size(outputs[j].dtype), outputs[j].shape,
                                  (size_t)outputs[j].rank, to_ort(outputs[j].dtype), &ov[j]),
                              SP_ERR_RUNTIME, "output tensor");
    if (!st && m->calib && n_out < m->n_out)
        st = calib_run(m, iv, n_in, ov, n_out);
    else if (!st) {
        OrtStatus *rs = sp_ort->Run(session ? session : m->session, m->run_opts, m->in_names,
                                    (const OrtValue *const *)iv, (size_t)n_in, m->out_names, (size_t)n_out, ov);
        st = sp_ort_check(rs, run_failure(rs), "inference");
    }
    for (int j = 0; j < n_out && !st; j++) {
        if (outputs[j].data)
            continue;
        OrtTensorTypeAndShapeInfo *tsi;
        ONNXTensorElementDataType et;
        size_t nd;
        void *src;
        if ((st = sp_ort_check(sp_ort->GetTensorTypeAndShape(ov[j], &tsi), SP_ERR_RUNTIME, "output")))
            break;
        ort_ignore(sp_ort->GetTensorElementType(tsi, &et));
        ort_ignore(sp_ort->GetDimensionsCount(tsi, &nd));
        if (nd > SP_MAX_RANK)
            nd = SP_MAX_RANK;
        outputs[j].dtype = from_ort(et);
        outputs[j].rank = (int)nd;
        ort_ignore(sp_ort->GetDimensions(tsi, outputs[j].shape, nd));
        sp_ort->ReleaseTensorTypeAndShapeInfo(tsi);
        size_t bytes = numel(&outputs[j]) * sp_dtype_size(outputs[j].dtype);
        if ((st = sp_ort_check(sp_ort->GetTensorMutableData(ov[j], &src), SP_ERR_RUNTIME, "output")))
            break;
        if (keep) {   /* borrowed: the caller reads ORT's buffer, then releases it */
            outputs[j].data = src;
            keep[j] = ov[j];
            ov[j] = NULL;
            continue;
        }
        outputs[j].data = malloc(bytes ? bytes : 1);
        if (!outputs[j].data) {
            st = sp_fail(SP_ERR_NOMEM, "cannot allocate %zu bytes for output '%s'", bytes, m->out[j].name);
            break;
        }
        memcpy(outputs[j].data, src, bytes);
    }
    for (int i = 0; i < SP_MAX_RANK; i++) {
        if (iv[i])
            sp_ort->ReleaseValue(iv[i]);
        if (ov[i])
            sp_ort->ReleaseValue(ov[i]);
    }
    if (!st)
        atomic_fetch_add(&m->runs, 1);
    return st;
}

void sp_model_interrupt(sp_model *m)
{
    OrtStatus *e = m && m->run_opts ? sp_ort->RunOptionsSetTerminate(m->run_opts) : NULL;
    if (e)
        sp_ort->ReleaseStatus(e);
}

sp_status sp_model_run(sp_model *m, const sp_tensor *inputs, int n_in,
                       sp_tensor *outputs, int n_out)
{
    return model_run(m, m->rt->cpu_mem, inputs, n_in, outputs, n_out, NULL, NULL);
}

/* The model's one-thread CPU session, made on first use (the same file and
 * options, one intra-op thread, no graph cache); NULL when the model is not
 * on the CPU or it could not be made (said once). */
static OrtSession *solo_session(sp_model *m)
{
    if (strcmp(m->rt->device, "cpu") != 0)
        return NULL;
    pthread_mutex_lock(&m->solo_mu);
    if (m->solo_state == 0) {
        OrtSessionOptions *so = NULL;
        sp_status st = make_options(m->rt, NULL, m->arena, 1, &so);
        if (!st) {
            st = sp_ort_check(sp_ort->CreateSession(m->rt->env, m->path, so, &m->solo), SP_ERR_MODEL, m->path);
            sp_ort->ReleaseSessionOptions(so);
        }
        m->solo_state = st ? -1 : 1;
        if (st)
            SP_WARN("one-thread session for %s: %s; tiles share the model's session", m->path, sp_last_error());
    }
    pthread_mutex_unlock(&m->solo_mu);
    return m->solo;
}

sp_status sp_model_run_solo(sp_model *m, const sp_tensor *inputs, int n_in, sp_tensor *outputs, int n_out)
{
    return model_run(m, m->rt->cpu_mem, inputs, n_in, outputs, n_out, NULL, solo_session(m));
}

int sp_model_sessions(sp_model *m)
{
    pthread_mutex_lock(&m->solo_mu);
    int n = 1 + (m->solo != NULL);
    pthread_mutex_unlock(&m->solo_mu);
    return n;
}

int sp_runtime_threads(const sp_runtime *rt)
{
    return rt->p.threads;
}

sp_status sp_model_run_borrow(sp_model *m, const sp_tensor *inputs, int n_in, sp_tensor *outputs, int n_out,
                              void **hold)
{
    OrtValue **keep = calloc(SP_MAX_RANK, sizeof *keep);
    *hold = NULL;
    if (!keep)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    sp_status st = model_run(m, m->rt->cpu_mem, inputs, n_in, outputs, n_out, keep, NULL);
    if (st) {
        sp_model_outputs_release(keep);
        return st;
    }
    *hold = keep;
    return SP_OK;
}

void sp_model_outputs_release(void *hold)
{
    OrtValue **keep = hold;
    if (!keep)
        return;
    for (int i = 0; i < SP_MAX_RANK; i++)
        if (keep[i])
            sp_ort->ReleaseValue(keep[i]);
    free(keep);
}

const char *sp_runtime_device_name(const sp_runtime *rt) { return rt->device; }
const sp_runtime *sp_model_runtime(const sp_model *m) { return m->rt; }
const char *sp_runtime_precision(const sp_runtime *rt) { return rt->precision; }
const char *sp_runtime_tta(const sp_runtime *rt) { return rt->tta; }
int sp_runtime_parts_on_demand(const sp_runtime *rt) { return rt->p.parts_on_demand != 0; }

int sp_model_on_device(const sp_model *m)
{
    return m->rt->dev_mem != NULL;
}

sp_status sp_model_run_device(sp_model *m, const sp_tensor *inputs, int n_in, sp_tensor *outputs, int n_out)
{
    if (!m->rt->dev_mem)
        return sp_fail(SP_ERR_USAGE, "the model does not run on a GPU");
    for (int j = 0; j < n_out; j++)
        if (!outputs[j].data)
            return sp_fail(SP_ERR_USAGE, "device runs need every output bound");
    return model_run(m, m->rt->dev_mem, inputs, n_in, outputs, n_out, NULL, NULL);
}

void sp_tensor_free_data(sp_tensor *t)
{
    if (t) {
        free(t->data);
        t->data = NULL;
    }
}
