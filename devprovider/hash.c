/* hash.c - a fast 64-bit non-cryptographic hash (8-byte multiply-xorshift rounds). */
#include <string.h>

#include "hash.h"

#define HASH_M1 0x9e3779b97f4a7c15ULL
#define HASH_M2 0xbf58476d1ce4e5b9ULL

uint64_t dev_hash_mix(uint64_t x)
{
    /* splitmix64's finaliser. */
    x ^= x >> 30;
    x *= HASH_M2;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t dev_hash64(const void *p, size_t len, uint64_t seed)
{
    const unsigned char *b = p;
    uint64_t h = dev_hash_mix(seed ^ (len * HASH_M1));
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, b, 8); /* unaligned-safe */
        h = dev_hash_mix(h ^ (w * HASH_M1)) + HASH_M2;
        b += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < len; i++) tail |= (uint64_t)b[i] << (8 * i);
    return dev_hash_mix(h ^ (tail * HASH_M1) ^ len);
}
