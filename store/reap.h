/* reap.h - frees the apply loop's finished messages in bursts.
 *
 * natsMsg_Destroy does not free a message: libnats queues it for its one
 * garbage-collector thread and wakes that thread whenever it is waiting.
 * Destroying each settled batch (~100 messages under W4) at once, the store
 * woke it nearly once per message: ~8 % of the store's CPU went to the
 * signalling and ~7 % to that thread. Destroyed thousands at a time, they
 * cost the store ~8 % less CPU per W4 submit (docs/design.md). The kept
 * messages are bounded by count and by bytes.
 *
 * One thread: the apply loop. */
#ifndef STORE_REAP_H
#define STORE_REAP_H

#include <nats/nats.h>

#include "status.h"

#define REAP_MAX_MSGS 4096
#define REAP_MAX_BYTES (4 * 1024 * 1024) /* payloads and headers kept at most */

typedef struct reap reap;

kiln_status reap_create(reap **out);
/* Destroys every kept message; NULL-safe. */
void reap_destroy(reap *r);

/* Takes list's messages (settled: acked or nak'd, never read again) and
 * leaves list empty; destroys the kept ones first when these would pass a
 * bound. */
void reap_take(reap *r, natsMsgList *list);

/* Messages kept now (tests). */
int reap_kept(const reap *r);

#endif
