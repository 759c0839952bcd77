/* ackgate.h - a JetStream publish-ack handler whose calls end when its
 * connection is closed (see ackgate.c). common/natsconn.c puts one in front
 * of every ack handler given to kiln_nats_connect_opts and closes it in
 * kiln_nats_close. */
#ifndef KILN_ACKGATE_H
#define KILN_ACKGATE_H

#include <nats/nats.h>

typedef struct kiln_ackgate kiln_ackgate;

/* A new open gate in front of fn(…, arg); NULL when out of memory. It is
 * never freed: libnats may still call it after its connection is gone. */
kiln_ackgate *kiln_ackgate_open(jsPubAckHandler fn, void *arg);

/* The handler to give libnats, with the gate as its closure. */
void kiln_ackgate_on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *gate);

/* Names the JetStream context whose acks go through g. */
void kiln_ackgate_bind(kiln_ackgate *g, jsCtx *js);

/* Shuts the open gate bound to js (none: nothing to do) and returns once
 * no call of its handler is running; a later call only destroys its message.
 * Call it after jsCtx_Destroy(js); then what the handler uses may be freed. */
void kiln_ackgate_close(jsCtx *js);

#endif
