/* kiln_client.c - the Kiln C client library: submit, get, wait, cancel, list, watch over NATS. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "config.h"
#include "jobreq.h"
#include "client_internal.h"
#include "kiln_client.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "provision.h"
#include "subjects.h"
#include "uuid7.h"

#define CLIENT_CONNECT_TIMEOUT_MS 2000   /* initial connect retries this long */
#define CLIENT_ASYNC_MAX_PENDING 16384   /* async publishes in flight before submit_async stalls */
#define CLIENT_ASYNC_ACK_WAIT_MS 30000   /* no ack this long: the unacked async submits count as failed */
#define CLIENT_FLUSH_SLICE_MS 1000       /* flush looks for stale submits this often */
#define CLIENT_ASYNC_STALL_MAX_MS 30000  /* submit_async gives up when stalled this long */
#define CLIENT_DESTROY_FLUSH_MS 10000    /* destroy waits this long for outstanding acks */
#define CLIENT_WAIT_RECHECK_MS 5000      /* wait re-reads the state this often (missed events) */
#define CLIENT_WATCH_SLICE_MS 250        /* watch checks its stop flag this often */
#define CLIENT_LIST_DEFAULT 50
#define CLIENT_LIST_MAX 200
#define CLIENT_CURSOR_MAX 1024

void kiln_job_spec_init(kiln_job_spec *s)
{
    if (s == NULL) return;
    memset(s, 0, sizeof *s);
    s->priority = KILN__V1__PRIORITY__PRIORITY_NORMAL;
}

void client_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *client_nats_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return (t != NULL && t[0] != '\0') ? t : natsStatus_GetText(s);
}

/* protobuf-c wants char *; the packers never write through these. */
static char *client_str(const char *s)
{
    return (char *)(s != NULL ? s : "");
}

kiln_status kiln_client_encode(const kiln_job_spec *spec, char *id_out, size_t id_out_len,
                               char *err, size_t errlen, uint8_t **buf, size_t *len)
{
    char id[KILN_ID_MAX_LEN + 1];
    char field[64] = "";
    char msg[256] = "";
    Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
    kiln_status st;

    if (spec == NULL || id_out == NULL || buf == NULL || len == NULL) {
        client_seterr(err, errlen, "spec, id_out, buf and len are required");
        return KILN_EINVAL;
    }
    if (spec->id != NULL) {
        if (!kiln_jobreq_id_ok(spec->id)) {
            client_seterr(err, errlen, "id must be 1 to %d characters of [A-Za-z0-9_-]",
                          KILN_ID_MAX_LEN);
            return KILN_EINVAL;
        }
        snprintf(id, sizeof id, "%s", spec->id);
    } else {
        st = kiln_uuid7(id);
        if (st != KILN_OK) {
            client_seterr(err, errlen, "could not make a job id (no randomness)");
            return st;
        }
    }
    if (strlen(id) + 1 > id_out_len) {
        client_seterr(err, errlen, "id_out is too small for the job id (%zu bytes needed)",
                      strlen(id) + 1);
        return KILN_EINVAL;
    }
    if (spec->priority != KILN__V1__PRIORITY__PRIORITY_NORMAL &&
        spec->priority != KILN__V1__PRIORITY__PRIORITY_HIGH &&
        spec->priority != KILN__V1__PRIORITY__PRIORITY_LOW) {
        client_seterr(err, errlen, "priority must be high, normal or low");
        return KILN_EINVAL;
    }

    req.id = id;
    req.user_id = client_str(spec->user_id);
    req.prompt = client_str(spec->prompt);
    req.model = client_str(spec->model);
    req.n = spec->n;
    req.size = client_str(spec->size);
    req.priority = spec->priority;
    req.created_at_ms = kiln_now_ms();
    req.not_before_ms = spec->not_before_ms;
    req.timeout_s = spec->timeout_s;
    req.max_attempts = spec->max_attempts;

    /* The contract caps a delay at 24 h (the validator only rejects < 0). */
    if (req.not_before_ms > req.created_at_ms + KILN_DELAY_MAX_MS) {
        client_seterr(err, errlen, "not_before_ms must be at most %lld ms from now",
                      (long long)KILN_DELAY_MAX_MS);
        return KILN_EINVAL;
    }
    st = kiln_jobreq_validate(&req, field, sizeof field, msg, sizeof msg);
    if (st != KILN_OK) {
        /* The validator's sentence normally names the field; make sure it does. */
        if (field[0] != '\0' && strstr(msg, field) == NULL)
            client_seterr(err, errlen, "%s: %s", field, msg[0] ? msg : "invalid value");
        else
            client_seterr(err, errlen, "%s", msg[0] ? msg : "invalid job request");
        return KILN_EINVAL;
    }
    st = kiln_pb_pack(&req.base, buf, len);
    if (st != KILN_OK) {
        client_seterr(err, errlen, "could not encode the job request");
        return st;
    }
    memcpy(id_out, id, strlen(id) + 1);
    return KILN_OK;
}

