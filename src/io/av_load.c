/* av_load.c — FFmpeg's functions looked up when video first needs them
 * (why: av_load.h). Built only with FFmpeg (not with NO_FFMPEG=1). */
#ifndef SP_NO_FFMPEG
#define SP_AV_LOAD_IMPL
#include "av_load.h"
#include "../core/core.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

struct sp_av_api sp_av;

#define SP_AV_SONAME(lib, major) "lib" #lib ".so." AV_STRINGIFY(major)
/* libavformat brings libavcodec and libavutil with it; dlsym on a handle
 * searches the library and what it depends on */
static const char *const av_libs[] = {
    SP_AV_SONAME(avformat, LIBAVFORMAT_VERSION_MAJOR), SP_AV_SONAME(avcodec, LIBAVCODEC_VERSION_MAJOR),
    SP_AV_SONAME(swscale, LIBSWSCALE_VERSION_MAJOR), SP_AV_SONAME(avutil, LIBAVUTIL_VERSION_MAJOR)};
#define N_AV_LIBS (int)(sizeof av_libs / sizeof av_libs[0])

static char av_err[320];

static void *av_sym(void *const *h, const char *name)
{
    for (int i = 0; i < N_AV_LIBS; i++) {
        void *f = dlsym(h[i], name);
        if (f)
            return f;
    }
    return NULL;
}

static void av_load_once(void)
{
    void *h[N_AV_LIBS];
    for (int i = 0; i < N_AV_LIBS; i++)
        if (!(h[i] = dlopen(av_libs[i], RTLD_NOW | RTLD_LOCAL))) {
            snprintf(av_err, sizeof av_err, "video files need FFmpeg's %s, which cannot be opened (%s); install "
                     "FFmpeg's libraries or give a folder of PNG/JPEG frames", av_libs[i], dlerror());
            return;
        }
#define SP_AV_LOOKUP(f)                                                                                        \
    if (!(*(void **)&sp_av.f = av_sym(h, #f))) {                                                                \
        snprintf(av_err, sizeof av_err, "FFmpeg's libraries lack %s (segpipe was built against %s)", #f,      \
                 av_libs[0]);                                                                                   \
        return;                                                                                                 \
    }
    SP_AV_FUNCS(SP_AV_LOOKUP)
#undef SP_AV_LOOKUP
}

sp_status sp_av_load(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, av_load_once);
    return av_err[0] ? sp_fail(SP_ERR_INPUT, "%s", av_err) : SP_OK;
}
#endif
