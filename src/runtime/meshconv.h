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
/* The same on rows with margins: in [cin][D][H][in_pitch], voxel x of a
 * row at in_margin + x, in_margin >= dil zeros on both sides of each row
 * and sp_meshconv_slack(dil) readable floats after the last row (their
 * values only reach outputs beyond W, which are not stored); out
 * [cout][D][H][out_pitch] written at out_margin + x, x < W only (its
 * margins are left as they are). */
sp_status sp_meshconv3d_rows(const float *in, int in_margin, int in_pitch, int cin, int D, int H, int W,
                             const float *w, const float *bias, int cout, int dil, int relu, sp_pool *pool,
                             float *out, int out_margin, int out_pitch);
int sp_meshconv_slack(int dil);
/* Which vector body sp_meshconv3d uses here: "avx512", "avx2" or "generic". */
const char *sp_meshconv_isa(void);
#endif
