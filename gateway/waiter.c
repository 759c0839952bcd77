/* waiter.c - GET /v1/jobs/{id}?wait=N: suspended requests waiting for the
 * job's jobs.done event (core NATS subscription) or their deadline (timer
 * thread), without a thread each.
 *
 * The gateway subscribes to jobs.done only while ?wait is in use: from the
 * first park until KILN_WAIT_FEED_LINGER after the last one. Without waiters it
 * would receive every announcement for nothing (a message per job through
 * nats-server, and the gateway's CPU to drop it).
 *
 * A job can finish between the store's answer and the request being parked:
 * a set of recently announced ids closes that gap, for requests whose store
 * query left after the subscription (same connection, so nats-server had
 * the SUB first). A request whose query left before it asks the store again
 * instead of parking. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "map.h"
#include "metrics.h"
#include "query.h"
#include "subjects.h"
#include "timers.h"
#include "waiter.h"

#define WAITER_RECENT 65536        /* done ids remembered (~2 s at 30k jobs/s) */

typedef struct waiter_entry {
    struct waiter_entry *next; /* same id hash */
    uint64_t idhash;
    uint64_t token;
    gw_req *r;
} waiter_entry;

static pthread_mutex_t waiter_mu = PTHREAD_MUTEX_INITIALIZER;
static natsConnection *waiter_nc;
static bool waiter_closed;
static gw_map *waiter_by_token; /* token -> entry */
static gw_map *waiter_by_hash;  /* id hash -> chain of entries */
static uint64_t *waiter_recent; /* ring of announced id hashes (0: empty) */
static size_t waiter_recent_pos;
static gw_map *waiter_recent_count; /* id hash -> how often it is in the ring */
static natsSubscription *waiter_sub; /* NULL while nobody waits */
static int64_t waiter_sub_since_us;  /* kiln_mono_us() once its SUB was queued */
static int64_t waiter_last_park_ms;
static int64_t waiter_linger_ms;     /* the subscription outlives the last park by this */
static natsSubscription *waiter_retired; /* unsubscribed in its own callback, destroyed later */
static kiln_metric *waiter_m_subscribed;
static atomic_uint_fast64_t waiter_next_token = 1;

static uint64_t waiter_hash(const char *id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h != 0 ? h : 1;
}

/* Adds delta to h's count in the recent set. Caller holds waiter_mu. */
static void waiter_recent_adjust(uint64_t h, intptr_t delta)
{
    void **slot = gw_map_slot(waiter_recent_count, h);
    intptr_t n = (slot != NULL ? (intptr_t)*slot : 0) + delta;
    if (slot != NULL && n > 0) *slot = (void *)n;
    else if (slot != NULL) gw_map_take(waiter_recent_count, h);
    else if (n > 0 && gw_map_put(waiter_recent_count, h, (void *)n) != KILN_OK)
        LOG_WARN("waiter table out of memory");
}

/* Records h as announced, forgetting the oldest. Caller holds waiter_mu. */
static void waiter_recent_add(uint64_t h)
{
    uint64_t old = waiter_recent[waiter_recent_pos];
    if (old != 0) waiter_recent_adjust(old, -1);
    waiter_recent[waiter_recent_pos] = h;
    waiter_recent_pos = (waiter_recent_pos + 1) % WAITER_RECENT;
    waiter_recent_adjust(h, 1);
}

/* Unlinks e from its hash chain. Caller holds waiter_mu. */
static void waiter_unlink(waiter_entry *e)
{
    waiter_entry *head = gw_map_take(waiter_by_hash, e->idhash), *keep = NULL;
    while (head != NULL) {
        waiter_entry *next = head->next;
        if (head != e) {
            head->next = keep;
            keep = head;
        }
        head = next;
    }
    /* Re-inserting cannot fail for lack of memory only if a node is free;
     * gw_map_put allocates, so on failure the others are fired by timeout. */
    if (keep != NULL && gw_map_put(waiter_by_hash, e->idhash, keep) != KILN_OK)
        LOG_WARN("waiter table out of memory");
}

