/* consumerstatus.h - asking every running consumer process for its
 * ConsumerStatus (kiln.consumer.status, core NATS; consumer/status.c
 * answers): `kiln stats` lists them, and each consumer counts the others to
 * take its share of KILN_PROVIDER_RATE. */
#ifndef KILN_CONSUMERSTATUS_H
#define KILN_CONSUMERSTATUS_H

#include <nats/nats.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "status.h"

#define KILN_CONSUMERS_QUIET_MS 100 /* after an answer, wait this long for another */
#define KILN_CONSUMERS_MAX_MS 2000  /* the whole gathering at most */

/* Called for each answer that decodes (cs is freed after it returns). */
typedef void (*kiln_consumer_status_fn)(const Kiln__V1__ConsumerStatus *cs, void *arg);

/* Publishes one request on nc and calls fn for each answer: waits up to
 * wait_ms for the first, then until KILN_CONSUMERS_QUIET_MS pass without a
 * new one and at least min_ms in all, KILN_CONSUMERS_MAX_MS at most. KILN_OK
 * also when none answers (nats-server's no-responders ends the wait at
 * once); a NATS failure returns its status (the answers before it were
 * passed to fn). */
kiln_status kiln_consumer_status_gather(natsConnection *nc, int64_t wait_ms, int64_t min_ms,
                                        kiln_consumer_status_fn fn, void *arg);

#endif
