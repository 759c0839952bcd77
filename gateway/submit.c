/* submit.c - POST /v1/jobs: validate, publish to JetStream asynchronously,
 * answer 202 only after the stream acknowledged the job.
 *
 * The MHD thread suspends the connection, records the published natsMsg* in
 * a table and returns at once; the pub-ack handler (libnats thread) takes the
 * request out of the table, fills the answer and resumes the connection.
 *
 * A publish whose ack does not come within KILN_PUBLISH_TIMEOUT is answered
 * 503 by a sweep of that table (submit_tick, timer thread), not by nats.c's
 * per-publish MaxWait: nats.c 3.4.1 follows every such publish with its own
 * bookkeeping and, MaxWait later, a timeout message, acked or not, which cost
 * the gateway ~14 % of its CPU per submit (design.md, Performance notes). */
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "clock.h"
#include "errors.h"
#include "gate.h"
#include "health.h"
#include "job_json.h"
#include "jobreq.h"
#include "log.h"
#include "map.h"
#include "natsconn.h"
#include "pb.h"
#include "query.h"
#include "ratelimit.h"
#include "resubmit.h"
#include "rpc.h"
#include "subjects.h"
#include "submit.h"
#include "timers.h"
#include "uuid7.h"

#define SUBMIT_POLL_AFTER_MS 3000
#define SUBMIT_HASH_LEN 32
#define SUBMIT_KIND_REPLAY 100 /* r->rpc_kind: an Idempotency-Key replay, answered 200 */

/* A submit with Idempotency-Key waits for the store first: the packed job
 * is kept here (r->op) until the key is known to be new. */
typedef struct {
    uint8_t *buf;
    size_t len;
    const char *subject;
} submit_op;

/* Below this many submits awaiting their ack, a publish goes on the fast
 * connection: ~0.3 ms per submit instead of ~1 ms (the flusher's wait).
 * Above it the batched one costs less CPU per submit (W4: gateway ~22 µs
 * instead of ~27, nats-server ~27 instead of ~29, ~3 % more requests/s).
 * A threshold of 32 cost the gateway ~10 % more CPU in W4 for the same rate. */
#define SUBMIT_FAST_BELOW 8

#define SUBMIT_TICK_MS 100    /* how often unacked submits are looked at */
#define SUBMIT_EXPIRE_MAX 256 /* answered per pass of the sweep */

static pthread_mutex_t submit_mu = PTHREAD_MUTEX_INITIALIZER;
static gw_map *submit_pending; /* natsMsg* -> gw_req* */
static gw_submit_conn submit_batched, submit_fast;
static atomic_int submit_inflight; /* published, ack handler not yet run */
static int64_t submit_publish_timeout_ms = 5000;
static int64_t submit_store_timeout_ms = 2000;
static atomic_bool submit_ticking;
/* Whether a publish went out on the connection (nats.c's pending list
 * exists only after its first async publish: before, asking for it crashes). */
static atomic_bool submit_batched_used, submit_fast_used;

static void submit_tick(uint64_t token, void *arg);

kiln_status gw_submit_init(gw_submit_conn batched, gw_submit_conn fast,
                           int64_t publish_timeout_ms, int64_t store_timeout_ms)
{
    submit_batched = batched;
    submit_fast = fast;
    atomic_store(&submit_inflight, 0);
    submit_publish_timeout_ms = publish_timeout_ms;
    submit_store_timeout_ms = store_timeout_ms;
    pthread_mutex_lock(&submit_mu);
    kiln_status st = submit_pending == NULL ? gw_map_create(8192, &submit_pending) : KILN_OK;
    pthread_mutex_unlock(&submit_mu);
    if (st == KILN_OK && !atomic_exchange(&submit_ticking, true))
        st = gw_timers_add(kiln_mono_ms() + SUBMIT_TICK_MS, submit_tick, 0, NULL);
    return st;
}

