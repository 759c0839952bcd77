/* sse.c - Server-Sent Events from KILN_EVENTS, one ordered JetStream
 * consumer per client and no thread per client.
 *
 * Threads: the stream is opened on an MHD thread (look-ups, subscribe); the
 * subscription's callback runs on libnats' global delivery pool and appends
 * formatted events to the client's bounded buffer; MHD's content reader (the
 * client's MHD thread) drains the buffer and suspends the connection when it
 * is empty; the callback resumes it. The keep-alive tick runs on the timer
 * thread. A client is freed when both MHD (response released) and libnats
 * (subscription complete) let go of it: two references under its mutex. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "clock.h"
#include "errors.h"
#include "job_json.h"
#include "jobreq.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "query.h"
#include "rpc.h"
#include "sse.h"
#include "subjects.h"
#include "timers.h"

#define SSE_TICK_MS 5000
#define SSE_SUBJECT_MAX (sizeof KILN_SUBJ_EVENTS_PREFIX + 2 * GW_USER_MAX + 70)
#define SSE_KEEPALIVE ": keep-alive\n\n"
#define SSE_READ_BLOCK 16384

typedef struct sse_client {
    pthread_mutex_t mu;
    struct MHD_Connection *conn; /* NULL once MHD released the stream */
    char *buf;                   /* pending bytes are buf[off, len) */
    size_t off, len, cap;
    bool suspended;              /* suspended by the reader, not yet resumed */
    bool closing;                /* end the stream once the buffer is sent */
    bool failed;                 /* overflow: end the stream at once */
    bool released;               /* MHD let go; drop whatever arrives */
    bool per_job;
    int refs;                    /* the response, the subscription */
    uint64_t last_pos;           /* highest event position put in the buffer (GW_SSE_POS) */
    int64_t last_write_ms;       /* mono: last bytes handed to MHD or queued */
    natsSubscription *sub;
    char job_id[KILN_ID_MAX_LEN + 1];
    struct sse_client *prev, *next; /* sse_list, under sse_list_mu */
} sse_client;

static pthread_mutex_t sse_list_mu = PTHREAD_MUTEX_INITIALIZER;
static sse_client *sse_list;
static atomic_long sse_open_count;
static atomic_bool sse_accepting;
static natsConnection *sse_nc;
static jsCtx *sse_js;
static int64_t sse_timeout_ms = 2000;

long gw_sse_count(void) { return atomic_load(&sse_open_count); }

void gw_sse_user_hex(const char *user, char *out, size_t outlen)
{
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)user; *p != '\0' && o + 2 < outlen; p++) {
        out[o++] = digits[*p >> 4];
        out[o++] = digits[*p & 15];
    }
    if (outlen > 0) out[o] = '\0';
}

