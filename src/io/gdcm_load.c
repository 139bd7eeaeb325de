/* gdcm_load.c — GDCM's series reader (dicom.cc, built as
 * libsegpipe_gdcm.so) opened the first time a DICOM series is read; why:
 * dicom.h. Opened by the parent before the reader process is forked, so
 * the child never runs the dynamic loader. */
#ifndef SP_NO_DICOM
#include "dicom.h"
#include "../core/core.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* linked into the program itself (the fuzzers compile dicom.cc in): use it */
#pragma weak sp_dicom_load
#pragma weak sp_dicom_reader_limits
#pragma weak sp_dicom_notes

#define GDCM_SO "libsegpipe_gdcm.so"

static sp_dicom_reader g_reader;
static char g_err[PATH_MAX + 160];

static void *open_beside_module(void)
{
    static const char *const rel[] = {GDCM_SO, "segpipe/" GDCM_SO, "../lib/segpipe/" GDCM_SO};
    int found;
    void *h = sp_module_dlopen(rel, sizeof rel / sizeof *rel, &found);
    if (!h && found)   /* there but broken (another build, a missing GDCM library): say so */
        snprintf(g_err, sizeof g_err, "DICOM: cannot open the reader " GDCM_SO " (%s)",
                 strstr(dlerror(), "cannot open shared object") ? "a library it needs is missing" : "damaged");
    else if (!h)
        snprintf(g_err, sizeof g_err, "DICOM: the reader " GDCM_SO " is not installed beside segpipe's library "
                 "(make install puts it in PREFIX/lib/segpipe/)");
    return h;
}

static void reader_once(void)
{
    if (sp_dicom_load && sp_dicom_reader_limits && sp_dicom_notes) {
        g_reader = (sp_dicom_reader){sp_dicom_load, sp_dicom_reader_limits, sp_dicom_notes};
        return;
    }
    void *h = open_beside_module();
    if (!h)
        return;
    *(void **)&g_reader.load = dlsym(h, "sp_dicom_load");
    *(void **)&g_reader.limits = dlsym(h, "sp_dicom_reader_limits");
    *(void **)&g_reader.notes = dlsym(h, "sp_dicom_notes");
    if (!g_reader.load || !g_reader.limits || !g_reader.notes) {
        memset(&g_reader, 0, sizeof g_reader);
        snprintf(g_err, sizeof g_err, "DICOM: " GDCM_SO " is from another build (a function is missing)");
    }
}

const sp_dicom_reader *sp_dicom_reader_open(char *msg, size_t cap)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, reader_once);
    if (g_reader.load)
        return &g_reader;
    snprintf(msg, cap, "%s", g_err);
    return NULL;
}
#endif