static void submit_answer_unavailable(gw_req *r, const char *why)
{
    gw_answer_error(&r->ans, "unavailable", why, NULL);
}

/* 202 with the body prepared before publishing. */
static void submit_answer_accepted(gw_req *r)
{
    gw_answer_raw(&r->ans, r->rpc_kind == SUBMIT_KIND_REPLAY ? 200 : 202, r->ans.ctype,
                  r->pending_body, r->pending_len);
    r->pending_body = NULL;
    gw_answer_header(&r->ans, "Location", "/v1/jobs/%s", r->job_id);
    gw_health_submit_latency((double)(kiln_mono_us() - r->start_us) / 1000.0);
}

int gw_submit_unacked(void) { return atomic_load(&submit_inflight); }

void gw_submit_detach(void)
{
    atomic_store(&submit_ticking, false);
    pthread_mutex_lock(&submit_mu);
    submit_batched.js = submit_fast.js = NULL;
    pthread_mutex_unlock(&submit_mu);
}

void gw_submit_fail_pending(void)
{
    for (;;) {
        pthread_mutex_lock(&submit_mu);
        gw_req *r = submit_pending != NULL ? gw_map_take_any(submit_pending, NULL) : NULL;
        pthread_mutex_unlock(&submit_mu);
        if (r == NULL) break;
        submit_answer_unavailable(r, "the job could not be confirmed before shutdown");
        gw_server_resume(r);
    }
}

static bool submit_overdue(const void *val, void *arg)
{
    return ((const gw_req *)val)->ack_deadline_ms <= *(const int64_t *)arg;
}

/* Under submit_mu, with no submit waiting: whatever nats.c still counts as
 * unacked is a publish whose ack will never come (nats-server restarted
 * after reading it; its request was answered 503 by now) or comes too late
 * to answer anyone. Without MaxWait nats.c would keep those for good, each
 * counting against MaxPending; taken back and dropped here instead. */
static void submit_drop_stale_locked(void)
{
    const gw_submit_conn *conns[2] = {&submit_batched, &submit_fast};
    atomic_bool *used[2] = {&submit_batched_used, &submit_fast_used};
    for (int i = 0; i < 2; i++) {
        int n = atomic_load(used[i]) ? kiln_nats_drop_unacked(conns[i]->js) : 0;
        if (n == 0) continue;
        atomic_fetch_sub(&submit_inflight, n); /* their ack handler will not run */
        LOG_WARN("submit publishes never acknowledged dropped msgs=%d", n);
    }
}

/* Timer thread, every SUBMIT_TICK_MS while the gateway runs: answers 503
 * for the submits whose ack is overdue, and drops stale unacked publishes
 * when no submit waits. */
static void submit_tick(uint64_t token, void *arg)
{
    (void)token, (void)arg;
    int64_t now = kiln_mono_ms();
    void *late[SUBMIT_EXPIRE_MAX];
    size_t n;
    do {
        pthread_mutex_lock(&submit_mu);
        n = submit_pending != NULL
                ? gw_map_take_if(submit_pending, submit_overdue, &now, late, SUBMIT_EXPIRE_MAX)
                : 0;
        if (n == 0 && submit_pending != NULL && gw_map_size(submit_pending) == 0)
            submit_drop_stale_locked();
        pthread_mutex_unlock(&submit_mu);
        for (size_t i = 0; i < n; i++) {
            gw_req *r = late[i];
            LOG_WARN("submit publish failed job=%s err=no ack within %lld ms", r->job_id,
                     (long long)submit_publish_timeout_ms);
            submit_answer_unavailable(r, "the job queue did not confirm the job; retry");
            gw_server_resume(r);
        }
    } while (n == SUBMIT_EXPIRE_MAX);
    if (atomic_load(&submit_ticking) &&
        gw_timers_add(now + SUBMIT_TICK_MS, submit_tick, 0, NULL) != KILN_OK)
        LOG_WARN("submit ack timer could not be re-armed");
}

