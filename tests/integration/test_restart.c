/* test_restart.c - durability across process restarts: the store restarted on
 * its data dir, a consumer killed with SIGKILL or stopped with SIGTERM mid-job. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "kiln.pb-c.h"

TestSuite(restart, .fini = h_fini, .timeout = 150);

typedef struct {
    jsCtx *js;
} worker_idle_arg;

/* The normal lane's durable has nothing pending and nothing unacked. */
static int worker_idle(void *arg)
{
    worker_idle_arg *a = arg;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, a->js, "KILN_JOBS", "kiln-worker-normal", NULL, &jerr) != NATS_OK)
        return 0;
    int idle = ci->NumAckPending == 0 && ci->NumPending == 0 && ci->Delivered.Stream > 0;
    jsConsumerInfo_Destroy(ci);
    return idle;
}

typedef struct {
    jsCtx *js;
    const char *id;
    int n;
    char status[64];
    h_stack *s;
} done_arg;

static int done_seen(void *arg)
{
    done_arg *d = arg;
    d->n = h_done_count(d->js, d->id, d->status, sizeof d->status);
    return d->n >= 1;
}

static int state_changed(void *arg)
{
    done_arg *d = arg;
    json_t *j = h_get_job(d->s, H_TOKEN_ALICE, d->id, NULL);
    const char *st = h_jstr(j, "status");
    int changed = st == NULL || strcmp(st, "completed") != 0;
    json_decref(j);
    return changed;
}

Test(restart, store_restart_keeps_jobs_and_catches_up)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    natsSubscription *done = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&done, nc, "jobs.done"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    enum { N = 4 };
    char ids[N][65];
    json_t *before[N];
    const char *prompts[N] = {"restart fox 0", "restart fox 1", "!fail=400 restart bad", "restart fox 3"};
    for (int i = 0; i < N; i++) cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, prompts[i], ids[i]), 202);
    for (int i = 0; i < N; i++) {
        before[i] = h_wait_job(&s, H_TOKEN_ALICE, ids[i], NULL, 30000);
        cr_assert(before[i] != NULL && h_state_terminal(h_jstr(before[i], "status")), "job %d not terminal", i);
    }
    /* Every terminal job is in KILN_DONE before the store goes down. */
    for (int i = 0; i < N; i++) {
        done_arg da = {js, ids[i], 0, "", &s};
        cr_expect(h_wait_for(done_seen, &da, 15000, 100), "no jobs.done in KILN_DONE for %s", ids[i]);
    }
    /* Mark one viewed: the flag must survive too. */
    char path[256];
    h_resp r;
    snprintf(path, sizeof path, "/v1/jobs/%s/viewed", ids[0]);
    cr_expect_eq(h_api(&s, &r, "POST", path, H_TOKEN_ALICE, NULL), 200);
    h_resp_free(&r);

    cr_assert_eq(h_proc_term(&s, H_STORE), 0, "store did not exit 0 on SIGTERM");

    /* A job published while the store is down is processed by the consumer. */
    char down_id[65];
    h_unique_id(down_id, "while-store-down");
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate", down_id, "alice", "fox while the store is down"), 0);
    worker_idle_arg wa = {js};
    cr_expect(h_wait_for(worker_idle, &wa, 30000, 100), "consumer did not finish the job while the store was down");
    char v[64];
    cr_expect_eq(h_done_count(js, down_id, v, sizeof v), 0, "jobs.done published while the store was down");

    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "stack not ready after store restart");

    natsMsg *m = h_next_msg_for(done, down_id, 30000);
    cr_expect(m != NULL, "job completed while the store was down was never announced");
    if (m != NULL) {
        cr_expect(h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "completed") == 0, "Kiln-Status %s", v);
        natsMsg_Destroy(m);
    }
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, down_id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "job completed while the store was down");
    json_decref(j);

    for (int i = 0; i < N; i++) {
        long gst = 0;
        j = h_get_job(&s, H_TOKEN_ALICE, ids[i], &gst);
        cr_expect_eq(gst, 200, "job %s lost by the store restart", ids[i]);
        cr_expect_str_eq(h_jstr(j, "status"), h_jstr(before[i], "status"));
        cr_expect_eq(h_jint(j, "attempts"), h_jint(before[i], "attempts"));
        cr_expect_str_eq(h_jstr(j, "completed_at"), h_jstr(before[i], "completed_at"));
        cr_expect_eq(json_is_true(json_object_get(j, "viewed")), i == 0, "viewed flag after restart (job %d)", i);
        json_decref(j);
        json_decref(before[i]);
        /* A clean restart announces nothing twice. */
        cr_expect_eq(h_done_count(js, ids[i], v, sizeof v), 1, "KILN_DONE copies of %s", ids[i]);
    }
    h_api(&s, &r, "GET", "/v1/jobs", H_TOKEN_ALICE, NULL);
    cr_expect_eq(json_array_size(json_object_get(r.json, "jobs")), N + 1, "list after restart: %s", r.body);
    cr_expect_eq(h_jint(r.json, "unviewed_count"), N, "unviewed_count after restart");
    cr_expect_eq(h_jint(r.json, "active_count"), 0, "active_count after restart");
    h_resp_free(&r);

    natsSubscription_Destroy(done);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

/* Stops the consumer mid-job (SIGKILL or SIGTERM), starts a new one, and checks
 * the job ends completed exactly once. */
static void consumer_dies_mid_job(int use_sigkill)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);

    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE,
                                 use_sigkill ? "!sleep=3000 slow fox" : "!sleep=3000 slow fox term", id),
                 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "processing", 20000);
    cr_assert_str_eq(h_jstr(j, "status"), "processing", "job never started processing");
    json_decref(j);

    if (use_sigkill) {
        cr_assert_eq(h_proc_kill9(&s, H_CONSUMER), 0);
    } else {
        int64_t t0 = h_now_ms();
        cr_expect_eq(h_proc_term(&s, H_CONSUMER), 0, "consumer did not exit 0 on SIGTERM mid-job");
        cr_expect(h_now_ms() - t0 < 10000, "consumer took %lld ms to stop", (long long)(h_now_ms() - t0));
    }
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 40000);
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "job after consumer death: %s", d);
    cr_expect(h_jint(j, "attempts") >= 1, "%s", d);
    cr_expect_eq(json_array_size(json_object_get(j, "images")), 1, "%s", d);
    free(d);
    json_decref(j);

    /* Exactly one terminal state: one jobs.done copy (de-duplicated stream),
     * and the state never changes afterwards. */
    done_arg da = {js, id, 0, "", &s};
    cr_expect(h_wait_for(done_seen, &da, 10000, 100), "no jobs.done copy in KILN_DONE for %s", id);
    cr_expect_eq(da.n, 1, "KILN_DONE holds %d copies for %s", da.n, id);
    cr_expect_str_eq(da.status, "completed");
    /* Observation window: a redelivery of the old attempt must not change it. */
    cr_expect(!h_wait_for(state_changed, &da, 4000, 250), "terminal state changed after completion");
    cr_expect_eq(h_done_count(js, id, da.status, sizeof da.status), 1, "a second terminal state was announced");

    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(restart, consumer_kill9_mid_job)
{
    consumer_dies_mid_job(1);
}

Test(restart, consumer_sigterm_mid_job)
{
    consumer_dies_mid_job(0);
}
