/* test_cancel.c - delivery semantics, cancellation: a cancelled pending job
 * never starts, a processing one is aborted within 2 s and frees its worker
 * slot, a terminal one (cancelled or completed) answers 409, and jobs.done /
 * jobs.cancel agree. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(cancel, .fini = h_fini, .timeout = 120);

typedef struct {
    h_stack *s;
    const char *id;
    char why[512];
} cancel_watch;

/* True when the cancelled job shows any sign of having started. */
static int cancel_started(void *arg)
{
    cancel_watch *w = arg;
    json_t *j = h_get_job(w->s, H_TOKEN_ALICE, w->id, NULL);
    const char *st = h_jstr(j, "status");
    int bad = j == NULL || st == NULL || strcmp(st, "cancelled") != 0 || h_jint(j, "attempts") != 0 ||
              !h_jnull(j, "started_at");
    if (bad) {
        char *d = h_job_dump(j);
        snprintf(w->why, sizeof w->why, "%s", d);
        free(d);
    }
    json_decref(j);
    return bad;
}

Test(cancel, pending_never_starts)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"cancel me later lynx\",\"delay_ms\":3000}", id), 202);
    int64_t t0 = h_now_ms();
    h_resp r;
    long st = h_job_post(&s, &r, H_TOKEN_ALICE, id, "cancel");
    cr_expect_eq(st, 200, "gateway/store: cancel of a pending job: %ld %s", st, r.body);
    cr_expect_str_eq(h_jstr(r.json, "status"), "cancelled", "cancel answer: %s", r.body);
    h_resp_free(&r);
    /* The 200 means the store applied it: a GET at once says cancelled. */
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "cancelled", "GET right after cancel");
    json_decref(j);

    cr_expect(h_collect_wait(n.done, id, 1, 10000) >= 1, "store: no jobs.done for the cancelled job");
    natsMsg *m = h_collect_msg(n.done, id, 0);
    char v[64] = "";
    cr_expect(m != NULL && h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "cancelled") == 0,
              "jobs.done Kiln-Status %s, want cancelled", v);

    /* Watch until well after the delay passed: it must never start. */
    cancel_watch w = {&s, id, ""};
    int64_t watch = 3000 + 2500 - (h_now_ms() - t0);
    cr_expect(!h_wait_for(cancel_started, &w, watch > 0 ? watch : 1, 200),
              "consumer: cancelled pending job started after its delay: %s", w.why);
    cr_expect(!cancel_started(&w), "cancelled pending job changed: %s", w.why);
    h_expect_done_once(&n, id, "cancelled", 5000);
    h_nats_free(&n);
    h_stop(&s);
}

Test(cancel, processing_aborted_slot_freed_terminal_409)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=1", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);

    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=20000 cancel running lynx", id), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "processing", 20000);
    cr_assert_str_eq(h_jstr(j, "status"), "processing", "job never started");
    json_decref(j);

    int64_t t0 = h_now_ms();
    h_resp r;
    long st = h_job_post(&s, &r, H_TOKEN_ALICE, id, "cancel");
    cr_expect_eq(st, 200, "cancel of a processing job: %ld %s", st, r.body);
    h_resp_free(&r);
    j = h_wait_job(&s, H_TOKEN_ALICE, id, "cancelled", 5000);
    int64_t took = h_now_ms() - t0;
    char *d = h_job_dump(j);
    cr_expect_str_eq(h_jstr(j, "status"), "cancelled", "store: processing job not cancelled: %s", d);
    cr_expect(took <= 2500, "cancel of a processing job took %lld ms (want <= 2 s)", (long long)took);
    free(d);
    json_decref(j);

    cr_expect(h_collect_wait(n.done, id, 1, 5000) >= 1, "no jobs.done for the cancelled processing job");
    natsMsg *m = h_collect_msg(n.done, id, 0);
    char v[64] = "";
    cr_expect(m != NULL && h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "cancelled") == 0,
              "Kiln-Status %s", v);

    /* Terminal now: a second cancel is 409 already_finished. */
    h_job_post(&s, &r, H_TOKEN_ALICE, id, "cancel");
    h_expect_error(&r, 409, "already_finished", NULL);
    h_resp_free(&r);

    /* With one slot, a short job completes quickly only if the 20 s provider
     * call was really aborted. */
    char id2[65];
    t0 = h_now_ms();
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "after cancel lynx", id2), 202);
    j = h_wait_job(&s, H_TOKEN_ALICE, id2, "completed", 15000);
    took = h_now_ms() - t0;
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "follow-up job did not complete");
    cr_expect(took < 5000, "consumer: slot still held by the cancelled job (follow-up took %lld ms)", (long long)took);
    json_decref(j);

    /* The aborted attempt must not overwrite the terminal state later. */
    j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "cancelled");
    json_decref(j);
    h_expect_done_once(&n, id, "cancelled", 5000);

    /* A completed job: cancel is 409 already_finished and changes nothing. */
    h_job_post(&s, &r, H_TOKEN_ALICE, id2, "cancel");
    h_expect_error(&r, 409, "already_finished", NULL);
    h_resp_free(&r);
    h_expect_job(&s, H_TOKEN_ALICE, id2, "completed", 1, 1000, "completed job after a refused cancel");
    h_nats_free(&n);
    h_stop(&s);
}

Test(cancel, nats_cancel_request)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"nats cancel lynx\",\"delay_ms\":5000}", id), 202);
    natsMsg *reply = NULL;
    natsStatus ns = natsConnection_Request(&reply, n.nc, "jobs.cancel", id, (int)strlen(id), 5000);
    cr_assert_eq(ns, NATS_OK, "store: no reply on jobs.cancel: %s", natsStatus_GetText(ns));
    char v[64] = "";
    cr_expect(h_msg_header(reply, "Kiln-Status", v, sizeof v) && strcmp(v, "cancelled") == 0,
              "jobs.cancel reply Kiln-Status '%s', want cancelled", v);
    natsMsg_Destroy(reply);
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "cancelled", "job after jobs.cancel");
    json_decref(j);

    /* An unknown id is not silently "cancelled". */
    reply = NULL;
    ns = natsConnection_Request(&reply, n.nc, "jobs.cancel", "no-such-job", 11, 5000);
    cr_expect_eq(ns, NATS_OK, "no reply on jobs.cancel for an unknown id");
    if (reply != NULL) {
        v[0] = '\0';
        h_msg_header(reply, "Kiln-Status", v, sizeof v);
        cr_expect_str_neq(v, "cancelled", "jobs.cancel of an unknown id answered cancelled");
        natsMsg_Destroy(reply);
    }
    h_nats_free(&n);
    h_stop(&s);
}