/* Runs on nats.c's async-ack thread for every submit_async publish. */
static void client_on_async_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                                void *closure)
{
    (void)js;
    kiln_client *c = closure;
    atomic_store(&c->async_progress_ms, kiln_mono_ms());
    atomic_fetch_sub(&c->async_unacked, 1);
    if (pa != NULL && pae == NULL) kiln_resubmit_keep(c->resubmit, msg, pa->Sequence);
    if (pa == NULL) {
        const char *id = NULL;
        if (natsMsgHeader_Get(msg, KILN_HDR_MSG_ID, &id) != NATS_OK) id = "?";
        atomic_fetch_add(&c->async_failed, 1);
        LOG_DEBUG("async submit not acknowledged job=%s err=%s", id,
                  pae != NULL ? natsStatus_GetText(pae->Err) : "unknown");
    }
    natsMsg_Destroy(msg);
}

kiln_status kiln_client_connect(const char *urls, kiln_client **out)
{
    kiln_client *c = NULL;
    kiln_provision_opts po;
    kiln_status st;

    if (urls == NULL || urls[0] == '\0' || out == NULL) return KILN_EINVAL;
    c = calloc(1, sizeof *c);
    if (c == NULL) return KILN_ENOMEM;
    atomic_init(&c->async_failed, 0);
    atomic_init(&c->async_unacked, 0);
    atomic_init(&c->async_progress_ms, 0);
    pthread_rwlock_init(&c->async_sending, NULL);
    /* nats-server 2.9.10 can lose a submit it confirmed just before it is
     * killed: the last 0.5 s of submits are kept and checked after a
     * reconnect, as the gateway's are. */
    st = kiln_resubmit_create("kiln-resubmit", NULL, NULL, &c->resubmit);
    if (st != KILN_OK) goto out;

    st = kiln_nats_connect_async(urls, "kiln-client", CLIENT_CONNECT_TIMEOUT_MS,
                                 CLIENT_ASYNC_MAX_PENDING, client_on_async_ack, c, &c->nc,
                                 &c->js);
    if (st != KILN_OK) goto out;
    /* Create-only: the consumers own the durables' settings. */
    kiln_provision_opts_init(&po);
    st = kiln_provision(c->js, &po);
    if (st != KILN_OK) goto out;
    st = kiln_resubmit_start(c->resubmit, c->js, c->nc);
    if (st != KILN_OK) goto out;

    *out = c;
    c = NULL;
out:
    if (c != NULL) {
        kiln_resubmit_stop(c->resubmit);
        kiln_nats_close(c->nc, c->js);
        kiln_resubmit_destroy(c->resubmit);
        pthread_rwlock_destroy(&c->async_sending);
        free(c);
    }
    return st;
}

