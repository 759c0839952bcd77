/* queries.c - the store's request/reply handlers: kiln.store.* (StoreRequest
 * -> StoreReply) and the public jobs.status / jobs.cancel.
 *
 * Job states are written by the apply loop only: a cancel is published as
 * a transition on kiln.tx and answered once the apply loop has written it.
 * Request threads write only what no transition carries (the viewed flag,
 * Idempotency-Key reservations), under db_lock().
 *
 * Every read is a point lookup (or an O(limit) index scan for list), so
 * latency does not grow with the store. A miss on get/viewed/cancel/status
 * first waits on the barrier (≤ 2 s) and looks again, so a job is never
 * "not found" just because its JobRequest is still on its way to RocksDB. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "cancel.h"
#include "clock.h"
#include "events.h"
#include "idem.h"
#include "jobreq.h"
#include "list.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "pb.h"
#include "queries.h"
#include "subjects.h"

#define QUERIES_CHECK_MAX_IDS 1024
#define QUERIES_MAX_SUBS 32
#define QUERIES_DRAIN_MS 5000
#define QUERIES_DRAIN_GRACE_MS 500 /* waiting outlasts the drains' own deadline */
#define QUERIES_EVENT_TRIES 3
#define QUERIES_CANCEL_WAIT_MS 2000 /* for the apply loop to write a cancel */

typedef struct queries_binding queries_binding;
typedef void (*queries_fn)(queries *q, natsMsg *msg);

struct queries_binding {
    queries *q;
    queries_fn fn;
};

struct queries {
    db_store *db;
    barrier *b;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *subs[QUERIES_MAX_SUBS];
    int nsubs;
    int64_t drain_deadline; /* set by queries_stop_soon; 0 before */
    queries_binding bind[16];
    kiln_metric *m_latency, *m_requests, *m_cancelled, *m_idem_new;
};

/* ---- replies ------------------------------------------------------------ */

/* Replies data with an optional header. Nothing to do without a reply subject. */
static void queries_respond(queries *q, natsMsg *req, const uint8_t *data, size_t len,
                            const char *hdr, const char *val)
{
    const char *reply = natsMsg_GetReply(req);
    natsMsg *m = NULL;
    if (reply == NULL || reply[0] == '\0') return;
    natsStatus s = natsMsg_Create(&m, reply, NULL, (const char *)data, (int)len);
    if (s == NATS_OK && hdr != NULL) s = natsMsgHeader_Set(m, hdr, val);
    if (s == NATS_OK) s = natsConnection_PublishMsg(q->nc, m);
    if (s != NATS_OK)
        LOG_WARN("reply failed subject=%s status=%s", natsMsg_GetSubject(req),
                 natsStatus_GetText(s));
    natsMsg_Destroy(m);
}

static void queries_reply(queries *q, natsMsg *req, const Kiln__V1__StoreReply *r)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (kiln_pb_pack(&r->base, &buf, &len) != KILN_OK) {
        /* Too large to send: say so instead of leaving the caller to time out. */
        Kiln__V1__StoreReply e = KILN__V1__STORE_REPLY__INIT;
        e.error_code = "unavailable";
        e.error_message = "reply too large";
        if (kiln_pb_pack(&e.base, &buf, &len) != KILN_OK) return;
    }
    queries_respond(q, req, buf, len, NULL, NULL);
    free(buf);
}

static void queries_reply_error(queries *q, natsMsg *req, const char *code, const char *message)
{
    Kiln__V1__StoreReply r = KILN__V1__STORE_REPLY__INIT;
    r.error_code = (char *)code;
    r.error_message = (char *)message;
    queries_reply(q, req, &r);
}

/* Maps a lookup status to the reply's error code. */
static void queries_reply_status(queries *q, natsMsg *req, kiln_status st)
{
    if (st == KILN_ENOTFOUND) queries_reply_error(q, req, "not_found", "no such job");
    else queries_reply_error(q, req, "unavailable", "the store could not read the job");
}

