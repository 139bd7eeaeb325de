/* pickle.h — a Python pickle (protocol 2) of plain values, written from C
 * (src/io/pickle.c). */
#ifndef SP_IO_PICKLE_H
#define SP_IO_PICKLE_H

#include "../core/core.h"

#include <stddef.h>
#include <stdint.h>

/* One pickle built in memory: sp_pkl_begin, values, sp_pkl_write. A
 * container opens, takes its items (a dict: key, value, key, value ...)
 * and closes; nothing is checked beyond memory (bad set on failure). */
typedef struct sp_pkl {
    unsigned char *buf;
    size_t len, cap;
    int bad;
} sp_pkl;

void sp_pkl_begin(sp_pkl *p);
void sp_pkl_dict(sp_pkl *p);
void sp_pkl_dict_end(sp_pkl *p);
void sp_pkl_list(sp_pkl *p);
void sp_pkl_list_end(sp_pkl *p);
void sp_pkl_tuple(sp_pkl *p);
void sp_pkl_tuple_end(sp_pkl *p);
void sp_pkl_int(sp_pkl *p, int64_t v);
void sp_pkl_float(sp_pkl *p, double v);
void sp_pkl_str(sp_pkl *p, const char *s);
void sp_pkl_bool(sp_pkl *p, int v);
void sp_pkl_none(sp_pkl *p);
/* STOP, then the bytes to `path` (removed on failure); frees the buffer */
sp_status sp_pkl_write(sp_pkl *p, const char *path);
void sp_pkl_free(sp_pkl *p);

#endif