void gw_submit_free(void)
{
    pthread_mutex_lock(&submit_mu);
    gw_map_destroy(submit_pending);
    submit_pending = NULL;
    pthread_mutex_unlock(&submit_mu);
}

void gw_submit_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                           void *closure)
{
    (void)js;
    atomic_fetch_sub(&submit_inflight, 1);
    if (pa != NULL && pae == NULL && closure != NULL && msg != NULL)
        kiln_resubmit_keep(closure, msg, pa->Sequence); /* checked after a reconnect */
    pthread_mutex_lock(&submit_mu);
    gw_req *r = submit_pending != NULL ? gw_map_take(submit_pending, (uint64_t)(uintptr_t)msg)
                                       : NULL;
    pthread_mutex_unlock(&submit_mu);
    if (r != NULL) {
        if (pa != NULL && pae == NULL) {
            submit_answer_accepted(r);
        } else {
            LOG_WARN("submit publish failed job=%s err=%s", r->job_id,
                     pae != NULL ? natsStatus_GetText(pae->Err) : "unknown");
            submit_answer_unavailable(r, "the job queue did not confirm the job; retry");
        }
        gw_server_resume(r);
    }
    natsMsg_Destroy(msg);
}

/* "application/json" with an optional charset=utf-8 (any case, maybe quoted). */
int gw_submit_content_type_ok(const char *ct)
{
    if (ct == NULL) return 0;
    while (*ct == ' ') ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1) != 0) return 0;
    const char *p = ct + sizeof want - 1;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '\0') return 1;
    if (*p != ';') return 0;
    /* Parameters: only charset is checked. */
    while (*p == ';') {
        p++;
        while (*p == ' ' || *p == '\t') p++;
        const char *name = p;
        while (*p != '\0' && *p != '=' && *p != ';') p++;
        if (*p != '=') {
            if (p == name) continue; /* stray ';' */
            return 0;
        }
        size_t nlen = (size_t)(p - name);
        while (nlen > 0 && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t')) nlen--;
        p++;
        while (*p == ' ' || *p == '\t') p++;
        const char *val = p;
        int quoted = *p == '"';
        if (quoted) val = ++p;
        while (*p != '\0' && (quoted ? *p != '"' : (*p != ';' && *p != ' ' && *p != '\t'))) p++;
        size_t vlen = (size_t)(p - val);
        if (quoted && *p == '"') p++;
        while (*p == ' ' || *p == '\t') p++;
        if (nlen == 7 && strncasecmp(name, "charset", 7) == 0 &&
            !((vlen == 5 && strncasecmp(val, "utf-8", 5) == 0) ||
              (vlen == 4 && strncasecmp(val, "utf8", 4) == 0)))
            return 0;
        if (*p != '\0' && *p != ';') return 0;
    }
    return 1;
}

/* {"id","status":"pending","created_at","poll_after_ms"}, kept until the ack.
 * Formatted directly: the id is [A-Za-z0-9_-] and the time is RFC 3339, so
 * nothing needs escaping, and the hot path skips building a JSON tree. */
static kiln_status submit_prepare_body(gw_req *r)
{
    char created[32];
    kiln_rfc3339_ms(r->created_at_ms, created, sizeof created);
    size_t cap = sizeof r->job_id + sizeof created + 96;
    char *s = malloc(cap);
    if (s == NULL) return KILN_ENOMEM;
    int n = snprintf(s, cap,
                     "{\"id\":\"%s\",\"status\":\"pending\",\"created_at\":\"%s\","
                     "\"poll_after_ms\":%d}",
                     r->job_id, created, SUBMIT_POLL_AFTER_MS);
    if (n < 0 || (size_t)n >= cap) {
        free(s);
        return KILN_ERR;
    }
    r->pending_body = s;
    r->pending_len = (size_t)n;
    return KILN_OK;
}

