/* pull.c - pull requests to a JetStream durable, and the acks of what they
 * deliver (used by the consumer's lanes and the store's apply loop).
 *
 * nats.c 3.4.1's fetch copies every message already queued on a pull
 * subscription into an array of the request's Batch slots without a bound.
 * Messages of an earlier fetch that gave up before the server answered (a
 * busy server, a 5 ms poll) land in that queue, so under load it wrote past
 * the array (glibc: "corrupted double-linked list"; ASan: 1041-1296 messages
 * in 1024 slots). Here the JetStream pull protocol is driven directly: a
 * request to $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable> with reply
 * <inbox>.<n>, deliveries read from a plain subscription on <inbox>.*, and
 * every delivery kept, in a list that grows. Status messages (404, 408) end a
 * request only when they carry its own reply subject, so a late one of an
 * earlier request is ignored. The client waits a little longer than the
 * server's expiry, so the answer normally arrives before the client leaves.
 *
 * A message on <inbox>.wake (kiln_pull_wake_subject) ends a waiting fetch at
 * once (the consumer's idle long poll on one lane, when another lane gets a
 * job).
 *
 * A plain subscription's messages are not bound to a JetStream context, so
 * natsMsg_Ack() and friends cannot be used on them (nats.c dereferences the
 * missing context); kiln_msg_ack() sends the same protocol bodies to the
 * message's $JS.ACK reply subject. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "natsconn.h"
#include "pull.h"

#define PULL_INBOX_MAX 128
_Static_assert(KILN_PULL_WAKE_SUBJECT_MAX >= PULL_INBOX_MAX + sizeof ".wake",
               "the wake subject is the inbox and .wake");
#define PULL_GRACE_MS 20 /* the client outwaits the server's expiry by this much */

struct kiln_pull {
    natsConnection *nc;
    natsSubscription *sub;
    char api_subject[160]; /* $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable> */
    char inbox[PULL_INBOX_MAX];
    char wake_subject[KILN_PULL_WAKE_SUBJECT_MAX]; /* <inbox>.wake: kiln_pull_wake_subject */
    uint64_t next_req;
    int64_t empty_sent_at; /* kiln_pull_empty_sent_at */
};

kiln_status kiln_pull_open(natsConnection *nc, const char *stream, const char *durable,
                           kiln_pull **out)
{
    natsInbox *inbox = NULL;
    char wildcard[PULL_INBOX_MAX + 2];
    kiln_pull *p = calloc(1, sizeof *p);
    if (p == NULL) return KILN_ENOMEM;
    p->nc = nc;
    natsStatus s = natsInbox_Create(&inbox);
    if (s == NATS_OK) {
        snprintf(p->inbox, sizeof p->inbox, "%s", (const char *)inbox);
        natsInbox_Destroy(inbox);
        snprintf(wildcard, sizeof wildcard, "%s.*", p->inbox);
        snprintf(p->api_subject, sizeof p->api_subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s",
                 stream, durable);
        snprintf(p->wake_subject, sizeof p->wake_subject, "%s.wake", p->inbox);
        s = natsConnection_SubscribeSync(&p->sub, nc, wildcard);
    }
    /* A late burst must never be dropped as a slow consumer's backlog. */
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(p->sub, -1, -1);
    if (s != NATS_OK) {
        LOG_ERROR("pull subscription failed durable=%s status=%s", durable, natsStatus_GetText(s));
        kiln_pull_close(p);
        return kiln_nats_status(s);
    }
    *out = p;
    return KILN_OK;
}

void kiln_pull_close(kiln_pull *p)
{
    if (p == NULL) return;
    kiln_nats_unsubscribe(&p->sub);
    free(p);
}

/* A status message (no payload, "Status" header, no $JS.ACK reply). */
static bool pull_is_status(natsMsg *m)
{
    const char *reply = natsMsg_GetReply(m);
    const char *st = NULL;
    if (reply != NULL && reply[0] != '\0') return false;
    return natsMsgHeader_Get(m, "Status", &st) == NATS_OK;
}

static kiln_status pull_keep(natsMsgList *list, int *cap, natsMsg *m)
{
    if (list->Count == *cap) {
        int ncap = *cap > 0 ? *cap * 2 : 16;
        natsMsg **grown = realloc(list->Msgs, (size_t)ncap * sizeof *grown);
        if (grown == NULL) return KILN_ENOMEM;
        list->Msgs = grown;
        *cap = ncap;
    }
    list->Msgs[list->Count++] = m;
    return KILN_OK;
}

/* Handles one message read from the inbox: keeps a delivery, reports whether
 * it ends the fetch: request `req`'s own 404/408/409, or a wake (one found
 * among the queued messages means: do not wait at all). */
