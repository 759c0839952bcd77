/* resync.h - re-creates the store's durable (kiln-store) when nats-server
 * counts it past messages it never delivered to the store.
 *
 * Threads: one resync thread; resync_start/resync_stop from main. */
#ifndef STORE_RESYNC_H
#define STORE_RESYNC_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stdint.h>

#include "barrier.h"
#include "status.h"

typedef struct resync resync;

/* Starts the check (every interval_ms; 0 = off, *out stays NULL). b and js
 * are not owned and must outlive resync_stop(). */
kiln_status resync_start(barrier *b, jsCtx *js, int64_t interval_ms, resync **out);
void resync_stop(resync *r); /* NULL-safe; joins the thread */

/* One look at the store's durable (its consumer info) and, read after it,
 * the apply loop's progress. */
typedef struct {
    uint64_t delivered_seq;
    int64_t num_pending;     /* messages it has not delivered yet */
    int64_t num_ack_pending;
    uint64_t applied_seq;
    uint64_t fetch_epoch, idle_epoch; /* barrier_epochs */
} resync_look;

/* For tests: true when, between two looks, the durable counted messages
 * pending at both, delivered nothing and had nothing unacked, the store
 * applied nothing, and a fetch begun after the first look came back empty:
 * nats-server answers the store's fetches with nothing while it holds
 * messages for it. */
bool resync_pending_stuck(const resync_look *prev, const resync_look *cur);

/* For tests: the highest stream sequence the durable counts as handled
 * (acked, or delivered with nothing left unacked), given its consumer info's
 * figures. */
uint64_t resync_handled_upto(uint64_t delivered_seq, uint64_t ack_floor_seq, int64_t num_ack_pending);

#endif
