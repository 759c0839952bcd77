/* hash.c - prompt digests via libcrypto's SHA-256 and SplitMix64's finaliser. */
#include "hash.h"
#include "sha256.h"

kiln_status dev_hash_key(const void *p, size_t len, uint64_t key[2])
{
    if ((p == NULL && len != 0) || key == NULL) return KILN_EINVAL;
    uint8_t md[KILN_SHA256_LEN];
    if (kiln_sha256(p, len, md) != KILN_OK) return KILN_ERR;
    for (int w = 0; w < 2; w++) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++) v = v << 8 | md[8 * w + i];
        key[w] = v;
    }
    return KILN_OK;
}

uint64_t dev_hash_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}
