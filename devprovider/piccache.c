/* piccache.c - a direct-mapped cache of encoded pictures under one mutex
 * (at most DEV_PICCACHE_SLOTS x DEV_PICCACHE_ENTRY_MAX bytes = 32 MiB). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "piccache.h"
#include "picture.h"

typedef struct {
    uint64_t seed;
    unsigned w, h;
    uint8_t *png; /* NULL = empty slot */
    size_t len;
} piccache_slot;

static pthread_mutex_t piccache_mu = PTHREAD_MUTEX_INITIALIZER;
static piccache_slot piccache_slots[DEV_PICCACHE_SLOTS];

static piccache_slot *piccache_slot_of(uint64_t seed, unsigned w, unsigned h)
{
    uint64_t k = dev_hash_mix(seed ^ ((uint64_t)w << 40) ^ ((uint64_t)h << 20));
    return &piccache_slots[k % DEV_PICCACHE_SLOTS];
}

static kiln_status piccache_copy(const uint8_t *src, size_t len, uint8_t **out, size_t *outlen)
{
    uint8_t *b = malloc(len);
    if (b == NULL) return KILN_ENOMEM;
    memcpy(b, src, len);
    *out = b;
    *outlen = len;
    return KILN_OK;
}

kiln_status dev_piccache_png(uint64_t seed, unsigned w, unsigned h, uint8_t **out, size_t *len)
{
    if (out == NULL || len == NULL) return KILN_EINVAL;
    piccache_slot *s = piccache_slot_of(seed, w, h);
    kiln_status st = KILN_ENOTFOUND;
    pthread_mutex_lock(&piccache_mu);
    if (s->png != NULL && s->seed == seed && s->w == w && s->h == h)
        st = piccache_copy(s->png, s->len, out, len);
    pthread_mutex_unlock(&piccache_mu);
    if (st != KILN_ENOTFOUND) return st;

    /* Miss: render outside the lock, then keep a copy. */
    uint8_t *png = NULL, *keep = NULL;
    size_t plen = 0, klen = 0;
    st = dev_picture_png(seed, w, h, &png, &plen);
    if (st != KILN_OK) return st;
    if (plen <= DEV_PICCACHE_ENTRY_MAX && piccache_copy(png, plen, &keep, &klen) == KILN_OK) {
        pthread_mutex_lock(&piccache_mu);
        free(s->png);
        s->png = keep;
        s->len = klen;
        s->seed = seed;
        s->w = w;
        s->h = h;
        keep = NULL; /* the slot owns it */
        pthread_mutex_unlock(&piccache_mu);
    }
    free(keep);
    *out = png;
    *len = plen;
    return KILN_OK;
}

void dev_piccache_clear(void)
{
    pthread_mutex_lock(&piccache_mu);
    for (size_t i = 0; i < DEV_PICCACHE_SLOTS; i++) {
        free(piccache_slots[i].png);
        piccache_slots[i].png = NULL;
    }
    pthread_mutex_unlock(&piccache_mu);
}
