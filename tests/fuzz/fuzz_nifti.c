/* libFuzzer target: the NIfTI reader (plain and gzip) on arbitrary bytes.
 * Any input must give SP_OK or a clean error: never a crash, a hang, a leak
 * or an allocation of what a header merely claims (voxel limit 2^18). */
#include "segpipe.h"
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sp_read_params p = sp_read_default_params();
    p.max_voxels = 1u << 18;
    sp_volume *v = NULL;
    if (sp_volume_read_mem(data, size, "fuzz", &p, &v) == SP_OK) {
        sp_volume_info vi;
        sp_volume_get_info(v, &vi);
        volatile float s = sp_volume_data(v)[vi.dim[0] * vi.dim[1] * vi.dim[2] - 1];
        (void)s;
        sp_volume_free(v);
    }
    return 0;
}