static kiln_status pull_take(kiln_pull *p, natsMsgList *list, int *cap, natsMsg *m,
                             const char *req_subject, bool *ended, bool *empty)
{
    if (strcmp(natsMsg_GetSubject(m), p->wake_subject) == 0) {
        *ended = true;
        natsMsg_Destroy(m);
        return KILN_OK;
    }
    if (!pull_is_status(m)) {
        kiln_status st = pull_keep(list, cap, m);
        if (st != KILN_OK) {
            natsMsg_Destroy(m); /* unacked: redelivered after AckWait */
            return st;
        }
        return KILN_OK;
    }
    const char *code = NULL;
    (void)natsMsgHeader_Get(m, "Status", &code);
    /* 100 is a heartbeat; a status of an earlier request is history. */
    if (strcmp(natsMsg_GetSubject(m), req_subject) == 0 && code != NULL && strcmp(code, "100") != 0) {
        *ended = true;
        if (strcmp(code, "404") != 0 && strcmp(code, "408") != 0)
            LOG_DEBUG("pull request ended inbox=%s status=%s", p->inbox, code);
        else
            *empty = true; /* the server's own "no messages" (or none came before expiry) */
    }
    natsMsg_Destroy(m);
    return KILN_OK;
}

kiln_status kiln_pull_fetch(kiln_pull *p, int batch, int64_t expires_ms, natsMsgList *list)
{
    return kiln_pull_fetch_wait(p, batch, expires_ms, expires_ms + PULL_GRACE_MS, list);
}

kiln_status kiln_pull_fetch_wait(kiln_pull *p, int batch, int64_t expires_ms, int64_t wait_ms,
                                 natsMsgList *list)
{
    int cap = 0;
    bool ended = false, empty = false;
    char req_subject[PULL_INBOX_MAX + 24], body[128];
    memset(list, 0, sizeof *list);
    if (batch < 1) return KILN_EINVAL;

    /* Deliveries of earlier requests that arrived after they ended here. */
    int queued = 0;
    if (natsSubscription_GetPending(p->sub, &queued, NULL) != NATS_OK) queued = 0;
    for (int i = 0; i < queued; i++) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, p->sub, 1) != NATS_OK) break;
        if (pull_take(p, list, &cap, m, "", &ended, &empty) != KILN_OK) return KILN_ENOMEM;
    }
    if (list->Count >= batch || ended) return KILN_OK;

    snprintf(req_subject, sizeof req_subject, "%s.%" PRIu64, p->inbox, ++p->next_req);
    if (expires_ms > 0)
        snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%" PRId64 ",\"no_wait\":true}",
                 batch - list->Count, expires_ms * 1000000);
    else
        snprintf(body, sizeof body, "{\"batch\":%d,\"no_wait\":true}", batch - list->Count);
    int64_t sent_at = kiln_mono_ms();
    natsStatus s = natsConnection_PublishRequestString(p->nc, p->api_subject, req_subject, body);
    if (s != NATS_OK) return list->Count > 0 ? KILN_OK : kiln_nats_status(s);

    if (wait_ms > expires_ms + PULL_GRACE_MS) wait_ms = expires_ms + PULL_GRACE_MS;
    int64_t deadline = kiln_mono_ms() + wait_ms;
    while (!ended && list->Count < batch) {
        int64_t left = deadline - kiln_mono_ms();
        if (left <= 0) break;
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, p->sub, left);
        if (s == NATS_TIMEOUT) break;
        if (s != NATS_OK) return list->Count > 0 ? KILN_OK : kiln_nats_status(s);
        if (pull_take(p, list, &cap, m, req_subject, &ended, &empty) != KILN_OK) return KILN_ENOMEM;
    }
    if (empty && list->Count == 0) p->empty_sent_at = sent_at;
    return KILN_OK;
}

int64_t kiln_pull_empty_sent_at(const kiln_pull *p) { return p->empty_sent_at; }

const char *kiln_pull_wake_subject(const kiln_pull *p) { return p->wake_subject; }

kiln_status kiln_msg_ack(natsConnection *nc, natsMsg *m, kiln_ack_kind kind, int64_t nak_delay_ms)
{
    char delayed[64];
    const char *body = "+ACK";
    const char *reply = natsMsg_GetReply(m);
    if (reply == NULL || reply[0] == '\0') return KILN_EINVAL;
    switch (kind) {
    case KILN_ACK: break;
    case KILN_ACK_PROGRESS: body = "+WPI"; break;
    case KILN_ACK_TERM: body = "+TERM"; break;
    case KILN_ACK_NAK:
        body = "-NAK";
        if (nak_delay_ms > 0) {
            snprintf(delayed, sizeof delayed, "-NAK {\"delay\":%" PRId64 "}", nak_delay_ms * 1000000);
            body = delayed;
        }
        break;
    }
    natsStatus s = natsConnection_PublishString(nc, reply, body);
    return s == NATS_OK ? KILN_OK : kiln_nats_status(s);
}