static bool submit_connected(const gw_submit_conn *c)
{
    return c->nc != NULL && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* The connection for the next publish (by load, SUBMIT_FAST_BELOW), or the
 * other one when that is not connected; NULL when neither is. */
static const gw_submit_conn *submit_pick(void)
{
    bool quiet = atomic_load(&submit_inflight) < SUBMIT_FAST_BELOW;
    const gw_submit_conn *want = quiet ? &submit_fast : &submit_batched;
    const gw_submit_conn *other = quiet ? &submit_batched : &submit_fast;
    if (submit_connected(want)) return want;
    return submit_connected(other) ? other : NULL;
}

/* Publishes the packed job; on KILN_OK the ack handler will resume r. The
 * caller has suspended r. */
static kiln_status submit_publish(gw_req *r, const char *subject, const uint8_t *buf, size_t len)
{
    kiln_status st = KILN_OK;
    natsMsg *msg = NULL;
    const gw_submit_conn *conn = submit_pick();
    if (conn == NULL) return KILN_EUNAVAILABLE;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
    if (s != NATS_OK) return kiln_nats_status(s);
    uint64_t key = (uint64_t)(uintptr_t)msg;
    r->ack_deadline_ms = kiln_mono_ms() + submit_publish_timeout_ms;
    pthread_mutex_lock(&submit_mu);
    st = gw_map_put(submit_pending, key, r);
    pthread_mutex_unlock(&submit_mu);
    if (st != KILN_OK) goto out;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = r->job_id; /* no MaxWait: submit_tick ends a publish left unacked */
    atomic_fetch_add(&submit_inflight, 1);
    s = js_PublishMsgAsync(conn->js, &msg, &po);
    if (s == NATS_OK) atomic_store(conn == &submit_fast ? &submit_fast_used : &submit_batched_used, true);
    if (s != NATS_OK) {
        atomic_fetch_sub(&submit_inflight, 1); /* no ack will come */
        /* Not sent: no ack will come. Take r back unless it is already gone. */
        pthread_mutex_lock(&submit_mu);
        gw_req *back = gw_map_take(submit_pending, key);
        pthread_mutex_unlock(&submit_mu);
        LOG_WARN("submit publish refused job=%s err=%s", r->job_id, natsStatus_GetText(s));
        /* back == NULL: shutdown already answered it. */
        st = back != NULL ? kiln_nats_status(s) : KILN_OK;
    }
out:
    natsMsg_Destroy(msg); /* NULL (no-op) when the library took it */
    return st;
}

static void submit_op_free(gw_req *r)
{
    submit_op *op = r->op;
    if (op == NULL) return;
    free(op->buf);
    free(op);
    r->op = NULL;
}

/* Publishes the kept job of suspended r; answers and resumes r on failure. */
static void submit_publish_op(gw_req *r)
{
    submit_op *op = r->op;
    r->op = NULL; /* r may be answered and freed as soon as it is published */
    kiln_status st = KILN_EUNAVAILABLE;
    if (gw_gate_enter()) {
        st = submit_publish(r, op->subject, op->buf, op->len);
        gw_gate_leave();
    }
    free(op->buf);
    free(op);
    if (st != KILN_OK) {
        submit_answer_unavailable(r, "the job queue is unavailable; retry");
        gw_server_resume(r);
    }
}

/* The key names a job the store has no record of yet (the first publish
 * failed or is still in flight): publish the same request again under that
 * id (Nats-Msg-Id dedup makes a concurrent copy harmless) and answer 200
 * with the pending job once JetStream confirmed it. */
static void submit_replay(gw_req *r, const char *idem_id)
{
    submit_op *op = r->op;
    Kiln__V1__JobRequest *req = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = KILN_ENOMEM;
    req = kiln__v1__job_request__unpack(NULL, op->len, op->buf);
    if (req == NULL) goto out;
    snprintf(r->job_id, sizeof r->job_id, "%s", idem_id);
    int64_t created = kiln_uuid7_time_ms(idem_id);
    r->created_at_ms = created > 0 ? created : req->created_at_ms;
    char *old_id = req->id;
    req->id = r->job_id;
    req->created_at_ms = r->created_at_ms;
    st = kiln_pb_pack((const ProtobufCMessage *)req, &buf, &len);
    req->id = old_id; /* free_unpacked frees the unpacked string */
    if (st != KILN_OK) goto out;
    free(r->pending_body);
    r->pending_body = NULL;
    if ((st = submit_prepare_body(r)) != KILN_OK) goto out;
    free(op->buf);
    op->buf = buf;
    op->len = len;
    buf = NULL;
    r->rpc_kind = SUBMIT_KIND_REPLAY;
    LOG_INFO("submit idempotent replay job=%s user=%s", r->job_id, r->user);
    submit_publish_op(r);
out:
    if (req != NULL) kiln__v1__job_request__free_unpacked(req, NULL);
    free(buf);
    if (st != KILN_OK) {
        submit_op_free(r);
        submit_answer_unavailable(r, "out of memory");
        gw_server_resume(r);
    }
}

/* The store's answer to kiln.store.idem (libnats or timer thread). */
static void submit_idem_done(gw_req *r, kiln_status st, natsMsg *reply)
{
    Kiln__V1__StoreReply *rep = st == KILN_OK ? gw_rpc_store_reply(reply) : NULL;
    json_t *j = NULL;
    if (rep == NULL) {
        submit_op_free(r);
        submit_answer_unavailable(r, "the status store is unavailable; retry");
        gw_server_resume(r);
        goto out;
    }
    if (rep->error_code != NULL && rep->error_code[0] != '\0') {
        submit_op_free(r);
        if (strcmp(rep->error_code, "idempotency_conflict") == 0)
            gw_answer_error(&r->ans, "idempotency_conflict",
                            "this Idempotency-Key was used with a different body", NULL);
        else
            gw_query_answer_store_error(r, KILN_OK, rep->error_code, rep->error_message);
        gw_server_resume(r);
        goto out;
    }
    if (rep->idem_new) {
        submit_publish_op(r);
        goto out;
    }
    if (rep->idem_id == NULL || !kiln_jobreq_id_ok(rep->idem_id)) {
        submit_op_free(r);
        submit_answer_unavailable(r, "the status store gave no job for this Idempotency-Key; retry");
        gw_server_resume(r);
        goto out;
    }
    if (rep->n_jobs < 1 || rep->jobs[0] == NULL) {
        submit_replay(r, rep->idem_id);
        goto out;
    }
    /* Seen before with the same body: 200 with the original job. */
    submit_op_free(r);
    snprintf(r->job_id, sizeof r->job_id, "%s", rep->idem_id);
    if ((j = gw_jobjson_job(rep->jobs[0])) == NULL) {
        submit_answer_unavailable(r, "out of memory");
    } else {
        gw_answer_json(&r->ans, 200, j);
        gw_answer_header(&r->ans, "Location", "/v1/jobs/%s", r->job_id);
    }
    gw_server_resume(r);
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
}

/* Reserves the key with the store; publishing follows in submit_idem_done. */
static void submit_send_idem(gw_req *r, const Kiln__V1__JobRequest *req, uint8_t *buf, size_t len)
{
    uint8_t hash[32];
    submit_op *op = NULL;
    if (gw_jobjson_body_hash(r->body, r->body_len, hash) != KILN_OK ||
        (op = calloc(1, sizeof *op)) == NULL) {
        free(buf);
        submit_answer_unavailable(r, "out of memory");
        return;
    }
    op->buf = buf;
    op->len = len;
    op->subject = kiln_priority_subject(req->priority);
    r->op = op;
    Kiln__V1__StoreRequest q = KILN__V1__STORE_REQUEST__INIT;
    q.user_id = r->user;
    q.idempotency_key = req->idempotency_key;
    q.body_hash.data = hash;
    q.body_hash.len = sizeof hash;
    q.new_id = r->job_id;
    gw_server_suspend(r);
    if (gw_rpc_store(KILN_SUBJ_STORE_IDEM, &q, submit_store_timeout_ms, submit_idem_done, r) !=
        KILN_OK) {
        submit_op_free(r);
        submit_answer_unavailable(r, "the status store is unavailable; retry");
        gw_server_resume(r);
    }
}

/* Packs and publishes req for r, which is suspended by then. */
static void submit_send(gw_req *r, const Kiln__V1__JobRequest *req)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = kiln_pb_pack((const ProtobufCMessage *)req, &buf, &len);
    if (st == KILN_OK && r->pending_body == NULL) st = submit_prepare_body(r);
    if (st == KILN_OK && req->idempotency_key != NULL && req->idempotency_key[0] != '\0') {
        submit_send_idem(r, req, buf, len);
        return;
    }
    if (st == KILN_OK) {
        gw_server_suspend(r);
        st = submit_publish(r, kiln_priority_subject(req->priority), buf, len);
        if (st != KILN_OK) {
            submit_answer_unavailable(r, "the job queue is unavailable; retry");
            gw_server_resume(r);
        }
    } else {
        submit_answer_unavailable(r, "out of memory");
    }
    free(buf);
}

