/* unannounced.h - which jobs' jobs.done the apply loop has written but not
 * seen confirmed, kept in RocksDB in the same write as their records.
 *
 * The loop acks a batch only once its jobs.done and events are confirmed,
 * so a store that dies before that gets the batch again and re-announces
 * it. Unless nats-server lost the batch's messages too (a SIGKILL can take
 * writes it had confirmed): then nothing would ever announce those jobs
 * (chaos run 2014: two jobs completed, no jobs.done). So each batch's
 * terminal job ids go into one of two slots of the meta column family,
 * written with the batch: the loop has at most two batches unconfirmed,
 * the one in flight and the one just written, and the batch after next
 * overwrites a slot. A start announces the slots' jobs again (jobs.done
 * keeps one copy by its Nats-Msg-Id within KILN_DONE's duplicate window;
 * the event is rechecked, events.h); an idle or stopping loop clears the
 * slots of confirmed batches, so a quiet restart announces nothing.
 *
 * One thread: the apply loop. */
#ifndef STORE_UNANNOUNCED_H
#define STORE_UNANNOUNCED_H

#include <stdbool.h>
#include <stddef.h>

#include "apply.h"
#include "db.h"
#include "status.h"

#define UNANNOUNCED_SLOTS 2 /* the apply loop's two sinks: slot = sink index */

typedef struct {
    bool written[UNANNOUNCED_SLOTS];   /* the slot holds ids in RocksDB */
    bool confirmed[UNANNOUNCED_SLOTS]; /* and its batch's announcements were confirmed */
} unannounced;

/* Stages into wb the slot of the batch being written: the ids of done, or
 * the slot's removal when done is empty. */
void unannounced_stage(unannounced *u, db_batch *wb, int slot, const apply_done_list *done);
/* The batch in slot was settled: its announcements confirmed (ok) or not. */
void unannounced_settled(unannounced *u, int slot, bool ok);
/* Removes the slots whose batches were confirmed, in one write through wb
 * (cleared first, only when there is one to remove). */
kiln_status unannounced_clear_confirmed(unannounced *u, db_store *db, db_batch *wb);
/* At start: adds to sink what the jobs in the slots (left by the last run)
 * announce; *n counts those jobs. */
kiln_status unannounced_load(unannounced *u, db_store *db, apply_sink *sink, size_t *n);

#endif
