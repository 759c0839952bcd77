/* batch.c - db_batch: a write batch that reads its own writes and writes
 * each key once (see db.h).
 *
 * Entries live in an array in staging order; an open-addressing table of
 * entry indexes finds a key. Keys and values are copied into an arena of
 * chunks that db_batch_clear() keeps for the next batch, so a steady apply
 * loop allocates nothing per message. */
#include <stdlib.h>
#include <string.h>

#include "db.h"

#define BATCH_CHUNK (256u * 1024)  /* arena chunk; larger items get their own */
#define BATCH_MIN_SLOTS 1024u      /* power of two */

typedef struct batch_chunk batch_chunk;
struct batch_chunk {
    batch_chunk *next;
    size_t cap, used;
    char data[];
};

typedef struct {
    const char *key, *val;
    size_t klen, vlen;
    uint32_t slot; /* its place in slots[], for db_batch_clear */
    uint8_t cf;
    uint8_t deleted;
} batch_entry;

struct db_batch {
    batch_entry *e;
    size_t n, cap;
    uint32_t *slots; /* entry index + 1; 0 = free */
    size_t nslots;   /* power of two, at least 2n */
    batch_chunk *chunks; /* head = current */
    batch_chunk *spare;  /* cleared chunks, reused first */
    const batch_entry **order; /* db_batch_fill's sorted view, kept for the next batch */
    size_t order_cap;
    int failed;          /* an allocation failed: db_write refuses */
};

kiln_status db_batch_create(db_batch **out)
{
    db_batch *b = calloc(1, sizeof *b);
    if (b == NULL) return KILN_ENOMEM;
    b->slots = calloc(BATCH_MIN_SLOTS, sizeof *b->slots);
    if (b->slots == NULL) {
        free(b);
        return KILN_ENOMEM;
    }
    b->nslots = BATCH_MIN_SLOTS;
    *out = b;
    return KILN_OK;
}

static void batch_free_chunks(batch_chunk *c)
{
    while (c != NULL) {
        batch_chunk *next = c->next;
        free(c);
        c = next;
    }
}

void db_batch_destroy(db_batch *b)
{
    if (b == NULL) return;
    batch_free_chunks(b->chunks);
    batch_free_chunks(b->spare);
    free(b->e);
    free(b->slots);
    free(b->order);
    free(b);
}

void db_batch_clear(db_batch *b)
{
    if (b->n * 8 < b->nslots) {
        /* A small batch in a table that a large one grew (it never shrinks):
         * zeroing the whole table per batch was ~4 % of the store's CPU at
         * 1 000 jobs/s, batches of 1-2 messages in a 64 KiB table. */
        for (size_t i = 0; i < b->n; i++) b->slots[b->e[i].slot] = 0;
    } else {
        memset(b->slots, 0, b->nslots * sizeof *b->slots);
    }
    b->n = 0;
    b->failed = 0;
    /* Standard-size chunks go back to the spare list; oversized ones are freed. */
    while (b->chunks != NULL) {
        batch_chunk *c = b->chunks;
        b->chunks = c->next;
        if (c->cap == BATCH_CHUNK) {
            c->used = 0;
            c->next = b->spare;
            b->spare = c;
        } else {
            free(c);
        }
    }
}

/* Copies n bytes into the arena. NULL on allocation failure. */
static char *batch_copy(db_batch *b, const void *p, size_t n)
{
    batch_chunk *c = b->chunks;
    if (c == NULL || c->cap - c->used < n) {
        if (n > BATCH_CHUNK / 4) {
            /* Large item: its own chunk, behind the current one. */
            batch_chunk *big = malloc(sizeof *big + n);
            if (big == NULL) return NULL;
            big->cap = big->used = n;
            if (c != NULL) {
                big->next = c->next;
                c->next = big;
            } else {
                big->next = NULL;
                b->chunks = big;
            }
            if (n > 0) memcpy(big->data, p, n);
            return big->data;
        }
        if (b->spare != NULL) {
            c = b->spare;
            b->spare = c->next;
        } else {
            c = malloc(sizeof *c + BATCH_CHUNK);
            if (c == NULL) return NULL;
            c->cap = BATCH_CHUNK;
        }
        c->used = 0;
        c->next = b->chunks;
        b->chunks = c;
    }
    char *dst = c->data + c->used;
    if (n > 0) memcpy(dst, p, n);
    c->used += n;
    return dst;
}