void gw_submit_handle(gw_req *r)
{
    Kiln__V1__JobRequest *req = NULL;
    gw_fielderr fe = {0};
    char field[64], msg[256];
    int gated = 0;

    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!gw_submit_content_type_ok(ct)) {
        gw_answer_error(&r->ans, "unsupported_media_type",
                        "Content-Type must be application/json", NULL);
        goto out;
    }
    const char *idem = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (idem != NULL && !kiln_idem_key_ok(idem)) {
        gw_answer_error(&r->ans, "invalid_argument",
                        "Idempotency-Key must be 1-128 visible ASCII characters",
                        "Idempotency-Key");
        goto out;
    }
    int64_t now = kiln_now_ms();
    kiln_status st = gw_jobjson_parse(r->body, r->body_len, now, &req, &fe);
    if (st == KILN_EINVAL) {
        gw_answer_error(&r->ans, fe.code, fe.msg, fe.field);
        goto out;
    }
    if (st != KILN_OK) {
        submit_answer_unavailable(r, "out of memory");
        goto out;
    }
    int retry = 1;
    if (!gw_ratelimit_take(r->user_idx, &retry)) {
        gw_answer_error(&r->ans, "rate_limited", "too many submissions; slow down", NULL);
        gw_answer_header(&r->ans, "Retry-After", "%d", retry);
        goto out;
    }
    if (!gw_gate_enter()) {
        submit_answer_unavailable(r, "the gateway is shutting down; retry");
        goto out;
    }
    gated = 1;
    if (submit_pick() == NULL) {
        submit_answer_unavailable(r, "the job queue is unavailable; retry");
        goto out;
    }
    if (kiln_uuid7(r->job_id) != KILN_OK) {
        submit_answer_unavailable(r, "no randomness for a job id");
        goto out;
    }
    r->created_at_ms = now;
    req->created_at_ms = now;
    if (gw_jobjson_set_str(&req->id, r->job_id) != KILN_OK ||
        gw_jobjson_set_str(&req->user_id, r->user) != KILN_OK ||
        (idem != NULL && gw_jobjson_set_str(&req->idempotency_key, idem) != KILN_OK)) {
        submit_answer_unavailable(r, "out of memory");
        goto out;
    }
    if (kiln_jobreq_validate(req, field, sizeof field, msg, sizeof msg) != KILN_OK) {
        gw_answer_error(&r->ans, "invalid_argument", msg, field);
        goto out;
    }
    submit_send(r, req);
out:
    if (gated) gw_gate_leave();
    gw_jobjson_request_free(req);
}
