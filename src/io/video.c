/*
 * video.c — frame sources (FFmpeg decode or a folder of PNG/JPEG frames) and
 * sinks (FFmpeg encode or a folder of numbered frames). See video.h.
 *
 * Decoding runs with AV_EF_EXPLODE so a damaged stream is an error rather
 * than frames silently concealed: segpipe's outputs must be trustworthy.
 */
#include "video.h"
#include "encode.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <stdarg.h>
#ifndef SP_NO_FFMPEG
#include "av_load.h"    /* FFmpeg, opened on first use */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SP_NO_FFMPEG
/* FFmpeg's own log never reaches stderr (its lines would interleave with
 * segpipe's): its last error is kept and quoted in segpipe's message when
 * a stream turns out damaged. SEGPIPE_FFMPEG_LOG=N prints it at level N. */
static pthread_mutex_t av_msg_mu = PTHREAD_MUTEX_INITIALIZER;
static char av_msg[256];

static void av_log_cb(void *avcl, int level, const char *fmt, va_list vl)
{
    const char *e = getenv("SEGPIPE_FFMPEG_LOG");
    if (e && *e) {
        av_log_default_callback(avcl, level, fmt, vl);
        return;
    }
    if (level > AV_LOG_ERROR)
        return;
    pthread_mutex_lock(&av_msg_mu);
    vsnprintf(av_msg, sizeof av_msg, fmt, vl);
    size_t n = strlen(av_msg);
    while (n && (av_msg[n - 1] == '\n' || av_msg[n - 1] == '.'))
        av_msg[--n] = 0;
    pthread_mutex_unlock(&av_msg_mu);
}

static void av_last_error(char *buf, size_t n)
{
    pthread_mutex_lock(&av_msg_mu);
    snprintf(buf, n, "%s", av_msg);
    pthread_mutex_unlock(&av_msg_mu);
}

static void av_quiet_init(void)
{
    const char *e = getenv("SEGPIPE_FFMPEG_LOG");
    av_log_set_level(e && *e ? atoi(e) : AV_LOG_ERROR);
    av_log_set_callback(av_log_cb);
}

/* FFmpeg loaded (av_load.h) and its own log set to errors only, kept (see
 * above); called before a video file is opened for reading or writing. */
static sp_status av_ready(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    sp_status st = sp_av_load();
    if (!st)
        pthread_once(&once, av_quiet_init);
    return st;
}

static const char *averr(int e, char *buf, size_t n)
{
    av_strerror(e, buf, n);
    return buf;
}

#endif

/* ------------------------------------------------------------------ source */

struct sp_frame_src {
    /* video file (FFmpeg types by tag: the build may have no FFmpeg) */
    struct AVFormatContext *fmt;
    struct AVCodecContext *dec;
    struct SwsContext *sws;
    struct AVPacket *pkt;
    struct AVFrame *frm;
    int stream, draining, done;
    double last_t, fps;       /* time of the last frame decoded (s), frame rate */
    /* folder */
    char **files;
    int nfiles, next;
    /* both */
    int width, height;
    char path[1024];
};

static int is_frame_name(const char *n)
{
    const char *d = strrchr(n, '.');
    return n[0] != '.' && d && (!strcasecmp(d, ".png") || !strcasecmp(d, ".jpg") || !strcasecmp(d, ".jpeg"));
}

static int name_cmp(const void *a, const void *b)
{
    return strverscmp(*(char *const *)a, *(char *const *)b);
}

