/* test_store_events.c - the store's event publishing (store/events.c) against
 * a real KILN_EVENTS stream: a re-announced change (a replay) is published
 * only when its job's subject does not already end with it. Events carry no
 * Nats-Msg-Id, so without this check every replay would repeat its events.
 * A record's first event goes out in one EventBatch per user and batch;
 * its re-announcement is checked against the user's last EventBatch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "../../store/events.h"
#include "pb.h"

TestSuite(store_events, .fini = h_fini, .timeout = 120);

/* Messages in KILN_EVENTS (the test submits no jobs, so only its own). */
static int64_t ev_count(jsCtx *js)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, KILN_STREAM_EVENTS, NULL, &jerr);
    cr_assert_eq(s, NATS_OK, "stream info: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);
    int64_t n = (int64_t)si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

/* The Kiln-Event-Key of the last event on subject ("" when none). */
static void ev_last_key(jsCtx *js, const char *subject, char *out, size_t len)
{
    natsMsg *m = NULL;
    out[0] = '\0';
    if (js_GetLastMsg(&m, js, KILN_STREAM_EVENTS, subject, NULL, NULL) == NATS_OK)
        h_msg_header(m, KILN_HDR_EVENT_KEY, out, len);
    natsMsg_Destroy(m);
}

typedef struct {
    Kiln__V1__JobRecord rec;
    Kiln__V1__JobRequest req;
    Kiln__V1__JobStatus status;
} ev_record;

static void ev_record_init(ev_record *r, const char *id, Kiln__V1__JobState state, uint32_t attempts)
{
    kiln__v1__job_record__init(&r->rec);
    kiln__v1__job_request__init(&r->req);
    kiln__v1__job_status__init(&r->status);
    r->req.id = (char *)id;
    r->req.user_id = "ev-user";
    r->req.prompt = "an event";
    r->status.id = (char *)id;
    r->status.user_id = "ev-user";
    r->status.state = state;
    r->status.attempts = attempts;
    r->rec.request = &r->req;
    r->rec.status = &r->status;
}

/* Lists r's change as new (packed). */
static void ev_list_new(events_list *l, const ev_record *r)
{
    uint8_t *pb = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_pb_pack(&r->rec.base, &pb, &len), KILN_OK);
    cr_assert_eq(events_add_packed(l, &r->rec, EVENTS_STATE, &pb, len), KILN_OK);
    free(pb);
}

/* Publishes l as the apply loop does (async, all acks awaited) and frees it. */
static void ev_publish_list(jsCtx *js, events_list *l)
{
    cr_assert_eq(events_publish_async(js, l), KILN_OK);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 5000;
    cr_assert_eq(js_PublishAsyncComplete(js, &po), NATS_OK);
    events_free(l);
}

/* Publishes rec's change (replayed: as a re-announcement) the way the apply
 * loop does (async, then all acks awaited) or a request thread does (sync). */
static void ev_publish(jsCtx *js, const ev_record *r, bool replayed, bool sync)
{
    events_list l = {0};
    kiln_status st;
    if (replayed) {
        st = events_add_replayed(&l, &r->rec, EVENTS_STATE);
        cr_assert_eq(st, KILN_OK, "event not listed: %s", kiln_status_str(st));
    } else {
        ev_list_new(&l, r);
    }
    if (!sync) {
        ev_publish_list(js, &l);
        return;
    }
    st = events_publish_sync(js, &l, 2);
    cr_assert_eq(st, KILN_OK, "event not published: %s", kiln_status_str(st));
    events_free(&l);
}

/* One batch holding rec's change and, after it, its re-announcement (a
 * redelivered message in the same batch), published as the apply loop does. */
static void ev_publish_then_replay_in_batch(jsCtx *js, const ev_record *r)
{
    events_list l = {0};
    ev_list_new(&l, r);
    cr_assert_eq(events_add_replayed(&l, &r->rec, EVENTS_STATE), KILN_OK);
    ev_publish_list(js, &l);
}

