/* map.c - a small chained hash map from uint64_t keys to pointers. */
#include <stdlib.h>

#include "map.h"

typedef struct map_node {
    struct map_node *next;
    uint64_t key;
    void *val;
} map_node;

struct gw_map {
    map_node **b;
    size_t mask;
    size_t size;
};

static size_t map_hash(uint64_t k, size_t mask)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL; /* murmur3 finaliser: pointers and counters spread well */
    k ^= k >> 33;
    return (size_t)k & mask;
}

kiln_status gw_map_create(size_t buckets, gw_map **out)
{
    size_t n = 16;
    while (n < buckets) n <<= 1;
    gw_map *m = calloc(1, sizeof *m);
    if (m == NULL) return KILN_ENOMEM;
    m->b = calloc(n, sizeof *m->b);
    if (m->b == NULL) {
        free(m);
        return KILN_ENOMEM;
    }
    m->mask = n - 1;
    *out = m;
    return KILN_OK;
}

void gw_map_destroy(gw_map *m)
{
    if (m == NULL) return;
    for (size_t i = 0; i <= m->mask; i++) {
        map_node *n = m->b[i];
        while (n != NULL) {
            map_node *next = n->next;
            free(n);
            n = next;
        }
    }
    free(m->b);
    free(m);
}

kiln_status gw_map_put(gw_map *m, uint64_t key, void *val)
{
    map_node *n = malloc(sizeof *n);
    if (n == NULL) return KILN_ENOMEM;
    size_t h = map_hash(key, m->mask);
    n->key = key;
    n->val = val;
    n->next = m->b[h];
    m->b[h] = n;
    m->size++;
    return KILN_OK;
}

void *gw_map_take(gw_map *m, uint64_t key)
{
    map_node **pp = &m->b[map_hash(key, m->mask)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->key != key) continue;
        map_node *n = *pp;
        void *val = n->val;
        *pp = n->next;
        free(n);
        m->size--;
        return val;
    }
    return NULL;
}

void **gw_map_slot(gw_map *m, uint64_t key)
{
    for (map_node *n = m->b[map_hash(key, m->mask)]; n != NULL; n = n->next)
        if (n->key == key) return &n->val;
    return NULL;
}

size_t gw_map_size(const gw_map *m) { return m->size; }

void *gw_map_take_any(gw_map *m, uint64_t *key)
{
    if (m->size == 0) return NULL;
    for (size_t i = 0; i <= m->mask; i++) {
        if (m->b[i] == NULL) continue;
        uint64_t k = m->b[i]->key;
        if (key != NULL) *key = k;
        return gw_map_take(m, k);
    }
    return NULL;
}

size_t gw_map_take_if(gw_map *m, bool (*pick)(const void *val, void *arg), void *arg, void **out,
                      size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i <= m->mask && n < max && m->size > 0; i++) {
        map_node **pp = &m->b[i];
        while (*pp != NULL && n < max) {
            if (!pick((*pp)->val, arg)) {
                pp = &(*pp)->next;
                continue;
            }
            map_node *x = *pp;
            out[n++] = x->val;
            *pp = x->next;
            free(x);
            m->size--;
        }
    }
    return n;
}
