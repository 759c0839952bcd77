/* test_consumer.c - the consumer process: bounded concurrency, SIGKILL mid-job
 * (redelivered, completed exactly once), SIGTERM (drains what is in flight,
 * hands back the rest, loses nothing). Provider failures are in test_retry.c. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "pb.h"

TestSuite(consumer, .fini = h_fini, .timeout = 120);

typedef struct {
    h_stack *s;
    int max_processing;
    int done;
    int samples;
} conc_arg;

/* Samples the number of processing jobs; true once all 6 are completed. */
static int conc_sample(void *arg)
{
    conc_arg *a = arg;
    json_t *l = h_list(a->s, H_TOKEN_ALICE, "?limit=50");
    if (l == NULL) return 0;
    json_t *jobs = json_object_get(l, "jobs");
    int processing = 0, completed = 0;
    for (size_t i = 0; i < json_array_size(jobs); i++) {
        const char *st = h_jstr(json_array_get(jobs, i), "status");
        if (st != NULL && strcmp(st, "processing") == 0) processing++;
        if (st != NULL && strcmp(st, "completed") == 0) completed++;
    }
    json_decref(l);
    if (processing > a->max_processing) a->max_processing = processing;
    a->samples++;
    a->done = completed;
    return completed == 6;
}

Test(consumer, bounded_concurrency)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=2", NULL}};
    h_start(&s, &o);
    char ids[6][65];
    int64_t t0 = h_now_ms();
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=1000 concurrency fox %d\"}", 6, ids);
    conc_arg a = {&s, 0, 0, 0};
    cr_assert(h_wait_for(conc_sample, &a, 40000, 50), "only %d of 6 jobs completed", a.done);
    int64_t took = h_now_ms() - t0;
    cr_expect(a.max_processing <= 2, "saw %d jobs processing at once with KILN_CONCURRENCY=2", a.max_processing);
    cr_expect(a.max_processing >= 1, "never saw a job processing (%d samples)", a.samples);
    /* 6 jobs of 1 s, 2 at a time: at least 3 s. */
    cr_expect(took >= 2900, "6 x 1 s jobs with concurrency 2 finished in %lld ms", (long long)took);
    h_stop(&s);
}

static natsSubscription *consumer_watch_acks(h_nats *n)
{
    natsSubscription *acks = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&acks, n->nc, "$JS.ACK.KILN_JOBS.kiln-worker-normal.>"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(n->nc), NATS_OK);
    return acks;
}

/* How many negative acks arrived on acks (a $JS.ACK subscription) so far. */
static int consumer_naks_seen(natsSubscription *acks)
{
    int naks = 0;
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, acks, 200) == NATS_OK) {
        if (natsMsg_GetDataLength(m) >= 4 && memcmp(natsMsg_GetData(m), "-NAK", 4) == 0) naks++;
        natsMsg_Destroy(m);
    }
    return naks;
}

/* Submits prompt, waits until its call runs (recorded processing), then
 * SIGKILLs the consumer and starts it again. */
static void consumer_kill_mid_call(h_stack *s, const char *prompt, char id[65])
{
    cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, prompt, id), 202);
    json_t *j = h_wait_job(s, H_TOKEN_ALICE, id, "processing", 20000);
    cr_assert_str_eq(h_jstr(j, "status"), "processing", "job never started processing");
    json_decref(j);
    cr_assert_eq(h_proc_kill9(s, H_CONSUMER), 0);
    cr_assert_eq(h_proc_start(s, H_CONSUMER), 0);
}

Test(consumer, kill9_mid_job_completes_exactly_once)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    natsSubscription *acks = consumer_watch_acks(&n);

    char id[65];
    consumer_kill_mid_call(&s, "!sleep=3000 slow fox", id);

    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 40000);
    char *d = h_job_dump(j);
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "job after consumer death: %s", d);
    cr_expect(h_jint(j, "attempts") >= 1, "%s", d);
    cr_expect_eq(json_array_size(json_object_get(j, "images")), 1, "%s", d);
    free(d);
    json_decref(j);
    /* Its record said processing and no consumer answered for the call: the
     * copy was held back once (the dead one might have been reconnecting),
     * then run. It waited in the consumer, not nak'd with a delay
     * (nats-server 2.9.10 can drop such a message when it stops). */
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_redeliveries_held_total"), 1);
    cr_expect_eq(consumer_naks_seen(acks), 0, "the held copy was nak'd");

    /* Exactly one terminal state: one jobs.done copy (de-duplicated stream),
     * and the state never changes afterwards. */
    h_expect_done_once(&n, id, "completed", 10000);
    /* Observation window: a redelivery of the old attempt must not change it. */
    char why[2048];
    cr_expect(h_job_stays(&s, H_TOKEN_ALICE, id, "completed", 4000, why, sizeof why),
              "terminal state changed after completion: %s", why);
    h_expect_done_once(&n, id, "completed", 1000);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* A consumer stopping while it holds such a copy leaves it unacked: a nak
 * would let another consumer start it at once, while the consumer it waits
 * for may still be reconnecting. It comes back after AckWait and runs once. */
Test(consumer, a_copy_held_at_a_stop_is_left_unacked_and_runs_once)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    natsSubscription *acks = consumer_watch_acks(&n);

    char id[65];
    consumer_kill_mid_call(&s, "!sleep=3000 held heron", id);
    /* The dead consumer's copy comes back after AckWait (the harness's 2 s)
     * and is held for 1 s: the stop comes within that second. */
    cr_assert(h_wait_log(&s, H_CONSUMER, "waiting for its consumer", 15000), "the copy was not held");
    cr_expect_eq(h_proc_term(&s, H_CONSUMER), 0, "consumer: bad exit after SIGTERM while holding");
    cr_expect(h_log_contains(&s, H_CONSUMER, "stopping while held for another consumer"),
              "the held copy was not left unacked at the stop");

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", -1, 30000, "held job after the restart");
    h_expect_done_once(&n, id, "completed", 10000);
    cr_expect_eq(consumer_naks_seen(acks), 0, "the held copy was nak'd");
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

