/* apply.h - the store's transition rules and how a record change becomes
 * one set of writes (record, indexes, counters) in a RocksDB batch.
 *
 * Every function here stages writes into wb and reads through it, so several
 * changes to the same job in one batch see each other. The caller holds
 * db_lock() from the first read until db_write(). */
#ifndef STORE_APPLY_H
#define STORE_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "jobreq.h"
#include "kiln.pb-c.h"
#include "status.h"

/* A terminal state to announce on jobs.done once the batch is written. */
typedef struct {
    char id[KILN_ID_MAX_LEN + 1];
    Kiln__V1__JobState state;
    uint8_t *status_pb; /* packed JobStatus, malloc'ed */
    size_t status_len;
} apply_done;

typedef struct {
    apply_done *items;
    size_t n, cap;
} apply_done_list;

/* Frees every item and empties the list (keeps the array). */
void apply_done_reset(apply_done_list *l);
/* Frees everything. NULL-safe. */
void apply_done_free(apply_done_list *l);

/* Stages the change old -> nw (old NULL for a new record): the record, its
 * by_user / by_user_state / unviewed entries and the user's counters. */
kiln_status apply_stage_record(db_store *db, rocksdb_writebatch_wi_t *wb,
                               const Kiln__V1__JobRecord *old, const Kiln__V1__JobRecord *nw);

/* A JobRequest from jobs.generate*. fallback_created_ms stands in for a
 * missing created_at_ms. *changed = 1 when a new record was staged.
 * KILN_EINVAL: undecodable or invalid (the caller acks and ignores it);
 * KILN_EIO: RocksDB failed (the caller retries the batch). */
kiln_status apply_job_request(db_store *db, rocksdb_writebatch_wi_t *wb, const void *data,
                              size_t len, int64_t fallback_created_ms, int *changed);

/* A JobTransition from kiln.tx. Terminal states written (or re-applied
 * identically) are appended to done. Errors as apply_job_request. */
kiln_status apply_transition(db_store *db, rocksdb_writebatch_wi_t *wb, const void *data,
                             size_t len, apply_done_list *done, int *changed);

typedef enum {
    APPLY_CANCEL_DONE = 0,        /* pending/processing -> cancelled (staged) */
    APPLY_CANCEL_ALREADY_FINISHED, /* terminal already */
    APPLY_CANCEL_NOT_FOUND,        /* unknown id, or another user's job */
} apply_cancel_result;

/* Cancels the job id for user (NULL = any user, for jobs.cancel). On
 * APPLY_CANCEL_DONE the jobs.done announcement is appended to done. */
kiln_status apply_cancel(db_store *db, rocksdb_writebatch_wi_t *wb, const char *id,
                         const char *user, apply_done_list *done, apply_cancel_result *result);

/* Marks the job viewed (see the comment in apply.c). KILN_ENOTFOUND for an
 * unknown id or another user's job. */
kiln_status apply_viewed(db_store *db, rocksdb_writebatch_wi_t *wb, const char *id,
                         const char *user);

#endif
