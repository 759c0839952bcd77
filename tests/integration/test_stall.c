/* test_stall.c - the consumer's stalled-message recovery (consumer/stall.c):
 * delayed jobs nak'd just before nats-server stops must still complete after
 * the restart (nats-server 2.9.10 can forget their ack-pending entries), and
 * the check re-drives nothing in a healthy system; and the store's own
 * repairs: its sweep (store/sweep.c) and its durable check (store/resync.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(stall, .fini = h_fini, .timeout = 180);

typedef struct {
    jsCtx *js;
    const char *durable;
    int64_t want_ack_pending;
} stall_arg;

/* Every job of the round was delivered and nak'd (waiting in the server's
 * redelivery queue): nothing left to deliver, want_ack_pending unacked. */
static int stall_all_naked(void *arg)
{
    stall_arg *a = arg;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, a->js, "KILN_JOBS", a->durable, NULL, &jerr) != NATS_OK) return 0;
    int ok = ci->NumPending == 0 && ci->NumAckPending >= a->want_ack_pending;
    jsConsumerInfo_Destroy(ci);
    return ok;
}

/* nats-server 2.9.10 sometimes loses, at the restart, the jobs nak'd with a
 * delay (about 1 run in 6): the store's sweep (store/sweep.c, every second
 * here) re-publishes pending jobs whose JobRequest vanished from KILN_JOBS. */
Test(stall, delayed_jobs_survive_nats_restarts)
{
    h_stack s;
    h_stack_opts o = {.env = {"KILN_SWEEP_INTERVAL=1s", NULL},
                      .consumer_env = {"KILN_STALL_CHECK=500ms", NULL}};
    h_start(&s, &o);
    enum { ROUNDS = 4, N = 4 };
    char ids[ROUNDS][N][65];

    for (int r = 0; r < ROUNDS; r++) {
        h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"stalled mole %d\",\"delay_ms\":2500}", N, ids[r]);
        h_nats n;
        h_nats_open(&s, &n);
        /* Earlier rounds' jobs may still be waiting too: at least N unacked. */
        stall_arg a = {n.js, "kiln-worker-normal", N};
        int naked = h_wait_for(stall_all_naked, &a, 10000, 10);
        h_nats_free(&n);
        cr_assert(naked, "round %d: the consumer never nak'd the delayed jobs", r);
        /* Stop at once, while the jobs wait in the server's redelivery queue. */
        h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
        cr_assert_eq(h_proc_start(&s, H_NATS), 0);
        cr_assert_eq(h_stack_wait_ready(&s), 0, "round %d: not ready after the NATS restart", r);
    }

    h_nats n;
    h_nats_open(&s, &n);
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) {
            json_t *j = h_wait_job(&s, H_TOKEN_ALICE, ids[r][i], "completed", 30000);
            if (j == NULL || strcmp(h_jstr(j, "status"), "completed") != 0)
                h_dump_durable(n.js, "kiln-worker-normal");
            json_decref(j);
            h_expect_job(&s, H_TOKEN_ALICE, ids[r][i], "completed", 1, 1000, "delayed job");
            h_expect_done_once(&n, ids[r][i], "completed", 10000);
        }
    }
    fprintf(stderr, "stall: re-driven messages: consumer %.0f store sweep %.0f\n",
            h_metric(&s, H_CONSUMER, "kiln_consumer_stalled_redriven_total"),
            h_metric(&s, H_STORE, "kiln_store_sweep_redriven_total"));
    h_nats_free(&n);
    h_stop(&s);
}