Test(consumer, sigterm_drains_in_flight_and_hands_back_the_rest)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=2", "KILN_DRAIN_TIMEOUT=10s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);

    enum { NFLY = 2, NQ = 3 };
    char fly[NFLY][65], q[NQ][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=1500 draining shrew %d\"}", NFLY, fly);
    for (int i = 0; i < NFLY; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, fly[i], "processing", 15000);
        cr_assert_str_eq(h_jstr(j, "status"), "processing", "in-flight job %d never started", i);
        json_decref(j);
    }
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"queued shrew %d\"}", NQ, q);

    int64_t t0 = h_now_ms();
    int rc = h_proc_term(&s, H_CONSUMER);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(rc, 0, "consumer: exit code %d after SIGTERM mid-job", rc);
    cr_expect(took < 10000, "consumer: took %lld ms to drain (drain timeout 10 s)", (long long)took);

    /* The in-flight jobs finished during the drain. */
    for (int i = 0; i < NFLY; i++)
        h_expect_job(&s, H_TOKEN_ALICE, fly[i], "completed", 1, 5000, "in-flight job finished by the drain");
    /* The queued ones were not taken (or were handed back) and wait. */
    for (int i = 0; i < NQ; i++) {
        json_t *j = h_get_job(&s, H_TOKEN_ALICE, q[i], NULL);
        char *d = h_job_dump(j);
        cr_expect(!h_state_terminal(h_jstr(j, "status")), "queued job %d ended with no consumer: %s", i, d);
        free(d);
        json_decref(j);
    }

    /* A new consumer finishes the rest; nothing is lost or run twice. */
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    for (int i = 0; i < NQ; i++) {
        h_expect_job(&s, H_TOKEN_ALICE, q[i], "completed", -1, 30000, "queued job after the restart");
        h_expect_done_once(&n, q[i], "completed", 10000);
    }
    for (int i = 0; i < NFLY; i++) {
        h_expect_job(&s, H_TOKEN_ALICE, fly[i], "completed", 1, 5000, "drained job after the restart");
        h_expect_done_once(&n, fly[i], "completed", 5000);
    }
    h_nats_free(&n);
    h_stop(&s);
}

/* Drain timeout with several transfer threads: every thread hands back the
 * calls it runs (nak, no transition), the process exits, and a new consumer
 * finishes each job exactly once. */
Test(consumer, drain_timeout_hands_back_from_every_transfer_thread)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=3", "KILN_TRANSFER_THREADS=3",
                                       "KILN_DRAIN_TIMEOUT=500ms", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);

    enum { NFLY = 3 };
    char fly[NFLY][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=6000 handed back vole %d\"}", NFLY, fly);
    for (int i = 0; i < NFLY; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, fly[i], "processing", 15000);
        cr_assert_str_eq(h_jstr(j, "status"), "processing", "in-flight job %d never started", i);
        json_decref(j);
    }

    int64_t t0 = h_now_ms();
    int rc = h_proc_term(&s, H_CONSUMER);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(rc, 0, "consumer: exit code %d after SIGTERM with the drain timing out", rc);
    cr_expect(took < 5000, "consumer: took %lld ms to hand back (drain timeout 500 ms)",
              (long long)took);
    for (int i = 0; i < NFLY; i++) {
        json_t *j = h_get_job(&s, H_TOKEN_ALICE, fly[i], NULL);
        char *d = h_job_dump(j);
        cr_expect(!h_state_terminal(h_jstr(j, "status")), "handed-back job %d ended: %s", i, d);
        free(d);
        json_decref(j);
    }

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    for (int i = 0; i < NFLY; i++) {
        h_expect_job(&s, H_TOKEN_ALICE, fly[i], "completed", -1, 40000, "handed-back job after the restart");
        h_expect_done_once(&n, fly[i], "completed", 10000);
    }
    h_nats_free(&n);
    h_stop(&s);
}

static int burst_idle(void *arg)
{
    h_stack *s = arg;
    return h_metric(s, H_CONSUMER, "kiln_consumer_in_flight") == 0 &&
           h_metric(s, H_CONSUMER, "kiln_consumer_jobs_completed_total") >= 600;
}

/* A burst far larger than the free slots: late fetch arrivals wait in the
 * consumer for a slot instead of going back to JetStream, so every job runs
 * exactly once and none is delivered twice. */
Test(consumer, burst_runs_each_job_once_without_redelivery)
{
    enum { N = 600 };
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=4", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char prefix[65], id[96];
    h_unique_id(prefix, "burst");
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "%.40s-%d", prefix, i);
        cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "burst fox"), 0,
                     "publish %d failed", i);
    }
    cr_assert(h_wait_for(burst_idle, &s, 90000, 100), "the burst did not finish: completed=%.0f",
              h_metric(&s, H_CONSUMER, "kiln_consumer_jobs_completed_total"));
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_jobs_completed_total"), N,
                 "a job ran more than once");
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_redeliveries_total"), 0,
                 "jobs went back to JetStream and were delivered again");
    h_nats_free(&n);
    h_stop(&s);
}

/* Calls that end together end in one transfer round: their results go to
 * the store as one TransitionBatch (one message instead of one each), and
 * every job still completes once and is announced once. */
Test(consumer, results_of_one_round_go_out_in_one_batch)
{
    enum { NJOBS = 48 };
    h_stack s;
    /* All calls at once (the default concurrency, 16, would run waves). */
    h_stack_opts o = {.no_consumer = 1, .consumer_env = {"KILN_CONCURRENCY=64"}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char ids[NJOBS][65];
    /* Queued while no consumer runs, then fetched together: every call
     * is still waiting in the provider when the last one arrives. */
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=3000 batched otter %d\"}", NJOBS, ids);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    /* Ends made to coincide, whatever the machine's load: the consumer is
     * frozen while every call waits in the provider, and thawed only once
     * every answer went out, so its first round finds them all done. A
     * free-running consumer on a loaded machine may take each answer in a
     * round of its own. */
    int waiting = h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", NJOBS, 30000);
    cr_assert_eq(kill(s.procs[H_CONSUMER].pid, SIGSTOP), 0);
    int answered = waiting && h_wait_metric_above(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total",
                                                  NJOBS - 1, 30000) &&
                   h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", 0, 10000);
    cr_assert_eq(kill(s.procs[H_CONSUMER].pid, SIGCONT), 0);
    cr_assert(waiting, "the %d calls never all reached the provider", NJOBS);
    cr_assert(answered, "the provider did not answer the %d calls", NJOBS);

    for (int i = 0; i < NJOBS; i++) {
        h_expect_job(&s, H_TOKEN_ALICE, ids[i], "completed", 1, 30000, "batched job");
        h_expect_done_once(&n, ids[i], "completed", 10000);
    }
    double batches = h_metric(&s, H_CONSUMER, "kiln_consumer_transition_batches_total");
    double batched = h_metric(&s, H_CONSUMER, "kiln_consumer_transitions_batched_total");
    cr_expect_geq(batches, 1, "no TransitionBatch was published (metric %g; -1: unreadable)", batches);
    cr_expect_geq(batched, 2 * batches, "a batch holds at least two transitions");
    cr_expect_leq(batched, NJOBS, "more transitions batched than jobs ran");
    h_nats_free(&n);
    h_stop(&s);
}

