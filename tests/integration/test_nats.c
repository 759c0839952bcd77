/* test_nats.c - the NATS contract (CONTRACT §4) for services that skip the
 * gateway: raw JobRequests on the three lanes, invalid input to jobs.dead,
 * the C client library, and the connection module every binary uses. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "kiln_client.h"
#include "natsconn.h"
#include "pb.h"

TestSuite(nats, .fini = h_fini, .timeout = 120);

Test(nats, raw_publish_is_tracked_and_announced)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    /* One job per lane: all three are consumed. */
    char id[65], hi[65], lo[65];
    h_unique_id(id, "raw");
    h_unique_id(hi, "hi");
    h_unique_id(lo, "lo");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "a raw published fox"), 0);
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate.high", hi, "alice", "high lane fox"), 0);
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate.low", lo, "alice", "low lane fox"), 0);

    cr_assert(h_collect_wait(n.done, id, 1, 30000) >= 1, "raw job %s never announced on jobs.done", id);
    natsMsg *m = h_collect_msg(n.done, id, 0);
    char v[64];
    cr_expect(h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "completed") == 0, "Kiln-Status %s", v);
    Kiln__V1__JobStatus *st = h_msg_status(m);
    cr_assert(st != NULL, "jobs.done payload is not a JobStatus");
    cr_expect_str_eq(st->id, id);
    cr_expect_eq(st->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    kiln__v1__job_status__free_unpacked(st, NULL);
    h_expect_job(&s, H_TOKEN_ALICE, hi, "completed", 1, 30000, "high lane job");
    h_expect_job(&s, H_TOKEN_ALICE, lo, "completed", 1, 30000, "low lane job");

    /* Visible to its user over HTTP, hidden from others. */
    long gst = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, &gst);
    cr_expect_eq(gst, 200, "raw job not visible to alice over HTTP");
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    cr_expect_str_eq(h_jstr(j, "prompt"), "a raw published fox");
    json_decref(j);
    j = h_get_job(&s, H_TOKEN_BOB, id, &gst);
    cr_expect_eq(gst, 404, "raw alice job visible to bob");
    json_decref(j);

    /* Queryable over jobs.status like a gateway job. */
    char err[128];
    Kiln__V1__JobStatus *q = h_status_request(&n, id, err, sizeof err);
    cr_assert(q != NULL, "jobs.status for a raw job: %s", err);
    cr_expect_eq(q->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_str_eq(q->user_id, "alice");
    kiln__v1__job_status__free_unpacked(q, NULL);

    /* Re-publishing the same id after it finished is de-duplicated: still one
     * job, one jobs.done. */
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "a raw published fox"), 0);
    json_t *l = h_list(&s, H_TOKEN_ALICE, "");
    size_t count = 0;
    json_t *jobs = json_object_get(l, "jobs");
    for (size_t i = 0; i < json_array_size(jobs); i++)
        if (strcmp(h_jstr(json_array_get(jobs, i), "id"), id) == 0) count++;
    cr_expect_eq(count, 1, "job listed %zu times", count);
    json_decref(l);
    h_expect_done_once(&n, id, "completed", 5000);

    h_nats_free(&n);
    h_stop(&s);
}

/* A publisher's JobRequest with fields Kiln does not know (from a newer
 * schema, or bytes protobuf-c accepts but cannot write back: field 0 in a
 * two-byte tag) is processed as the job it describes: the store's record
 * and the consumer's transitions carry the request, and must still decode. */
Test(nats, a_job_with_unknown_fields_completes)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    h_unique_id(id, "odd");
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    r.id = id;
    r.user_id = "alice";
    r.prompt = "a fox from a newer schema";
    r.created_at_ms = h_now_ms();
    size_t len = kiln__v1__job_request__get_packed_size(&r);
    /* + field 99 (a varint) + field 0 with a two-byte tag and 8 bytes */
    static const uint8_t extra[] = {0x98, 0x06, 0x2a, 0x81, 0x00, 1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t *buf = malloc(len + sizeof extra);
    cr_assert_not_null(buf);
    kiln__v1__job_request__pack(&r, buf);
    memcpy(buf + len, extra, sizeof extra);
    cr_assert_eq(h_js_publish(n.js, "jobs.generate", buf, (int)(len + sizeof extra), id), 0);
    free(buf);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "the job with unknown fields");
    h_expect_done_once(&n, id, "completed", 10000);
    h_nats_free(&n);
    h_stop(&s);
}

