/* map.h - a small chained hash map from uint64_t keys to pointers, for the
 * tables of pending operations. Not thread-safe: the owner holds a lock. */
#ifndef GW_MAP_H
#define GW_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct gw_map gw_map;

/* buckets is rounded up to a power of two. */
kiln_status gw_map_create(size_t buckets, gw_map **out);
void gw_map_destroy(gw_map *m); /* values are not freed */
kiln_status gw_map_put(gw_map *m, uint64_t key, void *val); /* key must be new */
void *gw_map_take(gw_map *m, uint64_t key); /* removes; NULL when absent */
void **gw_map_slot(gw_map *m, uint64_t key); /* key's value, in place; NULL when absent */
size_t gw_map_size(const gw_map *m);
/* Removes and returns any one value (for draining at shutdown), or NULL. */
void *gw_map_take_any(gw_map *m, uint64_t *key);
/* Removes up to max values for which pick(value, arg) is true into out;
 * returns how many. Walks every bucket: for periodic sweeps, not hot paths. */
size_t gw_map_take_if(gw_map *m, bool (*pick)(const void *val, void *arg), void *arg, void **out,
                      size_t max);

#endif
