/* queuegauges.h - the store's queue-depth gauges on /metrics: per lane the
 * jobs waiting for a worker, how long the oldest has waited and the jobs
 * workers hold, the store's own lag and
 * the dead letters, read from JetStream (common/queuestats.h) every
 * KILN_QUEUE_STATS_INTERVAL. The store exports them because one store runs
 * per deployment: the figures appear once, however many consumers and
 * gateways there are.
 *
 * Threads: one periodic thread; queuegauges_start/_stop from main. */
#ifndef STORE_QUEUEGAUGES_H
#define STORE_QUEUEGAUGES_H

#include <nats/nats.h>
#include <stdint.h>

#include "status.h"

typedef struct queuegauges queuegauges;

/* Reads the figures once, then every interval_ms on a thread of its own
 * (0 = off: *out stays NULL and no gauge is registered). nc and js (nc's
 * JetStream context) are not owned and must outlive queuegauges_stop(). */
kiln_status queuegauges_start(natsConnection *nc, jsCtx *js, int64_t interval_ms,
                              queuegauges **out);
void queuegauges_stop(queuegauges *g); /* NULL-safe; joins the thread */

#endif
