/* The pickle writer (src/io/pickle.c): every kind of value it writes, byte
 * for byte. The expected bytes were checked with Python 3's pickle.loads:
 * {'a': [1, -2, 2**40, -2**40], 'b': (1.5, True, False, None), 'é': {},
 *  'e': [], 't': ()} */
#include "test.h"
#include "io/pickle.h"

#include <stdio.h>
#include <unistd.h>

static const unsigned char want[] =
    "\x80\x02\x7d\x28\x58\x01\x00\x00\x00\x61\x5d\x28\x4a\x01\x00\x00\x00\x4a\xfe\xff\xff\xff\x8a\x08\x00\x00"
    "\x00\x00\x00\x01\x00\x00\x8a\x08\x00\x00\x00\x00\x00\xff\xff\xff\x65\x58\x01\x00\x00\x00\x62\x28\x47\x3f"
    "\xf8\x00\x00\x00\x00\x00\x00\x88\x89\x4e\x74\x58\x02\x00\x00\x00\xc3\xa9\x7d\x28\x75\x58\x01\x00\x00\x00"
    "\x65\x5d\x28\x65\x58\x01\x00\x00\x00\x74\x28\x74\x75\x2e";

void test_pickle_bytes(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/segpipe-pkl-%d.pkl", (int)getpid());
    sp_pkl p;
    sp_pkl_begin(&p);
    sp_pkl_dict(&p);
    sp_pkl_str(&p, "a");
    sp_pkl_list(&p);
    sp_pkl_int(&p, 1);
    sp_pkl_int(&p, -2);
    sp_pkl_int(&p, (int64_t)1 << 40);
    sp_pkl_int(&p, -((int64_t)1 << 40));
    sp_pkl_list_end(&p);
    sp_pkl_str(&p, "b");
    sp_pkl_tuple(&p);
    sp_pkl_float(&p, 1.5);
    sp_pkl_bool(&p, 1);
    sp_pkl_bool(&p, 0);
    sp_pkl_none(&p);
    sp_pkl_tuple_end(&p);
    sp_pkl_str(&p, "\xc3\xa9");
    sp_pkl_dict(&p);
    sp_pkl_dict_end(&p);
    sp_pkl_str(&p, "e");
    sp_pkl_list(&p);
    sp_pkl_list_end(&p);
    sp_pkl_str(&p, "t");
    sp_pkl_tuple(&p);
    sp_pkl_tuple_end(&p);
    sp_pkl_dict_end(&p);
    CHECK(sp_pkl_write(&p, path) == SP_OK);
    unsigned char got[256];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(got, 1, sizeof got, f) : 0;
    if (f)
        fclose(f);
    remove(path);
    CHECK(n == sizeof want - 1);
    CHECK(n == sizeof want - 1 && !memcmp(got, want, n));
    /* an unwritable path: an I/O error, the buffer freed */
    sp_pkl_begin(&p);
    sp_pkl_none(&p);
    CHECK(sp_pkl_write(&p, "/nonexistent-dir/x.pkl") == SP_ERR_IO);
    CHECK(p.buf == NULL);
}