/* Retires the subscription when nobody waited for waiter_linger_ms: it is
 * unsubscribed here (in its own callback, which libnats allows) and
 * destroyed by the next subscribe or at shutdown. Caller holds waiter_mu. */
static void waiter_retire_idle_sub(void)
{
    if (waiter_sub == NULL || gw_map_size(waiter_by_token) > 0 ||
        kiln_mono_ms() - waiter_last_park_ms < waiter_linger_ms)
        return;
    natsSubscription_Unsubscribe(waiter_sub);
    natsSubscription_Destroy(waiter_retired);
    waiter_retired = waiter_sub;
    waiter_sub = NULL;
    kiln_metric_set(waiter_m_subscribed, 0);
    LOG_INFO("jobs.done feed stopped: nobody waits");
}

static void waiter_on_timeout(uint64_t token, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&waiter_mu);
    waiter_entry *e = waiter_by_token != NULL ? gw_map_take(waiter_by_token, token) : NULL;
    if (e != NULL) waiter_unlink(e);
    pthread_mutex_unlock(&waiter_mu);
    if (e == NULL) return;
    gw_query_refetch(e->r);
    free(e);
}

static void waiter_on_done(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc, (void)closure;
    const char *id = NULL;
    waiter_entry *fire = NULL;
    if (natsMsgHeader_Get(msg, KILN_HDR_JOB_ID, &id) != NATS_OK || id == NULL) goto out;
    uint64_t h = waiter_hash(id);
    pthread_mutex_lock(&waiter_mu);
    if (waiter_recent == NULL) {
        pthread_mutex_unlock(&waiter_mu);
        goto out;
    }
    waiter_recent_add(h);
    waiter_entry *head = gw_map_take(waiter_by_hash, h), *keep = NULL;
    while (head != NULL) {
        waiter_entry *next = head->next;
        if (strcmp(head->r->job_id, id) == 0) {
            gw_map_take(waiter_by_token, head->token);
            head->next = fire;
            fire = head;
        } else {
            head->next = keep;
            keep = head;
        }
        head = next;
    }
    if (keep != NULL && gw_map_put(waiter_by_hash, h, keep) != KILN_OK)
        LOG_WARN("waiter table out of memory");
    if (sub == waiter_sub) waiter_retire_idle_sub();
    pthread_mutex_unlock(&waiter_mu);
    while (fire != NULL) {
        waiter_entry *next = fire->next;
        gw_query_refetch(fire->r);
        free(fire);
        fire = next;
    }
out:
    natsMsg_Destroy(msg);
}

kiln_status gw_waiter_init(natsConnection *nc, int64_t linger_ms)
{
    waiter_linger_ms = linger_ms;
    kiln_status st = KILN_OK;
    waiter_recent = calloc(WAITER_RECENT, sizeof *waiter_recent);
    if (waiter_recent == NULL) return KILN_ENOMEM;
    if ((st = gw_map_create(4096, &waiter_by_token)) != KILN_OK) return st;
    if ((st = gw_map_create(4096, &waiter_by_hash)) != KILN_OK) return st;
    if ((st = gw_map_create(WAITER_RECENT, &waiter_recent_count)) != KILN_OK) return st;
    waiter_m_subscribed = kiln_metric_gauge(
        "kiln_gateway_done_feed", "1 while subscribed to jobs.done (some request used ?wait lately)");
    waiter_nc = nc;
    return KILN_OK;
}

/* Subscribes to jobs.done if not yet. Caller holds waiter_mu. */
static kiln_status waiter_subscribe(void)
{
    if (waiter_sub != NULL) return KILN_OK;
    natsSubscription_Destroy(waiter_retired); /* its callback has returned or holds its own ref */
    waiter_retired = NULL;
    natsStatus s = natsConnection_Subscribe(&waiter_sub, waiter_nc, KILN_SUBJ_DONE, waiter_on_done,
                                            NULL);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(waiter_sub, 1000000, 256 * 1024 * 1024);
    if (s != NATS_OK) {
        LOG_WARN("subscribe failed subject=%s err=%s", KILN_SUBJ_DONE, natsStatus_GetText(s));
        natsSubscription_Destroy(waiter_sub);
        waiter_sub = NULL;
        return KILN_EUNAVAILABLE;
    }
    /* Taken after the SUB was queued: a query that left later follows it. */
    waiter_sub_since_us = kiln_mono_us();
    kiln_metric_set(waiter_m_subscribed, 1);
    LOG_INFO("jobs.done feed started for ?wait");
    return KILN_OK;
}