/* SIGTERM while NATS is down, with a call that ends during the drain: the
 * consumer can neither confirm the result nor hand the job back. It waits
 * for NATS up to KILN_DRAIN_TIMEOUT and at most 5 s more, exits 0, and the
 * job completes, announced once, when NATS and a consumer are back. */
Test(consumer, sigterm_with_nats_down_stops_within_the_drain_timeout, .timeout = 180)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_DRAIN_TIMEOUT=2s", NULL}};
    h_start(&s, &o);

    char id[65];
    /* timeout_s 2: should nats-server 2.9.10 lose the job's ack-pending
     * entry at its restart (it sometimes does), the job is re-driven once it
     * has been processing for longer than an attempt can run (2 s + 60 s). */
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=1000 stranded shrew\",\"timeout_s\":2}", id),
                 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "processing", 15000);
    cr_assert_str_eq(h_jstr(j, "status"), "processing", "job never started");
    json_decref(j);
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */

    int64_t t0 = h_now_ms();
    int rc = h_proc_term(&s, H_CONSUMER);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(rc, 0, "consumer: exit code %d after SIGTERM with NATS down", rc);
    cr_expect(took <= 2000 + 5000 + 500, "consumer: took %lld ms to stop with NATS down (drain timeout 2 s)",
              (long long)took);

    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after NATS came back");
    h_nats n;
    h_nats_open(&s, &n);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", -1, 100000, "stranded job");
    h_expect_done_once(&n, id, "completed", 10000);
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    h_stack *s;
    const char *id;
    int want_calls;
} cons_poison_arg;

/* Call number want_calls reached the provider, or the job ended. */
static int cons_poison_next(void *arg)
{
    cons_poison_arg *a = arg;
    if (h_log_count(a->s, H_DEVPROVIDER, "kind=hang") >= a->want_calls) return 1;
    json_t *j = h_get_job(a->s, H_TOKEN_ALICE, a->id, NULL);
    int ended = j != NULL && h_state_terminal(h_jstr(j, "status"));
    json_decref(j);
    return ended;
}

/* A job that kills its consumer: SIGKILL as soon as its call reaches the
 * provider (well within the 250 ms before PROCESSING is normally sent),
 * again at every redelivery. Each redelivery records its attempt before the
 * call, so with max_attempts 2 the job ends failed (attempts_exhausted)
 * after at most max_attempts + 1 calls instead of looping. */
Test(consumer, a_job_that_kills_its_consumer_runs_out_of_attempts)
{
    h_stack s;
    h_start(&s, NULL);
    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"!hang poison shrew\",\"max_attempts\":2}", id), 202);

    int calls = 0;
    for (;;) {
        cons_poison_arg a = {&s, id, calls + 1};
        cr_assert(h_wait_for(cons_poison_next, &a, 20000, 5), "after %d calls: neither another call nor an end",
                  calls);
        if (h_log_count(&s, H_DEVPROVIDER, "kind=hang") <= calls) break; /* it ended */
        calls++;
        cr_assert_eq(h_proc_kill9(&s, H_CONSUMER), 0);
        cr_assert_leq(calls, 6, "the job reached the provider %d times with max_attempts 2", calls);
        cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    }
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    char *d = h_job_dump(j);
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "after %d killed calls: %s", calls, d);
    cr_expect_str_eq(h_jstr(json_object_get(j, "error"), "code"), "attempts_exhausted", "%s", d);
    cr_expect_leq(calls, 3, "%d calls with max_attempts 2: %s", calls, d);
    free(d);
    json_decref(j);
    h_stop(&s);
}

/* Subscribes to the acks consumers send for the normal lane's messages
 * ($JS.ACK...: +ACK, -NAK, +WPI); the caller destroys the subscription. */
/* The first in-progress ack seen on acks (a $JS.ACK subscription) within
 * deadline_ms, or NULL; other acks are dropped. The caller destroys it. */
static natsMsg *consumer_wait_wpi(natsSubscription *acks, int64_t deadline_ms)
{
    int64_t until = h_now_ms() + deadline_ms;
    while (h_now_ms() < until) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, acks, 500) != NATS_OK) continue;
        if (natsMsg_GetDataLength(m) == 4 && memcmp(natsMsg_GetData(m), "+WPI", 4) == 0) return m;
        natsMsg_Destroy(m);
    }
    return NULL;
}

/* The job ended completed in `attempts` attempts (what names it), with no
 * provider call beside another, one jobs.done copy, and its message settled. */
static void consumer_expect_one_call(h_stack *s, h_nats *n, const char *id, int attempts,
                                     const char *what)
{
    h_expect_job(s, H_TOKEN_ALICE, id, "completed", attempts, 30000, what);
    cr_expect_eq(h_metric(s, H_DEVPROVIDER, "kiln_devprovider_requests_overlapping_total"), 0,
                 "%s: a second call began while another ran", what);
    h_expect_done_once(n, id, "completed", 10000);
    cr_expect(h_wait_worker_idle(n->js, "kiln-worker-normal", 10000), "%s: its message stayed unacked",
              what);
}