/* Parses 1..digits decimal digits of s[0..n) into *out (no overflow). */
static int sse_parse_u64(const char *s, size_t n, size_t digits, uint64_t *out)
{
    if (n == 0 || n > digits) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int gw_sse_parse_last_id(const char *s, uint64_t *out)
{
    if (s == NULL) return -1;
    const char *dot = strchr(s, '.');
    size_t n = dot != NULL ? (size_t)(dot - s) : strlen(s);
    uint64_t seq = 0, index = 0;
    if (sse_parse_u64(s, n, 20, &seq) != 0 || GW_SSE_SEQ(GW_SSE_POS(seq, 0)) != seq) return -1;
    if (dot != NULL &&
        (sse_parse_u64(dot + 1, strlen(dot + 1), 4, &index) != 0 || index == 0 ||
         index > GW_SSE_INDEX(UINT64_MAX)))
        return -1;
    *out = GW_SSE_POS(seq, index);
    return 0;
}

/* The first stream sequence a client that has seen pos still needs: the
 * rest of an EventBatch, else the next message. */
static uint64_t sse_resume_seq(uint64_t pos)
{
    return GW_SSE_SEQ(pos) + (GW_SSE_INDEX(pos) != 0 ? 0 : 1);
}

char *gw_sse_format_event(const Kiln__V1__JobRecord *rec, uint64_t pos, size_t *len, int *terminal)
{
    json_t *j = gw_jobjson_job(rec);
    char *data = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (data == NULL) return NULL;
    char id[32];
    if (GW_SSE_INDEX(pos) != 0)
        snprintf(id, sizeof id, "%" PRIu64 ".%u", GW_SSE_SEQ(pos), (unsigned)GW_SSE_INDEX(pos));
    else
        snprintf(id, sizeof id, "%" PRIu64, GW_SSE_SEQ(pos));
    size_t dlen = strlen(data);
    size_t cap = dlen + 64;
    char *ev = malloc(cap);
    if (ev != NULL) {
        int n = snprintf(ev, cap, "event: job\nid: %s\ndata: %s\n\n", id, data);
        if (n < 0 || (size_t)n >= cap) {
            free(ev);
            ev = NULL;
        } else {
            *len = (size_t)n;
        }
    }
    free(data);
    *terminal = rec->status != NULL && kiln_state_is_terminal(rec->status->state);
    return ev;
}

/* Appends n bytes; false when the client is over its cap. Caller holds c->mu. */
static bool sse_append_locked(sse_client *c, const char *data, size_t n)
{
    size_t pending = c->len - c->off;
    if (pending + n > GW_SSE_BUF_MAX) return false;
    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, pending);
        c->off = 0;
        c->len = pending;
    }
    if (c->len + n > c->cap) {
        size_t cap = c->cap == 0 ? 4096 : c->cap;
        while (cap < c->len + n) cap *= 2;
        if (cap > GW_SSE_BUF_MAX) cap = GW_SSE_BUF_MAX;
        char *nb = realloc(c->buf, cap);
        if (nb == NULL) return false;
        c->buf = nb;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    return true;
}

/* Resumes the connection if the reader suspended it. Caller holds c->mu. */
static void sse_wake_locked(sse_client *c)
{
    if (!c->suspended || c->conn == NULL) return;
    c->suspended = false;
    MHD_resume_connection(c->conn);
}

static void sse_unref(sse_client *c)
{
    pthread_mutex_lock(&c->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&c->mu);
    if (left > 0) return;
    pthread_mutex_destroy(&c->mu);
    free(c->buf);
    free(c);
}

/* MHD content reader (the client's MHD thread). */
static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    sse_client *c = cls;
    ssize_t n;
    pthread_mutex_lock(&c->mu);
    if (c->failed) {
        /* With MHD_USE_TURBO MHD closes the socket only on its thread's next
         * wake-up; the FIN tells the client now (it resumes with Last-Event-ID). */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci != NULL) shutdown(ci->connect_fd, SHUT_WR);
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (c->len > c->off) {
        size_t k = c->len - c->off;
        if (k > max) k = max;
        memcpy(out, c->buf + c->off, k);
        c->off += k;
        if (c->off == c->len) c->off = c->len = 0;
        c->last_write_ms = kiln_mono_ms();
        n = (ssize_t)k;
    } else if (c->closing) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing to send: park the connection until an event or a keep-alive. */
        c->suspended = true;
        MHD_suspend_connection(c->conn);
        n = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* MHD released the response: the request is over (MHD thread). */
