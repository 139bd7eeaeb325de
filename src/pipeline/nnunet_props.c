/*
 * nnunet_props.c — nnU-Net's per-case properties (CASE.pkl), so that
 * `segpipe predict --save_probabilities` output folders feed nnU-Net's own
 * nnUNetv2_ensemble (nnunetv2/ensembling/ensemble.py), which loads the
 * first folder's CASE.pkl and hands it to the plans' reader/writer to
 * write the ensemble's labels. The dict holds what nnU-Net's readers and
 * preprocessing put there (imageio/simpleitk_reader_writer.py,
 * nibabel_reader_writer.py, preprocessing/preprocessors/
 * default_preprocessor.py), from the case segpipe ran, in nnU-Net's array
 * order (z, y, x = the file's k, j, i) where nnU-Net uses it:
 *   sitk_stuff     {spacing (x, y, z), origin, direction (9, row-major)}:
 *                  SimpleITK's LPS geometry of the input (SimpleITKIO);
 *   nibabel_stuff  {original_affine: 4x4 nested list}: the input's affine
 *                  (NibabelIO; nibabel takes a list where nnU-Net stores
 *                  an array);
 *   spacing [z, y, x]; shape_before_cropping (z, y, x);
 *   bbox_used_for_cropping [[z0, z1], [y0, y1], [x0, x1]] (crop to the
 *   non-zero voxels, half-open); shape_after_cropping_and_before_resampling.
 * Both readers' keys are written: which one the plans name is not known
 * here, and each reads only its own.
 */
#include "pipeline.h"

#include "../io/pickle.h"

#include <math.h>

static void key(sp_pkl *p, const char *k) { sp_pkl_str(p, k); }

/* (a, b, c) of ints */
static void ints3(sp_pkl *p, const int64_t v[3])
{
    sp_pkl_tuple(p);
    for (int a = 0; a < 3; a++)
        sp_pkl_int(p, v[a]);
    sp_pkl_tuple_end(p);
}

/* SimpleITK's view of the NIfTI: LPS (x and y negated), the direction
 * cosines the affine's columns over their lengths, the spacing pixdim */
static void sitk_stuff(sp_pkl *p, const sp_volume_info *vi)
{
    static const double lps[3] = {-1, -1, 1};
    key(p, "sitk_stuff");
    sp_pkl_dict(p);
    key(p, "spacing");
    sp_pkl_tuple(p);
    for (int a = 0; a < 3; a++)
        sp_pkl_float(p, vi->spacing[a]);
    sp_pkl_tuple_end(p);
    key(p, "origin");
    sp_pkl_tuple(p);
    for (int r = 0; r < 3; r++)
        sp_pkl_float(p, lps[r] * vi->affine[r][3]);
    sp_pkl_tuple_end(p);
    key(p, "direction");
    sp_pkl_tuple(p);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) {
            double n = sqrt(vi->affine[0][c] * vi->affine[0][c] + vi->affine[1][c] * vi->affine[1][c] +
                            vi->affine[2][c] * vi->affine[2][c]);
            sp_pkl_float(p, n > 0 ? lps[r] * vi->affine[r][c] / n : (r == c) * lps[r]);
        }
    sp_pkl_tuple_end(p);
    sp_pkl_dict_end(p);
}

static void nibabel_stuff(sp_pkl *p, const sp_volume_info *vi)
{
    key(p, "nibabel_stuff");
    sp_pkl_dict(p);
    key(p, "original_affine");
    sp_pkl_list(p);
    for (int r = 0; r < 4; r++) {
        sp_pkl_list(p);
        for (int c = 0; c < 4; c++)
            sp_pkl_float(p, r < 3 ? vi->affine[r][c] : c == 3);
        sp_pkl_list_end(p);
    }
    sp_pkl_list_end(p);
    sp_pkl_dict_end(p);
}

sp_status sp_ct_result_write_nnunet_pkl(const sp_ct_result *r, const sp_volume *input, const char *path)
{
    sp_volume_info vi;
    int64_t lo[3], hi[3], full[3], cut[3];
    sp_volume_get_info(input, &vi);
    sp_ct_result_crop_box(r, lo, hi);
    for (int a = 0; a < 3; a++) {   /* nnU-Net's order: k, j, i */
        full[a] = vi.dim[2 - a];
        cut[a] = hi[2 - a] - lo[2 - a];
    }
    sp_pkl p;
    sp_pkl_begin(&p);
    sp_pkl_dict(&p);
    sitk_stuff(&p, &vi);
    nibabel_stuff(&p, &vi);
    key(&p, "spacing");
    sp_pkl_list(&p);
    for (int a = 2; a >= 0; a--)
        sp_pkl_float(&p, vi.spacing[a]);
    sp_pkl_list_end(&p);
    key(&p, "shape_before_cropping");
    ints3(&p, full);
    key(&p, "bbox_used_for_cropping");
    sp_pkl_list(&p);
    for (int a = 2; a >= 0; a--) {
        sp_pkl_list(&p);
        sp_pkl_int(&p, lo[a]);
        sp_pkl_int(&p, hi[a]);
        sp_pkl_list_end(&p);
    }
    sp_pkl_list_end(&p);
    key(&p, "shape_after_cropping_and_before_resampling");
    ints3(&p, cut);
    sp_pkl_dict_end(&p);
    return sp_pkl_write(&p, path);
}
