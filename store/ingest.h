/* ingest.h - the apply thread: pulls KILN_JOBS through the durable
 * kiln-store, applies each fetched batch in one RocksDB write, announces
 * terminal states on jobs.done and every change on kiln.events.*, then acks
 * the batch. */
#ifndef STORE_INGEST_H
#define STORE_INGEST_H

#include <nats/nats.h>

#include "barrier.h"
#include "db.h"
#include "status.h"

typedef struct ingest ingest;

/* Pulls through pull_nc (a connection with SendAsap, so a fetch request
 * leaves at once; common/pull.c) and starts the thread "kiln-apply". nc/js (a
 * buffered connection) carry the acks and the jobs.done/events publishes.
 * The caller keeps everything alive until ingest_stop(). */
kiln_status ingest_start(db_store *db, natsConnection *pull_nc, natsConnection *nc, jsCtx *js,
                         barrier *b, ingest **out);

/* Stops fetching, lets the current batch finish, joins the thread and
 * frees everything. NULL-safe. */
/* Asks the apply loop to finish its batch and stop, without waiting: its
 * wind-down (with NATS down, up to a second waiting for acks) then overlaps
 * the caller's other shutdown steps. ingest_stop() joins it. */
void ingest_stop_soon(ingest *ing);
void ingest_stop(ingest *ing);

#endif