Test(stall, healthy_system_redrives_nothing)
{
    h_stack s;
    /* Three slots: jobs queue behind busy slots, and lanes wait their turn. */
    h_stack_opts o = {.env = {"KILN_DURABLE_CHECK=100ms", NULL},
                      .consumer_env = {"KILN_STALL_CHECK=100ms", "KILN_RETRY_BASE=200ms",
                                       "KILN_RETRY_CAP=400ms", "KILN_CONCURRENCY=3", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);

    /* Interleave lanes, transitions, delays (nak with delay) and retries in
     * KILN_JOBS while the check runs every 100 ms. */
    enum { N = 6 };
    char norm[N][65], high[N][65], del[N][65], retry[N][65];
    for (int i = 0; i < N; i++) {
        char body[160];
        snprintf(body, sizeof body, "{\"prompt\":\"!sleep=300 healthy fox %d\"}", i);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, norm[i]), 202);
        snprintf(body, sizeof body, "{\"prompt\":\"healthy hare %d\",\"priority\":\"high\"}", i);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, high[i]), 202);
        snprintf(body, sizeof body, "{\"prompt\":\"healthy owl %d\",\"delay_ms\":%d}", i, 500 + 200 * i);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, del[i]), 202);
        snprintf(body, sizeof body, "{\"prompt\":\"!fail=500:1 healthy eel %d\"}", i);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, retry[i]), 202);
    }
    for (int i = 0; i < N; i++) {
        h_expect_job(&s, H_TOKEN_ALICE, norm[i], "completed", 1, 30000, "normal job");
        h_expect_job(&s, H_TOKEN_ALICE, high[i], "completed", 1, 30000, "high job");
        h_expect_job(&s, H_TOKEN_ALICE, del[i], "completed", 1, 30000, "delayed job");
        h_expect_job(&s, H_TOKEN_ALICE, retry[i], NULL, -1, 30000, "retried job");
    }
    /* Observation window: a few more check rounds over the idle durables. */
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 500 * 1000000L};
    nanosleep(&ts, NULL);
    double redriven = h_metric(&s, H_CONSUMER, "kiln_consumer_stalled_redriven_total");
    /* The check is on (100 ms), so the counter exists: -1 (absent) is a failure too. */
    cr_expect(redriven == 0, "stall check re-drove %.0f messages in a healthy system (-1: no metric)",
              redriven);
    double stuck = h_metric(&s, H_CONSUMER, "kiln_consumer_stalled_durables_total");
    cr_expect(stuck == 0, "stall check found %.0f durables passing over messages in a healthy system", stuck);
    double resyncs = h_metric(&s, H_STORE, "kiln_store_durable_resyncs_total");
    cr_expect(resyncs == 0, "the store re-created its durable %.0f times in a healthy system (-1: no metric)",
              resyncs);
    h_nats_free(&n);
    h_stop(&s);
}

static int stall_store_redrove_all(void *arg)
{
    return h_metric(arg, H_STORE, "kiln_store_sweep_redriven_total") >= 3;
}

/* The sweep's first round comes a few seconds after the store starts, not one
 * KILN_SWEEP_INTERVAL (30 s) later - a store restarted more often than that
 * would never sweep - and a round that stopped at its cap of 1000 checks is
 * followed within a tenth of the interval: a request lost behind 1100
 * pending jobs is re-driven within seconds of a store start. Two more lost
 * requests among the first round's 1000 are re-driven by that round. */
Test(stall, the_sweep_finds_a_request_lost_behind_a_backlog_soon_after_a_start)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    /* First published, so last in the sweep's order (a user's jobs newest first). */
    const char *lost = "backlog-lost";
    Kiln__V1__JobRequest q = KILN__V1__JOB_REQUEST__INIT;
    q.id = (char *)lost;
    q.user_id = (char *)"bob";
    q.prompt = (char *)"lost mole";
    uint64_t seq = 0;
    cr_assert_eq(h_publish_request(n.js, "jobs.generate", &q, 0, &seq), 0);
    enum { N = 1100, NLOST = 3 };
    const char *also_lost[NLOST - 1] = {"backlog-00500", "backlog-01000"};
    uint64_t lost_seqs[NLOST] = {seq};
    for (int i = 0; i < N; i++) {
        char id[65];
        snprintf(id, sizeof id, "backlog-%05d", i);
        q.id = id;
        q.prompt = (char *)"backlog mole";
        uint64_t *sp = i == 500 ? &lost_seqs[1] : i == 1000 ? &lost_seqs[2] : NULL;
        cr_assert_eq(h_publish_request(n.js, "jobs.generate", &q, 0, sp), 0);
    }
    json_t *j = h_wait_job(&s, H_TOKEN_BOB, "backlog-01099", "pending", 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "pending", "the store never recorded the backlog");
    json_decref(j);

    /* What nats-server 2.9.10 sometimes does to a nak'd request at a restart. */
    for (int i = 0; i < NLOST; i++)
        cr_assert_eq(js_DeleteMsg(n.js, "KILN_JOBS", lost_seqs[i], NULL, NULL), NATS_OK);
    cr_assert_eq(h_proc_restart(&s, H_STORE), 0);
    int64_t t0 = h_now_ms();
    cr_expect(h_wait_for(stall_store_redrove_all, &s, 15000, 100),
              "the store did not re-drive the %d lost requests within 15 s of its start (sweep interval 30 s)",
              NLOST);
    fprintf(stderr, "stall: lost requests re-driven %lld ms after the store start\n", (long long)(h_now_ms() - t0));

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_BOB, lost, "completed", 1, 90000, "lost job after its re-drive");
    for (int i = 0; i < NLOST - 1; i++)
        h_expect_job(&s, H_TOKEN_BOB, also_lost[i], "completed", 1, 90000, "lost job after its re-drive");
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    const char *id;
    char subject[64]; /* of the re-driven copy ("" until found) */
} stall_redrive_find;