static void sse_release(void *cls)
{
    sse_client *c = cls;
    pthread_mutex_lock(&sse_list_mu);
    if (c->prev != NULL) c->prev->next = c->next;
    else if (sse_list == c) sse_list = c->next;
    if (c->next != NULL) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    pthread_mutex_unlock(&sse_list_mu);
    pthread_mutex_lock(&c->mu);
    c->released = true;
    c->conn = NULL;
    natsSubscription *sub = c->sub;
    c->sub = NULL;
    pthread_mutex_unlock(&c->mu);
    if (sub != NULL) {
        /* Deletes the ephemeral consumer; the complete callback drops its reference. */
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    atomic_fetch_sub(&sse_open_count, 1);
    LOG_DEBUG("sse closed job=%s", c->per_job ? c->job_id : "-");
    sse_unref(c);
}

static void sse_on_complete(void *closure) { sse_unref(closure); }

static Kiln__V1__JobRecord *sse_unpack(const char *data, int len)
{
    if (len < 0 || len > KILN_PB_MAX_BYTES) return NULL;
    return kiln__v1__job_record__unpack(NULL, (size_t)len, (const uint8_t *)data);
}

/* Queues an event for rec at position pos (any thread). */
static void sse_push(sse_client *c, const Kiln__V1__JobRecord *rec, uint64_t pos)
{
    size_t len = 0;
    int terminal = 0;
    char *ev = gw_sse_format_event(rec, pos, &len, &terminal);
    pthread_mutex_lock(&c->mu);
    if (c->released || c->closing || c->failed || (pos != 0 && pos <= c->last_pos)) goto unlock;
    if (ev == NULL || !sse_append_locked(c, ev, len)) {
        /* Too slow (or out of memory): close; the client resumes with Last-Event-ID. */
        LOG_WARN("sse client too slow, closing job=%s last_seq=%" PRIu64,
                 c->per_job ? c->job_id : "-", GW_SSE_SEQ(c->last_pos));
        c->failed = true;
    } else {
        if (pos > c->last_pos) c->last_pos = pos;
        if (c->per_job && terminal) c->closing = true;
    }
    sse_wake_locked(c);
unlock:
    pthread_mutex_unlock(&c->mu);
    free(ev);
}

/* Is subject an EventBatch subject (kiln.events.<hex>.$new)? */
static bool sse_is_batch(const char *subject)
{
    static const char suffix[] = "." KILN_EVENTS_NEW_TOKEN;
    size_t n = strlen(subject), k = sizeof suffix - 1;
    return n > k && memcmp(subject + n - k, suffix, k) == 0;
}

/* Queues every record of the EventBatch in data (message seq). */
static void sse_push_batch(sse_client *c, const char *data, int len, uint64_t seq)
{
    Kiln__V1__EventBatch *b = len >= 0 && len <= KILN_PB_MAX_BYTES
                                  ? kiln__v1__event_batch__unpack(NULL, (size_t)len, (const uint8_t *)data)
                                  : NULL;
    if (b == NULL) {
        LOG_WARN("sse undecodable event batch seq=%" PRIu64, seq);
        return;
    }
    size_t n = b->n_records;
    if (n > GW_SSE_INDEX(UINT64_MAX)) {
        LOG_WARN("sse event batch too long seq=%" PRIu64 " records=%zu", seq, n);
        n = GW_SSE_INDEX(UINT64_MAX);
    }
    /* A client resuming inside this batch has seen its first records. */
    pthread_mutex_lock(&c->mu);
    uint64_t seen = c->last_pos;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        if (GW_SSE_POS(seq, i + 1) <= seen) continue;
        Kiln__V1__JobRecord *rec = sse_unpack((const char *)b->records[i].data, (int)b->records[i].len);
        if (rec == NULL) {
            LOG_WARN("sse undecodable record seq=%" PRIu64 " index=%zu", seq, i + 1);
            continue;
        }
        sse_push(c, rec, GW_SSE_POS(seq, i + 1));
        kiln__v1__job_record__free_unpacked(rec, NULL);
    }
    kiln__v1__event_batch__free_unpacked(b, NULL);
}

/* Subscription callback (libnats delivery pool). */
static void sse_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc, (void)sub;
    sse_client *c = closure;
    jsMsgMetaData *meta = NULL;
    uint64_t seq = 0;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
    }
    const char *subject = natsMsg_GetSubject(msg);
    if (sse_is_batch(subject)) {
        sse_push_batch(c, natsMsg_GetData(msg), natsMsg_GetDataLength(msg), seq);
    } else {
        Kiln__V1__JobRecord *rec = sse_unpack(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
        if (rec == NULL) LOG_WARN("sse undecodable event subject=%s", subject);
        else sse_push(c, rec, GW_SSE_POS(seq, 0));
        if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    }
    natsMsg_Destroy(msg);
}

