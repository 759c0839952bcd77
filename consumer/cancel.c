/* cancel.c - listens on kiln.cancelled.> (core NATS, broadcast by the store)
 * and flags the named job if it is in flight here; the transfer thread then
 * aborts its call and reports it cancelled. The callback runs on a libnats thread. */
#include <string.h>

#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "subjects.h"

static natsSubscription *cancel_sub;

static void cancel_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(KILN_SUBJ_CANCELLED_PREFIX);
    if (subj != NULL && strncmp(subj, KILN_SUBJ_CANCELLED_PREFIX, plen) == 0) {
        const char *id = subj + plen;
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
    if (cancel_sub == NULL) return;
    natsSubscription_Unsubscribe(cancel_sub);
    natsSubscription_Destroy(cancel_sub);
    cancel_sub = NULL;
}