void kiln_client_destroy(kiln_client *c)
{
    if (c == NULL) return;
    uint64_t failed = 0;
    kiln_status st = kiln_client_flush(c, CLIENT_DESTROY_FLUSH_MS, &failed);
    if (st != KILN_OK || failed > 0)
        LOG_WARN("client closing with unacknowledged submits status=%s failed=%" PRIu64,
                 kiln_status_str(st), failed);
    kiln_resubmit_stop(c->resubmit);
    kiln_nats_close(c->nc, c->js);
    kiln_resubmit_destroy(c->resubmit); /* no acks come any more */
    pthread_rwlock_destroy(&c->async_sending);
    free(c);
}

/* Makes the message submit publishes; *m is set only on success. Validation
 * comes first: invalid input is reported even without a connection, and no
 * NATS call (not even a message allocation) happens before it passed. */
static kiln_status client_make_msg(const kiln_client *c, const kiln_job_spec *spec, char *id_out,
                                   size_t id_out_len, char *err, size_t errlen, natsMsg **m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = kiln_client_encode(spec, id_out, id_out_len, err, errlen, &buf, &len);
    if (st != KILN_OK) return st;
    if (c == NULL) {
        free(buf);
        client_seterr(err, errlen, "not connected");
        return KILN_EINVAL;
    }
    natsStatus ns = natsMsg_Create(m, kiln_priority_subject(spec->priority), NULL,
                                   (const char *)buf, (int)len);
    free(buf); /* natsMsg_Create copies the payload */
    if (ns != NATS_OK) {
        client_seterr(err, errlen, "could not create the message: %s", client_nats_text(ns));
        return kiln_nats_status(ns);
    }
    return KILN_OK;
}

/* Builds the message for a submit into m, its id into id (idlen bytes), and
 * checks that the caller's id_out_len can hold that id. */
static kiln_status client_prepare(const kiln_client *c, const kiln_job_spec *spec, char *id,
                                  size_t idlen, size_t id_out_len, char *err, size_t errlen,
                                  natsMsg **m)
{
    kiln_status st = client_make_msg(c, spec, id, idlen, err, errlen, m);
    if (st != KILN_OK) return st;
    if (strlen(id) + 1 > id_out_len) {
        client_seterr(err, errlen, "id_out is too small for the job id");
        natsMsg_Destroy(*m);
        *m = NULL;
        return KILN_EINVAL;
    }
    return KILN_OK;
}

kiln_status kiln_client_submit(kiln_client *c, const kiln_job_spec *spec, char *id_out,
                               size_t id_out_len, char *err, size_t errlen)
{
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    char id[KILN_ID_MAX_LEN + 1];

    kiln_status st = client_prepare(c, spec, id, sizeof id, id_out_len, err, errlen, &m);
    if (st != KILN_OK) goto out;
    jsPubOptions_Init(&po);
    po.MsgId = id;
    po.MaxWait = KILN_CLIENT_REQUEST_TIMEOUT_MS;
    natsStatus ns = js_PublishMsg(&pa, c->js, m, &po, &jerr);
    if (ns != NATS_OK) {
        client_seterr(err, errlen, "publish to %s failed: %s",
                      kiln_priority_subject(spec->priority), client_nats_text(ns));
        st = kiln_nats_status(ns);
        goto out;
    }
    kiln_resubmit_keep(c->resubmit, m, pa->Sequence); /* checked after a reconnect */
    memcpy(id_out, id, strlen(id) + 1);
out:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    return st;
}

/* Async submits carry no MaxWait: nats.c 3.4.1 follows every such publish
 * with bookkeeping and, MaxWait later, a timeout message, acked or not
 * (~76 bytes per submit for 30 s, and a dispatch; design.md, Performance
 * notes). Instead, where a caller waits (flush, a stalled submit_async):
 * when submits are awaited and no ack came for CLIENT_ASYNC_ACK_WAIT_MS,
 * every unacked one counts as failed and is taken back from nats.c (an ack
 * that comes after that is dropped by nats.c). */
