/* attempts.c - per-prompt counters: a chained hash table with an LRU list for
 * eviction, under one mutex. Keys are 128 bits of the prompt's SHA-256, so
 * memory does not depend on prompt length. */
#include <pthread.h>
#include <stdlib.h>

#include "attempts.h"

typedef struct attempts_entry {
    uint64_t ka, kb;
    uint64_t count;
    uint64_t running;                        /* begun and not ended */
    struct attempts_entry *chain;            /* next in the bucket */
    struct attempts_entry *newer, *older;    /* LRU list */
} attempts_entry;

struct dev_attempts {
    pthread_mutex_t mu;
    attempts_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t size, max;
    attempts_entry *newest, *oldest;
};

kiln_status dev_attempts_create(size_t max_entries, dev_attempts **out)
{
    if (out == NULL || max_entries == 0) return KILN_EINVAL;
    dev_attempts *t = calloc(1, sizeof *t);
    if (t == NULL) return KILN_ENOMEM;
    t->nbuckets = 64;
    while (t->nbuckets < max_entries) t->nbuckets <<= 1;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    if (t->buckets == NULL) {
        free(t);
        return KILN_ENOMEM;
    }
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t->buckets);
        free(t);
        return KILN_ERR;
    }
    t->max = max_entries;
    *out = t;
    return KILN_OK;
}

void dev_attempts_destroy(dev_attempts *t)
{
    if (t == NULL) return;
    attempts_entry *e = t->newest;
    while (e != NULL) {
        attempts_entry *next = e->older;
        free(e);
        e = next;
    }
    pthread_mutex_destroy(&t->mu);
    free(t->buckets);
    free(t);
}

static void attempts_lru_unlink(dev_attempts *t, attempts_entry *e)
{
    if (e->newer != NULL) e->newer->older = e->older;
    else t->newest = e->older;
    if (e->older != NULL) e->older->newer = e->newer;
    else t->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void attempts_lru_push(dev_attempts *t, attempts_entry *e)
{
    e->newer = NULL;
    e->older = t->newest;
    if (t->newest != NULL) t->newest->newer = e;
    t->newest = e;
    if (t->oldest == NULL) t->oldest = e;
}

/* Removes the least recently used entry from its bucket and the list,
 * passing over entries with requests running (their ends must find them)
 * unless every entry has some. */
static void attempts_evict(dev_attempts *t)
{
    attempts_entry *victim = t->oldest;
    while (victim != NULL && victim->running > 0) victim = victim->newer;
    if (victim == NULL) victim = t->oldest;
    if (victim == NULL) return;
    attempts_entry **pp = &t->buckets[victim->ka & (t->nbuckets - 1)];
    while (*pp != NULL && *pp != victim) pp = &(*pp)->chain;
    if (*pp == victim) *pp = victim->chain;
    attempts_lru_unlink(t, victim);
    free(victim);
    t->size--;
}

static attempts_entry *attempts_find(dev_attempts *t, uint64_t ka, uint64_t kb)
{
    attempts_entry *e = t->buckets[ka & (t->nbuckets - 1)];
    while (e != NULL && (e->ka != ka || e->kb != kb)) e = e->chain;
    return e;
}

kiln_status dev_attempts_begin(dev_attempts *t, const uint64_t key[2], uint64_t *attempt,
                               uint64_t *running_before)
{
    if (t == NULL || key == NULL || attempt == NULL) return KILN_EINVAL;
    uint64_t ka = key[0], kb = key[1];
    kiln_status st = KILN_OK;
    pthread_mutex_lock(&t->mu);
    attempts_entry *e = attempts_find(t, ka, kb);
    if (e != NULL) {
        attempts_lru_unlink(t, e);
    } else {
        e = calloc(1, sizeof *e);
        if (e == NULL) {
            st = KILN_ENOMEM;
            goto out;
        }
        /* Evict only once the new entry exists, so a failure changes nothing. */
        if (t->size >= t->max) attempts_evict(t);
        attempts_entry **bucket = &t->buckets[ka & (t->nbuckets - 1)];
        e->ka = ka;
        e->kb = kb;
        e->chain = *bucket;
        *bucket = e;
        t->size++;
    }
    attempts_lru_push(t, e);
    *attempt = ++e->count;
    if (running_before != NULL) *running_before = e->running;
    e->running++;
out:
    pthread_mutex_unlock(&t->mu);
    return st;
}

void dev_attempts_end(dev_attempts *t, const uint64_t key[2])
{
    if (t == NULL || key == NULL) return;
    pthread_mutex_lock(&t->mu);
    attempts_entry *e = attempts_find(t, key[0], key[1]);
    if (e != NULL && e->running > 0) e->running--;
    pthread_mutex_unlock(&t->mu);
}

size_t dev_attempts_size(dev_attempts *t)
{
    if (t == NULL) return 0;
    pthread_mutex_lock(&t->mu);
    size_t n = t->size;
    pthread_mutex_unlock(&t->mu);
    return n;
}
