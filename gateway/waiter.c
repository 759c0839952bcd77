/* waiter.c - GET /v1/jobs/{id}?wait=N: suspended requests waiting for the
 * job's jobs.done event (core NATS subscription) or their deadline (timer
 * thread), without a thread each.
 *
 * A job can finish between the store's answer and the request being parked;
 * a ring of recently announced ids closes that gap. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "map.h"
#include "query.h"
#include "subjects.h"
#include "timers.h"
#include "waiter.h"

#define WAITER_RECENT 65536 /* done ids remembered (~2 s at 30k jobs/s) */

typedef struct waiter_entry {
    struct waiter_entry *next; /* same id hash */
    uint64_t idhash;
    uint64_t token;
    gw_req *r;
} waiter_entry;

static pthread_mutex_t waiter_mu = PTHREAD_MUTEX_INITIALIZER;
static gw_map *waiter_by_token; /* token -> entry */
static gw_map *waiter_by_hash;  /* id hash -> chain of entries */
static uint64_t *waiter_recent;
static size_t waiter_recent_pos;
static natsSubscription *waiter_sub;
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
    (void)nc, (void)sub, (void)closure;
    const char *id = NULL;
    waiter_entry *fire = NULL;
    if (natsMsgHeader_Get(msg, KILN_HDR_JOB_ID, &id) != NATS_OK || id == NULL) goto out;
    uint64_t h = waiter_hash(id);
    pthread_mutex_lock(&waiter_mu);
    if (waiter_recent != NULL) {
        waiter_recent[waiter_recent_pos] = h;
        waiter_recent_pos = (waiter_recent_pos + 1) % WAITER_RECENT;
    }
    waiter_entry *head = waiter_by_hash != NULL ? gw_map_take(waiter_by_hash, h) : NULL, *keep = NULL;
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

kiln_status gw_waiter_init(natsConnection *nc)
{
    kiln_status st = KILN_OK;
    waiter_recent = calloc(WAITER_RECENT, sizeof *waiter_recent);
    if (waiter_recent == NULL) return KILN_ENOMEM;
    if ((st = gw_map_create(4096, &waiter_by_token)) != KILN_OK) return st;
    if ((st = gw_map_create(4096, &waiter_by_hash)) != KILN_OK) return st;
    natsStatus s = natsConnection_Subscribe(&waiter_sub, nc, KILN_SUBJ_DONE, waiter_on_done, NULL);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(waiter_sub, 1000000, 256 * 1024 * 1024);
    if (s != NATS_OK) {
        LOG_ERROR("subscribe failed subject=%s err=%s", KILN_SUBJ_DONE, natsStatus_GetText(s));
        return KILN_ENATS;
    }
    return KILN_OK;
}

kiln_status gw_waiter_park(gw_req *r)
{
    kiln_status st = KILN_OK;
    waiter_entry *e = NULL;
    uint64_t h = waiter_hash(r->job_id);
    int recent = 0;
    pthread_mutex_lock(&waiter_mu);
    if (waiter_by_token == NULL || waiter_sub == NULL ||
        gw_map_size(waiter_by_token) >= GW_WAITER_MAX) {
        st = KILN_EUNAVAILABLE;
        goto unlock;
    }
    for (size_t i = 0; i < WAITER_RECENT && !recent; i++) recent = waiter_recent[i] == h;
    if (recent) goto unlock;
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
    /* Finished while its state was being read: fetch the final state now. */
    if (st == KILN_OK && recent) gw_query_refetch(r);
    return st;
}

void gw_waiter_shutdown(void)
{
    natsSubscription_Unsubscribe(waiter_sub);
    natsSubscription_Destroy(waiter_sub);
    pthread_mutex_lock(&waiter_mu);
    waiter_sub = NULL;
    pthread_mutex_unlock(&waiter_mu);
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
    waiter_by_token = waiter_by_hash = NULL;
    free(waiter_recent);
    waiter_recent = NULL;
    pthread_mutex_unlock(&waiter_mu);
}
