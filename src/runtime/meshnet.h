/* meshnet.h — brainchop's MeshNet run natively on the CPU (meshnet.c). */
#ifndef SP_MESHNET_H
#define SP_MESHNET_H
#include "../core/core.h"

enum { MN_NONE = 0, MN_RELU = 1, MN_ELU = 2, MN_GELU = 3 };
typedef struct sp_meshnet sp_meshnet;

/* Loads meshnet.bin (format in meshnet.c); SP_ERR_MODEL with a message when
 * it is not a MeshNet's weights, SP_ERR_IO when it cannot be read. */
sp_status sp_meshnet_load(const char *path, sp_meshnet **out);
void sp_meshnet_free(sp_meshnet *net);
/* Classes of the last layer. */
int sp_meshnet_classes(const sp_meshnet *net);
/* The network on vol (vdim[0] fastest, as sp_window_run takes it; network
 * dim d <- volume axis axes[d], the manifest's "axes"): labels (the argmax,
 * the first class on ties; volume order, vdim voxels) and, when logits is
 * not NULL, the logits [classes][network dims] in network order. Threads:
 * pool's. SP_ERR_NOMEM when the two activations (channels x voxels floats
 * each) cannot be allocated; SP_ERR_CANCELLED when *cancel (may be NULL)
 * turns nonzero, checked between layers. progress (may be NULL) is called
 * with ("inference", layers done, layers). */
typedef struct {
    const volatile int *cancel;
    void (*progress)(const char *stage, int done, int total, void *user);
    void *progress_user;
} sp_meshnet_ctl;
sp_status sp_meshnet_run(const sp_meshnet *net, const float *vol, const int64_t vdim[3], const int axes[3],
                         sp_pool *pool, const sp_meshnet_ctl *ctl, uint16_t *labels, float *logits);
#endif
