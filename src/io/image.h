/*
 * image.h — photo internals shared with the pipeline (image.c).
 */
#ifndef SP_IO_IMAGE_H
#define SP_IO_IMAGE_H
#include "../core/core.h"

/* From the header alone (JPEG SOF, PNG IHDR, WebP, HEIF's primary image):
 * the file's pixels and how many the reader would decode under p (JPEG:
 * its DCT downscaling; others: max_pixels when over it). Refuses what the
 * reader refuses for size (past 4 x max_pixels) and what it cannot name. */
sp_status sp_image_probe(const void *data, size_t size, const sp_image_params *p, uint64_t *file_px,
                         uint64_t *decoded_px);
#endif
