/* client_internal.h - what the client library's files share (kiln_client.c,
 * deadletters.c); not part of the public API. */
#ifndef KILN_CLIENT_INTERNAL_H
#define KILN_CLIENT_INTERNAL_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "resubmit.h"

struct kiln_client {
    natsConnection *nc;
    jsCtx *js;
    /* Updated from nats.c's async-ack thread, read by flush callers. */
    atomic_uint_fast64_t async_failed;
    /* Async submits awaiting their ack, and the mono ms of the last ack (or
     * of the first submit after none was awaited): see client_give_up_stale. */
    atomic_int_fast64_t async_unacked;
    atomic_int_fast64_t async_progress_ms;
    /* Shared around every async publish, exclusive while stale ones are
     * taken back: nats.c lists a publish as pending before writing it out. */
    pthread_rwlock_t async_sending;
    /* Confirmed submits, checked after a reconnect (common/resubmit.c). */
    kiln_resubmit *resubmit;
};

/* Writes a sentence into err (NULL-safe). */
void client_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The last nats.c error text for this thread, or the status text. */
const char *client_nats_text(natsStatus s);

#endif