/* Takes the next delivery of the normal lane's durable as a consumer would
 * and hands it back untried (-NAK): one more delivery, no call. */
static void consumer_hand_back_once(h_nats *n)
{
    natsMsg *m = h_take_delivery(n, "kiln-worker-normal");
    cr_assert_eq(natsConnection_PublishString(n->nc, natsMsg_GetReply(m), "-NAK"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(n->nc), NATS_OK);
    natsMsg_Destroy(m);
}

/* Starts a stack without a consumer, submits body (its id in id) and hands
 * the job's delivery back hand_backs times untried. */
static void consumer_queue_handed_back(h_stack *s, h_nats *n, h_stack_opts *o, const char *body,
                                       int hand_backs, char id[65])
{
    o->no_consumer = 1;
    h_start(s, o);
    h_nats_open(s, n);
    cr_assert_eq(h_submit(s, H_TOKEN_ALICE, body, id), 202);
    h_expect_job(s, H_TOKEN_ALICE, id, "pending", 0, 10000, "the submitted job");
    for (int i = 0; i < hand_backs; i++) consumer_hand_back_once(n);
}

/* Freezes the store (SIGSTOP) and starts the consumer; true once the
 * consumer keeps the redelivered copy until the store answers. The caller
 * thaws the store. */
static int consumer_start_with_store_frozen(h_stack *s)
{
    cr_assert_eq(kill(s->procs[H_STORE].pid, SIGSTOP), 0);
    cr_assert_eq(h_proc_start(s, H_CONSUMER), 0);
    return h_wait_log(s, H_CONSUMER, "redelivered job waits for the store's word", 15000);
}

static int consumer_store_failed_twice(void *arg)
{
    return h_log_count(arg, H_CONSUMER, "store check failed") >= 2;
}

/* A redelivery's attempt number is the store's record plus one, never its
 * delivery count: hand-backs without a call raise that count. The job
 * (max_attempts 2) is handed back twice untried, so it comes to the
 * consumer with delivery count 3 while the store is frozen. The consumer
 * must keep it, unacked, until the store answers, then run its first
 * attempt; taking the count for the attempt, it would fail the job with
 * attempts_exhausted before any call. AckWait is 30 s here, so the copy
 * is young enough (due under AckWait ago) not to be held for a peer. */
Test(consumer, a_redelivery_waits_for_the_store_before_it_takes_an_attempt)
{
    h_stack s;
    h_nats n;
    h_stack_opts o = {.env = {"KILN_ACK_WAIT=30s"}};
    char id[65];
    consumer_queue_handed_back(&s, &n, &o, "{\"prompt\":\"handed back hare\",\"max_attempts\":2}", 2, id);
    natsSubscription *acks = consumer_watch_acks(&n);

    int waited = consumer_start_with_store_frozen(&s);
    /* Kept past a second failed store check (1 s each), then the store thaws. */
    int checked = waited && h_wait_for(consumer_store_failed_twice, &s, 5000, 50);
    double calls = h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total");
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    cr_expect(waited, "the consumer did not wait for the store's word");
    cr_expect(checked, "the consumer did not ask the store again");
    cr_expect_eq(calls, 0, "the provider was called (%g) before the store answered", calls);

    consumer_expect_one_call(&s, &n, id, 1, "the job handed back twice");
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_store_waits_total"), 1);
    cr_expect_eq(consumer_naks_seen(acks), 0, "the copy waiting for the store was nak'd");
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* Runs `kiln <verb> normal` and cr_asserts it succeeded. */
static void consumer_kiln_lane(h_stack *s, const char *verb)
{
    char *out = NULL;
    char *argv[] = {"kiln", (char *)verb, "normal", NULL};
    int rc = h_run_cli(s, argv, &out, 30000);
    cr_assert_eq(rc, 0, "kiln %s normal exited %d: %s", verb, rc, out);
    free(out);
}

/* A copy held in the consumer (here: waiting for the store's word) whose
 * lane is paused meanwhile waits with its lane: it is left unacked, makes
 * no call while the lane is paused, and runs once after the resume. */
Test(consumer, a_copy_held_when_its_lane_is_paused_waits_with_the_lane)
{
    h_stack s;
    h_nats n;
    h_stack_opts o = {0};
    char id[65];
    consumer_queue_handed_back(&s, &n, &o, "{\"prompt\":\"held heron in a paused lane\"}", 1, id);

    int held = consumer_start_with_store_frozen(&s);
    if (held) consumer_kiln_lane(&s, "pause");
    int paused = held && h_wait_metric_eq(&s, H_CONSUMER, "kiln_consumer_lane_paused{lane=\"normal\"}", 1, 10000);
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    cr_assert(held, "the consumer did not hold the copy");
    cr_assert(paused, "the consumer never saw the pause");

    cr_assert(h_wait_log(&s, H_CONSUMER, "its lane was paused while it was held", 10000),
              "the held copy was not given up when its lane was paused");
    /* Observation window: longer than AckWait (2 s), when the copy is
     * available again, in a lane nobody fetches. */
    char why[2048];
    cr_expect(h_job_stays(&s, H_TOKEN_ALICE, id, "pending", 3000, why, sizeof why),
              "the held job left pending while its lane was paused: %s", why);
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 0,
                 "the provider was called while the lane was paused");

    consumer_kiln_lane(&s, "resume");
    consumer_expect_one_call(&s, &n, id, 1, "the job held as its lane was paused");
    h_nats_free(&n);
    h_stop(&s);
}

/* A redelivery of a message whose call still runs here (its in-progress acks
 * did not reach the server in time, e.g. across a NATS outage) must not start
 * a second call. The test makes one at will: it reads the running job's
 * +WPI on its $JS.ACK subject and sends -NAK there itself, and nats-server
 * redelivers the message to the consumer at once. */
Test(consumer, a_redelivery_while_the_call_runs_starts_no_second_call)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    natsSubscription *acks = consumer_watch_acks(&n);

    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=5000 patient heron", id), 202);
    /* The call's first in-progress ack (every AckWait/3: the harness's 2 s). */
    natsMsg *wpi = consumer_wait_wpi(acks, 10000);
    cr_assert_not_null(wpi, "no in-progress ack while the call ran");
    double redelivered0 = h_metric(&s, H_CONSUMER, "kiln_consumer_redeliveries_total");
    cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetSubject(wpi), "-NAK"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);
    cr_assert(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_redeliveries_total", redelivered0, 5000),
              "the nak'd message was not redelivered while the call ran");

    cr_expect(h_log_contains(&s, H_CONSUMER, "left to the running attempt"));
    /* The running attempt's ack settles the message: it comes back no more. */
    consumer_expect_one_call(&s, &n, id, 1, "the redelivered job");
    natsMsg_Destroy(wpi);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* Pull requests waiting on a durable (a consumer with free slots keeps one). */