static void client_give_up_stale(kiln_client *c)
{
    if (atomic_load(&c->async_unacked) <= 0 ||
        kiln_mono_ms() - atomic_load(&c->async_progress_ms) < CLIENT_ASYNC_ACK_WAIT_MS)
        return;
    pthread_rwlock_wrlock(&c->async_sending);
    int n = kiln_nats_drop_unacked(c->js);
    pthread_rwlock_unlock(&c->async_sending);
    if (n == 0) return;
    atomic_fetch_add(&c->async_failed, (uint64_t)n);
    atomic_fetch_sub(&c->async_unacked, n);
    atomic_store(&c->async_progress_ms, kiln_mono_ms());
    LOG_WARN("async submits without an ack for %d ms counted as failed count=%d",
             CLIENT_ASYNC_ACK_WAIT_MS, n);
}

kiln_status kiln_client_submit_async(kiln_client *c, const kiln_job_spec *spec, char *id_out,
                                     size_t id_out_len, char *err, size_t errlen)
{
    natsMsg *m = NULL;
    jsPubOptions po;
    char id[KILN_ID_MAX_LEN + 1];

    kiln_status st = client_prepare(c, spec, id, sizeof id, id_out_len, err, errlen, &m);
    if (st != KILN_OK) goto out;
    jsPubOptions_Init(&po);
    po.MsgId = id; /* no MaxWait: client_give_up_stale */
    /* Counted before the publish: its ack may come before the call returns. */
    if (atomic_fetch_add(&c->async_unacked, 1) == 0) atomic_store(&c->async_progress_ms, kiln_mono_ms());
    /* js_PublishMsgAsync returns NATS_TIMEOUT after a short stall when
     * CLIENT_ASYNC_MAX_PENDING publishes are in flight: that is back-pressure,
     * so keep trying (the message stays ours on failure) up to a limit. */
    int64_t deadline = kiln_mono_ms() + CLIENT_ASYNC_STALL_MAX_MS;
    natsStatus ns;
    for (;;) {
        pthread_rwlock_rdlock(&c->async_sending);
        ns = js_PublishMsgAsync(c->js, &m, &po);
        pthread_rwlock_unlock(&c->async_sending);
        if (ns != NATS_TIMEOUT || kiln_mono_ms() >= deadline) break;
        client_give_up_stale(c);
    }
    if (ns != NATS_OK) {
        atomic_fetch_sub(&c->async_unacked, 1); /* not sent: no ack will come */
        client_seterr(err, errlen, "async publish to %s failed: %s",
                      kiln_priority_subject(spec->priority), client_nats_text(ns));
        st = kiln_nats_status(ns);
        goto out;
    }
    memcpy(id_out, id, strlen(id) + 1);
out:
    natsMsg_Destroy(m); /* no-op once the library took it */
    return st;
}

kiln_status kiln_client_flush(kiln_client *c, int64_t timeout_ms, uint64_t *failed)
{
    if (c == NULL) return KILN_EINVAL;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    int64_t until = timeout_ms > 0 ? kiln_mono_ms() + timeout_ms : INT64_MAX;
    natsStatus ns = NATS_TIMEOUT;
    for (;;) {
        int64_t left = until - kiln_mono_ms();
        if (left <= 0) break;
        po.MaxWait = left < CLIENT_FLUSH_SLICE_MS ? left : CLIENT_FLUSH_SLICE_MS;
        ns = js_PublishAsyncComplete(c->js, &po);
        if (ns != NATS_TIMEOUT) break;
        client_give_up_stale(c);
    }
    /* Failures since the previous flush; later acks count towards the next one. */
    uint64_t f = atomic_exchange(&c->async_failed, 0);
    if (failed != NULL) *failed = f;
    return ns == NATS_OK ? KILN_OK : kiln_nats_status(ns);
}

/* Maps a Kiln-Error header value to a status. */
static kiln_status client_error_status(const char *code)
{
    if (strcmp(code, "not_found") == 0) return KILN_ENOTFOUND;
    if (strcmp(code, "unavailable") == 0) return KILN_EUNAVAILABLE;
    if (strcmp(code, "invalid_argument") == 0) return KILN_EINVAL;
    if (strcmp(code, "already_finished") == 0 || strcmp(code, "idempotency_conflict") == 0)
        return KILN_ECONFLICT;
    return KILN_ERR;
}