kiln_status gw_waiter_park(gw_req *r)
{
    kiln_status st = KILN_OK;
    waiter_entry *e = NULL;
    uint64_t h = waiter_hash(r->job_id);
    bool recent = false, ask_again = false;
    pthread_mutex_lock(&waiter_mu);
    if (waiter_closed || waiter_by_token == NULL || gw_map_size(waiter_by_token) >= GW_WAITER_MAX) {
        st = KILN_EUNAVAILABLE;
        goto unlock;
    }
    waiter_last_park_ms = kiln_mono_ms();
    if ((st = waiter_subscribe()) != KILN_OK) goto unlock;
    /* The store answered a query that may have passed nats-server before
     * the SUB: an announcement in between would be missed. */
    ask_again = r->query_sent_us <= waiter_sub_since_us;
    recent = !ask_again && gw_map_slot(waiter_recent_count, h) != NULL;
    if (recent || ask_again) goto unlock;
    e = calloc(1, sizeof *e);
    if (e == NULL) {
        st = KILN_ENOMEM;
        goto unlock;
    }
    e->idhash = h;
    e->token = atomic_fetch_add(&waiter_next_token, 1);
    e->r = r;
    if ((st = gw_map_put(waiter_by_token, e->token, e)) != KILN_OK) goto unlock;
    waiter_entry *head = gw_map_take(waiter_by_hash, h);
    e->next = head;
    if ((st = gw_map_put(waiter_by_hash, h, e)) != KILN_OK) {
        gw_map_take(waiter_by_token, e->token);
        if (head != NULL && gw_map_put(waiter_by_hash, h, head) != KILN_OK)
            LOG_WARN("waiter table out of memory");
        goto unlock;
    }
    if ((st = gw_timers_add(r->wait_deadline_ms, waiter_on_timeout, e->token, NULL)) != KILN_OK) {
        gw_map_take(waiter_by_token, e->token);
        waiter_unlink(e);
        goto unlock;
    }
    e = NULL; /* owned by the tables */
unlock:
    pthread_mutex_unlock(&waiter_mu);
    free(e);
    if (st != KILN_OK) return st;
    /* Finished while its state was being read: fetch the final state now. */
    if (recent) gw_query_refetch(r);
    else if (ask_again) gw_query_again(r);
    return KILN_OK;
}

void gw_waiter_shutdown(void)
{
    pthread_mutex_lock(&waiter_mu);
    waiter_closed = true;
    natsSubscription *sub = waiter_sub, *retired = waiter_retired;
    waiter_sub = waiter_retired = NULL;
    pthread_mutex_unlock(&waiter_mu);
    if (sub != NULL) natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsSubscription_Destroy(retired);
    for (;;) {
        pthread_mutex_lock(&waiter_mu);
        waiter_entry *e = waiter_by_token != NULL ? gw_map_take_any(waiter_by_token, NULL) : NULL;
        if (e != NULL) waiter_unlink(e);
        pthread_mutex_unlock(&waiter_mu);
        if (e == NULL) break;
        gw_query_refetch(e->r);
        free(e);
    }
}

void gw_waiter_free(void)
{
    pthread_mutex_lock(&waiter_mu);
    gw_map_destroy(waiter_by_token);
    gw_map_destroy(waiter_by_hash);
    gw_map_destroy(waiter_recent_count);
    waiter_by_token = waiter_by_hash = waiter_recent_count = NULL;
    free(waiter_recent);
    waiter_recent = NULL;
    pthread_mutex_unlock(&waiter_mu);
}
