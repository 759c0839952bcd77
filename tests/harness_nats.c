/* harness_nats.c - the integration harness's NATS side: connections,
 * publishing job requests, collecting jobs.done, reading streams and
 * durables (see harness.h). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "kiln.pb-c.h"

#include "harness.h"
#include "harness_internal.h"

/* ---- NATS ----------------------------------------------------------------- */

int h_nats_connect(h_stack *s, natsConnection **nc, jsCtx **js)
{
    natsOptions *o = NULL;
    natsConnection *c = NULL;
    jsCtx *j = NULL;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK) st = natsOptions_SetURL(o, s->nats_url);
    if (st == NATS_OK) st = natsOptions_SetMaxReconnect(o, -1);
    if (st == NATS_OK) st = natsOptions_SetReconnectWait(o, 100);
    if (st == NATS_OK) st = natsConnection_Connect(&c, o);
    if (st == NATS_OK && js != NULL) st = natsConnection_JetStream(&j, c, NULL);
    natsOptions_Destroy(o);
    if (st != NATS_OK) {
        fprintf(stderr, "harness: nats connect %s: %s\n", s->nats_url, natsStatus_GetText(st));
        jsCtx_Destroy(j);
        natsConnection_Destroy(c);
        return -1;
    }
    *nc = c;
    if (js != NULL) *js = j;
    return 0;
}

void h_nats_close(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    if (nc != NULL) {
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
}

int h_js_publish(jsCtx *js, const char *subject, const void *data, int len, const char *msg_id)
{
    natsMsg *m = NULL;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    natsStatus st = natsMsg_Create(&m, subject, NULL, data, len);
    if (st == NATS_OK && msg_id != NULL) st = natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id);
    if (st == NATS_OK) st = js_PublishMsg(&ack, js, m, NULL, &jerr);
    if (st != NATS_OK)
        fprintf(stderr, "harness: js publish %s: %s (jerr %d)\n", subject, natsStatus_GetText(st),
                (int)jerr);
    jsPubAck_Destroy(ack);
    natsMsg_Destroy(m);
    return st == NATS_OK ? 0 : -1;
}

void h_pack_completed(const char *id, const char *prompt, uint64_t size_bytes, uint8_t **buf,
                      size_t *len)
{
    Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__Image img = KILN__V1__IMAGE__INIT, *imgs[1] = {&img};
    char url[128];
    snprintf(url, sizeof url, "/v1/jobs/%s/images/0", id);
    req.id = (char *)id;
    req.user_id = "alice";
    req.prompt = (char *)prompt;
    t.request = &req;
    t.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    t.attempt = 1;
    t.at_ms = h_now_ms();
    img.url = url;
    img.content_type = "image/png";
    img.size_bytes = size_bytes;
    t.n_images = 1;
    t.images = imgs;
    *len = kiln__v1__job_transition__get_packed_size(&t);
    *buf = malloc(*len > 0 ? *len : 1);
    cr_assert_not_null(*buf);
    kiln__v1__job_transition__pack(&t, *buf);
}

int h_publish_request(jsCtx *js, const char *subject, const Kiln__V1__JobRequest *r,
                      int64_t max_wait_ms, uint64_t *seq)
{
    Kiln__V1__JobRequest q = *r;
    if (q.created_at_ms == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        q.created_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    size_t n = kiln__v1__job_request__get_packed_size(&q);
    uint8_t *buf = malloc(n > 0 ? n : 1);
    if (buf == NULL) return -1;
    kiln__v1__job_request__pack(&q, buf);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = q.id;
    if (max_wait_ms > 0) po.MaxWait = max_wait_ms;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_Publish(&ack, js, subject, buf, (int)n, &po, &jerr);
    if (st == NATS_OK && seq != NULL) *seq = ack->Sequence;
    jsPubAck_Destroy(ack);
    free(buf);
    return st == NATS_OK ? 0 : -1;
}

int h_publish_jobreq(jsCtx *js, const char *subject, const char *id, const char *user,
                     const char *prompt)
{
    return h_publish_jobreq_at(js, subject, id, user, prompt, NULL);
}

int h_publish_jobreq_at(jsCtx *js, const char *subject, const char *id, const char *user,
                        const char *prompt, uint64_t *seq)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    r.id = (char *)id;
    r.user_id = (char *)user;
    r.prompt = (char *)(prompt != NULL ? prompt : "");
    int rc = h_publish_request(js, subject, &r, 0, seq);
    if (rc != 0) fprintf(stderr, "harness: js publish of job %s to %s failed\n", id, subject);
    return rc;
}

json_t *h_publish_recorded(h_stack *s, jsCtx *js, const char *subject, const char *id, const char *user,
                           const char *token, const char *prompt, uint64_t *seq)
{
    cr_assert_eq(h_publish_jobreq_at(js, subject, id, user, prompt, seq), 0);
    json_t *j = h_wait_job(s, token, id, "pending", 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "pending", "the store never recorded the job");
    return j;
}