static sp_status folder_open(sp_frame_src *s, const char *path, sp_src_info *info)
{
    DIR *d = opendir(path);
    if (!d)
        return sp_fail(SP_ERR_INPUT, "%s: cannot open folder: %s", path, strerror(errno));
    struct dirent *e;
    int cap = 0;
    while ((e = readdir(d))) {
        if (!is_frame_name(e->d_name))
            continue;
        if (s->nfiles == cap) {
            cap = cap ? cap * 2 : 256;
            char **nf = realloc(s->files, (size_t)cap * sizeof *nf);
            if (!nf) {
                closedir(d);
                return sp_fail(SP_ERR_NOMEM, "out of memory");
            }
            s->files = nf;
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        if (!(s->files[s->nfiles] = malloc(len))) {
            closedir(d);
            return sp_fail(SP_ERR_NOMEM, "out of memory");
        }
        snprintf(s->files[s->nfiles++], len, "%s/%s", path, e->d_name);
    }
    closedir(d);
    if (!s->nfiles)
        return sp_fail(SP_ERR_INPUT, "%s: no PNG or JPEG frames in this folder", path);
    qsort(s->files, (size_t)s->nfiles, sizeof *s->files, name_cmp);
    sp_image *im;
    sp_status st = sp_image_read(s->files[0], NULL, &im);
    if (st)
        return st;
    s->width = im->width;
    s->height = im->height;
    sp_image_free(im);
    info->fps = 0;
    info->frames = s->nfiles;
    snprintf(info->desc, sizeof info->desc, "folder, %d PNG/JPEG frames %dx%d", s->nfiles, s->width, s->height);
    return SP_OK;
}

#ifdef SP_NO_FFMPEG
static sp_status file_open(sp_frame_src *s, const char *path, int threads, sp_src_info *info)
{
    return sp_fail(SP_ERR_INPUT, "%s: this segpipe was built without FFmpeg (make NO_FFMPEG=1): give a folder of "
                                 "PNG/JPEG frames", path);
}
#else
static sp_status file_open(sp_frame_src *s, const char *path, int threads, sp_src_info *info)
{
    char eb[128];
    sp_status ready = av_ready();
    if (ready)
        return ready;
    int r = avformat_open_input(&s->fmt, path, NULL, NULL);
    if (r < 0)
        return sp_fail(SP_ERR_INPUT, "%s: not a readable video (%s)", path, averr(r, eb, sizeof eb));
    if ((r = avformat_find_stream_info(s->fmt, NULL)) < 0)
        return sp_fail(SP_ERR_INPUT, "%s: cannot read stream information (%s)", path, averr(r, eb, sizeof eb));
    const AVCodec *codec = NULL;
    r = av_find_best_stream(s->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (r == AVERROR_STREAM_NOT_FOUND)
        return sp_fail(SP_ERR_INPUT, "%s: no video stream", path);
    if (r == AVERROR_DECODER_NOT_FOUND || !codec) {
        AVStream *vs = NULL;
        for (unsigned i = 0; i < s->fmt->nb_streams && !vs; i++)
            if (s->fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO)
                vs = s->fmt->streams[i];
        return sp_fail(SP_ERR_INPUT, "%s: unsupported video codec '%s' (no decoder in this FFmpeg)", path,
                       vs ? avcodec_get_name(vs->codecpar->codec_id) : "?");
    }
    if (r < 0)
        return sp_fail(SP_ERR_INPUT, "%s: no usable video stream (%s)", path, averr(r, eb, sizeof eb));
    s->stream = r;
    AVStream *st = s->fmt->streams[r];
    if (!(s->dec = avcodec_alloc_context3(codec)))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    if ((r = avcodec_parameters_to_context(s->dec, st->codecpar)) < 0)
        return sp_fail(SP_ERR_INPUT, "%s: bad codec parameters (%s)", path, averr(r, eb, sizeof eb));
    s->dec->thread_count = threads > 0 ? threads : 0;
    s->dec->err_recognition |= AV_EF_EXPLODE | AV_EF_CRCCHECK;
    if ((r = avcodec_open2(s->dec, codec, NULL)) < 0)
        return sp_fail(SP_ERR_INPUT, "%s: cannot open the %s decoder (%s)", path, codec->name, averr(r, eb, sizeof eb));
    s->width = s->dec->width;
    s->height = s->dec->height;
    if (s->width <= 0 || s->height <= 0)
        return sp_fail(SP_ERR_INPUT, "%s: video has no frame size", path);
    if ((uint64_t)s->width * (uint64_t)s->height > (uint64_t)1 << 28)
        return sp_fail(SP_ERR_INPUT, "%s: frames of %dx%d are too large", path, s->width, s->height);
    if (!(s->pkt = av_packet_alloc()) || !(s->frm = av_frame_alloc()))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    AVRational fr = av_guess_frame_rate(s->fmt, st, NULL);
    info->fps = fr.num > 0 && fr.den > 0 ? av_q2d(fr) : 25.0;
    info->frames = st->nb_frames > 0 ? st->nb_frames : -1;
    s->fps = info->fps;
    s->last_t = -1;
    snprintf(info->desc, sizeof info->desc, "%s %dx%d %.3g fps%s", codec->name, s->width, s->height, info->fps,
             info->frames > 0 ? "" : ", frame count unknown");
    return SP_OK;
}
#endif

void sp_src_close(sp_frame_src *s)
{
    if (!s)
        return;
#ifndef SP_NO_FFMPEG
    if (s->fmt || s->dec || s->frm || s->pkt || s->sws) {   /* only then is FFmpeg loaded */
        sws_freeContext(s->sws);
        av_frame_free(&s->frm);
        av_packet_free(&s->pkt);
        avcodec_free_context(&s->dec);
        avformat_close_input(&s->fmt);
    }
#endif
    for (int i = 0; i < s->nfiles; i++)
        free(s->files[i]);
    free(s->files);
    free(s);
}

sp_status sp_src_open(const char *path, int threads, sp_frame_src **out, sp_src_info *info)
{
    *out = NULL;
    memset(info, 0, sizeof *info);
    sp_frame_src *s = calloc(1, sizeof *s);
    if (!s)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    snprintf(s->path, sizeof s->path, "%s", path);
    struct stat sb;
    sp_status st;
    if (stat(path, &sb) != 0)   /* cannot open: an I/O error, as for every command (exit 6) */
        st = sp_fail(SP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    else if (S_ISDIR(sb.st_mode))
        st = folder_open(s, path, info);
    else
        st = file_open(s, path, threads, info);
    if (st) {
        sp_src_close(s);
        return st;
    }
    info->width = s->width;
    info->height = s->height;
    *out = s;
    return SP_OK;
}

#ifndef SP_NO_FFMPEG
/* At the end of the stream: the frames must reach the duration the
 * container declares (a truncated Matroska/WebM ends early with exit 0 from
 * FFmpeg and only a log line). Two frames and 5% of slack for rounding. */
static sp_status check_complete(sp_frame_src *s)
{
    AVStream *st = s->fmt->streams[s->stream];
    double dur = st->duration > 0 ? st->duration * av_q2d(st->time_base)
               : s->fmt->duration > 0 ? (double)s->fmt->duration / AV_TIME_BASE : 0;
    double frame = s->fps > 0 ? 1.0 / s->fps : 0.04;
    if (dur <= 0 || s->last_t < 0 || s->last_t + 2 * frame >= 0.95 * dur)
        return SP_OK;
    char msg[256];
    av_last_error(msg, sizeof msg);
    return sp_fail(SP_ERR_INPUT, "%s: the video stream ends at %.2f s but the file says %.2f s: truncated or "
                   "damaged%s%s%s", s->path, s->last_t + frame, dur, msg[0] ? " (FFmpeg: " : "", msg,
                   msg[0] ? ")" : "");
}

static sp_status frame_to_rgb(sp_frame_src *s, uint8_t *rgb)
{
    AVFrame *f = s->frm;
    if (f->width != s->width || f->height != s->height)
        return sp_fail(SP_ERR_INPUT, "%s: frame size changes mid-stream (%dx%d, then %dx%d); not supported", s->path,
                       s->width, s->height, f->width, f->height);
    s->sws = sws_getCachedContext(s->sws, f->width, f->height, f->format, s->width, s->height, AV_PIX_FMT_RGB24,
                                  SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, NULL, NULL, NULL);
    if (!s->sws)
        return sp_fail(SP_ERR_INPUT, "%s: cannot convert pixel format %s to RGB", s->path,
                       av_get_pix_fmt_name(f->format) ? av_get_pix_fmt_name(f->format) : "?");
    uint8_t *dst[4] = {rgb, NULL, NULL, NULL};
    int ls[4] = {s->width * 3, 0, 0, 0};
    sws_scale(s->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst, ls);
    return SP_OK;
}

#endif

sp_status sp_src_read(sp_frame_src *s, uint8_t *rgb, int *eof)
{
    *eof = 0;
    if (s->files) {
        if (s->next >= s->nfiles) {
            *eof = 1;
            return SP_OK;
        }
        sp_image *im;
        const char *f = s->files[s->next++];
        sp_status st = sp_image_read(f, NULL, &im);
        if (st)
            return st;
        if (im->width != s->width || im->height != s->height) {
            st = sp_fail(SP_ERR_INPUT, "%s: frame is %dx%d, the first frame is %dx%d; all frames must have one size",
                         f, im->width, im->height, s->width, s->height);
        } else {
            memcpy(rgb, im->rgb, (size_t)s->width * (size_t)s->height * 3);
        }
        sp_image_free(im);
        return st;
    }
#ifdef SP_NO_FFMPEG
    return sp_fail(SP_ERR_INPUT, "%s: built without FFmpeg", s->path);
#else
    char eb[128];
    for (;;) {
        if (s->done) {
            *eof = 1;
            return SP_OK;
        }
        int r = avcodec_receive_frame(s->dec, s->frm);
        if (r == 0) {
            int64_t ts = s->frm->best_effort_timestamp;
            if (ts != AV_NOPTS_VALUE)
                s->last_t = ts * av_q2d(s->fmt->streams[s->stream]->time_base);
            sp_status st = frame_to_rgb(s, rgb);
            av_frame_unref(s->frm);
            return st;
        }
        if (r == AVERROR_EOF) {
            s->done = 1;
            sp_status st = check_complete(s);
            if (st)
                return st;
            continue;
        }
        if (r != AVERROR(EAGAIN))
            return sp_fail(SP_ERR_INPUT, "%s: corrupt video stream: %s", s->path, averr(r, eb, sizeof eb));
        if (s->draining)
            return sp_fail(SP_ERR_INPUT, "%s: decoder stalled at the end of the stream", s->path);
        r = av_read_frame(s->fmt, s->pkt);
        if (r == AVERROR_EOF) {
            s->draining = 1;
            avcodec_send_packet(s->dec, NULL);
            continue;
        }
        if (r < 0)
            return sp_fail(SP_ERR_INPUT, "%s: cannot read the stream: %s", s->path, averr(r, eb, sizeof eb));
        if (s->pkt->stream_index == s->stream) {
            if (s->pkt->flags & AV_PKT_FLAG_CORRUPT) {
                av_packet_unref(s->pkt);
                return sp_fail(SP_ERR_INPUT, "%s: corrupt packet in the video stream", s->path);
            }
            r = avcodec_send_packet(s->dec, s->pkt);
            av_packet_unref(s->pkt);
            if (r < 0 && r != AVERROR(EAGAIN))
                return sp_fail(SP_ERR_INPUT, "%s: corrupt video stream: %s", s->path, averr(r, eb, sizeof eb));
        } else {
            av_packet_unref(s->pkt);
        }
    }
#endif
}

/* -------------------------------------------------------------------- sink */

struct sp_frame_sink {
    char final[1024], part[1100];
    int width, height, is_dir, jpeg, quality;
    int64_t n;
    /* video */
    struct AVFormatContext *oc;
    struct AVCodecContext *enc;
    struct AVStream *vs;
    struct SwsContext *sws;
    struct AVFrame *frm;
    struct AVPacket *pkt;
    int header_written;
};

static int video_ext(const char *p)
{
    const char *d = strrchr(p, '.');
    const char *s = strrchr(p, '/');
    if (!d || (s && d < s))
        return 0;
    static const char *ext[] = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".nut"};
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (!strcasecmp(d, ext[i]))
            return 1;
    return 0;
}

sp_status sp_sink_check(const char *path, const char *codec)
{
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (codec || video_ext(path) || !dot || (slash && dot < slash) || !strcasecmp(dot, ".jpg") ||
        !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"))
        return SP_OK;
    return sp_fail(SP_ERR_USAGE, "%s: cannot write '%s' output: give a video (.mp4 .mkv .mov .m4v .avi .webm .nut), "
                   "or a folder of frames (no extension, or .png/.jpg for PNG/JPEG frames)", path, dot);
}

static int dir_nonempty(const char *p)
{
    DIR *d = opendir(p);
    if (!d)
        return 0;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n > 0;
}

static void rm_tree(const char *p)
{
    DIR *d = opendir(p);
    if (d) {
        struct dirent *e;
        char f[1400];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(f, sizeof f, "%s/%s", p, e->d_name);
                unlink(f);
            }
        closedir(d);
    }
    rmdir(p);
}

static sp_status write_trailer_and_close(sp_frame_sink *s);

#ifndef SP_NO_FFMPEG
static sp_status encode(sp_frame_sink *s, AVFrame *f)
{
    char eb[128];
    int r = avcodec_send_frame(s->enc, f);
    if (r < 0)
        return sp_fail(SP_ERR_RUNTIME, "%s: encoder refused a frame: %s", s->final, averr(r, eb, sizeof eb));
    for (;;) {
        r = avcodec_receive_packet(s->enc, s->pkt);
        if (r == AVERROR(EAGAIN) || r == AVERROR_EOF)
            return SP_OK;
        if (r < 0)
            return sp_fail(SP_ERR_RUNTIME, "%s: encoding failed: %s", s->final, averr(r, eb, sizeof eb));
        if (s->pkt->duration <= 0)
            s->pkt->duration = 1;     /* one frame: else MP4 trims the last frame off its edit list */
        av_packet_rescale_ts(s->pkt, s->enc->time_base, s->vs->time_base);
        s->pkt->stream_index = s->vs->index;
        r = av_interleaved_write_frame(s->oc, s->pkt);
        if (r < 0)
            return sp_fail(SP_ERR_IO, "%s: write failed: %s", s->part, averr(r, eb, sizeof eb));
    }
}

static enum AVPixelFormat pick_pix_fmt(const AVCodec *c, int w, int h)
{
    const enum AVPixelFormat *l = c->pix_fmts;
    if (!l)
        return AV_PIX_FMT_YUV420P;
    if (c->id == AV_CODEC_ID_H264 || c->id == AV_CODEC_ID_MPEG4 || c->id == AV_CODEC_ID_VP9 ||
        c->id == AV_CODEC_ID_VP8) {
        /* what players expect; 4:4:4 only where 4:2:0 cannot hold odd sizes */
        enum AVPixelFormat want = (w % 2 || h % 2) ? AV_PIX_FMT_YUV444P : AV_PIX_FMT_YUV420P;
        for (const enum AVPixelFormat *p = l; *p != AV_PIX_FMT_NONE; p++)
            if (*p == want)
                return want;
    }
    int loss = 0;
    return avcodec_find_best_pix_fmt_of_list(l, AV_PIX_FMT_RGB24, 0, &loss);
}

static sp_status video_sink_open(sp_frame_sink *s, const sp_sink_params *p)
{
    char eb[128];
    sp_status st = av_ready();
    if (st)
        return st;
    int r = avformat_alloc_output_context2(&s->oc, NULL, NULL, s->final);
    if (r < 0 || !s->oc)
        return sp_fail(SP_ERR_USAGE, "%s: no FFmpeg muxer for this extension", s->final);
    const AVCodec *c = NULL;
    if (p->codec) {
        if (!(c = avcodec_find_encoder_by_name(p->codec)))
            return sp_fail(SP_ERR_USAGE, "no encoder named '%s' in this FFmpeg", p->codec);
    } else {
        const char *d = strrchr(s->final, '.');
        if (!strcasecmp(d, ".avi"))
            c = avcodec_find_encoder(AV_CODEC_ID_MJPEG);
        else if (!strcasecmp(d, ".webm"))
            c = avcodec_find_encoder(AV_CODEC_ID_VP9);
        else if (!strcasecmp(d, ".nut"))
            c = avcodec_find_encoder(AV_CODEC_ID_FFV1);
        else if (!(c = avcodec_find_encoder_by_name("libx264")))
            c = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
        if (!c)
            return sp_fail(SP_ERR_USAGE, "%s: no default encoder available; pass --codec", s->final);
    }
    if (c->type != AVMEDIA_TYPE_VIDEO)
        return sp_fail(SP_ERR_USAGE, "'%s' is not a video encoder", c->name);
    if (avformat_query_codec(s->oc->oformat, c->id, FF_COMPLIANCE_NORMAL) != 1)
        return sp_fail(SP_ERR_USAGE, "%s: the %s container cannot hold %s video", s->final, s->oc->oformat->name,
                       c->name);
    if (!(s->vs = avformat_new_stream(s->oc, NULL)) || !(s->enc = avcodec_alloc_context3(c)))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    AVRational fr = av_d2q(p->fps > 0 ? p->fps : 25.0, 100000);
    s->enc->width = s->width;
    s->enc->height = s->height;
    s->enc->time_base = av_inv_q(fr);
    s->enc->framerate = fr;
    s->enc->pix_fmt = pick_pix_fmt(c, s->width, s->height);
    s->enc->thread_count = p->threads > 0 ? p->threads : 1;
    if (c->id == AV_CODEC_ID_MJPEG) {
        s->enc->color_range = AVCOL_RANGE_JPEG;
        s->enc->flags |= AV_CODEC_FLAG_QSCALE;
        s->enc->global_quality = FF_QP2LAMBDA * (p->quality > 0 ? 2 + (100 - p->quality) / 10 : 3);
    }
    if (s->oc->oformat->flags & AVFMT_GLOBALHEADER)
        s->enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    if (!strcmp(c->name, "libx264"))
        av_opt_set(s->enc->priv_data, "preset", "veryfast", 0);
    if ((r = avcodec_open2(s->enc, c, NULL)) < 0)
        return sp_fail(SP_ERR_USAGE, "%s: cannot open the %s encoder for %dx%d (%s)", s->final, c->name, s->width,
                       s->height, averr(r, eb, sizeof eb));
    if ((r = avcodec_parameters_from_context(s->vs->codecpar, s->enc)) < 0)
        return sp_fail(SP_ERR_RUNTIME, "encoder parameters: %s", averr(r, eb, sizeof eb));
    s->vs->time_base = s->enc->time_base;
    if ((r = avio_open(&s->oc->pb, s->part, AVIO_FLAG_WRITE)) < 0)
        return sp_fail(SP_ERR_IO, "%s: cannot create: %s", s->part, averr(r, eb, sizeof eb));
    if ((r = avformat_write_header(s->oc, NULL)) < 0)
        return sp_fail(SP_ERR_IO, "%s: cannot write the header: %s", s->part, averr(r, eb, sizeof eb));
    s->header_written = 1;
    if (!(s->frm = av_frame_alloc()) || !(s->pkt = av_packet_alloc()))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    s->frm->format = s->enc->pix_fmt;
    s->frm->width = s->width;
    s->frm->height = s->height;
    if (av_frame_get_buffer(s->frm, 0) < 0)
        return sp_fail(SP_ERR_NOMEM, "out of memory for an encoder frame");
    s->sws = sws_getContext(s->width, s->height, AV_PIX_FMT_RGB24, s->width, s->height, s->enc->pix_fmt,
                            SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, NULL, NULL, NULL);
    if (!s->sws)
        return sp_fail(SP_ERR_RUNTIME, "cannot convert RGB to %s", av_get_pix_fmt_name(s->enc->pix_fmt));
    return SP_OK;
}

#else
static sp_status video_sink_open(sp_frame_sink *s, const sp_sink_params *p)
{
    return sp_fail(SP_ERR_USAGE, "%s: this segpipe was built without FFmpeg (make NO_FFMPEG=1): write a folder of "
                                 "frames", s->final);
}
#endif

static void sink_free(sp_frame_sink *s)
{
#ifndef SP_NO_FFMPEG
    if (s->oc || s->enc || s->frm || s->pkt || s->sws) {   /* only then is FFmpeg loaded */
        sws_freeContext(s->sws);
        av_frame_free(&s->frm);
        av_packet_free(&s->pkt);
        avcodec_free_context(&s->enc);
        if (s->oc) {
            if (s->oc->pb)
                avio_closep(&s->oc->pb);
            avformat_free_context(s->oc);
        }
    }
#endif
    free(s);
}

void sp_sink_abort(sp_frame_sink *s)
{
    if (!s)
        return;
    if (s->is_dir) {
        rm_tree(s->part);
    } else {
#ifndef SP_NO_FFMPEG
        if (s->oc && s->oc->pb)
            avio_closep(&s->oc->pb);
#endif
        unlink(s->part);
    }
    sink_free(s);
}

sp_status sp_sink_open(const char *path, int width, int height, const sp_sink_params *pp, sp_frame_sink **out)
{
    sp_sink_params p = {0};
    if (pp)
        p = *pp;
    *out = NULL;
    sp_frame_sink *s = calloc(1, sizeof *s);
    if (!s)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    snprintf(s->final, sizeof s->final, "%s", path);
    size_t L = strlen(s->final);
    while (L > 1 && s->final[L - 1] == '/')
        s->final[--L] = 0;
    snprintf(s->part, sizeof s->part, "%s.part", s->final);
    s->width = width;
    s->height = height;
    s->quality = p.quality > 0 ? p.quality : 92;
    s->is_dir = !video_ext(s->final);
    sp_status st = SP_OK;
    struct stat sb;
    if ((st = sp_sink_check(path, p.codec))) {
        free(s);
        return st;
    }
    if (s->is_dir) {
        s->jpeg = L > 4 && (!strcasecmp(s->final + L - 4, ".jpg") || (L > 5 && !strcasecmp(s->final + L - 5, ".jpeg")));
        if (stat(s->final, &sb) == 0 && (!S_ISDIR(sb.st_mode) || dir_nonempty(s->final)))
            st = sp_fail(SP_ERR_IO, "%s: exists and is not an empty folder; segpipe does not overwrite frames", s->final);
        else {
            rm_tree(s->part);
            if (mkdir(s->part, 0755) != 0)
                st = sp_fail(SP_ERR_IO, "%s: cannot create: %s", s->part, strerror(errno));
        }
        if (st) {
            free(s);
            return st;
        }
    } else if ((st = video_sink_open(s, &p))) {
        sp_sink_abort(s);
        return st;
    }
    *out = s;
    return SP_OK;
}

int sp_sink_parallel(const sp_frame_sink *s)
{
    return s->is_dir;
}

sp_status sp_sink_encode(const sp_frame_sink *s, const uint8_t *rgb, void **buf, size_t *n)
{
    return s->jpeg ? sp_jpeg_encode(rgb, s->width, s->height, s->quality, buf, n)
                   : sp_png_encode(rgb, s->width, s->height, 3, buf, n);
}

sp_status sp_sink_write_encoded(sp_frame_sink *s, const void *buf, size_t n)
{
    char f[1200];
    snprintf(f, sizeof f, "%s/%06lld.%s", s->part, (long long)++s->n, s->jpeg ? "jpg" : "png");
    FILE *fp = fopen(f, "wb");
    if (!fp)
        return sp_fail(SP_ERR_IO, "%s: cannot create: %s", f, strerror(errno));
    size_t w = fwrite(buf, 1, n, fp);
    if (fclose(fp) != 0 || w != n)
        return sp_fail(SP_ERR_IO, "%s: write failed: %s", f, strerror(errno));
    return SP_OK;
}

sp_status sp_sink_write(sp_frame_sink *s, const uint8_t *rgb)
{
    if (s->is_dir) {
        void *buf;
        size_t n;
        sp_status st = sp_sink_encode(s, rgb, &buf, &n);
        if (!st)
            st = sp_sink_write_encoded(s, buf, n);
        free(buf);
        return st;
    }
#ifdef SP_NO_FFMPEG
    return sp_fail(SP_ERR_USAGE, "built without FFmpeg");
#else
    if (av_frame_make_writable(s->frm) < 0)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    const uint8_t *src[4] = {rgb, NULL, NULL, NULL};
    int ls[4] = {s->width * 3, 0, 0, 0};
    sws_scale(s->sws, src, ls, 0, s->height, s->frm->data, s->frm->linesize);
    s->frm->pts = s->n++;
    return encode(s, s->frm);
#endif
}

static sp_status write_trailer_and_close(sp_frame_sink *s)
{
#ifdef SP_NO_FFMPEG
    return sp_fail(SP_ERR_USAGE, "%s: built without FFmpeg", s->final);
#else
    char eb[128];
    sp_status st = encode(s, NULL);
    if (st)
        return st;
    int r = av_write_trailer(s->oc);
    if (r < 0)
        return sp_fail(SP_ERR_IO, "%s: cannot finish: %s", s->part, averr(r, eb, sizeof eb));
    if ((r = avio_closep(&s->oc->pb)) < 0)
        return sp_fail(SP_ERR_IO, "%s: cannot close: %s", s->part, averr(r, eb, sizeof eb));
    return SP_OK;
#endif
}

sp_status sp_sink_finish(sp_frame_sink *s)
{
    sp_status st = SP_OK;
    if (!s->is_dir)
        st = write_trailer_and_close(s);
    if (!st) {
        if (s->is_dir)
            rmdir(s->final);          /* an empty folder may stand in the way */
        if (rename(s->part, s->final) != 0)
            st = sp_fail(SP_ERR_IO, "%s: cannot move into place: %s", s->final, strerror(errno));
    }
    if (st) {
        sp_sink_abort(s);
        return st;
    }
    sink_free(s);
    return SP_OK;
}