/* h_stream_scan: the subject of the Kiln-Redrive copy of job f->id. */
static void stall_find_redrive(natsMsg *m, void *arg)
{
    stall_redrive_find *f = arg;
    const char *redrive = NULL, *msg_id = NULL;
    if (natsMsgHeader_Get(m, "Kiln-Redrive", &redrive) != NATS_OK ||
        natsMsgHeader_Get(m, "Nats-Msg-Id", &msg_id) != NATS_OK || msg_id == NULL)
        return;
    if (strncmp(msg_id, f->id, strlen(f->id)) == 0 && msg_id[strlen(f->id)] == '.')
        snprintf(f->subject, sizeof f->subject, "%s", natsMsg_GetSubject(m));
}

static int stall_store_redrove_one(void *arg)
{
    return h_metric(arg, H_STORE, "kiln_store_sweep_redriven_total") >= 1;
}

/* A job another service publishes straight to jobs.generate.high, its
 * priority field left unset, whose request is then lost: the sweep must
 * publish it again on the high lane, the one it came on, not on the lane
 * the field names (the store records the subject's lane). */
Test(stall, the_sweep_redrives_a_lost_request_on_the_lane_it_came_on)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1, .env = {"KILN_SWEEP_INTERVAL=2s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    h_unique_id(id, "lane-lost");
    uint64_t seq = 0;
    json_t *j = h_publish_recorded(&s, n.js, "jobs.generate.high", id, "bob", H_TOKEN_BOB, "lost lane mole", &seq);
    cr_expect_str_eq(h_jstr(j, "priority"), "high");
    json_decref(j);

    cr_assert_eq(js_DeleteMsg(n.js, "KILN_JOBS", seq, NULL, NULL), NATS_OK);
    cr_assert(h_wait_for(stall_store_redrove_one, &s, 20000, 100), "the sweep did not re-drive the lost request");
    stall_redrive_find f = {id, ""};
    cr_assert_geq(h_stream_scan(n.js, "KILN_JOBS", stall_find_redrive, &f), 0);
    cr_expect_str_eq(f.subject, "jobs.generate.high", "the lost request was re-driven on another lane");

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_BOB, id, "completed", 1, 30000, "the re-driven job");
    h_nats_free(&n);
    h_stop(&s);
}

/* A job left processing by a worker that died, whose message JetStream no
 * longer holds (what nats-server 2.9.10 sometimes leaves after a SIGKILL;
 * here the message is deleted by hand): once it has been processing for
 * longer than its attempt can run (timeout_s 1 s + 60 s grace), the store's
 * sweep publishes the request again and a consumer runs it. */
