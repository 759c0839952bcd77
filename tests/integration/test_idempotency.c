/* test_idempotency.c - delivery semantics, idempotency: Idempotency-Key per
 * user (same body -> same job, other body -> 409), keys kept by the store
 * across restarts, and Nats-Msg-Id de-duplication for NATS publishers. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(idem, .fini = h_fini, .timeout = 150);

static long idem_post(h_stack *s, h_resp *r, const char *token, const char *body, const char *key)
{
    char url[256], hdr[256];
    snprintf(url, sizeof url, "%s/v1/jobs", s->gw_url);
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
    return h_http(r, "POST", url, token, "application/json", body, hdr);
}

/* Alice's key is known: the same body answers 200 with job id, another
 * body 409 idempotency_conflict. */
static void idem_expect_known(h_stack *s, const char *body, const char *other_body, const char *key,
                              const char *id, const char *what)
{
    h_resp r;
    long st = idem_post(s, &r, H_TOKEN_ALICE, body, key);
    cr_expect_eq(st, 200, "%s: same user+key+body must answer 200: %ld %s", what, st, r.body);
    cr_expect_str_eq(h_jstr(r.json, "id"), id, "%s: same key answered another job: %s", what, r.body);
    h_resp_free(&r);
    idem_post(s, &r, H_TOKEN_ALICE, other_body, key);
    h_expect_error(&r, 409, "idempotency_conflict", NULL);
    h_resp_free(&r);
}

Test(idem, same_key_same_job_one_run)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    const char *body = "{\"prompt\":\"idem otter\",\"priority\":\"high\"}";
    h_resp r;
    long st = idem_post(&s, &r, H_TOKEN_ALICE, body, "k-otter-1");
    cr_assert_eq(st, 202, "first submit: %ld %s", st, r.body);
    char id[65];
    snprintf(id, sizeof id, "%s", h_jstr(r.json, "id"));
    h_resp_free(&r);

    idem_expect_known(&s, body, "{\"prompt\":\"idem otter, other body\"}", "k-otter-1", id, "repeat");

    st = idem_post(&s, &r, H_TOKEN_BOB, body, "k-otter-1");
    cr_expect_eq(st, 202, "bob with alice's key: %ld %s", st, r.body);
    const char *bid = h_jstr(r.json, "id");
    cr_expect(bid != NULL && strcmp(bid, id) != 0, "bob got alice's job: %s", r.body);
    char bob_id[65];
    snprintf(bob_id, sizeof bob_id, "%s", bid != NULL ? bid : "");
    h_resp_free(&r);

    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "alice's idempotent job");
    h_expect_job(&s, H_TOKEN_BOB, bob_id, "completed", 1, 30000, "bob's job with alice's key");

    /* A repeat after completion still maps to the original (and does not run again). */
    st = idem_post(&s, &r, H_TOKEN_ALICE, body, "k-otter-1");
    cr_expect_eq(st, 200, "repeat after completion: %ld %s", st, r.body);
    cr_expect_str_eq(h_jstr(r.json, "id"), id);
    cr_expect_str_eq(h_jstr(r.json, "status"), "completed", "200 answer should be the job: %s", r.body);
    h_resp_free(&r);

    cr_expect_eq(h_list_count(&s, H_TOKEN_ALICE), 1, "alice has more than one job");
    cr_expect_eq(h_list_count(&s, H_TOKEN_BOB), 1, "bob's job count");
    h_expect_done_once(&n, id, "completed", 5000);
    double ran = h_metric(&s, H_CONSUMER, "kiln_consumer_jobs_completed_total");
    if (ran >= 0) cr_expect_eq(ran, 2.0, "consumer completed %.0f jobs, want 2 (alice's once, bob's)", ran);
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    h_stack *s;
    long status;
    char id[65];
} idem_racer;

static void *idem_race(void *arg)
{
    idem_racer *a = arg;
    h_resp r;
    a->status = idem_post(a->s, &r, H_TOKEN_ALICE, "{\"prompt\":\"racing otter\"}", "k-race");
    const char *id = h_jstr(r.json, "id");
    snprintf(a->id, sizeof a->id, "%s", id != NULL ? id : "");
    h_resp_free(&r);
    return NULL;
}