static Kiln__V1__StoreRequest *queries_parse(natsMsg *msg)
{
    int len = natsMsg_GetDataLength(msg);
    if (len < 0 || len > KILN_PB_MAX_BYTES) return NULL;
    const uint8_t *data = (const uint8_t *)natsMsg_GetData(msg);
    Kiln__V1__StoreRequest *r =
        kiln__v1__store_request__unpack(NULL, (size_t)len, data != NULL ? data : (const uint8_t *)"");
    if (r == NULL) return NULL;
    if (strlen(r->user_id) > KILN_USER_MAX_LEN) {
        kiln__v1__store_request__free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

/* Copies a plain-text job id body (jobs.status, jobs.cancel) into id. */
static int queries_body_id(natsMsg *msg, char *id, size_t idlen)
{
    int len = natsMsg_GetDataLength(msg);
    if (len <= 0 || (size_t)len >= idlen) return 0;
    memcpy(id, natsMsg_GetData(msg), (size_t)len);
    id[len] = '\0';
    return kiln_jobreq_id_ok(id);
}

/* ---- lookups -------------------------------------------------------------- */

/* Loads id; on a miss (or first, when sync) waits on the barrier. user NULL
 * or "" = any user; another user's job is not found. */
static kiln_status queries_load(queries *q, const char *id, const char *user, int sync,
                                Kiln__V1__JobRecord **out)
{
    Kiln__V1__JobRecord *rec = NULL;
    if (!kiln_jobreq_id_ok(id)) return KILN_ENOTFOUND;
    if (sync) (void)barrier_wait(q->b, BARRIER_MAX_WAIT_MS);
    kiln_status st = db_load_record(q->db, NULL, NULL, id, &rec);
    if (st == KILN_ENOTFOUND && !sync) {
        (void)barrier_wait(q->b, BARRIER_MAX_WAIT_MS);
        st = db_load_record(q->db, NULL, NULL, id, &rec);
    }
    if (st != KILN_OK) return st;
    if (user != NULL && user[0] != '\0' && strcmp(user, rec->request->user_id) != 0) {
        kiln__v1__job_record__free_unpacked(rec, NULL);
        return KILN_ENOTFOUND;
    }
    *out = rec;
    return KILN_OK;
}

static void queries_reply_record(queries *q, natsMsg *req, Kiln__V1__JobRecord *rec,
                                 const char *code)
{
    Kiln__V1__StoreReply r = KILN__V1__STORE_REPLY__INIT;
    if (code != NULL) r.error_code = (char *)code;
    r.n_jobs = 1;
    r.jobs = &rec;
    queries_reply(q, req, &r);
}

/* ---- kiln.store.get / list / check / ping ------------------------------- */

static void queries_get(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreRequest *req = queries_parse(msg);
    Kiln__V1__JobRecord *rec = NULL;
    if (req == NULL) {
        queries_reply_error(q, msg, "invalid_argument", "undecodable StoreRequest");
        return;
    }
    kiln_status st = queries_load(q, req->id, req->user_id, req->sync, &rec);
    if (st == KILN_OK) queries_reply_record(q, msg, rec, NULL);
    else queries_reply_status(q, msg, st);
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    kiln__v1__store_request__free_unpacked(req, NULL);
}

static void queries_list(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreRequest *req = queries_parse(msg);
    list_page page;
    const char *field = "";
    if (req == NULL) {
        queries_reply_error(q, msg, "invalid_argument", "undecodable StoreRequest");
        return;
    }
    kiln_status st = list_read(q->db, req, &page, &field);
    if (st == KILN_EINVAL) {
        char text[64];
        snprintf(text, sizeof text, "%s is not valid", field);
        queries_reply_error(q, msg, "invalid_argument", text);
    } else if (st != KILN_OK) {
        queries_reply_status(q, msg, st);
    } else {
        Kiln__V1__StoreReply r = KILN__V1__STORE_REPLY__INIT;
        r.n_jobs = page.n;
        r.jobs = page.jobs;
        r.next_cursor = page.next_cursor;
        r.active_count = page.active_count;
        r.unviewed_count = page.unviewed_count;
        queries_reply(q, msg, &r);
        list_page_free(&page);
    }
    kiln__v1__store_request__free_unpacked(req, NULL);
}

static void queries_check(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreRequest *req = queries_parse(msg);
    Kiln__V1__JobRecord *recs = NULL, **ptrs = NULL;
    Kiln__V1__JobStatus *sts = NULL;
    Kiln__V1__JobRequest *reqs = NULL;
    size_t n = 0;
    if (req == NULL) {
        queries_reply_error(q, msg, "invalid_argument", "undecodable StoreRequest");
        return;
    }
    if (req->n_ids > QUERIES_CHECK_MAX_IDS) {
        queries_reply_error(q, msg, "invalid_argument", "too many ids (max 1024)");
        goto out;
    }
    /* A store that could not catch up may not hold a processing job's
     * newer transitions: then its age is not told (nothing looks abandoned). */
    bool caught_up = !req->sync || barrier_wait(q->b, BARRIER_MAX_WAIT_MS) == KILN_OK;
    size_t cap = req->n_ids > 0 ? req->n_ids : 1;
    recs = calloc(cap, sizeof *recs);
    ptrs = calloc(cap, sizeof *ptrs);
    sts = calloc(cap, sizeof *sts);
    reqs = calloc(cap, sizeof *reqs);
    if (recs == NULL || ptrs == NULL || sts == NULL || reqs == NULL) {
        queries_reply_error(q, msg, "unavailable", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < req->n_ids; i++) {
        Kiln__V1__JobRecord *rec = NULL;
        if (!kiln_jobreq_id_ok(req->ids[i])) continue;
        kiln_status st = db_load_record(q->db, NULL, NULL, req->ids[i], &rec);
        if (st == KILN_ENOTFOUND) continue;
        if (st != KILN_OK) {
            queries_reply_status(q, msg, st);
            goto out;
        }
        /* Only id, state and attempts (and, while processing, what
         * kiln_jobrec_abandoned needs; while pending, retry_at_ms): the
         * reply stays small for 1024 ids. */
        kiln__v1__job_record__init(&recs[n]);
        kiln__v1__job_status__init(&sts[n]);
        kiln__v1__job_request__init(&reqs[n]);
        reqs[n].id = req->ids[i];
        sts[n].id = req->ids[i];
        sts[n].state = rec->status->state;
        sts[n].attempts = rec->status->attempts;
        recs[n].request_seq = rec->request_seq;
        if (caught_up && rec->status->state == KILN__V1__JOB_STATE__JOB_STATE_PROCESSING) {
            recs[n].updated_at_ms = rec->updated_at_ms;
            if (rec->request != NULL) reqs[n].timeout_s = rec->request->timeout_s;
        }
        /* When a waiting job's next attempt became due: a consumer tells a
         * late redelivery (a call given up) from a retry on time
         * (cons_job_ask_rule). */
        if (rec->status->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING)
            recs[n].retry_at_ms = rec->retry_at_ms;
        recs[n].request = &reqs[n];
        recs[n].status = &sts[n];
        ptrs[n] = &recs[n];
        n++;
        kiln__v1__job_record__free_unpacked(rec, NULL);
    }
    Kiln__V1__StoreReply r = KILN__V1__STORE_REPLY__INIT;
    r.n_jobs = n;
    r.jobs = ptrs;
    r.synced = req->sync && caught_up;
    queries_reply(q, msg, &r);
out:
    free(recs);
    free(ptrs);
    free(sts);
    free(reqs);
    kiln__v1__store_request__free_unpacked(req, NULL);
}

static void queries_ping(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreReply r = KILN__V1__STORE_REPLY__INIT;
    r.result_ttl_ms = q->db->result_ttl_ms;
    r.reports_result_ttl = true;
    queries_reply(q, msg, &r);
}

/* ---- writes: viewed, idem, cancel ---------------------------------------- */

static void queries_viewed(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreRequest *req = queries_parse(msg);
    Kiln__V1__JobRecord *rec = NULL;
    db_batch *wb = NULL;
    events_list ev = {0};
    kiln_status st = KILN_OK;
    if (req == NULL || req->user_id[0] == '\0') {
        queries_reply_error(q, msg, "invalid_argument", req == NULL ? "undecodable StoreRequest" : "user_id");
        goto out;
    }
    if (db_batch_create(&wb) != KILN_OK) {
        queries_reply_error(q, msg, "unavailable", "out of memory");
        goto out;
    }
    for (int pass = 0; pass < 2; pass++) {
        db_batch_clear(wb);
        events_reset(&ev);
        db_lock(q->db);
        st = apply_viewed(q->db, wb, req->id, req->user_id, &ev);
        if (st == KILN_OK) st = db_write(q->db, wb);
        db_unlock(q->db);
        if (st != KILN_ENOTFOUND || pass == 1 || !kiln_jobreq_id_ok(req->id)) break;
        (void)barrier_wait(q->b, BARRIER_MAX_WAIT_MS);
    }
    /* Written: the event is best effort from here (a failure is logged). */
    if (st == KILN_OK) (void)events_publish_sync(q->js, &ev, QUERIES_EVENT_TRIES);
    if (st == KILN_OK) st = db_load_record(q->db, NULL, NULL, req->id, &rec);
    if (st == KILN_OK) queries_reply_record(q, msg, rec, NULL);
    else queries_reply_status(q, msg, st);
out:
    events_free(&ev);
    db_batch_destroy(wb);
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    if (req != NULL) kiln__v1__store_request__free_unpacked(req, NULL);
}

/* kiln.store.idem: reserve (user, idempotency_key) for new_id, or say
 * which job it names. Reply: idem_id, idem_new, jobs[0] = the record of
 * idem_id when the store has it; a known key with another body hash is
 * error_code idempotency_conflict (with idem_id). */
static void queries_idem(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreRequest *req = queries_parse(msg);
    Kiln__V1__JobRecord *rec = NULL;
    db_batch *wb = NULL;
    idem_result res;
    const char *bad = NULL;
    if (req == NULL) bad = "undecodable StoreRequest";
    else if (req->user_id[0] == '\0') bad = "user_id is required";
    else if (!kiln_idem_key_ok(req->idempotency_key)) bad = "idempotency_key must be 1-128 visible ASCII characters";
    else if (req->body_hash.len != IDEM_HASH_LEN) bad = "body_hash must be 32 bytes";
    else if (!kiln_jobreq_id_ok(req->new_id)) bad = "new_id is not a valid job id";
    if (bad != NULL) {
        queries_reply_error(q, msg, "invalid_argument", bad);
        goto out;
    }
    if (db_batch_create(&wb) != KILN_OK) {
        queries_reply_error(q, msg, "unavailable", "out of memory");
        goto out;
    }
    /* Lookup and reservation under the write mutex: two concurrent
     * requests with one key cannot both reserve it. */
    db_lock(q->db);
    kiln_status st = idem_reserve(q->db, wb, req->user_id, req->idempotency_key,
                                  req->body_hash.data, req->new_id, kiln_now_ms(), &res);
    if (st == KILN_OK && res.is_new) st = db_write(q->db, wb);
    db_unlock(q->db);
    if (st != KILN_OK) {
        queries_reply_error(q, msg, "unavailable", "the store could not reserve the key");
        goto out;
    }
    if (res.is_new) kiln_metric_add(q->m_idem_new, 1);
    Kiln__V1__StoreReply r = KILN__V1__STORE_REPLY__INIT;
    r.idem_id = res.id;
    r.idem_new = res.is_new;
    if (res.conflict) {
        r.error_code = "idempotency_conflict";
        r.error_message = "this Idempotency-Key was used with a different body";
    } else if (apply_load_owned(q->db, NULL, res.id, req->user_id, &rec) == KILN_OK) {
        r.n_jobs = 1;
        r.jobs = &rec;
    }
    queries_reply(q, msg, &r);
out:
    db_batch_destroy(wb);
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    if (req != NULL) kiln__v1__store_request__free_unpacked(req, NULL);
}

typedef enum {
    QUERIES_CANCEL_DONE = 0,         /* the apply loop wrote cancelled */
    QUERIES_CANCEL_ALREADY_FINISHED, /* terminal already (or finished first) */
    QUERIES_CANCEL_NOT_FOUND,        /* unknown id, or another user's job */
} queries_cancel_result;

/* Cancels id (for user, NULL = any) through the stream: a non-terminal job
 * gets the store's CANCELLED transition on kiln.tx; once the apply loop has
 * written it (it then publishes jobs.done and kiln.cancelled.<id>), the
 * record says whether the cancel or a result that came first won. *rec_out
 * gets the record as it is afterwards (not for NOT_FOUND). KILN_ETIMEOUT or
 * a NATS status when the cancel could not be confirmed: the caller answers
 * unavailable and a retry is safe. */
static kiln_status queries_do_cancel(queries *q, const char *id, const char *user,
                                     queries_cancel_result *res, Kiln__V1__JobRecord **rec_out)
{
    Kiln__V1__JobRecord *rec = NULL;
    uint64_t seq = 0;
    *res = QUERIES_CANCEL_NOT_FOUND;
    kiln_status st = queries_load(q, id, user, 0, &rec);
    if (st == KILN_ENOTFOUND) return KILN_OK;
    if (st != KILN_OK) return st;
    if (!kiln_state_is_terminal(rec->status->state)) {
        st = cancel_publish(q->js, rec, &seq);
        if (st == KILN_OK) st = barrier_wait_seq(q->b, seq, QUERIES_CANCEL_WAIT_MS);
        kiln__v1__job_record__free_unpacked(rec, NULL);
        rec = NULL;
        if (st != KILN_OK) {
            LOG_WARN("cancel not confirmed job=%s seq=%llu status=%s", id, (unsigned long long)seq,
                     kiln_status_str(st));
            return st;
        }
        st = db_load_record(q->db, NULL, NULL, id, &rec);
        if (st != KILN_OK) return st;
        if (!kiln_state_is_terminal(rec->status->state)) {
            /* Cannot happen by the rules; do not claim success. */
            LOG_ERROR("cancel applied but job not terminal job=%s state=%s", id,
                      kiln_state_name(rec->status->state));
            kiln__v1__job_record__free_unpacked(rec, NULL);
            return KILN_ERR;
        }
        if (rec->status->state == KILN__V1__JOB_STATE__JOB_STATE_CANCELLED) {
            *res = QUERIES_CANCEL_DONE;
            kiln_metric_add(q->m_cancelled, 1);
        } else {
            *res = QUERIES_CANCEL_ALREADY_FINISHED;
        }
    } else {
        *res = QUERIES_CANCEL_ALREADY_FINISHED;
    }
    *rec_out = rec;
    return KILN_OK;
}

static void queries_cancel(queries *q, natsMsg *msg)
{
    Kiln__V1__StoreRequest *req = queries_parse(msg);
    Kiln__V1__JobRecord *rec = NULL;
    queries_cancel_result res = QUERIES_CANCEL_NOT_FOUND;
    if (req == NULL || req->user_id[0] == '\0') {
        queries_reply_error(q, msg, "invalid_argument", req == NULL ? "undecodable StoreRequest" : "user_id");
        goto out;
    }
    kiln_status st = queries_do_cancel(q, req->id, req->user_id, &res, &rec);
    if (st != KILN_OK) queries_reply_status(q, msg, st);
    else if (res == QUERIES_CANCEL_NOT_FOUND) queries_reply_status(q, msg, KILN_ENOTFOUND);
    else queries_reply_record(q, msg, rec, res == QUERIES_CANCEL_ALREADY_FINISHED ? "already_finished" : NULL);
out:
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    if (req != NULL) kiln__v1__store_request__free_unpacked(req, NULL);
}

/* ---- public: jobs.status, jobs.cancel ----------------------------------- */

static void queries_reply_status_pb(queries *q, natsMsg *msg, const Kiln__V1__JobStatus *status,
                                    const char *hdr, const char *val)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (kiln_pb_pack(&status->base, &buf, &len) != KILN_OK) {
        queries_respond(q, msg, NULL, 0, KILN_HDR_ERROR, "unavailable");
        return;
    }
    queries_respond(q, msg, buf, len, hdr, val);
    free(buf);
}

static void queries_jobs_status(queries *q, natsMsg *msg)
{
    char id[KILN_ID_MAX_LEN + 1];
    Kiln__V1__JobRecord *rec = NULL;
    kiln_status st = KILN_ENOTFOUND;
    if (queries_body_id(msg, id, sizeof id)) st = queries_load(q, id, NULL, 0, &rec);
    if (st == KILN_OK) queries_reply_status_pb(q, msg, rec->status, NULL, NULL);
    else queries_respond(q, msg, NULL, 0, KILN_HDR_ERROR, st == KILN_ENOTFOUND ? "not_found" : "unavailable");
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
}

/* Reply: header Kiln-Status cancelled | already_finished | not_found (or
 * Kiln-Error: unavailable); the body is the job's JobStatus when known. */
static void queries_jobs_cancel(queries *q, natsMsg *msg)
{
    char id[KILN_ID_MAX_LEN + 1];
    Kiln__V1__JobRecord *rec = NULL;
    queries_cancel_result res = QUERIES_CANCEL_NOT_FOUND;
    kiln_status st = KILN_OK;
    if (queries_body_id(msg, id, sizeof id)) st = queries_do_cancel(q, id, NULL, &res, &rec);
    if (st != KILN_OK) {
        queries_respond(q, msg, NULL, 0, KILN_HDR_ERROR, "unavailable");
    } else if (res == QUERIES_CANCEL_NOT_FOUND || rec == NULL) {
        queries_respond(q, msg, NULL, 0, KILN_HDR_STATUS, "not_found");
    } else {
        queries_reply_status_pb(q, msg, rec->status, KILN_HDR_STATUS,
                                res == QUERIES_CANCEL_DONE ? "cancelled" : "already_finished");
    }
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
}

/* ---- wiring ---------------------------------------------------------------- */

static void queries_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    queries_binding *bd = closure;
    int64_t t0 = kiln_mono_us();
    bd->fn(bd->q, msg);
    kiln_metric_observe_ms(bd->q->m_latency, (double)(kiln_mono_us() - t0) / 1000.0);
    kiln_metric_add(bd->q->m_requests, 1);
    natsMsg_Destroy(msg);
}

static const struct {
    const char *subject;
    queries_fn fn;
    int copies; /* subscriptions (threads) in the queue group */
} queries_table[] = {
    {KILN_SUBJ_STORE_GET, queries_get, 4},
    {KILN_SUBJ_STATUS, queries_jobs_status, 4},
    {KILN_SUBJ_STORE_CHECK, queries_check, 4}, /* a sync check may wait on the barrier */
    {KILN_SUBJ_STORE_LIST, queries_list, 2},
    {KILN_SUBJ_STORE_VIEWED, queries_viewed, 1},
    {KILN_SUBJ_STORE_CANCEL, queries_cancel, 2},
    {KILN_SUBJ_CANCEL, queries_jobs_cancel, 2},
    {KILN_SUBJ_STORE_IDEM, queries_idem, 2},
    {KILN_SUBJ_STORE_PING, queries_ping, 1},
};

kiln_status queries_start(db_store *db, barrier *b, natsConnection *nc, jsCtx *js, queries **out)
{
    kiln_status st = KILN_OK;
    queries *q = calloc(1, sizeof *q);
    if (q == NULL) return KILN_ENOMEM;
    q->db = db;
    q->b = b;
    q->nc = nc;
    q->js = js;
    q->m_latency = kiln_metric_histogram_ms("kiln_store_query_ms", "Store request handling time");
    q->m_requests = kiln_metric_counter("kiln_store_queries_total", "Store requests answered");
    q->m_cancelled = kiln_metric_counter("kiln_store_cancelled_total", "Jobs cancelled by request");
    q->m_idem_new = kiln_metric_counter("kiln_store_idem_reserved_total",
                                        "Idempotency-Keys reserved through kiln.store.idem");

    size_t nt = sizeof queries_table / sizeof queries_table[0];
    for (size_t i = 0; i < nt; i++) {
        q->bind[i].q = q;
        q->bind[i].fn = queries_table[i].fn;
        for (int c = 0; c < queries_table[i].copies; c++) {
            natsSubscription *sub = NULL;
            if (q->nsubs == QUERIES_MAX_SUBS) {
                st = KILN_ERR;
                goto out;
            }
            natsStatus s = natsConnection_QueueSubscribe(&sub, nc, queries_table[i].subject,
                                                         KILN_STORE_QUEUE, queries_on_msg, &q->bind[i]);
            if (s != NATS_OK) {
                LOG_ERROR("subscribe failed subject=%s status=%s", queries_table[i].subject,
                          natsStatus_GetText(s));
                st = kiln_nats_status(s);
                goto out;
            }
            q->subs[q->nsubs++] = sub;
        }
    }
    /* Make sure the server has the interest before we report ready. */
    natsStatus s = natsConnection_FlushTimeout(nc, 5000);
    if (s != NATS_OK) {
        st = kiln_nats_status(s);
        goto out;
    }
    LOG_INFO("queries ready subscriptions=%d queue=%s", q->nsubs, KILN_STORE_QUEUE);
    *out = q;
    q = NULL;
out:
    queries_stop(q);
    return st;
}

void queries_stop_soon(queries *q)
{
    if (q == NULL || q->drain_deadline != 0) return;
    /* One deadline for all: with NATS down, the drain's flush of each UNSUB
     * waits out its timeout (libnats' default is 30 s per subscription). */
    for (int i = 0; i < q->nsubs; i++) (void)natsSubscription_DrainTimeout(q->subs[i], QUERIES_DRAIN_MS);
    q->drain_deadline = kiln_mono_ms() + QUERIES_DRAIN_MS + QUERIES_DRAIN_GRACE_MS;
}

void queries_stop(queries *q)
{
    if (q == NULL) return;
    queries_stop_soon(q);
    int64_t deadline = q->drain_deadline;
    for (int i = 0; i < q->nsubs; i++) {
        /* Handlers in flight finish before the database closes. */
        int64_t left = deadline - kiln_mono_ms();
        (void)natsSubscription_WaitForDrainCompletion(q->subs[i], left > 1 ? left : 1);
        natsSubscription_Destroy(q->subs[i]);
    }
    free(q);
}
