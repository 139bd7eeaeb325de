/* av_load.h — FFmpeg, opened the first time a video file is read or written.
 *
 * Linking libavformat pulls about 130 shared libraries into every process,
 * and resolving them cost each `segpipe` start about 36 ms of its 75 (a
 * `segpipe ct` that never touches video, every test, every worker). So
 * video.c calls FFmpeg through the table below, filled by dlopen/dlsym of
 * the libraries it was compiled against (their SONAMEs from FFmpeg's own
 * version headers) when sp_av_load() first runs. Include this header, not
 * FFmpeg's, in the file that calls FFmpeg: after it, each FFmpeg function
 * name used there means the table's entry. */
#ifndef SP_AV_LOAD_H
#define SP_AV_LOAD_H
#include "segpipe.h"
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>

#define SP_AV_FUNCS(X)                                                                                          \
    X(av_d2q) X(av_find_best_stream) X(av_frame_alloc) X(av_frame_free) X(av_frame_get_buffer)                  \
    X(av_frame_make_writable) X(av_frame_unref) X(av_get_pix_fmt_name) X(av_guess_frame_rate)                   \
    X(av_interleaved_write_frame) X(av_log_default_callback) X(av_log_set_callback) X(av_log_set_level)         \
    X(av_opt_set) X(av_packet_alloc) X(av_packet_free) X(av_packet_rescale_ts) X(av_packet_unref)               \
    X(av_read_frame) X(av_strerror) X(av_write_trailer) X(avcodec_alloc_context3)                               \
    X(avcodec_find_best_pix_fmt_of_list) X(avcodec_find_encoder) X(avcodec_find_encoder_by_name)                \
    X(avcodec_free_context) X(avcodec_get_name) X(avcodec_open2) X(avcodec_parameters_from_context)             \
    X(avcodec_parameters_to_context) X(avcodec_receive_frame) X(avcodec_receive_packet) X(avcodec_send_frame)   \
    X(avcodec_send_packet) X(avformat_alloc_output_context2) X(avformat_close_input)                            \
    X(avformat_find_stream_info) X(avformat_free_context) X(avformat_new_stream) X(avformat_open_input)         \
    X(avformat_query_codec) X(avformat_write_header) X(avio_closep) X(avio_open) X(sws_freeContext)             \
    X(sws_getCachedContext) X(sws_getContext) X(sws_scale)

struct sp_av_api {
#define SP_AV_MEMBER(f) __typeof__(&f) f;
    SP_AV_FUNCS(SP_AV_MEMBER)
#undef SP_AV_MEMBER
};
extern struct sp_av_api sp_av;

/* SP_OK once every function of the table is there (the first call loads
 * them; later calls return the first call's result), else SP_ERR_INPUT
 * naming the library that could not be opened. Thread-safe. */
sp_status sp_av_load(void);

#ifndef SP_AV_LOAD_IMPL
#define av_d2q (sp_av.av_d2q)
#define av_find_best_stream (sp_av.av_find_best_stream)
#define av_frame_alloc (sp_av.av_frame_alloc)
#define av_frame_free (sp_av.av_frame_free)
#define av_frame_get_buffer (sp_av.av_frame_get_buffer)
#define av_frame_make_writable (sp_av.av_frame_make_writable)
#define av_frame_unref (sp_av.av_frame_unref)
#define av_get_pix_fmt_name (sp_av.av_get_pix_fmt_name)
#define av_guess_frame_rate (sp_av.av_guess_frame_rate)
#define av_interleaved_write_frame (sp_av.av_interleaved_write_frame)
#define av_log_default_callback (sp_av.av_log_default_callback)
#define av_log_set_callback (sp_av.av_log_set_callback)
#define av_log_set_level (sp_av.av_log_set_level)
#define av_opt_set (sp_av.av_opt_set)
#define av_packet_alloc (sp_av.av_packet_alloc)
#define av_packet_free (sp_av.av_packet_free)
#define av_packet_rescale_ts (sp_av.av_packet_rescale_ts)
#define av_packet_unref (sp_av.av_packet_unref)
#define av_read_frame (sp_av.av_read_frame)
#define av_strerror (sp_av.av_strerror)
#define av_write_trailer (sp_av.av_write_trailer)
#define avcodec_alloc_context3 (sp_av.avcodec_alloc_context3)
#define avcodec_find_best_pix_fmt_of_list (sp_av.avcodec_find_best_pix_fmt_of_list)
#define avcodec_find_encoder (sp_av.avcodec_find_encoder)
#define avcodec_find_encoder_by_name (sp_av.avcodec_find_encoder_by_name)
#define avcodec_free_context (sp_av.avcodec_free_context)
#define avcodec_get_name (sp_av.avcodec_get_name)
#define avcodec_open2 (sp_av.avcodec_open2)
#define avcodec_parameters_from_context (sp_av.avcodec_parameters_from_context)
#define avcodec_parameters_to_context (sp_av.avcodec_parameters_to_context)
#define avcodec_receive_frame (sp_av.avcodec_receive_frame)
#define avcodec_receive_packet (sp_av.avcodec_receive_packet)
#define avcodec_send_frame (sp_av.avcodec_send_frame)
#define avcodec_send_packet (sp_av.avcodec_send_packet)
#define avformat_alloc_output_context2 (sp_av.avformat_alloc_output_context2)
#define avformat_close_input (sp_av.avformat_close_input)
#define avformat_find_stream_info (sp_av.avformat_find_stream_info)
#define avformat_free_context (sp_av.avformat_free_context)
#define avformat_new_stream (sp_av.avformat_new_stream)
#define avformat_open_input (sp_av.avformat_open_input)
#define avformat_query_codec (sp_av.avformat_query_codec)
#define avformat_write_header (sp_av.avformat_write_header)
#define avio_closep (sp_av.avio_closep)
#define avio_open (sp_av.avio_open)
#define sws_freeContext (sp_av.sws_freeContext)
#define sws_getCachedContext (sp_av.sws_getCachedContext)
#define sws_getContext (sp_av.sws_getContext)
#define sws_scale (sp_av.sws_scale)
#endif
#endif
