/*
 * devices.c — a device list ("cuda:0,cuda:1", "cuda:all") turned into the
 * devices a service or a worker spreads its models over. Here, above the
 * runtime, because "all" asks the GPU window kernels how many GPUs CUDA sees
 * (window_gpu.c), while one device name is parsed by the runtime
 * (sp_device_parse in runtime/ort.c).
 */
#include "pipeline.h"

#include <stdio.h>
#include <string.h>

/* One device, or several GPUs: "cuda:0,cuda:1" (CUDA GPUs only, each once)
 * or "cuda:all" / "gpu:all" (every GPU CUDA sees). */
sp_status sp_device_list(const char *spec, char (*devs)[16], int max, int *n)
{
    const char *d = spec && *spec ? spec : "cpu";
    char kind[16], buf[1040];
    int idx, seen[SP_MAX_GPUS] = {0};
    *n = 0;
    if (strlen(d) > 1024)
        return sp_fail(SP_ERR_USAGE, "device list too long");
    if (!strcmp(d, "cuda:all") || !strcmp(d, "gpu:all")) {
        int k = sp_gpu_count();
        if (k < 1)
            return sp_fail(SP_ERR_USAGE, "device %s: no GPU found (CUDA sees none, or the GPU window kernels "
                           "libsegpipe_cuda.so are not installed: gpu.md in segpipe's documentation)", d);
        for (int i = 0; i < k && *n < max; i++)
            snprintf(devs[(*n)++], 16, "cuda:%d", i);
        return SP_OK;
    }
    snprintf(buf, sizeof buf, "%s", d);
    int several = strchr(buf, ',') != NULL;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        sp_status st = sp_device_parse(t, kind, sizeof kind, &idx);
        if (st)
            return st;
        if (several && strcmp(kind, "cuda"))
            return sp_fail(SP_ERR_USAGE, "device '%.40s': a list names CUDA GPUs only (cuda:0,cuda:1 or cuda:all)", t);
        if (seen[idx]++)
            return sp_fail(SP_ERR_USAGE, "device list: GPU %d is named twice", idx);
        if (*n == max)
            return sp_fail(SP_ERR_USAGE, "device list: more than %d devices", max);
        if (several)
            snprintf(devs[(*n)++], 16, "cuda:%d", idx);
        else
            snprintf(devs[(*n)++], 16, "%.15s", t);
    }
    return *n ? SP_OK : sp_fail(SP_ERR_USAGE, "device list: empty");
}
