/* meshconv.h — direct dilated 3x3x3 convolution (brainchop's MeshNet layers). */
#ifndef SP_MESHCONV_H
#define SP_MESHCONV_H
#include "../core/core.h"

/* out[co] = bias[co] + sum over ci and the 27 taps of w * in shifted by
 * (k - 1) * dil, zero outside (padding == dilation, same size out);
 * relu != 0 applies max(0, .) to the result. in [cin][D][H][W], w
 * [cout][cin][3][3][3], bias [cout] or NULL, out [cout][D][H][W] (not
 * overlapping in). Output planes are split over pool's threads. SP_ERR_USAGE on bad sizes, SP_ERR_NOMEM. */
sp_status sp_meshconv3d(const float *in, int cin, int D, int H, int W, const float *w, const float *bias,
                        int cout, int dil, int relu, sp_pool *pool, float *out);
/* Which vector body sp_meshconv3d uses here: "avx512", "avx2" or "generic". */
const char *sp_meshconv_isa(void);
#endif