Test(stall, an_abandoned_processing_job_is_run_again, .timeout = 240)
{
    h_stack s;
    h_stack_opts o = {.env = {"KILN_SWEEP_INTERVAL=2s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    const char *id = "abandoned-mole";
    Kiln__V1__JobRequest q = KILN__V1__JOB_REQUEST__INIT;
    q.id = (char *)id;
    q.user_id = (char *)"bob";
    q.prompt = (char *)"!sleep=800 abandoned mole";
    q.timeout_s = 1;
    uint64_t seq = 0;
    cr_assert_eq(h_publish_request(n.js, "jobs.generate", &q, 0, &seq), 0);

    json_t *j = h_wait_job(&s, H_TOKEN_BOB, id, "processing", 20000);
    cr_assert_str_eq(h_jstr(j, "status"), "processing", "the job never started");
    json_decref(j);
    cr_assert_eq(h_proc_kill9(&s, H_CONSUMER), 0);
    cr_assert_eq(js_DeleteMsg(n.js, "KILN_JOBS", seq, NULL, NULL), NATS_OK);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    int64_t t0 = h_now_ms();
    h_expect_job(&s, H_TOKEN_BOB, id, "completed", 2, 120000, "abandoned job");
    int64_t took = h_now_ms() - t0;
    cr_expect_geq(took, 55000, "re-run after %lld ms, before the attempt could have ended", (long long)took);
    cr_expect(h_log_contains(&s, H_STORE, "lost job request re-driven job=abandoned-mole"),
              "the store's sweep did not re-drive it");
    h_expect_done_once(&n, id, "completed", 10000);
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    h_stack *s;
    h_nats *n;
    const char *ack_subject[2]; /* the phantom holder's deliveries (the second may be NULL) */
    const char *id;             /* the job awaited */
} stall_phantom;

/* Keeps the phantom's deliveries in progress; true once the job completed. */
static int stall_phantom_keeps(void *arg)
{
    stall_phantom *p = arg;
    for (size_t i = 0; i < sizeof p->ack_subject / sizeof p->ack_subject[0]; i++)
        if (p->ack_subject[i] != NULL) (void)natsConnection_PublishString(p->n->nc, p->ack_subject[i], "+WPI");
    (void)natsConnection_Flush(p->n->nc);
    json_t *j = h_get_job(p->s, H_TOKEN_ALICE, p->id, NULL);
    int done = j != NULL && strcmp(h_jstr(j, "status"), "completed") == 0;
    json_decref(j);
    return done;
}

/* nats-server 2.9.10 can keep a message delivered and ack-pending for good,
 * never redelivering it (seen for a message nak'd with a delay as the server
 * stopped). The test makes that state at will: it takes the job's delivery
 * itself, as no Kiln consumer, and keeps it in progress (+WPI) while the
 * consumer runs, so the server never redelivers it and no consumer answers
 * for it. The stall check must see it (due, pending, held by nobody, past
 * its AckWait and nak delay, with empty fetches) and re-drive it: one call,
 * completed in one attempt. */
Test(stall, a_message_kept_ack_pending_by_nobody_is_redriven)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1,
                      .consumer_env = {"KILN_STALL_CHECK=500ms", "KILN_RETRY_CAP=1s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "unheld urchin", id), 202);
    natsMsg *phantom = h_take_delivery(&n, "kiln-worker-normal");
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    stall_phantom p = {&s, &n, {natsMsg_GetReply(phantom), NULL}, id};
    int done = h_wait_for(stall_phantom_keeps, &p, 40000, 500);
    if (!done) h_dump_durable(n.js, "kiln-worker-normal");
    cr_assert(done, "a message kept ack-pending by no consumer was never run");
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 1000, "the re-driven job");
    cr_expect(h_log_contains(&s, H_CONSUMER, "no consumer holds and does not deliver it again"),
              "the stall check did not say why it re-drove the message");
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_stalled_redriven_total"), 1);
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 1);
    h_expect_done_once(&n, id, "completed", 10000);
    /* The deleted old copy no longer counts as ack-pending either. */
    cr_expect(h_wait_worker_idle(n.js, "kiln-worker-normal", 10000), "the durable still counts a message unacked");
    natsMsg_Destroy(phantom);
    h_nats_free(&n);
    h_stop(&s);
}

/* Takes the next delivery of kiln-worker-normal, which must be the job of
 * prompt just submitted (into id), and cancels that job: a finished job's
 * message held ack-pending, the ack floor below it. Caller destroys. */
