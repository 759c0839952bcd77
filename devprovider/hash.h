/* hash.h - a fast 64-bit non-cryptographic hash for prompt keys and image seeds. */
#ifndef DEV_HASH_H
#define DEV_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Hashes len bytes of p; different seeds give independent hashes, so two
 * calls with two seeds make a 128-bit key. */
uint64_t dev_hash64(const void *p, size_t len, uint64_t seed);

/* Mixes one 64-bit value (a finaliser with good avalanche). */
uint64_t dev_hash_mix(uint64_t x);

#endif
