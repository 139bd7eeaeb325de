/* Runtime: the tiny ONNX model (y = w[c] * x + b[c]) checked against values
 * computed here, the shared-session manager, and every error path. */
#include "test.h"
#include "core/core.h"
#include "runtime/device.h"

#include <math.h>
#include <stdlib.h>

static const float W[3] = {1, 2, -1}, B[3] = {0, 0.5f, 1};

static sp_runtime *rt_new(void)
{
    sp_runtime_params p = sp_runtime_default_params();
    p.threads = 1;
    sp_runtime *rt = NULL;
    CHECK(sp_runtime_create(&p, &rt) == SP_OK);
    return rt;
}

void test_runtime_tiny(void)
{
    sp_runtime *rt = rt_new();
    sp_model *m = NULL;
    CHECK(sp_model_load(rt, test_data("tiny.onnx"), &m) == SP_OK);
    if (!m) {
        sp_runtime_free(rt);
        return;
    }
    int ni, no;
    const sp_io_info *in = sp_model_inputs(m, &ni), *out = sp_model_outputs(m, &no);
    CHECK(ni == 1 && no == 1);
    CHECK(strcmp(in[0].name, "x") == 0 && strcmp(out[0].name, "y") == 0);
    CHECK(in[0].meta.rank == 5 && in[0].meta.shape[0] == -1 && in[0].meta.shape[2] == 4);
    CHECK(out[0].meta.dtype == SP_DT_F32 && out[0].meta.shape[1] == 3);
    float x[2 * 64];
    for (int i = 0; i < 128; i++)
        x[i] = (float)i * 0.1f - 3.0f;
    sp_tensor ti = {SP_DT_F32, 5, {2, 1, 4, 4, 4}, x};
    sp_tensor to;
    memset(&to, 0, sizeof to);
    CHECK(sp_model_run(m, &ti, 1, &to, 1) == SP_OK);
    CHECK(to.rank == 5 && to.shape[0] == 2 && to.shape[1] == 3 && to.shape[4] == 4);
    const float *y = to.data;
    int bad = 0;
    for (int n = 0; n < 2 && y; n++)
        for (int c = 0; c < 3; c++)
            for (int v = 0; v < 64; v++)
                bad += fabsf(y[(n * 3 + c) * 64 + v] - (W[c] * x[n * 64 + v] + B[c])) > 1e-5f;
    CHECK(y && bad == 0);
    sp_tensor_free_data(&to);
    /* caller-provided output buffer */
    float buf[2 * 3 * 64];
    sp_tensor tb = {SP_DT_F32, 5, {2, 3, 4, 4, 4}, buf};
    CHECK(sp_model_run(m, &ti, 1, &tb, 1) == SP_OK);
    CHECK(fabsf(buf[64 + 5] - (2 * x[5] + 0.5f)) < 1e-5f);
    CHECK(sp_model_run_count(m) == 2);
    sp_model_release(m);
    sp_runtime_free(rt);
}

void test_runtime_shared_session(void)
{
    sp_runtime *rt = rt_new();
    sp_model *a = NULL, *b = NULL;
    CHECK(sp_model_load(rt, test_data("tiny.onnx"), &a) == SP_OK);
    CHECK(sp_model_load(rt, "tests/data/../data/tiny.onnx", &b) == SP_OK || b == NULL);
    CHECK(sp_model_load(rt, test_data("tiny.onnx"), &b) == SP_OK);
    CHECK(a && a == b);   /* one session per path */
    sp_model_release(a);
    sp_model_release(b);
    sp_runtime_free(rt);
}