Test(store_events, replayed_change_is_published_once)
{
    h_stack s;
    h_start(&s, NULL);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0, "cannot connect to nats-server");

    char id[65], subject[EVENTS_SUBJECT_MAX], key[EVENTS_KEY_MAX];
    h_unique_id(id, "ev");
    cr_assert(events_subject(subject, sizeof subject, "ev-user", id) > 0);
    ev_record pending, running;
    /* Pending again after an attempt: a first event (attempt 0) goes out in
     * its user's EventBatch, tested below. */
    ev_record_init(&pending, id, KILN__V1__JOB_STATE__JOB_STATE_PENDING, 1);
    ev_record_init(&running, id, KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 2);
    int64_t n0 = ev_count(js);

    /* A new change is published as it is. */
    ev_publish(js, &pending, false, false);
    cr_assert_eq(ev_count(js), n0 + 1);
    ev_last_key(js, subject, key, sizeof key);
    char want[EVENTS_KEY_MAX];
    snprintf(want, sizeof want, "%s.pending.1.ev", id);
    cr_assert_str_eq(key, want);

    /* Its replay finds it last on the job's subject: nothing more, async or sync. */
    ev_publish(js, &pending, true, false);
    ev_publish(js, &pending, true, true);
    cr_assert_eq(ev_count(js), n0 + 1, "a replayed change was published again");

    /* A replayed change the subject does not end with is published (its first
     * publish was lost), once. */
    ev_publish(js, &running, true, false);
    cr_assert_eq(ev_count(js), n0 + 2, "a replayed change that was never published is missing");
    ev_publish(js, &running, true, true);
    cr_assert_eq(ev_count(js), n0 + 2);
    ev_last_key(js, subject, key, sizeof key);
    snprintf(want, sizeof want, "%s.processing.2.ev", id);
    cr_assert_str_eq(key, want);

    /* A change published in a batch and re-announced later in the same batch
     * (its stream write may not be stored yet when the replay is checked):
     * once. */
    ev_record done;
    ev_record_init(&done, id, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, 2);
    ev_publish_then_replay_in_batch(js, &done);
    cr_assert_eq(ev_count(js), n0 + 3, "a change re-announced in its own batch went out twice");

    /* The job was viewed after it completed: the viewed event re-states the
     * completed record, so a replay of the completion adds nothing. */
    events_list v = {0};
    uint8_t *pb = NULL;
    size_t len = 0;
    done.rec.viewed = true;
    cr_assert_eq(kiln_pb_pack(&done.rec.base, &pb, &len), KILN_OK);
    cr_assert_eq(events_add_packed(&v, &done.rec, EVENTS_VIEWED, &pb, len), KILN_OK);
    free(pb);
    cr_assert_eq(events_publish_sync(js, &v, 1), KILN_OK);
    events_free(&v);
    cr_assert_eq(ev_count(js), n0 + 4);
    ev_publish(js, &done, true, false);
    cr_assert_eq(ev_count(js), n0 + 4, "a replayed completion after its viewed event went out again");

    /* The check looks at the last event only: an older state replayed after a
     * newer one is published again (the apply loop replays only a record's
     * current state, so this does not happen there). */
    ev_publish(js, &pending, true, true);
    cr_assert_eq(ev_count(js), n0 + 5);

    h_nats_close(nc, js);
    h_stop(&s);
}

/* The in-batch case on its own: a JetStream context whose API prefix nothing
 * answers still publishes into KILN_EVENTS (publishes go to the event
 * subject), but its last-event lookups fail, and a failed lookup means
 * "publish". Only the check against the batch's earlier items keeps the
 * re-announcement out. */
