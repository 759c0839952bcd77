/* status.c - answers kiln.consumer.status (core NATS; every consumer
 * process subscribes, so one request gathers them all) with this process's
 * ConsumerStatus: slots, provider gate, paused lanes, outcome counts. Read
 * by `kiln stats` (producer/consumers.c). The callback runs on a libnats
 * thread and only reads state other modules keep. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "queuestats.h"
#include "subjects.h"
#include "uuid7.h"

static natsSubscription *status_sub;
static char status_id[320];
static int64_t status_started_ms;

static void status_on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                              void *closure) {
    (void)sub;
    (void)closure;
    const char *reply = natsMsg_GetReply(msg);
    if (reply != NULL && reply[0] != '\0') {
        Kiln__V1__ConsumerStatus cs = KILN__V1__CONSUMER_STATUS__INIT;
        char *paused[KILN_LANES];
        size_t npaused = 0;
        for (int i = 0; i < KILN_LANES; i++)
            if (cons_pause_lane(i)) paused[npaused++] = (char *)kiln_lanes[i].name;
        cs.id = status_id;
        cs.started_at_ms = status_started_ms;
        cs.concurrency = cons_g.set->concurrency;
        cs.in_flight = cons_slots_used();
        cs.provider = (char *)cons_gate_state_name();
        cs.provider_rate_per_s = cons_g.set->provider_rate;
        cs.n_paused_lanes = npaused;
        cs.paused_lanes = paused;
        cs.jobs_completed = kiln_metric_value(cons_g.m_completed);
        cs.jobs_failed = kiln_metric_value(cons_g.m_failed);
        cs.jobs_retried = kiln_metric_value(cons_g.m_retried);
        uint8_t *buf = NULL;
        size_t len = 0;
        if (kiln_pb_pack((const ProtobufCMessage *)&cs, &buf, &len) == KILN_OK) {
            natsStatus s = natsConnection_Publish(nc, reply, buf, (int)len);
            if (s != NATS_OK) LOG_DEBUG("status reply failed status=%s", natsStatus_GetText(s));
        }
        free(buf);
    }
    natsMsg_Destroy(msg);
}

kiln_status cons_status_start(void) {
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "?");
    /* host:pid repeats across containers that share a host name (pid 1
     * each): a random tail keeps every process apart. */
    char u[KILN_UUID_STRLEN + 1] = "";
    if (kiln_uuid7(u) != KILN_OK) snprintf(u, sizeof u, "0000000000000000");
    snprintf(status_id, sizeof status_id, "%s:%ld:%s", host, (long)getpid(), u + strlen(u) - 8);
    status_started_ms = kiln_now_ms();
    natsStatus s = natsConnection_Subscribe(&status_sub, cons_g.nc, KILN_SUBJ_CONSUMER_STATUS,
                                            status_on_request, NULL);
    if (s != NATS_OK) {
        LOG_ERROR("status subscribe failed status=%s", natsStatus_GetText(s));
        status_sub = NULL;
        return kiln_nats_status(s);
    }
    return KILN_OK;
}

void cons_status_stop(void) {
    kiln_nats_unsubscribe(&status_sub);
}
