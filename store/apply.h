/* apply.h - the store's transition rules and how a record change becomes
 * one set of writes (record, indexes, counters) in a RocksDB batch, plus
 * what the batch must announce once written (jobs.done, events).
 *
 * Every function here stages writes into wb and reads through it, so several
 * changes to the same job in one batch see each other. The caller holds
 * db_lock() from the first read until db_write(). */
#ifndef STORE_APPLY_H
#define STORE_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "events.h"
#include "jobreq.h"
#include "keys.h"
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

/* What a batch must announce after its write: terminal states (jobs.done)
 * and every record change (kiln.events.*). replay is set by the caller for
 * a redelivered message: a change it finds already written is announced
 * again (the first announcement may have failed; Nats-Msg-Id de-duplicates). */
/* One user counter's change over a batch. */
typedef struct {
    uint8_t key[KEYS_MAX];
    size_t klen;
    int64_t delta;
    uint32_t slot; /* its place in apply_sink.counter_index */
} apply_counter;

typedef struct {
    apply_done_list done;
    events_list events;
    int replay;
    /* defer_counters (the apply loop sets it): counter changes are summed
     * here and staged once per batch by apply_sink_flush_counters() instead
     * of a read and a write per message. 0: every change is
     * read-modify-written in wb at once. The changes are kept densely in
     * counters[0..ncounters), found through counter_index (open addressing,
     * counters index + 1, 0 = free), so a batch's flush and clear cost its
     * own counters, not the largest batch's. */
    int defer_counters;
    apply_counter *counters;
    size_t ncounters, capcounters;
    uint32_t *counter_index;
    size_t nindex; /* a power of two, at least 2 * ncounters */
} apply_sink;

/* Adds to sink what a crash replay of id's record announces: its jobs.done
 * and its event (rechecked) when the job is terminal; nothing otherwise, or
 * when there is no record. */
kiln_status apply_reannounce(db_store *db, const char *id, apply_sink *sink);
void apply_sink_reset(apply_sink *s);
void apply_sink_free(apply_sink *s); /* NULL-safe */

/* Stages the summed counter changes (one read and one write per counter)
 * and forgets them. Call before db_write() when defer_counters is set. */
kiln_status apply_sink_flush_counters(db_store *db, db_batch *wb, apply_sink *s);

typedef enum {
    APPLY_RULE_IGNORE,    /* stale or impossible: nothing changes */
    APPLY_RULE_APPLY,     /* write the new state */
    APPLY_RULE_REPUBLISH, /* terminal already, same state again: announce again */
} apply_rule;

/* The transition rules (design.md "Store transition rules"), without I/O:
 * what a transition to `to` from attempt `attempt` does to a record whose
 * status is cur (a record not yet written is pending with attempts 0). */
apply_rule apply_decide(const Kiln__V1__JobStatus *cur, Kiln__V1__JobState to, uint32_t attempt);

/* Stages the change old -> nw (old NULL for a new record): the record, its
 * by_user / by_user_state / unviewed entries and the user's counters. When
 * ev is non-NULL and the change is visible (new record, state, attempts or
 * viewed changed), appends it to ev. */
kiln_status apply_stage_record(db_store *db, db_batch *wb,
                               const Kiln__V1__JobRecord *old, const Kiln__V1__JobRecord *nw,
                               events_list *ev);

/* When a finished rec ended, for retention: completed_at_ms (the consumer's
 * clock), but never later than the store's own write of it (updated_at_ms),
 * so a transition from a clock far ahead cannot keep a record for ever. */
int64_t apply_finished_at(const Kiln__V1__JobRecord *rec);

/* Stages the removal of rec (retention.c): the record, its by_user /
 * by_user_state / unviewed entries and its share of the user's counters.
 * Its finished entry is the caller's. No event: expiry is not a state. */
kiln_status apply_stage_remove(db_store *db, db_batch *wb, const Kiln__V1__JobRecord *rec);

/* A JobRequest from jobs.generate* at stream sequence seq (stored as the
 * record's request_seq). subject is the lane subject it came on: the lane
 * a job runs on is its priority, whatever the request's field says (NULL
 * keeps the field). fallback_created_ms stands in for a missing
 * created_at_ms. A new record with an idempotency_key also reserves the key
 * when it is free. *changed = 1 when a new record was staged.
 * KILN_EINVAL: undecodable or invalid (the caller acks and ignores it);
 * KILN_EIO: RocksDB failed (the caller retries the batch). */
kiln_status apply_job_request(db_store *db, db_batch *wb, const char *subject, const void *data,
                              size_t len, int64_t fallback_created_ms, uint64_t seq,
                              apply_sink *sink, int *changed);

/* A JobTransition from kiln.tx. Terminal states written (or re-applied
 * identically) go to sink->done, changes to sink->events. Errors as
 * apply_job_request. */
kiln_status apply_transition(db_store *db, db_batch *wb, const void *data,
                             size_t len, apply_sink *sink, int *changed);

/* Loads id for user (NULL or "" = any user). Another user's job, or an
 * invalid id, is KILN_ENOTFOUND. wb may be NULL. */
kiln_status apply_load_owned(db_store *db, db_batch *wb, const char *id,
                             const char *user, Kiln__V1__JobRecord **out);

/* Marks the job viewed (see the comment in apply.c); the change goes to ev
 * (may be NULL). KILN_ENOTFOUND for an unknown id or another user's job. */
kiln_status apply_viewed(db_store *db, db_batch *wb, const char *id,
                         const char *user, events_list *ev);

#endif
