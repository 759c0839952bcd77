/* cancel.c - listens on kiln.cancelled.> (core NATS, broadcast by the store)
 * and flags the named job if it is in flight here; the transfer thread then
 * aborts its call and reports it cancelled. The callback runs on a libnats thread. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "subjects.h"

/* Recently cancelled ids: direct-mapped by hash, a newer id evicts an older
 * one in its slot. A miss only means the store check is relied on alone. */
#define CANCEL_RECENT_SLOTS 4096 /* power of two; ~270 KiB */

static natsSubscription *cancel_sub;
static pthread_mutex_t cancel_mu = PTHREAD_MUTEX_INITIALIZER;
static char cancel_recent[CANCEL_RECENT_SLOTS][KILN_ID_MAX_LEN + 1];

static size_t cancel_slot(const char *id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return (size_t)(h & (CANCEL_RECENT_SLOTS - 1));
}

void cons_cancel_remember(const char *id)
{
    if (id == NULL || !kiln_jobreq_id_ok(id)) return;
    size_t k = cancel_slot(id);
    pthread_mutex_lock(&cancel_mu);
    snprintf(cancel_recent[k], sizeof cancel_recent[k], "%s", id);
    pthread_mutex_unlock(&cancel_mu);
}

bool cons_cancel_recent(const char *id)
{
    bool hit;
    if (id == NULL || id[0] == '\0') return false;
    size_t k = cancel_slot(id);
    pthread_mutex_lock(&cancel_mu);
    hit = strcmp(cancel_recent[k], id) == 0;
    pthread_mutex_unlock(&cancel_mu);
    return hit;
}

static void cancel_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(KILN_SUBJ_CANCELLED_PREFIX);
    if (subj != NULL && strncmp(subj, KILN_SUBJ_CANCELLED_PREFIX, plen) == 0) {
        const char *id = subj + plen;
        /* Remember first: a job of this id being fetched right now is then
         * either found in the registry below or skipped at dispatch. */
        cons_cancel_remember(id);
        int n = cons_registry_cancel(id);
        if (n > 0) {
            LOG_INFO("cancel received job=%s in_flight=%d", id, n);
            cons_transfers_wakeup();
        } else {
            LOG_DEBUG("cancel received, not here job=%s", id);
        }
    }
    natsMsg_Destroy(msg);
}

kiln_status cons_cancel_start(void)
{
    natsStatus s = natsConnection_Subscribe(&cancel_sub, cons_g.nc, KILN_SUBJ_CANCELLED_PREFIX ">",
                                            cancel_on_msg, NULL);
    if (s != NATS_OK) {
        LOG_ERROR("cancel subscribe failed status=%s", natsStatus_GetText(s));
        cancel_sub = NULL;
        return kiln_nats_status(s);
    }
    return KILN_OK;
}

void cons_cancel_stop(void)
{
    kiln_nats_unsubscribe(&cancel_sub);
}
