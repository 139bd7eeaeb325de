/*
 * body_skin.c — TotalSegmentator's derived masks of its `body` task, written
 * beside the per-class files of a split output (nnunet.py, when the task is
 * "body", the output is not multilabel and --no_derived_masks is not given):
 * body.nii.gz, the union of the body structures (libs.py's
 * combine_masks(dir, "body"): body_trunc and body_extremities), and
 * skin.nii.gz from postprocessing.py's extract_skin: the body dilated once
 * and minus itself eroded three times (scipy's cross structure, voxels
 * beyond the border count as 0), kept where -200 < CT < 250, blobs of at
 * most 5 voxels (6-connected) removed.
 */
#include "pipeline.h"

#include <stdlib.h>
#include <string.h>

/* One step of binary dilation (grow) or erosion (!grow) with the 6-neighbour
 * cross, the outside being 0: src -> dst. */
static void cross_step(const uint8_t *src, uint8_t *dst, const int64_t dim[3], int grow)
{
    const size_t sx = 1, sy = (size_t)dim[0], sz = (size_t)(dim[0] * dim[1]);
    for (int64_t k = 0; k < dim[2]; k++)
        for (int64_t j = 0; j < dim[1]; j++)
            for (int64_t i = 0; i < dim[0]; i++) {
                size_t v = (size_t)i + sy * (size_t)j + sz * (size_t)k;
                uint8_t n[6] = {i > 0 && src[v - sx], i + 1 < dim[0] && src[v + sx], j > 0 && src[v - sy],
                                j + 1 < dim[1] && src[v + sy], k > 0 && src[v - sz], k + 1 < dim[2] && src[v + sz]};
                uint8_t any = n[0] | n[1] | n[2] | n[3] | n[4] | n[5], all = n[0] & n[1] & n[2] & n[3] & n[4] & n[5];
                dst[v] = grow ? (uint8_t)(src[v] | any) : (uint8_t)(src[v] & all);
            }
}

sp_status sp_body_skin(const uint16_t *labels, const float *ct, const int64_t dim[3], const uint8_t *is_body,
                       int nlab, uint8_t *body, uint8_t *skin)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    uint8_t *a = malloc(nv ? nv : 1), *b = malloc(nv ? nv : 1);
    uint16_t *s16 = malloc((nv ? nv : 1) * sizeof *s16);
    sp_status st = SP_OK;
    if (!a || !b || !s16) {
        st = sp_fail(SP_ERR_NOMEM, "skin: cannot allocate %zu voxels", nv);
        goto done;
    }
    for (size_t v = 0; v < nv; v++)
        body[v] = labels[v] < nlab && is_body[labels[v]];
    cross_step(body, a, dim, 1);   /* binary_dilation(body, iterations=1) */
    memcpy(skin, a, nv);           /* the dilated body, before the erosion */
    for (int it = 0; it < 3; it++) {   /* binary_erosion(body, iterations=3) */
        cross_step(a, b, dim, 0);
        uint8_t *t = a;
        a = b, b = t;
    }
    for (size_t v = 0; v < nv; v++)   /* body - body_inner, in the skin's density range */
        s16[v] = skin[v] && !a[v] && ct[v] > -200.0f && ct[v] < 250.0f;
    if ((st = sp_components_label_blobs(s16, dim, 1, 0, 6)))   /* remove_small_blobs(interval=[5, 1e10]) */
        goto done;
    for (size_t v = 0; v < nv; v++)
        skin[v] = (uint8_t)s16[v];
done:
    free(a);
    free(b);
    free(s16);
    return st;
}
