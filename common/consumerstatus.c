/* consumerstatus.c - one kiln.consumer.status request, the answers gathered
 * until they stop coming (see consumerstatus.h). */
#include "consumerstatus.h"

#include "clock.h"
#include "natsconn.h"
#include "subjects.h"

kiln_status kiln_consumer_status_gather(natsConnection *nc, int64_t wait_ms, int64_t min_ms,
                                        kiln_consumer_status_fn fn, void *arg) {
    if (nc == NULL || fn == NULL) return KILN_EINVAL;
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    bool answered = false;
    /* The inbox's SUB goes out before the request on the same connection,
     * so no answer can arrive before it. */
    natsStatus s = natsInbox_Create(&inbox);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&sub, nc, inbox);
    if (s == NATS_OK)
        s = natsConnection_PublishRequest(nc, KILN_SUBJ_CONSUMER_STATUS, inbox, NULL, 0);
    int64_t start = kiln_mono_ms(), last = start;
    if (s == NATS_OK) s = natsConnection_FlushTimeout(nc, KILN_CONSUMERS_MAX_MS);
    while (s == NATS_OK) {
        int64_t now = kiln_mono_ms();
        int64_t until = answered ? last + KILN_CONSUMERS_QUIET_MS : start + wait_ms;
        if (answered && until < start + min_ms) until = start + min_ms;
        if (until > start + KILN_CONSUMERS_MAX_MS) until = start + KILN_CONSUMERS_MAX_MS;
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
            answered = true;
            fn(cs, arg);
            kiln__v1__consumer_status__free_unpacked(cs, NULL);
        }
        natsMsg_Destroy(m);
    }
    kiln_nats_unsubscribe(&sub);
    natsInbox_Destroy(inbox);
    return s == NATS_OK ? KILN_OK : kiln_nats_status(s);
}
