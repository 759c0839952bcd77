/* consumers.c - the client library's view of the running consumer
 * processes: one kiln.consumer.status request, every consumer answers
 * (consumer/status.c), the answers are gathered until they stop coming. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "clock.h"
#include "kiln_client.h"
#include "natsconn.h"
#include "subjects.h"

#define CONSUMERS_QUIET_MS 100 /* after an answer, wait this long for another */
#define CONSUMERS_MAX_MS 2000  /* the whole gathering at most */

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

kiln_status kiln_client_consumers(kiln_client *c, int64_t wait_ms, kiln_consumer_info *out,
                                  size_t max, size_t *n, size_t *answered) {
    if (c == NULL || n == NULL || answered == NULL || (out == NULL && max > 0)) return KILN_EINVAL;
    *n = 0;
    *answered = 0;
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    natsStatus s = natsInbox_Create(&inbox);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&sub, c->nc, inbox);
    if (s == NATS_OK)
        s = natsConnection_PublishRequest(c->nc, KILN_SUBJ_CONSUMER_STATUS, inbox, NULL, 0);
    int64_t start = kiln_mono_ms(), last = start;
    if (s == NATS_OK) s = natsConnection_FlushTimeout(c->nc, CONSUMERS_MAX_MS);
    while (s == NATS_OK) {
        int64_t now = kiln_mono_ms();
        int64_t until = *answered == 0 ? start + wait_ms : last + CONSUMERS_QUIET_MS;
        if (until > start + CONSUMERS_MAX_MS) until = start + CONSUMERS_MAX_MS;
        if (now >= until) break;
        natsMsg *m = NULL;
        natsStatus ns = natsSubscription_NextMsg(&m, sub, until - now);
        /* No responders: nats-server's answer when no consumer subscribes. */
        if (ns == NATS_TIMEOUT || ns == NATS_NO_RESPONDERS) break;
        if (ns != NATS_OK) {
            s = ns;
            break;
        }
        last = kiln_mono_ms();
        int len = natsMsg_GetDataLength(m);
        const char *data = natsMsg_GetData(m);
        Kiln__V1__ConsumerStatus *cs = kiln__v1__consumer_status__unpack(
            NULL, (size_t)(len > 0 ? len : 0), (const uint8_t *)(data != NULL ? data : ""));
        if (cs != NULL) {
            (*answered)++;
            if (*n < max) consumers_fill(cs, &out[(*n)++]);
            kiln__v1__consumer_status__free_unpacked(cs, NULL);
        }
        natsMsg_Destroy(m);
    }
    kiln_nats_unsubscribe(&sub);
    natsInbox_Destroy(inbox);
    if (*n > 1) qsort(out, *n, sizeof *out, consumers_by_id);
    return s == NATS_OK ? KILN_OK : kiln_nats_status(s);
}
