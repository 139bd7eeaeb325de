/* libFuzzer target: KServe v2 request parsing and checking (sp_kserve_parse)
 * against a model with one input of shape [-1, 1, 8, 8, 8] and one of shape
 * [-1, 3], and outputs "logits" and "probs". The first byte picks the input
 * count and, for the binary tensor extension, the JSON header's length (the
 * rest of the body is then binary data). Any body must give 0 with tensors
 * whose sizes match their shapes and valid output selections, or a 4xx/503
 * with a message: never a crash, a leak or an allocation past what the body
 * itself holds. */
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
    static const sp_io_info outs[2] = {
        {"logits", {SP_DT_F32, 5, {-1, 4, 8, 8, 8}, NULL}},
        {"probs", {SP_DT_F32, 2, {-1, 4}, NULL}},
    };
    int ni = size && (data[0] & 1) ? 2 : 1;
    size_t header_len = size && (data[0] & 2) ? (size_t)(data[0] >> 2) * 4 : 0;   /* may pass the body */
    if (size) {
        data++;
        size--;
    }
    sp_kserve_req q;
    int http = sp_kserve_parse((const char *)data, size, header_len, ins, ni, outs, 2, tin, &q, msg, sizeof msg);
    if (http == 0) {
        if (q.n < 1 || q.n > 2)
            abort();
        for (int i = 0; i < q.n; i++)
            if (q.sel[i].index < 0 || q.sel[i].index > 1)
                abort();
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
