/* calib.h — activation ranges for INT8 calibration (calib.c). */
#ifndef SP_CALIB_H
#define SP_CALIB_H
#include "../core/core.h"

typedef struct sp_calib sp_calib;
/* A recorder for a model's n_out outputs when SEGPIPE_CALIBRATE names a
 * file and the model has extra outputs; NULL otherwise. */
sp_calib *sp_calib_open(int n_out, const char *const *names);
int sp_calib_outputs(const sp_calib *c);
/* Widen output i's range by the n float32 values x. Thread-safe. */
void sp_calib_update(sp_calib *c, int i, const float *x, size_t n);
/* Append the ranges to the file and free c. */
void sp_calib_close(sp_calib *c);
#endif
