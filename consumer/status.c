/* status.c - answers kiln.consumer.status (core NATS; every consumer
 * process subscribes, so one request gathers them all) with this process's
 * ConsumerStatus: slots, provider gate, paused lanes, outcome counts. Read
 * by `kiln stats` (producer/consumers.c). The callback runs on a libnats
 * thread and only reads state other modules keep.
 *
 * With KILN_PROVIDER_RATE set, the same answers tell this process its share
 * of that deployment-wide rate: its concurrency's part of all running
 * consumers' (asked at start and every STATUS_SHARE_EVERY_MS). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "cons.h"
#include "consumerstatus.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "periodic.h"
#include "queuestats.h"
#include "sha256.h"
#include "subjects.h"
#include "uuid7.h"

#define STATUS_SHARE_EVERY_MS 5000 /* how often the rate share is worked out again */
#define STATUS_SHARE_WAIT_MS 500   /* how long to wait for a first answer */
/* Gather at least this long: the own answer comes first, and a peer slowed
 * by load past the 100 ms quiet window would take the whole rate for a round. */
#define STATUS_SHARE_MIN_MS 300

static natsSubscription *status_sub;
static char status_id[320];
static char status_provider_key[2 * 8 + 1]; /* hex of SHA-256(KILN_PROVIDER_URL)[0..8) */
static int64_t status_started_ms;
static kiln_periodic *status_share_timer;
static _Atomic double status_rate_share; /* the steady rate in effect (0: none) */

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
        cs.provider_rate_per_s = atomic_load(&status_rate_share);
        cs.provider_key = status_provider_key;
        cs.provider_rate_configured = cons_g.set->provider_rate;
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

double cons_status_rate_share(double rate, int64_t mine, int64_t all) {
    if (rate <= 0 || mine <= 0 || all <= mine) return rate;
    return rate * (double)mine / (double)all;
}

typedef struct {
    int64_t concurrency; /* of every consumer that answered, this one included */
    int answers;
    bool self_seen;
} status_census;

/* Counts the consumers of this one's rate group: the same provider and
 * the same KILN_PROVIDER_RATE (a consumer without a rate, or of an older
 * version, shares nothing). */
static void status_count(const Kiln__V1__ConsumerStatus *cs, void *arg) {
    status_census *c = arg;
    if (cs->provider_key == NULL || strcmp(cs->provider_key, status_provider_key) != 0 ||
        cs->provider_rate_configured != cons_g.set->provider_rate)
        return;
    c->answers++;
    if (cs->concurrency > 0) c->concurrency += cs->concurrency;
    if (cs->id != NULL && strcmp(cs->id, status_id) == 0) c->self_seen = true;
}

/* Works out this process's share of KILN_PROVIDER_RATE from who answers. */
static void status_share(void) {
    status_census census = {0};
    kiln_status st = kiln_consumer_status_gather(cons_g.nc, STATUS_SHARE_WAIT_MS,
                                                 STATUS_SHARE_MIN_MS, status_count, &census);
    if (st != KILN_OK) {
        LOG_DEBUG("rate share: consumers not asked, keeping the share status=%s",
                  kiln_status_str(st));
        return;
    }
    int64_t mine = cons_g.set->concurrency;
    if (!census.self_seen) {
        census.concurrency += mine;
        census.answers++;
    }
    double share = cons_status_rate_share(cons_g.set->provider_rate, mine, census.concurrency);
    if (share == atomic_load(&status_rate_share)) return;
    atomic_store(&status_rate_share, share);
    cons_gate_share_rate(share);
    LOG_INFO("provider rate share rate_per_s=%g of KILN_PROVIDER_RATE=%g consumers=%d "
             "concurrency=%lld of %lld",
             share, cons_g.set->provider_rate, census.answers, (long long)mine,
             (long long)census.concurrency);
}

static void status_share_tick(kiln_periodic *p, void *arg) {
    (void)p;
    (void)arg;
    status_share();
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
    atomic_store(&status_rate_share, cons_g.set->provider_rate);
    uint8_t digest[KILN_SHA256_LEN];
    const char *url = cons_g.set->provider_url;
    if (kiln_sha256(url, strlen(url), digest) != KILN_OK) memset(digest, 0, sizeof digest);
    for (int i = 0; i < 8; i++)
        snprintf(status_provider_key + 2 * i, 3, "%02x", digest[i]);
    natsStatus s = natsConnection_Subscribe(&status_sub, cons_g.nc, KILN_SUBJ_CONSUMER_STATUS,
                                            status_on_request, NULL);
    if (s != NATS_OK) {
        LOG_ERROR("status subscribe failed status=%s", natsStatus_GetText(s));
        status_sub = NULL;
        return kiln_nats_status(s);
    }
    if (cons_g.set->provider_rate <= 0) return KILN_OK;
    status_share(); /* before the first call: the others may be running already */
    return kiln_periodic_start("kiln-rateshare", STATUS_SHARE_EVERY_MS, status_share_tick, NULL,
                               &status_share_timer);
}

const char *cons_status_id(void) { return status_id; }

void cons_status_stop(void) {
    kiln_periodic_stop(status_share_timer);
    status_share_timer = NULL;
    kiln_nats_unsubscribe(&status_sub);
}
