/* resubmit.h - after a reconnect to NATS, makes sure the jobs the gateway
 * answered 202 for shortly before are still known (in KILN_JOBS or to the
 * store), and publishes again each one nats-server lost.
 *
 * Threads: gw_resubmit_keep runs on nats.c's publish-ack threads; one
 * "kiln-resubmit" thread checks; create, start, stop and destroy from main. */
#ifndef GW_RESUBMIT_H
#define GW_RESUBMIT_H

#include <nats/nats.h>
#include <stdint.h>

#include "status.h"

typedef struct gw_resubmit gw_resubmit;

/* *out only on success. */
kiln_status gw_resubmit_create(gw_resubmit **out);
/* Keeps a copy of msg's payload, a submit JetStream confirmed at KILN_JOBS
 * sequence seq (msg stays the caller's). */
void gw_resubmit_keep(gw_resubmit *rs, natsMsg *msg, uint64_t seq);
/* Starts the checking thread: look-ups and publishes on js, the store asked
 * (jobs.status) on qnc. Both must outlive gw_resubmit_stop(). */
kiln_status gw_resubmit_start(gw_resubmit *rs, jsCtx *js, natsConnection *qnc);
void gw_resubmit_stop(gw_resubmit *rs); /* NULL-safe; joins the thread */
/* Frees what is kept; after the connections whose acks feed it are closed. */
void gw_resubmit_destroy(gw_resubmit *rs); /* NULL-safe */

#endif
