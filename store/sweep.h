/* sweep.h - re-publishes pending jobs whose JobRequest vanished from
 * KILN_JOBS (nats-server 2.9.10 can drop nak'd-with-delay messages across a
 * restart), so no job stays pending forever.
 *
 * Threads: one sweep thread; sweep_start/sweep_stop from main. */
#ifndef STORE_SWEEP_H
#define STORE_SWEEP_H

#include <nats/nats.h>
#include <stdint.h>

#include "barrier.h"
#include "db.h"
#include "status.h"

typedef struct sweep sweep;

/* Starts the sweep thread (every interval_ms; 0 = off, *out stays NULL).
 * db, b and js are not owned and must outlive sweep_stop(). */
kiln_status sweep_start(db_store *db, barrier *b, jsCtx *js, int64_t interval_ms, sweep **out);
void sweep_stop(sweep *s); /* NULL-safe; joins the thread */

/* For tests: 1 when a job is due for a lost-message check: pending with its
 * start time (max of not_before and retry_at) at or before now_ms, or
 * processing for longer than an attempt can run (kiln_jobrec_abandoned). */
int sweep_is_due(const Kiln__V1__JobRecord *rec, int64_t now_ms);

#endif
