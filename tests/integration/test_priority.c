/* test_priority.c - delivery semantics, priorities: a high job overtakes a
 * waiting low backlog, and a steady flow of high jobs does not starve low. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(priority, .fini = h_fini, .timeout = 150);

static const h_stack_opts prio_opts = {.consumer_env = {"KILN_CONCURRENCY=1", NULL}};

static long prio_submit(h_stack *s, const char *prio, const char *prompt, char *id, int64_t *created)
{
    json_t *o = json_pack("{s:s,s:s}", "prompt", prompt, "priority", prio);
    char *body = json_dumps(o, JSON_COMPACT);
    h_resp r;
    long st = h_api(s, &r, "POST", "/v1/jobs", H_TOKEN_ALICE, body);
    const char *jid = h_jstr(r.json, "id");
    snprintf(id, 65, "%s", (st == 202 && jid != NULL) ? jid : "");
    if (created != NULL) *created = h_ts_ms(h_jstr(r.json, "created_at"));
    h_resp_free(&r);
    free(body);
    json_decref(o);
    return st;
}

Test(priority, high_overtakes_low_backlog)
{
    h_stack s;
    h_start(&s, &prio_opts);
    enum { N = 20 };
    char low[N][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=200 low marten %d\",\"priority\":\"low\"}", N, low);
    /* The backlog is being worked on. */
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, low[0], "completed", 20000);
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "low backlog does not move");
    json_decref(j);

    char high[65];
    int64_t high_created = 0;
    cr_assert_eq(prio_submit(&s, "high", "!sleep=200 high marten", high, &high_created), 202);
    j = h_wait_job(&s, H_TOKEN_ALICE, high, "completed", 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "completed");
    int64_t high_started = h_job_ms(j, "started_at");
    json_decref(j);
    cr_assert(high_created > 0 && high_started > 0);

    int overtook = 0, after = 0, pending_low = 0;
    for (int i = 0; i < N; i++) {
        j = h_wait_job(&s, H_TOKEN_ALICE, low[i], "completed", 30000);
        int64_t st = h_job_ms(j, "started_at");
        cr_expect(st > 0, "low job %d never started", i);
        if (st >= high_created && st < high_started) overtook++; /* started between submit and high's start */
        if (st >= high_started) after++;
        json_decref(j);
    }
    pending_low = overtook + after;
    cr_expect(overtook <= 2, "consumer: %d low jobs started after the high one was submitted and before it", overtook);
    cr_expect(after >= 5, "test setup: only %d of %d low jobs were still waiting behind the high one", after, pending_low);
    h_stop(&s);
}

Test(priority, low_not_starved_by_high_flow)
{
    h_stack s;
    h_start(&s, &prio_opts);
    enum { NLOW = 4, NHIGH_MAX = 120 };
    char low[NLOW][65];
    static char high[NHIGH_MAX][65];
    int nhigh = 0;

    /* Start the high flow first, so the high lane is never empty. */
    for (int i = 0; i < 4; i++, nhigh++) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=100 high weasel %d", nhigh);
        cr_assert_eq(prio_submit(&s, "high", p, high[nhigh], NULL), 202);
    }
    for (int i = 0; i < NLOW; i++) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=100 low weasel %d", i);
        cr_assert_eq(prio_submit(&s, "low", p, low[i], NULL), 202);
    }
    /* About 4 s of high jobs, submitted faster than one slot can run them. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t t_end = h_now_ms() + 4000;
    while (h_now_ms() < t_end && nhigh < NHIGH_MAX) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=100 high weasel %d", nhigh);
        cr_assert_eq(prio_submit(&s, "high", p, high[nhigh], NULL), 202);
        nhigh++;
        struct timespec ts = {0, 50 * 1000000L}; /* pacing, not a wait for a condition */
        nanosleep(&ts, NULL);
    }
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t flow_end_wall = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;

    /* High jobs still waiting at the end of the flow prove the lane was never empty. */
    int high_waiting = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, high[nhigh - 1], NULL);
    const char *hs = h_jstr(j, "status");
    high_waiting = hs != NULL && strcmp(hs, "pending") == 0;
    json_decref(j);

    int low_done_during = 0;
    for (int i = 0; i < NLOW; i++) {
        j = h_wait_job(&s, H_TOKEN_ALICE, low[i], "completed", 60000);
        cr_expect_str_eq(h_jstr(j, "status"), "completed", "low job %d starved for good", i);
        int64_t ct = h_job_ms(j, "completed_at");
        if (ct > 0 && ct <= flow_end_wall) low_done_during++;
        json_decref(j);
    }
    cr_expect(high_waiting, "test setup: the high lane ran dry during the flow (%d high jobs)", nhigh);
    cr_expect(low_done_during >= 1, "consumer: no low job completed during %d high submissions (starvation)", nhigh);
    h_stop(&s);
}