static natsMsg *stall_hold_cancelled(h_stack *s, h_nats *n, const char *prompt, char id[65])
{
    cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, prompt, id), 202);
    natsMsg *held = h_take_delivery(n, "kiln-worker-normal");
    h_resp r;
    cr_assert_eq(h_job_post(s, &r, H_TOKEN_ALICE, id, "cancel"), 200, "cancel: %s", r.body);
    h_resp_free(&r);
    h_expect_job(s, H_TOKEN_ALICE, id, "cancelled", 0, 10000, "the held job cancelled");
    return held;
}

/* The same with a finished job's message kept ack-pending below it (chaos
 * run 2615 kept a completed job's message that no durable would ever ack):
 * the rule looks at the lowest message above the ack floor, and one whose
 * job is terminal must not stop it there for good. The test holds two
 * deliveries as no consumer: the first job's, cancelled while held, and the
 * second's, which must be re-driven and run once. */
Test(stall, a_finished_jobs_message_kept_ack_pending_does_not_hide_an_unheld_one_above_it)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1,
                      .consumer_env = {"KILN_STALL_CHECK=500ms", "KILN_RETRY_CAP=1s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char finished[65], id[65];
    natsMsg *held_finished = stall_hold_cancelled(&s, &n, "finished flounder", finished);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "unheld urchin above it", id), 202);
    natsMsg *held = h_take_delivery(&n, "kiln-worker-normal");
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    stall_phantom p = {&s, &n, {natsMsg_GetReply(held_finished), natsMsg_GetReply(held)}, id};
    int done = h_wait_for(stall_phantom_keeps, &p, 40000, 500);
    if (!done) h_dump_durable(n.js, "kiln-worker-normal");
    cr_assert(done, "a message kept ack-pending by no consumer above a finished job's was never run");
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 1000, "the re-driven job");
    cr_expect(h_log_contains(&s, H_CONSUMER, "no consumer holds and does not deliver it again"),
              "the stall check did not say why it re-drove the message");
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_stalled_redriven_total"), 1,
                 "the finished job's message was re-driven too");
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 1);
    h_expect_job(&s, H_TOKEN_ALICE, finished, "cancelled", 0, 1000, "the finished job");
    natsMsg_Destroy(held);
    natsMsg_Destroy(held_finished);
    h_nats_free(&n);
    h_stop(&s);
}

/* Chaos run 3126: a retry's message kept ack-pending for good lay 2 625
 * sequences above the durable's ack floor, all of them gone, and the rule
 * above walked them 64 a round (every 10 s there): the job stayed pending
 * past the run's 3 minutes. The walk now passes a run of gone or other
 * sequences in one request. The test holds a cancelled job's delivery (the
 * floor stays below it), puts 3 000 sequences that are gone above it, then
 * holds a pending job's delivery: that one must run within 25 s with a 1 s
 * check (the walk of 64 a round took 47 s to reach it). */
Test(stall, a_message_kept_ack_pending_far_above_the_floor_is_redriven_soon)
{
    enum { GAP = 3000 };
    h_stack s;
    h_stack_opts o = {.no_consumer = 1,
                      .consumer_env = {"KILN_STALL_CHECK=1s", "KILN_RETRY_CAP=1s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char finished[65], id[65];
    natsMsg *held_finished = stall_hold_cancelled(&s, &n, "floor flounder", finished);
    for (int i = 0; i < GAP; i++) {
        if (i % 200 == 0) /* the held delivery must not come back meanwhile (AckWait 2 s) */
            cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetReply(held_finished), "+WPI"), NATS_OK);
        jsPubAck *pa = NULL;
        cr_assert_eq(js_Publish(&pa, n.js, "jobs.generate", "gone", 4, NULL, NULL), NATS_OK);
        uint64_t seq = pa->Sequence;
        jsPubAck_Destroy(pa);
        cr_assert_eq(js_DeleteMsg(n.js, "KILN_JOBS", seq, NULL, NULL), NATS_OK);
    }
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "unheld urchin far above", id), 202);
    natsMsg *held = h_take_delivery(&n, "kiln-worker-normal");
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    stall_phantom p = {&s, &n, {natsMsg_GetReply(held_finished), natsMsg_GetReply(held)}, id};
    int done = h_wait_for(stall_phantom_keeps, &p, 25000, 500);
    if (!done) h_dump_durable(n.js, "kiln-worker-normal");
    cr_assert(done, "a message kept ack-pending %d sequences above the floor was not run within 25 s", GAP);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 1000, "the re-driven job");
    cr_expect(h_log_contains(&s, H_CONSUMER, "no consumer holds and does not deliver it again"),
              "the job ran, but not through the stall check");
    natsMsg_Destroy(held);
    natsMsg_Destroy(held_finished);
    h_nats_free(&n);
    h_stop(&s);
}

