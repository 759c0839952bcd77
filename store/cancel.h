/* cancel.h - cancellation through the stream: the request threads publish
 * the store's CANCELLED transition on kiln.tx and the apply loop writes it,
 * so the apply loop stays the only writer of job states. */
#ifndef STORE_CANCEL_H
#define STORE_CANCEL_H

#include <nats/nats.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "status.h"

/* Publishes JobTransition{CANCELLED, attempt = rec's attempts, at_ms = now,
 * error cancelled, request = rec's request} on kiln.tx (JetStream, sync,
 * Nats-Msg-Id "<id>.cancel") and sets *seq to its KILN_JOBS sequence (the
 * original one when the stream dropped it as a duplicate). */
kiln_status cancel_publish(jsCtx *js, const Kiln__V1__JobRecord *rec, uint64_t *seq);

#endif
