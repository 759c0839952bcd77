/* hash.h - prompt digests (SHA-256 from libcrypto) and a 64-bit mixer. */
#ifndef DEV_HASH_H
#define DEV_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* The first 128 bits of SHA-256 over len bytes of p, as two 64-bit words
 * (big-endian). Keys prompts exactly for practical purposes, so the attempt
 * table never holds prompt text. KILN_ERR when libcrypto fails (out of memory). */
kiln_status dev_hash_key(const void *p, size_t len, uint64_t key[2]);

/* SplitMix64's finaliser (Steele, Lea and Flood, "Fast splittable
 * pseudorandom number generators", OOPSLA 2014): a bijective 64-bit mixer with
 * good avalanche, used to derive per-image seeds and pick colours. */
uint64_t dev_hash_mix(uint64_t x);

#endif