static int consumer_pulls_waiting(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    if (js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, NULL) != NATS_OK) return -1;
    int n = (int)ci->NumWaiting;
    jsConsumerInfo_Destroy(ci);
    return n;
}

/* Starts one more consumer logging to <log_dir>/<name>.log (its path in
 * log_path) and waits until it is ready; returns its pid. */
static pid_t consumer_spawn_ready(h_stack *s, const char *const *env, const char *name,
                                  char log_path[PATH_MAX])
{
    pid_t pid = h_spawn_another(s, H_CONSUMER, env, name);
    cr_assert(pid > 0, "consumer %s did not start", name);
    snprintf(log_path, PATH_MAX, "%s/%s.log", s->log_dir, name);
    cr_assert(h_wait_file_log(log_path, "consumer ready", 15000), "consumer %s was not ready", name);
    return pid;
}

/* Waits until a consumer with free slots keeps a pull request on the normal
 * lane, dropping what arrives on acks meanwhile. */
static void consumer_wait_puller(h_nats *n, natsSubscription *acks)
{
    int64_t until = h_now_ms() + 10000;
    int waiting = 0;
    /* Seen once is enough: each pull request lives 50 ms, so a second look
     * can fall between two. */
    while ((waiting = consumer_pulls_waiting(n->js, "kiln-worker-normal")) < 1 && h_now_ms() < until) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, acks, 50) == NATS_OK) natsMsg_Destroy(m);
    }
    cr_assert(waiting >= 1, "no consumer pulls");
}

/* The stream sequence of a $JS.ACK.<stream>.<durable>.<delivered>.<sseq>... subject. */
/* Field n (0-based, dot-separated) of a $JS.ACK subject as a number:
 * $JS.ACK.<stream>.<durable>.<delivered>.<stream seq>.<consumer seq>... */
static uint64_t consumer_ack_field(const char *subject, int n)
{
    const char *p = subject;
    for (int dots = 0; dots < n && p != NULL; dots++) {
        p = strchr(p, '.');
        if (p != NULL) p++;
    }
    return p != NULL ? strtoull(p, NULL, 10) : 0;
}
static uint64_t consumer_ack_seq(const char *subject) { return consumer_ack_field(subject, 5); }
static natsMsg *consumer_wait_wpi_besides(natsSubscription *acks, uint64_t seq)
{
    int64_t until = h_now_ms() + 10000;
    while (h_now_ms() < until) {
        natsMsg *m = consumer_wait_wpi(acks, until - h_now_ms());
        if (m == NULL) break;
        if (consumer_ack_seq(natsMsg_GetSubject(m)) != seq) return m;
        natsMsg_Destroy(m);
    }
    return NULL;
}

/* Submits prompt, waits until its job is recorded processing (the store
 * knows a call began) and an in-progress ack names its message (not the one
 * of skip_seq; 0: any); returns that ack, for the caller to destroy. */
static natsMsg *consumer_start_call(h_stack *s, natsSubscription *acks, const char *prompt,
                                    uint64_t skip_seq, char id[65])
{
    cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, prompt, id), 202);
    json_t *job = h_wait_job(s, H_TOKEN_ALICE, id, "processing", 10000);
    cr_assert_not_null(job, "job %s (%s) was not recorded processing", id, prompt);
    json_decref(job);
    natsMsg *wpi = consumer_wait_wpi_besides(acks, skip_seq);
    cr_assert_not_null(wpi, "no in-progress ack while the call of %s ran", prompt);
    return wpi;
}

/* The usual start of the tests below: a stack whose consumer has one slot
 * (while its call runs it pulls nothing), the test's NATS connection, a
 * watch on the normal lane's acks, and a call of prompt started; returns
 * the call's first in-progress ack (the caller destroys it). */
static natsMsg *consumer_one_slot_call(h_stack *s, h_nats *n, natsSubscription **acks,
                                       const char *prompt, char id[65])
{
    const h_stack_opts opts = {.consumer_env = {"KILN_CONCURRENCY=1", NULL}};
    h_start(s, &opts);
    h_nats_open(s, n);
    *acks = consumer_watch_acks(n);
    return consumer_start_call(s, *acks, prompt, 0, id);
}

/* A second consumer (env), pulling beside the stack's consumer whose call
 * still runs; returns its pid, its log in log_path. */
static pid_t consumer_second_beside_call(h_stack *s, h_nats *n, natsSubscription *acks,
                                         const char *const *env, char log_path[PATH_MAX])
{
    pid_t pid = consumer_spawn_ready(s, env, "consumer2", log_path);
    consumer_wait_puller(n, acks);
    cr_assert_eq(h_metric(s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting"), 1,
                 "the call already ended");
    return pid;
}

/* A stand-in for another consumer on kiln.consumer.running: it claims,
 * once, every asked stream sequence but skip_seq. */
typedef struct {
    uint64_t skip_seq;
    atomic_uint_least64_t claimed_seq; /* 0 until it answered */
    atomic_int silent_queries;         /* queries left unanswered first (one still reconnecting) */
} consumer_claimer;

static void consumer_claim_on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    consumer_claimer *c = closure;
    if (atomic_fetch_sub(&c->silent_queries, 1) > 0) {
        natsMsg_Destroy(msg);
        return;
    }
    Kiln__V1__RunningQuery *q =
        kiln__v1__running_query__unpack(NULL, (size_t)natsMsg_GetDataLength(msg), (const uint8_t *)natsMsg_GetData(msg));
    uint64_t seqs[8];
    size_t k = 0;
    for (size_t i = 0; q != NULL && i < q->n_stream_seqs && k < 8; i++)
        if (q->stream_seqs[i] != c->skip_seq) seqs[k++] = q->stream_seqs[i];
    if (k > 0 && natsMsg_GetReply(msg) != NULL && atomic_load(&c->claimed_seq) == 0) {
        Kiln__V1__RunningReply rep = KILN__V1__RUNNING_REPLY__INIT;
        rep.consumer = (char *)"test-claimer";
        rep.n_stream_seqs = k;
        rep.stream_seqs = seqs;
        uint8_t *buf = NULL;
        size_t len = 0;
        if (kiln_pb_pack(&rep.base, &buf, &len) == KILN_OK &&
            natsConnection_Publish(nc, natsMsg_GetReply(msg), buf, (int)len) == NATS_OK)
            atomic_store(&c->claimed_seq, seqs[0]);
        free(buf);
    }
    if (q != NULL) kiln__v1__running_query__free_unpacked(q, NULL);
    natsMsg_Destroy(msg);
}

