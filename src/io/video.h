/*
 * video.h — frame sources and sinks for `segpipe video` (internal).
 *
 * A source yields 8-bit RGB frames, rows top to bottom, tightly packed
 * (width * 3 bytes per row), from a video file (libavformat + libavcodec,
 * converted by libswscale) or from a folder of PNG/JPEG frames taken in
 * natural name order (frame2 before frame10). A sink takes frames of one
 * size in order and writes a video file (libavcodec; codec from the
 * extension or by name) or a folder of numbered frames (000001.png ...).
 * Nothing appears at the output path until sp_sink_finish: a video is
 * written to PATH.part and renamed, a folder is filled under PATH.part/ and
 * renamed; sp_sink_abort removes the partial output.
 */
#ifndef SP_VIDEO_IO_H
#define SP_VIDEO_IO_H
#include "../core/core.h"

typedef struct sp_frame_src sp_frame_src;

typedef struct sp_src_info {
    int width, height;
    double fps;              /* frames per second (folder: 0, caller decides) */
    int64_t frames;          /* number of frames if known (folder: exact), else -1 */
    char desc[160];          /* "h264 1280x720 25 fps" / "folder, 120 PNG/JPEG frames" */
} sp_src_info;

/* Open a video file or a folder of frames. threads: decoder threads (0 = auto). */
sp_status sp_src_open(const char *path, int threads, sp_frame_src **out, sp_src_info *info);
/* Decode the next frame into rgb (width * height * 3 bytes). *eof = 1 and
 * nothing written when there are no more frames. Errors: SP_ERR_INPUT for a
 * corrupt stream, a frame of another size, an undecodable file. */
sp_status sp_src_read(sp_frame_src *s, uint8_t *rgb, int *eof);
void sp_src_close(sp_frame_src *s);

typedef struct sp_frame_sink sp_frame_sink;

typedef struct sp_sink_params {
    double fps;              /* output frame rate (video files) */
    const char *codec;       /* encoder name; NULL: by extension (mp4/mov/mkv: libx264, avi: mjpeg) */
    int quality;             /* JPEG frames / MJPEG quality 1..100 (0: 92) */
    int threads;             /* encoder threads (0: 1) */
} sp_sink_params;

/* Open a sink: PATH ending in .mp4 .mkv .mov .avi .webm is a video file,
 * anything else a folder of frames (PNG, or JPEG when PATH ends in ".jpg/").
 * An existing non-empty output folder is refused (SP_ERR_IO). */
sp_status sp_sink_open(const char *path, int width, int height, const sp_sink_params *p, sp_frame_sink **out);
/* SP_OK when path names an output the sink can write (a video by its
 * extension, or a frame folder), else SP_ERR_USAGE saying what can be. */
sp_status sp_sink_check(const char *path, const char *codec);
sp_status sp_sink_write(sp_frame_sink *s, const uint8_t *rgb);
/* Frame folders: frames are encoded to file bytes on any thread
 * (sp_sink_encode, thread-safe) and written in order by
 * sp_sink_write_encoded. 0 for video files (the encoder is sequential). */
int sp_sink_parallel(const sp_frame_sink *s);
sp_status sp_sink_encode(const sp_frame_sink *s, const uint8_t *rgb, void **buf, size_t *n);
sp_status sp_sink_write_encoded(sp_frame_sink *s, const void *buf, size_t n);
/* Flush, close and move the output into place; frees s. */
sp_status sp_sink_finish(sp_frame_sink *s);
/* Remove the partial output; frees s. */
void sp_sink_abort(sp_frame_sink *s);
#endif