Test(nats, invalid_input_goes_to_dead_and_processing_goes_on)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    /* Field 1 claims 80 bytes, only 8 follow: never a valid protobuf. */
    static const char garbage[] = "\x0a\x50garbage!";
    int glen = (int)sizeof garbage - 1;
    cr_assert_eq(h_js_publish(n.js, "jobs.generate", garbage, glen, NULL), 0);
    /* Valid id and user, no prompt: dead-lettered and failed. */
    char noprompt[65];
    h_unique_id(noprompt, "noprompt");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", noprompt, "alice", ""), 0);

    cr_assert(h_collect_wait(n.dead, noprompt, 1, 30000) >= 1,
                 "job without prompt never reached jobs.dead with Kiln-Job-Id %s", noprompt);
    char v[256] = "";
    cr_expect(h_msg_header(h_collect_msg(n.dead, noprompt, 0), "Kiln-Reason", v, sizeof v) && v[0] != '\0',
              "jobs.dead copy of the job without prompt has no Kiln-Reason");
    cr_assert(h_collect_wait(n.dead, NULL, 2, 30000) >= 2, "garbage never reached jobs.dead");
    natsMsg *gm = NULL;
    for (int k = 0; (gm = h_collect_msg(n.dead, NULL, k)) != NULL; k++)
        if (!h_msg_header(gm, "Kiln-Job-Id", v, sizeof v)) break;
    cr_assert(gm != NULL, "no jobs.dead message without Kiln-Job-Id (the garbage)");
    v[0] = '\0';
    cr_expect(h_msg_header(gm, "Kiln-Reason", v, sizeof v) && v[0] != '\0', "jobs.dead without Kiln-Reason");
    cr_expect(natsMsg_GetDataLength(gm) == glen && memcmp(natsMsg_GetData(gm), garbage, (size_t)glen) == 0,
              "jobs.dead payload is not the original bytes (%d bytes)", natsMsg_GetDataLength(gm));

    /* The job without prompt is queryable and announced as failed. */
    cr_expect(h_collect_wait(n.done, noprompt, 1, 30000) >= 1, "invalid job not announced on jobs.done");
    natsMsg *m = h_collect_msg(n.done, noprompt, 0);
    cr_expect(m != NULL && h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "failed") == 0,
              "Kiln-Status %s", v);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, noprompt, "failed", 15000);
    char *d = h_job_dump(j);
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "job: %s", d);
    cr_expect_str_eq(h_jstr(json_object_get(j, "error"), "code"), "invalid_argument", "job: %s", d);
    free(d);
    json_decref(j);

    /* Processing goes on, for NATS and HTTP jobs. */
    char id[65];
    h_unique_id(id, "after-garbage");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "fox after garbage"), 0);
    cr_expect(h_collect_wait(n.done, id, 1, 30000) >= 1, "valid job after garbage did not complete");
    char hid[65];
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "http fox after garbage", hid), 202);
    h_expect_job(&s, H_TOKEN_ALICE, hid, "completed", 1, 30000, "HTTP job after garbage");

    /* The garbage is not retried forever: no second copy on jobs.dead
     * (observation window, not a wait for success). */
    h_collect_wait(n.dead, NULL, 3, 3000);
    int garbage_copies = 0;
    for (int k = 0; (gm = h_collect_msg(n.dead, NULL, k)) != NULL; k++)
        garbage_copies += !h_msg_header(gm, "Kiln-Job-Id", v, sizeof v);
    cr_expect_eq(garbage_copies, 1, "garbage reached jobs.dead %d times", garbage_copies);

    h_nats_free(&n);
    h_stop(&s);
}

/* ---- garbage on every subject a Kiln process listens to ----------------- */

/* Random bytes, or (half the time) a string of random bytes of every kind:
 * control characters, invalid UTF-8, over-long. Owned by the caller. */
static char *garbage_str(unsigned *seed)
{
    size_t len = (size_t)(rand_r(seed) % 4 == 0 ? rand_r(seed) % 300 : rand_r(seed) % 12);
    char *s = malloc(len + 1);
    cr_assert_not_null(s);
    for (size_t i = 0; i < len; i++) {
        int k = rand_r(seed) % 4;
        s[i] = (char)(k == 0 ? 1 + rand_r(seed) % 255 : k == 1 ? '0' + rand_r(seed) % 10
                              : k == 2 ? 'a' + rand_r(seed) % 6 : '-');
    }
    s[len] = '\0';
    return s;
}

