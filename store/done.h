/* done.h - publishing a written batch's announcements: jobs.done and
 * kiln.events.* (JetStream) and kiln.cancelled.<id> (core NATS). */
#ifndef STORE_DONE_H
#define STORE_DONE_H

#include <nats/nats.h>
#include <stdint.h>

#include "apply.h"
#include "events.h"
#include "status.h"

/* The jsCtx async-publish ack handler (runs on a nats.c thread) for every
 * async publish of the store (jobs.done and events): counts failures for
 * done_failures() and destroys the message. */
void done_on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);
/* Async publishes JetStream rejected or timed out, since start. */
uint64_t done_failures(void);

/* Publishes every jobs.done item and every event asynchronously and waits
 * (≤ timeout_ms) for all their acks. KILN_OK only when JetStream
 * acknowledged every one. The apply thread is the only async publisher. */
kiln_status done_publish_batch(jsCtx *js, const apply_done_list *l, const events_list *ev,
                               int64_t timeout_ms);

/* Core NATS broadcast so a consumer running the job aborts it. */
kiln_status done_broadcast_cancelled(natsConnection *nc, const char *id);

#endif