/* nats-server 2.9.10 can count the store's own durable (kiln-store) past
 * messages it never delivered to the store: in a chaos run it went on
 * "delivering" (delivered 3985, 0 ack-pending, ack floor 820) while the
 * store applied nothing for minutes, and the workers' acks then removed the
 * messages (interest retention: the durable no longer wanted them). The
 * test makes that state at will: with the store stopped it takes the jobs'
 * deliveries from kiln-store itself and acks them, so the durable counts
 * them handled while the store never saw them. The store must notice
 * (messages still in the stream, above what it applied, that its durable
 * counts handled), re-create its durable from its applied sequence, and
 * record the jobs; a consumer then runs each once. */
Test(stall, messages_the_store_durable_passed_over_are_applied)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1, .env = {"KILN_DURABLE_CHECK=200ms", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    cr_assert_eq(h_proc_term(&s, H_STORE), 0);

    enum { N = 3 };
    char ids[N][65];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "passed-over-%d", i);
        cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", ids[i], "bob", "passed over mole"), 0);
    }
    for (int i = 0; i < N; i++) {
        natsMsg *m = h_take_delivery(&n, "kiln-store");
        cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetReply(m), "+ACK"), NATS_OK);
        natsMsg_Destroy(m);
    }
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);

    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    for (int i = 0; i < N; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_BOB, ids[i], "pending", 20000);
        cr_assert(j != NULL, "the store never recorded %s, a job its durable passed over", ids[i]);
        json_decref(j);
    }
    cr_expect_eq(h_metric(&s, H_STORE, "kiln_store_durable_resyncs_total"), 1,
                 "the store should have re-created its durable once");
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    for (int i = 0; i < N; i++) {
        h_expect_job(&s, H_TOKEN_BOB, ids[i], "completed", 1, 30000, "job the store's durable passed over");
        h_expect_done_once(&n, ids[i], "completed", 10000);
    }
    /* The bridge durable that held the messages during the swap is gone. */
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    cr_expect_neq(js_GetConsumerInfo(&ci, n.js, "KILN_JOBS", "kiln-store-resync", NULL, &jerr), NATS_OK,
                  "the bridge durable kiln-store-resync was left behind");
    jsConsumerInfo_Destroy(ci);
    h_nats_free(&n);
    h_stop(&s);
}

/* Publishes bob's job id with a priority; its stream sequence into *seq (may be NULL). */
static int stall_publish(jsCtx *js, const char *subject, const char *id, Kiln__V1__Priority prio,
                         uint64_t *seq)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    r.id = (char *)id;
    r.user_id = (char *)"bob";
    r.prompt = (char *)"gone gull";
    r.priority = prio;
    return h_publish_request(js, subject, &r, 0, seq);
}

/* Copies the file at from to to; 0 on success. */
static int stall_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (in == NULL) return -1;
    FILE *out = fopen(to, "wb");
    int rc = out == NULL ? -1 : 0;
    char buf[8192];
    size_t n;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    if (ferror(in)) rc = -1;
    fclose(in);
    if (out != NULL && fclose(out) != 0) rc = -1;
    return rc;
}

typedef struct {
    jsCtx *js;
    const uint64_t *seqs;
    int n;
} stall_gone_arg;