/* Sends body on subj and waits for one reply; *reply is set only on success. */
static kiln_status client_request(kiln_client *c, const char *subj, const void *body, size_t len,
                                  natsMsg **reply)
{
    if (len > KILN_PB_MAX_BYTES) return KILN_EINVAL;
    natsStatus ns = natsConnection_Request(reply, c->nc, subj, body, (int)len,
                                           KILN_CLIENT_REQUEST_TIMEOUT_MS);
    if (ns != NATS_OK) {
        LOG_DEBUG("request failed subject=%s err=%s", subj, client_nats_text(ns));
        return kiln_nats_status(ns);
    }
    return KILN_OK;
}

static kiln_status client_decode_status(natsMsg *m, Kiln__V1__JobStatus **out)
{
    int len = natsMsg_GetDataLength(m);
    if (len <= 0 || len > KILN_PB_MAX_BYTES) return KILN_ERR;
    Kiln__V1__JobStatus *st = kiln__v1__job_status__unpack(
        NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(m));
    if (st == NULL) return KILN_ERR;
    *out = st;
    return KILN_OK;
}

kiln_status kiln_client_get(kiln_client *c, const char *id, Kiln__V1__JobStatus **out)
{
    natsMsg *reply = NULL;
    const char *code = NULL;

    if (c == NULL || out == NULL || id == NULL || !kiln_jobreq_id_ok(id)) return KILN_EINVAL;
    kiln_status st = client_request(c, KILN_SUBJ_STATUS, id, strlen(id), &reply);
    if (st != KILN_OK) goto out;
    if (natsMsgHeader_Get(reply, KILN_HDR_ERROR, &code) == NATS_OK && code != NULL) {
        st = client_error_status(code);
        goto out;
    }
    st = client_decode_status(reply, out);
out:
    natsMsg_Destroy(reply);
    return st;
}

/* If m is the jobs.done event of job id, decodes it into *out. */
static int client_done_matches(natsMsg *m, const char *id, Kiln__V1__JobStatus **out)
{
    const char *hid = NULL;
    if (natsMsgHeader_Get(m, KILN_HDR_JOB_ID, &hid) != NATS_OK || hid == NULL ||
        strcmp(hid, id) != 0)
        return 0;
    Kiln__V1__JobStatus *st = NULL;
    if (client_decode_status(m, &st) != KILN_OK) return 0;
    if (!kiln_state_is_terminal(st->state)) {
        kiln__v1__job_status__free_unpacked(st, NULL);
        return 0;
    }
    *out = st;
    return 1;
}

/* Reads the current state; 1 with *out set if the job is already terminal. */
static int client_terminal_now(kiln_client *c, const char *id, Kiln__V1__JobStatus **out,
                               kiln_status *err)
{
    Kiln__V1__JobStatus *st = NULL;
    kiln_status s = kiln_client_get(c, id, &st);
    *err = s;
    if (s != KILN_OK) return 0;
    if (!kiln_state_is_terminal(st->state)) {
        kiln__v1__job_status__free_unpacked(st, NULL);
        return 0;
    }
    *out = st;
    return 1;
}

