/* donecheck.h - after a reconnect to NATS, makes sure the jobs.done the
 * store published shortly before are still in KILN_DONE, and announces
 * again each one nats-server lost.
 *
 * Threads: donecheck_keep runs on nats.c's publish-ack thread; one
 * "kiln-donecheck" thread checks; create, start, stop and destroy from main. */
#ifndef STORE_DONECHECK_H
#define STORE_DONECHECK_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct donecheck donecheck;

/* Keeps the jobs.done confirmed within keep_ms before the latest one, at
 * most cap of them. *out only on success. */
kiln_status donecheck_create(int64_t keep_ms, size_t cap, donecheck **out);
/* Keeps a copy of the payload of msg, a jobs.done JetStream confirmed at
 * KILN_DONE sequence seq (msg stays the caller's). */
void donecheck_keep(donecheck *dc, natsMsg *msg, uint64_t seq);
/* Starts the thread that checks, after every reconnect of the process, the
 * jobs.done kept from before it: those KILN_DONE no longer holds at their
 * sequence are published again (same Nats-Msg-Id) on js, which must outlive
 * donecheck_stop(). */
kiln_status donecheck_start(donecheck *dc, jsCtx *js);
void donecheck_stop(donecheck *dc); /* NULL-safe; joins the thread */
/* Frees what is kept; after the connection whose acks feed it is closed. */
void donecheck_destroy(donecheck *dc); /* NULL-safe */

#endif