/* A StoreRequest whose every field is random: decodes, then fails every rule. */
static int garbage_store_request(unsigned *seed, uint8_t **buf, size_t *len)
{
    Kiln__V1__StoreRequest q = KILN__V1__STORE_REQUEST__INIT;
    char *ids[8];
    char *strs[6];
    uint8_t hash[40];
    for (int i = 0; i < 6; i++) strs[i] = garbage_str(seed);
    q.user_id = rand_r(seed) % 3 == 0 ? "alice" : strs[0];
    q.id = strs[1];
    q.limit = (uint32_t)rand_r(seed);
    q.state = (Kiln__V1__JobState)(rand_r(seed) % 9);
    q.unviewed = rand_r(seed) & 1;
    q.cursor = strs[2];
    q.n_ids = (size_t)(rand_r(seed) % 8);
    for (size_t i = 0; i < q.n_ids; i++) ids[i] = i % 2 ? strs[3] : strs[4];
    q.ids = ids;
    q.sync = rand_r(seed) & 1;
    q.idempotency_key = strs[5];
    for (size_t i = 0; i < sizeof hash; i++) hash[i] = (uint8_t)rand_r(seed);
    q.body_hash.data = hash;
    q.body_hash.len = (size_t)(rand_r(seed) % (int)sizeof hash);
    q.new_id = strs[3];
    int rc = kiln_pb_pack(&q.base, buf, len) == KILN_OK ? 0 : -1;
    for (int i = 0; i < 6; i++) free(strs[i]);
    return rc;
}

/* Raw random bytes, a random StoreRequest, or one truncated by a few bytes. */
static void garbage_payload(unsigned *seed, uint8_t **buf, size_t *len)
{
    int kind = rand_r(seed) % 3;
    if (kind > 0 && garbage_store_request(seed, buf, len) == 0) {
        if (kind == 2 && *len > 0) *len -= (size_t)(1 + rand_r(seed) % (int)*len);
        return;
    }
    *len = (size_t)(rand_r(seed) % 200);
    *buf = malloc(*len + 1);
    cr_assert_not_null(*buf);
    for (size_t i = 0; i < *len; i++) (*buf)[i] = (uint8_t)rand_r(seed);
}

/* A RunningQuery (a consumer's question to the others) with random
 * sequences, sometimes more than a batch, and a random asker. */
static void garbage_running_query(unsigned *seed, uint8_t **buf, size_t *len)
{
    Kiln__V1__RunningQuery q = KILN__V1__RUNNING_QUERY__INIT;
    uint64_t seqs[300];
    q.n_stream_seqs = (size_t)(rand_r(seed) % 300);
    for (size_t i = 0; i < q.n_stream_seqs; i++)
        seqs[i] = rand_r(seed) % 2 ? (uint64_t)(rand_r(seed) % 64) : (uint64_t)rand_r(seed) << 31;
    q.stream_seqs = seqs;
    char *asker = garbage_str(seed);
    q.asker = asker;
    cr_assert_eq(kiln_pb_pack(&q.base, buf, len), KILN_OK);
    free(asker);
}

/* The store's and consumers' subjects, public and internal, get requests,
 * transitions and jobs made of random bytes (fixed seed, so a failure
 * replays): every process lives on, and a job submitted afterwards
 * completes. The sanitizer build and the harness's exit checks catch what
 * a handler did wrong without dying at once. */
