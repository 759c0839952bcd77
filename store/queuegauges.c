/* queuegauges.c - queue depths from JetStream as gauges. */
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "periodic.h"
#include "queuegauges.h"
#include "queuestats.h"

struct queuegauges {
    natsConnection *nc;
    jsCtx *js;
    kiln_periodic *timer;
    kiln_metric *waiting[KILN_LANES], *held[KILN_LANES], *redelivered[KILN_LANES],
        *paused[KILN_LANES], *oldest[KILN_LANES];
    kiln_metric *unapplied, *dead, *errors;
    kiln_status last; /* the previous read's outcome: log a change only */
};

static void queuegauges_read(queuegauges *g) {
    kiln_queue_stats qs;
    kiln_status st = kiln_queue_stats_read(g->nc, g->js, &qs);
    if (st != KILN_OK) {
        /* The gauges keep their last values; the counter tells they are stale. */
        kiln_metric_add(g->errors, 1);
        if (g->last == KILN_OK) LOG_WARN("queue depths unreadable status=%s", kiln_status_str(st));
        g->last = st;
        return;
    }
    if (g->last != KILN_OK) LOG_INFO("queue depths readable again");
    g->last = KILN_OK;
    for (int i = 0; i < KILN_LANES; i++) {
        kiln_metric_set(g->waiting[i], (int64_t)qs.lanes[i].waiting);
        kiln_metric_set(g->held[i], qs.lanes[i].held);
        kiln_metric_set(g->redelivered[i], qs.lanes[i].redelivered);
        kiln_metric_set(g->paused[i], qs.lanes[i].paused ? 1 : 0);
        kiln_metric_set(g->oldest[i], qs.lanes[i].oldest_waiting_ms);
    }
    kiln_metric_set(g->unapplied, (int64_t)qs.store.waiting + qs.store.held);
    kiln_metric_set(g->dead, (int64_t)qs.dead_letters);
}

static void queuegauges_tick(kiln_periodic *p, void *arg) {
    (void)p;
    queuegauges_read(arg);
}

kiln_status queuegauges_start(natsConnection *nc, jsCtx *js, int64_t interval_ms,
                              queuegauges **out) {
    *out = NULL;
    if (interval_ms <= 0) return KILN_OK;
    queuegauges *g = calloc(1, sizeof *g);
    if (g == NULL) return KILN_ENOMEM;
    g->nc = nc;
    g->js = js;
    for (int i = 0; i < KILN_LANES; i++) {
        g->waiting[i] = kiln_metric_gauge_labeled(
            "kiln_queue_waiting", kiln_lanes[i].label,
            "jobs in the lane not yet handed to a worker (JetStream's pending count)");
        g->held[i] = kiln_metric_gauge_labeled(
            "kiln_queue_held", kiln_lanes[i].label,
            "jobs a worker holds: running, fetched, or waiting for a delay or retry");
        g->redelivered[i] =
            kiln_metric_gauge_labeled("kiln_queue_redelivered", kiln_lanes[i].label,
                                      "of the held jobs, those delivered more than once");
        g->paused[i] = kiln_metric_gauge_labeled("kiln_queue_paused", kiln_lanes[i].label,
                                                 "1 while the lane is paused (kiln pause)");
        g->oldest[i] = kiln_metric_gauge_labeled(
            "kiln_queue_oldest_waiting_ms", kiln_lanes[i].label,
            "how long the lane's oldest waiting job has waited (0: none waits)");
    }
    g->unapplied = kiln_metric_gauge("kiln_store_unapplied_messages",
                                     "job requests and transitions the store has not yet applied");
    g->dead = kiln_metric_gauge("kiln_dead_letters", "messages in KILN_DEAD (jobs.dead)");
    g->errors = kiln_metric_counter("kiln_queue_stats_errors_total",
                                    "queue depth reads that failed (the gauges kept older values)");
    queuegauges_read(g);
    if (kiln_periodic_start("kiln-queuestats", interval_ms, queuegauges_tick, g, &g->timer) !=
        KILN_OK) {
        free(g);
        return KILN_ERR;
    }
    *out = g;
    return KILN_OK;
}

void queuegauges_stop(queuegauges *g) {
    if (g == NULL) return;
    kiln_periodic_stop(g->timer);
    free(g);
}
