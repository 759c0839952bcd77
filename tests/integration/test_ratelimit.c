/* test_ratelimit.c - delivery semantics, inbound limits: per-user submit rate
 * (token bucket with burst, 429) and back-pressure (503 at once, not a hang,
 * when NATS is down; back to normal when it returns). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(ratelimit, .fini = h_fini, .timeout = 120);

static long rl_post(h_stack *s, h_resp *r, const char *token, int i, long timeout_ms)
{
    char url[256], body[96];
    snprintf(url, sizeof url, "%s/v1/jobs", s->gw_url);
    snprintf(body, sizeof body, "{\"prompt\":\"rate limited vole %d\"}", i);
    return h_http_timeout(r, "POST", url, token, "application/json", body, strlen(body), NULL, timeout_ms);
}

typedef struct {
    h_stack *s;
    long last;
} rl_probe;

static int rl_accepted_again(void *arg)
{
    rl_probe *p = arg;
    h_resp r;
    p->last = rl_post(p->s, &r, H_TOKEN_ALICE, 100, 10000);
    h_resp_free(&r);
    return p->last == 202;
}

Test(ratelimit, burst_then_429_per_user)
{
    h_stack s;
    h_stack_opts o = {.env = {"KILN_SUBMIT_RATE=2/s", "KILN_SUBMIT_BURST=3", NULL}};
    h_start(&s, &o);
    h_resp r;
    for (int i = 0; i < 3; i++) {
        long st = rl_post(&s, &r, H_TOKEN_ALICE, i, 10000);
        cr_expect_eq(st, 202, "submit %d within the burst: %ld %s", i, st, r.body);
        h_resp_free(&r);
    }
    int64_t t_limited = h_now_ms();
    long st = rl_post(&s, &r, H_TOKEN_ALICE, 3, 10000);
    cr_expect_eq(st, 429, "gateway: 4th quick submit with burst 3: %ld %s", st, r.body);
    if (st == 429) {
        h_expect_error(&r, 429, "rate_limited", NULL);
        char ra[32] = "";
        cr_expect(h_resp_header(&r, "Retry-After", ra, sizeof ra) && atoi(ra) >= 1, "429 without Retry-After: '%s'", ra);
    }
    h_resp_free(&r);

    /* Limits are per user. */
    st = rl_post(&s, &r, H_TOKEN_BOB, 0, 10000);
    cr_expect_eq(st, 202, "bob limited by alice's submits: %ld %s", st, r.body);
    h_resp_free(&r);

    /* Tokens refill at 2/s: alice is accepted again soon, not much before. */
    rl_probe p = {&s, 0};
    cr_expect(h_wait_for(rl_accepted_again, &p, 5000, 100), "alice never accepted again (last %ld)", p.last);
    cr_expect(h_now_ms() - t_limited >= 200, "token came back after %lld ms at 2/s",
              (long long)(h_now_ms() - t_limited));
    h_stop(&s);
}

typedef struct {
    h_stack *s;
    long last;
    int64_t slowest;
    char code[64];
    char retry_after[32];
} rl_down_probe;

static int rl_is_503(void *arg)
{
    rl_down_probe *p = arg;
    h_resp r;
    int64_t t0 = h_now_ms();
    p->last = rl_post(p->s, &r, H_TOKEN_ALICE, 7, 15000);
    int64_t took = h_now_ms() - t0;
    if (took > p->slowest) p->slowest = took;
    const char *c = h_err_code(&r);
    snprintf(p->code, sizeof p->code, "%s", c != NULL ? c : "");
    if (!h_resp_header(&r, "Retry-After", p->retry_after, sizeof p->retry_after)) p->retry_after[0] = '\0';
    h_resp_free(&r);
    return p->last == 503;
}

Test(ratelimit, nats_down_is_503_not_a_hang_then_recovers)
{
    h_stack s;
    h_start(&s, NULL);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "before the outage vole", id), 202);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "job before the outage");
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert(!h_proc_alive(&s, H_NATS), "nats-server did not stop");

    int64_t t0 = h_now_ms();
    rl_down_probe p = {&s, 0, 0, "", ""};
    int ok = h_wait_for(rl_is_503, &p, 10000, 100);
    cr_expect(ok, "gateway: POST with NATS down never answered 503 (last %ld)", p.last);
    cr_expect(h_now_ms() - t0 <= 6000, "gateway: first 503 came %lld ms after NATS stopped", (long long)(h_now_ms() - t0));
    cr_expect(p.slowest <= 6000, "gateway: a POST with NATS down took %lld ms (hang)", (long long)p.slowest);
    cr_expect_str_eq(p.code, "unavailable");
    cr_expect(p.retry_after[0] != '\0' && atoi(p.retry_after) >= 1, "503 without Retry-After");

    /* Several in a row: each answers quickly. */
    for (int i = 0; i < 3; i++) {
        int64_t t1 = h_now_ms();
        h_resp r;
        long st = rl_post(&s, &r, H_TOKEN_ALICE, 20 + i, 15000);
        cr_expect_eq(st, 503, "POST %d with NATS down: %ld", i, st);
        cr_expect(h_now_ms() - t1 <= 6000, "POST %d with NATS down took %lld ms", i, (long long)(h_now_ms() - t1));
        h_resp_free(&r);
    }
    /* Operations: not ready, but alive. */
    cr_expect_eq(h_gw_status(&s, "/readyz", 10000), 503, "/readyz with NATS down");
    cr_expect_eq(h_gw_status(&s, "/healthz", 10000), 200, "/healthz with NATS down");

    /* NATS back: ready again, submits work, earlier jobs are still there. */
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_expect_eq(h_stack_wait_ready(&s), 0, "not ready after NATS came back");
    rl_probe p2 = {&s, 0};
    cr_expect(h_wait_for(rl_accepted_again, &p2, 30000, 250), "POST did not recover after NATS came back (last %ld)",
              p2.last);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 5000, "job from before the outage");
    char id1[65];
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "after the outage vole", id1), 202);
    h_expect_job(&s, H_TOKEN_ALICE, id1, "completed", 1, 30000, "job after NATS came back");
    h_stop(&s);
}
