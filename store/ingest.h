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

/* Binds the pull subscription and starts the thread "kiln-apply". The
 * caller keeps db, nc, js and b alive until ingest_stop(). */
kiln_status ingest_start(db_store *db, natsConnection *nc, jsCtx *js, barrier *b, ingest **out);

/* Stops fetching, lets the current batch finish, joins the thread and
 * frees everything. NULL-safe. */
void ingest_stop(ingest *ing);

#endif