Test(store_events, replay_in_its_own_batch_is_caught_without_the_stream)
{
    h_stack s;
    h_start(&s, NULL);
    natsConnection *nc = NULL;
    jsCtx *js = NULL, *blind = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0, "cannot connect to nats-server");
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Prefix = "kiln.test.no-api";
    jo.Wait = 500;
    cr_assert_eq(natsConnection_JetStream(&blind, nc, &jo), NATS_OK);

    char id[65], subject[EVENTS_SUBJECT_MAX];
    h_unique_id(id, "evb");
    cr_assert(events_subject(subject, sizeof subject, "ev-user", id) > 0);
    ev_record done;
    ev_record_init(&done, id, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, 1);
    int64_t n0 = ev_count(js);

    ev_publish_then_replay_in_batch(blind, &done);
    cr_assert_eq(ev_count(js), n0 + 1, "a change re-announced in its own batch went out twice");

    /* The lookup really was blind: the stream holds the event, the blind
     * context cannot read it. */
    natsMsg *m = NULL;
    cr_assert_eq(js_GetLastMsg(&m, js, KILN_STREAM_EVENTS, subject, NULL, NULL), NATS_OK);
    natsMsg_Destroy(m);
    m = NULL;
    cr_assert_neq(js_GetLastMsg(&m, blind, KILN_STREAM_EVENTS, subject, NULL, NULL), NATS_OK,
                  "the blind context found the event");
    natsMsg_Destroy(m);

    jsCtx_Destroy(blind);
    h_nats_close(nc, js);
    h_stop(&s);
}

/* The ids of the records of the EventBatch m, comma-separated, into out. */
static void ev_batch_ids(natsMsg *m, char *out, size_t len)
{
    Kiln__V1__EventBatch *b = kiln__v1__event_batch__unpack(
        NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    cr_assert_not_null(b, "undecodable EventBatch");
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < b->n_records; i++) {
        Kiln__V1__JobRecord *rec =
            kiln__v1__job_record__unpack(NULL, b->records[i].len, b->records[i].data);
        cr_assert_not_null(rec, "undecodable record %zu", i);
        cr_assert_eq(rec->status->state, KILN__V1__JOB_STATE__JOB_STATE_PENDING);
        o += (size_t)snprintf(out + o, len - o, "%s%s", i > 0 ? "," : "", rec->request->id);
        kiln__v1__job_record__free_unpacked(rec, NULL);
    }
    kiln__v1__event_batch__free_unpacked(b, NULL);
}

/* The last message on subject: its stream sequence and, for an EventBatch,
 * its records' ids. */
static uint64_t ev_last_batch(jsCtx *js, const char *subject, char *ids, size_t len)
{
    natsMsg *m = NULL;
    cr_assert_eq(js_GetLastMsg(&m, js, KILN_STREAM_EVENTS, subject, NULL, NULL), NATS_OK,
                 "nothing on %s", subject);
    uint64_t seq = natsMsg_GetSequence(m);
    if (ids != NULL) ev_batch_ids(m, ids, len);
    natsMsg_Destroy(m);
    return seq;
}