/* nats-server 2.9 can hand the newest new message out a second time, with
 * delivery count 1, right after a failed redelivery, while its first copy
 * runs in another consumer with nothing recorded yet. So a first delivery
 * that comes with or soon after a redelivery is asked about, and left to a
 * consumer that claims it. The test makes the redelivery (it takes job A's
 * delivery and hands it back), queues job B behind it, and claims B's
 * sequence when asked, once: the consumer must leave B's copy, and B runs
 * once when it comes back after AckWait. */
Test(consumer, a_first_delivery_after_a_redelivery_is_left_to_a_consumer_that_holds_it)
{
    h_stack s;
    h_nats n;
    h_stack_opts o = {0};
    char a[65], b[65];
    consumer_queue_handed_back(&s, &n, &o, "{\"prompt\":\"burst opener ant\"}", 0, a);
    natsMsg *m = h_take_delivery(&n, "kiln-worker-normal");
    consumer_claimer claimer = {.skip_seq = consumer_ack_field(natsMsg_GetReply(m), 5)};
    cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetReply(m), "-NAK"), NATS_OK);
    natsMsg_Destroy(m);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "claimed bee", b), 202);
    natsSubscription *claims = NULL;
    cr_assert_eq(natsConnection_Subscribe(&claims, n.nc, "kiln.consumer.running", consumer_claim_on_query, &claimer),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_ALICE, a, "completed", 1, 30000, "the redelivered job");
    h_expect_job(&s, H_TOKEN_ALICE, b, "completed", 1, 30000, "the claimed job");
    cr_expect_neq(atomic_load(&claimer.claimed_seq), 0, "the consumer never asked about the first delivery");
    char left[128];
    snprintf(left, sizeof left, "left to it job=%s", b);
    cr_expect(h_log_contains(&s, H_CONSUMER, left), "the claimed copy was not left to its claimer");
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 2,
                 "one call per job");
    natsSubscription_Destroy(claims);
    h_nats_free(&n);
    h_stop(&s);
}

/* Chaos run 3110: nats-server lost a job's message while a consumer held a
 * copy of it back (waiting for the store's word), the store's sweep
 * re-drove the request, and the re-drive ran beside the held copy once that
 * was taken up: two calls. So a re-drive's first delivery is asked about
 * its original message. The test publishes a job, deletes its message,
 * lets the sweep re-drive it, and claims the original's sequence when asked,
 * once, as the consumer holding it would: the consumer must leave the
 * re-drive to it, and the job runs once when the copy comes back after
 * AckWait. */
Test(consumer, a_redrive_of_a_message_another_consumer_holds_is_left_to_it)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1, .env = {"KILN_SWEEP_INTERVAL=2s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    h_unique_id(id, "held-heron");
    uint64_t seq = 0;
    json_decref(h_publish_recorded(&s, n.js, "jobs.generate", id, "alice", H_TOKEN_ALICE, "held heron", &seq));
    consumer_claimer claimer = {.skip_seq = 0};
    natsSubscription *claims = NULL;
    cr_assert_eq(natsConnection_Subscribe(&claims, n.nc, "kiln.consumer.running", consumer_claim_on_query, &claimer),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);
    cr_assert_eq(js_DeleteMsg(n.js, "KILN_JOBS", seq, NULL, NULL), NATS_OK); /* lost */
    char redriven[128];
    snprintf(redriven, sizeof redriven, "lost job request re-driven job=%s", id);
    cr_assert(h_wait_log(&s, H_STORE, redriven, 20000), "the sweep did not re-drive the lost request");

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "the re-driven job");
    cr_expect_eq(atomic_load(&claimer.claimed_seq), seq,
                 "the consumer did not ask about the re-drive's original message (seq %llu)",
                 (unsigned long long)seq);
    char left[128];
    snprintf(left, sizeof left, "left to it job=%s", id);
    cr_expect(h_log_contains(&s, H_CONSUMER, left), "the re-drive was not left to the holder of the original");
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 1, "one call");
    natsSubscription_Destroy(claims);
    h_nats_free(&n);
    h_stop(&s);
}

/* A nats-server restart can forget deliveries it made: in chaos runs with
 * a SIGKILL, a job whose call was running in one consumer came to the other
 * right after the restart with delivery count 1, and nothing asked (or the
 * runner reconnected 25 ms after the ask). So for a few seconds after a
 * reconnect, first deliveries are asked about too, and one nobody claims is
 * held once and asked about again. The test restarts nats-server, queues a
 * job, ignores the first ask and claims the job's sequence at the second:
 * the consumer must hold the copy, then leave it, and the job runs once
 * when it comes back after AckWait. */
