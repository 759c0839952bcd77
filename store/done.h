/* done.h - publishing a written batch's announcements: jobs.done and
 * kiln.events.* (JetStream) and kiln.cancelled.<id> (core NATS). */
#ifndef STORE_DONE_H
#define STORE_DONE_H

#include <nats/nats.h>
#include <stdatomic.h>
#include <stdint.h>

#include "apply.h"
#include "events.h"
#include "status.h"

/* The jsCtx async-publish ack handler (runs on a nats.c thread) for every
 * async publish of the store (jobs.done and events): counts failures for
 * done_failures(), keeps a failed message for done_republish_refused(),
 * shows a confirmed one to the donecheck given as closure (when not NULL)
 * and destroys the others. */
void done_on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);
/* Async publishes JetStream rejected or timed out, since start. */
uint64_t done_failures(void);
/* Publishes again (async; done_wait confirms) every message JetStream
 * refused or did not confirm since the last call, and forgets them; with js
 * NULL only forgets them. Returns how many there were. Apply thread. */
size_t done_republish_refused(jsCtx *js);

/* Builds the jobs.done message of d (caller destroys it). */
kiln_status done_message(const apply_done *d, natsMsg **out);

/* Publishes every jobs.done item and every event asynchronously without
 * waiting; done_wait() then confirms them. Returns KILN_OK when every
 * publish was handed to the library. The apply thread is the only async
 * publisher, and publishes one batch's outputs only after the previous
 * batch's were confirmed, so done_wait() covers exactly this batch. */
kiln_status done_publish_async(jsCtx *js, const apply_done_list *l, const events_list *ev);

/* Waits (≤ timeout_ms) for the acks of everything published async so far.
 * failed0 is done_failures() read before those publishes. KILN_OK only when
 * JetStream acknowledged every one. Once *stop (may be NULL) is set, it
 * waits at most one second more: a store stopping with NATS down must not
 * sit out the whole timeout (the batch, unacked, is redelivered). */
kiln_status done_wait(jsCtx *js, uint64_t failed0, int64_t timeout_ms, const atomic_bool *stop);

/* Core NATS broadcast so a consumer running the job aborts it. */
kiln_status done_broadcast_cancelled(natsConnection *nc, const char *id);

#endif