Test(store_events, first_events_go_out_in_one_batch_per_user)
{
    h_stack s;
    h_start(&s, NULL);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0, "cannot connect to nats-server");

    char a1[65], a2[65], a3[65], b1[65], want[300], ids[300];
    h_unique_id(a1, "eva1");
    h_unique_id(a2, "eva2");
    h_unique_id(a3, "eva3");
    h_unique_id(b1, "evb1");
    char user_a[80], user_b[80], new_a[EVENTS_SUBJECT_MAX], new_b[EVENTS_SUBJECT_MAX],
        job_a1[EVENTS_SUBJECT_MAX];
    snprintf(user_a, sizeof user_a, "ua-%s", a1);
    snprintf(user_b, sizeof user_b, "ub-%s", a1);
    cr_assert(events_new_subject(new_a, sizeof new_a, user_a) > 0);
    cr_assert(events_new_subject(new_b, sizeof new_b, user_b) > 0);
    cr_assert(events_subject(job_a1, sizeof job_a1, user_a, a1) > 0);
    ev_record ra1, ra2, ra3, rb1, ra1_run;
    ev_record_init(&ra1, a1, KILN__V1__JOB_STATE__JOB_STATE_PENDING, 0);
    ev_record_init(&ra2, a2, KILN__V1__JOB_STATE__JOB_STATE_PENDING, 0);
    ev_record_init(&ra3, a3, KILN__V1__JOB_STATE__JOB_STATE_PENDING, 0);
    ev_record_init(&rb1, b1, KILN__V1__JOB_STATE__JOB_STATE_PENDING, 0);
    ev_record_init(&ra1_run, a1, KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 1);
    ev_record *users_a[] = {&ra1, &ra2, &ra3, &ra1_run};
    for (size_t i = 0; i < 4; i++) users_a[i]->req.user_id = users_a[i]->status.user_id = user_a;
    rb1.req.user_id = rb1.status.user_id = user_b;
    int64_t n0 = ev_count(js);

    /* One applied batch: a1 new, b1 new (another user), a1 started, a2 new.
     * Three messages: user a's batch (a1, a2 in list order), user b's, and
     * a1's change on its own subject, after its first event. */
    events_list l = {0};
    ev_list_new(&l, &ra1);
    ev_list_new(&l, &rb1);
    ev_list_new(&l, &ra1_run);
    ev_list_new(&l, &ra2);
    ev_publish_list(js, &l);
    cr_assert_eq(ev_count(js), n0 + 3, "first events were not batched per user");
    uint64_t seq_a = ev_last_batch(js, new_a, ids, sizeof ids);
    snprintf(want, sizeof want, "%s,%s", a1, a2);
    cr_assert_str_eq(ids, want);
    ev_last_batch(js, new_b, ids, sizeof ids);
    cr_assert_str_eq(ids, b1);
    cr_assert_gt(ev_last_batch(js, job_a1, NULL, 0), seq_a, "a job's change went out before its first event");

    /* A replayed first event found in the user's last batch: nothing more,
     * async or sync; nor twice within one list. */
    ev_publish(js, &ra2, true, false);
    ev_publish(js, &ra1, true, true);
    cr_assert_eq(ev_count(js), n0 + 3, "a replayed first event was published again");
    /* Both re-announced in one list (one read of the user's last batch). */
    events_list both = {0};
    cr_assert_eq(events_add_replayed(&both, &ra1.rec, EVENTS_STATE), KILN_OK);
    cr_assert_eq(events_add_replayed(&both, &ra2.rec, EVENTS_STATE), KILN_OK);
    ev_publish_list(js, &both);
    cr_assert_eq(ev_count(js), n0 + 3, "a replayed batch's first events were published again");
    ev_publish_then_replay_in_batch(js, &ra3);
    cr_assert_eq(ev_count(js), n0 + 4);
    ev_last_batch(js, new_a, ids, sizeof ids);
    cr_assert_str_eq(ids, a3, "a first event re-announced in its own batch went out twice");

    /* The documented limit: once a later batch of the user went out, the
     * replay of an older first event cannot be told apart from a lost one
     * and goes out again. */
    ev_publish(js, &ra1, true, false);
    cr_assert_eq(ev_count(js), n0 + 5);
    ev_last_batch(js, new_a, ids, sizeof ids);
    cr_assert_str_eq(ids, a1);

    h_nats_close(nc, js);
    h_stop(&s);
}

/* Lists n first events of a new user: ids "<prefix>0".., their records in
 * recs, the user's EventBatch subject in subject (EVENTS_SUBJECT_MAX). */
