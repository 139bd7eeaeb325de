/* libFuzzer target: the CT entry point (sp_ct_run on the tiny test model)
 * with the header fields an attacker controls. The first 40 bytes choose
 * dim[1..3] (int16), pixdim[1..3] (float32, any bits: 0, negative, huge,
 * NaN), vox_offset, datatype, qform/sform codes and srow scales; the rest
 * is the voxel data. Any input must give SP_OK or a clean error: never a
 * crash, a hang or an allocation the limits do not allow (model grid
 * limited to 2^18 voxels, 64 tiles). */
#include "segpipe.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static sp_package *pk;

static void load(void)
{
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = 1;
    sp_runtime *rt = NULL;
    if (sp_runtime_create(&rp, &rt) || sp_package_load(rt, "tests/data/tinyseg", &pk))
        abort();   /* run from the repository root */
}

static void put(uint8_t *h, size_t off, const void *v, size_t n) { memcpy(h + off, v, n); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!pk)
        load();
    if (size < 40)
        return 0;
    static const int16_t dtypes[] = {2, 4, 8, 16, 64, 256, 512, 768, 1, 1024};
    uint8_t *f = calloc(1, 352 + (size - 40));
    int16_t dim[8] = {3, 1, 1, 1, 1, 1, 1, 1}, dt;
    float pix[8] = {1, 1, 1, 1, 1, 1, 1, 1}, vo, srow[3];
    int32_t i348 = 348;
    memcpy(&dim[1], data, 6);
    memcpy(&pix[1], data + 6, 12);
    memcpy(&vo, data + 18, 4);
    dt = dtypes[data[22] % 10];
    memcpy(srow, data + 23, 12);
    put(f, 0, &i348, 4);
    put(f, 40, dim, 16);
    put(f, 70, &dt, 2);
    put(f, 76, pix, 32);
    if (data[35] & 1)
        put(f, 108, &vo, 4);
    int16_t codes[2] = {(int16_t)(data[36] & 3), (int16_t)(data[37] & 3)};
    put(f, 252, codes, 4);
    for (int r = 0; r < 3; r++)
        put(f, 280 + 16 * r + 4 * r, &srow[r], 4);
    put(f, 344, "n+1", 4);
    memcpy(f + 352, data + 40, size - 40);
    sp_read_params rp = sp_read_default_params();
    rp.max_voxels = 1u << 16;
    sp_volume *v = NULL;
    if (sp_volume_read_mem(f, 352 + (size - 40), "fuzz", &rp, &v) == SP_OK) {
        sp_ct_params cp = sp_ct_default_params();
        cp.threads = 1;
        cp.max_model_voxels = 1u << 18;
        cp.max_tiles = 64;
        sp_ct_result *res = NULL;
        if (sp_ct_run(pk, v, &cp, &res) == SP_OK)
            sp_ct_result_free(res);
        sp_volume_free(v);
    }
    free(f);
    return 0;
}