/* Keep-alive comments for quiet streams (timer thread); re-arms itself. */
static void sse_tick(uint64_t token, void *arg)
{
    (void)token, (void)arg;
    int64_t now = kiln_mono_ms();
    pthread_mutex_lock(&sse_list_mu);
    for (sse_client *c = sse_list; c != NULL; c = c->next) {
        pthread_mutex_lock(&c->mu);
        if (!c->released && c->len == c->off && now - c->last_write_ms >= GW_SSE_KEEPALIVE_MS) {
            if (sse_append_locked(c, SSE_KEEPALIVE, sizeof SSE_KEEPALIVE - 1)) {
                c->last_write_ms = now;
                sse_wake_locked(c);
            }
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&sse_list_mu);
    if (atomic_load(&sse_accepting) && gw_timers_add(now + SSE_TICK_MS, sse_tick, 0, NULL) != KILN_OK)
        LOG_WARN("sse keep-alive timer could not be re-armed");
}

kiln_status gw_sse_init(natsConnection *nc, jsCtx *js, int64_t timeout_ms)
{
    sse_nc = nc;
    sse_js = js;
    sse_timeout_ms = timeout_ms;
    atomic_store(&sse_accepting, true);
    return gw_timers_add(kiln_mono_ms() + SSE_TICK_MS, sse_tick, 0, NULL);
}

void gw_sse_shutdown(int64_t grace_ms)
{
    atomic_store(&sse_accepting, false);
    pthread_mutex_lock(&sse_list_mu);
    for (sse_client *c = sse_list; c != NULL; c = c->next) {
        pthread_mutex_lock(&c->mu);
        c->closing = true;
        sse_wake_locked(c);
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&sse_list_mu);
    int64_t deadline = kiln_mono_ms() + grace_ms;
    while (gw_sse_count() > 0 && kiln_mono_ms() < deadline) usleep(10 * 1000);
    if (gw_sse_count() > 0) LOG_WARN("shutdown with event streams open count=%ld", gw_sse_count());
}

/* Starts the ordered consumer: from start_seq, or only new events when 0. */
static kiln_status sse_subscribe(sse_client *c, const char *subject, uint64_t start_seq)
{
    jsOptions jo;
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsSubscription *sub = NULL;
    natsStatus s = jsOptions_Init(&jo);
    if (s == NATS_OK) s = jsSubOptions_Init(&so);
    if (s != NATS_OK) return kiln_nats_status(s);
    jo.Wait = sse_timeout_ms;
    so.Stream = KILN_STREAM_EVENTS;
    so.Ordered = true;
    if (start_seq > 0) {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = start_seq;
    } else {
        so.Config.DeliverPolicy = js_DeliverNew;
    }
    /* The subscription's reference, dropped by the complete callback. */
    pthread_mutex_lock(&c->mu);
    c->refs++;
    pthread_mutex_unlock(&c->mu);
    s = js_Subscribe(&sub, sse_js, subject, sse_on_msg, c, &jo, &so, &jerr);
    if (s == NATS_OK) s = natsSubscription_SetOnCompleteCB(sub, sse_on_complete, c);
    if (s != NATS_OK) {
        LOG_WARN("sse subscribe failed subject=%s err=%s jerr=%d", subject, natsStatus_GetText(s),
                 (int)jerr);
        if (sub != NULL) {
            /* The complete callback was maybe not set: drop the reference here. */
            natsSubscription_Unsubscribe(sub);
            natsSubscription_Destroy(sub);
        }
        pthread_mutex_lock(&c->mu);
        c->refs--;
        pthread_mutex_unlock(&c->mu);
        return kiln_nats_status(s);
    }
    pthread_mutex_lock(&c->mu);
    c->sub = sub;
    pthread_mutex_unlock(&c->mu);
    return KILN_OK;
}

/* The store's record of the job (no retained event): sync request. */
static kiln_status sse_store_get(gw_req *r, Kiln__V1__StoreReply **out)
{
    Kiln__V1__StoreRequest q = KILN__V1__STORE_REQUEST__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    natsMsg *reply = NULL;
    q.user_id = r->user;
    q.id = r->job_id;
    kiln_status st = kiln_pb_pack((const ProtobufCMessage *)&q, &buf, &len);
    if (st != KILN_OK) return st;
    natsStatus s = natsConnection_Request(&reply, sse_nc, KILN_SUBJ_STORE_GET, buf, (int)len,
                                          sse_timeout_ms);
    free(buf);
    if (s != NATS_OK) return kiln_nats_status(s);
    Kiln__V1__StoreReply *rep = gw_rpc_store_reply(reply);
    natsMsg_Destroy(reply);
    if (rep == NULL) return KILN_ERR;
    *out = rep;
    return KILN_OK;
}

/* True only when the store answers that it has no such job (KILN_RESULT_TTL
 * removed it); a store that does not answer leaves the event to speak. */
static bool sse_store_forgot(gw_req *r)
{
    Kiln__V1__StoreReply *rep = NULL;
    kiln_status st = sse_store_get(r, &rep);
    bool forgot = st == KILN_OK && rep != NULL && rep->error_code != NULL &&
                  strcmp(rep->error_code, "not_found") == 0;
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    return forgot;
}

/* Outcome of the per-job opening. */
typedef enum { SSE_OPEN_STREAM, SSE_OPEN_ANSWERED } sse_open;

/* First event = current state (the last retained event, else the store's
 * record with the stream's last sequence as id), then changes from the next
 * sequence. Sets *start (0 = none needed: the job is terminal). */
static sse_open sse_job_initial(gw_req *r, sse_client *c, const char *subject, bool has_last,
                                uint64_t last, uint64_t *start)
{
    jsOptions jo;
    jsErrCode jerr = 0;
    natsMsg *m = NULL;
    Kiln__V1__JobRecord *rec = NULL;
    Kiln__V1__StoreReply *rep = NULL;
    jsStreamInfo *si = NULL;
    sse_open res = SSE_OPEN_ANSWERED;
    jsOptions_Init(&jo);
    jo.Wait = sse_timeout_ms;

    natsStatus s = js_GetLastMsg(&m, sse_js, KILN_STREAM_EVENTS, subject, &jo, &jerr);
    if (s == NATS_OK) rec = sse_unpack(natsMsg_GetData(m), natsMsg_GetDataLength(m));
    if (rec != NULL) {
        uint64_t seq = natsMsg_GetSequence(m);
        int terminal = rec->status != NULL && kiln_state_is_terminal(rec->status->state);
        if (has_last && last >= GW_SSE_POS(seq, 0) && terminal) {
            /* The client saw the end already: 204 tells EventSource to stop reconnecting. */
            gw_answer_raw(&r->ans, 204, NULL, NULL, 0);
            goto out;
        }
        if (terminal && sse_store_forgot(r)) {
            /* Retention removed it: the same 404 as its GET (the event
             * outlives it in KILN_EVENTS by up to an hour). */
            gw_answer_error(&r->ans, "not_found", "no such job", NULL);
            goto out;
        }
        if (has_last) {
            *start = sse_resume_seq(last);
        } else {
            sse_push(c, rec, GW_SSE_POS(seq, 0));
            *start = terminal ? 0 : seq + 1;
        }
        res = SSE_OPEN_STREAM;
        goto out;
    }
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSNoMessageFoundErr) {
        LOG_WARN("sse last event look-up failed job=%s err=%s jerr=%d", r->job_id,
                 natsStatus_GetText(s), (int)jerr);
        gw_answer_error(&r->ans, "unavailable", "the event stream is unavailable; retry", NULL);
        goto out;
    }
    /* No retained event: the stream's position first, then the store's record. */
    jerr = 0;
    s = js_GetStreamInfo(&si, sse_js, KILN_STREAM_EVENTS, &jo, &jerr);
    if (s != NATS_OK) {
        LOG_WARN("sse stream info failed err=%s jerr=%d", natsStatus_GetText(s), (int)jerr);
        gw_answer_error(&r->ans, "unavailable", "the event stream is unavailable; retry", NULL);
        goto out;
    }
    uint64_t pos = si->State.LastSeq;
    kiln_status st = sse_store_get(r, &rep);
    if (st != KILN_OK || (rep->error_code != NULL && rep->error_code[0] != '\0')) {
        gw_query_answer_store_error(r, st, rep != NULL ? rep->error_code : NULL,
                                    rep != NULL ? rep->error_message : NULL);
        goto out;
    }
    if (rep->n_jobs < 1 || rep->jobs[0] == NULL) {
        gw_answer_error(&r->ans, "not_found", "no such job", NULL);
        goto out;
    }
    int terminal = rep->jobs[0]->status != NULL && kiln_state_is_terminal(rep->jobs[0]->status->state);
    if (has_last && terminal) {
        gw_answer_raw(&r->ans, 204, NULL, NULL, 0);
        goto out;
    }
    sse_push(c, rep->jobs[0], GW_SSE_POS(pos, 0));
    *start = terminal ? 0 : pos + 1;
    res = SSE_OPEN_STREAM;
out:
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    jsStreamInfo_Destroy(si);
    natsMsg_Destroy(m);
    return res;
}

