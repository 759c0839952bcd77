/* resubmit.h - after a reconnect to NATS, makes sure the jobs a process
 * submitted (and was told were stored) shortly before are still known (in
 * KILN_JOBS or to the store), and publishes again each one nats-server lost.
 * The gateway's accepted submits and the client library's submits use it.
 *
 * Threads: kiln_resubmit_keep runs on nats.c's publish-ack threads (or the
 * submitting thread); one checking thread; create, start, stop and destroy
 * from the owner's thread. */
#ifndef KILN_RESUBMIT_H
#define KILN_RESUBMIT_H

#include <nats/nats.h>
#include <stdint.h>

#include "metrics.h"
#include "status.h"

typedef struct kiln_resubmit kiln_resubmit;

/* The checking thread is called thread_name (at most 15 characters).
 * checked and again (either may be NULL) count the submits looked up after
 * a reconnect and those published again. *out only on success. */
kiln_status kiln_resubmit_create(const char *thread_name, kiln_metric *checked, kiln_metric *again,
                                 kiln_resubmit **out);
/* Keeps a copy of msg's payload, a submit JetStream confirmed at KILN_JOBS
 * sequence seq (msg stays the caller's). Messages to other subjects than
 * the lanes' are not kept. */
void kiln_resubmit_keep(kiln_resubmit *rs, natsMsg *msg, uint64_t seq);
/* Starts the checking thread: look-ups and publishes on js, the store asked
 * (jobs.status) on qnc. Both must outlive kiln_resubmit_stop(). */
kiln_status kiln_resubmit_start(kiln_resubmit *rs, jsCtx *js, natsConnection *qnc);
/* Joins the thread, then finishes what a reconnect left to check (up to
 * 5 s, waiting while qnc reconnects: kiln_pubcheck_stop). NULL-safe. */
void kiln_resubmit_stop(kiln_resubmit *rs);
/* Frees what is kept; after the connections whose acks feed it are closed. */
void kiln_resubmit_destroy(kiln_resubmit *rs); /* NULL-safe */

#endif
