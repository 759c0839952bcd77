/* piccache.h - a small process-wide cache of encoded pictures, so repeated
 * prompts and url-format fetches of a just-made image cost a copy, not a render. */
#ifndef DEV_PICCACHE_H
#define DEV_PICCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DEV_PICCACHE_SLOTS 512               /* direct-mapped slots */
#define DEV_PICCACHE_ENTRY_MAX (64 * 1024)   /* larger pictures are not kept */

/* Same contract as dev_picture_png(): *out is a malloc'ed copy the caller
 * frees. Thread-safe. */
kiln_status dev_piccache_png(uint64_t seed, unsigned w, unsigned h, uint8_t **out, size_t *len);

/* Frees every cached picture (at shutdown). */
void dev_piccache_clear(void);

#endif