static void sse_open_stream(gw_req *r, bool per_job)
{
    sse_client *c = NULL;
    struct MHD_Response *resp = NULL;
    char hex[2 * GW_USER_MAX + 1];
    char subject[SSE_SUBJECT_MAX];
    uint64_t last = 0, start = 0;
    bool has_last = false;

    if (!atomic_load(&sse_accepting) || sse_nc == NULL ||
        natsConnection_Status(sse_nc) != NATS_CONN_STATUS_CONNECTED) {
        gw_answer_error(&r->ans, "unavailable", "the event stream is unavailable; retry", NULL);
        return;
    }
    const char *lid = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
    const char *field = "Last-Event-ID";
    if (lid == NULL) {
        lid = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "last_event_id");
        field = "last_event_id";
    }
    if (lid != NULL && lid[0] != '\0') {
        if (gw_sse_parse_last_id(lid, &last) != 0) {
            gw_answer_error(&r->ans, "invalid_argument",
                            "Last-Event-ID must be an event id received from this stream", field);
            return;
        }
        has_last = true;
    }
    gw_sse_user_hex(r->user, hex, sizeof hex);
    if (per_job)
        snprintf(subject, sizeof subject, "%s%s.%s", KILN_SUBJ_EVENTS_PREFIX, hex, r->job_id);
    else
        snprintf(subject, sizeof subject, "%s%s.>", KILN_SUBJ_EVENTS_PREFIX, hex);

    c = calloc(1, sizeof *c);
    if (c == NULL || pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        gw_answer_error(&r->ans, "unavailable", "out of memory", NULL);
        return;
    }
    c->refs = 1; /* the response's */
    c->conn = r->conn;
    c->per_job = per_job;
    c->last_write_ms = kiln_mono_ms();
    c->last_pos = has_last ? last : 0; /* drops what the client has seen of an EventBatch */
    snprintf(c->job_id, sizeof c->job_id, "%s", per_job ? r->job_id : "");
    atomic_fetch_add(&sse_open_count, 1);

    if (per_job) {
        if (sse_job_initial(r, c, subject, has_last, last, &start) != SSE_OPEN_STREAM) goto fail;
        if (start == 0) {
            pthread_mutex_lock(&c->mu);
            c->closing = true;
            pthread_mutex_unlock(&c->mu);
        }
    } else {
        start = has_last ? sse_resume_seq(last) : 0;
    }
    if (!per_job || start != 0) {
        kiln_status st = sse_subscribe(c, subject, start);
        if (st != KILN_OK) {
            gw_answer_error(&r->ans, "unavailable", "the event stream is unavailable; retry", NULL);
            goto fail;
        }
    }
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_READ_BLOCK, sse_read, c,
                                             sse_release);
    if (resp == NULL) {
        gw_answer_error(&r->ans, "unavailable", "out of memory", NULL);
        goto fail;
    }
    /* From here MHD owns the response's reference: sse_release drops it. */
    pthread_mutex_lock(&sse_list_mu);
    c->next = sse_list;
    if (sse_list != NULL) sse_list->prev = c;
    sse_list = c;
    pthread_mutex_unlock(&sse_list_mu);
    gw_answer_reset(&r->ans);
    r->ans.status = 200;
    r->ans.ctype = "text/event-stream";
    r->ans.resp = resp;
    gw_answer_header(&r->ans, "Cache-Control", "no-cache");
    gw_answer_header(&r->ans, "X-Accel-Buffering", "no");
    LOG_DEBUG("sse opened user=%s job=%s start=%" PRIu64, r->user, per_job ? r->job_id : "-",
              start);
    return;
fail:
    sse_release(c); /* not linked: unlinking is a no-op */
}

void gw_sse_user(gw_req *r) { sse_open_stream(r, false); }

void gw_sse_job(gw_req *r) { sse_open_stream(r, true); }
