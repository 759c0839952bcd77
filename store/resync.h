/* resync.h - re-creates the store's durable (kiln-store) when nats-server
 * counts it past messages it never delivered to the store.
 *
 * Threads: one resync thread; resync_start/resync_stop from main. */
#ifndef STORE_RESYNC_H
#define STORE_RESYNC_H

#include <nats/nats.h>
#include <stdint.h>

#include "barrier.h"
#include "status.h"

typedef struct resync resync;

/* Starts the check (every interval_ms; 0 = off, *out stays NULL). b and js
 * are not owned and must outlive resync_stop(). */
kiln_status resync_start(barrier *b, jsCtx *js, int64_t interval_ms, resync **out);
void resync_stop(resync *r); /* NULL-safe; joins the thread */

/* For tests: the highest stream sequence the durable counts as handled
 * (acked, or delivered with nothing left unacked), given its consumer info's
 * figures. */
uint64_t resync_handled_upto(uint64_t delivered_seq, uint64_t ack_floor_seq, int64_t num_ack_pending);

#endif