kiln_status kiln_client_wait(kiln_client *c, const char *id, int64_t timeout_ms,
                             Kiln__V1__JobStatus **out)
{
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    kiln_status st = KILN_OK, gst = KILN_OK;

    if (c == NULL || out == NULL || id == NULL || !kiln_jobreq_id_ok(id)) return KILN_EINVAL;
    /* Subscribe before reading the state: the server handles this
     * connection's SUB before the status request, so an event published
     * after the store answered "not terminal" is never missed. */
    natsStatus ns = natsConnection_SubscribeSync(&sub, c->nc, KILN_SUBJ_DONE);
    if (ns != NATS_OK) {
        st = kiln_nats_status(ns);
        goto out;
    }
    if (client_terminal_now(c, id, out, &gst)) goto out;
    if (gst == KILN_EINVAL) {
        st = gst;
        goto out;
    }

    int64_t deadline = timeout_ms < 0 ? INT64_MAX : kiln_mono_ms() + timeout_ms;
    int64_t recheck = kiln_mono_ms() + CLIENT_WAIT_RECHECK_MS;
    for (;;) {
        int64_t now = kiln_mono_ms();
        if (now >= deadline) {
            st = KILN_ETIMEOUT;
            goto out;
        }
        if (now >= recheck) {
            /* Covers events lost while the connection was down. */
            if (client_terminal_now(c, id, out, &gst)) goto out;
            recheck = kiln_mono_ms() + CLIENT_WAIT_RECHECK_MS;
            continue;
        }
        int64_t slice = (deadline < recheck ? deadline : recheck) - now;
        ns = natsSubscription_NextMsg(&m, sub, slice);
        if (ns == NATS_TIMEOUT) continue;
        if (ns == NATS_SLOW_CONSUMER) {
            recheck = 0; /* events were dropped: read the state now */
            continue;
        }
        if (ns != NATS_OK) {
            st = kiln_nats_status(ns);
            goto out;
        }
        int hit = client_done_matches(m, id, out);
        natsMsg_Destroy(m);
        m = NULL;
        if (hit) goto out;
    }
out:
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    return st;
}

kiln_status kiln_client_cancel(kiln_client *c, const char *id, char *status_out, size_t len)
{
    natsMsg *reply = NULL;
    const char *v = NULL;

    if (c == NULL || id == NULL || !kiln_jobreq_id_ok(id) || status_out == NULL || len == 0)
        return KILN_EINVAL;
    kiln_status st = client_request(c, KILN_SUBJ_CANCEL, id, strlen(id), &reply);
    if (st != KILN_OK) goto out;
    if (natsMsgHeader_Get(reply, KILN_HDR_STATUS, &v) != NATS_OK || v == NULL) {
        /* No Kiln-Status: report the error code if there is one. */
        if (natsMsgHeader_Get(reply, KILN_HDR_ERROR, &v) == NATS_OK && v != NULL)
            st = client_error_status(v);
        else
            st = KILN_ERR;
        goto out;
    }
    if (strlen(v) + 1 > len) {
        st = KILN_EINVAL;
        goto out;
    }
    memcpy(status_out, v, strlen(v) + 1);
out:
    natsMsg_Destroy(reply);
    return st;
}

kiln_status kiln_client_list(kiln_client *c, const char *user_id, unsigned limit,
                             const char *cursor, Kiln__V1__StoreReply **out)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    Kiln__V1__StoreReply *rep = NULL;
    natsMsg *reply = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st;

    if (c == NULL || out == NULL || user_id == NULL || user_id[0] == '\0' ||
        strlen(user_id) > KILN_USER_MAX_LEN || limit > CLIENT_LIST_MAX ||
        (cursor != NULL && strlen(cursor) > CLIENT_CURSOR_MAX))
        return KILN_EINVAL;
    req.user_id = client_str(user_id);
    req.limit = limit == 0 ? CLIENT_LIST_DEFAULT : limit;
    req.cursor = client_str(cursor);
    st = kiln_pb_pack(&req.base, &buf, &len);
    if (st != KILN_OK) goto out;
    st = client_request(c, KILN_SUBJ_STORE_LIST, buf, len, &reply);
    if (st != KILN_OK) goto out;
    int n = natsMsg_GetDataLength(reply);
    if (n < 0 || n > KILN_PB_MAX_BYTES) {
        st = KILN_ERR;
        goto out;
    }
    /* An empty StoreReply (no jobs, no error) is a valid zero-length message. */
    rep = kiln__v1__store_reply__unpack(NULL, (size_t)n, (const uint8_t *)natsMsg_GetData(reply));
    if (rep == NULL) {
        st = KILN_ERR;
        goto out;
    }
    if (rep->error_code != NULL && rep->error_code[0] != '\0') {
        LOG_DEBUG("list failed code=%s msg=%s", rep->error_code,
                  rep->error_message != NULL ? rep->error_message : "");
        st = client_error_status(rep->error_code);
        goto out;
    }
    *out = rep;
    rep = NULL;
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    natsMsg_Destroy(reply);
    free(buf);
    return st;
}

