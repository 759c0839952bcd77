/* queries.h - the store's request/reply handlers (queue group kiln-store):
 * kiln.store.{get,list,viewed,cancel,check,ping,idem} with StoreRequest/StoreReply,
 * and the public jobs.status and jobs.cancel (CONTRACT §4).
 *
 * Threads: nats.c calls each subscription's handler on that subscription's
 * own thread; several subscriptions per busy subject let queries that wait
 * on the barrier not hold up the others. */
#ifndef STORE_QUERIES_H
#define STORE_QUERIES_H

#include <nats/nats.h>

#include "barrier.h"
#include "db.h"
#include "status.h"

typedef struct queries queries;

/* Subscribes every handler. db, b, nc and js must outlive queries_stop(). */
kiln_status queries_start(db_store *db, barrier *b, natsConnection *nc, jsCtx *js, queries **out);

/* Drains every subscription (waits for handlers in flight) and frees. NULL-safe. */
void queries_stop(queries *q);
/* Starts the drain queries_stop waits for, so that its deadline runs
 * beside other stop steps (NULL-safe; queries_stop calls it if need be). */
void queries_stop_soon(queries *q);

#endif