static void ev_list_burst(events_list *l, ev_record *recs, char (*ids)[65], int n, const char *prefix,
                          char *user, size_t ulen, char *subject)
{
    h_unique_id(ids[0], prefix);
    snprintf(user, ulen, "u-%s", ids[0]);
    cr_assert(events_new_subject(subject, EVENTS_SUBJECT_MAX, user) > 0);
    for (int i = 0; i < n; i++) {
        snprintf(ids[i], 65, "%s%d", prefix, i);
        ev_record_init(&recs[i], ids[i], KILN__V1__JOB_STATE__JOB_STATE_PENDING, 0);
        recs[i].req.user_id = recs[i].status.user_id = user;
        ev_list_new(l, &recs[i]);
    }
}

/* A user's first events beyond KILN_EVENTS_BATCH_MAX in one applied batch
 * go out in further EventBatches, in list order, none lost or repeated. */
Test(store_events, a_large_burst_splits_into_capped_batches)
{
    h_stack s;
    h_start(&s, NULL);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0, "cannot connect to nats-server");

    enum { N = KILN_EVENTS_BATCH_MAX + 6 };
    static char ids[N][65];
    static ev_record recs[N];
    char user[80], subject[EVENTS_SUBJECT_MAX];
    events_list l = {0};
    ev_list_burst(&l, recs, ids, N, "cap", user, sizeof user, subject);
    int64_t n0 = ev_count(js);
    ev_publish_list(js, &l);
    cr_assert_eq(ev_count(js), n0 + 2, "want %d records in two EventBatches", N);

    /* The last batch holds the 6 after the cap, the one before it the rest. */
    static char got[N * 12];
    uint64_t last = ev_last_batch(js, subject, got, sizeof got);
    cr_assert_str_eq(got, "cap1024,cap1025,cap1026,cap1027,cap1028,cap1029");
    natsMsg *m = NULL;
    cr_assert_eq(js_GetMsg(&m, js, KILN_STREAM_EVENTS, last - 1, NULL, NULL), NATS_OK);
    cr_assert_str_eq(natsMsg_GetSubject(m), subject);
    ev_batch_ids(m, got, sizeof got);
    natsMsg_Destroy(m);
    size_t o = 0;
    static char want[N * 12];
    for (int i = 0; i < KILN_EVENTS_BATCH_MAX; i++)
        o += (size_t)snprintf(want + o, sizeof want - o, "%s%s", i > 0 ? "," : "", ids[i]);
    cr_assert_str_eq(got, want);

    h_nats_close(nc, js);
    h_stop(&s);
}

/* Under a server whose max_payload is small, an EventBatch keeps its records
 * to half of it (events_set_max_payload): more, smaller batches, in order. */
Test(store_events, batches_stay_under_half_the_max_payload)
{
    h_stack s;
    h_start(&s, NULL);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0, "cannot connect to nats-server");

    enum { N = 10 };
    char ids[N][65], user[80], subject[EVENTS_SUBJECT_MAX];
    ev_record recs[N];
    events_list l = {0};
    ev_list_burst(&l, recs, ids, N, "pay", user, sizeof user, subject);
    /* Room for three records (all the same size) in half the payload. */
    size_t rec_len = l.items[0].record_len;
    events_set_max_payload((int64_t)(2 * (3 * rec_len + rec_len / 2)));
    int64_t n0 = ev_count(js);
    ev_publish_list(js, &l);
    events_set_max_payload(0); /* ignored: the bound stays for this process */
    cr_assert_eq(ev_count(js), n0 + 4, "want batches of 3, 3, 3 and 1");
    char got[200];
    uint64_t last = ev_last_batch(js, subject, got, sizeof got);
    cr_assert_str_eq(got, "pay9");
    natsMsg *m = NULL;
    cr_assert_eq(js_GetMsg(&m, js, KILN_STREAM_EVENTS, last - 3, NULL, NULL), NATS_OK);
    ev_batch_ids(m, got, sizeof got);
    natsMsg_Destroy(m);
    cr_assert_str_eq(got, "pay0,pay1,pay2");

    h_nats_close(nc, js);
    h_stop(&s);
}
