/* test_consumer.c - the consumer's guarantees against the dev provider's
 * fault injection: bounded concurrency, retries, non-retryable failures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(consumer, .fini = h_fini, .timeout = 120);

static const h_stack_opts quick_retries = {
    .env = {"KILN_RETRY_BASE=100ms", "KILN_RETRY_CAP=500ms", NULL},
};

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
    h_resp r;
    if (h_api(a->s, &r, "GET", "/v1/jobs?limit=50", H_TOKEN_ALICE, NULL) != 200) {
        h_resp_free(&r);
        return 0;
    }
    json_t *jobs = json_object_get(r.json, "jobs");
    int processing = 0, completed = 0;
    for (size_t i = 0; i < json_array_size(jobs); i++) {
        const char *st = h_jstr(json_array_get(jobs, i), "status");
        if (st != NULL && strcmp(st, "processing") == 0) processing++;
        if (st != NULL && strcmp(st, "completed") == 0) completed++;
    }
    h_resp_free(&r);
    if (processing > a->max_processing) a->max_processing = processing;
    a->samples++;
    a->done = completed;
    return completed == 6;
}

Test(consumer, bounded_concurrency)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=2", NULL}};
    cr_assert_eq(h_stack_start(&s, &o), 0, "stack did not start");
    char ids[6][65];
    int64_t t0 = h_now_ms();
    for (int i = 0; i < 6; i++) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=1000 concurrency fox %d", i);
        cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, p, ids[i]), 202);
    }
    conc_arg a = {&s, 0, 0, 0};
    cr_assert(h_wait_for(conc_sample, &a, 40000, 50), "only %d of 6 jobs completed", a.done);
    int64_t took = h_now_ms() - t0;
    cr_expect(a.max_processing <= 2, "saw %d jobs processing at once with KILN_CONCURRENCY=2", a.max_processing);
    cr_expect(a.max_processing >= 1, "never saw a job processing (%d samples)", a.samples);
    /* 6 jobs of 1 s, 2 at a time: at least 3 s. */
    cr_expect(took >= 2900, "6 x 1 s jobs with concurrency 2 finished in %lld ms", (long long)took);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(consumer, retryable_500_then_success)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, &quick_retries), 0, "stack did not start");
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!fail=500:2 retry fox", id), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 40000);
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "%s", d);
    cr_expect_eq(h_jint(j, "attempts"), 3, "%s", d);
    cr_expect(json_is_null(json_object_get(j, "error")), "completed job keeps an error: %s", d);
    free(d);
    json_decref(j);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(consumer, rate_limited_then_success)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, &quick_retries), 0, "stack did not start");
    char id[65];
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!ratelimit=1 patient fox", id), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 40000);
    int64_t took = h_now_ms() - t0;
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "%s", d);
    cr_expect_eq(h_jint(j, "attempts"), 2, "%s", d);
    /* Retry-After: 1 is honoured even though the backoff cap is 500 ms. */
    cr_expect(took >= 900, "retried after %lld ms, before Retry-After: 1", (long long)took);
    free(d);
    json_decref(j);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(consumer, non_retryable_400_fails_at_once)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, &quick_retries), 0, "stack did not start");
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!fail=400 hopeless fox", id), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 30000);
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "%s", d);
    cr_expect_eq(h_jint(j, "attempts"), 1, "%s", d);
    json_t *e = json_object_get(j, "error");
    cr_expect(json_is_object(e), "failed job without error: %s", d);
    const char *code = h_jstr(e, "code");
    const char *msg = h_jstr(e, "message");
    cr_expect(code != NULL && code[0] != '\0', "error.code: %s", d);
    cr_expect(msg != NULL && msg[0] != '\0', "error.message: %s", d);
    /* The provider's own message is passed on. */
    cr_expect(msg != NULL && strstr(msg, "injected failure") != NULL, "error.message should carry the provider's answer: %s", d);
    cr_expect(json_object_get(j, "completed_at") != NULL && !json_is_null(json_object_get(j, "completed_at")),
              "completed_at on a failed job: %s", d);
    free(d);
    json_decref(j);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(consumer, exhausted_retries_fail_and_go_to_dead)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, &quick_retries), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    natsSubscription *dead = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&dead, nc, "jobs.dead"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"!fail=503 always down fox\",\"max_attempts\":2}", id), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 40000);
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "%s", d);
    cr_expect_eq(h_jint(j, "attempts"), 2, "%s", d);
    free(d);
    json_decref(j);
    natsMsg *m = h_next_msg_for(dead, id, 15000);
    cr_expect(m != NULL, "exhausted job not copied to jobs.dead");
    char v[256] = "";
    if (m != NULL) cr_expect(h_msg_header(m, "Kiln-Reason", v, sizeof v) && v[0] != '\0', "no Kiln-Reason");
    natsMsg_Destroy(m);
    natsSubscription_Destroy(dead);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}
