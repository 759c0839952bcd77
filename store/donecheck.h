/* donecheck.h - after a reconnect to NATS, makes sure the announcements
 * the store published shortly before (jobs.done, and the events on each
 * job's subject) are still in their streams, and publishes again those
 * nats-server lost.
 *
 * Threads: donecheck_keep runs on nats.c's publish-ack thread; one
 * "kiln-donecheck" thread checks; create, start, stop and destroy from main. */
#ifndef STORE_DONECHECK_H
#define STORE_DONECHECK_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "status.h"

typedef struct donecheck donecheck;

/* Keeps the announcements confirmed within keep_ms before the latest one,
 * at most cap of them. *out only on success. */
kiln_status donecheck_create(int64_t keep_ms, size_t cap, donecheck **out);
/* Keeps a copy of the payload of msg, a publish JetStream confirmed at
 * sequence seq, when it is a jobs.done or an event on a job's own subject
 * (msg stays the caller's; anything else is ignored). */
void donecheck_keep(donecheck *dc, natsMsg *msg, uint64_t seq);
/* Starts the thread that checks, after every reconnect of the process, the
 * announcements kept from before it: a jobs.done its stream no longer holds
 * at its sequence is published again (same Nats-Msg-Id) on js; such an
 * event, when the job's record in db still says what it announced. db and
 * js (on nc) must outlive donecheck_stop(). */
kiln_status donecheck_start(donecheck *dc, db_store *db, natsConnection *nc, jsCtx *js);
/* Joins the thread, then finishes what a reconnect left to check (up to 5 s,
 * waiting while nc reconnects: kiln_pubcheck_stop). NULL-safe. */
void donecheck_stop(donecheck *dc);
/* Frees what is kept; after the connection whose acks feed it is closed. */
void donecheck_destroy(donecheck *dc); /* NULL-safe */

#endif