Test(nats, garbage_on_every_subject_is_survived, .timeout = 180)
{
    static const char *const requests[] = {
        "jobs.status",       "jobs.cancel",      "kiln.store.get",   "kiln.store.list",
        "kiln.store.viewed", "kiln.store.cancel", "kiln.store.check", "kiln.store.ping",
        "kiln.store.idem",
    };
    static const char *const streamed[] = {"kiln.tx", "jobs.generate.high", "jobs.generate.low"};
    const size_t nreq = sizeof requests / sizeof requests[0];
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    unsigned seed = 20261205;
    natsSubscription *replies = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&replies, n.nc, "_INBOX.garbage.*"), NATS_OK);
    cr_assert_eq(natsSubscription_SetPendingLimits(replies, -1, -1), NATS_OK);
    int sent = 0;

    for (int round = 0; round < 40; round++) {
        for (size_t i = 0; i < nreq; i++) {
            uint8_t *buf = NULL;
            size_t len = 0;
            garbage_payload(&seed, &buf, &len);
            char inbox[64];
            snprintf(inbox, sizeof inbox, "_INBOX.garbage.%d", sent++);
            cr_assert_eq(natsConnection_PublishRequest(n.nc, requests[i], inbox, buf, (int)len),
                         NATS_OK);
            free(buf);
        }
        /* Consumers' broadcast questions: answered by some, or by none. */
        for (int c = 0; c < 2; c++) {
            uint8_t *buf = NULL;
            size_t len = 0;
            if (c == 0 && round % 2 == 0) garbage_running_query(&seed, &buf, &len);
            else garbage_payload(&seed, &buf, &len);
            const char *subj = c == 0 ? "kiln.consumer.running" : "kiln.consumer.status";
            cr_assert_eq(natsConnection_PublishRequest(n.nc, subj, "_INBOX.garbage-bcast", buf, (int)len),
                         NATS_OK);
            free(buf);
        }
        char *id = garbage_str(&seed);
        char subj[400];
        snprintf(subj, sizeof subj, "kiln.cancelled.%s", id);
        for (char *p = subj; *p != '\0'; p++)
            if ((unsigned char)*p <= ' ' || *p == '*' || *p == '>') *p = 'x';
        if (strstr(subj, "..") == NULL && subj[strlen(subj) - 1] != '.')
            cr_assert_eq(natsConnection_PublishString(n.nc, subj, id), NATS_OK);
        free(id);

        const char *stream_subj = streamed[round % 3];
        uint8_t *buf = NULL;
        size_t len = 0;
        garbage_payload(&seed, &buf, &len);
        natsMsg *m = NULL;
        cr_assert_eq(natsMsg_Create(&m, stream_subj, NULL, (const char *)buf, (int)len), NATS_OK);
        if (round % 6 == 0) cr_assert_eq(natsMsgHeader_Set(m, "Kiln-Tx-Batch", "3"), NATS_OK);
        jsPubAck *ack = NULL;
        cr_assert_eq(js_PublishMsg(&ack, n.js, m, NULL, NULL), NATS_OK, "publish on %s",
                     stream_subj);
        jsPubAck_Destroy(ack);
        natsMsg_Destroy(m);
        free(buf);
    }
    cr_assert_eq(natsConnection_FlushTimeout(n.nc, 10000), NATS_OK);

    /* Every request is answered (an error, for nearly all of them). */
    int answered = 0;
    int64_t deadline = h_now_ms() + 30000;
    while (answered < sent && h_now_ms() < deadline) {
        natsMsg *r = NULL;
        if (natsSubscription_NextMsg(&r, replies, 500) == NATS_OK) answered++;
        natsMsg_Destroy(r);
    }
    cr_expect_eq(answered, sent, "the store answered %d of %d garbage requests", answered, sent);
    natsSubscription_Destroy(replies);

    /* Every process still answers: the store a ping, the pipeline a job. */
    natsMsg *reply = NULL;
    cr_expect_eq(natsConnection_RequestString(&reply, n.nc, "kiln.store.ping", "", 10000), NATS_OK,
                 "the store no longer answers kiln.store.ping after the garbage");
    natsMsg_Destroy(reply);
    char hid[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "a fox after the garbage", hid), 202);
    h_expect_job(&s, H_TOKEN_ALICE, hid, "completed", 1, 60000, "job after the garbage");
    cr_expect(h_proc_alive(&s, H_STORE), "the store died");
    cr_expect(h_proc_alive(&s, H_CONSUMER), "the consumer died");
    cr_expect(h_proc_alive(&s, H_GATEWAY), "the gateway died");

    h_nats_free(&n);
    h_stop(&s);
}

Test(nats, client_library_submit_wait_get)
{
    h_stack s;
    h_start(&s, NULL);
    kiln_client *c = NULL;
    cr_assert_eq(kiln_client_connect(s.nats_url, &c), KILN_OK);
    kiln_job_spec spec;
    kiln_job_spec_init(&spec);
    spec.user_id = "alice";
    spec.prompt = "a client library fox";
    char id[65], err[256] = "";
    cr_assert_eq(kiln_client_submit(c, &spec, id, sizeof id, err, sizeof err), KILN_OK, "submit: %s", err);
    Kiln__V1__JobStatus *st = NULL;
    cr_assert_eq(kiln_client_wait(c, id, 30000, &st), KILN_OK, "wait for %s", id);
    cr_expect_eq(st->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_str_eq(st->id, id);
    kiln__v1__job_status__free_unpacked(st, NULL);
    st = NULL;
    cr_expect_eq(kiln_client_get(c, id, &st), KILN_OK);
    if (st != NULL) kiln__v1__job_status__free_unpacked(st, NULL);
    st = NULL;
    cr_expect_eq(kiln_client_get(c, "no-such-job", &st), KILN_ENOTFOUND);
    /* Invalid input is refused before publishing, naming the field. */
    spec.prompt = "";
    char bad_id[65] = "";
    cr_expect_eq(kiln_client_submit(c, &spec, bad_id, sizeof bad_id, err, sizeof err), KILN_EINVAL);
    cr_expect(strstr(err, "prompt") != NULL, "error should name prompt: %s", err);
    kiln_client_destroy(c);
    long gst = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, &gst);
    cr_expect_eq(gst, 200, "client-submitted job not visible to alice over HTTP");
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    json_decref(j);
    h_stop(&s);
}