/* None of the sequences is in KILN_JOBS any more. */
static int stall_all_gone(void *arg)
{
    stall_gone_arg *a = arg;
    for (int i = 0; i < a->n; i++) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        natsStatus st = js_GetMsg(&m, a->js, "KILN_JOBS", a->seqs[i], NULL, &jerr);
        natsMsg_Destroy(m);
        if (st == NATS_OK || (st != NATS_NOT_FOUND && jerr != JSNoMessageFoundErr)) return 0;
    }
    return 1;
}

enum { STALL_GONE_N = 6 };

/* Makes, on a started stack with no consumer, the state run 2615 left:
 * kiln-worker-high counts STALL_GONE_N messages ack-pending (bob's high
 * jobs ids[i]) that are gone from the stream, above a low job
 * (*anchor_seq) that stays in it. A clean stop writes the durable's state
 * with the deliveries ack-pending; the deliveries are then acked (the
 * store's durable acked them too, so the messages go), and the saved state
 * is put back, as a crash that lost the durable's last writes leaves it.
 * Returns 0 when nats-server lost the anchor on the way (it can lose a
 * durable's ack-pending entries across a clean restart; then the state
 * would clear by itself), 1 when the state is made. */
static int stall_make_gone_state(h_stack *s, h_nats *n, char ids[][65], uint64_t *anchor_seq)
{
    /* The anchor holds the stream's first sequence below the high jobs, so
     * theirs become gaps inside the stream: 2.9.10 drops ack-pending entries
     * below the first sequence by itself. A durable of the test's own keeps
     * it unacked. */
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "gone-anchor-holder";
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = (int64_t)3600 * 1000000000;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    cr_assert_eq(js_AddConsumer(&ci, n->js, "KILN_JOBS", &cc, NULL, &jerr), NATS_OK, "js err %d", (int)jerr);
    jsConsumerInfo_Destroy(ci);
    cr_assert_eq(stall_publish(n->js, "jobs.generate.low", "gone-anchor", KILN__V1__PRIORITY__PRIORITY_LOW,
                               anchor_seq),
                 0);
    char replies[STALL_GONE_N][256];
    uint64_t seqs[STALL_GONE_N];
    for (int i = 0; i < STALL_GONE_N; i++) {
        snprintf(ids[i], sizeof ids[i], "gone-%d", i);
        cr_assert_eq(
            stall_publish(n->js, "jobs.generate.high", ids[i], KILN__V1__PRIORITY__PRIORITY_HIGH, NULL), 0);
    }
    /* The holder keeps the anchor and lets the high jobs go. */
    natsMsg_Destroy(h_take_delivery(n, "gone-anchor-holder"));
    for (int i = 0; i < STALL_GONE_N; i++) {
        natsMsg *m = h_take_delivery(n, "gone-anchor-holder");
        cr_assert_eq(natsConnection_PublishString(n->nc, natsMsg_GetReply(m), "+ACK"), NATS_OK);
        natsMsg_Destroy(m);
    }
    for (int i = 0; i < STALL_GONE_N; i++) {
        natsMsg *m = h_take_delivery(n, "kiln-worker-high");
        snprintf(replies[i], sizeof replies[i], "%s", natsMsg_GetReply(m));
        seqs[i] = 0;
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) seqs[i] = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
        natsMsg_Destroy(m);
        cr_assert_gt(seqs[i], 0, "no stream sequence on a delivery");
    }
    for (int i = 0; i < STALL_GONE_N; i++) {
        json_t *j = h_wait_job(s, H_TOKEN_BOB, ids[i], "pending", 10000);
        cr_assert(j != NULL, "the store never recorded %s", ids[i]);
        json_decref(j);
    }

    char state[1400], kept[1420];
    snprintf(state, sizeof state, "%s/jetstream/$G/streams/KILN_JOBS/obs/kiln-worker-high/o.dat", s->nats_dir);
    snprintf(kept, sizeof kept, "%s.kept", state);
    h_proc_term(s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert_eq(stall_copy_file(state, kept), 0, "no durable state at %s", state);
    cr_assert_eq(h_proc_start(s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(s), 0, "not ready after the NATS restart");
    stall_gone_arg anchor = {n->js, anchor_seq, 1};
    if (stall_all_gone(&anchor)) return 0;
    /* The test's connection reconnects on its own; acks sent before it did are lost, so send until gone. */
    stall_gone_arg g = {n->js, seqs, STALL_GONE_N};
    int gone = 0;
    for (int round = 0; round < 50 && !gone; round++) {
        for (int i = 0; i < STALL_GONE_N; i++) (void)natsConnection_PublishString(n->nc, replies[i], "+ACK");
        (void)natsConnection_FlushTimeout(n->nc, 1000);
        gone = h_wait_for(stall_all_gone, &g, 200, 20);
    }
    cr_assert(gone, "the acked high jobs' messages stayed in KILN_JOBS");

    h_proc_term(s, H_NATS);
    cr_assert_eq(stall_copy_file(kept, state), 0, "could not put the durable's state back");
    cr_assert_eq(h_proc_start(s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(s), 0, "not ready after the second NATS restart");
    if (stall_all_gone(&anchor)) return 0;
    cr_assert_eq(js_GetConsumerInfo(&ci, n->js, "KILN_JOBS", "kiln-worker-high", NULL, &jerr), NATS_OK);
    int64_t ack_pending = ci->NumAckPending;
    jsConsumerInfo_Destroy(ci);
    if (ack_pending != STALL_GONE_N) h_dump_durable(n->js, "kiln-worker-high");
    cr_assert_eq(ack_pending, STALL_GONE_N, "the test did not make the state it means to");
    return 1;
}

/* nats-server 2.9.10 can come back from a SIGKILL with a worker durable that
 * counts messages ack-pending which are gone from the stream (chaos run
 * 2615: kiln-worker-high, 15 such entries, "error looking up message for
 * consumer: deleted message" ~3 times a second). It tries to redeliver them
 * for good, and each try uses up a pull request, so the lane's other jobs
 * wait. The stall check must ack the gone sequences for the durable. */
Test(stall, ack_pending_entries_of_messages_gone_from_the_stream_are_cleared)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1,
                      .env = {"KILN_SWEEP_INTERVAL=2s", NULL},
                      .consumer_env = {"KILN_STALL_CHECK=500ms", NULL}};
    h_nats n;
    char ids[STALL_GONE_N][65];
    uint64_t anchor_seq = 0;
    int made = 0;
    /* nats-server loses the anchor in about 1 try of 4 under load: a fresh stack each try. */
    for (int attempt = 0; attempt < 6 && !made; attempt++) {
        h_start(&s, &o);
        h_nats_open(&s, &n);
        made = stall_make_gone_state(&s, &n, ids, &anchor_seq);
        if (!made) {
            fprintf(stderr, "stall: nats-server dropped the anchor on try %d; again on a fresh stack\n", attempt + 1);
            h_nats_free(&n);
            h_stop(&s);
        }
    }
    cr_assert(made, "nats-server dropped the anchor in every try");

    cr_assert_eq(
        stall_publish(n.js, "jobs.generate.high", "gone-after", KILN__V1__PRIORITY__PRIORITY_HIGH, NULL), 0);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_BOB, "gone-after", "completed", 1, 30000, "a high job after the restart");
    int idle = h_wait_worker_idle(n.js, "kiln-worker-high", 20000);
    if (!idle) h_dump_durable(n.js, "kiln-worker-high");
    cr_assert(idle, "kiln-worker-high still counts gone messages ack-pending");
    stall_gone_arg anchor = {n.js, &anchor_seq, 1};
    cr_assert_not(stall_all_gone(&anchor), "the anchor left the stream: the state may have cleared by itself");
    /* (The durable may be clear before the round that acked ends and logs.) */
    cr_expect(h_wait_log(&s, H_CONSUMER, "ack-pending that are gone from the stream", 5000),
              "the stall check did not say what it acked");
    cr_expect_geq(h_metric(&s, H_CONSUMER, "kiln_consumer_stalled_gone_acked_total"), STALL_GONE_N);
    /* The high jobs acked unrun are pending with their messages gone: the
     * store's sweep publishes them again, and each runs once. */
    for (int i = 0; i < STALL_GONE_N; i++)
        h_expect_job(&s, H_TOKEN_BOB, ids[i], "completed", 1, 30000, "a job whose message was acked unrun");
    h_nats_free(&n);
    h_stop(&s);
}