void test_runtime_errors(void)
{
    sp_runtime *rt = rt_new();
    sp_model *m = NULL;
    CHECK(sp_model_load(rt, "/nonexistent/model.onnx", &m) == SP_ERR_MODEL);
    CHECK_CONTAINS(sp_last_error(), "not found");
    CHECK(m == NULL);
    /* corrupt bytes */
    const char *bad = "/tmp/segpipe-test-corrupt.onnx";
    FILE *f = fopen(bad, "wb");
    fputs("this is not a protobuf \x01\x02\x03", f);
    fclose(f);
    CHECK(sp_model_load(rt, bad, &m) == SP_ERR_MODEL);
    CHECK_CONTAINS(sp_last_error(), "segpipe-test-corrupt.onnx");
    remove(bad);
    CHECK(sp_model_load(rt, test_data("tiny.onnx"), &m) == SP_OK);
    float x[5 * 4 * 4] = {0};
    sp_tensor o;
    memset(&o, 0, sizeof o);
    sp_tensor wrong_shape = {SP_DT_F32, 5, {1, 1, 5, 4, 4}, x};
    CHECK(sp_model_run(m, &wrong_shape, 1, &o, 1) == SP_ERR_INPUT);
    CHECK_CONTAINS(sp_last_error(), "shape");
    CHECK_CONTAINS(sp_last_error(), "1x1x5x4x4");
    sp_tensor wrong_rank = {SP_DT_F32, 4, {1, 1, 4, 4}, x};
    CHECK(sp_model_run(m, &wrong_rank, 1, &o, 1) == SP_ERR_INPUT);
    sp_tensor wrong_type = {SP_DT_I32, 5, {1, 1, 4, 4, 4}, x};
    CHECK(sp_model_run(m, &wrong_type, 1, &o, 1) == SP_ERR_INPUT);
    CHECK_CONTAINS(sp_last_error(), "float32");
    CHECK(sp_model_run(m, &wrong_type, 2, &o, 1) == SP_ERR_USAGE);
    CHECK(o.data == NULL);
    sp_model_release(m);
    sp_runtime_free(rt);
}

void test_runtime_device(void)
{
    sp_runtime_params p = sp_runtime_default_params();
    sp_runtime *rt = NULL;
    p.device = "tpu";
    CHECK(sp_runtime_create(&p, &rt) == SP_ERR_USAGE && rt == NULL);
    CHECK_CONTAINS(sp_last_error(), "unknown device");
    p.device = "tensorrt";
    CHECK(sp_runtime_create(&p, &rt) == SP_ERR_USAGE && rt == NULL);
    CHECK_CONTAINS(sp_last_error(), "CPUExecutionProvider");
    char prov[256];
    CHECK(sp_ort_providers(prov, sizeof prov) == SP_OK);
    CHECK_CONTAINS(prov, "CPUExecutionProvider");
    CHECK(strlen(sp_ort_version()) >= 5);
}

/* The GPU provider's options: a one-shot runtime (the CLI's one-input ct)
 * gets cuDNN's heuristic algorithm choice, a service's runtime ONNX
 * Runtime's exhaustive search; the user's pairs replace either. */
static const char *opt(int n, const char **keys, const char **vals, const char *key)
{
    for (int k = 0; k < n; k++)
        if (!strcmp(keys[k], key))
            return vals[k];
    return NULL;
}

void test_provider_options(void)
{
    char buf[256];
    const char *keys[8], *vals[8];
    CHECK(sp_runtime_default_params().one_shot == 0);
    int n = sp_provider_options("cuda", 1, NULL, buf, sizeof buf, keys, vals, 8);
    CHECK(n == 1 && !strcmp(opt(n, keys, vals, "cudnn_conv_algo_search"), "HEURISTIC"));
    CHECK(sp_provider_options("cuda", 0, NULL, buf, sizeof buf, keys, vals, 8) == 0);
    n = sp_provider_options("cuda", 1, "use_tf32=0,cudnn_conv_algo_search=EXHAUSTIVE", buf, sizeof buf, keys, vals, 8);
    CHECK(n == 2 && !strcmp(opt(n, keys, vals, "cudnn_conv_algo_search"), "EXHAUSTIVE"));
    CHECK(!strcmp(opt(n, keys, vals, "use_tf32"), "0"));
    n = sp_provider_options("cuda", 0, "enable_cuda_graph=1", buf, sizeof buf, keys, vals, 8);
    CHECK(n == 1 && !opt(n, keys, vals, "cudnn_conv_algo_search"));
    n = sp_provider_options("tensorrt", 1, "trt_fp16_enable=1", buf, sizeof buf, keys, vals, 8);
    CHECK(n == 1 && !strcmp(keys[0], "trt_fp16_enable"));
    CHECK(sp_provider_options("cuda", 1, "bad,=x", buf, sizeof buf, keys, vals, 8) == 1);   /* warned, skipped */
}
