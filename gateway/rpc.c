/* rpc.c - asynchronous NATS request/reply without a blocked thread.
 *
 * Every call gets a token; the request goes out with reply subject
 * "<inbox>.<token>". The reply handler (libnats subscription thread) and the
 * timeout (timer thread) race to take the token from the table: whoever takes
 * it completes the call, the other finds nothing. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "gate.h"
#include "log.h"
#include "map.h"
#include "natsconn.h"
#include "pb.h"
#include "rpc.h"
#include "timers.h"

typedef struct {
    gw_rpc_done done;
    gw_req *r;
} rpc_call;

static pthread_mutex_t rpc_mu = PTHREAD_MUTEX_INITIALIZER;
static gw_map *rpc_pending;
static natsConnection *rpc_nc;
static natsSubscription *rpc_sub;
static natsInbox *rpc_inbox;
static atomic_uint_fast64_t rpc_next_token = 1;

static rpc_call *rpc_take(uint64_t token)
{
    pthread_mutex_lock(&rpc_mu);
    rpc_call *c = rpc_pending != NULL ? gw_map_take(rpc_pending, token) : NULL;
    pthread_mutex_unlock(&rpc_mu);
    return c;
}

static void rpc_on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc, (void)sub, (void)closure;
    const char *subj = natsMsg_GetSubject(msg);
    const char *dot = strrchr(subj, '.');
    uint64_t token = dot != NULL ? strtoull(dot + 1, NULL, 10) : 0;
    rpc_call *c = rpc_take(token);
    if (c == NULL) goto out; /* late reply after a timeout */
    if (natsMsg_IsNoResponders(msg)) c->done(c->r, KILN_EUNAVAILABLE, NULL);
    else c->done(c->r, KILN_OK, msg);
    free(c);
out:
    natsMsg_Destroy(msg);
}

static void rpc_on_timeout(uint64_t token, void *arg)
{
    (void)arg;
    rpc_call *c = rpc_take(token);
    if (c == NULL) return;
    c->done(c->r, KILN_ETIMEOUT, NULL);
    free(c);
}

kiln_status gw_rpc_init(natsConnection *nc)
{
    kiln_status st = KILN_OK;
    char subj[128];
    if ((st = gw_map_create(4096, &rpc_pending)) != KILN_OK) goto out;
    natsStatus s = natsInbox_Create(&rpc_inbox);
    if (s == NATS_OK) {
        snprintf(subj, sizeof subj, "%s.*", (const char *)rpc_inbox);
        s = natsConnection_Subscribe(&rpc_sub, nc, subj, rpc_on_reply, NULL);
    }
    /* A burst of replies must not be dropped as a slow consumer. */
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(rpc_sub, 1000000, 512 * 1024 * 1024);
    if (s != NATS_OK) {
        LOG_ERROR("rpc subscribe failed err=%s", natsStatus_GetText(s));
        st = kiln_nats_status(s);
        goto out;
    }
    rpc_nc = nc;
out:
    return st;
}

void gw_rpc_shutdown(void)
{
    kiln_nats_unsubscribe(&rpc_sub);
    for (;;) {
        pthread_mutex_lock(&rpc_mu);
        rpc_call *c = rpc_pending != NULL ? gw_map_take_any(rpc_pending, NULL) : NULL;
        pthread_mutex_unlock(&rpc_mu);
        if (c == NULL) break;
        c->done(c->r, KILN_EUNAVAILABLE, NULL);
        free(c);
    }
    pthread_mutex_lock(&rpc_mu);
    gw_map_destroy(rpc_pending);
    rpc_pending = NULL;
    pthread_mutex_unlock(&rpc_mu);
    natsInbox_Destroy(rpc_inbox);
    rpc_inbox = NULL;
    rpc_nc = NULL;
}

kiln_status gw_rpc_call(const char *subject, const void *data, size_t len, int64_t timeout_ms,
                        gw_rpc_done done, gw_req *r)
{
    kiln_status st = KILN_OK;
    rpc_call *c = NULL;
    char reply[128];
    if (!gw_gate_enter()) return KILN_EUNAVAILABLE;
    if (rpc_nc == NULL || natsConnection_Status(rpc_nc) != NATS_CONN_STATUS_CONNECTED) {
        gw_gate_leave();
        return KILN_EUNAVAILABLE;
    }
    uint64_t token = atomic_fetch_add(&rpc_next_token, 1);
    snprintf(reply, sizeof reply, "%s.%" PRIu64, (const char *)rpc_inbox, token);
    c = malloc(sizeof *c);
    if (c == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    c->done = done;
    c->r = r;
    pthread_mutex_lock(&rpc_mu);
    st = rpc_pending != NULL ? gw_map_put(rpc_pending, token, c) : KILN_EUNAVAILABLE;
    pthread_mutex_unlock(&rpc_mu);
    if (st != KILN_OK) goto out;
    c = NULL; /* the table owns it now; the timer or the reply takes it */
    if ((st = gw_timers_add(kiln_mono_ms() + timeout_ms, rpc_on_timeout, token, NULL)) != KILN_OK) {
        c = rpc_take(token);
        goto out;
    }
    natsStatus s = natsConnection_PublishRequest(rpc_nc, subject, reply, data, (int)len);
    if (s != NATS_OK) {
        LOG_WARN("rpc publish failed subject=%s err=%s", subject, natsStatus_GetText(s));
        /* If the timer or a reply already took it, the call is completing. */
        c = rpc_take(token);
        if (c == NULL) {
            st = KILN_OK;
            goto out;
        }
        st = kiln_nats_status(s);
        goto out;
    }
out:
    gw_gate_leave();
    free(c);
    return st;
}

kiln_status gw_rpc_store(const char *subject, const Kiln__V1__StoreRequest *req,
                         int64_t timeout_ms, gw_rpc_done done, gw_req *r)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = kiln_pb_pack((const ProtobufCMessage *)req, &buf, &len);
    if (st == KILN_OK) st = gw_rpc_call(subject, buf, len, timeout_ms, done, r);
    free(buf);
    return st;
}

Kiln__V1__StoreReply *gw_rpc_store_reply(natsMsg *reply)
{
    int len = natsMsg_GetDataLength(reply);
    if (len < 0 || len > KILN_PB_MAX_BYTES) return NULL;
    return kiln__v1__store_reply__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(reply));
}