int h_msg_header(natsMsg *m, const char *name, char *out, size_t len)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL) return 0;
    snprintf(out, len, "%s", v);
    return 1;
}

int h_stream_scan(jsCtx *js, const char *stream, void (*fn)(natsMsg *m, void *arg), void *arg)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (js_GetStreamInfo(&si, js, stream, NULL, &jerr) != NATS_OK) return -1;
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    int seen = 0;
    for (uint64_t seq = first; seq >= 1 && seq <= last; seq++) {
        natsMsg *m = NULL;
        if (js_GetMsg(&m, js, stream, seq, NULL, &jerr) != NATS_OK) continue;
        fn(m, arg);
        natsMsg_Destroy(m);
        seen++;
    }
    return seen;
}

int h_done_scan(jsCtx *js, void (*fn)(natsMsg *m, void *arg), void *arg)
{
    return h_stream_scan(js, "KILN_DONE", fn, arg);
}

typedef struct {
    const char *id;
    int count;
    char *last_status;
    size_t len;
} h_done_count_arg;

static void h_done_count_one(natsMsg *m, void *arg)
{
    h_done_count_arg *a = arg;
    char v[128];
    if (!h_msg_header(m, "Kiln-Job-Id", v, sizeof v) || strcmp(v, a->id) != 0) return;
    a->count++;
    if (a->last_status != NULL) h_msg_header(m, "Kiln-Status", a->last_status, a->len);
}

int h_done_count(jsCtx *js, const char *id, char *last_status, size_t len)
{
    if (last_status != NULL && len > 0) last_status[0] = '\0';
    h_done_count_arg a = {id, 0, len > 0 ? last_status : NULL, len};
    return h_done_scan(js, h_done_count_one, &a) < 0 ? -1 : a.count;
}

Kiln__V1__JobStatus *h_msg_status(natsMsg *m)
{
    if (m == NULL) return NULL;
    return kiln__v1__job_status__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                        (const uint8_t *)natsMsg_GetData(m));
}

#define H_COLLECT_CAP 1024

struct h_collector {
    natsSubscription *sub;
    natsMsg *msgs[H_COLLECT_CAP];
    int n;
    int dropped; /* arrived after the table was full (never expected in a test) */
};

static int h_collect_matches(natsMsg *m, const char *id)
{
    if (id == NULL) return 1;
    char v[128];
    return h_msg_header(m, "Kiln-Job-Id", v, sizeof v) && strcmp(v, id) == 0;
}

static int h_collect_counted(const h_collector *c, const char *id)
{
    int k = 0;
    for (int i = 0; i < c->n; i++) k += h_collect_matches(c->msgs[i], id);
    return k;
}

/* Takes one message from the subscription, waiting up to wait_ms (>= 1). */
static int h_collect_one(h_collector *c, int64_t wait_ms)
{
    natsMsg *m = NULL;
    natsStatus st = natsSubscription_NextMsg(&m, c->sub, wait_ms > 0 ? wait_ms : 1);
    if (st != NATS_OK) {
        /* NATS_TIMEOUT, or the connection is reconnecting: nothing now. */
        if (st != NATS_TIMEOUT) h_sleep_ms((int)(wait_ms < 20 ? wait_ms : 20));
        return 0;
    }
    if (c->n < H_COLLECT_CAP) {
        c->msgs[c->n++] = m;
    } else {
        c->dropped++;
        natsMsg_Destroy(m);
    }
    return 1;
}

int h_collect_wait(h_collector *c, const char *id, int n, int64_t deadline_ms)
{
    if (c == NULL) return -1;
    while (h_collect_one(c, 1)) {
    }
    int64_t end = h_now_ms() + deadline_ms;
    int have = h_collect_counted(c, id);
    while (have < n) {
        int64_t left = end - h_now_ms();
        if (left <= 0) break;
        if (h_collect_one(c, left)) have = h_collect_counted(c, id);
    }
    return have;
}

natsMsg *h_collect_msg(h_collector *c, const char *id, int k)
{
    if (c == NULL) return NULL;
    h_collect_wait(c, id, 0, 0);
    for (int i = 0; i < c->n; i++)
        if (h_collect_matches(c->msgs[i], id) && k-- == 0) return c->msgs[i];
    return NULL;
}

static h_collector *h_collect_open(natsConnection *nc, const char *subject)
{
    h_collector *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    if (natsConnection_SubscribeSync(&c->sub, nc, subject) != NATS_OK) {
        free(c);
        return NULL;
    }
    return c;
}

static void h_collect_free(h_collector *c)
{
    if (c == NULL) return;
    for (int i = 0; i < c->n; i++) natsMsg_Destroy(c->msgs[i]);
    natsSubscription_Destroy(c->sub);
    free(c);
}