/* On an idle consumer (its fetch thread long-polls the normal lane), a high
 * or low job starts at once: the lane's publish hint wakes that poll. Before,
 * it waited for the poll to expire: 16-44 ms, against ~1 ms on normal. */
Test(priority, hinted_lanes_start_at_once_on_idle_consumer)
{
    h_stack s;
    h_start(&s, NULL);
    static const char *lanes[] = {"high", "low"};
    enum { N = 5 };
    for (size_t l = 0; l < sizeof lanes / sizeof lanes[0]; l++) {
        int64_t waited[N];
        for (int i = 0; i < N; i++) {
            /* Submit only once the consumer sits in its idle long poll. */
            double polls = h_metric(&s, H_CONSUMER, "kiln_consumer_idle_polls_total");
            cr_assert(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_idle_polls_total", polls, 10000) == 1,
                      "consumer never went idle (kiln_consumer_idle_polls_total)");
            char id[65], prompt[64];
            int64_t created = 0;
            snprintf(prompt, sizeof prompt, "idle %s heron %d", lanes[l], i);
            cr_assert_eq(prio_submit(&s, lanes[l], prompt, id, &created), 202);
            json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 20000);
            cr_assert_str_eq(h_jstr(j, "status"), "completed", "%s job %s", lanes[l], id);
            waited[i] = h_job_ms(j, "started_at") - created;
            json_decref(j);
        }
        int64_t median = h_median(waited, N);
        cr_expect_lt(median, 12, "%s jobs on an idle consumer started %lld ms (median) after submit",
                     lanes[l], (long long)median);
    }
    h_stop(&s);
}

/* An idle consumer's polls cost nats-server a request and its end each:
 * they grow longer while nothing comes (up to 1 s; ~20 a second before),
 * and a job submitted then still starts at once on any lane. */
Test(priority, an_idle_consumer_polls_rarely_and_still_starts_jobs_at_once)
{
    h_stack s;
    h_start(&s, NULL);
    double polls = h_metric(&s, H_CONSUMER, "kiln_consumer_idle_polls_total");
    cr_assert(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_idle_polls_total", polls + 5, 20000) == 1,
              "consumer never went idle (kiln_consumer_idle_polls_total)");
    /* Settled into its longest polls: the next three take about 3 s. */
    polls = h_metric(&s, H_CONSUMER, "kiln_consumer_idle_polls_total");
    int64_t t0 = h_now_ms();
    cr_assert(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_idle_polls_total", polls + 2, 10000) == 1,
              "the idle consumer stopped polling");
    int64_t took = h_now_ms() - t0;
    cr_expect_geq(took, 1500, "three idle polls took %lld ms", (long long)took);
    static const char *lanes[] = {"normal", "high", "low"};
    for (size_t l = 0; l < sizeof lanes / sizeof lanes[0]; l++) {
        char id[65], prompt[64];
        int64_t created = 0;
        snprintf(prompt, sizeof prompt, "long idle %s heron", lanes[l]);
        cr_assert_eq(prio_submit(&s, lanes[l], prompt, id, &created), 202);
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 20000);
        cr_assert_str_eq(h_jstr(j, "status"), "completed", "%s job %s", lanes[l], id);
        int64_t waited = h_job_ms(j, "started_at") - created;
        json_decref(j);
        cr_expect_lt(waited, 100, "a %s job on a long-idle consumer started %lld ms after submit", lanes[l],
                     (long long)waited);
        /* Idle again before the next lane's job. */
        polls = h_metric(&s, H_CONSUMER, "kiln_consumer_idle_polls_total");
        cr_assert(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_idle_polls_total", polls + 4, 20000) == 1);
    }
    h_stop(&s);
}
