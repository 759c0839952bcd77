/* retention.h - removes finished jobs' records once KILN_RESULT_TTL has
 * passed since they ended, so the store does not grow for ever.
 *
 * Threads: one retention thread (retention_start/retention_stop from main);
 * every removal is a read-modify-write under db_lock(), like the apply loop's. */
#ifndef STORE_RETENTION_H
#define STORE_RETENTION_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "keys.h"
#include "periodic.h"
#include "status.h"

typedef struct retention retention;

/* Starts the retention thread: it indexes the finished records of an older
 * store once (retention_index_all), then every min(max(ttl/10, 1 s), 10 min)
 * runs passes until nothing due is left. ttl_ms 0 = keep for ever (*out
 * stays NULL). db is not owned and must outlive retention_stop(). */
kiln_status retention_start(db_store *db, int64_t ttl_ms, retention **out);
void retention_stop(retention *r); /* NULL-safe; joins the thread */

/* Gives every terminal record without one its finished entry (records
 * written before the entries existed), once: DB_META_FINISHED_INDEXED
 * remembers it was done. Stops with KILN_ESTOPPED when p (may be NULL) is
 * being stopped, and starts over at the next call. */
kiln_status retention_index_all(db_store *db, kiln_periodic *p);

/* Where a run of passes stands: the entry the next pass starts at (len 0:
 * the oldest). */
typedef struct {
    uint8_t key[KEYS_MAX];
    size_t len;
} retention_cursor;

/* One pass: looks at up to max finished entries due at now_ms (ended at
 * least ttl_ms ago), oldest first from *cur, and removes their records
 * (apply_stage_remove) in one write. A job with an Idempotency-Key is kept
 * until the key expires too (created + KILN_IDEM_TTL + 1 min), so a replay
 * of the key always finds its job: its entry moves to that time. *removed
 * counts the records removed; *more is 1 when the pass stopped at max, and
 * *cur then names where the next pass starts. */
kiln_status retention_pass(db_store *db, retention_cursor *cur, int64_t ttl_ms, int64_t now_ms,
                           size_t max, size_t *removed, int *more);

#endif