static size_t batch_hash(db_cf cf, const void *key, size_t klen)
{
    const uint8_t *k = key;
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)cf; /* FNV-1a */
    for (size_t i = 0; i < klen; i++) h = (h ^ k[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

/* The slot for (cf, key): holding its entry, or free. */
static uint32_t *batch_slot(const db_batch *b, db_cf cf, const void *key, size_t klen)
{
    size_t mask = b->nslots - 1, i = batch_hash(cf, key, klen) & mask;
    for (;;) {
        uint32_t *s = &b->slots[i];
        if (*s == 0) return s;
        const batch_entry *e = &b->e[*s - 1];
        if (e->cf == (uint8_t)cf && e->klen == klen && memcmp(e->key, key, klen) == 0) return s;
        i = (i + 1) & mask;
    }
}

static int batch_grow_slots(db_batch *b)
{
    size_t n = b->nslots * 2;
    uint32_t *slots = calloc(n, sizeof *slots);
    if (slots == NULL) return -1;
    free(b->slots);
    b->slots = slots;
    b->nslots = n;
    for (size_t i = 0; i < b->n; i++) {
        batch_entry *e = &b->e[i];
        uint32_t *slot = batch_slot(b, (db_cf)e->cf, e->key, e->klen);
        *slot = (uint32_t)(i + 1);
        e->slot = (uint32_t)(slot - b->slots);
    }
    return 0;
}

static void batch_stage(db_batch *b, db_cf cf, const void *key, size_t klen, const void *val,
                        size_t vlen, int deleted)
{
    if (b->failed) return;
    if (2 * (b->n + 1) > b->nslots && batch_grow_slots(b) != 0) goto fail;
    uint32_t *s = batch_slot(b, cf, key, klen);
    batch_entry *e = NULL;
    if (*s != 0) {
        e = &b->e[*s - 1];
    } else {
        if (b->n == b->cap) {
            size_t cap = b->cap ? b->cap * 2 : 1024;
            batch_entry *ne = realloc(b->e, cap * sizeof *ne);
            if (ne == NULL) goto fail;
            b->e = ne;
            b->cap = cap;
        }
        e = &b->e[b->n];
        e->key = batch_copy(b, key, klen);
        if (e->key == NULL) goto fail;
        e->klen = klen;
        e->cf = (uint8_t)cf;
        e->slot = (uint32_t)(s - b->slots);
        b->n++;
        *s = (uint32_t)b->n;
    }
    /* An overwritten value stays in the arena until the batch is cleared. */
    e->deleted = (uint8_t)deleted;
    e->val = NULL;
    e->vlen = 0;
    if (!deleted) {
        e->val = batch_copy(b, val, vlen);
        if (e->val == NULL) goto fail;
        e->vlen = vlen;
    }
    return;
fail:
    b->failed = 1;
}

void db_batch_put(db_batch *b, db_cf cf, const void *key, size_t klen, const void *val,
                  size_t vlen)
{
    batch_stage(b, cf, key, klen, val, vlen, 0);
}

void db_batch_delete(db_batch *b, db_cf cf, const void *key, size_t klen)
{
    batch_stage(b, cf, key, klen, NULL, 0, 1);
}

int db_batch_find(const db_batch *b, db_cf cf, const void *key, size_t klen, const char **val,
                  size_t *vlen)
{
    if (b->n == 0) return 0;
    uint32_t s = *batch_slot(b, cf, key, klen);
    if (s == 0) return 0;
    const batch_entry *e = &b->e[s - 1];
    if (e->deleted) return -1;
    *val = e->val;
    *vlen = e->vlen;
    return 1;
}

/* Column family, then key bytewise (RocksDB's default comparator). */
static int batch_entry_cmp(const void *pa, const void *pb)
{
    const batch_entry *a = *(const batch_entry *const *)pa;
    const batch_entry *b = *(const batch_entry *const *)pb;
    if (a->cf != b->cf) return a->cf < b->cf ? -1 : 1;
    int c = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);
    if (c != 0) return c;
    return (a->klen > b->klen) - (a->klen < b->klen);
}

/* Fills out in key order. RocksDB's skiplist memtable starts each insert
 * from where the last one ended: keys in order cost a few steps each, keys
 * out of order a search from the top with a cache miss per level. A batch
 * mixes regions (new records at the end of jobs, finished ones further
 * back; pending index keys deleted, completed ones added), and each key
 * is in it once, so sorting changes nothing but the cost. */
kiln_status db_batch_fill(db_batch *b, db_store *db, rocksdb_writebatch_t *out)
{
    if (b->failed) return KILN_ENOMEM;
    if (b->n == 0) return KILN_OK;
    if (b->n > b->order_cap) {
        const batch_entry **o = realloc(b->order, b->n * sizeof *o);
        if (o == NULL) return KILN_ENOMEM;
        b->order = o;
        b->order_cap = b->n;
    }
    for (size_t i = 0; i < b->n; i++) b->order[i] = &b->e[i];
    qsort(b->order, b->n, sizeof *b->order, batch_entry_cmp);
    for (size_t i = 0; i < b->n; i++) {
        const batch_entry *e = b->order[i];
        rocksdb_column_family_handle_t *cf = db->cf[e->cf];
        if (e->deleted) rocksdb_writebatch_delete_cf(out, cf, e->key, e->klen);
        else rocksdb_writebatch_put_cf(out, cf, e->key, e->klen, e->val, e->vlen);
    }
    return KILN_OK;
}
