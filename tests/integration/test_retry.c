/* test_retry.c - delivery semantics, retries: attempts counted per provider
 * call, Retry-After honoured, non-retryable failures fail at once, exhausted
 * jobs go to jobs.dead, and the per-attempt timeout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(retry, .fini = h_fini, .timeout = 120);

/* Fast backoff: without Retry-After a retry waits random(0, 100 ms). */
static const h_stack_opts retry_opts = {
    .env = {"KILN_RETRY_BASE=100ms", "KILN_RETRY_CAP=1s", NULL},
};

/* Submits body, waits for a terminal state, returns the job (caller decref)
 * and its JSON text in *dump (caller frees). */
static json_t *retry_run(h_stack *s, const char *body, char **dump, int64_t deadline_ms)
{
    char id[65];
    cr_assert_eq(h_submit(s, H_TOKEN_ALICE, body, id), 202, "submit %s", body);
    json_t *j = h_wait_job(s, H_TOKEN_ALICE, id, NULL, deadline_ms);
    *dump = h_job_dump(j);
    return j;
}

Test(retry, fail500_twice_then_completed)
{
    h_stack s;
    h_start(&s, &retry_opts);
    char *d = NULL;
    json_t *j = retry_run(&s, "{\"prompt\":\"!fail=500:2 retry heron\"}", &d, 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "consumer: 500 must be retried: %s", d);
    cr_expect_eq(h_jint(j, "attempts"), 3, "two failed attempts + one good: %s", d);
    cr_expect(json_is_null(json_object_get(j, "error")), "completed job keeps an error: %s", d);
    cr_expect_eq(json_array_size(json_object_get(j, "images")), 1, "%s", d);
    free(d);
    json_decref(j);
    h_stop(&s);
}

Test(retry, ratelimit_honours_retry_after)
{
    h_stack s;
    h_start(&s, &retry_opts);
    char *d = NULL;
    int64_t t0 = h_now_ms();
    json_t *j = retry_run(&s, "{\"prompt\":\"!ratelimit=1 retry owl\"}", &d, 30000);
    int64_t took = h_now_ms() - t0;
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "consumer: 429 must be retried: %s", d);
    cr_expect_eq(h_jint(j, "attempts"), 2, "%s", d);
    /* started_at is the first start; the 429 came at once, so the second
     * attempt (and completed_at) is at least Retry-After = 1 s later. */
    int64_t st = h_job_ms(j, "started_at"), ct = h_job_ms(j, "completed_at");
    cr_expect(st > 0 && ct > 0, "timestamps missing: %s", d);
    cr_expect(ct - st >= 950, "consumer retried %lld ms after a 429 with Retry-After: 1 (backoff base is 100 ms): %s",
              (long long)(ct - st), d);
    cr_expect(took >= 950, "job completed %lld ms after submit despite Retry-After: 1", (long long)took);
    free(d);
    json_decref(j);
    h_stop(&s);
}

Test(retry, fail400_fails_at_once)
{
    h_stack s;
    h_start(&s, &retry_opts);
    char *d = NULL;
    json_t *j = retry_run(&s, "{\"prompt\":\"!fail=400 retry crow\"}", &d, 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "%s", d);
    cr_expect_eq(h_jint(j, "attempts"), 1, "consumer: 400 is not retryable: %s", d);
    json_t *e = json_object_get(j, "error");
    cr_expect(json_is_object(e), "failed job without error: %s", d);
    const char *code = h_jstr(e, "code"), *msg = h_jstr(e, "message");
    cr_expect(code != NULL && code[0] != '\0', "failed job without error.code: %s", d);
    cr_expect(msg != NULL && strstr(msg, "injected failure 400") != NULL,
              "error.message should carry the provider's message: %s", d);
    cr_expect(h_job_ms(j, "completed_at") > 0, "failed job without completed_at: %s", d);
    free(d);
    json_decref(j);
    h_stop(&s);
}

Test(retry, exhausted_fails_and_goes_to_dead)
{
    h_stack s;
    h_start(&s, &retry_opts);
    h_nats n;
    h_nats_open(&s, &n);

    char *d = NULL;
    json_t *j = retry_run(&s, "{\"prompt\":\"!fail=503 retry raven\",\"max_attempts\":2}", &d, 30000);
    const char *id = h_jstr(j, "id");
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "%s", d);
    cr_expect_eq(h_jint(j, "attempts"), 2, "max_attempts 2: %s", d);
    cr_expect(h_jstr(json_object_get(j, "error"), "code") != NULL, "no error: %s", d);

    int copies = id != NULL ? h_collect_wait(n.dead, id, 1, 10000) : 0;
    cr_expect(copies >= 1, "consumer: exhausted job not copied to jobs.dead (with Kiln-Job-Id %s)", id);
    natsMsg *m = id != NULL ? h_collect_msg(n.dead, id, 0) : NULL;
    char v[256] = "";
    if (m != NULL) {
        cr_expect(h_msg_header(m, "Kiln-Reason", v, sizeof v) && v[0] != '\0', "jobs.dead copy without Kiln-Reason");
        cr_expect(natsMsg_GetDataLength(m) > 0, "jobs.dead copy without the original payload");
    }
    if (id != NULL) h_expect_done_once(&n, id, "failed", 5000);
    free(d);
    json_decref(j);
    h_nats_free(&n);
    h_stop(&s);
}

Test(retry, per_attempt_timeout)
{
    h_stack s;
    h_start(&s, &retry_opts);
    char *d = NULL;
    int64_t t0 = h_now_ms();
    json_t *j = retry_run(&s, "{\"prompt\":\"!hang retry sloth\",\"timeout_s\":1,\"max_attempts\":2}", &d, 30000);
    int64_t took = h_now_ms() - t0;
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "consumer: per-attempt timeout not enforced: %s", d);
    cr_expect_eq(h_jint(j, "attempts"), 2, "%s", d);
    cr_expect_str_eq(h_jstr(json_object_get(j, "error"), "code"), "timeout", "%s", d);
    cr_expect(took >= 1900, "two 1 s attempts ended after %lld ms", (long long)took);
    cr_expect(took < 15000, "two 1 s attempts took %lld ms", (long long)took);
    free(d);
    json_decref(j);
    h_stop(&s);
}
