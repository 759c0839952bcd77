/* pull.h - pull requests to a JetStream durable driven over a plain inbox
 * subscription (nats.c 3.4.1's fetch can overrun its array: see pull.c), and
 * the acks of what they deliver. */
#ifndef KILN_PULL_H
#define KILN_PULL_H

#include <nats/nats.h>
#include <stdint.h>

#include "status.h"

typedef struct kiln_pull kiln_pull;

/* Subscribes a private inbox for pulls from stream/durable on nc (which must
 * outlive it). One thread uses a kiln_pull at a time. */
kiln_status kiln_pull_open(natsConnection *nc, const char *stream, const char *durable,
                           kiln_pull **out);
void kiln_pull_close(kiln_pull *p); /* NULL-safe */

/* Asks for up to batch messages and fills list (natsMsgList_Destroy frees
 * it). no_wait: the server answers at once with what is there; when nothing
 * is, it waits up to expires_ms for a first message (a long poll), or with
 * expires_ms 0 answers 404 at once. Late deliveries of earlier requests come
 * first and may make Count exceed batch.
 * An error with nothing delivered returns a status and an empty list. */
kiln_status kiln_pull_fetch(kiln_pull *p, int batch, int64_t expires_ms, natsMsgList *list);
/* kiln_pull_fetch that stops waiting after wait_ms even when the server's
 * request is still open (what it delivers later comes first next time).
 * Ending a long poll early this way, rather than with a shorter expiry,
 * keeps the server from expiring the request at the moment a message is
 * released to it: nats-server 2.9.10 then loses that delivery (it comes back
 * only after AckWait). */
kiln_status kiln_pull_fetch_wait(kiln_pull *p, int batch, int64_t expires_ms, int64_t wait_ms,
                                 natsMsgList *list);

/* When (monotonic ms) the last request that nats-server itself answered with
 * nothing (its 404, or 408 at expiry, and no message) was sent; 0 when none. */
int64_t kiln_pull_empty_sent_at(const kiln_pull *p);

/* The subject whose (empty, core NATS) messages end a kiln_pull_fetch
 * waiting on p at once: it returns what it has. A wake that finds no fetch
 * waiting ends the next one before it sends its request. Another thread can
 * publish it on any connection to the server, e.g. a callback's. */
const char *kiln_pull_wake_subject(const kiln_pull *p);
#define KILN_PULL_WAKE_SUBJECT_MAX 144 /* bytes, with the terminating NUL */

typedef enum { KILN_ACK, KILN_ACK_NAK, KILN_ACK_PROGRESS, KILN_ACK_TERM } kiln_ack_kind;

/* Acks (+ACK), naks (-NAK, delayed when nak_delay_ms > 0), extends (+WPI) or
 * terminates (+TERM) a delivery by publishing to its $JS.ACK reply on nc
 * (buffered connections batch these writes). */
kiln_status kiln_msg_ack(natsConnection *nc, natsMsg *m, kiln_ack_kind kind, int64_t nak_delay_ms);

#endif
