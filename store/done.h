/* done.h - publishing jobs.done (JetStream) and kiln.cancelled.<id> (core NATS). */
#ifndef STORE_DONE_H
#define STORE_DONE_H

#include <nats/nats.h>
#include <stdint.h>

#include "apply.h"
#include "status.h"

/* The jsCtx async-publish ack handler (runs on a nats.c thread): counts
 * failures for done_failures() and destroys the message. */
void done_on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);
/* Async publishes JetStream rejected or timed out, since start. */
uint64_t done_failures(void);

/* Publishes every item asynchronously and waits (≤ timeout_ms) for all acks.
 * KILN_OK only when JetStream acknowledged every one. */
kiln_status done_publish_batch(jsCtx *js, const apply_done_list *l, int64_t timeout_ms);

/* Publishes one item and waits for its ack (request threads: cancel). */
kiln_status done_publish_one(jsCtx *js, const apply_done *d);

/* Core NATS broadcast so a consumer running the job aborts it. */
kiln_status done_broadcast_cancelled(natsConnection *nc, const char *id);

#endif
