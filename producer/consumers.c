/* consumers.c - the client library's view of the running consumer
 * processes (common/consumerstatus.c gathers their answers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "consumerstatus.h"
#include "kiln_client.h"

static void consumers_fill(const Kiln__V1__ConsumerStatus *cs, kiln_consumer_info *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->id, sizeof o->id, "%s", cs->id != NULL ? cs->id : "");
    o->started_at_ms = cs->started_at_ms;
    o->concurrency = cs->concurrency;
    o->in_flight = cs->in_flight;
    snprintf(o->provider, sizeof o->provider, "%s", cs->provider != NULL ? cs->provider : "");
    o->provider_rate_per_s = cs->provider_rate_per_s;
    for (size_t k = 0; k < cs->n_paused_lanes; k++)
        for (int i = 0; i < KILN_LANES; i++)
            if (cs->paused_lanes[k] != NULL && strcmp(cs->paused_lanes[k], kiln_lanes[i].name) == 0)
                o->lane_paused[i] = true;
    o->jobs_completed = cs->jobs_completed;
    o->jobs_failed = cs->jobs_failed;
    o->jobs_retried = cs->jobs_retried;
}

static int consumers_by_id(const void *a, const void *b) {
    return strcmp(((const kiln_consumer_info *)a)->id, ((const kiln_consumer_info *)b)->id);
}

typedef struct {
    kiln_consumer_info *out;
    size_t max, n, answered;
} consumers_list;

static void consumers_take(const Kiln__V1__ConsumerStatus *cs, void *arg) {
    consumers_list *l = arg;
    l->answered++;
    if (l->n < l->max) consumers_fill(cs, &l->out[l->n++]);
}

kiln_status kiln_client_consumers(kiln_client *c, int64_t wait_ms, kiln_consumer_info *out,
                                  size_t max, size_t *n, size_t *answered) {
    if (c == NULL || n == NULL || answered == NULL || (out == NULL && max > 0)) return KILN_EINVAL;
    consumers_list l = {.out = out, .max = max};
    kiln_status st = kiln_consumer_status_gather(c->nc, wait_ms, 0, consumers_take, &l);
    if (l.n > 1) qsort(out, l.n, sizeof *out, consumers_by_id);
    *n = l.n;
    *answered = l.answered;
    return st;
}