Test(consumer, a_first_delivery_right_after_a_nats_restart_is_left_to_a_consumer_that_holds_it)
{
    h_stack s;
    h_stack_opts o = {0};
    h_start(&s, &o);
    (void)h_proc_term(&s, H_NATS); /* nats-server's own exit code on SIGTERM is not 0 */
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert(h_wait_log(&s, H_CONSUMER, "nats reconnected", 15000), "the consumer did not reconnect");
    h_nats n;
    h_nats_open(&s, &n);
    consumer_claimer claimer = {.skip_seq = 0, .silent_queries = 1};
    natsSubscription *claims = NULL;
    cr_assert_eq(natsConnection_Subscribe(&claims, n.nc, "kiln.consumer.running", consumer_claim_on_query, &claimer),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);

    const char *id = "after-restart-wasp";
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "claimed wasp"), 0);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "the claimed job");
    cr_expect_neq(atomic_load(&claimer.claimed_seq), 0, "the consumer never asked about the first delivery twice");
    cr_expect(h_log_contains(&s, H_CONSUMER, "waiting for its consumer job=after-restart-wasp"),
              "the copy nobody claimed at first was not held");
    cr_expect(h_log_contains(&s, H_CONSUMER, "left to it job=after-restart-wasp"),
              "the claimed copy was not left to its claimer");
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 1, "one call");
    natsSubscription_Destroy(claims);
    h_nats_free(&n);
    h_stop(&s);
}

Test(consumer, a_redelivery_to_another_consumer_while_the_call_runs_starts_no_second_call)
{
    /* The first consumer has one slot: while its call runs it pulls nothing,
     * so the redelivery can only go to the second. */
    h_stack s;
    h_nats n;
    natsSubscription *acks = NULL;
    char id[65];
    /* Long enough to outlast a second (sanitizer-built) consumer's start. */
    natsMsg *wpi = consumer_one_slot_call(&s, &n, &acks, "!sleep=15000 patient crane", id);

    const char *const env2[] = {"KILN_METRICS_ADDR=", NULL};
    char log2[PATH_MAX];
    /* The call must still run for the -NAK below to mean anything. */
    pid_t second = consumer_second_beside_call(&s, &n, acks, env2, log2);

    /* nats-server gives the message up as if the first consumer's acks were
     * late. */
    cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetSubject(wpi), "-NAK"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);
    cr_assert(h_wait_file_log(log2, "left to it job=", 10000),
              "the second consumer did not leave the copy to the running call");

    cr_expect_eq(h_file_log_count(log2, "waiting for its consumer"), 0,
                 "the running consumer's answer did not come in time");
    cr_expect(h_log_contains(&s, H_CONSUMER, "told another consumer we hold the jobs it asked about"));
    consumer_expect_one_call(&s, &n, id, 1, "the redelivered job");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    natsMsg_Destroy(wpi);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* What the hold is for: the consumer running the call is alive but silent
 * (frozen here with SIGSTOP, as one cut off from NATS would be) when
 * nats-server gives its message to another after AckWait. Nobody answers the
 * first ask, so the other consumer holds the copy; the runner is thawed
 * during the hold, answers the second ask, and keeps the only call. */
Test(consumer, a_copy_held_for_a_silent_consumer_is_left_to_it_once_it_answers)
{
    h_stack s;
    h_nats n;
    natsSubscription *acks = NULL;
    char id[65];
    natsMsg *wpi = consumer_one_slot_call(&s, &n, &acks, "!sleep=15000 patient ibis", id);
    const char *const env2[] = {"KILN_METRICS_ADDR=", NULL};
    char log2[PATH_MAX];
    pid_t second = consumer_second_beside_call(&s, &n, acks, env2, log2);

    /* Frozen, the runner sends no in-progress ack and answers nothing; the
     * message goes to the second consumer after AckWait (the harness's 2 s). */
    pid_t runner = s.procs[H_CONSUMER].pid;
    cr_assert_eq(kill(runner, SIGSTOP), 0);
    int held = h_wait_file_log(log2, "waiting for its consumer", 10000);
    cr_assert_eq(kill(runner, SIGCONT), 0);
    cr_assert(held, "the second consumer did not hold the copy");
    cr_assert(h_wait_file_log(log2, "left to it job=", 5000),
              "the copy was not left to the thawed runner");

    consumer_expect_one_call(&s, &n, id, 1, "the held job");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    natsMsg_Destroy(wpi);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* The runner of a held copy's call comes back during the hold, finishes
 * and acks: nats-server forgets the message, but the holder still has its
 * copy. With the store frozen the holder cannot learn that the job is done,
 * so it must not run the copy (a second paid call): it keeps holding it
 * until the store, thawed, says the job completed. */
Test(consumer, a_copy_held_while_its_runner_finishes_is_not_run_again)
{
    h_stack s;
    h_nats n;
    natsSubscription *acks = NULL;
    char id[65];
    natsMsg *wpi = consumer_one_slot_call(&s, &n, &acks, "!sleep=2500 finished heron", id);
    const char *const env2[] = {"KILN_METRICS_ADDR=", "KILN_CONCURRENCY=1", NULL};
    char log2[PATH_MAX];
    pid_t holder = consumer_spawn_ready(&s, env2, "consumer2", log2);
    consumer_wait_puller(&n, acks);

    /* Frozen, the runner keeps no in-progress acks going: after AckWait the
     * second consumer receives the message, nobody answers, and it holds it. */
    pid_t runner = s.procs[H_CONSUMER].pid;
    cr_assert_eq(kill(runner, SIGSTOP), 0);
    int held = h_wait_file_log(log2, "waiting for its consumer", 10000);
    if (held) cr_assert_eq(kill(s.procs[H_STORE].pid, SIGSTOP), 0);
    cr_assert_eq(kill(runner, SIGCONT), 0);
    cr_assert(held, "the second consumer did not hold the copy");
    /* The runner's call ended while it was frozen: thawed, it publishes the
     * result and acks within the hold; the holder's store check times out. */
    int waits = h_wait_file_log(log2, "held job waits for the store's word", 5000);
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    cr_expect(waits, "the holder did not keep its copy while the store could not answer");

    consumer_expect_one_call(&s, &n, id, 1, "the job held while it finished");
    double calls = h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total");
    cr_expect_eq(calls, 1, "the provider was called %g times for one job", calls);
    cr_expect_eq(h_term_pid(holder), 0, "the second consumer did not stop cleanly");
    natsMsg_Destroy(wpi);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* An in-progress ack of stream sequence seq from a delivery after the
 * first, within deadline_ms, or NULL. The caller destroys it. */
static natsMsg *consumer_wait_wpi_redelivered(natsSubscription *acks, uint64_t seq, int64_t deadline_ms)
{
    int64_t until = h_now_ms() + deadline_ms;
    while (h_now_ms() < until) {
        natsMsg *m = consumer_wait_wpi(acks, until - h_now_ms());
        if (m == NULL) break;
        const char *subj = natsMsg_GetSubject(m);
        if (consumer_ack_seq(subj) == seq && consumer_ack_field(subj, 4) > 1) return m;
        natsMsg_Destroy(m);
    }
    return NULL;
}

/* Two live copies of one message: nats-server 2.9 can deliver one again with
 * its count reset, and a nak through one copy hands the message out again
 * while another consumer holds it. The test makes the second the latter
 * way: while a restarted consumer holds back the copy of a call that died
 * with its first process, the test naks it through the holder's own
 * in-progress-ack subject, and a third consumer receives it. The holder
 * answers the third one's question (a held copy counts, not only a running
 * call), the third leaves its copy, and the job runs once. */
Test(consumer, a_copy_held_back_is_answered_for_when_a_second_copy_comes)
{
    h_stack s;
    h_nats n;
    natsSubscription *acks = NULL;
    char id[65];
    natsMsg *wpi1 = consumer_one_slot_call(&s, &n, &acks, "!sleep=1500 twice-held plover", id);
    uint64_t seq = consumer_ack_seq(natsMsg_GetSubject(wpi1));
    /* Frozen until the copy is held, so that it cannot take the dead
     * consumer's copy itself. */
    const char *const env3[] = {"KILN_METRICS_ADDR=", NULL};
    char log3[PATH_MAX];
    pid_t third = consumer_spawn_ready(&s, env3, "consumer3", log3);
    cr_assert_eq(kill(third, SIGSTOP), 0);
    cr_assert_eq(h_proc_kill9(&s, H_CONSUMER), 0);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    int held = h_wait_log(&s, H_CONSUMER, "waiting for its consumer", 15000);
    /* The holder's keep-alive (every AckWait/3) comes within its 1 s hold. */
    natsMsg *wpi2 = held ? consumer_wait_wpi_redelivered(acks, seq, 1000) : NULL;
    if (wpi2 != NULL)
        cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetSubject(wpi2), "-NAK"), NATS_OK);
    cr_assert_eq(kill(third, SIGCONT), 0);
    cr_assert(held, "the restarted consumer did not hold the dead one's copy");
    cr_assert_not_null(wpi2, "no in-progress ack of the held copy");
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);

    cr_assert(h_wait_file_log(log3, "left to it job=", 5000),
              "the third consumer did not leave the second copy to the holder");
    cr_expect_eq(h_file_log_count(log3, "waiting for its consumer"), 0,
                 "the holder did not answer for its held copy");
    consumer_expect_one_call(&s, &n, id, 2, "the held job");
    cr_expect_eq(h_term_pid(third), 0, "the third consumer did not stop cleanly");
    natsMsg_Destroy(wpi1);
    natsMsg_Destroy(wpi2);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}

