/* test_stall.c - the consumer's stalled-message recovery (consumer/stall.c):
 * delayed jobs nak'd just before nats-server stops must still complete after
 * the restart (nats-server 2.9.10 can forget their ack-pending entries), and
 * the check re-drives nothing in a healthy system. */
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

static void stall_dump_worker(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, &jerr) != NATS_OK) return;
    fprintf(stderr, "stall: %s delivered.stream=%llu ack_floor.stream=%llu num_ack_pending=%lld num_pending=%llu\n",
            durable, (unsigned long long)ci->Delivered.Stream, (unsigned long long)ci->AckFloor.Stream,
            (long long)ci->NumAckPending, (unsigned long long)ci->NumPending);
    jsConsumerInfo_Destroy(ci);
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
                stall_dump_worker(n.js, "kiln-worker-normal");
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
    h_stack_opts o = {.consumer_env = {"KILN_STALL_CHECK=100ms", "KILN_RETRY_BASE=200ms",
                                       "KILN_RETRY_CAP=400ms", NULL}};
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
    h_nats_free(&n);
    h_stop(&s);
}
