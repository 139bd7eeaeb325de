/* libFuzzer target: KServe v2 JSON request parsing and checking
 * (sp_kserve_parse) against a model with one input of shape [-1, 1, 8, 8, 8]
 * and one of shape [-1, 3]. Any body must give 0 with tensors whose sizes
 * match their shapes, or a 4xx/503 with a message: never a crash, a leak
 * or an allocation past what the body itself holds. */
#include "server/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sp_io_info ins[2] = {
        {"input", {SP_DT_F32, 5, {-1, 1, 8, 8, 8}, NULL}},
        {"extra", {SP_DT_F32, 2, {-1, 3}, NULL}},
    };
    sp_tensor tin[SP_MAX_RANK];
    memset(tin, 0, sizeof tin);
    char msg[256] = "";
    int ni = size && (data[0] & 1) ? 2 : 1;
    char id[64];
    int http = sp_kserve_parse((const char *)data, size, ins, ni, tin, id, sizeof id, msg, sizeof msg);
    if (http == 0) {
        for (int i = 0; i < ni; i++) {
            size_t n = 1;
            for (int d = 0; d < tin[i].rank; d++)
                n *= (size_t)tin[i].shape[d];
            volatile float last = ((float *)tin[i].data)[n - 1];
            (void)last;
        }
    } else if (!msg[0] || http < 400) {
        abort();
    }
    for (int i = 0; i < SP_MAX_RANK; i++)
        free(tin[i].data);
    return 0;
}