/* Two calls run in two other consumers when their messages come back to a
 * third: each copy is left to its own runner. (nats-server hands the two
 * over one at a time here, so each question names one; gathering several
 * answers to one question is not pinned down by this test.) */
Test(consumer, redeliveries_of_calls_running_in_two_other_consumers_are_left_to_both)
{
    const h_stack_opts opts = {.consumer_env = {"KILN_CONCURRENCY=1", NULL}};
    h_stack s;
    h_start(&s, &opts);
    h_nats n;
    h_nats_open(&s, &n);
    natsSubscription *acks = consumer_watch_acks(&n);

    /* One slot each: the first consumer runs one call, the second another. */
    char id1[65], id2[65], log2[PATH_MAX], log3[PATH_MAX];
    natsMsg *wpi1 = consumer_start_call(&s, acks, "!sleep=20000 patient egret", 0, id1);
    const char *const env2[] = {"KILN_METRICS_ADDR=", "KILN_CONCURRENCY=1", NULL};
    pid_t second = consumer_spawn_ready(&s, env2, "consumer2", log2);
    natsMsg *wpi2 = consumer_start_call(&s, acks, "!sleep=20000 patient stork",
                                        consumer_ack_seq(natsMsg_GetSubject(wpi1)), id2);

    /* Both given up while no consumer has a free slot; a third one started
     * then receives both. */
    cr_assert_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting"), 2,
                 "a call already ended");
    cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetSubject(wpi1), "-NAK"), NATS_OK);
    cr_assert_eq(natsConnection_PublishString(n.nc, natsMsg_GetSubject(wpi2), "-NAK"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);
    const char *const env3[] = {"KILN_METRICS_ADDR=", NULL};
    pid_t third = consumer_spawn_ready(&s, env3, "consumer3", log3);
    int64_t until = h_now_ms() + 10000;
    while (h_file_log_count(log3, "left to it job=") < 2 && h_now_ms() < until) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, acks, 50) == NATS_OK) natsMsg_Destroy(m);
    }
    cr_assert_eq(h_file_log_count(log3, "left to it job="), 2,
                 "the third consumer did not leave both copies to their calls");
    cr_expect_eq(h_file_log_count(log3, "waiting for its consumer"), 0,
                 "a runner's answer was not heard");
    cr_expect(h_log_contains(&s, H_CONSUMER, "told another consumer we hold the jobs it asked about"));
    cr_expect_gt(h_file_log_count(log2, "told another consumer we hold the jobs it asked about"), 0);

    h_expect_job(&s, H_TOKEN_ALICE, id1, "completed", 1, 40000, "the first job");
    h_expect_job(&s, H_TOKEN_ALICE, id2, "completed", 1, 40000, "the second job");
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_requests_overlapping_total"), 0,
                 "a second call began while a first ran");
    cr_expect(h_wait_worker_idle(n.js, "kiln-worker-normal", 10000), "a message stayed unacked");
    cr_expect_eq(h_term_pid(third), 0, "the third consumer did not stop cleanly");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    natsMsg_Destroy(wpi1);
    natsMsg_Destroy(wpi2);
    natsSubscription_Destroy(acks);
    h_nats_free(&n);
    h_stop(&s);
}
