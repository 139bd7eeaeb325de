/* encode.h — in-memory PNG and JPEG encoders (libpng, libjpeg-turbo). */
#ifndef SP_ENCODE_H
#define SP_ENCODE_H
#include "../core/core.h"

/* 8-bit PNG of `channels` (1 grey, 3 RGB) interleaved pixels, rows packed.
 * zlib level 1 with the RLE strategy and no row filter: fast, and small for
 * masks (long runs). Caller frees *out. */
sp_status sp_png_encode(const uint8_t *px, int width, int height, int channels, void **out, size_t *size);
/* 8-bit grey PNG of a mask (bytes in long runs): one fixed-Huffman deflate
 * block of run-length matches, written directly (several times faster than
 * zlib on 12 MP masks, similar size). Caller frees *out. */
sp_status sp_png_encode_mask(const uint8_t *px, int width, int height, void **out, size_t *size);
/* Baseline JPEG of packed RGB at quality 1..100. Caller frees *out. */
sp_status sp_jpeg_encode(const uint8_t *rgb, int width, int height, int quality, void **out, size_t *size);
#endif