kiln_status kiln_client_watch_until(kiln_client *c, int64_t timeout_ms, kiln_client_done_cb cb,
                                    void *arg, const volatile sig_atomic_t *stop)
{
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    kiln_status st = KILN_OK;

    if (c == NULL || cb == NULL) return KILN_EINVAL;
    natsStatus ns = natsConnection_SubscribeSync(&sub, c->nc, KILN_SUBJ_DONE);
    if (ns != NATS_OK) {
        st = kiln_nats_status(ns);
        goto out;
    }
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : kiln_mono_ms() + timeout_ms;
    for (;;) {
        if (stop != NULL && *stop) goto out;
        int64_t now = kiln_mono_ms();
        if (now >= deadline) goto out;
        int64_t slice = deadline - now;
        if (slice > CLIENT_WATCH_SLICE_MS) slice = CLIENT_WATCH_SLICE_MS;
        ns = natsSubscription_NextMsg(&m, sub, slice);
        if (ns == NATS_TIMEOUT) continue;
        if (ns == NATS_SLOW_CONSUMER) {
            LOG_WARN("watch fell behind; some jobs.done events were dropped");
            continue;
        }
        if (ns != NATS_OK) {
            st = kiln_nats_status(ns);
            goto out;
        }
        Kiln__V1__JobStatus *js = NULL;
        if (client_decode_status(m, &js) != KILN_OK) {
            LOG_WARN("undecodable jobs.done event bytes=%d", natsMsg_GetDataLength(m));
        } else {
            int done = cb(js, arg);
            kiln__v1__job_status__free_unpacked(js, NULL);
            if (done) goto out;
        }
        natsMsg_Destroy(m);
        m = NULL;
    }
out:
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    return st;
}

kiln_status kiln_client_watch(kiln_client *c, int64_t timeout_ms, kiln_client_done_cb cb, void *arg)
{
    return kiln_client_watch_until(c, timeout_ms, cb, arg, NULL);
}

/* Appends to buf at *off; sets *trunc when it did not fit. */
static void client_append(char *buf, size_t len, size_t *off, int *trunc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void client_append(char *buf, size_t len, size_t *off, int *trunc, const char *fmt, ...)
{
    if (*off >= len) {
        *trunc = 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *off, len - *off, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len - *off) {
        *trunc = 1;
        *off = len;
        return;
    }
    *off += (size_t)n;
}

kiln_status kiln_client_format_status(const Kiln__V1__JobStatus *st, char *buf, size_t len)
{
    char ts[32];
    size_t off = 0;
    int trunc = 0;

    if (st == NULL || buf == NULL || len == 0) return KILN_EINVAL;
    buf[0] = '\0';
    if (st->created_at_ms > 0) kiln_rfc3339_ms(st->created_at_ms, ts, sizeof ts);
    else snprintf(ts, sizeof ts, "-");
    client_append(buf, len, &off, &trunc, "id=%s status=%s attempts=%" PRIu32 " created_at=%s",
                  client_str(st->id), kiln_state_name(st->state), st->attempts, ts);
    if (st->n_images > 0) {
        client_append(buf, len, &off, &trunc, " images=");
        for (size_t i = 0; i < st->n_images; i++)
            client_append(buf, len, &off, &trunc, "%s%s", i > 0 ? "," : "",
                          st->images[i] != NULL ? client_str(st->images[i]->url) : "");
    }
    if (st->error != NULL &&
        ((st->error->code != NULL && st->error->code[0] != '\0') ||
         (st->error->message != NULL && st->error->message[0] != '\0')))
        client_append(buf, len, &off, &trunc, " error=%s:%s", client_str(st->error->code),
                      client_str(st->error->message));
    return trunc ? KILN_EINVAL : KILN_OK;
}
