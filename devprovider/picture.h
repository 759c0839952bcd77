/* picture.h - deterministic PNG pictures derived from a 64-bit seed. */
#ifndef DEV_PICTURE_H
#define DEV_PICTURE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DEV_PICTURE_MAX_SIDE 1024 /* larger requested sizes are clamped to this */

/* Renders a w x h RGB picture (a two-colour diagonal gradient with a disc and
 * stripes, all chosen by seed) and encodes it as PNG into a malloc'ed buffer
 * the caller frees. w and h must be 1..DEV_PICTURE_MAX_SIDE. The same seed and
 * size always give the same bytes. */
kiln_status dev_picture_png(uint64_t seed, unsigned w, unsigned h, uint8_t **out, size_t *len);

#endif