/* libnats calls publish-ack handlers and message handlers on threads
 * nothing joins: a call could still be running after kiln_nats_close or
 * kiln_nats_unsubscribe returned, and the daemons free what their handlers
 * use right after (the likeliest cause of a store's sanitizer report on
 * SIGTERM in CI). Each call
 * of these handlers takes 300 ms; closing while the first one runs must
 * wait for it, and run no other. Static: a handler running late must not
 * find a test's stack gone. */
typedef struct {
    atomic_int entered, left;
} slow_calls;

static slow_calls slow_acks, slow_msgs;

static void slow_call(slow_calls *c)
{
    atomic_fetch_add(&c->entered, 1);
    const struct timespec pause = {0, 300 * 1000000L};
    nanosleep(&pause, NULL);
    atomic_fetch_add(&c->left, 1);
}

static void slow_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg)
{
    (void)js, (void)pa, (void)pae, (void)arg;
    slow_call(&slow_acks);
    natsMsg_Destroy(msg);
}

static void slow_msg_handler(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    (void)nc, (void)sub, (void)arg;
    slow_call(&slow_msgs);
    natsMsg_Destroy(msg);
}

static int slow_running(void *arg)
{
    return atomic_load(&((slow_calls *)arg)->entered) > 0;
}

typedef struct {
    slow_calls *c;
    int seen;
} slow_after;

static int slow_called_again(void *arg)
{
    slow_after *a = arg;
    return atomic_load(&a->c->entered) > a->seen;
}

/* After `what` returned: every call of c has returned, and none starts
 * within a second. */
static void slow_expect_over(slow_calls *c, const char *what)
{
    slow_after a = {c, atomic_load(&c->entered)};
    cr_assert_eq(atomic_load(&c->left), a.seen, "%d handler call(s) still running after %s",
                 a.seen - atomic_load(&c->left), what);
    cr_expect(!h_wait_for(slow_called_again, &a, 1000, 10), "the handler was called after %s", what);
}

Test(nats, no_ack_handler_call_runs_after_kiln_nats_close)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    natsConnection *tnc = NULL;
    jsCtx *tjs = NULL;
    cr_assert_eq(h_nats_connect(&s, &tnc, &tjs), 0);
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[] = {"test.acks"};
    sc.Name = "TEST_ACKS";
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_MemoryStorage;
    cr_assert_eq(js_AddStream(NULL, tjs, &sc, NULL, NULL), NATS_OK);

    kiln_nats_opts no;
    kiln_nats_opts_init(&no);
    no.name = "ackgate-test";
    no.ack_handler = slow_ack_handler;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(kiln_nats_connect_opts(s.nats_url, &no, &nc, &js), KILN_OK);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(js_PublishAsync(js, "test.acks", "x", 1, NULL), NATS_OK);
    cr_assert(h_wait_for(slow_running, &slow_acks, 5000, 5), "no ack came");

    kiln_nats_close(nc, js);
    slow_expect_over(&slow_acks, "kiln_nats_close");

    h_nats_close(tnc, tjs);
    h_stop(&s);
}

/* The consumer's cancel and status subscriptions, the gateway's rpc. */
Test(nats, no_message_handler_call_runs_after_kiln_nats_unsubscribe)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    natsConnection *nc = NULL;
    cr_assert_eq(kiln_nats_connect(s.nats_url, "unsub-test", 5000, &nc, NULL), KILN_OK);
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_Subscribe(&sub, nc, "test.unsub", slow_msg_handler, NULL), NATS_OK);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(natsConnection_PublishString(nc, "test.unsub", "x"), NATS_OK);
    cr_assert(h_wait_for(slow_running, &slow_msgs, 5000, 5), "no message came");

    kiln_nats_unsubscribe(&sub);
    slow_expect_over(&slow_msgs, "kiln_nats_unsubscribe");

    kiln_nats_close(nc, NULL);
    h_stop(&s);
}