void h_nats_open(h_stack *s, h_nats *n)
{
    memset(n, 0, sizeof *n);
    cr_assert_eq(h_nats_connect(s, &n->nc, &n->js), 0, "cannot connect to nats-server");
    n->done = h_collect_open(n->nc, "jobs.done");
    n->dead = h_collect_open(n->nc, "jobs.dead");
    cr_assert(n->done != NULL && n->dead != NULL, "cannot subscribe to jobs.done / jobs.dead");
    /* The server knows the subscriptions before the test publishes anything. */
    cr_assert_eq(natsConnection_Flush(n->nc), NATS_OK, "flush after subscribing");
}

natsMsg *h_take_delivery(h_nats *n, const char *durable)
{
    char subject[256];
    natsMsg *m = NULL;
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.MSG.NEXT.KILN_JOBS.%s", durable);
    cr_assert_eq(natsConnection_RequestString(&m, n->nc, subject, "{\"batch\":1,\"expires\":5000000000}", 6000),
                 NATS_OK, "no delivery from durable %s", durable);
    const char *reply = natsMsg_GetReply(m);
    cr_assert(reply != NULL && strncmp(reply, "$JS.ACK.", 8) == 0, "not a job delivery from %s: %.*s", durable,
              natsMsg_GetDataLength(m), natsMsg_GetData(m));
    return m;
}

void h_nats_free(h_nats *n)
{
    h_collect_free(n->done);
    h_collect_free(n->dead);
    h_nats_close(n->nc, n->js);
    memset(n, 0, sizeof *n);
}

typedef struct {
    jsCtx *js;
    const char *id;
    int count;
    char status[64];
} h_done_arg;

static int h_done_seen(void *arg)
{
    h_done_arg *a = arg;
    a->count = h_done_count(a->js, a->id, a->status, sizeof a->status);
    return a->count >= 1;
}

void h_expect_done_once(h_nats *n, const char *id, const char *state, int64_t deadline_ms)
{
    h_done_arg a = {n->js, id, 0, ""};
    h_wait_for(h_done_seen, &a, deadline_ms, 100);
    cr_expect_eq(a.count, 1, "KILN_DONE holds %d copies for %s (want exactly 1)", a.count, id);
    if (state != NULL)
        cr_expect_str_eq(a.status, state, "KILN_DONE Kiln-Status for %s: %s, want %s", id, a.status, state);
}

Kiln__V1__JobStatus *h_status_request(h_nats *n, const char *id, char *err, size_t errlen)
{
    natsMsg *rep = NULL;
    if (errlen > 0) err[0] = '\0';
    natsStatus st = natsConnection_RequestString(&rep, n->nc, "jobs.status", id, 5000);
    if (st != NATS_OK) {
        snprintf(err, errlen, "request failed: %s", natsStatus_GetText(st));
        return NULL;
    }
    Kiln__V1__JobStatus *out = NULL;
    if (!h_msg_header(rep, "Kiln-Error", err, errlen)) {
        out = h_msg_status(rep);
        if (out == NULL) snprintf(err, errlen, "reply is not a JobStatus (%d bytes)", natsMsg_GetDataLength(rep));
    } else if (natsMsg_GetDataLength(rep) != 0) {
        /* An error reply has an empty body (CONTRACT §4). */
        snprintf(err + strlen(err), errlen - strlen(err), " (with a %d-byte body)", natsMsg_GetDataLength(rep));
    }
    natsMsg_Destroy(rep);
    return out;
}

void h_dump_durable(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, &jerr);
    if (st != NATS_OK) {
        fprintf(stderr, "harness: %s: no consumer info: %s (%d)\n", durable, natsStatus_GetText(st), (int)jerr);
        return;
    }
    fprintf(stderr,
            "harness: %s delivered.stream=%llu ack_floor.stream=%llu num_ack_pending=%lld "
            "num_redelivered=%lld num_waiting=%lld num_pending=%llu\n",
            durable, (unsigned long long)ci->Delivered.Stream, (unsigned long long)ci->AckFloor.Stream,
            (long long)ci->NumAckPending, (long long)ci->NumRedelivered, (long long)ci->NumWaiting,
            (unsigned long long)ci->NumPending);
    jsConsumerInfo_Destroy(ci);
}

int h_worker_idle(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, &jerr) != NATS_OK) return 0;
    int idle = ci->NumAckPending == 0 && ci->NumPending == 0 && ci->Delivered.Stream > 0;
    jsConsumerInfo_Destroy(ci);
    return idle;
}

typedef struct {
    jsCtx *js;
    const char *durable;
} h_idle_arg;

static int h_idle_cond(void *arg)
{
    h_idle_arg *a = arg;
    return h_worker_idle(a->js, a->durable);
}

int h_wait_worker_idle(jsCtx *js, const char *durable, int64_t deadline_ms)
{
    h_idle_arg a = {js, durable};
    return h_wait_for(h_idle_cond, &a, deadline_ms, 100);
}
