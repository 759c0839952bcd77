/* gatenews.c - kiln.consumer.provider: what one consumer's provider gate
 * learnt, told to the other consumers of the same provider account.
 *
 * A 429 is the account's: every consumer's next call would get one too. An
 * outage is the provider's: every consumer would spend KILN_PROVIDER_TRIP_AFTER
 * jobs' attempts finding it out. So a consumer whose call got a 429 tells
 * the others its Retry-After, and they pause their new calls as long; one
 * whose breaker trips (or whose probe fails) tells them, and they hold
 * their new calls back while its probes find out when the provider is back
 * (it tells that too), at most twice KILN_RETRY_CAP without news; one that
 * stops while tripped hands the probing over (each hearer trips its own
 * breaker rather than send every call into a provider last seen down). A
 * consumer that starts asks (ASK, with a reply subject), and those paused
 * by a 429 or tripped answer with what is left of it: consumers are often
 * added because the queue grows, which is what a 429 or an outage does.
 * Core NATS, fire and forget: a consumer that misses the news learns by
 * itself, as before. The callbacks run on a libnats thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "sha256.h"
#include "subjects.h"

static natsSubscription *gatenews_sub, *gatenews_answers;
static char gatenews_account[2 * 8 + 1]; /* hex of SHA-256(url NUL key)[0..8) */
static atomic_bool gatenews_up;

static Kiln__V1__ProviderEvent gatenews_event(cons_news news)
{
    switch (news) {
    case CONS_NEWS_RATE_LIMITED: return KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_RATE_LIMITED;
    case CONS_NEWS_OUTAGE: return KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_OUTAGE;
    case CONS_NEWS_OUTAGE_OVER: return KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_OUTAGE_OVER;
    case CONS_NEWS_HANDOVER: break;
    }
    return KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_HANDOVER;
}

/* Publishes this process's news of kind ev on subj (reply: where answers go, or NULL). */
static void gatenews_send(const char *subj, const char *reply, Kiln__V1__ProviderEvent ev, int64_t pause_ms)
{
    Kiln__V1__ProviderNews pn = KILN__V1__PROVIDER_NEWS__INIT;
    pn.consumer = (char *)cons_status_id();
    pn.provider_key = gatenews_account;
    pn.event = ev;
    pn.pause_ms = pause_ms;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (kiln_pb_pack((const ProtobufCMessage *)&pn, &buf, &len) != KILN_OK) return;
    natsStatus s = reply != NULL ? natsConnection_PublishRequest(cons_g.nc, subj, reply, buf, (int)len)
                                 : natsConnection_Publish(cons_g.nc, subj, buf, (int)len);
    if (s != NATS_OK) LOG_DEBUG("provider news not sent status=%s", natsStatus_GetText(s));
    free(buf);
}

/* A consumer that just started asked: answer with what this gate knows. */
static void gatenews_answer(const char *reply)
{
    cons_news news;
    int64_t pause_ms = 0;
    if (reply != NULL && reply[0] != '\0' && cons_gate_news(&news, &pause_ms))
        gatenews_send(reply, NULL, gatenews_event(news), pause_ms);
}

void cons_gatenews_tell(cons_news news, int64_t pause_ms)
{
    if (atomic_load(&gatenews_up)) gatenews_send(KILN_SUBJ_CONSUMER_PROVIDER, NULL, gatenews_event(news), pause_ms);
}

static void gatenews_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    int len = natsMsg_GetDataLength(msg);
    Kiln__V1__ProviderNews *pn = kiln__v1__provider_news__unpack(
        NULL, len > 0 ? (size_t)len : 0, (const uint8_t *)natsMsg_GetData(msg));
    if (pn == NULL) {
        LOG_WARN("provider news that does not decode, ignored bytes=%d", len);
    } else if (pn->provider_key != NULL && strcmp(pn->provider_key, gatenews_account) == 0 &&
               pn->consumer != NULL && strcmp(pn->consumer, cons_status_id()) != 0) {
        int64_t pause_ms = pn->pause_ms > 0 ? pn->pause_ms : 0;
        switch (pn->event) {
        case KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_RATE_LIMITED:
            cons_gate_heard(CONS_NEWS_RATE_LIMITED, pause_ms, pn->consumer);
            break;
        case KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_OUTAGE:
            cons_gate_heard(CONS_NEWS_OUTAGE, pause_ms, pn->consumer);
            break;
        case KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_OUTAGE_OVER:
            cons_gate_heard(CONS_NEWS_OUTAGE_OVER, 0, pn->consumer);
            break;
        case KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_HANDOVER:
            cons_gate_heard(CONS_NEWS_HANDOVER, 0, pn->consumer);
            break;
        case KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_ASK:
            gatenews_answer(natsMsg_GetReply(msg));
            break;
        default: /* a newer consumer's news this one does not know */
            LOG_DEBUG("provider news of an unknown kind ignored event=%d consumer=%s", (int)pn->event,
                      pn->consumer);
            break;
        }
    }
    kiln__v1__provider_news__free_unpacked(pn, NULL);
    natsMsg_Destroy(msg);
}

kiln_status cons_gatenews_start(void)
{
    const char *url = cons_g.set->provider_url, *key = cons_g.set->provider_key;
    size_t nu = strlen(url), nk = key != NULL ? strlen(key) : 0;
    char *acct = malloc(nu + 1 + nk);
    if (acct == NULL) return KILN_ENOMEM;
    memcpy(acct, url, nu + 1); /* with its NUL: "ab"+"c" is not "a"+"bc" */
    if (nk > 0) memcpy(acct + nu + 1, key, nk);
    uint8_t digest[KILN_SHA256_LEN];
    kiln_status st = kiln_sha256(acct, nu + 1 + nk, digest);
    free(acct);
    if (st != KILN_OK) return st;
    for (int i = 0; i < 8; i++) snprintf(gatenews_account + 2 * i, 3, "%02x", digest[i]);
    natsInbox *inbox = NULL;
    natsStatus s = natsConnection_Subscribe(&gatenews_sub, cons_g.nc, KILN_SUBJ_CONSUMER_PROVIDER,
                                            gatenews_on_msg, NULL);
    if (s == NATS_OK) s = natsInbox_Create(&inbox);
    if (s == NATS_OK) s = natsConnection_Subscribe(&gatenews_answers, cons_g.nc, inbox, gatenews_on_msg, NULL);
    if (s != NATS_OK) {
        LOG_ERROR("provider news subscribe failed status=%s", natsStatus_GetText(s));
        natsInbox_Destroy(inbox);
        kiln_nats_unsubscribe(&gatenews_sub);
        return kiln_nats_status(s);
    }
    atomic_store(&gatenews_up, true);
    /* Answers come on the inbox and are applied as news (no wait here). */
    gatenews_send(KILN_SUBJ_CONSUMER_PROVIDER, inbox, KILN__V1__PROVIDER_EVENT__PROVIDER_EVENT_ASK, 0);
    natsInbox_Destroy(inbox);
    return KILN_OK;
}

void cons_gatenews_stop(void)
{
    if (atomic_load(&gatenews_up) && strcmp(cons_gate_state_name(), "tripped") == 0)
        cons_gatenews_tell(CONS_NEWS_HANDOVER, 0);
    atomic_store(&gatenews_up, false);
    kiln_nats_unsubscribe(&gatenews_answers);
    kiln_nats_unsubscribe(&gatenews_sub);
}
