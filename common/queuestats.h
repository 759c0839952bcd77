/* queuestats.h - how much work waits where, read from JetStream's own
 * accounting (consumer and stream info): per priority lane, the jobs not yet
 * handed to a worker and those a worker holds; how far the store is behind;
 * how many dead letters there are. Used by `kiln stats` (producer/) and the
 * store's queue gauges (store/queuegauges.c). */
#ifndef KILN_QUEUESTATS_H
#define KILN_QUEUESTATS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stdint.h>

#include "status.h"

enum { KILN_LANE_HIGH, KILN_LANE_NORMAL, KILN_LANE_LOW, KILN_LANES };

/* One priority lane: its name ("high", "normal", "low"), its subject, its
 * worker durable and its Prometheus label (lane="high"). */
typedef struct {
    const char *name;
    const char *subject;
    const char *durable;
    const char *label;
} kiln_lane_info;

/* The lanes, indexed by KILN_LANE_*. */
extern const kiln_lane_info kiln_lanes[KILN_LANES];

typedef struct {
    bool present;              /* the durable exists (a consumer or store created it) */
    uint64_t waiting;          /* messages not yet delivered */
    int64_t held;              /* delivered and not yet acked: running, fetched, or handed
                                * back to wait for a delay or a retry */
    int64_t redelivered;       /* of held, delivered more than once */
    bool paused;               /* a lane paused with `kiln pause` (common/lanepause.h) */
    int64_t oldest_waiting_ms; /* lanes: how long the oldest waiting job has waited
                                * (since JetStream stored it); 0 when none waits */
} kiln_queue_durable;

typedef struct {
    kiln_queue_durable lanes[KILN_LANES]; /* the workers' durables */
    kiln_queue_durable store;             /* kiln-store: requests and transitions not yet applied */
    bool dead_present;                    /* stream KILN_DEAD exists */
    uint64_t dead_letters;                /* messages in KILN_DEAD */
} kiln_queue_stats;

/* Reads the figures, which lanes are paused and the oldest waiting job of
 * each lane that has one (nine to twelve JetStream API requests on nc, the
 * connection of js). A durable or stream that
 * does not exist yet is reported absent, not as an error; any other failure
 * returns its status (KILN_EUNAVAILABLE when JetStream does not answer). */
kiln_status kiln_queue_stats_read(natsConnection *nc, jsCtx *js, kiln_queue_stats *out);

#endif
