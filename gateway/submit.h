/* submit.h - POST /v1/jobs: validate, publish to JetStream asynchronously,
 * answer 202 only after the stream acknowledged the job. */
#ifndef GW_SUBMIT_H
#define GW_SUBMIT_H

#include <nats/nats.h>

#include "server.h"

/* Two connections to the same server, both with gw_submit_ack_handler:
 * submits publish on `fast` (SendAsap: written at once) while few are in
 * flight, and on `batched` (libnats' flusher writes what gathered, about
 * 1 ms later) under load. */
typedef struct {
    natsConnection *nc;
    jsCtx *js;
} gw_submit_conn;

kiln_status gw_submit_init(gw_submit_conn batched, gw_submit_conn fast,
                           int64_t publish_timeout_ms, int64_t store_timeout_ms);
/* Before the submit connections close: the ack sweep no longer touches them
 * and stops re-arming. */
void gw_submit_detach(void);
/* Answers 503 to every submit still waiting for an ack (after NATS closed). */
void gw_submit_fail_pending(void);
void gw_submit_free(void);
/* Submit publishes awaiting their JetStream ack (the metrics gauge). */
int gw_submit_unacked(void);

/* The jsPubAckHandler given to kiln_nats_connect_async (libnats thread). */
void gw_submit_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                           void *closure);

void gw_submit_handle(gw_req *r);

/* 1 when a Content-Type is application/json, optionally with charset=utf-8. */
int gw_submit_content_type_ok(const char *content_type);

#endif