Test(idem, concurrent_same_key_one_job)
{
    h_stack s;
    h_start(&s, NULL);
    enum { N = 6 };
    idem_racer a[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        a[i] = (idem_racer){&s, 0, ""};
        cr_assert_eq(pthread_create(&t[i], NULL, idem_race, &a[i]), 0);
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    int accepted = 0;
    for (int i = 0; i < N; i++) {
        cr_expect(a[i].status == 202 || a[i].status == 200, "racer %d: HTTP %ld", i, a[i].status);
        if (a[i].status == 202) accepted++;
        cr_expect_str_eq(a[i].id, a[0].id, "racer %d got another job id", i);
    }
    cr_expect_eq(accepted, 1, "%d concurrent submits with one key answered 202", accepted);
    cr_assert(a[0].id[0] != '\0', "gateway/store: no racer got a job id");
    h_expect_job(&s, H_TOKEN_ALICE, a[0].id, "completed", 1, 30000, "raced job");
    cr_expect_eq(h_list_count(&s, H_TOKEN_ALICE), 1, "concurrent submits with one key made several jobs");
    h_stop(&s);
}

Test(idem, key_survives_store_and_gateway_restart)
{
    h_stack s;
    h_start(&s, NULL);
    const char *body = "{\"prompt\":\"durable key otter\"}";
    h_resp r;
    long st = idem_post(&s, &r, H_TOKEN_ALICE, body, "k-durable");
    cr_assert_eq(st, 202, "%ld %s", st, r.body);
    char id[65];
    snprintf(id, sizeof id, "%s", h_jstr(r.json, "id"));
    h_resp_free(&r);
    json_decref(h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 30000));

    /* Neither the gateway's memory nor JetStream's duplicate window (the
     * gateway makes a new id per request) can answer this: only the store's
     * durable key map. */
    cr_assert_eq(h_proc_term(&s, H_GATEWAY), 0);
    cr_assert_eq(h_proc_term(&s, H_STORE), 0);
    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_proc_start(&s, H_GATEWAY), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after restart");

    idem_expect_known(&s, body, "{\"prompt\":\"different\"}", "k-durable", id, "store: after restart");
    cr_expect_eq(h_list_count(&s, H_TOKEN_ALICE), 1, "a second job was created after restart");
    h_stop(&s);
}

Test(idem, nats_same_msg_id_one_job)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    char id[65];
    h_unique_id(id, "dup");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "!sleep=300 dup otter"), 0);
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "!sleep=300 dup otter"), 0);
    cr_assert(h_collect_wait(n.done, id, 1, 30000) >= 1, "no jobs.done for %s", id);
    /* Observation window: a second run would announce again. */
    cr_expect_eq(h_collect_wait(n.done, id, 2, 3000), 1, "a second jobs.done for one Nats-Msg-Id");
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    cr_expect_eq(h_jint(j, "attempts"), 1, "duplicate publish ran twice");
    json_decref(j);
    cr_expect_eq(h_list_count(&s, H_TOKEN_ALICE), 1);
    h_nats_free(&n);
    h_stop(&s);
}

/* KILN_JOBS' stream info (NULL on error; jsStreamInfo_Destroy frees it). */
static jsStreamInfo *idem_jobs_info(jsCtx *js)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    return js_GetStreamInfo(&si, js, "KILN_JOBS", NULL, &jerr) == NATS_OK ? si : NULL;
}

/* Shrinks KILN_JOBS' duplicate window so a test can publish "after" it. */
static int idem_shrink_dup_window(jsCtx *js, int64_t ms)
{
    jsStreamInfo *si = idem_jobs_info(js);
    jsErrCode jerr = 0;
    if (si == NULL) return -1;
    si->Config->Duplicates = ms * 1000000; /* nanoseconds */
    jsStreamInfo *out = NULL;
    natsStatus st = js_UpdateStream(&out, js, si->Config, NULL, &jerr);
    jsStreamInfo_Destroy(out);
    jsStreamInfo_Destroy(si);
    return st == NATS_OK ? 0 : -1;
}

Test(idem, nats_copy_after_dup_window_not_run)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    cr_assert_eq(idem_shrink_dup_window(n.js, 300), 0, "could not shrink the duplicate window");

    char id[65];
    h_unique_id(id, "late-dup");
    /* The first run fails with 400 (terminal); a second run of the same
     * prompt would succeed, and the consumer's counters would show it. */
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "!fail=400:1 late dup otter"), 0);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "failed");
    json_decref(j);

    /* The window has passed: JetStream stores the second copy. */
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "!fail=400:1 late dup otter"), 0);
    char marker[65];
    h_unique_id(marker, "marker");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", marker, "alice", "marker otter"), 0);
    j = h_wait_job(&s, H_TOKEN_ALICE, marker, "completed", 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "completed");
    json_decref(j);

    double completed = h_metric(&s, H_CONSUMER, "kiln_consumer_jobs_completed_total");
    cr_expect_eq(completed, 1.0, "consumer: a second copy of a finished job was run (completed_total %.0f, want 1)",
                 completed);
    j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "failed");
    cr_expect_eq(h_jint(j, "attempts"), 1);
    json_decref(j);
    h_expect_done_once(&n, id, "failed", 5000);
    h_nats_free(&n);
    h_stop(&s);
}

/* KILN_JOBS' duplicate window in nanoseconds, -1 on error. */
static int64_t idem_dup_window_ns(jsCtx *js)
{
    jsStreamInfo *si = idem_jobs_info(js);
    if (si == NULL) return -1;
    int64_t ns = si->Config->Duplicates;
    jsStreamInfo_Destroy(si);
    return ns;
}

/* KILN_DUP_WINDOW reaches KILN_JOBS (default 30 s: later copies are Kiln's
 * own to drop, above). */
Test(idem, dup_window_setting_is_provisioned)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    cr_expect_eq(idem_dup_window_ns(n.js), 30LL * 1000000000, "default KILN_JOBS duplicate window");
    h_nats_free(&n);
    h_stop(&s);

    h_stack_opts o = {.env = {"KILN_DUP_WINDOW=7s", NULL}};
    h_start(&s, &o);
    h_nats_open(&s, &n);
    cr_expect_eq(idem_dup_window_ns(n.js), 7LL * 1000000000, "KILN_DUP_WINDOW=7s not provisioned");
    h_nats_free(&n);
    h_stop(&s);
}
